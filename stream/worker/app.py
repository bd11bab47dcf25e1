"""The worker process: the faust app that wires the router, the log agent and the
persister together (SPEC §1, §3, §4), and the process around it.

One worker runs three tasks: the router (:mod:`stream.worker.router`: input topics ->
``margin.log``, one task per log partition this worker owns), the log agent
(:mod:`stream.worker.agent`: ``margin.log`` -> live engine state -> outputs) and the persister
(:mod:`stream.worker.persister`: outputs acknowledged -> state rows -> ``meta``). The
delivery guarantee they give together is described in ``docs/delivery.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import faust

from stream.core.topics import LOG
from stream.kafka.clients import changelog_topic, ssl_context
from stream.settings import Settings
from stream.kafka import shim
from stream.worker.agent import LogAgent
from stream.worker.http import WorkerView, serve
from stream.worker.lifecycle import guarded, tune_gc
from stream.worker.logs import logging_config
from stream.worker.recovery import watch_recovery
from stream.worker.router import Router
from stream.worker.stats import Stats

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
        # faust's own web server stays off (it would serve the tables): the worker's HTTP API
        # is stream.worker.http, and faust only passes its URL to the other members of the
        # group (the assignor's metadata), which redirect an account's requests there
        web_enabled=False,
        canonical_url=settings.http_url,
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


class App(faust.App):
    """faust's App, serving the HTTP API and watching its changelog recovery from its first
    start: faust starts the ``@app.task`` functions only once table recovery is complete,
    and health, readiness and the watch must run before."""

    http_api = None  # the coroutine function that serves it, if on
    recovery_watch = None  # the coroutine function that watches faust's changelog recovery

    async def on_first_start(self) -> None:
        await super().on_first_start()
        for task in (self.http_api, self.recovery_watch):
            if task is not None:
                self.add_future(task())


def create_app(settings: Settings, http_socket=None) -> faust.App:
    """The worker's faust app; with ``http_socket`` (bound by :func:`stream.worker.http.bind`)
    it serves the HTTP API there too."""
    shim.patch_fetch_wait(settings.agent_fetch_max_wait_ms, settings.agent_fetch_min_bytes)
    app = App(settings.app_id, autodiscover=False, **faust_config(settings))
    log_topic = app.topic(settings.topic(LOG), key_type=bytes, value_type=bytes, partitions=settings.partitions)
    table = app.Table("state", partitions=settings.partitions, key_type=bytes, value_type=bytes)
    stats = Stats()
    agent = LogAgent(app, table, settings, stats)
    if agent.changelog_name != changelog_topic(settings):  # the topic ensure_topics creates compacted
        raise RuntimeError(f"faust names the state changelog {agent.changelog_name!r}, not {changelog_topic(settings)!r}")
    persister = agent.persister
    router = Router(app, settings, stats, agent)
    view = WorkerView(app, settings, agent, router)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:  # noqa: ARG001
        # the router stops and its batches in flight land (the next owner of a log
        # partition resumes where its last record says) and are handed to the log agent
        await guarded("rebalance", router.revoke)
        # let the batches already applied become durable (briefly: the group waits), so
        # that a partition kept or taken over is not applied and published again from further back
        await persister.settle(timeout_s=min(5.0, settings.session_timeout_s / 3))
        async with persister.lock:  # not in the middle of writing rows: a round is all or nothing
            agent.forget(revoked)
            await app.producer.flush()  # what was handed over lands before the new owner reads

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:  # noqa: ARG001
        owned = {tp.partition for tp in assigned if tp.topic == agent.log_name}
        router.assign(owned)
        agent.on_assigned(owned)  # loaded in on_rebalance_complete

    @app.on_rebalance_complete.connect
    async def on_rebalance_complete(sender, **kwargs) -> None:  # noqa: ARG001
        """Before faust seeks the stream to the committed offsets: commit, for each log
        partition assigned, the offset right after its durable ``meta`` -- where the agent
        resumes -- so that the stream starts exactly there (faust's own commits may have
        run past it, or lag behind it)."""
        if agent.faults.name == "stall_rebalance":  # testing: every rebalance hangs here (faust's
            log.warning("fault injection: the rebalance hangs here")  # recovery waits for this signal)
            await asyncio.Event().wait()
        await guarded("rebalance", agent.commit_resume_offsets)
        # the assigned partitions' state, loaded now rather than at their first record
        # (the HTTP API and readiness need it); in its own task: faust's recovery goes on
        asyncio.ensure_future(guarded("loading the assigned partitions", agent.load_assigned))

    @app.agent(log_topic, name="apply_log")
    async def apply_log(stream):
        view.watch("log_agent")
        await guarded("apply_log", agent.run, stream.noack())

    async def persist_forever() -> None:
        await agent.ensure_outboxes()
        await persister.run()

    @app.task
    async def persist() -> None:
        view.watch("persister")
        await guarded("persister", persist_forever)

    @app.task
    async def route() -> None:
        view.watch("router")
        await guarded("router", router.run)

    async def recovery_watch() -> None:
        # testing (KPIMARGIN_FAULT_INJECTION=stall_recovery): the first recovery with records
        # to read counts as stalled at once, so that the rebalance it asks for is exercised
        testing = agent.faults.name == "stall_recovery"
        await guarded("recovery watch", watch_recovery, app, settings.stall_timeout_s, 0.005 if testing else 0.2,
                      0.0 if testing else None, agent)

    app.recovery_watch = recovery_watch

    if http_socket is not None:
        async def http_api() -> None:
            await guarded("HTTP API", serve, view, settings, stats, http_socket)

        app.http_api = http_api

    @app.timer(interval=1.0)
    async def watchdog() -> None:
        await guarded("watchdog", agent.watchdog)

    @app.timer(interval=10.0)
    async def report_stats() -> None:
        """Every 10 s at INFO: what the router and the engine did, and where time went."""
        line = stats.line()
        if line is not None:
            log.info("%s", line)

    app.kpimargin_agent = agent  # type: ignore[attr-defined]  (run_worker's stop drains it)
    app.kpimargin_view = view  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings, http_socket=None) -> None:
    """Run one faust worker in the foreground until SIGINT/SIGTERM; with ``http_socket``
    (:func:`stream.worker.http.bind`) it serves the HTTP API there."""
    from faust.worker import Worker

    app = create_app(settings, http_socket)
    tune_gc(settings.gc_young_objects)

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
            await app.kpimargin_agent.drain(timeout_s=5.0)  # type: ignore[attr-defined]
            logging.shutdown()
            os._exit(0)

        loop.add_signal_handler(signal.SIGUSR1, dump)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(stop()))

    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False,
                    logging_config=logging_config(settings.log_format, settings.log_level))
    worker.execute_from_commandline()
