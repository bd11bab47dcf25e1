"""An account's initial margin, position by position, and the requirement and call records
it publishes (SPEC §2, §4): the same :func:`account_risk` gives the worker's numbers, the
what-if's and the audit tools' explanations."""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import numpy as np

from stream.core import model
from stream.core.calls import next_call
from stream.core.money import cents_str, cents_up
from stream.core.positions import Position
from stream.core.messages import (
    Cause,
    record_id,
)
from stream.core.state import Account, ContractState, EngineState, Output, book_risk_dicts, src_mark, src_seen
from stream.core.timeutil import format_time_us
from stream.core.topics import CALLS, REQUIREMENTS


def ordered_positions(state: EngineState, account: Account) -> list[tuple[ContractState, Position]]:
    """The account's open positions with their contracts, in contract_id order (the order
    ``account.positions`` keeps: see :class:`stream.core.state.Account`)."""
    contracts = state.contracts
    return [(contracts[cid], p) for cid, p in account.positions.items()]


def position_components(contract: ContractState, position: Position, account_id: str | None = None) -> dict:
    """The position's risk components (the requirement record's per-position dict), cached
    on the position until the position (fill) or the contract state (version) changes.
    Taken from the book's vectorised re-margin when that saw this very (q, a) -- the same
    operations on the same floats, so the same bits (a property test checks) -- else
    computed by the scalar formula. Treat the result as read-only: it is the cache itself."""
    risk = position.risk
    if risk is None or position.risk_version != contract.version:
        risk = None
        cached = book_risk_dicts(contract) if account_id is not None else None
        if cached is not None:
            row = contract.book.rows.get(account_id)
            if row is not None and row < len(cached[0]) and cached[0][row] == position.q_float \
                    and cached[1][row] == position.a_float:
                risk = cached[2][row]
        if risk is None:
            risk = model.position_risk_dict(
                contract.contract_id, position.q_float, position.a_float, contract.rv, contract.tau, contract.conv_f
            )
        position.risk = risk
        position.risk_version = contract.version
    return risk


def account_risk(state: EngineState, account: Account) -> tuple[float, list[dict]]:
    """Account IM (sum of position IMs in contract_id order) and the per-position components
    (fresh dicts, which the caller may keep or change). Only positions whose cached
    components are stale are re-margined (see :func:`position_components`)."""
    total = 0.0
    positions = []
    contracts = state.contracts
    for cid, position in account.positions.items():  # in contract_id order
        contract = contracts[cid]
        risk = position.risk  # inlined fast path of position_components
        if risk is None or position.risk_version != contract.version:
            risk = position_components(contract, position, account.account_id)
        total += risk["im"]
        positions.append(risk.copy())
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
