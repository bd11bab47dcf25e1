"""Versioned state rows (stream/durable.py): a batch whose rows landed only in part is
rolled back to the last complete batch, and re-applying the log then reproduces the clean
run exactly -- the property the worker's crash recovery rests on. The worker's persister
and loader call the same functions (``durable.stage``, ``durable.load``,
``durable.deleted``) as the simulated ones here."""

from __future__ import annotations

import itertools
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.worker import durable
from stream.core.engine import EngineConfig, EngineState, row_order
from stream.log.ordered_log import apply_record, encode_entry, encode_record
from stream.core.topics import COLLATERAL, FILLS, LISTINGS, SETTLEMENTS, TICKS

from .conftest import TSLA, comparable_rows

CID = TSLA["contract_id"]


def test_encode_split_effective_round_trip():
    row, prev = orjson.dumps({"a": [1, 2, {"b": "x,y}"}]}), orjson.dumps({"a": []})
    stored = durable.encode(41, row, prev)
    assert orjson.loads(stored) == {"v": 41, "n": len(row), "row": {"a": [1, 2, {"b": "x,y}"}]}, "prev": {"a": []}}
    assert durable.split(stored) == (41, row, prev)
    assert durable.effective(stored, 41) == row and durable.effective(stored, 40) == prev
    new = durable.encode(7, row, None)
    assert durable.split(new) == (7, row, None) and durable.effective(new, 6) is None and durable.effective(None, 9) is None
    gone = durable.encode(8, b"null", row)
    assert durable.load([("k", gone)], 8) == ({}, ["k"]) and durable.load([("k", gone)], 7) == ({"k": row}, ["k"])
    assert durable.deleted([("a", b"null"), ("b", row)]) == ["a"]
    with pytest.raises(ValueError):
        durable.split(b'{"listing": 1}')


# --------------------------------------------------------------------------- a crash, by hand
def _batches() -> list[list[bytes]]:
    """Log records of one partition: the listing and deposits, then a batch whose fill
    precedes a tick and the contract's settlement (rows of every kind change in it)."""
    offsets = {t: itertools.count() for t in (LISTINGS, COLLATERAL, FILLS, TICKS, SETTLEMENTS)}

    def entry(topic, value):
        return encode_entry(topic, 0, next(offsets[topic]), value)

    first = [encode_record([entry(LISTINGS, TSLA), entry(TICKS, {"ts": "2026-04-10T00:00:00Z"}),
                            entry(COLLATERAL, {"movement_id": "M", "account_id": "A", "amount": "100000.00",
                                               "ts": "2026-04-10T00:00:00Z"})])]
    second = [encode_record([
        entry(FILLS, {"trade_id": "T1", "account_id": "A", "contract_id": CID, "side": "BUY", "price": 450000,
                      "notional": 10000, "ts": "2026-04-10T01:00:00Z"}),
        entry(FILLS, {"trade_id": "T2", "account_id": "B", "contract_id": CID, "side": "SELL", "price": 455000,
                      "notional": 5000, "ts": "2026-04-10T01:00:00Z"}),
        entry(TICKS, {"ts": "2026-04-22T00:00:00Z"}),
        entry(SETTLEMENTS, {"contract_id": CID, "value": 470000, "ts": "2026-07-02T00:00:00Z"}),
    ])]
    return [first, second]


def _persist(store: dict, state: EngineState, offset: int, durable_offset: int, keep) -> None:
    """What the persister writes for a batch ending at log ``offset``; ``keep`` chooses
    which of the changed rows land (a crash in between loses the others)."""
    keys = sorted(state.touched, key=row_order)
    rows = [(key, orjson.dumps(state.row(key))) for key in keys if keep(key, keys)]
    store.update(durable.stage(rows, store.get, offset, durable_offset))
    state.touched.clear()


def _load(store: dict, meta: int, config: EngineConfig | None = None) -> EngineState:
    live, rewrite = durable.load(store.items(), meta)
    state = EngineState.from_rows(((k, orjson.loads(v)) for k, v in live.items()), config)
    state.touched.update(rewrite)
    return state


