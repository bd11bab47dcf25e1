"""Pre-trade / what-if margin (issue: ``kpimargin whatif``): the core engine run on files.

Listings and flashes are applied first, then one clock tick at ``--at``, then the fills in
file order; the result is each account's IM (rounded up to the cent) and its unrounded
per-position components -- exactly what the streaming processor would publish.
"""

from __future__ import annotations

from typing import Any, Sequence

from .engine import EngineState, account_risk, apply
from .errors import Rejected
from .money import cents_to_decimal, cents_up, money_str
from .records import Cause, parse
from .topics import FILLS, FLASH, LISTINGS, TICKS


class WhatIfInputError(Exception):
    """Bad what-if input: names the file, the field and what is wrong."""

    def __init__(self, source: str, error: Rejected, index: int | None = None):
        where = source if index is None else f"{source}[{index}]"
        field = f" field {error.field}:" if error.field else ""
        super().__init__(f"{where}:{field} {error.detail} ({error.reason})")


def _messages(obj: Any) -> list:
    return obj if isinstance(obj, list) else [obj]


def whatif(
    listings: Sequence[tuple[str, Any]],
    fills: Sequence[tuple[str, Any]],
    at: str,
    flashes: Sequence[tuple[str, Any]] = (),
) -> dict:
    """Each argument pairs a source name (for error messages) with its decoded JSON."""
    state = EngineState()
    offset = 0

    def feed(topic: str, source: str, obj: Any, index: int | None) -> None:
        nonlocal offset
        try:
            if not isinstance(obj, dict):
                raise Rejected(f"expected a JSON object, got {type(obj).__name__}", reason="schema_violation")
            event = parse(topic, obj)
            apply(state, event, Cause(f"whatif:{topic}", 0, offset, getattr(event, "event_id", "")), obj)
        except Rejected as error:
            raise WhatIfInputError(source, error, index) from None
        offset += 1

    for topic, group in ((LISTINGS, listings), (FLASH, flashes)):
        for source, obj in group:
            items = _messages(obj)
            for i, item in enumerate(items):
                feed(topic, source, item, i if isinstance(obj, list) else None)
    feed(TICKS, "--at", {"ts": at}, None)
    for source, obj in fills:
        if not isinstance(obj, list):
            raise WhatIfInputError(source, Rejected("expected a JSON list of fills", reason="schema_violation"))
        for i, item in enumerate(obj):
            feed(FILLS, source, item, i)
    accounts = []
    for account_id in sorted(state.accounts):
        total, positions = account_risk(state, state.accounts[account_id])
        accounts.append({"account_id": account_id, "im": money_str(cents_to_decimal(cents_up(total))), "positions": positions})
    return {"accounts": accounts}
