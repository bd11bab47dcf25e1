"""The account engine: ``apply(state, event, cause) -> (state, outputs)`` (SPEC §2–3).

One :class:`EngineState` holds the contracts, the event-time clock and the accounts of one
partition of the ordered log. ``apply`` validates the event completely before it changes
anything, so a rejected event (a :class:`~stream.core.errors.Rejected`) leaves the state as it
was. The state is updated in place and returned, for speed: callers own it.

Idempotency has two layers:

* every state row (each contract, the clock, each account) remembers, per source
  topic-partition, the highest source offset it has applied; an event whose ``cause.offset``
  is not above it is skipped for that row, so an input forwarded to the log twice (a router
  restarted before committing) changes nothing the second time. A state loaded for
  re-application must be the state after some log entry: a shell that persists rows must
  load all of a batch's rows or none (the worker does, :mod:`stream.worker.durable`).
* fills and movements are also deduplicated by their business id: the same id with the
  same content is ignored; with different content it is a ``duplicate_conflict``.

Outputs are requirement and call records (SPEC §4), each with a deterministic ``id`` and
the ``cause`` that produced it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any, Iterable

import numpy as np

from stream.core import model
from stream.core.calls import OpenCall, next_call
from stream.core.errors import ContractSettled, DuplicateConflict, OutOfOrder, OutOfRange, UnknownContract
from stream.core.model import RiskVector
from stream.core.money import ZERO, cents_to_decimal, cents_up, money_str
from stream.core.positions import Book, Position
from stream.core.records import (
    Cause,
    Event,
    Fill,
    Flash,
    Listing,
    Movement,
    Settlement,
    Tick,
    parse_flash,
    parse_listing,
    parse_settlement,
    record_id,
)
from stream.core.timeutil import format_time_us
from stream.core.topics import CALLS, REQUIREMENTS


@dataclass(frozen=True)
class Output:
    topic: str
    key: str
    value: dict


@dataclass(frozen=True)
class EngineConfig:
    """Engine knobs that are not model parameters (SPEC §3)."""

    call_update_threshold: Decimal = Decimal("0.01")
    # How long (event time, µs) fill and movement ids are remembered for deduplication;
    # None remembers them forever. See :func:`_check_horizon`.
    dedup_horizon_us: int | None = 7 * 86_400 * 1_000_000


def _src_key(cause: Cause) -> str:
    return f"{cause.topic}/{cause.partition}"


def _seen(src: dict[str, int], cause: Cause) -> bool:
    """True if a row has already applied this source offset (a re-delivery)."""
    return cause.offset is not None and src.get(_src_key(cause), -1) >= cause.offset


def _mark(src: dict[str, int], cause: Cause) -> None:
    if cause.offset is not None:
        src[_src_key(cause)] = cause.offset


# --------------------------------------------------------------------------- state rows
@dataclass
class ContractState:
    listing: Listing
    listing_raw: dict
    seq: int  # order of listing in this partition (informational: routers may interleave listings)
    estimate: model.Estimate
    rv: RiskVector
    flash: Flash | None = None
    flash_raw: dict | None = None
    settlement: Settlement | None = None
    settlement_raw: dict | None = None
    src: dict[str, int] = field(default_factory=dict)
    book: Book = field(default_factory=Book)
    tau: float = 1.0
    conv_f: float = 0.0
    lower_dec: Decimal = ZERO
    upper_dec: Decimal = ZERO
    # Identifies the current (rv, tau, conv_f): a new value from _VERSIONS whenever any of
    # them changes (listing, flash, tick). Positions cache their risk components per version.
    version: int = -1
    # The last vectorised re-margin of the whole book (see _refresh_book): the version it
    # was computed at, the (q, a) columns it saw, its RiskArrays, and the same columns as
    # Python lists (built on first use). Lets a tick's or flash's records take each
    # position's components from one vectorised pass instead of one scalar call each.
    book_risk: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def contract_id(self) -> str:
        return self.listing.contract_id

    def as_row(self) -> dict:
        return {
            "listing": self.listing_raw,
            "seq": self.seq,
            "flash": self.flash_raw,
            "settlement": self.settlement_raw,
            "src": dict(self.src),
        }


@dataclass
class Account:
    account_id: str
    index: int
    equity: Decimal = ZERO
    positions: dict[str, Position] = field(default_factory=dict)  # open positions
    # "t:<trade_id>"/"m:<movement_id>" -> [fingerprint, ts_us]: the ids applied within the
    # dedup horizon (older ones are pruned, see :func:`_remember`). Persisted one row per id
    # (see :func:`seen_key`), not in the account's row: a fill then writes O(1) bytes, not
    # every id the account applied within the horizon.
    seen: dict[str, list] = field(default_factory=dict)
    src: dict[str, int] = field(default_factory=dict)
    published_im_cents: int | None = None
    published_equity: Decimal | None = None
    call: OpenCall | None = None
    # The clock value ``seen`` was last pruned at (not persisted: pruning at a given clock
    # value gives the same ``seen`` whenever it runs, since older ids are never added).
    pruned_at_us: int | None = field(default=None, repr=False, compare=False)
    # The open positions with their contracts, in contract_id order: the order account IMs
    # are summed in, the same in every partition and every run whatever the listing order.
    # None when ``positions`` gained or lost a contract
    # since it was built; see :func:`_ordered_positions`.
    ordered: list[tuple[ContractState, Position]] | None = field(default=None, repr=False, compare=False)

    def as_row(self) -> dict:
        return {
            "account_id": self.account_id,
            "equity": str(self.equity),
            "positions": {cid: p.as_dict() for cid, p in self.positions.items()},
            "src": dict(self.src),
            "published_im_cents": self.published_im_cents,
            "published_equity": None if self.published_equity is None else str(self.published_equity),
            "call": None if self.call is None else self.call.as_dict(),
        }


@dataclass
class EngineState:
    config: EngineConfig = field(default_factory=EngineConfig)
    contracts: dict[str, ContractState] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    now_us: int | None = None
    clock_src: dict[str, int] = field(default_factory=dict)
    # Per input topic-partition ("<topic>/<partition>"): the highest source offset this state
    # -- one log partition -- has taken in, whether the event was applied or rejected (see
    # :func:`take_in`). Persisted in the clock row.
    taken: dict[str, int] = field(default_factory=dict)
    # Keys (as in :meth:`rows`) of rows changed since the caller last cleared it: the rows a
    # persistent shell must write. Rows whose only change is a re-margin that published
    # nothing are not listed: re-applying that event publishes nothing again.
    touched: set[str] = field(default_factory=set)

    # ---- persistence: rows for a key-value table, and back
    def rows(self) -> Iterable[tuple[str, Any]]:
        yield "clock", self.row("clock")
        for cid, contract in self.contracts.items():
            yield f"contract:{cid}", contract.as_row()
        for aid, account in self.accounts.items():
            yield f"account:{aid}", account.as_row()
            for key, entry in account.seen.items():
                yield seen_key(aid, key), list(entry)

    def row(self, key: str) -> Any:
        """One row by its key ("clock", "contract:<id>", "account:<id>", "seen:..."); None
        for a row that does not exist (e.g. an id the dedup horizon has forgotten)."""
        if key == "clock":
            return {"now_us": self.now_us, "src": dict(self.clock_src), "taken": dict(self.taken)}
        kind, _, ident = key.partition(":")
        if kind == "seen":
            account_id, id_key = split_seen_key(key)
            account = self.accounts.get(account_id)
            entry = account.seen.get(id_key) if account is not None else None
            return None if entry is None else list(entry)
        entity = (self.contracts if kind == "contract" else self.accounts).get(ident)
        return None if entity is None else entity.as_row()

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, dict]], config: EngineConfig | None = None) -> "EngineState":
        """Rebuild a state (contracts, books, cached IMs) from its persisted rows."""
        state = cls(config=config or EngineConfig())
        contract_rows, account_rows, seen_rows = [], [], []
        for key, row in rows:
            if key == "clock":
                state.now_us = row["now_us"]
                state.clock_src = dict(row["src"])
                state.taken = dict(row.get("taken") or {})
            elif key.startswith("contract:"):
                contract_rows.append(row)
            elif key.startswith("account:"):
                account_rows.append(row)
            elif key.startswith("seen:") and row is not None:
                seen_rows.append((split_seen_key(key), row))
        for row in sorted(contract_rows, key=lambda r: r["listing"]["contract_id"]):
            contract = _new_contract(state, parse_listing(row["listing"]), row["listing"], row["seq"])
            if row["flash"] is not None:
                _set_flash(contract, parse_flash(row["flash"]), row["flash"])
            if row["settlement"] is not None:
                contract.settlement = parse_settlement(row["settlement"])
                contract.settlement_raw = row["settlement"]
            contract.src = dict(row["src"])
            state.contracts[contract.contract_id] = contract
        for row in account_rows:
            account = _get_account(state, row["account_id"])
            account.equity = Decimal(row["equity"])
            account.src = dict(row["src"])
            account.published_im_cents = row["published_im_cents"]
            pe = row["published_equity"]
            account.published_equity = None if pe is None else Decimal(pe)
            account.call = OpenCall.from_dict(row["call"])
            for cid, raw in row["positions"].items():
                position = Position.from_dict(raw)
                account.positions[cid] = position
                account.ordered = None
                contract = state.contracts[cid]
                contract.book.set(contract.book.row_for(account.account_id, account.index), position)
        for (account_id, id_key), entry in sorted(seen_rows):
            _get_account(state, account_id).seen[id_key] = list(entry)
        for contract in state.contracts.values():
            _refresh_book(state, contract)
        return state


def take_in(state: EngineState, topic: str, partition: int, offset: int) -> bool:
    """Record that this log partition takes in source message ``topic/partition@offset``;
    False if it has taken it in before -- a re-forwarded copy, to skip whole: neither
    applied again nor rejected again (a rejection could differ the second time: a fill
    rejected for an unknown contract might apply once the listing has arrived, and the
    same dead-letter id must never carry other content).

    Sound because the router forwards each input partition in offset order and commits
    an offset only once everything before it is in the log: in a log partition, every
    message of an input partition below an offset already seen appeared before it, so an
    entry at or below the highest offset seen is always a copy."""
    key = f"{topic}/{partition}"
    if state.taken.get(key, -1) >= offset:
        return False
    state.taken[key] = offset
    state.touched.add("clock")
    return True


def seen_key(account_id: str, id_key: str) -> str:
    """The row key of one remembered id: ``seen:<len>:<account_id><id_key>`` (the length
    prefix keeps any account id unambiguous)."""
    return f"seen:{len(account_id)}:{account_id}{id_key}"


def split_seen_key(key: str) -> tuple[str, str]:
    """``(account_id, id_key)`` of a :func:`seen_key`."""
    length, _, rest = key[len("seen:"):].partition(":")
    n = int(length)
    return rest[:n], rest[n:]


def row_order(key: str) -> tuple[int, str]:
    """The order a persistent shell writes rows in: the clock, contracts, remembered ids,
    then accounts, whose positions name contracts: in this order every prefix of a batch's
    rows loads with :meth:`EngineState.from_rows` (the worker goes further and rolls a
    partly written batch back altogether, see :mod:`stream.worker.durable`)."""
    return ({"clock": 0, "contract": 1, "seen": 2}.get(key.partition(":")[0], 3), key)


# --------------------------------------------------------------------------- helpers
# Source of ContractState.version values: unique in the process, so a version can never be
# mistaken for another contract state's (e.g. after EngineState.from_rows).
_VERSIONS = itertools.count()


def _new_contract(state: EngineState, listing: Listing, raw: dict, seq: int) -> ContractState:
    est = model.estimate(listing.history, listing.params)
    rv = model.risk_vector(listing.lower, listing.upper, listing.history, listing.params, est=est)
    contract = ContractState(listing=listing, listing_raw=raw, seq=seq, estimate=est, rv=rv)
    contract.lower_dec = Decimal(repr(listing.lower))
    contract.upper_dec = Decimal(repr(listing.upper))
    _set_time(state, contract)
    return contract


def _set_flash(contract: ContractState, flash: Flash, raw: dict) -> None:
    listing = contract.listing
    contract.rv = model.risk_vector(
        listing.lower, listing.upper, listing.history, listing.params, flash.value, flash.coverage, est=contract.estimate
    )
    contract.flash, contract.flash_raw = flash, raw
    contract.version = next(_VERSIONS)


def _set_time(state: EngineState, contract: ContractState) -> None:
    """tau and the convergence factor at the current event time (SPEC §2.11, §2.15)."""
    listing = contract.listing
    now = state.now_us if state.now_us is not None else listing.listing_us
    contract.tau = model.tau(now, listing.listing_us, listing.settlement_us)
    contract.conv_f = model.conv_factor(contract.rv.k, contract.tau)
    contract.version = next(_VERSIONS)


def _refresh_book(state: EngineState, contract: ContractState) -> None:
    """Re-margin every position of one contract in one vectorised pass."""
    book = contract.book
    if book.n:
        q, a = book.columns()
        risk = model.positions_risk(q, a, contract.rv, contract.conv_f)
        book.im[: book.n] = risk.im
        contract.book_risk = (contract.version, q.copy(), a.copy(), risk, None)


def _book_risk_dicts(contract: ContractState) -> tuple[list, list, list] | None:
    """``(q, a, dicts)`` of the book's last vectorised re-margin if it is still current
    (same contract version), else None: the columns it saw as lists, and every row's
    per-position record dict (the layout of :func:`stream.core.model._risk_dict`), built in one
    pass on first use."""
    cached = contract.book_risk
    if cached is None or cached[0] != contract.version:
        return None
    if cached[4] is None:
        _, q, a, r = cached[:4]
        cid, tau_ = contract.contract_id, contract.tau
        ql = q.tolist()
        dicts = [
            {"contract_id": cid, "q": qv, "im": im, "max_loss": ml, "es": es, "stress": st, "conv": cv, "stat": sa,
             "conc": cc, "tau": tau_}
            for qv, im, ml, es, st, cv, sa, cc in zip(
                ql, r.im.tolist(), r.max_loss.tolist(), r.es.tolist(), r.stress.tolist(), r.conv.tolist(),
                r.stat.tolist(), r.conc.tolist())
        ]
        contract.book_risk = cached = (*cached[:4], (ql, a.tolist(), dicts))
    return cached[4]


def _get_account(state: EngineState, account_id: str) -> Account:
    account = state.accounts.get(account_id)
    if account is None:
        account = Account(account_id, index=len(state.accounts))
        state.accounts[account_id] = account
    return account


def _ordered_positions(state: EngineState, account: Account) -> list[tuple[ContractState, Position]]:
    """The account's open positions in contract_id order, rebuilt only after ``positions``
    gained or lost a contract (callers that do so reset ``account.ordered`` to None)."""
    pairs = account.ordered
    if pairs is None:
        pairs = [(state.contracts[cid], p) for cid, p in account.positions.items()]
        pairs.sort(key=lambda pair: pair[0].contract_id)
        account.ordered = pairs
    return pairs


def _position_components(contract: ContractState, position: Position, account_id: str | None = None) -> dict:
    """The position's risk components (the requirement record's per-position dict), cached
    on the position until the position (fill) or the contract state (version) changes.
    Taken from the book's vectorised re-margin when that saw this very (q, a) -- the same
    operations on the same floats, so the same bits (a property test checks) -- else
    computed by the scalar formula. Treat the result as read-only: it is the cache itself."""
    risk = position.risk
    if risk is None or position.risk_version != contract.version:
        risk = None
        cached = _book_risk_dicts(contract) if account_id is not None else None
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
    components are stale are re-margined (see :func:`_position_components`)."""
    total = 0.0
    positions = []
    for contract, position in _ordered_positions(state, account):
        risk = position.risk  # inlined fast path of _position_components
        if risk is None or position.risk_version != contract.version:
            risk = _position_components(contract, position, account.account_id)
        total += risk["im"]
        positions.append(risk.copy())
    return total, positions


