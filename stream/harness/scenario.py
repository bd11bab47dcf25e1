"""The shipped scenario, published phase by phase with each phase waited for in the
ordered log: what the demo shows and what the integration tests and benchmarks drive."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from stream.core.topics import ACCOUNT_TOPICS, LOG, SETTLEMENTS
from stream.kafka.clients import publish, read_topic
from stream.log.ordered_log import entry_source, record_entries
from stream.settings import Settings

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
                         after_publish=None, on_published=None) -> None:
    """Publish phase by phase; before the next one, wait until the log holds this one, so
    the order of the log -- and so every output -- is the same on every run.
    ``on_published(positions)`` gets each phase's ``(partition, offset)`` list."""
    async with LogIndex(settings) as log:
        for phase in phases:
            if on_phase:
                on_phase(phase)
            positions = await publish(settings, phase["topic"], [orjson.dumps(m) for m in phase["messages"]])
            if on_published:
                await on_published(positions)
            if after_publish:
                await after_publish(phase)
            await wait_until(lambda: log.holds(phase["topic"], positions, settings.partitions), timeout_s,
                             f"the log to take in {phase['title']!r}")


def scenario_accounts(phases: list[dict]) -> set[str]:
    return {m["account_id"] for ph in phases if ph["topic"] in ACCOUNT_TOPICS for m in ph["messages"]}


def is_final(requirement: dict) -> bool:
    """A requirement published by a settlement that left the account with no position."""
    return requirement["cause"]["topic"] == SETTLEMENTS and not requirement["positions"]
