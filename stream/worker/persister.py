"""The persister: makes the engine agent's batches durable, in order, without holding it up.

The protocol it implements is described once, in ``docs/delivery.md``; the
row format it writes in :mod:`stream.worker.durable`. :class:`Persister` depends only on a
:class:`RowStore` (the table's local store) and a :class:`Changelog` (the table's changelog
topic), so that it can be run -- and crashed anywhere -- on its own
(``tests/test_durable.py``); the worker gives it the faust table and the producer
(:mod:`stream.worker.table`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import orjson

from stream.core.state import EngineState, in_row_order
from stream.worker import durable
from stream.worker.faults import Faults
from stream.worker.lifecycle import confirm
from stream.worker.stats import Stats


def row_key(p: int, key: str) -> bytes:
    """The table key of row ``key`` of log partition ``p``."""
    return f"{p}|{key}".encode()


def changed_rows(p: int, state: EngineState) -> list[tuple[bytes, bytes]]:
    """The rows a batch changed in partition ``p`` (its ``touched`` keys, then cleared),
    as ``(table key, row JSON)`` in the order they are written."""
    rows = [(row_key(p, key), orjson.dumps(state.row(key))) for key in in_row_order(state.touched)]
    state.touched.clear()
    return rows


@dataclass
class Loaded:
    """A partition's rows as the table holds them, read as of their durable ``meta``."""

    offset: int  # the meta row's log offset (-1: no meta yet)
    live: dict[str, bytes]  # the rows as of it (deleted ones left out), by row key
    rewrite: list[str]  # the keys the next batch writes again (rolled back, or stored as deleted)
    digest: int  # the digest of ``live``
    trusted: bool  # the digest is the one the meta row carries (a meta without one is trusted)

    def state(self, config=None) -> EngineState:
        """The engine state of these rows; the keys to write again are marked touched."""
        state = EngineState.from_rows(((key, orjson.loads(row)) for key, row in self.live.items()), config)
        state.touched.update(self.rewrite)
        return state


def read_partition(p: int, stored: Iterable[tuple[str, bytes]]) -> Loaded:
    """Partition ``p``'s stored rows ``(row key, stored value)``, ``meta`` among them, read
    as of the meta's log offset (:func:`stream.worker.durable.load`) and checked against
    its digest (:mod:`stream.worker.durable`: a mismatch means rows of a replaced worker)."""
    rows = dict(stored)
    meta_raw = rows.pop("meta", None)
    meta = orjson.loads(meta_raw) if meta_raw is not None else {}
    offset = meta.get("log_offset", -1)
    live, rewrite = durable.load(rows.items(), offset)
    found = durable.digest((row_key(p, key), row) for key, row in live.items())
    expected = meta.get("digest")
    return Loaded(offset, live, rewrite, found, expected is None or expected == durable.format_digest(found))


@dataclass
class PartitionBatch:
    """What one batch changed in one log partition."""

    p: int
    epoch: int  # the agent's epoch of ``p`` when the batch was cut (a revocation moves it on)
    rows: list[tuple[bytes, bytes]]  # (table key, row JSON; b"null": deleted)
    last_offset: int  # the batch's last log offset
    events: list  # faust events of the log records the batch applied, acked once durable


@dataclass
class Boundary:
    """One batch handed to the persister."""

    outputs: list  # delivery futures of every output the batch published
    parts: list[PartitionBatch]


class RowStore(Protocol):
    """A table's local store: written only with rows the changelog acknowledged."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, p: int, rows: list[tuple[bytes, bytes]]) -> None: ...

    def delete(self, p: int, keys: list[bytes]) -> None: ...


class Changelog(Protocol):
    """A table's changelog topic."""

    async def send(self, rows: dict[int, list[tuple[bytes, bytes | None]]]) -> list:
        """Send rows (None: a tombstone), per partition, in one go; return their delivery futures."""
        ...


