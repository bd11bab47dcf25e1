"""The streaming shell: a faust-streaming worker around the pure engine (SPEC §1, §3, §4).

One worker process runs two stages:

**The router** (:class:`Router`) reads the six input topics and writes the ordered log
``margin.log``: fills and collateral movements to the log partition of their account,
listings, flashes, settlements and ticks to *every* partition, so each log partition is one
total order of the events that concern its accounts. What is invalid on its own
(undecodable, oversized, schema-invalid) goes to ``margin.deadletter``. It is stateless and
batched: one fetch of inputs becomes one log *record* per log partition (see
:mod:`stream.ordered_log`), and the input offsets are committed only after every record
and dead letter of the batch is acknowledged. It is a plain aiokafka consumer in its own
consumer group (``<app id>-router``), not a faust agent: faust's per-message machinery
costs ~100 µs a message here (9-12k messages/s consumed by a bare agent against ~320k/s by
aiokafka), and a stateless forwarder needs none of it (bench/RESULTS.md).

**The engine agent** (``apply_log``, a faust agent) reads ``margin.log`` and, per
partition, applies each record with :func:`stream.ordered_log.apply_record` -- the same
core the what-if and audit tools call -- and publishes the requirement, call and
dead-letter records it returns. Its state lives in a faust table (``state``) whose
changelog is co-partitioned with the log: one row per contract, the clock and each account,
plus a ``meta`` row naming the last log offset whose effects are all durable.

Delivery guarantee (at-least-once, idempotent). The agent applies records in memory and
publishes their outputs without waiting; at a batch boundary (the input queue is empty, or
``KPIMARGIN_BATCH_MAX`` entries) it snapshots the rows the batch changed and hands them to
the :class:`Persister`, which, in order and without holding up the agent:

1. waits until every output of the batch is acknowledged by the broker;
2. writes the changed rows (to the table's store and its changelog) and waits for them;
3. writes the ``meta`` row and waits for it;
4. acks the batch's log records, so faust may commit their offsets.

State is therefore never ahead of the outputs it implies, and the ``meta`` row never ahead
of the rows. A worker taking over a partition resumes right after the ``meta`` offset --
*not* at the group's committed offset: it seeks the log back when the two differ (a
changelog recovery that stopped early, an offset faust skipped). Each row also remembers
the source offsets it has applied, so records re-applied after a crash change no row
twice, and every output is published again with the same id and content (consumers
deduplicate by ``id``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import types
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable

import faust
import orjson
from faust.streams import _current_event  # the task-local "current event" tables write under

from .engine import EngineState, row_order
from .kafka import client_kwargs, ssl_context
from .ordered_log import apply_record_entries, merge_inputs, route_batch
from .settings import Settings
from .topics import DEADLETTER, INPUT_TOPICS, LOG, OUTPUT_TOPICS

log = logging.getLogger("kpimargin")

EXIT_FAILED = 70  # EX_SOFTWARE: a failure that is not bad input (a bug, a broken broker)


def die(what: str) -> None:
    """Bad input never raises (it is dead-lettered): this is a bug or a broken broker
    connection. faust would restart an agent *past* the failed events, so stop the whole
    process instead, before anything more is committed: a restarted worker resumes from
    the last durable state, exactly as after a SIGKILL."""
    log.critical("%s failed; exiting so that a restart resumes from the last durable state", what, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_FAILED)


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
        topic_allow_declare=True,
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


async def confirm(producer, futures: list, what: str) -> None:
    """Wait until the broker acknowledged every send; raise if one was not delivered.

    aiokafka's ``flush`` waits for every batch but does not report failures, so each
    message's future is checked afterwards -- a loop over finished futures, far cheaper
    than ``asyncio.wait`` on each of them (a callback per message: that was a third of a
    busy worker's time)."""
    if not futures:
        return
    if not all(f.done() for f in futures):
        await producer.flush()
        pending = [f for f in futures if not f.done()]
        if pending:  # sent after the flush began (not by us): wait for those few
            await asyncio.wait(pending)
    failed = [f for f in futures if f.cancelled() or f.exception() is not None]
    if failed:
        error = "cancelled" if failed[0].cancelled() else repr(failed[0].exception())
        raise RuntimeError(f"{len(failed)} {what} not delivered: {error}")


class Stats:
    """Counters reported every 10 s at INFO (reset after each report)."""

    FIELDS = ("records", "entries", "outputs", "boundaries", "routed", "rejected", "apply_s", "persist_s")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, 0)

    def line(self) -> str:
        return (f"router: {self.routed} inputs routed, {self.rejected} dead-lettered; engine: {self.records} log records, "
                f"{self.entries} entries, {self.outputs} outputs, {self.boundaries} batches persisted; "
                f"apply {self.apply_s:.2f}s, persist {self.persist_s:.2f}s")