# Record times repeat (the clock moves only on ticks): format each one once.
_format_time_us = lru_cache(maxsize=1024)(format_time_us)


def _as_of(state: EngineState, event_us: int) -> str:
    return _format_time_us(state.now_us if state.now_us is not None else event_us)


def _publish(
    state: EngineState, account: Account, im_total: float, cause: Cause, event_us: int, positions: list[dict] | None = None
) -> list[Output]:
    """Requirement (if IM or equity moved by a cent) and call records for one account.
    ``positions`` are the per-position components when the caller already has them."""
    im_cents = cents_up(im_total)
    if account.published_im_cents == im_cents and account.published_equity == account.equity:
        return []
    if positions is None:
        _, positions = account_risk(state, account)
    im = cents_to_decimal(im_cents)
    as_of = _as_of(state, event_us)
    outputs = [
        Output(
            REQUIREMENTS,
            account.account_id,
            {
                "account_id": account.account_id,
                "as_of": as_of,
                "im": money_str(im),
                "equity": money_str(account.equity),
                "excess": money_str(account.equity - im),
                "positions": positions,
                "cause": cause.as_dict(),
                "id": record_id("requirement", account.account_id, cause),
            },
        )
    ]
    account.published_im_cents = im_cents
    account.published_equity = account.equity
    state.touched.add(f"account:{account.account_id}")
    account.call, call_record = next_call(
        account.call, account.account_id, im, account.equity, state.config.call_update_threshold, cause, as_of
    )
    if call_record is not None:
        outputs.append(Output(CALLS, account.account_id, call_record))
    return outputs