class Persister:
    """Rounds of one or more queued batches, each made durable in five steps:

    1. wait until the broker acknowledged every output of the round;
    2. holding :attr:`lock` (a revocation waits for it: no row of a revoked partition is
       written after the revocation), stage each partition's changed rows -- for the
       partitions the agent still owns (``is_current``) -- versioned with the round's
       last log offset, each with its value as of the durable ``meta``, and the digest of
       the partition's rows after them (:func:`stream.worker.durable.stage_with_digest`);
    3. send the tombstones the previous round left due and the staged rows; wait for
       them; only then store them locally;
    4. send each partition's ``meta`` row (the last log offset and the digest); wait;
       store it;
    5. note the durable offset and digest, ack the round's log records (and those
       delivered again meanwhile, :meth:`ack_when_durable`), and keep the keys the
       round deleted for the next round's tombstones.

    A crash anywhere leaves the ``meta`` of the last complete round, and rows that
    :func:`stream.worker.durable.load` rolls back to it.
    """

    def __init__(self, store: RowStore, changelog: Changelog, is_current: Callable[[int, int], bool],
                 faults: Faults, stats: Stats, queue_max: int):
        self.store, self.changelog, self.is_current = store, changelog, is_current
        self.faults, self.stats = faults, stats
        self.queue: asyncio.Queue[Boundary] = asyncio.Queue(maxsize=queue_max)
        self.lock = asyncio.Lock()
        self.handing = asyncio.Lock()  # one hand-over at a time (see hand_over)
        self.durable_meta: dict[int, int] = {}  # per partition: the log offset of the last durable meta row
        self.digests: dict[int, int] = {}  # per partition: the digest of its rows as of that meta
        self.tombstones: dict[int, tuple[int, list]] = {}  # per partition: (epoch, keys) deleted, to tombstone
        self.awaiting_ack: dict[int, list] = {}  # per partition: (offset, event) delivered again, acked once durable
        self.persisted = 0  # batches made durable since start
        self.unpersisted = 0  # batches handed over and not yet durable

    # ---------------------------------------------------------------- the agent's side
    def resumed(self, p: int, offset: int, digest: int) -> None:
        """Partition ``p`` was loaded as of its durable ``meta`` at ``offset``, its rows with ``digest``."""
        self.durable_meta[p], self.digests[p] = offset, digest

    def forget(self, p: int) -> None:
        """Partition ``p`` was revoked: its waiting acks are no longer this worker's."""
        self.awaiting_ack.pop(p, None)

    async def hand_over(self, outbox, taken: list, parts: list[PartitionBatch]) -> None:
        """Queue a batch: submit its outputs (``taken`` from the agent's outbox) and queue
        it with their deliveries. It counts as handed over from the start, so that a
        revocation waiting in :meth:`settle` waits for it too.

        Batches queue in the order they were taken, whichever task hands them over (the
        agent's and the router's hand-off both end batches): one hand-over at a time, in
        the order of the (fair) :attr:`handing` lock, taken without yielding after the
        caller's ``take``. ``asyncio.Queue`` alone does not keep that order: a ``put``
        arriving while a waiting ``put`` has been woken but has not yet run goes first,
        and a round would then write an older batch's rows over a newer one's."""
        self.unpersisted += 1
        async with self.handing:
            await outbox.submit(taken)
            await self.queue.put(Boundary(outbox.deliveries(), parts))

    def ack_when_durable(self, p: int, offset: int, event) -> None:
        """Ack the event of a log record applied before: now if its effects are durable,
        else once a round has made them so."""
        if offset <= self.durable_meta.get(p, -1):
            event.ack()
        else:
            self.awaiting_ack.setdefault(p, []).append((offset, event))

    async def settle(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every batch handed over is durable."""
        deadline = time.monotonic() + timeout_s
        while self.unpersisted and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    # ---------------------------------------------------------------- rounds
    async def run(self) -> None:
        """Forever: take every batch queued (at least one) and make them durable as one round."""
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            t0 = time.perf_counter()
            await self.round(batch)
            self.persisted += len(batch)
            self.unpersisted -= len(batch)
            self.stats.boundaries += len(batch)
            self.stats.persist_seconds.observe(time.perf_counter() - t0)

    async def round(self, batch: list[Boundary]) -> None:
        """Steps 1 to 5 (class docstring) for the batches of one round."""
        await confirm([f for b in batch for f in b.outputs], "outputs")  # 1
        self.faults.here("after_outputs", self.persisted)
        rows: dict[tuple[int, int], dict[bytes, bytes]] = {}
        last: dict[tuple[int, int], tuple[int, list]] = {}
        for b in batch:
            for part in b.parts:
                rows.setdefault((part.p, part.epoch), {}).update(part.rows)
                last[(part.p, part.epoch)] = (part.last_offset, last.get((part.p, part.epoch), (0, []))[1] + part.events)
        async with self.lock:
            live = [(p, epoch) for p, epoch in last if self.is_current(p, epoch)]
            staged: dict[int, list[tuple[bytes, bytes]]] = {}
            digests: dict[int, int] = {}
            for p, epoch in live:  # 2
                staged[p], digests[p] = durable.stage_with_digest(rows[(p, epoch)].items(), self.store.get,
                                                                  last[(p, epoch)][0], self.durable_meta.get(p, -1),
                                                                  self.digests.get(p, 0))
            outgoing = {p: self.tombstones_due(p, epoch, rows[(p, epoch)]) + staged[p] for p, epoch in live}  # 3
            futures = []
            if self.faults.active("mid_rows") and any(len(r) > 1 for r in outgoing.values()):  # testing: half durable
                futures += await self.changelog.send({p: r[: len(r) // 2] for p, r in outgoing.items()})
                await confirm(futures, "state rows")
                self.faults.here("mid_rows", self.persisted)
                outgoing = {p: r[len(r) // 2:] for p, r in outgoing.items()}
            futures += await self.changelog.send(outgoing)  # every partition's rows in one request
            await confirm(futures, "state rows")
            for p, epoch in live:
                self.forget_tombstoned(p)
                self.store.put(p, staged[p])
            self.faults.here("after_rows", self.persisted)
            metas = {p: [(row_key(p, "meta"), orjson.dumps({"log_offset": last[(p, epoch)][0],
                                                             "digest": durable.format_digest(digests[p])}))]
                     for p, epoch in live}
            await confirm(await self.changelog.send(metas), "meta rows")  # 4
            for p, epoch in live:  # 5
                self.store.put(p, metas[p])
                self.durable_meta[p] = last[(p, epoch)][0]
                self.digests[p] = digests[p]
                for event in last[(p, epoch)][1]:
                    event.ack()
                self.ack_durable(p)
                # deleted rows (ids the dedup horizon forgot) are durable as deleted now:
                # real tombstones replace them with the next round's rows
                self.tombstones[p] = (epoch, durable.deleted(rows[(p, epoch)].items()))

    def ack_durable(self, p: int) -> None:
        """Ack the waiting events that partition ``p``'s durable meta now covers."""
        waiting = self.awaiting_ack.get(p)
        if waiting:
            meta = self.durable_meta[p]
            due = [event for offset, event in waiting if offset <= meta]
            self.awaiting_ack[p] = [(offset, event) for offset, event in waiting if offset > meta]
            for event in due:
                event.ack()

    def tombstones_due(self, p: int, epoch: int, round_rows: dict) -> list[tuple[bytes, None]]:
        """Tombstones for the rows the previous round of partition ``p`` deleted, so that
        compaction removes the keys and the store forgets them (a tombstone that never
        lands leaves a deleted row, which reads as absent all the same; a key this round
        writes again is left alone)."""
        pending_epoch, keys = self.tombstones.get(p, (None, []))
        keys = [k for k in keys if k not in round_rows] if pending_epoch == epoch else []
        self.tombstones[p] = (epoch, keys)
        return [(key, None) for key in keys]

    def forget_tombstoned(self, p: int) -> None:
        """Drop the keys whose tombstones the broker acknowledged from the local store."""
        _epoch, keys = self.tombstones.pop(p, (None, []))
        self.store.delete(p, keys)