# =========================================================================== router
class Router:
    """Input topics -> ``margin.log`` records and dead letters; see the module docstring."""

    def __init__(self, app: faust.App, settings: Settings, stats: Stats):
        self.app, self.settings, self.stats = app, settings, stats
        self.names = {settings.topic(t): t for t in INPUT_TOPICS}
        self.log_name = settings.topic(LOG)
        self.deadletter_name = settings.topic(DEADLETTER)

    def consumer(self):
        from aiokafka import AIOKafkaConsumer

        s = self.settings
        return AIOKafkaConsumer(
            *self.names,
            **client_kwargs(s),
            group_id=f"{s.app_id}-router",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(max(0.5, min(3.0, s.session_timeout_s / 4)) * 1000),
            rebalance_timeout_ms=int(max(s.session_timeout_s, 10.0) * 1000),
            request_timeout_ms=int(s.request_timeout_s * 1000),
            max_partition_fetch_bytes=2 * s.log_record_max_bytes,
        )

    def merged(self, batch: dict) -> list[tuple[str, int, int, bytes | None]]:
        """One fetch as ``(topic, partition, offset, raw)`` in broker-timestamp order
        (:func:`stream.ordered_log.merge_inputs`)."""
        return merge_inputs((self.names[tp.topic], tp.partition, [(r.timestamp, r.offset, r.value) for r in records])
                            for tp, records in batch.items())

    async def run(self) -> None:
        """Fetch, route, send -- without waiting for the broker between fetches: batches in
        flight are retired in order as their sends are acknowledged, and only then are
        their input offsets committed (at most every ``commit_interval_s`` while busy, at
        once when idle)."""
        from aiokafka import TopicPartition

        s = self.settings
        consumer = self.consumer()
        await consumer.start()
        producer = self.app.producer
        log.info("router: consuming %s as group %s-router", sorted(self.names), s.app_id)
        in_flight: deque[tuple[list, dict]] = deque()  # (send futures, next offsets) per batch, in order
        delivered: dict = {}  # offsets of acknowledged batches, not yet committed
        last_commit = time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=5 if in_flight else 1000, max_records=s.router_batch_max)
            batch = {tp: records for tp, records in batch.items() if records}
            if batch:
                messages = self.merged(batch)
                records, dead = route_batch(messages, s.partitions, s.max_message_bytes, s.log_record_max_bytes)
                sent = [await producer.send(self.log_name, None, record, p, None, None) for p, record in records]
                sent += [await producer.send(self.deadletter_name, d.key.encode(), orjson.dumps(d.value), None, None, None)
                         for d in dead]
                in_flight.append((sent, {TopicPartition(tp.topic, tp.partition): rs[-1].offset + 1 for tp, rs in batch.items()}))
                self.stats.routed += len(messages)
                self.stats.rejected += len(dead)
            if len(in_flight) > s.persist_queue_max:  # back-pressure: wait for the oldest batch
                await confirm(producer, in_flight[0][0], "log records")
            while in_flight and all(f.done() for f in in_flight[0][0]):
                futures, offsets = in_flight.popleft()
                await confirm(producer, futures, "log records")  # raises (and so stops the worker) on a failed send
                delivered.update(offsets)
            now = time.monotonic()
            if delivered and (not batch or now - last_commit >= s.commit_interval_s):
                await self.commit(consumer, delivered)
                delivered, last_commit = {}, now

    @staticmethod
    async def commit(consumer, offsets: dict) -> None:
        from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # a rebalance took partitions away: their new owner forwards them again, and
            # the engine applies each source offset once
            log.warning("router: commit failed (%r); those inputs will be forwarded again", exc)


