"""The streaming shell: a faust-streaming worker around the pure engine (SPEC §1, §3, §4).

One worker process runs two stages:

**The router** (:mod:`stream.worker.router`) writes the ordered log ``margin.log``: one task per
log partition this worker's engine owns, reading input partition ``p`` of the account
topics and every partition of the others, merged in broker-timestamp order, so each log
partition is one total order of the events that concern its accounts, with one writer.
What is invalid on its own (undecodable, oversized, schema-invalid, misrouted) goes to
``margin.deadletter``. The log is its commit: each record says where the task stands.

**The engine agent** (``apply_log``, a faust agent) reads ``margin.log`` and, per
partition, applies each record with :func:`stream.log.ordered_log.apply_record` -- the same
core the what-if and audit tools call -- and publishes the requirement, call and
dead-letter records it returns. A record this worker's router wrote is *handed off*
(:meth:`Engine.handoff`): once the broker acknowledged it, and if the engine owns its
partition and is at exactly its offset, it is applied at once from the router's parsed
inputs (:func:`stream.log.ordered_log.apply_parsed`, the same outputs) -- no wait for a fetch
of the log, no second parse; when faust delivers it later it is only acked. Outputs and
state rows go to the broker as producer batches (:mod:`stream.worker.outbox`). Its state lives in a faust table (``state``) whose
changelog is co-partitioned with the log: one row per contract, the clock, each account and
each id it remembers for deduplication, plus a ``meta`` row naming the last log offset
whose effects are all durable.

Delivery guarantee (at-least-once, idempotent). The agent applies records in memory and
publishes their outputs without waiting; at a batch boundary (the input queue is empty, or
``KPIMARGIN_BATCH_MAX`` entries) it snapshots the rows the batch changed and hands them to
the persister (:meth:`Engine.persist`), which, in order and without holding up the agent:

1. waits until every output of the batch is acknowledged by the broker;
2. writes the changed rows to the changelog, each versioned with the batch's last log
   offset and carrying its previous value (:mod:`stream.worker.durable`), and waits for them;
3. writes the ``meta`` row (the batch's last log offset) and waits for it;
4. acks the batch's log records, so faust may commit their offsets (the records handed
   off before faust delivered them are acked when delivered, once durable).

State is therefore never ahead of the outputs it implies. A partition is loaded exactly as
of its ``meta`` offset -- a row newer than ``meta`` counts as its previous value -- so a
batch whose rows landed only in part is rolled back and applied again, and resumed right
after ``meta``: that offset is committed before faust seeks the stream (and the log is
sought back if a record beyond it still arrives). Each row also remembers the source
offsets it has applied, so an input forwarded twice changes no row twice; every output is
published again with the same id and content (consumers deduplicate by ``id``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import types
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.streams import _current_event  # the task-local "current event" tables write under

from stream.worker import durable
from stream.core.engine import EngineState, row_order
from stream.kafka.clients import ssl_context
from stream.worker.lifecycle import confirm, guarded
from stream.log.ordered_log import Parsed, apply_parsed, apply_record_entries
from stream.worker.outbox import Outbox
from stream.worker.rebuild import RebuildError, rebuild_from_log
from stream.worker.router import Router
from stream.settings import Settings
from stream.core.topics import LOG, OUTPUT_TOPICS

log = logging.getLogger("kpimargin")

def _credentials(settings: Settings) -> Any:
    protocol = settings.security_protocol
    if protocol.startswith("SASL"):
        kwargs = dict(username=settings.sasl_username, password=settings.sasl_password)
        if protocol == "SASL_SSL":
            kwargs["ssl_context"] = ssl_context(settings)
        return faust.SASLCredentials(mechanism=settings.sasl_mechanism, **kwargs)
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    return None


def faust_config(settings: Settings) -> dict:
    """The faust App options this processor runs with (secure, at-least-once)."""
    return dict(
        broker=[f"kafka://{hp.strip()}" for hp in settings.bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, min(3.0, settings.session_timeout_s / 4)),
        broker_rebalance_timeout=max(settings.session_timeout_s, 10.0),
        broker_commit_interval=settings.commit_interval_s,
        broker_request_timeout=settings.request_timeout_s,
        producer_request_timeout=settings.request_timeout_s,
        producer_max_request_size=2 * settings.log_record_max_bytes,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_linger=settings.producer_linger_ms / 1000.0,
        producer_max_batch_size=settings.producer_batch_bytes,
        key_serializer="raw",
        value_serializer="raw",
        table_standby_replicas=0,
        web_enabled=settings.web_enabled,
        web_bind=settings.web_bind,
        web_host=settings.web_bind,
        web_port=settings.web_port,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_router_enabled=False,
        web_metrics_enabled=False,
        stream_wait_empty=False,
        stream_buffer_maxsize=settings.stream_buffer_records,  # faust's default, 4,096, holds GBs of batched records
        # every topic, faust's own included, is created by stream.kafka.clients.ensure_topics before
        # the app starts: faust's declaration sends its CreateTopics to the first broker its
        # metadata lists, and a worker starting while that broker is down would crash
        topic_allow_declare=False,
    )


def _patch_fetch_wait(max_wait_ms: int) -> None:
    """faust 0.15 passes ``fetch_max_wait_ms=1500`` to aiokafka with no setting to change
    it; replace the value for the consumers this process creates."""
    import aiokafka
    from faust.transport.drivers import aiokafka as driver

    base = aiokafka.AIOKafkaConsumer

    class Consumer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *topics, **kwargs):
            kwargs["fetch_max_wait_ms"] = max_wait_ms
            super().__init__(*topics, **kwargs)

    proxy = types.ModuleType("aiokafka")
    proxy.__dict__.update(aiokafka.__dict__)
    proxy.AIOKafkaConsumer = Consumer  # type: ignore[attr-defined]
    driver.aiokafka = proxy


class Stats:
    """Counters reported every 10 s at INFO (reset after each report)."""

    FIELDS = ("records", "handed_off", "entries", "outputs", "boundaries", "routed", "rejected", "apply_s", "persist_s",
              "rebuilt")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, 0)

    def line(self) -> str:
        return (f"router: {self.routed} inputs routed, {self.rejected} dead-lettered; engine: {self.records} log records "
                f"({self.handed_off} handed off by the router), "
                f"{self.entries} entries, {self.outputs} outputs, {self.boundaries} batches persisted; "
                f"apply {self.apply_s:.2f}s, persist {self.persist_s:.2f}s"
                + (f"; {self.rebuilt} partition(s) rebuilt from the log" if self.rebuilt else ""))


# =========================================================================== engine
@dataclass
class Partition:
    """The live engine state of one log partition."""

    state: EngineState
    epoch: int
    next_offset: int  # the next log offset to apply
    events: list = field(default_factory=list)  # faust events applied since the last boundary
    entries: int = 0
    applied: bool = False  # a record was applied since the last boundary (handed off ones have no event)
    rewind_to: int | None = None  # a seek back is pending: waiting for this offset
    rewound_at: float = 0.0


@dataclass
class Boundary:
    """One batch handed to the persister: output deliveries to confirm, then per partition
    the changed rows, the meta row and the log records to ack once durable."""

    outputs: list
    parts: list[tuple[int, int, list[tuple[bytes, bytes]], int, list]]  # (p, epoch, rows, last log offset, events)


def row_key(p: int, key: str) -> bytes:
    return f"{p}|{key}".encode()



class _InPartition:
    """Stands for an event of log partition ``p`` where faust's table stores look for the
    current event: they take the partition to write from it (rocksdb keeps one database
    per partition)."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, p: int):
        self.message = types.SimpleNamespace(partition=p)