@pytest.mark.parametrize("landed", ["none", "clock and contracts", "accounts", "every other row", "all but meta"])
def test_a_partly_written_batch_is_rolled_back_and_replayed_exactly(landed):
    batches = _batches()
    clean = EngineState()
    clean_outputs = [o.value for offset, records in enumerate(batches) for r in records
                     for o in apply_record(clean, 0, offset, r)]

    store: dict[str, bytes] = {}
    state = EngineState()
    outputs = [o.value for r in batches[0] for o in apply_record(state, 0, 0, r)]
    _persist(store, state, 0, -1, lambda key, keys: True)  # batch 0 complete: meta = 0
    outputs += [o.value for r in batches[1] for o in apply_record(state, 0, 1, r)]  # outputs published
    choose = {
        "none": lambda key, keys: False,
        "clock and contracts": lambda key, keys: key == "clock" or key.startswith("contract:"),
        "accounts": lambda key, keys: key.startswith("account:"),
        "every other row": lambda key, keys: keys.index(key) % 2 == 0,
        "all but meta": lambda key, keys: True,
    }[landed]
    _persist(store, state, 1, 0, choose)  # ... and the worker dies before batch 1's meta

    recovered = _load(store, meta=0)  # exactly the state after batch 0
    replayed = [o.value for r in batches[1] for o in apply_record(recovered, 0, 1, r)]
    assert outputs == clean_outputs  # what was published before the crash
    assert replayed == clean_outputs[len(clean_outputs) - len(replayed):]  # published again: same ids, same content
    assert comparable_rows(recovered.rows()) == comparable_rows(clean.rows())
    assert replayed and any(o.get("cause", {}).get("topic") == SETTLEMENTS for o in replayed)


# --------------------------------------------------------------------------- random crashes
HORIZON_US = 2 * 86_400 * 1_000_000


def _random_log(rnd: random.Random, n: int) -> list[bytes]:
    """One entry per record: a listing, deposits, fills over four accounts whose trade ids
    are re-used (with other content) once the 2-day dedup horizon has passed, and ticks a
    day apart -- so ids are remembered, pruned (deleted rows) and remembered again."""
    offsets = {t: itertools.count() for t in (LISTINGS, COLLATERAL, FILLS, TICKS)}

    def record(topic, value):
        return encode_record([encode_entry(topic, 0, next(offsets[topic]), value)])

    log = [record(LISTINGS, TSLA), record(TICKS, {"ts": "2026-04-01T00:00:00Z"})]
    day = 1
    for i in range(n):
        account = f"A{rnd.randrange(4)}"
        kind = rnd.random()
        ts = f"2026-04-{day:02d}T12:00:00Z"
        if kind < 0.15:
            day += 1
            log.append(record(TICKS, {"ts": f"2026-04-{day:02d}T00:00:00Z"}))
        elif kind < 0.3:
            log.append(record(COLLATERAL, {"movement_id": f"M{rnd.randrange(6)}", "account_id": account,
                                           "amount": f"{rnd.randrange(1, 50) * 100}.00", "ts": ts}))
        else:  # few trade ids: repeats (identical or not) and re-use after the horizon
            log.append(record(FILLS, {"trade_id": f"T{rnd.randrange(8)}", "account_id": account, "contract_id": CID,
                                      "side": rnd.choice(("BUY", "SELL")), "price": rnd.choice((420000, 450000)),
                                      "notional": 1000, "ts": ts}))
    return log


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_crashes_anywhere_in_the_persister_always_recover_the_clean_run(seed):
    """The worker's persistence protocol, simulated over a random log: batches of records,
    rounds of one or more batches, and a crash at a random point of a random round --
    before, among or after the rows, after the meta, among the tombstones -- then a reload
    at the durable meta and re-application. Every record published has one content per id,
    and the final stored state equals a clean run's."""
    rnd = random.Random(seed)
    config = EngineConfig(dedup_horizon_us=HORIZON_US)
    log = _random_log(rnd, 60)
    clean = EngineState(config=config)
    published = {}
    for offset, record in enumerate(log):
        for out in apply_record(clean, 0, offset, record):
            published[out.value["id"]] = out.value

    store: dict[str, bytes] = {}
    meta, meta_digest = -1, 0
    state = _load(store, meta, config)
    pos = 0
    while pos < len(log):
        round_rows: dict[str, bytes] = {}
        for _batch in range(rnd.randint(1, 2)):  # boundaries merged into one round
            for _ in range(rnd.randint(1, 4)):
                if pos < len(log):
                    for out in apply_record(state, 0, pos, log[pos]):
                        assert published[out.value["id"]] == out.value
                    pos += 1
            round_rows.update((k, orjson.dumps(state.row(k))) for k in state.touched)
            state.touched.clear()
        version = pos - 1
        staged, round_digest = durable.stage_with_digest(sorted(round_rows.items()), store.get, version, meta,
                                                         meta_digest)
        crash = rnd.choice(["none", "none", "rows", "meta", "tombstones"])
        rnd.shuffle(staged)  # a crash can land any subset of a round's rows
        landed = staged if crash != "rows" else staged[: rnd.randrange(len(staged) + 1)]
        store.update(landed)
        if crash != "rows":
            meta, meta_digest = version, round_digest
            if crash != "meta":
                gone = durable.deleted(round_rows.items())
                for key in gone if crash == "none" else gone[: rnd.randrange(len(gone) + 1)]:
                    store.pop(key, None)
        # the meta's digest is the loaded rows' digest, whatever subset of a round landed
        assert durable.digest(durable.load(store.items(), meta)[0].items()) == meta_digest
        if crash != "none":
            state = _load(store, meta, config)
            pos = meta + 1
    final = _load(store, meta, config)
    assert comparable_rows(final.rows()) == comparable_rows(clean.rows())


