"""Event time as integer microseconds since the Unix epoch, UTC (SPEC §4: ISO-8601 UTC).

Integers keep time exact and deterministic; the model only ever divides two differences.
"""

from __future__ import annotations

from datetime import datetime, timezone

from .errors import SchemaViolation

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_time_us(value: object, field: str) -> int:
    """Parse an ISO-8601 time with a UTC offset (``Z`` or ``+HH:MM``) or a bare date
    (midnight UTC) into microseconds since the epoch."""
    if not isinstance(value, str):
        raise SchemaViolation(f"expected an ISO-8601 UTC time string, got {type(value).__name__}", field=field)
    text = value.strip()
    try:
        if len(text) == 10:
            dt = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
        else:
            dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise SchemaViolation(f"not an ISO-8601 time: {value[:64]!r}", field=field) from None
    if dt.tzinfo is None:
        raise SchemaViolation(f"time has no UTC offset: {value[:64]!r}", field=field)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_time_us(us: int) -> str:
    """Microseconds since the epoch -> ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
    seconds, micros = divmod(us, 1_000_000)
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{micros:06d}Z" if micros else f"{base}Z"
