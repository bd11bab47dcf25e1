"""The streaming shell: faust-streaming agents around the pure engine (SPEC §1, §3, §4).

Two agents:

``route`` reads the six input topics. It rejects what is invalid on its own (undecodable,
oversized, schema-invalid) to ``margin.deadletter`` and forwards everything else to the
ordered log ``margin.log``: fills and collateral movements to the partition of their
account, listings, flashes, settlements and ticks to *every* partition. Each partition of
the log is therefore one total order of the events that concern its accounts.

``apply_log`` reads ``margin.log`` and, per partition, applies each event with
:func:`stream.engine.apply` -- the same core the what-if and audit tools call -- and
publishes the requirement, call and dead-letter records it returns.

Delivery guarantee (at-least-once, idempotent): state rows live in a faust table whose
changelog is co-partitioned with the log. Events are applied in memory in batches; at the
end of a batch the worker (1) flushes the producer, so every output of the batch is
acknowledged by the broker, (2) writes the changed rows to the table, (3) acks the events,
whose offsets faust commits only after flushing the changelog. A crash at any point leaves
rows that are at or behind the committed offset's events' effects -- never ahead of their
outputs -- and each row records the source offsets it has applied, so re-delivered events
are re-applied only to rows that had not persisted them. Outputs may be published more
than once, always with the same id and content: consumers deduplicate by ``id``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import types
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import faust
import orjson
from faust.streams import _current_event  # the task-local "current event" tables write under

from .engine import EngineState, Output
from .kafka import read_topic, ssl_context
from .ordered_log import apply_entry, route_input
from .settings import Settings
from .topics import INPUT_TOPICS, LOG, OUTPUT_TOPICS

log = logging.getLogger("kpimargin")


@dataclass
class PartitionWork:
    """The live engine state of one log partition and its batch in flight."""

    state: EngineState
    pending: list = field(default_factory=list)  # faust events applied but not yet acked


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


def create_app(settings: Settings) -> faust.App:
    _patch_fetch_wait(settings.fetch_max_wait_ms)
    app = faust.App(settings.app_id, autodiscover=False, **faust_config(settings))
    partitions = settings.partitions
    prefix = settings.topic_prefix
    config = settings.engine_config()

    def topic(name: str, **kw):
        return app.topic(settings.topic(name), key_type=bytes, value_type=bytes, partitions=partitions, **kw)

    inputs = app.topic(*[settings.topic(t) for t in INPUT_TOPICS], key_type=bytes, value_type=bytes)
    log_topic = topic(LOG)
    table = app.Table("state", partitions=partitions, key_type=bytes, value_type=bytes)

    def logical(name: str) -> str:
        return name[len(prefix):] if prefix and name.startswith(prefix) else name

    # ------------------------------------------------------------------ router
    def die(agent: str) -> None:
        """Bad input never raises out of an agent (it is dead-lettered): this is a bug or a
        broken broker connection. faust would restart the agent *past* the failed events,
        so stop the whole process instead, before anything more is committed: a restarted
        worker resumes from the last commit, exactly as after a SIGKILL."""
        log.critical("%s failed; exiting so that a restart resumes from the last commit", agent, exc_info=True)
        logging.shutdown()
        os._exit(70)

    @app.agent(inputs, name="route")
    async def route(stream):
        try:
            async for event in stream.events():
                message = event.message
                entries, rejected = route_input(
                    logical(message.topic), message.partition, message.offset, event.value,
                    partitions, settings.max_message_bytes,
                )
                if rejected is not None:
                    (await send(out_names[rejected.topic], rejected.key.encode(),
                                orjson.dumps(rejected.value))).add_done_callback(routed)
                for p, key, record in entries:
                    (await send(log_name, key, record, p)).add_done_callback(routed)
        except asyncio.CancelledError:
            raise  # shutdown
        except BaseException:
            die("route")

    # ------------------------------------------------------------------ engine
    work: dict[int, PartitionWork] = {}
    epochs: dict[int, int] = {}

    def row_key(p: int, key: str) -> bytes:
        return f"{p}|{key}".encode()

    fault, _, fault_at = settings.fault_injection.partition(":")
    batches_done = [0]  # batches flushed since start (the stats counters reset every report)

    def maybe_die(point: str) -> None:
        """Fault injection for the crash tests: SIGKILL this process at a named point."""
        if fault == point and (not fault_at or batches_done[0] >= int(fault_at)):
            log.warning("fault injection: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    def partition_rows(p: int) -> dict[str, dict]:
        prefix_b = f"{p}|".encode()
        return {
            k[len(prefix_b):].decode(): orjson.loads(v)
            for k, v in list(table.data.items())
            if k.startswith(prefix_b) and v is not None
        }

    async def catch_up(p: int, resume_offset: int) -> None:
        """Read the changelog partition ourselves until it holds the batch that ends just
        before ``resume_offset``. Needed when faust's recovery stopped at a stale high
        watermark (seen with the embedded broker, whose end offsets can lag)."""
        changelog = replace(settings, topic_prefix="")
        name = table.changelog_topic.get_topic_name()
        deadline = time.monotonic() + 60
        async for partition, _o, _t, key, value in read_topic(changelog, name, idle_timeout_s=10.0):
            if partition != p or key is None:
                continue
            table.data[key] = value
            if key == row_key(p, "meta") and value is not None and orjson.loads(value)["log_offset"] + 1 >= resume_offset:
                return
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"partition {p}: changelog does not reach log offset {resume_offset - 1}")

    async def load(p: int, resume_offset: int) -> PartitionWork:
        """The engine state of log partition ``p`` from the table, checked against the
        offset the consumer resumes at: the last persisted batch (the ``meta`` row, written
        after the batch's rows) must end right before it, or recovery was incomplete."""
        maybe_die("in_recovery")
        rows = partition_rows(p)
        persisted = rows.get("meta", {}).get("log_offset", -1)
        if persisted + 1 < resume_offset:
            log.warning("partition %d: recovered state ends at log offset %d but the group resumes at %d; "
                        "reading the changelog to catch up", p, persisted, resume_offset)
            await catch_up(p, resume_offset)
            rows = partition_rows(p)
        state = EngineState.from_rows(rows.items(), config)
        log.info("partition %d: state loaded (%d accounts, %d contracts)", p, len(state.accounts), len(state.contracts))
        return PartitionWork(state)

    def forget(tps) -> None:
        for tp in tps:
            if tp.topic == log_topic.get_topic_name():
                work.pop(tp.partition, None)
                epochs[tp.partition] = epochs.get(tp.partition, 0) + 1

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:  # noqa: ARG001
        forget(revoked)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:  # noqa: ARG001
        forget(assigned)

    out_names = {name: settings.topic(name) for name in OUTPUT_TOPICS}
    log_name = settings.topic(LOG)

    in_flight: list = []  # delivery futures of the current batch, checked before its acks

    async def send(topic: str, key: bytes, value: bytes, partition: int | None = None):
        """Hand one record to the producer (no wait for the broker: ``flush`` does that);
        return its delivery future. Straight to faust's producer: its Topic/Channel layer
        costs ~400 µs a record."""
        return await app.producer.send(topic, key, value, partition, None, None)

    async def publish(outputs: list[Output]) -> None:
        for out in outputs:
            in_flight.append(await send(out_names[out.topic], out.key.encode(), orjson.dumps(out.value)))

    def routed(future) -> None:
        """Done-callback of the router's sends: a record the broker refused (after the
        producer's retries) must not be followed by the commit of its input offset."""
        if not future.cancelled() and future.exception() is not None:
            log.critical("a log record was not delivered: %r; exiting before its input offset is committed",
                         future.exception())
            logging.shutdown()
            os._exit(70)

    async def flushed() -> None:
        """Flush the producer, then raise if any record of this batch was not delivered
        (aiokafka's flush waits for every send but does not report failures)."""
        await app.producer.flush()
        failed = [f.exception() for f in in_flight if f.done() and not f.cancelled() and f.exception() is not None]
        pending = [f for f in in_flight if not f.done()]
        in_flight.clear()
        if failed or pending:
            raise RuntimeError(f"{len(failed)} records not delivered ({failed[:1]!r}), {len(pending)} still pending")

    changelog_name = table.changelog_topic.get_topic_name()

    async def put_row(p: int, key: bytes, value: bytes) -> None:
        """Write one state row: into the table's store, and to its changelog partition
        straight through the producer, the delivery checked before the batch is acked.
        Not ``table[key] = value``: faust queues those in a buffer whose flush gives up
        after 100 ms, so offsets could be committed before the rows were sent (seen:
        state lost across a SIGKILL)."""
        table.data[key] = value
        in_flight.append(await app.producer.send(changelog_name, key, value, p, None, None))

    async def flush(stream) -> None:
        """End the batch of every partition: outputs acked, then rows written, then acks."""
        busy = {p: w for p, w in work.items() if w.pending}
        if not busy:
            return
        started = {p: epochs.get(p, 0) for p in busy}
        t0 = time.perf_counter()
        await flushed()  # every output of the batch delivered
        t1 = time.perf_counter()
        stats["flush_s"] += t1 - t0
        stats["batches"] += 1
        batches_done[0] += 1
        maybe_die("after_outputs")  # outputs acknowledged, state not yet written
        assignment = app.consumer.assignment()
        to_ack = []
        for p, w in busy.items():
            events, w.pending = w.pending, []
            if epochs.get(p, 0) != started[p] or events[-1].message.tp not in assignment:
                continue  # revoked meanwhile: the new owner re-applies from the commit point
            token = _current_event.set(weakref.ref(events[-1]))  # rocksdb stores by event partition
            try:
                for key in sorted(w.state.touched):
                    await put_row(p, row_key(p, key), orjson.dumps(w.state.row(key)))
                w.state.touched.clear()
                # last, so that a durable meta row implies every row of the batch is durable
                await put_row(p, row_key(p, "meta"), orjson.dumps({"log_offset": events[-1].message.offset}))
            finally:
                _current_event.reset(token)
            to_ack.extend(events)
        await flushed()  # every row delivered before any event of the batch is acked
        maybe_die("after_rows")  # state written, offsets not yet acked or committed
        for ev in to_ack:
            await stream.ack(ev)
        stats["persist_s"] += time.perf_counter() - t1

    @app.agent(log_topic, name="apply_log")
    async def apply_log(stream):
        stream = stream.noack()
        queue = stream.channel.queue
        try:
            async for event in stream.events():
                p = event.message.partition
                w = work.get(p)
                if w is None:
                    w = work[p] = await load(p, event.message.offset)
                w.pending.append(event)
                await handle(p, w.state, event)
                if len(w.pending) >= settings.batch_max or queue.empty():
                    await flush(stream)
        except asyncio.CancelledError:
            raise  # shutdown
        except BaseException:
            die("apply_log")

    async def handle(p: int, state: EngineState, event) -> None:
        t0 = time.perf_counter()
        outputs = apply_entry(state, p, event.message.offset, event.value)
        t1 = time.perf_counter()
        await publish(outputs)
        stats["events"] += 1
        stats["outputs"] += len(outputs)
        stats["apply_s"] += t1 - t0
        stats["send_s"] += time.perf_counter() - t1

    stats: dict[str, float] = dict.fromkeys(("events", "outputs", "batches", "apply_s", "send_s", "flush_s", "persist_s"), 0)

    @app.timer(interval=10.0)
    async def report_stats() -> None:
        """Every 10 s at INFO: events applied, batches, and where the time went."""
        if stats["events"]:
            log.info(
                "applied %d events (%d outputs) in %d batches; apply %.2fs send %.2fs flush %.2fs persist %.2fs",
                stats["events"], stats["outputs"], stats["batches"],
                stats["apply_s"], stats["send_s"], stats["flush_s"], stats["persist_s"],
            )
            for key in stats:
                stats[key] = 0

    app.kpimargin_settings = settings  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings) -> None:
    """Run one faust worker in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    app = create_app(settings)

    @app.task
    async def install_task_dump() -> None:
        """SIGUSR1 prints every asyncio task's stack to stderr (diagnosing a stuck worker);
        SIGTERM and SIGINT exit at once (see ``stop_now``)."""
        import asyncio
        import signal
        import sys

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

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)

        def stop_now() -> None:
            """SIGTERM/SIGINT: stop the way a crash does, not through faust's shutdown.
            faust's graceful stop was seen to commit log offsets past the last persisted
            batch (the restarted worker found its changelog behind the committed offset),
            whereas a hard exit is exactly the case the crash tests prove: everything not
            committed is re-applied on restart, idempotently. The cost is that the group
            notices the member is gone only after the session timeout."""
            log.warning("stopping: exiting now; uncommitted events are re-applied by the next worker")
            logging.shutdown()
            os._exit(0)

        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop_now)

    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
