"""Broker-side measurements of ``python -m bench``: the stack's limit, the framework's floor
and the processor, side by side on one broker in one run.

(a) ``passthrough``: raw aiokafka consume-and-produce, one output per input, no logic.
(b) ``faust_floor``: a bare faust agent doing one table write per event (bench/faust_floor.py).
(c) ``processor``: the real worker, fill published to requirement published.
(d) ``latency``: fill-to-requirement latency at a fixed offered rate.
(e) ``hop_latency``: one broker hop (produce, then a consumer's fetch), no logic, at the
    same rate for the same time: the latency floor of this stack -- a fill reaches its
    requirement through two such hops at least (fill -> worker, requirement -> reader).

Every figure is measured on messages pre-generated before the clock starts; throughput runs
drain a backlog (the input is published first), so they measure the consumer, not the
publisher.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.core.topics import FILLS, LISTINGS, REQUIREMENTS, TICKS
from stream.harness.processes import start_worker_process, stop_process
from stream.kafka.clients import client_kwargs, ensure_topics, key_for
from stream.settings import Settings

from .contention import Contention

EXAMPLES = Path(__file__).resolve().parent.parent / "stream" / "examples"
FILL_DAY = "2026-04-03T12:00:00Z"
ACCOUNTS = 1_000
LATENCY_WARM_S = 3.0  # offered before a latency measure's window, at the same rate: its start-up is not steady state


def _listings() -> list[dict]:
    return [orjson.loads((EXAMPLES / name).read_bytes()) for name in ("tsla_listing.json", "web_listing.json")]


def fills(n: int, tag: str, seed: int = 1) -> list[dict]:
    """``n`` new fills over ``ACCOUNTS`` accounts and the two example contracts."""
    rnd = random.Random(seed)
    contracts = [(raw["contract_id"], raw["lower"], raw["upper"]) for raw in _listings()]
    out = []
    for i in range(n):
        cid, lower, upper = contracts[i % 2]
        price = rnd.randrange(int(lower), int(upper)) if upper > 1000 else round(rnd.uniform(lower, upper), 2)
        out.append({"trade_id": f"{tag}-{i}", "account_id": f"B{rnd.randrange(ACCOUNTS):04d}", "contract_id": cid,
                    "side": rnd.choice(("BUY", "SELL")), "price": price, "notional": rnd.randint(100, 20_000),
                    "ts": FILL_DAY})
    return out


async def create_topics(settings: Settings, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=settings.partitions, replication_factor=1) for n in names])
    finally:
        await admin.close()


async def drop_topics(settings: Settings) -> list[str]:
    """Delete a finished measurement's topics (its prefix's and its faust app's): the
    embedded broker keeps every record in memory and slows down as it holds more, so a
    measurement after a drain would otherwise pay for the drain's data. A broker that
    refuses (a shared cluster without deletions) keeps them: one line on stderr, and the
    run goes on."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    try:
        await admin.start()
        names = [name for name in await admin.list_topics()
                 if name.startswith(settings.topic_prefix) or name.startswith(f"{settings.app_id}-")]
        if names:
            await admin.delete_topics(names)
        return names
    except Exception as exc:
        print(f"python -m bench: topics of {settings.topic_prefix!r} kept: {exc}", file=sys.stderr)
        return []
    finally:
        await admin.close()


