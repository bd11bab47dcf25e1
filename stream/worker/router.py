"""The router: input topics -> ``margin.log``, one *task* per log partition this worker owns.

Co-partitioned, one writer per log partition (the Kafka Streams rule). Fills and collateral
movements are keyed by ``account_id`` and placed by Kafka's default partitioner, so input
partition ``p`` of the account topics holds exactly the accounts of log partition ``p``
(:mod:`stream.log.partitioner`; an account event elsewhere is dead-lettered as ``misrouted``).
The task of log partition ``p`` runs in the worker whose log agent owns ``p`` (it follows
faust's assignment of the log, see :meth:`Router.assign`) and reads input partition ``p`` of
the account topics and every partition of the topics that concern all accounts (listings,
flashes, settlements, ticks). It forwards them to log partition ``p`` in one merge by
broker timestamp (:mod:`stream.log.merge`: right also into a backlog, while producers publish,
or with a partition idle). So the order of each log partition is one task's merge, whatever
the number of workers, and every record it writes is handed to this worker's own log agent.

The log is the router's commit: each log record carries, per input partition, the next
offset to forward once it is in the log (:func:`stream.log.ordered_log.record_positions`). A
task starting -- first start, crash, rebalance -- resumes where the last record of its log
partition says; nothing is committed to a consumer group. Dead letters of a batch are
acknowledged before the log record that moves past them is sent. A task drops (and its
log record's positions skip) the dead letters of broadcast inputs that are not its own to
report: only the task of log partition 0 publishes those, once.

It is a plain aiokafka consumer with manual assignment, not a faust agent: faust's
per-message machinery costs ~100 µs a message here, and a stateless forwarder needs none
of it (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.core.topics import ACCOUNT_TOPICS, BROADCAST_TOPICS, DEADLETTER, INPUT_TOPICS, LOG
from stream.kafka.clients import client_kwargs, topic_partitions
from stream.log.merge import End, Fetched, TaskInputs, add_fetched, step as merge_step
from stream.log.ordered_log import RECORD_HEAD, Parsed, _route, encode_record, record_positions
from stream.settings import Settings
from stream.worker.lifecycle import confirm, guarded, undelivered_log_record

log = logging.getLogger("kpimargin")


@dataclass
class SentLogRecord:
    """One log record sent: its delivery, its log partition, the parsed inputs of its entries."""

    delivery: asyncio.Future
    partition: int
    parsed: list[Parsed | None]


@dataclass
class InFlight:
    """One routed batch whose sends the broker has not acknowledged yet."""

    log_records: list[SentLogRecord]

    def entries(self) -> int:
        return sum(len(record.parsed) for record in self.log_records)


class PartitionCountError(Exception):
    """The account topics are not partitioned like the log (co-partitioning is required)."""


async def check_copartitioned(settings: Settings) -> None:
    """Raise :class:`PartitionCountError` unless the account topics and the log have
    ``settings.partitions`` partitions each (the router of log partition ``p`` reads input
    partition ``p``)."""
    for topic in (*ACCOUNT_TOPICS, LOG):
        name = settings.topic(topic)
        count = len(await topic_partitions(settings, name))
        if count != settings.partitions:
            raise PartitionCountError(
                f"{name} has {count} partitions, KPIMARGIN_PARTITIONS is {settings.partitions}: the account topics "
                f"({', '.join(settings.topic(t) for t in ACCOUNT_TOPICS)}) and {settings.topic(LOG)} must have "
                "the same number of partitions")


def _client(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **client_kwargs(settings), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms, request_timeout_ms=int(settings.request_timeout_s * 1000),
        max_partition_fetch_bytes=2 * settings.log_record_max_bytes,
    )


async def last_positions(settings: Settings, p: int) -> dict[tuple[str, int], int]:
    """Where the last record of log partition ``p`` says its router task stands: per input
    ``(topic, partition)`` the next offset to forward (nothing: a new log, start at the
    beginning of every input)."""
    name = settings.topic(LOG)
    consumer = _client(settings)
    await consumer.start()
    try:
        tp = TopicPartition(name, p)
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if end <= first:
            return {}
        consumer.seek(tp, end - 1)
        deadline = time.monotonic() + settings.request_timeout_s
        while time.monotonic() < deadline:
            records = (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
            if records:
                positions = record_positions(records[-1].value)
                if positions is None:
                    raise RuntimeError(f"{name}[{p}] offset {records[-1].offset} has no router positions: a log "
                                       "written by an older version (docs/delivery.md, 'Migrating from a crc32-partitioned log')")
                return positions
        raise RuntimeError(f"{name}[{p}]: its last record (offset {end - 1}) could not be read")
    finally:
        await consumer.stop()


class Router:
    """Routes the inputs of the log partitions faust assigned to this worker (module docstring)."""

    def __init__(self, app, settings: Settings, stats, agent):
        self.app, self.settings, self.stats, self.agent = app, settings, stats, agent
        self.names = {settings.topic(t): t for t in INPUT_TOPICS}
        self.log_name = settings.topic(LOG)
        self.deadletter_name = settings.topic(DEADLETTER)
        self.wanted: set[int] = set()  # the log partitions faust assigned to this worker
        self.tasks: dict[int, TaskInputs] = {}
        self.written: dict[int, dict[tuple[str, int], int]] = {}  # per task: positions in its last log record
        self.dirty = True  # the assignment changed: rebuild the tasks before fetching again
        self.changed = asyncio.Event()
        self.lock = asyncio.Lock()  # held while a batch is routed and sent; a revocation waits for it
        self.in_flight: asyncio.Queue = asyncio.Queue(maxsize=settings.persist_queue_max)
        self.ends: dict[TopicPartition, End] = {}
        self.consumer: AIOKafkaConsumer | None = None

    # ---------------------------------------------------------------- rebalances (faust signals)
    async def revoke(self) -> None:
        """Before faust hands log partitions to another worker: stop routing and wait until
        every batch sent is acknowledged and handed to the log agent, so that the next owner
        of a partition reads its final log record."""
        async with self.lock:
            self.dirty = True
            self.tasks, self.written = {}, {}
            await self.drain()

    def assign(self, log_partitions: set[int]) -> None:
        """faust assigned these log partitions to this worker: route their inputs."""
        self.wanted = set(log_partitions)
        self.dirty = True
        self.changed.set()

    async def drain(self) -> None:
        """Wait until the queue of batches in flight is empty and the last one retired."""
        await self.in_flight.join()

    # ---------------------------------------------------------------- running
    def client(self) -> AIOKafkaConsumer:
        return _client(self.settings)

    async def run(self) -> None:
        """Fetch, merge, route, send -- without waiting for the broker between fetches: the
        batches in flight are retired in order by :meth:`retire` (at most
        ``persist_queue_max`` of them: back-pressure)."""
        await check_copartitioned(self.settings)
        consumer = self.consumer = self.client()
        await consumer.start()
        retiring = asyncio.ensure_future(guarded("router", self.retire))
        try:
            while True:
                if self.dirty:
                    await self.rebuild(consumer)
                    continue
                if not self.tasks:
                    self.changed.clear()
                    await self.changed.wait()
                    continue
                wait_s = await self.step(consumer)
                fetched = await consumer.getmany(timeout_ms=int(1000 * wait_s), max_records=self.settings.router_batch_max)
                received = time.monotonic()
                if self.dirty:
                    continue  # a rebalance while fetching: the tasks start over from the log
                for tp, records in fetched.items():
                    add_fetched(self.tasks, tp,
                                [Fetched(r.timestamp or 0, r.offset, r.value, received) for r in records])
        finally:
            retiring.cancel()
            await consumer.stop()

    async def step(self, consumer: AIOKafkaConsumer) -> float:
        """Forward what every task may forward now (:func:`stream.log.merge.step`: at most two
        end-offset requests); return how long the next fetch may wait.

        A partition's end offset is the broker's answer to ListOffsets, or the high watermark
        of the consumer's last fetch of it if that is higher. The embedded broker (Tansu
        0.6.0) answers ListOffsets, after a batch of several records, with the batch's first
        offset + 1 until another batch lands; when ``getmany`` had returned only part of that
        batch (``KPIMARGIN_ROUTER_BATCH_MAX``), the merge took the partition for caught up and
        forwarded a newer record past the rest (docs/delivery.md). The fetch that brought the
        batch carried a high watermark past it. A higher end only makes the merge wait for
        records the broker has, so this is safe on every broker; Kafka's ListOffsets stays the
        proof there (a new leader's high watermark can lag, KIP-207)."""
        async with self.lock:
            if self.dirty:
                return 0.0
            if any(task.buffered() for task in self.tasks.values()):
                self.stats.router_steps += 1

            async def end_offsets(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
                return {tp: max(offset, consumer.highwater(tp) or 0)
                        for tp, offset in (await consumer.end_offsets(tps)).items()}

            wait_s, requests = await merge_step(self.tasks, self.ends, self.settings.max_idle_ms / 1000.0,
                                                time.monotonic, consumer.position, end_offsets, self.send,
                                                self.logical)
            self.stats.end_offset_requests += requests
        return wait_s

    def logical(self, tp: TopicPartition) -> tuple[str, int]:
        return self.names[tp.topic], tp.partition

    async def rebuild(self, consumer: AIOKafkaConsumer) -> None:
        """(Re)start a task for every assigned log partition, each where its log's last
        record says, and assign the consumer every input partition they read, each sought
        to the earliest position a task needs."""
        async with self.lock:
            self.dirty = False
            wanted = sorted(self.wanted)
            self.tasks, self.written = {}, {}
            if not wanted:
                consumer.assign([])
                return
            broadcast = []
            for topic in BROADCAST_TOPICS:
                name = self.settings.topic(topic)
                broadcast += [TopicPartition(name, q) for q in await topic_partitions(self.settings, name)]
            firsts: dict[TopicPartition, int] = {}
            tasks = {}
            for p in wanted:
                inputs = [TopicPartition(self.settings.topic(t), p) for t in ACCOUNT_TOPICS] + broadcast
                missing = [tp for tp in inputs if tp not in firsts]
                if missing:
                    firsts.update(await consumer.beginning_offsets(missing))
                positions = await last_positions(self.settings, p)
                task = TaskInputs(partitions=inputs)
                for tp in inputs:
                    task.fetched[tp] = task.forwarded[tp] = max(positions.get(self.logical(tp), 0), firsts[tp])
                tasks[p] = task
                self.written[p] = {self.logical(tp): task.forwarded[tp] for tp in inputs}
            if self.dirty:
                return  # revoked meanwhile: start over
            self.tasks = tasks
            everything = sorted({tp for task in tasks.values() for tp in task.partitions})
            consumer.assign(everything)
            for tp in everything:
                consumer.seek(tp, min(task.fetched[tp] for task in tasks.values() if tp in task.buffers))
            log.info("router: routing the inputs of log partitions %s", wanted)

    # ---------------------------------------------------------------- routing one batch
    def build(self, p: int, released: list) -> tuple[list[tuple[bytes, list[Parsed | None]]], list]:
        """The log records (each with the positions as of its last entry) and dead letters
        for the records task ``p`` releases."""
        s = self.settings
        positions = dict(self.written[p])
        limit = s.log_record_max_bytes  # the positions ride on top: a few hundred bytes
        records: list[tuple[bytes, list[Parsed | None]]] = []
        dead = []
        entries: list[bytes] = []
        inputs: list[Parsed | None] = []
        size = len(RECORD_HEAD) + 2
        inputs_taken = self.stats.inputs
        for tp, record in released:
            topic, partition = self.logical(tp)
            if topic in ACCOUNT_TOPICS or p == 0:  # a broadcast input counts once: in task 0
                inputs_taken[topic] += 1
            targets, entry, rejected, parsed = _route(topic, partition, record.offset, record.value, s.partitions,
                                                      s.max_message_bytes, s.log_record_max_bytes)
            if entry is not None and entries and size + len(entry) + 1 > limit:
                records.append((encode_record(entries, positions), inputs))
                entries, inputs, size = [], [], len(RECORD_HEAD) + 2
            positions[(topic, partition)] = record.offset + 1
            if rejected is not None:
                if topic in ACCOUNT_TOPICS or p == 0:  # a broadcast input's dead letter: task 0 alone
                    dead.append(rejected)
                continue
            if p in targets:
                entries.append(entry)  # type: ignore[arg-type]
                inputs.append(parsed)
                size += len(entry) + 1  # type: ignore[arg-type]
        if entries or positions != self.written[p]:
            records.append((encode_record(entries, positions), inputs))
        self.written[p] = positions
        return records, dead

    async def send(self, p: int, released: list) -> None:
        """Send one task's batch: its dead letters first (acknowledged before the log record
        that moves past them), then its log records; queue them for :meth:`retire`."""
        records, dead = self.build(p, released)
        producer = self.app.producer
        if dead:
            await confirm([await producer.send(self.deadletter_name, d.key.encode(), orjson.dumps(d.value), None, None,
                                               None) for d in dead], "dead letters")
        sent = []
        for record, parsed in records:
            future = await producer.send(self.log_name, None, record, p, None, None)
            future.add_done_callback(undelivered_log_record)
            sent.append(SentLogRecord(future, p, parsed))
        self.stats.routed += len(released)
        self.stats.rejected += len(dead)
        for d in dead:
            self.stats.deadletters[(d.value["source"]["topic"], d.value["reason"])] += 1
        await self.in_flight.put(InFlight(sent))

    async def retire(self) -> None:
        """Batches in order, once the broker acknowledged them: hand each log record to this
        worker's log agent (:meth:`stream.worker.agent.LogAgent.handoff`: applied at once when
        the agent is at its offset, instead of after fetching it back from the log). The
        batches behind the first that are acknowledged by then go with it, ending one batch
        of the agent, not one each: a step sends a batch per task, and a boundary per batch
        delayed the last task's outputs behind the others' persister hand-overs. A batch
        not yet acknowledged, or one that would take the agent's batch beyond
        ``KPIMARGIN_BATCH_MAX`` entries, waits for the next round (``carried``): none waits
        for a later one's acknowledgement."""
        limit = self.settings.batch_max
        carried: InFlight | None = None
        while True:
            batches: list[InFlight] = [carried if carried is not None else await self.in_flight.get()]
            carried = None
            try:
                await confirm([record.delivery for record in batches[0].log_records], "log records")
                entries = batches[0].entries()
                while not self.in_flight.empty():
                    queued = self.in_flight.get_nowait()
                    size = queued.entries()
                    if entries + size > limit or not all(record.delivery.done() for record in queued.log_records):
                        carried = queued
                        break
                    batches.append(queued)
                    entries += size
                sent = [record for batch in batches for record in batch.log_records]
                # the batches merged are acknowledged: this only raises if one was not delivered
                await confirm([record.delivery for batch in batches[1:] for record in batch.log_records], "log records")
                if self.agent.handoff([(record.partition, record.delivery.result().offset, record.parsed)
                                       for record in sent]):
                    await self.agent.boundary()
            finally:
                for _ in batches:
                    self.in_flight.task_done()
