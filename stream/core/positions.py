"""Net positions (SPEC §2.7): exact per account, columnar per contract.

A net position keeps ``q = Σ δ·N`` (dollars) and ``a = Σ δ·N·P`` (dollar-levels), exact
as Decimal so that the order of fills never changes them. Its loss at outcome ``K~`` is
``(a - q·K~) / R``, exact for any mix of opening and closing fills.

:class:`Book` holds every position in one contract as float64 columns (one row per
account, rows never move) plus the cached IM of each row, so a contract event re-margins
all holders in one vectorised pass.
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow

# Position arithmetic is exact: fills carry at most 12+2 digits of notional and 15+8 of
# price, so a product has at most 37 significant digits and sums of them fit 60 digits;
# should that ever not hold, Inexact raises instead of rounding (the sum would then depend
# on the order of fills).
EXACT = Context(prec=60, traps=[Inexact, InvalidOperation, Overflow])
WIDE = Context(prec=60, traps=[InvalidOperation, Overflow])  # for the one division, then cents

import numpy as np

from stream.core.money import quantize_cents


class Position:
    """One net position: ``q = Σ δ·N`` (dollars) and ``a = Σ δ·N·P`` (dollar-levels), exact.

    For the per-fill path it also keeps:

    * ``q_float``/``a_float``: ``float(q)``/``float(a)``, refreshed whenever ``q`` or ``a``
      changes (through :meth:`add_fill` or assignment), so re-margining does not convert
      Decimals on every call;
    * ``risk``/``risk_version``: the engine's cache of this position's risk components (the
      dict published in requirement records) and the contract state version they were
      computed at. Any change of ``q`` or ``a`` clears it; the engine recomputes it when the
      contract's version (rv, tau, conv_f) differs.
    """

    __slots__ = ("_q", "_a", "q_float", "a_float", "risk", "risk_version")

    def __init__(self, q: Decimal, a: Decimal):
        self._q = q
        self._a = a
        self.q_float = float(q)
        self.a_float = float(a)
        self.risk: dict | None = None
        self.risk_version = -1

    @property
    def q(self) -> Decimal:  # Σ δ·N, dollars
        return self._q

    @q.setter
    def q(self, value: Decimal) -> None:
        self._q = value
        self.q_float = float(value)
        self.risk = None

    @property
    def a(self) -> Decimal:  # Σ δ·N·P, dollar-levels
        return self._a

    @a.setter
    def a(self, value: Decimal) -> None:
        self._a = value
        self.a_float = float(value)
        self.risk = None

    def add_fill(self, delta: int, notional: Decimal, price: Decimal) -> None:
        signed = notional if delta > 0 else -notional
        self.q = EXACT.add(self._q, signed)
        self.a = EXACT.add(self._a, EXACT.multiply(signed, price))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Position):
            return NotImplemented
        return (self._q, self._a) == (other._q, other._a)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"Position(q={self._q!r}, a={self._a!r})"

    def settle_pnl(self, value: Decimal, lower: Decimal, upper: Decimal) -> Decimal:
        """P&L at settlement: ``-loss(K~) = (q·K~ - a) / R`` with ``K~ = clamp(value)``,
        rounded half-even to the cent (SPEC §3)."""
        outcome = min(max(value, lower), upper)
        pnl = WIDE.divide(EXACT.subtract(EXACT.multiply(self.q, outcome), self.a), EXACT.subtract(upper, lower))
        return quantize_cents(pnl)

    def as_dict(self) -> dict:
        return {"q": str(self.q), "a": str(self.a)}

    @classmethod
    def from_dict(cls, raw: dict) -> "Position":
        return cls(Decimal(raw["q"]), Decimal(raw["a"]))


class Book:
    """All positions in one contract, column-wise: ``account_idx``, ``q``, ``a``, ``im``."""

    def __init__(self, capacity: int = 16):
        self.rows: dict[str, int] = {}
        self.account_ids: list[str] = []
        self.account_idx = np.zeros(capacity, dtype=np.int64)
        self.q = np.zeros(capacity)
        self.a = np.zeros(capacity)
        self.im = np.zeros(capacity)
        self.n = 0

    def _grow(self) -> None:
        capacity = max(16, 2 * self.q.size)
        for name in ("account_idx", "q", "a", "im"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def row_for(self, account_id: str, account_idx: int) -> int:
        row = self.rows.get(account_id)
        if row is None:
            if self.n == self.q.size:
                self._grow()
            row = self.n
            self.rows[account_id] = row
            self.account_ids.append(account_id)
            self.account_idx[row] = account_idx
            self.n += 1
        return row

    def set(self, row: int, position: Position) -> None:
        self.q[row] = position.q_float
        self.a[row] = position.a_float

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        return self.q[: self.n], self.a[: self.n]