# --------------------------------------------------------------------------- a zombie
def test_a_zombies_late_rows_fail_the_digest_and_the_log_rebuilds_the_state():
    """A worker replaced while it held a batch's rows (frozen past the session timeout)
    writes them after its successor's later batches: the rows as loaded are then no writer's
    state -- the account row is the zombie's, from before the settlement the successor
    applied -- and the meta's digest says so. The log, applied again from offset 0, is the
    state the successor held."""
    batches = _batches()
    third = [encode_record([encode_entry(TICKS, 0, 5, {"ts": "2026-07-03T00:00:00Z"})])]
    store: dict[str, bytes] = {}
    successor = EngineState()
    meta, meta_digest = -1, 0
    zombie_rows = None
    for offset, records in enumerate(batches + [third]):
        for r in records:
            apply_record(successor, 0, offset, r)
        rows = {k: orjson.dumps(successor.row(k)) for k in sorted(successor.touched, key=row_order)}
        successor.touched.clear()
        staged, meta_digest = durable.stage_with_digest(sorted(rows.items()), store.get, offset, meta, meta_digest)
        if offset == 1:  # the zombie held exactly these rows, staged against the same durable meta
            zombie_rows = staged
        store.update(staged)
        meta = offset
    assert durable.digest(durable.load(store.items(), meta)[0].items()) == meta_digest  # the successor's own rows

    store.update(zombie_rows)  # thawed: its late rows land after the successor's batches
    live, _ = durable.load(store.items(), meta)
    # equal rows only where the third batch changed nothing; the tick changed the clock
    assert durable.digest(live.items()) != meta_digest

    rebuilt = EngineState()
    for offset, records in enumerate(batches + [third]):
        for r in records:
            apply_record(rebuilt, 0, offset, r)
    assert durable.digest((k, orjson.dumps(v)) for k, v in rebuilt.rows()) == meta_digest
    assert comparable_rows(rebuilt.rows()) == comparable_rows(successor.rows())


def test_the_digest_is_order_free_and_ignores_deleted_rows():
    rows = [(b"0|a", b'{"x":1}'), (b"0|b", b"[1,2]"), (b"0|c", b"null")]
    assert durable.digest(rows) == durable.digest(reversed(rows)) == durable.digest(rows[:2])
    assert durable.digest(rows) != durable.digest([(b"0|a", b'{"x":2}'), rows[1]])
    assert durable.digest([(b"1|a", b'{"x":1}'), rows[1]]) != durable.digest(rows)  # the key counts
    changed = durable.update(durable.digest(rows), b"0|a", b'{"x":1}', b'{"x":2}')
    assert changed == durable.digest([(b"0|a", b'{"x":2}'), rows[1]])
    assert durable.update(changed, b"0|a", b'{"x":2}', None) == durable.digest([rows[1]])