@contextmanager
def writing_for(p: int):
    """Write to the table's local store as if processing an event of log partition ``p``."""
    stand_in = _InPartition(p)
    token = _current_event.set(weakref.ref(stand_in))
    try:
        yield
    finally:
        _current_event.reset(token)


class Engine:
    """The ``apply_log`` agent's state and its persister (see the module docstring)."""

    def __init__(self, app: faust.App, table, settings: Settings, stats: Stats):
        self.app, self.table, self.settings, self.stats = app, table, settings, stats
        self.config = settings.engine_config()
        self.parts: dict[int, Partition] = {}
        self.epochs: dict[int, int] = {}
        self.out_names = {name: settings.topic(name) for name in OUTPUT_TOPICS}
        self.log_name = settings.topic(LOG)
        self.changelog = table.changelog_topic.get_topic_name()
        self.outbox: Outbox | None = None  # outputs, in producer batches (see ensure_outboxes)
        self.rows: Outbox | None = None  # the persister's state rows, in producer batches
        self.awaiting_ack: dict[int, list] = {}  # per partition: faust events of records applied before, acked once durable
        self.queue: asyncio.Queue[Boundary] = asyncio.Queue(maxsize=settings.persist_queue_max)
        fault, _, at = settings.fault_injection.partition(":")
        self.fault, self.fault_at = fault, int(at) if at else 0
        self.frozen = False  # a freeze_ fault has fired (it fires once)
        self.persisted = 0  # boundaries made durable since start
        self.unpersisted = 0  # boundaries handed to the persister and not yet durable
        self.entries_since = 0  # log entries applied since the last boundary
        self.stopping = False
        self.last_event_at = time.monotonic()  # the last log record delivered that was not beyond a gap
        self.lock = asyncio.Lock()  # held by the persister while it writes rows; a revocation waits for it
        self.durable_meta: dict[int, int] = {}  # per partition: the log offset of the last durable meta row
        self.digests: dict[int, int] = {}  # per partition: the digest of its rows as of that meta (durable.digest)
        self.tombstones: dict[int, tuple[int, list]] = {}  # per partition: (epoch, keys) deleted, to tombstone

    # ---------------------------------------------------------------- faults
    def maybe_die(self, point: str) -> None:
        """Fault injection for the crash and freeze tests: at a named point, SIGKILL this
        process (``point``) or SIGSTOP it, once (``freeze_`` + point: a zombie in the
        making -- it goes on from there when it gets SIGCONT)."""
        if self.persisted < self.fault_at:
            return
        if self.fault == point:
            log.warning("fault injection: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.fault == f"freeze_{point}" and not self.frozen:
            self.frozen = True
            log.warning("fault injection: SIGSTOP at %s", point)
            os.kill(os.getpid(), signal.SIGSTOP)
            log.warning("fault injection: going on from %s after SIGCONT", point)

    # ---------------------------------------------------------------- partitions
    def partition_rows(self, p: int) -> tuple[dict | None, dict[str, bytes], list[str]]:
        """Partition ``p`` as of its durable ``meta`` row: that row (None: none yet), the
        rows (:func:`stream.worker.durable.load`: a row written by a batch whose meta never landed
        counts as its previous value) as JSON bytes, and the keys to write again at the
        next batch."""
        prefix = f"{p}|".encode()
        stored = {k[len(prefix):].decode(): v for k, v in list(self.table.data.items())
                  if k.startswith(prefix) and v is not None}
        meta_raw = stored.pop("meta", None)
        meta = orjson.loads(meta_raw) if meta_raw is not None else None
        live, rewrite = durable.load(stored.items(), meta["log_offset"] if meta else -1)
        return meta, live, rewrite

    async def load(self, p: int) -> Partition:
        """The engine state of log partition ``p`` from the table (recovered from its
        changelog by faust), exactly as of its ``meta`` log offset, and the offset to
        resume at: right after it. Rows stored newer than ``meta`` (rolled back) or as
        deleted are written again by the first batch, so the store converges.

        Rows whose digest is not the one ``meta`` carries are no writer's state (a zombie's
        late writes, :mod:`stream.worker.durable`): the state is rebuilt from the log instead, and
        the first batch writes every row again."""
        self.maybe_die("in_recovery")
        meta, live, rewrite = self.partition_rows(p)
        offset = meta["log_offset"] if meta else -1
        found = durable.digest((row_key(p, key), row) for key, row in live.items())
        expected = meta.get("digest") if meta else None
        rebuilt = expected is not None and expected != durable.format_digest(found)
        if rebuilt:
            log.warning("partition %d: the changelog's rows do not match the digest of their meta row (log offset "
                        "%d): rows written by a replaced worker after its successor's; rebuilding from margin.log",
                        p, offset)
            try:
                state = await rebuild_from_log(self.settings, p, offset, self.config)
            except RebuildError as exc:
                log.critical("partition %d: %s", p, exc)
                raise
            state.touched.update(key for key, _row in state.rows())
            state.touched.update(live)  # rows the rebuilt state lacks are written as deleted
            self.stats.rebuilt += 1
        else:
            state = EngineState.from_rows(((key, orjson.loads(row)) for key, row in live.items()), self.config)
        state.touched.update(rewrite)
        self.durable_meta[p] = offset
        self.digests[p] = found  # the rows' digest as the table holds them: each batch updates it
        part = Partition(state, self.epochs.get(p, 0), offset + 1)
        part.applied = rebuilt  # the next batch writes the rebuilt rows, even if nothing new is applied
        log.info("partition %d: state loaded (%d accounts, %d contracts), resuming at log offset %d",
                 p, len(state.accounts), len(state.contracts), part.next_offset)
        return part

    def forget(self, tps) -> None:
        """Revoked partitions: drop their live state; the persister skips their batches."""
        for tp in tps:
            if tp.topic == self.log_name:
                self.parts.pop(tp.partition, None)
                self.awaiting_ack.pop(tp.partition, None)
                self.epochs[tp.partition] = self.epochs.get(tp.partition, 0) + 1

    async def rewind(self, p: int, part: Partition) -> None:
        """Seek the log partition back to the next offset to apply (at most twice a second:
        records fetched before the seek still arrive and are dropped meanwhile)."""
        now = time.monotonic()
        if part.rewind_to == part.next_offset and now - part.rewound_at < 0.5:
            return
        log.warning("partition %d: seeking the log back to offset %d", p, part.next_offset)
        part.rewind_to, part.rewound_at = part.next_offset, now
        # seek_wait runs in faust's consumer thread (``Consumer.seek`` calls aiokafka from this
        # one, racing its fetcher: seen to crash faust's Fetcher) and resets faust's read offset
        tp = self.app.consumer._new_topicpartition(self.log_name, p)
        await self.app.consumer.seek_wait({tp: part.next_offset})

    # ---------------------------------------------------------------- the agent
    async def ensure_outboxes(self) -> None:
        """Create the outboxes on the started producer (once; any task may ask first)."""
        if self.outbox is None:
            producer = self.app.producer._ensure_producer()  # noqa: SLF001 - faust's aiokafka producer
            outbox = Outbox(producer)
            await outbox.prepare(self.out_names.values())
            if self.outbox is None:
                self.outbox, self.rows = outbox, Outbox(producer)

    async def run(self, stream) -> None:
        await self.ensure_outboxes()
        queue = stream.channel.queue
        batch_max = self.settings.batch_max
        async for event in stream.events():
            if self.stopping:  # the worker is stopping: apply nothing more (see drain)
                await self.boundary()
                await asyncio.Event().wait()
            p, offset = event.message.partition, event.message.offset
            part = self.parts.get(p)
            if part is None:
                part = self.parts[p] = await self.load(p)
            if offset > part.next_offset:  # a gap: seek back; this record comes again
                await self.rewind(p, part)
            else:
                self.last_event_at = time.monotonic()
                part.rewind_to = None
                if offset == part.next_offset:
                    self.apply(p, part, offset, event.value)
                    part.events.append(event)
                else:  # applied before (handed off by the router, or re-delivered after a seek)
                    self.ack_when_durable(p, offset, event)
            if queue.empty() or self.entries_since >= batch_max:
                await self.boundary()
            else:
                await self.outbox.flush()  # type: ignore[union-attr]

    def ack_when_durable(self, p: int, offset: int, event) -> None:
        """Ack the faust event of a record applied before: now if its effects are durable,
        else once the persister has made them so."""
        if offset <= self.durable_meta.get(p, -1):
            event.ack()
        else:
            self.awaiting_ack.setdefault(p, []).append((offset, event))

    def handoff(self, records: list[tuple[int, int, list[Parsed | None]]]) -> bool:
        """Log records this worker's router just wrote, ``(log partition, log offset,
        Parsed inputs of its entries)``, acknowledged by the broker: each one whose
        partition this engine owns and whose offset is the next it applies is applied now,
        from the router's parsed inputs, instead of after a fetch of the log (one broker
        hop less). Any other is left to the log: applying stays strictly in log order. The
        agent later receives these records from the log too and only acks them.
        True if anything was applied (the caller then ends the batch)."""
        applied = False
        for p, offset, parsed in records:
            part = self.parts.get(p)
            if part is None or self.stopping or offset != part.next_offset or None in parsed:
                continue
            self.apply(p, part, offset, None, parsed)  # type: ignore[arg-type]
            self.stats.handed_off += 1
            applied = True
        return applied

    def apply(self, p: int, part: Partition, offset: int, record: bytes | None,
              parsed: list[Parsed] | None = None) -> None:
        """Apply one log record (or the router's parsed inputs of its entries, the same
        outputs) and queue its outputs in the outbox. Synchronous: no other task runs
        between applying a record and queueing what it publishes."""
        t0 = time.perf_counter()
        state = part.state
        if parsed is None:
            outputs = []
            entries = 0
            for _entry, produced in apply_record_entries(state, p, offset, record):
                outputs.extend(produced)
                entries += 1
        else:
            outputs = [out for item in parsed for out in apply_parsed(state, p, item)]
            entries = len(parsed)
        part.entries += entries
        self.entries_since += entries
        part.next_offset = offset + 1
        part.applied = True
        self.maybe_die("in_apply")  # state applied, its outputs not yet queued
        add = self.outbox.add  # type: ignore[union-attr]
        names = self.out_names
        for out in outputs:
            add(names[out.topic], out.key.encode(), orjson.dumps(out.value))
        self.stats.apply_s += time.perf_counter() - t0
        self.stats.records += 1
        self.stats.outputs += len(outputs)

    async def boundary(self) -> None:
        """Snapshot the rows the batch changed and hand the batch to the persister, with
        the deliveries of every output it published (taken in the same synchronous step:
        what another task applies meanwhile belongs to the next batch)."""
        parts = []
        for p, part in self.parts.items():
            if not part.applied:
                continue
            state = part.state
            rows = [(row_key(p, key), orjson.dumps(state.row(key))) for key in sorted(state.touched, key=row_order)]
            state.touched.clear()
            parts.append((p, part.epoch, rows, part.next_offset - 1, part.events))
            self.stats.entries += part.entries
            part.events, part.entries, part.applied = [], 0, False
        self.entries_since = 0
        if parts:
            taken = self.outbox.take()  # type: ignore[union-attr]
            self.unpersisted += 1
            await self.outbox.submit(taken)  # type: ignore[union-attr]
            await self.queue.put(Boundary(self.outbox.deliveries(), parts))  # type: ignore[union-attr]

    # ---------------------------------------------------------------- persister
    def current(self, p: int, epoch: int) -> bool:
        return self.epochs.get(p, 0) == epoch

    async def send_rows(self, p: int, rows: list[tuple[bytes, bytes | None]]) -> list:
        """Send rows (a None value: a tombstone) to the table's changelog partition straight
        through the producer, in batches (not ``table[key] = value``: faust buffers those and
        gives up flushing after 100 ms, so offsets could be committed before the rows were
        sent); return the deliveries."""
        rows_box = self.rows
        for key, value in rows:
            rows_box.add(self.changelog, key, value, p)  # type: ignore[union-attr]
        await rows_box.flush()  # type: ignore[union-attr]
        return rows_box.deliveries()  # type: ignore[union-attr]

    def store_rows(self, rows: list[tuple[bytes, bytes]], p: int) -> None:
        """Rows the changelog acknowledged, into the table's local store (only then: a
        local store must never hold what the changelog does not)."""
        with writing_for(p):
            for key, value in rows:
                self.table.data[key] = value

    async def persist(self) -> None:
        """The persister task: boundaries in order, several at a time when they queue up.

        A round: confirm the outputs; then, holding :attr:`lock` (a revocation waits for
        it, so no row of a revoked partition is written after the revocation), write each
        partition's changed rows versioned with the round's last log offset
        (:mod:`stream.worker.durable`) -- with the tombstones of rows the previous round deleted --
        confirm them, write the ``meta`` rows, confirm them, and ack the round's log
        records: two waits for the broker a round."""
        await self.ensure_outboxes()
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            t0 = time.perf_counter()
            await confirm([f for b in batch for f in b.outputs], "outputs")
            self.maybe_die("after_outputs")  # outputs acknowledged, state not yet written
            rows: dict[tuple[int, int], dict[bytes, bytes]] = {}
            last: dict[tuple[int, int], tuple[int, list]] = {}
            for b in batch:
                for p, epoch, part_rows, offset, events in b.parts:
                    rows.setdefault((p, epoch), {}).update(part_rows)
                    last[(p, epoch)] = (offset, last.get((p, epoch), (0, []))[1] + events)
            async with self.lock:
                live = [(p, epoch) for p, epoch in last if self.current(p, epoch)]
                stored: dict[int, list[tuple[bytes, bytes]]] = {}
                digests: dict[int, int] = {}
                for p, epoch in live:
                    durable_offset = self.durable_meta.get(p, -1)
                    part_rows = rows.get((p, epoch), {})
                    stored[p], digests[p] = durable.stage_with_digest(part_rows.items(), self.table.data.get,
                                                                      last[(p, epoch)][0], durable_offset,
                                                                      self.digests.get(p, 0))
                futures = []
                for p, epoch in live:
                    half = len(stored[p]) // 2
                    futures += await self.send_rows(p, self.tombstones_due(p, epoch, rows.get((p, epoch), {}))
                                                    + stored[p][:half])
                    if half and self.fault in ("mid_rows", "freeze_mid_rows"):  # testing: half the rows durable
                        await confirm(futures, "state rows")
                        self.maybe_die("mid_rows")
                    futures += await self.send_rows(p, stored[p][half:])
                await confirm(futures, "state rows")
                for p, epoch in live:
                    self.forget_tombstoned(p)
                    self.store_rows(stored[p], p)
                self.maybe_die("after_rows")  # rows durable; meta not yet written, offsets not acked
                metas = {p: [(row_key(p, "meta"), orjson.dumps({"log_offset": last[(p, epoch)][0],
                                                                 "digest": durable.format_digest(digests[p])}))]
                         for p, epoch in live}
                futures = []
                for p in metas:
                    futures += await self.send_rows(p, metas[p])
                await confirm(futures, "meta rows")
                for p, epoch in live:
                    self.store_rows(metas[p], p)
                    self.durable_meta[p] = last[(p, epoch)][0]
                    self.digests[p] = digests[p]
                    for event in last[(p, epoch)][1]:
                        event.ack()
                    self.ack_durable(p)
                    # deleted rows (ids the dedup horizon forgot) are durable as deleted now:
                    # real tombstones replace them with the next round's rows
                    self.tombstones[p] = (epoch, durable.deleted(rows.get((p, epoch), {}).items()))
            self.persisted += len(batch)
            self.unpersisted -= len(batch)
            self.stats.boundaries += len(batch)
            self.stats.persist_s += time.perf_counter() - t0

    def ack_durable(self, p: int) -> None:
        """Ack the waiting events (see :meth:`ack_when_durable`) that partition ``p``'s
        durable meta now covers."""
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
        with writing_for(p):
            for key in keys:
                self.table.data.pop(key, None)

    async def settle_persister(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every batch handed to the persister is durable."""
        deadline = time.monotonic() + timeout_s
        while self.unpersisted and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def drain(self, timeout_s: float) -> None:
        """Stop applying, then wait until every batch applied is durable (or the timeout).
        A batch in progress is handed over at the agent's next record, or is already
        complete: the agent ends a batch whenever its input queue is empty."""
        self.stopping = True
        await self.settle_persister(timeout_s)

    async def commit_resume_offsets(self) -> None:
        """Commit ``meta + 1`` for every assigned log partition (see ``on_rebalance_complete``)."""
        if self.fault == "skip_resume_commit":  # testing: leave the group's offsets as they are
            return
        consumer = self.app.consumer
        offsets = {}
        for tp in consumer.assignment():
            if tp.topic == self.log_name:
                meta = self.table.data.get(row_key(tp.partition, "meta"))
                offsets[tp] = (orjson.loads(meta)["log_offset"] if meta is not None else -1) + 1
        if offsets:
            await consumer._commit(offsets)  # noqa: SLF001 - faust's one call that commits given offsets
            log.info("log resume offsets committed: %s", {tp.partition: o for tp, o in sorted(offsets.items())})

    async def watchdog(self) -> None:
        """Every second: a seek back that has not yet brought its record for a second is
        repeated (records fetched before a seek can move faust's read position past it
        again); when no partition delivered anything for ``stall_timeout_s`` while one has
        records past its next offset to apply, that partition is sought back there (a lost
        fetch position; a busy worker starving one partition for a while is not one)."""
        consumer = self.app.consumer
        stall_s = self.settings.stall_timeout_s
        now = time.monotonic()
        for p, part in list(self.parts.items()):
            tp = consumer._new_topicpartition(self.log_name, p)
            if tp not in consumer.assignment():
                continue
            if part.rewind_to is not None:
                if now - part.rewound_at > 1.0:
                    part.rewound_at = 0.0
                    await self.rewind(p, part)
                continue
            try:
                end = consumer.highwater(tp)
            except Exception:
                continue
            if end is not None and end > part.next_offset and now - self.last_event_at > stall_s:
                log.warning("partition %d: no log record for %.0f s with the log at %d and the state at %d",
                            p, stall_s, end, part.next_offset)
                self.last_event_at = now
                await self.rewind(p, part)


# =========================================================================== the app
def create_app(settings: Settings) -> faust.App:
    _patch_fetch_wait(settings.fetch_max_wait_ms)
    app = faust.App(settings.app_id, autodiscover=False, **faust_config(settings))
    log_topic = app.topic(settings.topic(LOG), key_type=bytes, value_type=bytes, partitions=settings.partitions)
    table = app.Table("state", partitions=settings.partitions, key_type=bytes, value_type=bytes)
    stats = Stats()
    engine = Engine(app, table, settings, stats)
    router = Router(app, settings, stats, engine)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:  # noqa: ARG001
        # the router stops and its batches in flight land (the next owner of a log
        # partition resumes where its last record says) and are handed to the engine
        await guarded("rebalance", router.revoke)
        # let the batches already applied become durable (briefly: the group waits), so
        # that a partition kept or taken over is not applied and published again from further back
        await engine.settle_persister(timeout_s=min(5.0, settings.session_timeout_s / 3))
        async with engine.lock:  # not in the middle of writing rows: a round is all or nothing
            engine.forget(revoked)
            await app.producer.flush()  # what was handed over lands before the new owner reads

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:  # noqa: ARG001
        router.assign({tp.partition for tp in assigned if tp.topic == engine.log_name})

    @app.on_rebalance_complete.connect
    async def on_rebalance_complete(sender, **kwargs) -> None:  # noqa: ARG001
        """Before faust seeks the stream to the committed offsets: commit, for each log
        partition assigned, the offset right after its durable ``meta`` -- where the engine
        resumes -- so that the stream starts exactly there (faust's own commits may have
        run past it, or lag behind it)."""
        await guarded("rebalance", engine.commit_resume_offsets)

    @app.agent(log_topic, name="apply_log")
    async def apply_log(stream):
        await guarded("apply_log", engine.run, stream.noack())

    @app.task
    async def persister() -> None:
        await guarded("persister", engine.persist)

    @app.task
    async def route() -> None:
        await guarded("router", router.run)

    @app.timer(interval=1.0)
    async def watchdog() -> None:
        await guarded("watchdog", engine.watchdog)

    @app.timer(interval=10.0)
    async def report_stats() -> None:
        """Every 10 s at INFO: what the router and the engine did, and where time went."""
        if stats.routed or stats.records:
            log.info("%s", stats.line())
            stats.reset()

    app.kpimargin_settings = settings  # type: ignore[attr-defined]
    app.kpimargin_engine = engine  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings) -> None:
    """Run one faust worker in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    app = create_app(settings)

    @app.task
    async def install_signals() -> None:
        """SIGUSR1 prints every asyncio task's stack to stderr (diagnosing a stuck worker),
        and with PYTHONTRACEMALLOC set the largest allocations first;
        SIGTERM and SIGINT stop the worker (see ``stop``)."""
        import sys

        loop = asyncio.get_running_loop()

        def dump() -> None:
            import tracemalloc

            if tracemalloc.is_tracing():  # PYTHONTRACEMALLOC=N: where the memory is
                for stat in tracemalloc.take_snapshot().statistics("traceback")[:12]:
                    print(f"--- {stat.size / 1e6:.1f} MB in {stat.count} blocks", file=sys.stderr)
                    for line in stat.traceback.format()[-6:]:
                        print(f"    {line}", file=sys.stderr)
            for task in asyncio.all_tasks():
                print(f"--- task {task.get_name()}", file=sys.stderr)
                coro = task.get_coro()
                while coro is not None:
                    frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
                    if frame is not None:
                        print(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}", file=sys.stderr)
                    coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
            sys.stderr.flush()

        async def stop() -> None:
            """Let the persister make what was applied durable (a few seconds at most),
            then exit at once -- not through faust's shutdown, which was seen to commit
            log offsets past the last durable batch. Whatever is not durable is applied
            again by the next owner of the partition, idempotently."""
            log.warning("stopping: making applied batches durable, then exiting")
            await app.kpimargin_engine.drain(timeout_s=5.0)  # type: ignore[attr-defined]
            logging.shutdown()
            os._exit(0)

        loop.add_signal_handler(signal.SIGUSR1, dump)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(stop()))

    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
