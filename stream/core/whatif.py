"""Pre-trade / what-if margin (``kpimargin whatif``): the core engine run on files.

Listings, then flashes (oldest ``as_of`` first: the latest wins), are applied first, then
one clock tick at ``--at``, then the fills in file order (none is too old to be checked for
duplicates: a what-if has no dedup horizon); the result is each account's IM (rounded up to the cent) and its unrounded
per-position components -- exactly what the streaming processor would publish.
"""

from __future__ import annotations

from typing import Any, Sequence

from stream.core.engine import apply
from stream.core.errors import Rejected
from stream.core.money import cents_str, cents_up
from stream.core.positions import Book
from stream.core.messages import Cause, parse
from stream.core.requirements import account_risk
from stream.core.state import ContractState, EngineConfig, EngineState
from stream.core.timeutil import parse_time_us
from stream.core.topics import FILLS, FLASH, LISTINGS, TICKS


class WhatIfInputError(Exception):
    """Bad what-if input: names the file, the field and what is wrong."""

    def __init__(self, source: str, error: Rejected, index: int | None = None):
        where = source if index is None else f"{source}[{index}]"
        field = f" field {error.field}:" if error.field else ""
        super().__init__(f"{where}:{field} {error.detail} ({error.reason})")


def _messages(obj: Any) -> list:
    return obj if isinstance(obj, list) else [obj]


class Market:
    """Listings and flashes applied once, and the clock set to ``at``: the contracts' risk
    vectors are estimated here, so each what-if request on it costs only its own fills.

    A request runs on a scratch :class:`EngineState` that shares the (read-only) contract
    estimates and starts with empty books, through the same :func:`stream.core.engine.apply`."""

    def __init__(
        self,
        listings: Sequence[tuple[str, Any]],
        at: str,
        flashes: Sequence[tuple[str, Any]] = (),
        config: EngineConfig | None = None,
    ):
        # a what-if is not a stream: no fill is too old to be checked for duplicates
        self.state = EngineState(config=config or EngineConfig(dedup_horizon_us=None))
        offset = 0
        for topic, group in ((LISTINGS, listings), (FLASH, _by_as_of(flashes))):
            for source, obj in group:
                items = _messages(obj)
                for i, item in enumerate(items):
                    _feed(self.state, topic, source, item, i if isinstance(obj, list) else None, offset)
                    offset += 1
        _feed(self.state, TICKS, "--at", {"ts": at}, None, offset)
        self.offset = offset + 1

    def _scratch(self, contract_ids: set) -> EngineState:
        """A state sharing the prepared contracts; those the request fills (and only
        those: copying is most of a small request's cost) get a private, empty book."""
        base = self.state
        state = EngineState(config=base.config, now_us=base.now_us)
        contracts = dict(base.contracts)
        for cid in contract_ids & contracts.keys():
            copy = object.__new__(ContractState)
            copy.__dict__.update(contracts[cid].__dict__)
            copy.book, copy.src = Book(), {}
            contracts[cid] = copy
        state.contracts = contracts
        return state

    def margin(self, fills: Sequence[tuple[str, Any]]) -> dict:
        """Each account's IM (rounded up to the cent) and unrounded per-position components."""
        for source, obj in fills:
            if not isinstance(obj, list):
                raise WhatIfInputError(source, Rejected("expected a JSON list of fills", reason="schema_violation"))
        state = self._scratch({item.get("contract_id") for _, obj in fills for item in obj
                               if isinstance(item, dict) and isinstance(item.get("contract_id"), str)})
        offset = self.offset
        for source, obj in fills:
            for i, item in enumerate(obj):
                _feed(state, FILLS, source, item, i, offset)
                offset += 1
        accounts = []
        for account_id in sorted(state.accounts):
            total, positions = account_risk(state, state.accounts[account_id])
            accounts.append({"account_id": account_id, "im": cents_str(cents_up(total)),
                             "positions": positions})
        return {"accounts": accounts}


def _by_as_of(flashes: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Every flash on its own, oldest ``as_of`` first, so that the latest one wins whatever
    the order of the files (SPEC §2.6); unparseable ones first, to be reported."""
    items = []
    for source, obj in flashes:
        for i, item in enumerate(_messages(obj)):
            name = f"{source}[{i}]" if isinstance(obj, list) else source
            try:
                key = parse_time_us(item.get("as_of"), "as_of") if isinstance(item, dict) else None
            except Rejected:
                key = None
            items.append((key is not None, key or 0, len(items), name, item))
    return [(name, item) for *_, name, item in sorted(items, key=lambda t: t[:3])]


def _feed(state: EngineState, topic: str, source: str, obj: Any, index: int | None, offset: int) -> None:
    try:
        if not isinstance(obj, dict):
            raise Rejected(f"expected a JSON object, got {type(obj).__name__}", reason="schema_violation")
        event = parse(topic, obj)
        apply(state, event, Cause(f"whatif:{topic}", 0, offset, getattr(event, "event_id", "")), obj)
    except Rejected as error:
        raise WhatIfInputError(source, error, index) from None


def whatif(
    listings: Sequence[tuple[str, Any]],
    fills: Sequence[tuple[str, Any]],
    at: str,
    flashes: Sequence[tuple[str, Any]] = (),
) -> dict:
    """Each argument pairs a source name (for error messages) with its decoded JSON."""
    return Market(listings, at, flashes).margin(fills)
