"""The engine's state, as rows: the contracts, the event-time clock and the accounts of one
partition of the ordered log (:class:`EngineState`), each row remembering, per source
topic-partition, the highest source offset it applied (:func:`src_seen`); and the
maintenance of a contract's cached risk (its risk vector, time factors and book).

The engine (:mod:`stream.core.engine`) changes this state; the worker stores it as rows
(:meth:`EngineState.row`, :meth:`EngineState.from_rows`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cached_property
from decimal import Decimal
from typing import Any, Iterable, NamedTuple

import numpy as np

from stream.core import model
from stream.core.calls import OpenCall
from stream.core.model import RiskVector
from stream.core.money import ZERO, cents_str, to_cents
from stream.core.positions import Q_SCALE, Book, Position
from stream.core.messages import (
    Cause,
    Flash,
    Listing,
    Settlement,
    parse_flash,
    parse_listing,
    parse_settlement,
)


class Output(NamedTuple):
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

    @cached_property
    def call_update_threshold_cents(self) -> int | Decimal:
        """The threshold in cents: an int when it is whole cents (compared int to int)."""
        cents = self.call_update_threshold * 100
        return int(cents) if cents == cents.to_integral_value() else cents


def _src_key(cause: Cause) -> str:
    return f"{cause.topic}/{cause.partition}"


def src_seen(src: dict[str, int], cause: Cause) -> bool:
    """True if a row has already applied this source offset (a re-delivery)."""
    return cause.offset is not None and src.get(_src_key(cause), -1) >= cause.offset


def src_mark(src: dict[str, int], cause: Cause) -> None:
    if cause.offset is not None:
        src[_src_key(cause)] = cause.offset


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


@dataclass(slots=True)  # 10,000s of accounts: no per-instance __dict__
class Account:
    account_id: str
    index: int
    equity_cents: int = 0
    # The open positions, contract_id -> the position's row in that contract's book (its
    # exact integers, floats and risk components: :class:`Book`), kept in contract_id order:
    # the order account IMs are summed in, the same in every partition and every run
    # whatever the order of listings and fills (see :func:`add_position`).
    positions: dict[str, int] = field(default_factory=dict)
    # "t:<trade_id>"/"m:<movement_id>" -> the id's fingerprint and ts_us packed in one int
    # (:func:`seen_entry`): the ids applied within the dedup horizon (older ones are pruned,
    # see :func:`_remember`). Persisted one row per id (see :func:`seen_key`), not in the
    # account's row: a fill then writes O(1) bytes, not every id the account applied within
    # the horizon.
    seen: dict[str, int] = field(default_factory=dict)
    src: dict[str, int] = field(default_factory=dict)
    published_im_cents: int | None = None
    published_equity_cents: int | None = None
    call: OpenCall | None = None
    # The clock value ``seen`` was last pruned at (not persisted: pruning at a given clock
    # value gives the same ``seen`` whenever it runs, since older ids are never added).
    pruned_at_us: int | None = field(default=None, repr=False, compare=False)

    def as_row(self, contracts: dict[str, "ContractState"]) -> dict:
        return {
            "account_id": self.account_id,
            "equity": cents_str(self.equity_cents),
            "positions": {cid: contracts[cid].book.position(row).as_dict() for cid, row in self.positions.items()},
            "src": dict(self.src),
            "published_im_cents": self.published_im_cents,
            "published_equity": None if self.published_equity_cents is None else cents_str(self.published_equity_cents),
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
            yield f"account:{aid}", account.as_row(self.contracts)
            for key, entry in account.seen.items():
                yield seen_key(aid, key), seen_row(entry)

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
            return None if entry is None else seen_row(entry)
        if kind == "contract":
            contract = self.contracts.get(ident)
            return None if contract is None else contract.as_row()
        account = self.accounts.get(ident)
        return None if account is None else account.as_row(self.contracts)

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
            contract = new_contract(state, parse_listing(row["listing"]), row["listing"], row["seq"])
            if row["flash"] is not None:
                set_flash(contract, parse_flash(row["flash"]), row["flash"])
            if row["settlement"] is not None:
                contract.settlement = parse_settlement(row["settlement"])
                contract.settlement_raw = row["settlement"]
            contract.src = dict(row["src"])
            state.contracts[contract.contract_id] = contract
        for row in account_rows:
            account = get_account(state, row["account_id"])
            account.equity_cents = to_cents(row["equity"])
            account.src = dict(row["src"])
            account.published_im_cents = row["published_im_cents"]
            pe = row["published_equity"]
            account.published_equity_cents = None if pe is None else to_cents(pe)
            account.call = OpenCall.from_dict(row["call"])
            for cid, raw in sorted(row["positions"].items()):
                position = Position.from_dict(raw)
                account.positions[cid] = state.contracts[cid].book.add_row(
                    account.account_id, account.index, position.q_cents, position.a_units)
        for (account_id, id_key), entry in sorted(seen_rows):
            get_account(state, account_id).seen[id_key] = seen_entry(*entry)
        for contract in state.contracts.values():
            refresh_book(state, contract)
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


# A remembered id's entry is one int, the fingerprint (128 bits: 32 hex digits) above its
# ``ts_us`` (64 bits; 1970 to 2199 is below 2^53): 52 bytes, where a tuple of the
# fingerprint's text and the time took 169 -- the largest part of the state per fill.
_TS_BITS = 64
_TS_MASK = (1 << _TS_BITS) - 1


def seen_entry(fingerprint: str, ts_us: int) -> int:
    """The entry of an id applied with content ``fingerprint`` (hex) at event time ``ts_us``."""
    return int(fingerprint, 16) << _TS_BITS | ts_us


def seen_ts_us(entry: int) -> int:
    return entry & _TS_MASK


def seen_fingerprint(entry: int) -> str:
    return format(entry >> _TS_BITS, "032x")


def seen_row(entry: int) -> list:
    """The persisted row of an entry: ``[fingerprint, ts_us]``, as every version wrote it."""
    return [seen_fingerprint(entry), entry & _TS_MASK]


def seen_key(account_id: str, id_key: str) -> str:
    """The row key of one remembered id: ``seen:<len>:<account_id><id_key>`` (the length
    prefix keeps any account id unambiguous)."""
    return f"seen:{len(account_id)}:{account_id}{id_key}"


def split_seen_key(key: str) -> tuple[str, str]:
    """``(account_id, id_key)`` of a :func:`seen_key`."""
    length, _, rest = key[len("seen:"):].partition(":")
    n = int(length)
    return rest[:n], rest[n:]


def in_row_order(keys) -> list[str]:
    """``keys`` sorted by :func:`row_order`, faster: split by kind, each kind sorted as text."""
    groups: tuple[list[str], list[str], list[str], list[str]] = ([], [], [], [])
    for key in keys:
        groups[_ROW_RANK.get(key.partition(":")[0], 3)].append(key)
    return [key for group in groups for key in sorted(group)]


def row_order(key: str) -> tuple[int, str]:
    """The order a persistent shell writes rows in: the clock, contracts, remembered ids,
    then accounts, whose positions name contracts: in this order every prefix of a batch's
    rows loads with :meth:`EngineState.from_rows` (the worker goes further and rolls a
    partly written batch back altogether, see :mod:`stream.worker.durable`)."""
    return (_ROW_RANK.get(key.partition(":")[0], 3), key)


_ROW_RANK = {"clock": 0, "contract": 1, "seen": 2}


# Source of ContractState.version values: unique in the process, so a version can never be
# mistaken for another contract state's (e.g. after EngineState.from_rows).
_VERSIONS = itertools.count()


def new_contract(state: EngineState, listing: Listing, raw: dict, seq: int) -> ContractState:
    est = model.estimate(listing.history, listing.params)
    rv = model.risk_vector(listing.lower, listing.upper, listing.history, listing.params, est=est)
    contract = ContractState(listing=listing, listing_raw=raw, seq=seq, estimate=est, rv=rv)
    contract.lower_dec = Decimal(repr(listing.lower))
    contract.upper_dec = Decimal(repr(listing.upper))
    set_time(state, contract)
    return contract


def set_flash(contract: ContractState, flash: Flash, raw: dict) -> None:
    listing = contract.listing
    contract.rv = model.risk_vector(
        listing.lower, listing.upper, listing.history, listing.params, flash.value, flash.coverage, est=contract.estimate
    )
    contract.flash, contract.flash_raw = flash, raw
    contract.version = next(_VERSIONS)


def set_time(state: EngineState, contract: ContractState) -> None:
    """tau and the convergence factor at the current event time (SPEC §2.11, §2.15)."""
    listing = contract.listing
    now = state.now_us if state.now_us is not None else listing.listing_us
    contract.tau = model.tau(now, listing.listing_us, listing.settlement_us)
    contract.conv_f = model.conv_factor(contract.rv.k, contract.tau)
    contract.version = next(_VERSIONS)


def refresh_book(state: EngineState, contract: ContractState) -> None:
    """Re-margin every position of one contract in one vectorised pass (the same
    operations as the scalar path, in the same order: the same bits, a property test checks)."""
    book = contract.book
    n = book.n
    if n:
        q, a = book.columns()
        r = model.positions_risk(q, a, contract.rv, contract.conv_f)
        risk = book.risk
        for i, column in enumerate((r.im, r.max_loss, r.es, r.stress, r.conv, r.stat, r.conc)):
            risk[:n, i] = column
        book.versions[:n] = [contract.version] * n


def store_position_risk(contract: ContractState, row: int) -> float:
    """Compute one position's components (scalar path) into its book row; return its IM."""
    book = contract.book
    q, a = book.floats(row)
    components = model.position_components(q, a, contract.rv, contract.conv_f)
    book.risk[row] = components
    book.versions[row] = contract.version
    return components[0]


