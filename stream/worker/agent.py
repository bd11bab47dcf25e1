"""The log agent: ``margin.log`` applied, per partition, to live engine state.

faust delivers the log records of the partitions this worker owns; :class:`LogAgent`
keeps one :class:`Partition` of live state for each (loaded from the table on its first
record, :meth:`LogAgent.load`), applies each record in order with the pure core
(:func:`stream.log.ordered_log.apply_record`), queues its outputs in the outbox, and at a
batch boundary hands the changed rows to the persister (:mod:`stream.worker.persister`).
A record this worker's router wrote is *handed off* (:meth:`LogAgent.handoff`): applied
from the router's parsed inputs as soon as the broker acknowledged it, when the agent is
at exactly its offset; faust's later delivery of it is only acked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import faust
import orjson
from aiokafka import TopicPartition

from stream.core.state import EngineState
from stream.core.topics import CALLS, DEADLETTER, LOG, OUTPUT_TOPICS
from stream.log.ordered_log import Parsed, apply_parsed, apply_record_entries
from stream.settings import Settings
from stream.kafka import shim
from stream.worker.faults import Faults
from stream.worker.outbox import Outbox
from stream.worker.persister import PartitionBatch, Persister, changed_rows, read_partition, row_key
from stream.worker.rebuild import RebuildError, rebuild_from_log
from stream.worker.stats import Stats
from stream.worker.table import OutboxChangelog, TableStore

log = logging.getLogger("kpimargin")


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


class LogAgent:
    """The ``apply_log`` agent's state, and the persister it feeds (module docstring)."""

    def __init__(self, app: faust.App, table, settings: Settings, stats: Stats):
        self.app, self.settings, self.stats = app, settings, stats
        self.config = settings.engine_config()
        self.parts: dict[int, Partition] = {}
        self.epochs: dict[int, int] = {}  # per partition: moved on by each revocation
        self.out_names = {name: settings.topic(name) for name in OUTPUT_TOPICS}
        self.log_name = settings.topic(LOG)
        self.changelog_name = table.changelog_topic.get_topic_name()
        self.store = TableStore(table)
        self.outbox: Outbox | None = None  # outputs, in producer batches (see ensure_outboxes)
        self.faults = Faults(settings.fault_injection)
        self.persister = Persister(self.store, None, self.current, self.faults, stats,  # type: ignore[arg-type]
                                   settings.persist_queue_max)  # its changelog: see ensure_outboxes
        self.entries_since = 0  # log entries applied since the last boundary
        self.stopping = False
        self.owned: set[int] = set()  # the log partitions faust assigned to this worker
        self.generation = 0  # moved on by each assignment
        self.rebuilding = 0  # partitions being rebuilt from margin.log now
        self.assigned: set[int] | None = None  # those, once loaded after the rebalance (None: not yet)
        self.rebalancing = True  # from a revocation until the assigned partitions are loaded
        self.loading: dict[int, asyncio.Future] = {}  # partition -> its load in progress
        self.last_event_at = time.monotonic()  # the last log record delivered that was not beyond a gap

    def current(self, p: int, epoch: int) -> bool:
        """``epoch`` is still partition ``p``'s (no revocation since)."""
        return self.epochs.get(p, 0) == epoch

    def fault(self, point: str) -> None:
        self.faults.here(point, self.persister.persisted)

    # ---------------------------------------------------------------- partitions
    async def load(self, p: int) -> Partition:
        """The engine state of log partition ``p`` from the table (recovered from its
        changelog by faust), exactly as of its ``meta`` log offset, and the offset to
        resume at: right after it. Rows stored newer than ``meta`` (rolled back) or as
        deleted are written again by the first batch, so the store converges.

        Rows whose digest is not the one ``meta`` carries are no writer's state (a zombie's
        late writes, :mod:`stream.worker.durable`): the state is rebuilt from the log instead,
        and the first batch writes every row again."""
        self.fault("in_recovery")
        epoch = self.epochs.get(p, 0)
        loaded = read_partition(p, self.store.partition(p))
        offset = loaded.offset
        if loaded.trusted:
            state = loaded.state(self.config)
        else:
            log.warning("partition %d: the changelog's rows do not match the digest of their meta row (log offset "
                        "%d): rows written by a replaced worker after its successor's; rebuilding from margin.log",
                        p, offset, extra={"partition": p, "offset": offset})
            self.rebuilding += 1  # a long replay is progress, not a hung rebalance (stream.worker.recovery)
            try:
                state = await rebuild_from_log(self.settings, p, offset, self.config)
            except RebuildError as exc:
                log.critical("partition %d: %s", p, exc, extra={"partition": p})
                raise
            finally:
                self.rebuilding -= 1
            state.touched.update(key for key, _row in state.rows())
            state.touched.update(loaded.live)  # rows the rebuilt state lacks are written as deleted
            state.touched.update(loaded.rewrite)
            self.stats.rebuilt += 1
        self.persister.resumed(p, offset, loaded.digest)  # the rows' digest as the table holds them: each batch updates it
        part = Partition(state, epoch, offset + 1)
        part.applied = not loaded.trusted  # the next batch writes the rebuilt rows, even if nothing new is applied
        self.last_event_at = time.monotonic()  # a stall is measured from the load, not from records before it
        log.info("partition %d: state loaded (%d accounts, %d contracts), resuming at log offset %d",
                 p, len(state.accounts), len(state.contracts), part.next_offset,
                 extra={"partition": p, "offset": part.next_offset})
        return part

    async def partition(self, p: int) -> Partition | None:
        """Partition ``p``'s live state, loaded first if need be (one load at a time per
        partition, whoever asks); None if ``p`` was revoked meanwhile. A load begun before
        a revocation is not used: the table may have changed since it was read."""
        epoch = self.epochs.get(p, 0)
        while True:
            part = self.parts.get(p)
            if part is not None:
                return part
            loading = self.loading.get(p)
            if loading is None:
                loading = self.loading[p] = asyncio.ensure_future(self.load(p))
            try:
                part = await asyncio.shield(loading)
            finally:
                if loading.done() and self.loading.get(p) is loading:
                    del self.loading[p]
            if self.epochs.get(p, 0) != epoch:
                return None
            if part.epoch == epoch:
                return self.parts.setdefault(p, part)

    def on_assigned(self, partitions: set[int]) -> None:
        """faust assigned these log partitions to this worker (not loaded yet)."""
        self.owned, self.assigned = set(partitions), None
        self.generation += 1

    async def load_assigned(self) -> None:
        """After a rebalance: load every assigned log partition now (not at its first
        record: a caught-up partition may get none for a long time, and the HTTP API and
        readiness need its state), then count the rebalance as over -- unless another
        assignment came meanwhile."""
        generation, partitions = self.generation, set(self.owned)
        for p in sorted(partitions):
            await self.partition(p)
        if generation == self.generation:
            self.assigned = partitions
            self.rebalancing = False

    def forget(self, tps) -> None:
        """Revoked partitions: drop their live state; the persister skips their batches."""
        self.rebalancing = True
        for tp in tps:
            if tp.topic == self.log_name:
                self.parts.pop(tp.partition, None)
                self.persister.forget(tp.partition)
                self.epochs[tp.partition] = self.epochs.get(tp.partition, 0) + 1

    async def rewind(self, p: int, part: Partition) -> None:
        """Seek the log partition back to the next offset to apply (at most twice a second:
        records fetched before the seek still arrive and are dropped meanwhile)."""
        now = time.monotonic()
        if part.rewind_to == part.next_offset and now - part.rewound_at < 0.5:
            return
        log.warning("partition %d: seeking the log back to offset %d", p, part.next_offset,
                    extra={"partition": p, "offset": part.next_offset})
        part.rewind_to, part.rewound_at = part.next_offset, now
        # seek_wait runs in faust's consumer thread (``Consumer.seek`` calls aiokafka from this
        # one, racing its fetcher: seen to crash faust's Fetcher) and resets faust's read offset
        await self.app.consumer.seek_wait({TopicPartition(self.log_name, p): part.next_offset})

    # ---------------------------------------------------------------- the agent
    async def ensure_outboxes(self) -> None:
        """Create the outboxes on the started producer (once; any task may ask first)."""
        if self.outbox is None:
            producer = shim.aiokafka_producer(self.app)
            outbox = Outbox(producer)
            await outbox.prepare(self.out_names.values())
            if self.outbox is None:
                self.outbox = outbox
                self.persister.changelog = OutboxChangelog(Outbox(producer), self.changelog_name)

    async def run(self, stream) -> None:
        await self.ensure_outboxes()
        queue = stream.channel.queue
        batch_max = self.settings.batch_max
        async for event in stream.events():
            if self.stopping:  # the worker is stopping: apply nothing more (see drain)
                await self.boundary()
                await asyncio.Event().wait()
            p, offset = event.message.partition, event.message.offset
            part = self.parts.get(p) or await self.partition(p)
            if part is None:  # revoked while it loaded
                continue
            if offset > part.next_offset:  # a gap: seek back; this record comes again
                await self.rewind(p, part)
            else:
                self.last_event_at = time.monotonic()
                part.rewind_to = None
                if offset == part.next_offset:
                    self.apply(p, part, offset, event.value)
                    part.events.append(event)
                else:  # applied before (handed off by the router, or re-delivered after a seek)
                    self.persister.ack_when_durable(p, offset, event)
            if queue.empty() or self.entries_since >= batch_max:
                await self.boundary()
            else:
                await self.outbox.flush()  # type: ignore[union-attr]

    def handoff(self, records: list[tuple[int, int, list[Parsed | None]]]) -> bool:
        """Log records this worker's router just wrote, ``(log partition, log offset,
        Parsed inputs of its entries)``, acknowledged by the broker: each one whose
        partition this agent owns and whose offset is the next it applies is applied now,
        from the router's parsed inputs, instead of after a fetch of the log (one broker
        hop less). Any other is left to the log: applying stays strictly in log order.
        The agent later receives these records from the log too and only acks them.
        True if anything was applied (the caller then ends the batch)."""
        if self.faults.name == "skip_resume_commit":  # testing: every record comes from the log
            return False
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
        self.fault("in_apply")  # state applied, its outputs not yet queued
        add = self.outbox.add  # type: ignore[union-attr]
        names = self.out_names
        stats = self.stats
        counts = stats.outputs
        for out in outputs:
            add(names[out.topic], out.key.encode(), orjson.dumps(out.value))
            counts[out.topic] += 1
            if out.topic == CALLS:
                stats.calls[out.value["status"]] += 1
            elif out.topic == DEADLETTER:
                stats.deadletters[(out.value["source"]["topic"], out.value["reason"])] += 1
        stats.applied[p] += entries
        stats.records += 1
        stats.apply_seconds.observe(time.perf_counter() - t0)

    async def boundary(self) -> None:
        """Snapshot the rows the batch changed and hand the batch to the persister, with
        the deliveries of every output it published (taken in the same synchronous step:
        what another task applies meanwhile belongs to the next batch)."""
        parts = []
        entries = 0
        for p, part in self.parts.items():
            if not part.applied:
                continue
            parts.append(PartitionBatch(p, part.epoch, changed_rows(p, part.state), part.next_offset - 1, part.events))
            entries += part.entries
            part.events, part.entries, part.applied = [], 0, False
        self.entries_since = 0
        if parts:
            self.stats.entries += entries
            self.stats.batch_entries.observe(entries)
            await self.persister.hand_over(self.outbox, self.outbox.take(), parts)  # type: ignore[union-attr]

    async def drain(self, timeout_s: float) -> None:
        """Stop applying, then wait until every batch applied is durable (or the timeout).
        A batch in progress is handed over at the agent's next record, or is already
        complete: the agent ends a batch whenever its input queue is empty."""
        self.stopping = True
        await self.persister.settle(timeout_s)

    async def commit_resume_offsets(self) -> None:
        """Commit ``meta + 1`` for every assigned log partition (see the app's ``on_rebalance_complete``)."""
        if self.faults.name == "skip_resume_commit":  # testing: leave the group's offsets as they are
            return
        consumer = self.app.consumer
        offsets = {}
        for tp in consumer.assignment():
            if tp.topic == self.log_name:
                meta = self.store.get(row_key(tp.partition, "meta"))
                offsets[tp] = (orjson.loads(meta)["log_offset"] if meta is not None else -1) + 1
        if offsets:
            await shim.commit_offsets(consumer, offsets)
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
            tp = TopicPartition(self.log_name, p)
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
                            p, stall_s, end, part.next_offset, extra={"partition": p, "offset": part.next_offset})
                self.last_event_at = now
                await self.rewind(p, part)
