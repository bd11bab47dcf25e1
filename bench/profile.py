"""Profile one worker: where its CPU goes draining a backlog, or at an offered rate.

    python -m bench.profile [--broker embedded|kafka] [--fills 100000] [--seconds 8] [--out worker.pyspy]
    python -m bench.profile --rate 1000 [--broker kafka] [--seconds 8]

Starts the embedded broker, a one-node Apache Kafka (``--broker kafka``) or uses
``KAFKA_BOOTSTRAP_SERVERS``, and one worker (the benchmark's settings, ``bench.stack``),
lists the two example contracts, warms up, then either publishes ``--fills`` fills and,
while the worker drains them, samples it; or (``--rate``) offers fills at that rate, as the
latency measure of ``python -m bench`` does, and samples it in the middle of that run and
prints the latency with its stages. Sampling is py-spy's (``py-spy record -r 200 -f raw``,
installed separately: ``pip install py-spy``) for ``--seconds``. Prints the functions by
inclusive and by own share of the samples, and the worker's CPU use over the sampling.
Without py-spy on the PATH it only measures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stream.core.topics import FILLS
from stream.harness.processes import start_worker_process, stop_process
from stream.kafka.clients import ensure_topics

from . import stack
from .contention import Contention, describe


def _spy(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "-f", "raw",
                             "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def warmed_worker(bootstrap: str):
    """One worker on fresh topics with the two example contracts listed, the clock set and
    400 fills applied (the group formed, state loaded): ``(settings, worker, reader,
    expected)``; stopped afterwards."""
    log_dir = Path(tempfile.mkdtemp(prefix="kpimargin-profile-"))
    settings = stack.bench_settings(bootstrap, f"prof{int(time.time())}")
    await ensure_topics(settings)
    worker = start_worker_process(settings, log_dir / "worker.log")
    reader = stack.RequirementReader(settings).start()
    try:
        await stack._setup_processor(settings)
        expected = stack.Expected(settings)
        warm = stack.fills(400, "W", seed=2)
        await stack.produce_all(settings, settings.topic(FILLS), stack._fill_records(warm))
        await reader.wait_for(expected.requirements(warm), 180)
        yield settings, worker, reader, expected
    finally:
        await reader.stop()
        stop_process(worker)
        shutil.rmtree(log_dir, ignore_errors=True)


async def at_rate(bootstrap: str, rate: float, seconds: float, out: Path | None, broker_pid: int | None = None) -> dict:
    """Offer fills at ``rate``/s for ``seconds`` + 4 s; sample the worker from 2 s in."""
    async with warmed_worker(bootstrap) as (settings, worker, reader, expected):
        pids = {"worker": worker.pid, "broker": broker_pid, "load generator": os.getpid()}
        measuring = asyncio.ensure_future(stack._latency(settings, reader, rate, seconds + 4, expected, pids=pids))
        await asyncio.sleep(2)  # into the steady state of the offered rate
        sampled = Contention({"worker": worker.pid}).start()
        spy = _spy(worker.pid, seconds, out) if out is not None else None
        await asyncio.sleep(seconds)
        cpu = sampled.stop()["worker"]["cpu_cores"]
        result = await measuring
        if spy is not None:
            spy.wait(timeout=seconds + 30)
        return {**result, "worker_cpu_share": cpu}


async def drain(bootstrap: str, n: int, seconds: float, out: Path | None, broker_pid: int | None = None
                ) -> tuple[float, dict]:
    """Publish ``n`` fills, time until every requirement arrived (as ``python -m bench``'s
    throughput does), sample the worker once they are published; ``(fills/s, CPU use of
    the worker, the broker and this process over the whole drain)``."""
    async with warmed_worker(bootstrap) as (settings, worker, reader, expected):
        backlog = stack.fills(n, "T", seed=3)
        want = expected.requirements(backlog)
        records = stack._fill_records(backlog)
        used = Contention({"worker": worker.pid, "broker": broker_pid, "load generator": os.getpid()}).start()
        t0 = time.time()
        await stack.produce_all(settings, settings.topic(FILLS), records)
        spy = _spy(worker.pid, seconds, out) if out is not None else None
        await reader.wait_for(want, 600)
        cpu = used.stop()
        rate = n / (max(reader.arrived[i] for i in want) - t0)
        if spy is not None:
            spy.wait(timeout=seconds + 30)
        return rate, cpu


def shares(raw: Path, top: int) -> str:
    """py-spy's raw (collapsed) stacks -> functions by inclusive and by own share."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text:
            continue
        n = int(count)
        total += n
        frames = [frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].split(":")[0] for frame in stack_text.split(";")]
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    lines = [f"{total} samples", "inclusive:"] + [f"{100 * v / total:5.1f}% {k}" for k, v in inclusive.most_common(top)]
    lines += ["own:"] + [f"{100 * v / total:5.1f}% {k}" for k, v in own.most_common(top // 2)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--rate", type=float, default=None, help="offer fills at this rate instead of draining a backlog")
    parser.add_argument("--fills", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("worker.pyspy"))
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    from stream.settings import Settings

    from .__main__ import broker_pid, start_broker

    out = args.out if shutil.which("py-spy") else None
    if out is None:
        print("py-spy not found: measuring only", file=sys.stderr)
    base = Settings.from_env()
    try:
        broker, name = (None, base.bootstrap_servers) if base.bootstrap_servers else start_broker(args.broker)
        try:
            bootstrap = base.bootstrap_servers or broker.bootstrap
            if args.rate:
                result = asyncio.run(at_rate(bootstrap, args.rate, args.seconds, out, broker_pid(broker)))
            else:
                rate, cpu = asyncio.run(drain(bootstrap, args.fills, args.seconds, out, broker_pid(broker)))
        finally:
            if broker is not None:
                broker.stop()
    except Exception as exc:  # one line, no traceback
        print(f"python -m bench.profile: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.rate:
        st = result["stages"]
        print(f"{name}: one worker at {args.rate:,.0f} fills/s offered: p50 {result['p50_ms']:.1f} ms, "
              f"p99 {result['p99_ms']:.1f} ms over {result['measured']:,} fills; worker CPU "
              f"{result['worker_cpu_share']:.0%} of a core")
        print("stages (p50 / p99 ms): " + ", ".join(f"{k} {v['p50_ms']} / {v['p99_ms']}" for k, v in st.items()
                                                    if isinstance(v, dict)))
        print("CPU over the measured seconds: " + describe(result["cpu"]))
    else:
        print(f"{name}: one worker drained {args.fills:,} fills at {rate:,.0f} fills/s")
        print("CPU over the drain: " + describe(cpu))
    if out is not None and out.exists():
        print(shares(out, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
