"""An account's requirement and a pre-trade what-if, on a live engine state, changing nothing.

The worker's HTTP API (:mod:`stream.worker.http`) calls these on the state of the log
partition that owns the account, between two log records (the event loop runs one thing at
a time): :func:`account_view` is what the account's next requirement record would say
now; :func:`whatif` applies hypothetical fills to a *scratch* state that shares the live
contracts read-only and holds copies of the account's positions, through the same
:func:`stream.core.engine.apply` the stream uses, and margins the account before and after.
Nothing of the live state changes but the caches that any read of it fills (each
position's risk components, the order of an account's positions), which hold the same
numbers whoever fills them.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from stream.core.engine import apply
from stream.core.errors import Rejected, SchemaViolation
from stream.core.messages import Cause, parse
from stream.core.money import cents_str, cents_up
from stream.core.positions import Book
from stream.core.requirements import account_risk
from stream.core.state import Account, ContractState, EngineState, store_position_risk
from stream.core.timeutil import format_time_us
from stream.core.topics import FILLS

# The fields a what-if fill carries: the account comes from the request, the trade id is
# made up and the time is the partition's clock.
WHATIF_FILL_FIELDS = ("contract_id", "side", "price", "notional")
WHATIF_FILLS_MAX = 1000


class WhatIfRejected(Rejected):
    """A what-if request that cannot be computed; ``index`` is the offending fill's."""

    def __init__(self, error: Rejected, index: int | None = None):
        field = error.field if index is None else f"fills[{index}]" + (f".{error.field}" if error.field else "")
        super().__init__(error.detail, field=field, reason=error.reason)
        self.index = index


def clock(state: EngineState) -> str | None:
    """The partition's event time (its latest tick), RFC 3339, or None before the first."""
    return None if state.now_us is None else format_time_us(state.now_us)


def margin(state: EngineState, account: Account) -> dict:
    """IM (rounded up to the cent), equity, excess and the per-position components, as a
    requirement record gives them (SPEC §4)."""
    total, positions = account_risk(state, account)
    im = cents_up(total)
    return {"im": cents_str(im), "equity": cents_str(account.equity_cents),
            "excess": cents_str(account.equity_cents - im), "positions": positions}


def account_view(state: EngineState, account_id: str) -> dict | None:
    """The account's requirement as of the state's last applied record, with its open call;
    None for an account this state does not hold."""
    account = state.accounts.get(account_id)
    if account is None:
        return None
    return {"account_id": account_id, "as_of": clock(state), **margin(state, account),
            "call": None if account.call is None else account.call.as_dict()}


def _fill_message(account_id: str, index: int, item: Any, state: EngineState) -> dict:
    if not isinstance(item, dict):
        raise WhatIfRejected(SchemaViolation(f"expected a JSON object, got {type(item).__name__}"), index)
    for name in item:
        if name not in WHATIF_FILL_FIELDS:
            raise WhatIfRejected(SchemaViolation(
                f"unknown field (a what-if fill has {', '.join(WHATIF_FILL_FIELDS)})", field=str(name)[:64]), index)
    contract = state.contracts.get(item.get("contract_id")) if isinstance(item.get("contract_id"), str) else None
    if state.now_us is not None:
        ts = format_time_us(state.now_us)
    elif contract is not None:  # no tick yet: the contract's own start of life
        ts = contract.listing_raw["listing_time"]
    else:
        ts = "1970-01-01T00:00:00Z"  # an unknown contract: the engine rejects it by name
    return {**item, "trade_id": f"whatif-{index}", "account_id": account_id, "ts": ts}


def _scratch(state: EngineState, account_id: str, contract_ids: set[str]) -> tuple[EngineState, Account]:
    """A state that shares ``state``'s contracts read-only, except those the fills touch,
    which get a private book holding only a copy of this account's position; and a copy
    of the account (positions copied, no remembered ids, so no what-if id can clash)."""
    live = state.accounts.get(account_id)
    scratch = EngineState(config=replace(state.config, dedup_horizon_us=None), now_us=state.now_us)
    account = Account(account_id, index=0)
    if live is not None:
        account.equity_cents, account.call = live.equity_cents, copy.copy(live.call)
        account.published_im_cents = live.published_im_cents
        account.published_equity_cents = live.published_equity_cents
        account.positions = dict(live.positions)  # rows of the live books, read only
    contracts = dict(state.contracts)
    for cid in contract_ids & contracts.keys():
        live_contract = contracts[cid]
        twin = object.__new__(ContractState)
        twin.__dict__.update(live_contract.__dict__)
        twin.book, twin.src = Book(), {}
        row = account.positions.get(cid)
        if row is not None:  # the twin's book gets a copy of the position, in its row 0
            position = live_contract.book.position(row)
            account.positions[cid] = row = twin.book.add_row(account_id, account.index, position.q_cents,
                                                             position.a_units)
            store_position_risk(twin, row)
        contracts[cid] = twin
    scratch.contracts = contracts
    scratch.accounts[account_id] = account
    return scratch, account


def whatif(state: EngineState, account_id: str, fills: Any) -> dict:
    """IM, equity and excess of ``account_id`` before and after the hypothetical ``fills``
    (``[{"contract_id", "side", "price", "notional"}, ...]``), per position, validated as
    the fill topic validates (:class:`WhatIfRejected` names the fill, the field and the
    reason). ``state`` is not changed."""
    if not isinstance(fills, list):
        raise WhatIfRejected(SchemaViolation("expected a JSON list of fills", field="fills"))
    if len(fills) > WHATIF_FILLS_MAX:
        raise WhatIfRejected(SchemaViolation(f"at most {WHATIF_FILLS_MAX} fills a request", field="fills"))
    messages = [_fill_message(account_id, i, item, state) for i, item in enumerate(fills)]
    scratch, account = _scratch(state, account_id, {m["contract_id"] for m in messages
                                                     if isinstance(m.get("contract_id"), str)})
    before = margin(scratch, account)
    for i, message in enumerate(messages):
        try:
            apply(scratch, parse(FILLS, message), Cause(f"whatif:{FILLS}", 0, i, message["trade_id"]), message)
        except Rejected as error:
            raise WhatIfRejected(error, i) from None
    return {"account_id": account_id, "as_of": clock(state), "before": before, "after": margin(scratch, account)}
