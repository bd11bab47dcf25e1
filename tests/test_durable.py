"""Versioned state rows (stream/worker/durable.py) and the persister that writes them
(stream/worker/persister.py): a round whose rows landed only in part is rolled back to the
last complete round, and re-applying the log then reproduces the clean run exactly -- the
property the worker's crash recovery rests on. The persister tested here is the worker's
own :class:`~stream.worker.persister.Persister`, given an in-memory changelog that "dies"
after a chosen number of rows (what the broker holds when the worker is SIGKILLed), and
the partition is read back with the worker's own :func:`~stream.worker.persister.read_partition`."""

from __future__ import annotations

import asyncio
import itertools
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.state import EngineConfig, EngineState, row_order
from stream.core.topics import COLLATERAL, FILLS, LISTINGS, SETTLEMENTS, TICKS
from stream.log.ordered_log import apply_record, encode_entry, encode_record
from stream.worker import durable
from stream.worker.faults import Faults
from stream.worker.persister import Boundary, PartitionBatch, Persister, changed_rows, read_partition, row_key
from stream.worker.stats import Stats

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


class Died(Exception):
    """The worker died: the changelog accepts nothing more."""


class MemoryChangelog:
    """The state table's changelog as the broker holds it. It accepts ``budget`` rows
    (None: any number), then the worker dies; a tombstone (None) deletes the key."""

    def __init__(self, budget: int | None = None):
        self.rows: dict[bytes, bytes] = {}
        self.budget = budget

    async def send(self, rows_by_partition: dict[int, list]) -> list:
        for key, value in [row for rows in rows_by_partition.values() for row in rows]:
            if self.budget is not None:
                if self.budget == 0:
                    raise Died
                self.budget -= 1
            if value is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = value
        return []  # acknowledged at once: confirm has nothing to wait for

    def partition(self, p: int):
        prefix = row_key(p, "")
        return [(k[len(prefix):].decode(), v) for k, v in self.rows.items() if k.startswith(prefix)]


class MemoryStore:
    """The table's local store, recovered from the changelog (as faust does on assignment)."""

    def __init__(self, rows: dict):
        self.rows = dict(rows)

    def get(self, key):
        return self.rows.get(key)

    def put(self, p, rows):
        self.rows.update(rows)

    def delete(self, p, keys):
        for key in keys:
            self.rows.pop(key, None)


class Event:
    def __init__(self):
        self.acked = False

    def ack(self):
        self.acked = True


def _recover(changelog: MemoryChangelog, config: EngineConfig | None = None) -> tuple[EngineState, Persister, int]:
    """A worker starting on partition 0: its store recovered from the changelog, the
    partition read as of its meta (trusted: one writer), a persister resumed there; and
    the next log offset to apply."""
    loaded = read_partition(0, changelog.partition(0))
    assert loaded.trusted
    persister = Persister(MemoryStore(changelog.rows), changelog, lambda p, epoch: True, Faults(""), Stats(), 8)
    persister.resumed(0, loaded.offset, loaded.digest)
    return loaded.state(config), persister, loaded.offset + 1


def _round(persister: Persister, state: EngineState, last_offset: int, events: list) -> None:
    """One persister round of one batch of partition 0 ending at log ``last_offset``."""
    asyncio.run(persister.round([Boundary([], [PartitionBatch(0, 0, changed_rows(0, state), last_offset, events)])]))


