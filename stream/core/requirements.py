"""An account's initial margin, position by position, and the requirement and call records
it publishes (SPEC §2, §4): the same :func:`account_risk` gives the worker's numbers, the
what-if's and the audit tools' explanations."""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import numpy as np

from stream.core.calls import next_call
from stream.core.money import cents_str, cents_up
from stream.core.messages import (
    Cause,
    record_id,
)
from stream.core.state import Account, ContractState, EngineState, Output, position_record, src_mark, src_seen
from stream.core.timeutil import format_time_us
from stream.core.topics import CALLS, REQUIREMENTS


def account_risk(state: EngineState, account: Account) -> tuple[float, list[dict]]:
    """Account IM (sum of position IMs in contract_id order) and the per-position components
    (fresh dicts, which the caller may keep or change), read from the contracts' book rows;
    a row not current (its position or its contract changed since) is re-margined first
    (:func:`stream.core.state.position_record`)."""
    total = 0.0
    positions = []
    contracts = state.contracts
    for cid, row in account.positions.items():  # in contract_id order
        im, record = position_record(contracts[cid], row)
        total += im
        positions.append(record)
    return total, positions


# Record times repeat (the clock moves only on ticks): format each one once.
_format_time_us = lru_cache(maxsize=1024)(format_time_us)


def _as_of(state: EngineState, event_us: int) -> str:
    return _format_time_us(state.now_us if state.now_us is not None else event_us)


def publish(
    state: EngineState, account: Account, im_total: float, cause: Cause, event_us: int, positions: list[dict] | None = None
) -> list[Output]:
    """Requirement (if IM or equity moved by a cent) and call records for one account.
    ``positions`` are the per-position components when the caller already has them."""
    im_cents = cents_up(im_total)
    equity = account.equity_cents
    if account.published_im_cents == im_cents and account.published_equity_cents == equity:
        return []
    if positions is None:
        _, positions = account_risk(state, account)
    as_of = _as_of(state, event_us)
    outputs = [
        Output(
            REQUIREMENTS,
            account.account_id,
            {
                "account_id": account.account_id,
                "as_of": as_of,
                "im": cents_str(im_cents),
                "equity": cents_str(equity),
                "excess": cents_str(equity - im_cents),
                "positions": positions,
                "cause": cause.as_dict(),
                "id": record_id("requirement", account.account_id, cause),
            },
        )
    ]
    account.published_im_cents = im_cents
    account.published_equity_cents = equity
    state.touched.add(f"account:{account.account_id}")
    account.call, call_record = next_call(
        account.call, account.account_id, im_cents, equity, state.config.call_update_threshold_cents, cause, as_of
    )
    if call_record is not None:
        outputs.append(Output(CALLS, account.account_id, call_record))
    return outputs


def publish_now(state: EngineState, account: Account, cause: Cause, event_us: int) -> list[Output]:
    """:func:`publish` after computing the account's risk once, position by position."""
    total, positions = account_risk(state, account)
    return publish(state, account, total, cause, event_us, positions)


def remargin(state: EngineState, accounts: Iterable[Account], cause: Cause, event_us: int) -> list[Output]:
    """Publish for every given account whose row has not yet applied this cause, using the
    cached (vectorised) position IMs; sums run in contract_id order, as in :func:`account_risk`."""
    accounts = [acc for acc in accounts if not src_seen(acc.src, cause)]
    if not accounts:
        return []
    totals = np.zeros(len(state.accounts))
    for contract in state.contracts.values():  # kept in contract_id order, as account_risk sums
        book = contract.book
        if book.n and contract.settlement is None:
            totals[book.account_idx[: book.n]] += book.im[: book.n]
    outputs: list[Output] = []
    for account in accounts:
        outputs.extend(publish(state, account, float(totals[account.index]), cause, event_us))
        src_mark(account.src, cause)
    return outputs


def holders_of(state: EngineState, contract: ContractState) -> list[Account]:
    return [state.accounts[aid] for aid in contract.book.account_ids]