async def produce_all(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def _fill_records(items: list[dict]) -> list[tuple[bytes | None, bytes]]:
    return [(key_for(FILLS, f), orjson.dumps(f)) for f in items]


# --------------------------------------------------------------------------- (a) pass-through
async def passthrough(settings: Settings, n: int) -> dict:
    """Consume ``n`` pre-published fills and produce one message per input (acks=all, the
    processor's producer settings), timing from the first fetch to the final flush."""
    src, dst = settings.topic("bench.pass.in"), settings.topic("bench.pass.out")
    await create_topics(settings, [src, dst])
    await produce_all(settings, src, _fill_records(fills(n, "P")))
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=settings.fetch_max_wait_ms, max_partition_fetch_bytes=4 << 20)
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=settings.producer_linger_ms)
    await consumer.start()
    await producer.start()
    try:
        tps = [TopicPartition(src, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        done = 0
        t0 = time.perf_counter()
        while done < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5_000)
            if not batch and time.perf_counter() - t0 > 120:
                raise TimeoutError(f"pass-through read {done} of {n}")
            for records in batch.values():
                for record in records:
                    await producer.send(dst, record.value, key=record.key)
                    done += 1
        await producer.flush()
        elapsed = time.perf_counter() - t0
    finally:
        await producer.stop()
        await consumer.stop()
    return {"events": n, "seconds": elapsed, "eps": n / elapsed}


# --------------------------------------------------------------------------- (e) one hop
async def hop_latency(settings: Settings, rate: float, seconds: float, broker_pid: int | None = None) -> dict:
    """Publish ``rate`` fills a second for ``seconds`` (each on its own schedule, 0 ms
    linger, as in :func:`_latency`, after the same unmeasured warm-up) to a fresh topic and
    time each until a consumer (fetch wait as the processor's) receives it: one hop of this
    broker, no logic. With the CPU use of the broker and this process over the measured
    seconds."""
    topic = settings.topic("bench.hop")
    await create_topics(settings, [topic])
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=settings.fetch_max_wait_ms, max_partition_fetch_bytes=4 << 20)
    producer = AIOKafkaProducer(**client_kwargs(settings), acks=1, linger_ms=0)
    await consumer.start()
    await producer.start()
    await producer.partitions_for(topic)  # its metadata fetched before the clock starts
    items = fills(int(rate * LATENCY_WARM_S), "Hw", seed=6) + fills(int(rate * seconds), "H", seed=5)
    measured = {item["trade_id"] for item in items if item["trade_id"].startswith("H-")}
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}

    async def receive() -> None:
        while len(arrived) < len(items):
            batch = await consumer.getmany(timeout_ms=100, max_records=5_000)
            now = time.time()
            for records in batch.values():
                for record in records:
                    arrived[record.key.decode()] = now

    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        receiving = asyncio.create_task(receive())
        window = Contention({"broker": broker_pid, "load generator": os.getpid()})
        warm = len(items) - len(measured)
        t0 = time.monotonic()
        for i, item in enumerate(items):
            if i == warm:
                window.start()
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[item["trade_id"]] = time.time()
            await producer.send(topic, orjson.dumps(item), key=item["trade_id"].encode())
        contention = window.stop()
        await asyncio.wait_for(receiving, 120)
    finally:
        await producer.stop()
        await consumer.stop()
    lat = sorted((arrived[i] - sent[i]) * 1000 for i in measured)
    return {"rate": rate, "messages": len(lat), "p50_ms": _pct(lat, 0.50), "p99_ms": _pct(lat, 0.99), "max_ms": lat[-1],
            "cpu": contention}