def _publish_now(state: EngineState, account: Account, cause: Cause, event_us: int) -> list[Output]:
    """:func:`_publish` after computing the account's risk once, position by position."""
    total, positions = account_risk(state, account)
    return _publish(state, account, total, cause, event_us, positions)


def _remargin(state: EngineState, accounts: Iterable[Account], cause: Cause, event_us: int) -> list[Output]:
    """Publish for every given account whose row has not yet applied this cause, using the
    cached (vectorised) position IMs; sums run in contract_id order, as in :func:`account_risk`."""
    accounts = [acc for acc in accounts if not _seen(acc.src, cause)]
    if not accounts:
        return []
    totals = np.zeros(len(state.accounts))
    for contract in state.contracts.values():  # kept in contract_id order, as account_risk sums
        book = contract.book
        if book.n and contract.settlement is None:
            totals[book.account_idx[: book.n]] += book.im[: book.n]
    outputs: list[Output] = []
    for account in accounts:
        outputs.extend(_publish(state, account, float(totals[account.index]), cause, event_us))
        _mark(account.src, cause)
    return outputs


def _holders(state: EngineState, contract: ContractState) -> list[Account]:
    return [state.accounts[aid] for aid in contract.book.account_ids]


# --------------------------------------------------------------------------- events
def _apply_listing(state: EngineState, ev: Listing, raw: dict, cause: Cause) -> list[Output]:
    existing = state.contracts.get(ev.contract_id)
    if existing is not None:
        if existing.listing.fingerprint != ev.fingerprint:
            raise DuplicateConflict("contract already listed with different terms", field="contract_id")
        return []
    contract = _new_contract(state, ev, raw, seq=len(state.contracts))
    _mark(contract.src, cause)
    state.contracts[ev.contract_id] = contract
    # contract_id order, not listing order: two routers may interleave listings differently,
    # and the order IMs are summed in must not depend on that (bit-identical outputs).
    state.contracts = dict(sorted(state.contracts.items()))
    state.touched.add(f"contract:{ev.contract_id}")
    return []


