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

from stream.core.errors import ContractSettled, DuplicateConflict, OutOfOrder, OutOfRange, UnknownContract
from stream.core.messages import (
    Cause,
    Event,
    Fill,
    Flash,
    Listing,
    Movement,
    Settlement,
    Tick,
)
from stream.core.requirements import holders_of, publish_now, remargin
from stream.core.state import (
    Account,
    add_position,
    ContractState,
    EngineState,
    Output,
    get_account,
    new_contract,
    refresh_book,
    seen_entry,
    seen_fingerprint,
    seen_key,
    seen_ts_us,
    set_flash,
    set_time,
    src_mark,
    src_seen,
    store_position_risk,
)
from stream.core.timeutil import format_time_us


def _apply_listing(state: EngineState, ev: Listing, raw: dict, cause: Cause) -> list[Output]:
    existing = state.contracts.get(ev.contract_id)
    if existing is not None:
        if existing.listing.fingerprint != ev.fingerprint:
            raise DuplicateConflict("contract already listed with different terms", field="contract_id")
        return []
    contract = new_contract(state, ev, raw, seq=len(state.contracts))
    src_mark(contract.src, cause)
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
    if not src_seen(contract.src, cause):
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
        set_flash(contract, ev, raw)
        refresh_book(state, contract)
        src_mark(contract.src, cause)
        state.touched.add(f"contract:{contract.contract_id}")
    return remargin(state, holders_of(state, contract), cause, ev.as_of_us)


def _apply_tick(state: EngineState, ev: Tick, cause: Cause) -> list[Output]:
    if not src_seen(state.clock_src, cause):
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
                set_time(state, contract)
                refresh_book(state, contract)
        src_mark(state.clock_src, cause)
        state.touched.add("clock")
    holders = [acc for acc in state.accounts.values() if acc.positions]
    return remargin(state, holders, cause, ev.ts_us)


def _apply_settlement(state: EngineState, ev: Settlement, raw: dict, cause: Cause) -> list[Output]:
    contract = _known_contract(state, ev.contract_id)
    holders = holders_of(state, contract)
    if not src_seen(contract.src, cause):
        if contract.settlement is not None:
            if contract.settlement.fingerprint == ev.fingerprint:
                return []
            raise DuplicateConflict("contract already settled at a different value", field="value")
        contract.settlement, contract.settlement_raw = ev, raw
        src_mark(contract.src, cause)
        state.touched.add(f"contract:{contract.contract_id}")
    outputs: list[Output] = []
    for account in holders:
        if src_seen(account.src, cause):
            continue
        row = account.positions.pop(contract.contract_id, None)
        if row is not None:
            account.equity_cents += contract.book.position(row).settle_pnl_cents(
                ev.value, contract.lower_dec, contract.upper_dec)
        outputs.extend(publish_now(state, account, cause, ev.ts_us))
        src_mark(account.src, cause)
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
    if cutoff is not None and seen_ts_us(entry) < cutoff:
        return False
    if seen_fingerprint(entry) != fp:
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
            if seen_ts_us(v) >= cutoff:
                kept[k] = v
            else:
                state.touched.add(seen_key(account.account_id, k))  # a deleted row
        account.seen = kept
        account.pruned_at_us = state.now_us
    account.seen[key] = seen_entry(fp, ts_us)
    state.touched.add(seen_key(account.account_id, key))


def _redelivered(account: Account | None, cause: Cause) -> bool:
    """A re-delivery: this source offset is already applied to the account's row."""
    return account is not None and src_seen(account.src, cause)


def _repeated_id(state: EngineState, account: Account | None, key: str, fp: str, id_field: str, ts_us: int) -> bool:
    """A repeated id with identical content; a repeated id with other content raises a
    conflict, an event older than the dedup horizon is rejected."""
    _check_horizon(state, ts_us)
    return _check_duplicate(state, account, key, fp, id_field)


def _account_changed(state: EngineState, account: Account, cause: Cause, event_us: int) -> list[Output]:
    """Publish for an account its own event changed, and mark its row applied and dirty."""
    outputs = publish_now(state, account, cause, event_us)
    src_mark(account.src, cause)
    state.touched.add(f"account:{account.account_id}")
    return outputs


def _check_fill_time(contract: ContractState, ev: Fill) -> None:
    listing = contract.listing
    if ev.ts_us < listing.listing_us:
        raise OutOfRange("fill before the contract's listing_time", field="ts", reason="fill_before_listing")
    if ev.ts_us > listing.settlement_us:
        raise OutOfRange("fill after the contract's settlement_time", field="ts", reason="fill_after_settlement_time")


def _apply_fill(state: EngineState, ev: Fill, cause: Cause) -> list[Output]:
    # The account and the contract are looked up once (a fill is the bulk of the input). A
    # re-delivery is skipped before anything else; the fill's time against its contract's
    # listing is checked before the dedup horizon and the id (the specific reason first: an
    # applied fill passed it).
    account = state.accounts.get(ev.account_id)
    if _redelivered(account, cause):
        return []
    contract = state.contracts.get(ev.contract_id)
    if contract is not None and contract.settlement is None:
        _check_fill_time(contract, ev)
    key = f"t:{ev.trade_id}"
    if _repeated_id(state, account, key, ev.fingerprint, "trade_id", ev.ts_us):
        return []
    if contract is None:
        contract = _known_contract(state, ev.contract_id)  # raises UnknownContract
    if contract.settlement is not None:
        raise ContractSettled("fill after settlement", field="contract_id")
    if not contract.lower_dec <= ev.price <= contract.upper_dec:
        listing = contract.listing
        raise OutOfRange(
            f"price {ev.price} outside the range [{listing.lower:g}, {listing.upper:g}]",
            field="price",
            reason="price_out_of_range",
        )
    if account is None:
        account = get_account(state, ev.account_id)
    _remember(state, account, key, ev.fingerprint, ev.ts_us)
    row = account.positions.get(ev.contract_id)
    if row is None:
        row = add_position(account, contract)
    contract.book.add_fill(row, ev.delta, ev.notional_cents, ev.price_units)
    # The scalar IM equals the vectorised one bit for bit (same float inputs, same ops).
    store_position_risk(contract, row)
    return _account_changed(state, account, cause, ev.ts_us)


def _apply_movement(state: EngineState, ev: Movement, cause: Cause) -> list[Output]:
    account = state.accounts.get(ev.account_id)
    key = f"m:{ev.movement_id}"
    if _redelivered(account, cause) or _repeated_id(state, account, key, ev.fingerprint, "movement_id", ev.ts_us):
        return []
    if account is None:
        account = get_account(state, ev.account_id)
    _remember(state, account, key, ev.fingerprint, ev.ts_us)
    account.equity_cents += ev.amount_cents
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
