"""``kpimargin demo``: one command that shows the processor working end to end.

Starts the embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), creates the topics,
starts a worker, publishes the shipped scenario phase by phase (each phase waits until the
ordered log has taken it in, so the run is reproducible), prints margin calls as they
arrive, and stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from stream.audit.export import write_export
from stream.audit.inputs import read_broker
from stream.core.topics import CALLS, INPUT_TOPICS, LOG, OUTPUT_TOPICS, REQUIREMENTS
from stream.harness.processes import start_worker_process, stop_process
from stream.harness.scenario import is_final, load_scenario, publish_phases, scenario_accounts, wait_until
from stream.kafka.clients import check_broker, ensure_topics, read_topic
from stream.settings import Settings

HEADER = f"{'as of':<21} {'account':<8} {'status':<10} {'shortfall':>12} {'IM':>12} {'equity':>12}  cause"


def format_call(call: dict) -> str:
    cause = call["cause"]
    return (
        f"{call['as_of']:<21} {call['account_id']:<8} {call['status']:<10} {call['shortfall']:>12} "
        f"{call['im']:>12} {call['equity']:>12}  {cause['topic']}:{cause['id']}"
    )


def _phase_of(phases: list[dict], published: list[list[tuple[int, int]]]) -> dict[tuple[str, int, int], int]:
    """``(topic, partition, offset)`` of every published input -> the index of its phase."""
    return {(ph["topic"], partition, offset): i for i, (ph, positions) in enumerate(zip(phases, published))
            for partition, offset in positions}


def calls_by_phase(phases: list[dict], published: list[list[tuple[int, int]]], calls: list[dict]) -> list[list[dict]]:
    """The calls grouped under the phase whose input caused them, each group in the order
    of the causes' publication (one cause's calls by account): the same on every run."""
    phase_of = _phase_of(phases, published)
    groups: list[list[dict]] = [[] for _ in phases]
    for call in calls:
        cause = call["cause"]
        index = phase_of.get((cause["topic"], cause["partition"], cause["offset"]))
        if index is not None:
            groups[index].append(call)
    for group in groups:
        group.sort(key=lambda c: (c["cause"]["partition"], c["cause"]["offset"], c["account_id"], c["as_of"], c["id"]))
    return groups


EXPORTED = (*INPUT_TOPICS, LOG, *OUTPUT_TOPICS)


async def _demo(settings: Settings, quiet: bool, export_dir: str | None) -> dict[str, Any]:
    phases = load_scenario()
    accounts = scenario_accounts(phases)
    await ensure_topics(settings)
    log_dir = Path(tempfile.mkdtemp(prefix="kpimargin-demo-"))
    worker = start_worker_process(replace(settings, data_dir=str(log_dir / "data")), log_dir / "worker.log")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    calls: dict[str, dict] = {}
    final: dict[str, dict] = {}
    published: list[list[tuple[int, int]]] = []
    done = asyncio.Event()

    async def watch_calls() -> None:
        async for *_, value in read_topic(settings, CALLS, idle_timeout_s=None, stop=done.is_set):
            call = orjson.loads(value)
            calls.setdefault(call["id"], call)

    async def watch_requirements() -> None:
        async for *_, value in read_topic(settings, REQUIREMENTS, idle_timeout_s=None, stop=done.is_set):
            req = orjson.loads(value)
            if is_final(req):
                final[req["account_id"]] = req

    async def published_phase(positions: list[tuple[int, int]]) -> None:
        published.append(positions)

    watchers = [asyncio.create_task(watch_calls()), asyncio.create_task(watch_requirements())]
    ok = False
    try:
        say(f"worker started (pid {worker.pid}); publishing the scenario, {len(phases)} phases")
        await publish_phases(settings, phases, on_published=published_phase)
        await wait_until(lambda: set(final) >= accounts or worker.poll() is not None, 120, "the final requirements")
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with status {worker.returncode}; see {log_dir / 'worker.log'}")
        ok = True
    finally:
        done.set()
        await asyncio.gather(*watchers, return_exceptions=True)
        stop_process(worker)
        if ok:
            shutil.rmtree(log_dir, ignore_errors=True)
    say("\nmargin calls, under the phase whose input caused them:")
    for phase, group in zip(phases, calls_by_phase(phases, published, list(calls.values()))):
        say(f"--- {phase['title']}")
        if group:
            say(HEADER)
            for call in group:
                say(format_call(call))
    if export_dir is not None:
        topics = await read_broker(settings, EXPORTED)
        for topic in EXPORTED:
            write_export(export_dir, topic, topics[topic])
        say(f"\nexported {len(EXPORTED)} topics to {export_dir}/")
    return {"calls": calls, "final": final}


def run_demo(quiet: bool = False, export_dir: str | None = None) -> int:
    from stream.kafka.tansu import EmbeddedBroker

    env = dict(os.environ)
    env.setdefault("KPIMARGIN_SESSION_TIMEOUT_S", "6")
    settings = Settings.from_env(env)
    broker = None
    if not settings.bootstrap_servers:
        broker = EmbeddedBroker().start()
        settings = replace(settings, bootstrap_servers=broker.bootstrap)
        print(f"embedded broker (Tansu, memory storage) on {broker.bootstrap}", flush=True)
    else:
        asyncio.run(check_broker(settings))  # BrokerUnavailable: one line, status 1 (stream.cli.main)
        settings = replace(settings, topic_prefix=settings.topic_prefix or f"demo-{int(time.time())}-",
                           app_id=f"{settings.app_id}-demo-{int(time.time())}")
        print(f"using Kafka at {settings.bootstrap_servers} (topic prefix {settings.topic_prefix})", flush=True)
    started = time.monotonic()
    try:
        result = asyncio.run(_demo(settings, quiet, export_dir))
    except (TimeoutError, RuntimeError) as exc:
        print(f"kpimargin demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if broker is not None:
            broker.stop()
    print(f"\nfinal equity after both settlements ({time.monotonic() - started:.1f} s):")
    for account_id, req in sorted(result["final"].items()):
        print(f"  {account_id:<8} equity {req['equity']:>10}  IM {req['im']:>8}")
    print(f"{len(result['calls'])} margin calls published; everything started was stopped.")
    if export_dir is not None:
        print(f"audit the run: kpimargin replay --dir {export_dir}   (and explain, report, backtest --from-log: README)")
    if broker is None:
        env_words = f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} KPIMARGIN_TOPIC_PREFIX={settings.topic_prefix}"
        print(f"its topics stay on the broker; audit them with:\n  {env_words} kpimargin replay\n"
              f"  {env_words} kpimargin explain ACME")
    return 0
