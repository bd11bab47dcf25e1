"""Event time as integer microseconds since the Unix epoch, UTC (SPEC §4: ISO-8601 UTC).

Integers keep time exact and deterministic; the model only ever divides two differences.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache

from stream.core.errors import SchemaViolation

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# RFC 3339 date-time with an offset, or a bare date (midnight UTC); ASCII digits only.
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2}))?", re.ASCII)
# Event times outside these years are rejected: nothing this processor margins lives there,
# and every time it accepts can be formatted back (year 1 to 9999 in UTC).
MIN_YEAR, MAX_YEAR = 1970, 2199
_MIN_US = (datetime(MIN_YEAR, 1, 1, tzinfo=timezone.utc) - _EPOCH) // timedelta(microseconds=1)
_MAX_US = (datetime(MAX_YEAR + 1, 1, 1, tzinfo=timezone.utc) - _EPOCH) // timedelta(microseconds=1)


# The usual event time: ``YYYY-MM-DDTHH:MM:SS[.fraction]Z``.
_UTC_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z", re.ASCII)
_DAY_US = 86_400 * 1_000_000


@lru_cache(maxsize=4096)
def _day_start_us(day: str) -> int | None:
    """Microseconds from the epoch to the start of the UTC day ``YYYY-MM-DD``; None for a
    day that does not exist or lies outside the accepted years. Event times of a stream
    fall on few days: each is worked out once."""
    try:
        days = (date.fromisoformat(day) - _EPOCH.date()).days
    except ValueError:
        return None
    start_us = days * _DAY_US
    return start_us if _MIN_US <= start_us < _MAX_US else None


def parse_time_us(value: object, field: str) -> int:
    """Parse an RFC 3339 time with a UTC offset (``Z`` or ``+HH:MM``) or a bare date
    (midnight UTC) into microseconds since the epoch; years 1970 to 2199 (UTC) only.
    Fractions beyond microseconds are truncated.

    A time written ``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` -- every event time the processor
    writes, and the usual input -- is added up from its fields (its day once per day);
    any other, and any that is not valid, takes :func:`parse_time_us_checked`, so the
    errors are its own (a property test compares the two)."""
    if type(value) is str:
        match = _UTC_TIME.fullmatch(value)
        if match is not None:
            day_us = _day_start_us(match[1])
            hour, minute, second = int(match[2]), int(match[3]), int(match[4])
            if day_us is not None and hour < 24 and minute < 60 and second < 60:
                fraction = match[5]
                micros = int(fraction[:6].ljust(6, "0")) if fraction else 0
                return day_us + ((hour * 60 + minute) * 60 + second) * 1_000_000 + micros
    return parse_time_us_checked(value, field)


def parse_time_us_checked(value: object, field: str) -> int:
    """:func:`parse_time_us` through :meth:`datetime.fromisoformat`, every check spelled out:
    the reference, and the path of every time not in the usual form."""
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