def _known_contract(state: EngineState, contract_id: str) -> ContractState:
    contract = state.contracts.get(contract_id)
    if contract is None:
        raise UnknownContract(f"no listing for {contract_id!r}", field="contract_id")
    return contract


def _apply_flash(state: EngineState, ev: Flash, raw: dict, cause: Cause) -> list[Output]:
    contract = _known_contract(state, ev.contract_id)
    if not _seen(contract.src, cause):
        if contract.settlement is not None:
            raise ContractSettled("flash after settlement", field="contract_id")
        current = contract.flash
        if current is not None:
            if current.fingerprint == ev.fingerprint:
                return []
            if ev.as_of_us <= current.as_of_us:
                raise OutOfOrder(
                    f"as_of {format_time_us(ev.as_of_us)} is not after the current flash's "
                    f"{format_time_us(current.as_of_us)}",
                    field="as_of",
                    reason="stale_flash",
                )
        _set_flash(contract, ev, raw)
        _refresh_book(state, contract)
        _mark(contract.src, cause)
        state.touched.add(f"contract:{contract.contract_id}")
    return _remargin(state, _holders(state, contract), cause, ev.as_of_us)


def _apply_tick(state: EngineState, ev: Tick, cause: Cause) -> list[Output]:
    if not _seen(state.clock_src, cause):
        if state.now_us is not None and ev.ts_us <= state.now_us:
            if ev.ts_us == state.now_us:
                return []
            raise OutOfOrder(
                f"tick {format_time_us(ev.ts_us)} is before the clock {format_time_us(state.now_us)}",
                field="ts",
                reason="tick_out_of_order",
            )
        state.now_us = ev.ts_us
        for contract in state.contracts.values():
            if contract.settlement is None:
                _set_time(state, contract)
                _refresh_book(state, contract)
        _mark(state.clock_src, cause)
        state.touched.add("clock")
    holders = [acc for acc in state.accounts.values() if acc.positions]
    return _remargin(state, holders, cause, ev.ts_us)


