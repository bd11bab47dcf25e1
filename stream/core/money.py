"""Exact money (SPEC §3): Decimal amounts in dollars, quantised to the cent.

Risk numbers are float64; the only bridge from risk to money is :func:`cents_up`, which
rounds a requirement *up* to the cent, after forgiving float noise below 1e-7 cent.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation, Overflow

from stream.core.errors import SchemaViolation

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
# A float requirement within this many cents above a cent boundary is float noise
# (e.g. 100.00000000000001): it does not add a cent.
NOISE_CENTS = 1e-7
# A decimal string: an optional sign, ASCII digits, an optional fraction and exponent.
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,4})?", re.ASCII)
# Decimal magnitudes beyond 10**±30 are rejected before any arithmetic (Decimal's context
# would raise Overflow on them; no money amount or price comes near).
MAX_EXPONENT = 30


def cents_up(amount_usd: float) -> int:
    """Round a float dollar amount up to whole cents: ``ceil(amount * 100 - 1e-7)``.

    The same two IEEE operations are used in the vectorised path (numpy), so both give
    bit-identical results."""
    return int(math.ceil(amount_usd * 100.0 - NOISE_CENTS))


def cents_to_decimal(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT)


def to_decimal(value: object, field: str) -> Decimal:
    """A JSON number or decimal string -> finite Decimal. Floats go through their shortest
    repr, so ``100.1`` is exactly ``Decimal('100.1')``."""
    if isinstance(value, bool):
        raise SchemaViolation("expected a number or decimal string, got a boolean", field=field)
    if isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaViolation(f"not finite: {value!r}", field=field)
        result = Decimal(repr(value))
    elif isinstance(value, str):
        if len(value) > 64 or not _DECIMAL.fullmatch(value):
            raise SchemaViolation(f"not a decimal number: {value[:64]!r}", field=field)
        result = Decimal(value)
    else:
        raise SchemaViolation(f"expected a number or decimal string, got {type(value).__name__}", field=field)
    if not result.is_finite():
        raise SchemaViolation(f"not finite: {value!r}", field=field)
    if result and not -MAX_EXPONENT <= result.adjusted() <= MAX_EXPONENT:
        raise SchemaViolation(f"magnitude out of range: {str(value)[:64]!r}", field=field)
    return result


def quantize_cents(amount: Decimal) -> Decimal:
    """Half-even rounding to the cent (used for settled P&L, SPEC §3)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def money_str(amount: Decimal) -> str:
    """Canonical text of a cent amount, e.g. ``'5333.34'`` or ``'-12.00'``."""
    return str(amount.quantize(CENT))


def cents_str(cents: int) -> str:
    """Canonical text of an amount in integer cents, e.g. ``'5333.34'`` or ``'-12.00'``
    (the text :func:`money_str` gives the same amount as a Decimal)."""
    if cents < 0:
        digits = str(-cents).rjust(3, "0")
        return f"-{digits[:-2]}.{digits[-2:]}"
    digits = str(cents).rjust(3, "0")
    return f"{digits[:-2]}.{digits[-2:]}"


_EXACT = Context(prec=60, traps=[Inexact, InvalidOperation, Overflow])


def to_cents(text: str | Decimal) -> int:
    """An amount with at most cent precision (a stored row's text) in integer cents."""
    amount = Decimal(text).scaleb(2, _EXACT)
    if amount != amount.to_integral_value():
        raise ValueError(f"{text} is not a whole number of cents")
    return int(amount)