# --------------------------------------------------------------------------- (b) faust floor
async def faust_floor(settings: Settings, n: int, log_dir: Path) -> dict:
    topic = settings.topic("bench.floor.in")
    await create_topics(settings, [topic])
    await produce_all(settings, topic, _fill_records(fills(n, "F")))
    out = log_dir / "floor.json"
    env = {**os.environ, **replace(settings, app_id=settings.app_id + "-floor").env(),
           "BENCH_TOPIC": topic, "BENCH_N": str(n), "BENCH_OUT": str(out)}
    with open(log_dir / "floor.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.faust_floor"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 180
        while not out.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"faust floor exited {proc.returncode}; see {log_dir / 'floor.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError("faust floor did not finish")
            await asyncio.sleep(0.1)
        result = orjson.loads(out.read_bytes())
    finally:
        stop_process(proc)
    elapsed = result["last"] - result["first"]
    return {"events": n, "seconds": elapsed, "eps": n / elapsed}


# --------------------------------------------------------------------------- (c, d) processor
class RequirementReader:
    """Reads margin.requirements in the background; records when each fill's requirement
    arrived (``time.time()`` at the reader) and the broker timestamp of the record."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.arrived: dict[str, float] = {}
        self.created: dict[str, int] = {}  # the requirement record's timestamp (ms; the worker's producer set it)
        self._stop = False
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(**client_kwargs(self.settings), group_id=None, enable_auto_commit=False,
                                    fetch_max_wait_ms=5, max_partition_fetch_bytes=4 << 20)
        await consumer.start()
        try:
            name = self.settings.topic(REQUIREMENTS)
            tps = [TopicPartition(name, p) for p in range(self.settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not self._stop:
                batch = await consumer.getmany(timeout_ms=50, max_records=5_000)
                now = time.time()
                for records in batch.values():
                    for record in records:
                        cause = orjson.loads(record.value)["cause"]
                        if cause["topic"] == FILLS and cause["id"] not in self.arrived:
                            self.arrived[cause["id"]] = now
                            self.created[cause["id"]] = record.timestamp
        finally:
            await consumer.stop()

    def start(self) -> "RequirementReader":
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop = True
        if self._task is not None:
            await self._task

    async def wait_for(self, ids: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ids <= self.arrived.keys():
            if self._task is not None and self._task.done():
                self._task.result()
            if time.monotonic() > deadline:
                missing = len(ids - self.arrived.keys())
                raise TimeoutError(f"{missing} of {len(ids)} requirements never arrived")
            await asyncio.sleep(0.02)


class Expected:
    """The pure core fed the same fills as the worker (in publication order, which is each
    account's order): which trade ids publish a requirement (IM or equity moved a cent)."""

    def __init__(self, settings: Settings):
        from stream.core.engine import apply
        from stream.core.messages import Cause, parse
        from stream.core.state import EngineState

        self._apply, self._parse, self._cause = apply, parse, Cause
        self.state = EngineState(config=settings.engine_config())
        self.offset = 0
        for raw in _listings():
            apply(self.state, parse(LISTINGS, raw), Cause(LISTINGS, 0, 0, raw["contract_id"]), raw)
        apply(self.state, parse(TICKS, {"ts": FILL_DAY}), Cause(TICKS, 0, 0, FILL_DAY))

    def requirements(self, items: list[dict]) -> set[str]:
        ids = set()
        for raw in items:
            self.offset += 1
            _, outputs = self._apply(self.state, self._parse(FILLS, raw), self._cause(FILLS, 0, self.offset, raw["trade_id"]), raw)
            if any(o.topic == REQUIREMENTS for o in outputs):
                ids.add(raw["trade_id"])
        return ids


async def _setup_processor(settings: Settings) -> None:
    """List the contracts and set the clock, waiting until the worker's ordered log holds
    them (a fill routed before its listing would be dead-lettered as unknown_contract)."""
    from stream.harness.scenario import publish_phases

    await publish_phases(settings, [{"title": "listings", "topic": LISTINGS, "messages": _listings()},
                                    {"title": "tick", "topic": TICKS, "messages": [{"ts": FILL_DAY}]}], timeout_s=180)


async def processor(settings: Settings, n: int, rate: float, latency_s: float, workers: int, log_dir: Path,
                    measure_latency: bool = True, extra_latency_rate: float | None = None,
                    broker_pid: int | None = None) -> dict:
    """Start ``workers`` worker processes; warm up; measure latency at ``rate`` fills/s for
    ``latency_s`` seconds (if asked), with the CPU use of the workers, the broker (its
    ``broker_pid``, when this machine runs it) and this process over that window; then
    throughput on a backlog of ``n`` fills (if ``n``). Give each measurement fresh topics
    (its own settings): the embedded broker's fetches slow down with the number of record
    batches a partition holds."""
    await ensure_topics(settings)
    procs = [start_worker_process(settings, log_dir / f"worker-{settings.app_id}-{i}.log") for i in range(workers)]
    pids = {("worker" if workers == 1 else f"worker {i + 1}"): proc.pid for i, proc in enumerate(procs)}
    pids.update({"broker": broker_pid, "load generator": os.getpid()})
    reader = RequirementReader(settings).start()
    result: dict = {"workers": workers}
    try:
        await _setup_processor(settings)
        # warm-up: the group has formed and every partition has loaded its state
        expected = Expected(settings)
        warm = fills(400, "W", seed=2)
        await produce_all(settings, settings.topic(FILLS), _fill_records(warm))
        await reader.wait_for(expected.requirements(warm), 180)
        if extra_latency_rate:  # a rate the worker sustains: the pipeline's own latency
            result["latency_unsaturated"] = await _latency(settings, reader, extra_latency_rate, latency_s, expected, "U",
                                                           pids=pids)
        if measure_latency:
            result["latency"] = await _latency(settings, reader, rate, latency_s, expected, pids=pids)
        if not n:
            return result
        backlog = fills(n, "T", seed=3)
        want = expected.requirements(backlog)
        records = _fill_records(backlog)
        t0 = time.time()
        await produce_all(settings, settings.topic(FILLS), records)
        published_s = time.time() - t0
        await reader.wait_for(want, 600)
        t_end = max(reader.arrived[i] for i in want)
        elapsed = t_end - t0
        result.update(events=n, requirements=len(want), seconds=elapsed, eps=n / elapsed, publish_seconds=published_s)
    finally:
        await reader.stop()
        for proc in procs:
            stop_process(proc)
    return result


async def _latency(settings: Settings, reader: RequirementReader, rate: float, seconds: float, expected: Expected,
                   tag: str = "L", warm_s: float = LATENCY_WARM_S, pids: dict[str, int | None] | None = None) -> dict:
    """Publish fills at ``rate`` per second (each sent on its own schedule, no batching
    beyond the producer's 0 ms linger) and time each until its requirement arrives. The
    first ``warm_s`` seconds of the schedule are not measured: the latency of a worker and
    a broker that have just gone from idle to the offered rate (JIT, caches, first-touch
    allocations) is a transient, not the steady state the target is about. Over the
    measured seconds, the CPU use and run-queue wait of the processes in ``pids``
    (:mod:`bench.contention`)."""
    warm = fills(int(rate * warm_s), tag + "w", seed=6)
    items = fills(int(rate * seconds), tag, seed=4)
    expected.requirements(warm)
    want = expected.requirements(items)
    producer = AIOKafkaProducer(**client_kwargs(settings), acks=1, linger_ms=0)
    await producer.start()
    await producer.partitions_for(settings.topic(FILLS))  # its metadata fetched before the clock starts
    sent: dict[str, float] = {}
    window = Contention(pids or {})
    try:
        t0 = time.monotonic()
        for i, item in enumerate(warm + items):
            if i == len(warm):
                window.start()
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the offered rate's schedule
            sent[item["trade_id"]] = time.time()
            await producer.send(settings.topic(FILLS), orjson.dumps(item), key=key_for(FILLS, item))
        await producer.flush()
        offered_s = time.monotonic() - t0
        contention = window.stop()
    finally:
        await producer.stop()
    await reader.wait_for(want, 120)
    lat = sorted((reader.arrived[i] - sent[i]) * 1000 for i in want)
    return {"rate": rate, "offered_rate": (len(warm) + len(items)) / offered_s, "fills": len(items),
            "warm_s": warm_s, "measured": len(lat), "p50_ms": _pct(lat, 0.50), "p99_ms": _pct(lat, 0.99),
            "max_ms": lat[-1], "stages": await stages(settings, reader, sent, want), "cpu": contention}


async def stages(settings: Settings, reader: RequirementReader, sent: dict[str, float], want: set[str]) -> dict:
    """Where a fill's latency goes, from the records' own timestamps (the producers' clock,
    the same machine's): ``router`` = fill sent -> its log record created (fetch, merge,
    end-offset check, encode); ``engine`` = log record created -> requirement created (the
    log record's acknowledgement the hand-off waits for, the apply, the outbox);
    ``delivery`` = requirement created -> at the outside reader (linger, produce, fetch).
    Each as p50/p99 ms over the fills of the latency run."""
    from stream.core.topics import LOG
    from stream.kafka.clients import read_topic
    from stream.log.ordered_log import entry_source, record_entries

    logged: dict[str, int] = {}
    async for _p, _o, ts, _k, raw in read_topic(settings, LOG, idle_timeout_s=1.0):
        for entry in record_entries(raw):
            source = entry_source(entry)
            if source and source[0] == FILLS and source[3].get("trade_id") in want:
                logged.setdefault(source[3]["trade_id"], ts)
    ids = [i for i in want if i in logged and i in reader.created]
    spans = {
        "router": [logged[i] - sent[i] * 1000 for i in ids],
        "engine": [reader.created[i] - logged[i] for i in ids],
        "delivery": [reader.arrived[i] * 1000 - reader.created[i] for i in ids],
    }
    out = {"fills": len(ids)}
    for name, values in spans.items():
        values.sort()
        out[name] = {"p50_ms": round(_pct(values, 0.50), 2), "p99_ms": round(_pct(values, 0.99), 2)} if values else None
    return out


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


# The embedded broker does not wake a waiting fetch when data arrives: every hop waits up to
# the fetch wait. The benchmark runs with a 5 ms fetch wait (the environment may override
# it) and otherwise the defaults; on Kafka a fetch returns as soon as data arrives.
LATENCY_TUNING = {"KPIMARGIN_FETCH_MAX_WAIT_MS": "5"}


def bench_settings(bootstrap: str, tag: str, **overrides) -> Settings:
    base = Settings.from_env({**LATENCY_TUNING, **os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    data = tempfile.mkdtemp(prefix="kpimargin-bench-")
    return replace(base, app_id=f"bench-{tag}", topic_prefix=f"b{tag}.", session_timeout_s=6.0, data_dir=data,
                   log_level="info", **overrides)