def _apply_settlement(state: EngineState, ev: Settlement, raw: dict, cause: Cause) -> list[Output]:
    contract = _known_contract(state, ev.contract_id)
    holders = _holders(state, contract)
    if not _seen(contract.src, cause):
        if contract.settlement is not None:
            if contract.settlement.fingerprint == ev.fingerprint:
                return []
            raise DuplicateConflict("contract already settled at a different value", field="value")
        contract.settlement, contract.settlement_raw = ev, raw
        _mark(contract.src, cause)
        state.touched.add(f"contract:{contract.contract_id}")
    outputs: list[Output] = []
    for account in holders:
        if _seen(account.src, cause):
            continue
        position = account.positions.pop(contract.contract_id, None)
        if position is not None:
            account.ordered = None
            account.equity += position.settle_pnl(ev.value, contract.lower_dec, contract.upper_dec)
        outputs.extend(_publish_now(state, account, cause, ev.ts_us))
        _mark(account.src, cause)
        state.touched.add(f"account:{account.account_id}")
    return outputs


def _check_duplicate(state: EngineState, account: Account | None, key: str, fp: str, id_field: str) -> bool:
    """True if this id was applied before with the same content; conflict if different.
    An id older than the dedup horizon counts as forgotten whether or not it was pruned yet,
    so the answer depends only on the clock (not on when the account was last pruned, nor
    on a store that still holds an id its changelog deleted)."""
    if account is None:
        return False
    entry = account.seen.get(key)
    if entry is None:
        return False
    cutoff = _horizon_cutoff_us(state)
    if cutoff is not None and entry[1] < cutoff:
        return False
    if entry[0] != fp:
        raise DuplicateConflict("id already applied with different content", field=id_field)
    return True