def position_record(contract: ContractState, row: int) -> tuple[float, dict]:
    """``(im, the requirement record's dict)`` of the position in book row ``row``, its
    components computed first if its row is not current (a fresh dict: callers own it)."""
    book = contract.book
    if book.versions[row] != contract.version:
        store_position_risk(contract, row)
    components = book.risk[row].tolist()
    return components[0], model.risk_dict(contract.contract_id, book.q_cents[row] / Q_SCALE, *components, contract.tau)


def add_position(account: Account, contract: ContractState) -> int:
    """A new, empty position of ``account`` in ``contract``: its book row, kept in
    contract_id order in the account's ``positions``."""
    contract_id = contract.contract_id
    row = contract.book.add_row(account.account_id, account.index)
    positions = account.positions
    out_of_order = any(cid > contract_id for cid in positions)
    positions[contract_id] = row
    if out_of_order:
        account.positions = dict(sorted(positions.items()))
    return row


def position_of(state: EngineState, account: Account, contract_id: str) -> Position | None:
    """``account``'s position in ``contract_id`` as a value (None if it holds none)."""
    row = account.positions.get(contract_id)
    return None if row is None else state.contracts[contract_id].book.position(row)


def get_account(state: EngineState, account_id: str) -> Account:
    account = state.accounts.get(account_id)
    if account is None:
        account = Account(account_id, index=len(state.accounts))
        state.accounts[account_id] = account
    return account