@pytest.mark.parametrize("landed", ["none", "one row", "half the rows", "all but one row", "all rows, no meta"])
def test_a_partly_written_round_is_rolled_back_and_replayed_exactly(landed):
    batches = _batches()
    clean = EngineState()
    clean_outputs = [o.value for offset, records in enumerate(batches) for r in records
                     for o in apply_record(clean, 0, offset, r)]

    changelog = MemoryChangelog()
    state, persister, _next = _recover(changelog)
    outputs = [o.value for r in batches[0] for o in apply_record(state, 0, 0, r)]
    first = Event()
    _round(persister, state, 0, [first])  # batch 0 complete: meta = 0, its log record acked
    assert first.acked and read_partition(0, changelog.partition(0)).offset == 0
    outputs += [o.value for r in batches[1] for o in apply_record(state, 0, 1, r)]  # outputs published
    rows = len(state.touched)
    assert rows >= 6  # the clock, the contract, two accounts and their ids change
    changelog.budget = {"none": 0, "one row": 1, "half the rows": rows // 2, "all but one row": rows - 1,
                        "all rows, no meta": rows}[landed]
    second = Event()
    with pytest.raises(Died):  # ... the worker dies before batch 1's meta is durable
        _round(persister, state, 1, [second])
    assert not second.acked

    changelog.budget = None
    recovered, _persister, resume_at = _recover(changelog)  # exactly the state after batch 0
    assert resume_at == 1
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
def test_the_persister_crashed_anywhere_always_recovers_the_clean_run(seed):
    """The worker's persister over a random log: batches of records, rounds of one or two
    batches, and the worker killed at a random row of a random round -- among the
    tombstones, among the rows, before or after the meta -- then a restart that recovers
    the store from the changelog, reads the partition as of its meta and applies the log
    again from there. Every record published has one content per id, the meta's digest
    always matches the rows as read, and the final stored state equals a clean run's."""
    rnd = random.Random(seed)
    config = EngineConfig(dedup_horizon_us=HORIZON_US)
    log = _random_log(rnd, 60)
    clean = EngineState(config=config)
    published = {}
    for offset, record in enumerate(log):
        for out in apply_record(clean, 0, offset, record):
            published[out.value["id"]] = out.value

    changelog = MemoryChangelog()
    state, persister, pos = _recover(changelog, config)
    crashes = 0
    while pos < len(log):
        batches = []
        for _batch in range(rnd.randint(1, 2)):  # boundaries merged into one round
            for _ in range(rnd.randint(1, 4)):
                if pos < len(log):
                    for out in apply_record(state, 0, pos, log[pos]):
                        assert published[out.value["id"]] == out.value
                    pos += 1
            batches.append(Boundary([], [PartitionBatch(0, 0, changed_rows(0, state), pos - 1, [])]))
        rows = sum(len(part.rows) for b in batches for part in b.parts)
        changelog.budget = rnd.randrange(rows + 8) if rnd.random() < 0.4 else None  # rows, meta, tombstones
        try:
            asyncio.run(persister.round(batches))
        except Died:
            crashes += 1
            changelog.budget = None
            state, persister, pos = _recover(changelog, config)  # asserts the digest
        changelog.budget = None
    state, persister, pos = _recover(changelog, config)
    assert pos == len(log)
    assert comparable_rows(state.rows()) == comparable_rows(clean.rows())


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


# --------------------------------------------------------------------------- hand-over order
class GatedOutbox:
    """The agent's outbox as the persister sees it: ``submit`` returns once the batch's
    gate (an ``asyncio.Event`` in ``taken``, if any) is open, as a producer's ``send_batch``
    returns once the accumulator takes the batch."""

    async def submit(self, taken: list) -> None:
        for gate in taken:
            await gate.wait()

    def deliveries(self) -> list:
        return []


def test_batches_reach_the_persister_in_the_order_they_were_taken():
    """The agent and the router's hand-off both end batches. With the persister's queue
    full, the first hands its batch over and waits for room; the second's outputs are
    submitted just as a round takes a batch and makes room. The first batch must still be
    queued first: a round applies its batches in queue order, and the other order wrote an
    older account row over a newer one under a newer id row and an older meta row (the
    stale row rolling restarts showed), from which a restart loses the deposit. What the
    changelog ends with, resumed as a restarting worker would, must equal a state that
    applied every record."""
    records = [r for batch in _batches() for r in batch] + [encode_record([encode_entry(
        COLLATERAL, 0, 9, {"movement_id": "M2", "account_id": "A", "amount": "2500.00", "ts": "2026-07-02T00:00:00Z"})])]
    state = EngineState()
    snapshots = []
    for offset, record in enumerate(records):
        apply_record(state, 0, offset, record)
        snapshots.append(PartitionBatch(0, 0, changed_rows(0, state), offset, [Event()]))

    async def scenario() -> list[int]:
        changelog = MemoryChangelog()
        persister = Persister(MemoryStore({}), changelog, lambda p, epoch: True, Faults(""), Stats(), 1)
        box = GatedOutbox()
        await persister.hand_over(box, [], [snapshots[0]])  # the queue is full now
        first = asyncio.ensure_future(persister.hand_over(box, [], [snapshots[1]]))
        await asyncio.sleep(0)  # one turn of the loop: it waits for room in the queue
        gate = asyncio.Event()
        second = asyncio.ensure_future(persister.hand_over(box, [gate], [snapshots[2]]))
        await asyncio.sleep(0)  # it waits for its outputs to be submitted (or for its turn)
        gate.set()  # its outputs submitted, then ...
        queued = [persister.queue.get_nowait()]  # ... a round takes a batch: room for one
        queued.append(await persister.queue.get())
        queued.append(await persister.queue.get())
        await asyncio.gather(first, second)
        await persister.round(queued)
        assert all(event.acked for b in queued for part in b.parts for event in part.events)
        loaded = read_partition(0, changelog.partition(0))
        resumed = loaded.state(None)  # a worker restarting here resumes after the meta row's offset
        for offset in range(loaded.offset + 1, len(records)):
            apply_record(resumed, 0, offset, records[offset])
        # the other order: meta at offset 1 over the deposit's id row, and the deposit,
        # applied again, skipped as a repeat -- $2,500 of equity lost
        assert comparable_rows(resumed.rows()) == comparable_rows(state.rows())
        assert loaded.trusted and loaded.offset == len(records) - 1
        return [b.parts[0].last_offset for b in queued]

    assert asyncio.run(scenario()) == [0, 1, 2]
