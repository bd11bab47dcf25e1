"""Event time as integer microseconds since the Unix epoch, UTC (SPEC §4: ISO-8601 UTC).

Integers keep time exact and deterministic; the model only ever divides two differences.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from stream.core.errors import SchemaViolation

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# RFC 3339 date-time with an offset, or a bare date (midnight UTC); ASCII digits only.
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2}))?", re.ASCII)
# Event times outside these years are rejected: nothing this processor margins lives there,
# and every time it accepts can be formatted back (year 1 to 9999 in UTC).
MIN_YEAR, MAX_YEAR = 1970, 2199
_MIN_US = (datetime(MIN_YEAR, 1, 1, tzinfo=timezone.utc) - _EPOCH) // timedelta(microseconds=1)
_MAX_US = (datetime(MAX_YEAR + 1, 1, 1, tzinfo=timezone.utc) - _EPOCH) // timedelta(microseconds=1)


def parse_time_us(value: object, field: str) -> int:
    """Parse an RFC 3339 time with a UTC offset (``Z`` or ``+HH:MM``) or a bare date
    (midnight UTC) into microseconds since the epoch; years 1970 to 2199 (UTC) only.
    Fractions beyond microseconds are truncated."""
    if not isinstance(value, str):
        raise SchemaViolation(f"expected an ISO-8601 UTC time string, got {type(value).__name__}", field=field)
    if len(value) > 40 or not _TIME.fullmatch(value):
        raise SchemaViolation(f"not an RFC 3339 time (e.g. 2026-04-25T14:05:00Z): {value[:64]!r}", field=field)
    text = value
    if len(text) == 10:
        text += "T00:00:00Z"
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:  # at most 6 fraction digits for fromisoformat; more are truncated
        digits = rest[:-6]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[-6:]}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise SchemaViolation(f"not a valid time: {value[:64]!r}", field=field) from None
    us = (dt - _EPOCH) // timedelta(microseconds=1)
    if not _MIN_US <= us < _MAX_US:
        raise SchemaViolation(f"outside the years {MIN_YEAR} to {MAX_YEAR} (UTC): {value[:64]!r}", field=field)
    return us


def format_time_us(us: int) -> str:
    """Microseconds since the epoch -> ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
    seconds, micros = divmod(us, 1_000_000)
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{micros:06d}Z" if micros else f"{base}Z"