def _horizon_cutoff_us(state: EngineState) -> int | None:
    """Event time before which ids are no longer remembered: ``now - dedup_horizon``."""
    horizon = state.config.dedup_horizon_us
    if horizon is None or state.now_us is None:
        return None
    return state.now_us - horizon


def _check_horizon(state: EngineState, ts_us: int) -> None:
    """Reject a fill or movement older than the dedup horizon (SPEC §3 "applied once").

    Ids are remembered for ``dedup_horizon`` of event time (clock ticks), so that memory
    stays flat under sustained load. An event whose own ``ts`` is older than ``now -
    dedup_horizon`` could be a duplicate of an id already forgotten: it is rejected
    (``outside_dedup_horizon``) rather than risk applying it twice. A duplicate with
    identical content has the same ``ts``, so exact deduplication holds for every event
    that is applied; a *re-used* id with different content and a newer ``ts`` is detected
    only while the first use is within the horizon."""
    cutoff = _horizon_cutoff_us(state)
    if cutoff is not None and ts_us < cutoff:
        raise OutOfRange(
            f"ts {format_time_us(ts_us)} is more than the dedup horizon before the clock "
            f"{format_time_us(state.now_us)}: too late to be checked for duplicates",
            field="ts",
            reason="outside_dedup_horizon",
        )


def _remember(state: EngineState, account: Account, key: str, fp: str, ts_us: int) -> None:
    """Record an applied id, first forgetting the account's ids older than the horizon
    (once per clock value: the scan is amortised over the account's events of a tick)."""
    cutoff = _horizon_cutoff_us(state)
    if cutoff is not None and account.pruned_at_us != state.now_us:
        kept = {}
        for k, v in account.seen.items():
            if v[1] >= cutoff:
                kept[k] = v
            else:
                state.touched.add(seen_key(account.account_id, k))  # a deleted row
        account.seen = kept
        account.pruned_at_us = state.now_us
    account.seen[key] = [fp, ts_us]
    state.touched.add(seen_key(account.account_id, key))


def _account_src(state: EngineState, account_id: str) -> dict[str, int]:
    account = state.accounts.get(account_id)
    return account.src if account is not None else {}


