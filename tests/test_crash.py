"""Crash test: a long scenario while workers are SIGKILLed again and again.

``KPIMARGIN_CRASH_EVENTS`` events (10,000 by default, so that CI stays within minutes;
``KPIMARGIN_CRASH_EVENTS=100000`` is the full-size run) over 400 accounts and three
contracts; ``KPIMARGIN_CRASH_KILLS`` kills (default 20) of four kinds, rotating:

* ``random``: SIGKILL at a random moment of a running worker's life;
* ``after_outputs``: the worker kills itself right after a batch's outputs are acknowledged
  and before its state is written (between output send and offset commit);
* ``after_rows``: right after the state rows are written, before the offsets are acked;
* ``in_recovery``: while loading a partition's state after a restart (changelog recovery).

At the end the published records (deduplicated by id, content compared) equal what a
clean run of the same log publishes -- the pure replay of ``margin.log`` -- the persisted
state equals the replayed state, and ``kpimargin replay`` reports zero mismatches.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import replace

import orjson
import pytest

from stream.topics import COLLATERAL, FILLS, FLASH, LISTINGS, TICKS

from .conftest import TSLA, load_example
from .streaming_support import Cluster, fresh_settings, kafka_bootstrap

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

EVENTS = int(os.environ.get("KPIMARGIN_CRASH_EVENTS", "10000"))
KILLS = int(os.environ.get("KPIMARGIN_CRASH_KILLS", "20"))
NFLX = {
    "contract_id": "NFLX-SUBS-2026-06", "kpi": "Monthly paid subscribers (millions)", "lower": 250, "upper": 350,
    "listing_time": "2026-03-01T00:00:00Z", "settlement_time": "2026-07-01T00:00:00Z",
    "history": [281.2, 283.0, 287.9, 290.1, 294.4, 296.0, 301.6], "params": {"beta": 0.05, "k": 0.2},
}
FINAL_TICK = "2026-05-31T00:00:00Z"


def scenario(events: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    web = load_example("web_listing.json")
    contracts = [(TSLA["contract_id"], 300000, 600000), (web["contract_id"], 80, 160), (NFLX["contract_id"], 250, 350)]
    accounts = [f"C{i:04d}" for i in range(400)]
    phases = [
        {"title": "listings", "topic": LISTINGS, "messages": [TSLA, web, NFLX]},
        {"title": "tick", "topic": TICKS, "messages": [{"ts": "2026-04-02T00:00:00Z"}]},
        {"title": "deposits", "topic": COLLATERAL, "messages": [
            {"movement_id": f"D-{a}", "account_id": a, "amount": f"{rnd.randint(1, 60) * 500}.00", "ts": "2026-04-02T00:00:00Z"}
            for a in accounts]},
    ]
    fills_left = events - 3 - 1 - len(accounts) - 3 - 1
    chunks = 8
    day = 3
    for c in range(chunks):
        n = fills_left // chunks + (1 if c < fills_left % chunks else 0)
        messages = []
        for i in range(n):
            cid, lower, upper = rnd.choice(contracts)
            price = round(rnd.uniform(lower, upper), 2) if upper < 1000 else rnd.randrange(lower, upper)
            messages.append({"trade_id": f"X{c}-{i}", "account_id": rnd.choice(accounts), "contract_id": cid,
                             "side": rnd.choice(("BUY", "SELL")), "price": price, "notional": rnd.randint(100, 20000),
                             "ts": f"2026-04-{day:02d}T12:00:00Z"})
        phases.append({"title": f"fills {c}", "topic": FILLS, "messages": messages})
        if c < chunks - 1:
            phases.append({"title": f"tick {c}", "topic": TICKS, "messages": [{"ts": f"2026-04-{day + 1:02d}T00:00:00Z"}]})
        day += 2
    phases.append({"title": "flashes", "topic": FLASH, "messages": [
        {"contract_id": cid, "as_of": "2026-05-01T00:00:00Z", "value": (lower + upper) / 2, "coverage": 0.5}
        for cid, lower, upper in contracts]})
    phases.append({"title": "final tick", "topic": TICKS, "messages": [{"ts": FINAL_TICK}]})
    total = sum(len(p["messages"]) for p in phases)
    assert total >= events, total
    return phases


class Killer(threading.Thread):
    """Restarts and kills workers, rotating the four kinds of crash, until ``kills`` is reached."""

    KINDS = ("random", "after_outputs", "after_rows", "in_recovery")

    def __init__(self, cluster: Cluster, kills: int, seed: int = 11):
        super().__init__(daemon=True)
        self.cluster, self.kills, self.rnd = cluster, kills, random.Random(seed)
        self.done: dict[str, int] = dict.fromkeys(self.KINDS, 0)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(self.kills):
                kind = self.KINDS[i % len(self.KINDS)]
                if kind == "random":
                    worker = self.cluster.start_worker()
                    deadline = time.monotonic() + self.rnd.uniform(4.0, 12.0)
                    while time.monotonic() < deadline and worker.poll() is None:
                        time.sleep(0.05)  # fault injection at a random moment, not synchronisation
                    self.cluster.kill(worker)
                else:
                    at = f":{self.rnd.randint(1, 40)}" if kind != "in_recovery" else ""
                    settings = replace(self.cluster.settings, fault_injection=f"{kind}{at}")
                    worker = self.cluster.start_worker(settings)
                    try:
                        worker.wait(timeout=90)  # it kills itself when it reaches the point
                    except subprocess.TimeoutExpired:
                        self.cluster.kill(worker)  # it never got there (e.g. nothing left to do)
                    else:
                        self.cluster.workers.remove(worker)
                self.done[kind] += 1
            self.cluster.start_worker()  # the survivor finishes the log
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def test_crash_storm_loses_nothing_and_applies_nothing_twice(tmp_path, capsys):
    phases = scenario(EVENTS)
    with kafka_bootstrap() as bootstrap:
        cluster = Cluster(fresh_settings(bootstrap, tmp_path, batch_max=200), tmp_path)
        killer = Killer(cluster, KILLS)
        killer.start()
        try:
            cluster.publish(phases, timeout_s=900)
            killer.join(timeout=1500)
            assert not killer.is_alive() and killer.error is None, killer.error

            outputs = cluster.settle(timeout_s=900)
            replayed, states = cluster.replayed()
            rows = cluster.table_rows()
            log_entries = len(cluster.read("margin.log", idle_s=2.0))
            proc = subprocess.run([sys.executable, "-m", "stream", "replay"], env={**os.environ, **cluster.settings.env()},
                                  capture_output=True, text=True, timeout=900)
        finally:
            cluster.stop()
    published = sum(len(p["messages"]) for p in phases)
    with capsys.disabled():
        print(f"\ncrash test: {published} input events, {log_entries} log entries, kills {killer.done} "
              f"({sum(killer.done.values())} in all, {cluster.started} worker starts), {len(outputs)} distinct records published, "
              f"{len(replayed)} recomputed by replay; replay tool exit {proc.returncode}")
    assert published >= EVENTS and sum(killer.done.values()) >= KILLS
    assert set(outputs) == set(replayed)
    for rid, record in replayed.items():
        assert outputs[rid] == record
    for partition, state in states.items():
        expected = {k: {f: v for f, v in row.items() if f != "src"} for k, row in state.rows()}
        got = {k: {f: v for f, v in row.items() if f != "src"} for k, row in rows.get(partition, {}).items()}
        assert got == expected, f"partition {partition}"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_scenario_is_large_enough():
    phases = scenario(100_000)
    assert sum(len(p["messages"]) for p in phases) >= 100_000
    assert orjson.dumps(phases) == orjson.dumps(scenario(100_000))  # deterministic