# =========================================================================== engine
@dataclass
class Partition:
    """The live engine state of one log partition."""

    state: EngineState
    epoch: int
    next_offset: int  # the next log offset to apply
    events: list = field(default_factory=list)  # faust events applied since the last boundary
    entries: int = 0
    rewind_to: int | None = None  # a seek back is pending: waiting for this offset
    rewound_at: float = 0.0
    last_event_at: float = field(default_factory=time.monotonic)


@dataclass
class Boundary:
    """One batch handed to the persister: output deliveries to confirm, then per partition
    the changed rows, the meta row and the log records to ack once durable."""

    outputs: list
    parts: list[tuple[int, int, list[tuple[bytes, bytes]], bytes, list]]  # (p, epoch, rows, meta, events)


def row_key(p: int, key: str) -> bytes:
    return f"{p}|{key}".encode()



@contextmanager
def writing_for(event):
    """Table stores pick their partition from the task's current event (rocksdb keeps one
    database per partition): write rows as if processing ``event``."""
    token = _current_event.set(weakref.ref(event))
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
        self.in_flight: list = []  # output deliveries since the last boundary
        self.queue: asyncio.Queue[Boundary] = asyncio.Queue(maxsize=settings.persist_queue_max)
        fault, _, at = settings.fault_injection.partition(":")
        self.fault, self.fault_at = fault, int(at) if at else 0
        self.persisted = 0  # boundaries made durable since start
        self.unpersisted = 0  # boundaries handed to the persister and not yet durable
        self.entries_since = 0  # log entries applied since the last boundary
        self.stopping = False

    # ---------------------------------------------------------------- faults
    def maybe_die(self, point: str) -> None:
        """Fault injection for the crash tests: SIGKILL this process at a named point."""
        if self.fault == point and self.persisted >= self.fault_at:
            log.warning("fault injection: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    # ---------------------------------------------------------------- partitions
    def partition_rows(self, p: int) -> dict[str, dict]:
        prefix = f"{p}|".encode()
        return {
            k[len(prefix):].decode(): orjson.loads(v)
            for k, v in list(self.table.data.items())
            if k.startswith(prefix) and v is not None
        }

    def load(self, p: int) -> Partition:
        """The engine state of log partition ``p`` from the table (recovered from its
        changelog by faust), and the log offset to resume at: right after ``meta``."""
        self.maybe_die("in_recovery")
        rows = self.partition_rows(p)
        meta = rows.pop("meta", None) or {"log_offset": -1}
        state = EngineState.from_rows(rows.items(), self.config)
        part = Partition(state, self.epochs.get(p, 0), meta["log_offset"] + 1)
        log.info("partition %d: state loaded (%d accounts, %d contracts), resuming at log offset %d",
                 p, len(state.accounts), len(state.contracts), part.next_offset)
        return part

    def forget(self, tps) -> None:
        """Revoked partitions: drop their live state; the persister skips their batches."""
        for tp in tps:
            if tp.topic == self.log_name:
                self.parts.pop(tp.partition, None)
                self.epochs[tp.partition] = self.epochs.get(tp.partition, 0) + 1

    async def rewind(self, p: int, part: Partition) -> None:
        """Seek the log partition back to the next offset to apply (at most twice a second:
        records fetched before the seek still arrive and are dropped meanwhile)."""
        now = time.monotonic()
        if part.rewind_to == part.next_offset and now - part.rewound_at < 0.5:
            return
        log.warning("partition %d: seeking the log back to offset %d", p, part.next_offset)
        part.rewind_to, part.rewound_at = part.next_offset, now
        await self.app.consumer.seek(self.app.consumer._new_topicpartition(self.log_name, p), part.next_offset)

    # ---------------------------------------------------------------- the agent
    async def run(self, stream) -> None:
        queue = stream.channel.queue
        batch_max = self.settings.batch_max
        async for event in stream.events():
            if self.stopping:  # the worker is stopping: apply nothing more (see drain)
                await self.boundary()
                await asyncio.Event().wait()
            p, offset = event.message.partition, event.message.offset
            part = self.parts.get(p)
            if part is None:
                part = self.parts[p] = self.load(p)
            part.last_event_at = time.monotonic()
            if offset > part.next_offset:  # a gap: seek back; this record comes again
                await self.rewind(p, part)
                continue
            part.rewind_to = None
            if offset == part.next_offset:
                t0 = time.perf_counter()
                outputs = []
                for _entry, produced in apply_record_entries(part.state, p, offset, event.value):
                    outputs.extend(produced)
                    part.entries += 1
                    self.entries_since += 1
                self.stats.apply_s += time.perf_counter() - t0
                send = self.app.producer.send
                for out in outputs:
                    self.in_flight.append(await send(self.out_names[out.topic], out.key.encode(), orjson.dumps(out.value),
                                                     None, None, None))
                part.next_offset = offset + 1
                self.stats.records += 1
                self.stats.outputs += len(outputs)
            # else: applied before (a re-delivery after a seek or a rebalance): acked with this batch
            part.events.append(event)
            if queue.empty() or self.entries_since >= batch_max:
                await self.boundary()

    async def boundary(self) -> None:
        """Snapshot the rows the batch changed and hand the batch to the persister."""
        parts = []
        for p, part in self.parts.items():
            if not part.events:
                continue
            state = part.state
            rows = [(row_key(p, key), orjson.dumps(state.row(key))) for key in sorted(state.touched, key=row_order)]
            state.touched.clear()
            last = part.next_offset - 1
            meta = orjson.dumps({"log_offset": last})
            parts.append((p, part.epoch, rows, meta, part.events))
            self.stats.entries += part.entries
            part.events, part.entries = [], 0
        self.entries_since = 0
        if parts:
            outputs, self.in_flight = self.in_flight, []
            self.unpersisted += 1
            await self.queue.put(Boundary(outputs, parts))

    # ---------------------------------------------------------------- persister
    def current(self, p: int, epoch: int) -> bool:
        return self.epochs.get(p, 0) == epoch

    async def put_rows(self, p: int, epoch: int, rows: list[tuple[bytes, bytes]], event) -> list:
        """Write rows into the table's store, and to its changelog partition straight
        through the producer (not ``table[key] = value``: faust buffers those and gives up
        flushing after 100 ms, so offsets could be committed before the rows were sent).
        Stops as soon as the partition is revoked: its new owner reads the changelog."""
        futures = []
        send = self.app.producer.send
        with writing_for(event):
            for key, value in rows:
                if not self.current(p, epoch):
                    break
                self.table.data[key] = value
                futures.append(await send(self.changelog, key, value, p, None, None))
        return futures

    async def persist(self) -> None:
        """The persister task: boundaries in order, several at a time when they queue up."""
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            t0 = time.perf_counter()
            await confirm(self.app.producer, [f for b in batch for f in b.outputs], "outputs")
            self.maybe_die("after_outputs")  # outputs acknowledged, state not yet written
            rows: dict[tuple[int, int], dict[bytes, bytes]] = {}
            last: dict[tuple[int, int], tuple[bytes, list]] = {}
            for b in batch:
                for p, epoch, part_rows, meta, events in b.parts:
                    rows.setdefault((p, epoch), {}).update(part_rows)
                    meta_events = last.get((p, epoch), (b"", []))[1] + events
                    last[(p, epoch)] = (meta, meta_events)
            futures = []
            for (p, epoch), part_rows in rows.items():
                if part_rows:  # merged batches: back in the loadable order (see row_order)
                    ordered = sorted(part_rows.items(), key=lambda kv: row_order(kv[0].split(b"|", 1)[1].decode()))
                    futures += await self.put_rows(p, epoch, ordered, last[(p, epoch)][1][-1])
            await confirm(self.app.producer, futures, "state rows")
            self.maybe_die("after_rows")  # rows durable; meta not yet written, offsets not acked
            futures = []
            for (p, epoch), (meta, events) in last.items():
                futures += await self.put_rows(p, epoch, [(row_key(p, "meta"), meta)], events[-1])
            await confirm(self.app.producer, futures, "meta rows")
            for (p, epoch), (_meta, events) in last.items():
                if self.current(p, epoch):
                    for event in events:
                        event.ack()
            self.persisted += len(batch)
            self.unpersisted -= len(batch)
            self.stats.boundaries += len(batch)
            self.stats.persist_s += time.perf_counter() - t0

    async def drain(self, timeout_s: float) -> None:
        """Stop applying, then wait until every batch applied is durable (or the timeout).
        A batch in progress is handed over at the agent's next record, or is already
        complete: the agent ends a batch whenever its input queue is empty."""
        self.stopping = True
        deadline = time.monotonic() + timeout_s
        while self.unpersisted and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def watchdog(self) -> None:
        """A partition whose log has records past the next offset to apply but delivered
        nothing for a while is sought back there (recovers a fetch position lost by the
        consumer, e.g. after records were dropped around a seek)."""
        consumer = self.app.consumer
        stall_s = self.settings.stall_timeout_s
        for p, part in list(self.parts.items()):
            tp = consumer._new_topicpartition(self.log_name, p)
            if tp not in consumer.assignment():
                continue
            try:
                end = consumer.highwater(tp)
            except Exception:
                continue
            if end is not None and end > part.next_offset and time.monotonic() - part.last_event_at > stall_s:
                log.warning("partition %d: no log record for %.0f s with the log at %d and the state at %d",
                            p, stall_s, end, part.next_offset)
                part.rewind_to = None
                part.last_event_at = time.monotonic()
                await self.rewind(p, part)


# =========================================================================== the app
def create_app(settings: Settings) -> faust.App:
    _patch_fetch_wait(settings.fetch_max_wait_ms)
    app = faust.App(settings.app_id, autodiscover=False, **faust_config(settings))
    log_topic = app.topic(settings.topic(LOG), key_type=bytes, value_type=bytes, partitions=settings.partitions)
    table = app.Table("state", partitions=settings.partitions, key_type=bytes, value_type=bytes)
    stats = Stats()
    engine = Engine(app, table, settings, stats)
    router = Router(app, settings, stats)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:  # noqa: ARG001
        engine.forget(revoked)
        await app.producer.flush()  # rows already handed over land before the new owner reads

    @app.agent(log_topic, name="apply_log")
    async def apply_log(stream):
        try:
            await engine.run(stream.noack())
        except asyncio.CancelledError:
            raise  # shutdown
        except BaseException:
            die("apply_log")

    @app.task
    async def persister() -> None:
        try:
            await engine.persist()
        except asyncio.CancelledError:
            raise
        except BaseException:
            die("persister")

    @app.task
    async def route() -> None:
        try:
            await router.run()
        except asyncio.CancelledError:
            raise
        except BaseException:
            die("router")

    @app.timer(interval=max(1.0, settings.stall_timeout_s / 2))
    async def watchdog() -> None:
        try:
            await engine.watchdog()
        except asyncio.CancelledError:
            raise
        except BaseException:
            die("watchdog")

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
        """SIGUSR1 prints every asyncio task's stack to stderr (diagnosing a stuck worker);
        SIGTERM and SIGINT stop the worker (see ``stop``)."""
        import sys

        loop = asyncio.get_running_loop()

        def dump() -> None:
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