def _already_applied(state: EngineState, account_id: str, key: str, fp: str, id_field: str, cause: Cause,
                     ts_us: int) -> bool:
    """A re-delivery (source offset already applied to the account's row) or a repeated id
    with identical content; a repeated id with other content raises a conflict, an event
    older than the dedup horizon is rejected."""
    account = state.accounts.get(account_id)
    if account is not None and _seen(account.src, cause):
        return True
    _check_horizon(state, ts_us)
    return _check_duplicate(state, account, key, fp, id_field)


def _account_changed(state: EngineState, account: Account, cause: Cause, event_us: int) -> list[Output]:
    """Publish for an account its own event changed, and mark its row applied and dirty."""
    outputs = _publish_now(state, account, cause, event_us)
    _mark(account.src, cause)
    state.touched.add(f"account:{account.account_id}")
    return outputs


def _check_fill_time(contract: ContractState, ev: Fill) -> None:
    listing = contract.listing
    if ev.ts_us < listing.listing_us:
        raise OutOfRange("fill before the contract's listing_time", field="ts", reason="fill_before_listing")
    if ev.ts_us > listing.settlement_us:
        raise OutOfRange("fill after the contract's settlement_time", field="ts", reason="fill_after_settlement_time")


def _apply_fill(state: EngineState, ev: Fill, cause: Cause) -> list[Output]:
    contract = state.contracts.get(ev.contract_id)
    if contract is not None and contract.settlement is None and not _seen(_account_src(state, ev.account_id), cause):
        _check_fill_time(contract, ev)  # the specific reason first (an applied fill passed it)
    if _already_applied(state, ev.account_id, f"t:{ev.trade_id}", ev.fingerprint, "trade_id", cause, ev.ts_us):
        return []
    contract = _known_contract(state, ev.contract_id)
    listing = contract.listing
    if contract.settlement is not None:
        raise ContractSettled("fill after settlement", field="contract_id")
    if not contract.lower_dec <= ev.price <= contract.upper_dec:
        raise OutOfRange(
            f"price {ev.price} outside the range [{listing.lower:g}, {listing.upper:g}]",
            field="price",
            reason="price_out_of_range",
        )
    account = _get_account(state, ev.account_id)
    _remember(state, account, f"t:{ev.trade_id}", ev.fingerprint, ev.ts_us)
    position = account.positions.get(ev.contract_id)
    if position is None:
        position = account.positions[ev.contract_id] = Position(ZERO, ZERO)
        account.ordered = None
    position.add_fill(ev.delta, ev.notional, ev.price)
    book = contract.book
    row = book.row_for(account.account_id, account.index)
    book.set(row, position)
    # The scalar IM equals the vectorised one bit for bit (same float inputs, same ops).
    book.im[row] = _position_components(contract, position)["im"]
    return _account_changed(state, account, cause, ev.ts_us)


def _apply_movement(state: EngineState, ev: Movement, cause: Cause) -> list[Output]:
    if _already_applied(state, ev.account_id, f"m:{ev.movement_id}", ev.fingerprint, "movement_id", cause, ev.ts_us):
        return []
    account = _get_account(state, ev.account_id)
    _remember(state, account, f"m:{ev.movement_id}", ev.fingerprint, ev.ts_us)
    account.equity += ev.amount
    return _account_changed(state, account, cause, ev.ts_us)


def apply(state: EngineState, event: Event, cause: Cause, raw: dict | None = None) -> tuple[EngineState, list[Output]]:
    """Apply one validated event; return the (same, updated) state and the records to
    publish. Raises :class:`~stream.core.errors.Rejected` -- with the state unchanged -- for
    input that cannot be applied. ``raw`` is the decoded message (kept for persistence of
    listings, flashes and settlements)."""
    if isinstance(event, Fill):
        outputs = _apply_fill(state, event, cause)
    elif isinstance(event, Movement):
        outputs = _apply_movement(state, event, cause)
    elif isinstance(event, Tick):
        outputs = _apply_tick(state, event, cause)
    elif isinstance(event, Flash):
        outputs = _apply_flash(state, event, raw or {}, cause)
    elif isinstance(event, Listing):
        outputs = _apply_listing(state, event, raw or {}, cause)
    elif isinstance(event, Settlement):
        outputs = _apply_settlement(state, event, raw or {}, cause)
    else:  # pragma: no cover - the parsers return only the types above
        raise TypeError(f"not an event: {event!r}")
    return state, outputs
