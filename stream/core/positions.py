"""Net positions (SPEC §2.7): exact per account, columnar per contract.

A net position keeps ``q = Σ δ·N`` (dollars) and ``a = Σ δ·N·P`` (dollar-levels), exact,
as integers: ``q`` in cents (a notional has at most cent precision) and ``a`` in units of
``1e-10`` dollar-levels (cents times a price of at most 8 decimals), so the order of fills
never changes them and a fill costs two integer additions. Its loss at outcome ``K~`` is
``(a - q·K~) / R``, exact for any mix of opening and closing fills.

:class:`Book` holds every position in one contract, one row per account (rows never
move): its two exact integers, the same as float64 columns, and the row's cached risk
components, so a contract event re-margins all holders in one vectorised pass. No object
per position lives in the state (an account maps each contract to its row):
:class:`Position` is a position's value, read from a row or a stored row.
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow

import numpy as np

from stream.core.money import quantize_cents

# Settlement P&L: the numerator exact (Inexact raises rather than round: at most 12+2 digits
# of notional times 15+8 of level fit 60 digits), the one division at 60 digits, then cents.
EXACT = Context(prec=60, traps=[Inexact, InvalidOperation, Overflow])
WIDE = Context(prec=60, traps=[InvalidOperation, Overflow])
Q_SCALE = 100  # q is kept in cents
A_SCALE = 10**10  # a in 1e-10 dollar-levels: cents x price in 1e-8
PRICE_SCALE = A_SCALE // Q_SCALE  # a price in 1e-8 units


def scaled(value: Decimal, scale: int, what: str) -> int:
    """``value * scale`` as an exact integer (ValueError when it is not one)."""
    units = EXACT.multiply(value, scale)
    if units != units.to_integral_value():
        raise ValueError(f"{what} {value} has more precision than 1/{scale}")
    return int(units)


class Position:
    """One net position's value: ``q = Σ δ·N`` (dollars) and ``a = Σ δ·N·P`` (dollar-levels),
    exact (``q_cents``, ``a_units``: integers, see the module docstring). The live state
    keeps no object per position -- its integers sit in its contract's :class:`Book` row --
    so this is what a book row reads as (:meth:`Book.position`), what a stored row loads
    as, and the arithmetic on them.

    ``q_float``/``a_float`` are ``q``/``a`` as floats (correctly rounded, as ``float`` of
    the exact decimal is).
    """

    __slots__ = ("q_cents", "a_units")

    def __init__(self, q_cents: int = 0, a_units: int = 0):
        self.q_cents = q_cents
        self.a_units = a_units

    @property
    def q_float(self) -> float:
        return self.q_cents / Q_SCALE  # int / int: correctly rounded

    @property
    def a_float(self) -> float:
        return self.a_units / A_SCALE

    @property
    def q(self) -> Decimal:  # Σ δ·N, dollars, exact
        return Decimal(self.q_cents).scaleb(-2, EXACT)

    @property
    def a(self) -> Decimal:  # Σ δ·N·P, dollar-levels, exact
        return Decimal(self.a_units).scaleb(-10, EXACT)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Position):
            return NotImplemented
        return (self.q_cents, self.a_units) == (other.q_cents, other.a_units)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"Position(q={self.q}, a={self.a})"

    def settle_pnl_cents(self, value: Decimal, lower: Decimal, upper: Decimal) -> int:
        """P&L at settlement, in cents: ``-loss(K~) = (q·K~ - a) / R`` with ``K~ =
        clamp(value)``, rounded half-even to the cent (SPEC §3)."""
        outcome = min(max(value, lower), upper)
        pnl = WIDE.divide(EXACT.subtract(EXACT.multiply(self.q, outcome), self.a), EXACT.subtract(upper, lower))
        return int(quantize_cents(pnl).scaleb(2))

    def as_dict(self) -> dict:
        """The stored row: the two integers as decimal text (JSON numbers stop at 64 bits)."""
        return {"q_cents": str(self.q_cents), "a_units": str(self.a_units)}

    @classmethod
    def from_dict(cls, raw: dict) -> "Position":
        """From :meth:`as_dict`, or from a row of a version that stored ``q`` and ``a`` as
        decimal dollars."""
        if "q_cents" in raw:
            return cls(int(raw["q_cents"]), int(raw["a_units"]))
        return cls(scaled(Decimal(raw["q"]), Q_SCALE, "q"), scaled(Decimal(raw["a"]), A_SCALE, "a"))


class Book:
    """All positions in one contract, column-wise: the exact integers ``q_cents`` and
    ``a_units`` (lists of Python ints: ``a`` outgrows 64 bits), ``account_idx``, ``q``,
    ``a`` (the integers as float64), and each row's risk components ``risk`` (im, max_loss, es, stress, conv, stat, conc: the order of
    :func:`stream.core.model.position_components`; ``im`` is its first column) with the
    contract version they were computed at (``versions``, -1: not yet). Rows never move."""

    COMPONENTS = 7

    def __init__(self, capacity: int = 16):
        self.account_ids: list[str] = []  # per row
        self.q_cents: list[int] = []  # per row, exact
        self.a_units: list[int] = []  # per row, exact
        self.versions: list[int] = []  # per row (a list: read one at a time, per publish)
        self.account_idx = np.zeros(capacity, dtype=np.int64)
        self.q = np.zeros(capacity)
        self.a = np.zeros(capacity)
        self.risk = np.zeros((capacity, self.COMPONENTS))
        self.n = 0

    @property
    def im(self) -> np.ndarray:
        """The rows' IMs (a view of the first risk column)."""
        return self.risk[:, 0]

    def _grow(self) -> None:
        # 1.5 times (Java's ArrayList): on average a fifth of the columns unused, against
        # two fifths when doubling; the copies stay amortised O(1) per row.
        capacity = max(16, self.q.size + self.q.size // 2)
        for name in ("account_idx", "q", "a", "risk"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def add_row(self, account_id: str, account_idx: int, q_cents: int = 0, a_units: int = 0) -> int:
        """A new row for the account's position in this contract (an account has at most
        one: the row its ``positions`` names), holding ``q_cents`` and ``a_units``."""
        if self.n == self.q.size:
            self._grow()
        row = self.n
        self.account_ids.append(account_id)
        self.versions.append(-1)
        self.q_cents.append(q_cents)
        self.a_units.append(a_units)
        self.account_idx[row] = account_idx
        self.q[row] = q_cents / Q_SCALE  # int / int: correctly rounded
        self.a[row] = a_units / A_SCALE
        self.n += 1
        return row

    def add_fill(self, row: int, delta: int, notional_cents: int, price_units: int) -> None:
        """One fill on row ``row``: ``delta`` +1 (buy) or -1, notional in cents, price in
        1e-8: two integer additions, the floats refreshed, the risk components stale."""
        signed = notional_cents if delta > 0 else -notional_cents
        self.q_cents[row] = q = self.q_cents[row] + signed
        self.a_units[row] = a = self.a_units[row] + signed * price_units
        self.q[row] = q / Q_SCALE
        self.a[row] = a / A_SCALE
        self.versions[row] = -1  # its components no longer match it

    def position(self, row: int) -> Position:
        """Row ``row``'s position, as a value."""
        return Position(self.q_cents[row], self.a_units[row])

    def floats(self, row: int) -> tuple[float, float]:
        """Row ``row``'s ``q`` and ``a`` as floats (from the integers: no numpy scalar)."""
        return self.q_cents[row] / Q_SCALE, self.a_units[row] / A_SCALE

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        return self.q[: self.n], self.a[: self.n]
