"""Soak: sustained load on one worker, watching memory and consumer lag (not a CI test).

    python -m bench.soak [--rate 3500] [--minutes 10] [--accounts 2000]

Starts the embedded broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``) and one worker, lists two
contracts, then publishes fills at a fixed rate for the given time, with a clock tick every
10 s that advances event time by one day (fills carry the current day), so the 7-day dedup
horizon is crossed after about 70 s and memory should stop growing. Every 10 s it samples
the worker's resident memory (``/proc/PID/status``) and two lags: the router's (input
messages published minus those its group committed, i.e. forwarded to the log and
acknowledged) and the engine's (``margin.log`` records written minus those the worker
committed, i.e. applied and made durable). Prints one line per sample and a final JSON
summary.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.core.topics import FILLS, LOG, TICKS
from stream.harness.processes import start_worker_process, stop_process
from stream.harness.scenario import load_scenario, publish_phases
from stream.kafka.clients import client_kwargs, ensure_topics, key_for
from stream.kafka.tansu import EmbeddedBroker
from stream.settings import Settings


def _day(day: int) -> str:
    """Event time: 2026-04-03 plus ``day`` days."""
    import datetime as dt

    return (dt.datetime(2026, 4, 3, tzinfo=dt.timezone.utc) + dt.timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def lags(settings: Settings, published: int) -> tuple[int, int]:
    """(router lag in input messages, engine lag in log records)."""
    from stream.core.topics import ACCOUNT_TOPICS

    async def committed(group: str, topics: list[str]) -> int:
        consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            return sum([await consumer.committed(TopicPartition(settings.topic(t), p)) or 0
                        for t in topics for p in range(settings.partitions)])
        finally:
            await consumer.stop()

    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic(LOG), p) for p in range(settings.partitions)]
        log_end = sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()
    from stream.worker.router import last_positions

    routed = 0  # inputs the log has taken in: the account topics' positions, plus the listings and ticks once
    for p in range(settings.partitions):
        positions = await last_positions(settings, p)
        routed += sum(o for (t, q), o in positions.items() if t in ACCOUNT_TOPICS or p == 0)
    applied = await committed(settings.app_id, [LOG])
    return published - routed, log_end - applied


async def soak(settings: Settings, rate: float, minutes: float, accounts: int, worker_pid: int) -> dict:
    phases = load_scenario()[:2]  # the two listings and the first tick
    await publish_phases(settings, phases)
    published = sum(len(ph["messages"]) for ph in phases)
    producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=5)
    await producer.start()
    rnd = random.Random(3)
    start = time.monotonic()
    samples = []
    sent = 0
    next_sample = start
    next_tick = start + 10
    day = 0
    try:
        while time.monotonic() - start < minutes * 60:
            now = time.monotonic()
            due = int((now - start) * rate) - sent
            for _ in range(max(0, due)):
                fill = {"trade_id": f"S{sent}", "account_id": f"A{rnd.randrange(accounts)}",
                        "contract_id": "TSLA-Q2-2026-DELIVERIES", "side": rnd.choice(("BUY", "SELL")),
                        "price": rnd.randrange(300000, 600000), "notional": rnd.randint(100, 10000),
                        "ts": _day(day)}
                await producer.send(settings.topic(FILLS), orjson.dumps(fill), key=key_for(FILLS, fill))
                sent += 1
                published += 1
            if now >= next_tick:
                day += 1
                tick = {"ts": _day(day)}
                await producer.send(settings.topic(TICKS), orjson.dumps(tick), key=key_for(TICKS, tick))
                published += 1
                next_tick += 10
            if now >= next_sample:
                router_lag, engine_lag = await lags(settings, published)
                sample = {"t_s": round(now - start), "sent": sent, "router_lag_msgs": router_lag,
                          "engine_lag_records": engine_lag, "rss_mb": round(rss_mb(worker_pid), 1)}
                samples.append(sample)
                print(orjson.dumps(sample).decode(), flush=True)
                next_sample += 10
            await asyncio.sleep(0.01)
    finally:
        await producer.stop()
    router = [s["router_lag_msgs"] for s in samples[1:]]
    engine = [s["engine_lag_records"] for s in samples[1:]]
    return {
        "rate_per_s": rate, "minutes": minutes, "fills_sent": sent, "accounts": accounts,
        "rss_mb_start": samples[1]["rss_mb"] if len(samples) > 1 else None, "rss_mb_end": samples[-1]["rss_mb"],
        "router_lag_max": max(router) if router else None, "engine_lag_max": max(engine) if engine else None,
        "router_lag_end": samples[-1]["router_lag_msgs"], "engine_lag_end": samples[-1]["engine_lag_records"],
        "samples": len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=3500.0, help="fills per second (about half of processor_eps)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--accounts", type=int, default=2000)
    args = parser.parse_args(argv)
    base = Settings.from_env()
    broker = None if base.bootstrap_servers else EmbeddedBroker().start()
    settings = replace(base, bootstrap_servers=broker.bootstrap if broker else base.bootstrap_servers,
                       app_id=f"soak-{int(time.time())}", topic_prefix=f"soak{int(time.time())}.",
                       session_timeout_s=6.0, log_level="info", data_dir="/tmp/kpimargin-soak")
    worker = None
    try:
        asyncio.run(ensure_topics(settings))
        worker = start_worker_process(settings, Path("/tmp/kpimargin-soak-worker.log"))
        summary = asyncio.run(soak(settings, args.rate, args.minutes, args.accounts, worker.pid))
    finally:
        if worker is not None:
            stop_process(worker)
        if broker is not None:
            broker.stop()
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
