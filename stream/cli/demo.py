"""``kpimargin demo``: one command that shows the processor working end to end.

Starts the embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), creates the topics,
starts a worker, publishes the shipped scenario phase by phase (each phase waits until the
ordered log has taken it in, so the run is reproducible), prints margin calls as they
arrive, and stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from stream.kafka.clients import ensure_topics, publish, read_topic
from stream.log.ordered_log import entry_source, record_entries
from stream.settings import Settings
from stream.core.topics import ACCOUNT_TOPICS, CALLS, LOG, REQUIREMENTS, SETTLEMENTS

SCENARIO = Path(__file__).resolve().parents[1] / "examples" / "demo_scenario.json"


def load_scenario(path: Path = SCENARIO) -> list[dict]:
    return orjson.loads(path.read_bytes())["phases"]


class LogIndex:
    """Which input events the ordered log holds, per log partition, by reading it in the
    background (reading, not ListOffsets: the embedded broker's end offsets can lag)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.seen: set[tuple[int, str, int, int]] = set()  # (log partition, topic, partition, offset)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        async for partition, _offset, _ts, _key, value in read_topic(
            self.settings, LOG, idle_timeout_s=None, stop=self._stop.is_set
        ):
            for entry in record_entries(value):
                source = entry_source(entry)
                if source is not None:
                    self.seen.add((partition, *source[:3]))

    async def __aenter__(self) -> "LogIndex":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def holds(self, topic: str, positions: list[tuple[int, int]], partitions: int) -> bool:
        """True when every published message is in the log: account events once, broadcast
        events in every partition. Messages the router rejects never arrive: pass only
        valid ones."""
        if self._task is not None and self._task.done():
            self._task.result()  # surface a crashed reader
        found = {(src_p, src_o): set() for src_p, src_o in positions}
        for log_p, t, src_p, src_o in self.seen:
            if t == topic and (src_p, src_o) in found:
                found[(src_p, src_o)].add(log_p)
        need = 1 if topic in ACCOUNT_TOPICS else partitions
        return all(len(parts) >= need for parts in found.values())


async def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(interval_s)


async def publish_phases(settings: Settings, phases: list[dict], on_phase=None, timeout_s: float = 60.0,
                         after_publish=None) -> None:
    """Publish phase by phase; before the next one, wait until the log holds this one, so
    the order of the log -- and so every output -- is the same on every run."""
    async with LogIndex(settings) as log:
        for phase in phases:
            if on_phase:
                on_phase(phase)
            positions = await publish(settings, phase["topic"], [orjson.dumps(m) for m in phase["messages"]])
            if after_publish:
                await after_publish(phase)
            await wait_until(lambda: log.holds(phase["topic"], positions, settings.partitions), timeout_s,
                             f"the log to take in {phase['title']!r}")


def scenario_accounts(phases: list[dict]) -> set[str]:
    return {m["account_id"] for ph in phases if ph["topic"] in ACCOUNT_TOPICS for m in ph["messages"]}


def is_final(requirement: dict) -> bool:
    """A requirement published by a settlement that left the account with no position."""
    return requirement["cause"]["topic"] == SETTLEMENTS and not requirement["positions"]


HEADER = f"{'as of':<21} {'account':<8} {'status':<10} {'shortfall':>12} {'IM':>12} {'equity':>12}  cause"


def format_call(call: dict) -> str:
    cause = call["cause"]
    return (
        f"{call['as_of']:<21} {call['account_id']:<8} {call['status']:<10} {call['shortfall']:>12} "
        f"{call['im']:>12} {call['equity']:>12}  {cause['topic']}:{cause['id']}"
    )


async def _demo(settings: Settings, quiet: bool) -> dict[str, Any]:
    from stream.cli.stream_commands import start_worker_process, stop_process

    phases = load_scenario()
    accounts = scenario_accounts(phases)
    await ensure_topics(settings)
    log_dir = Path(tempfile.mkdtemp(prefix="kpimargin-demo-"))
    worker = start_worker_process(replace(settings, data_dir=str(log_dir / "data")), log_dir / "worker.log")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    calls: dict[str, dict] = {}
    final: dict[str, dict] = {}
    done = asyncio.Event()

    async def watch_calls() -> None:
        async for *_, value in read_topic(settings, CALLS, idle_timeout_s=None, stop=done.is_set):
            call = orjson.loads(value)
            if call["id"] not in calls:
                calls[call["id"]] = call
                say(format_call(call))

    async def watch_requirements() -> None:
        async for *_, value in read_topic(settings, REQUIREMENTS, idle_timeout_s=None, stop=done.is_set):
            req = orjson.loads(value)
            if is_final(req):
                final[req["account_id"]] = req

    watchers = [asyncio.create_task(watch_calls()), asyncio.create_task(watch_requirements())]
    try:
        say(f"worker started (pid {worker.pid}, log {log_dir / 'worker.log'}); publishing the scenario\n")
        say(HEADER)
        await publish_phases(settings, phases, on_phase=lambda ph: say(f"--- {ph['title']}"))
        await wait_until(lambda: set(final) >= accounts or worker.poll() is not None, 120, "the final requirements")
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with status {worker.returncode}; see {log_dir / 'worker.log'}")
    finally:
        done.set()
        await asyncio.gather(*watchers, return_exceptions=True)
        stop_process(worker)
    return {"calls": calls, "final": final}


def run_demo(quiet: bool = False) -> int:
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
        settings = replace(settings, topic_prefix=settings.topic_prefix or f"demo-{int(time.time())}-",
                           app_id=f"{settings.app_id}-demo-{int(time.time())}")
        print(f"using Kafka at {settings.bootstrap_servers} (topic prefix {settings.topic_prefix})", flush=True)
    started = time.monotonic()
    try:
        result = asyncio.run(_demo(settings, quiet))
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
    return 0
