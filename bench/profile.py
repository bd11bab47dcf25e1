"""Drain a fill backlog with one worker and profile it: where a busy worker's CPU goes.

    python -m bench.profile [--fills 100000] [--seconds 8] [--out worker.pyspy]

Starts the embedded broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``) and one worker (the
benchmark's settings, ``bench.stack``), lists the two example contracts, warms up, then
publishes ``--fills`` fills and, while the worker drains them, samples it with py-spy
(``py-spy record -r 200 -f raw``, installed separately: ``pip install py-spy``) for
``--seconds``. Prints the drain rate and the functions by inclusive and by own share of
the samples. Without py-spy on the PATH it only measures the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stream.cli_stream import start_worker_process, stop_process
from stream.kafka import ensure_topics
from stream.topics import FILLS

from . import stack


async def drain(bootstrap: str, n: int, seconds: float, out: Path | None) -> float:
    log_dir = Path(tempfile.mkdtemp(prefix="kpimargin-profile-"))
    settings = stack.bench_settings(bootstrap, f"prof{int(time.time())}")
    await ensure_topics(settings)
    worker = start_worker_process(settings, log_dir / "worker.log")
    reader = stack.RequirementReader(settings).start()
    spy = None
    try:
        await stack._setup_processor(settings)
        expected = stack.Expected(settings)
        warm = stack.fills(400, "W", seed=2)
        await stack.produce_all(settings, settings.topic(FILLS), stack._fill_records(warm))
        await reader.wait_for(expected.requirements(warm), 180)
        backlog = stack.fills(n, "T", seed=3)
        want = expected.requirements(backlog)
        t0 = time.time()
        await stack.produce_all(settings, settings.topic(FILLS), stack._fill_records(backlog))
        if out is not None:
            spy = subprocess.Popen(["py-spy", "record", "-p", str(worker.pid), "-d", str(int(seconds)), "-r", "200",
                                    "-f", "raw", "-o", str(out), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await reader.wait_for(want, 600)
        rate = n / (max(reader.arrived[i] for i in want) - t0)
        if spy is not None:
            spy.wait(timeout=seconds + 30)
        return rate
    finally:
        await reader.stop()
        stop_process(worker)
        shutil.rmtree(log_dir, ignore_errors=True)


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
    parser.add_argument("--fills", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("worker.pyspy"))
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    from stream.broker import EmbeddedBroker
    from stream.settings import Settings

    out = args.out if shutil.which("py-spy") else None
    if out is None:
        print("py-spy not found: measuring the drain only", file=sys.stderr)
    base = Settings.from_env()
    broker = None if base.bootstrap_servers else EmbeddedBroker().start()
    try:
        rate = asyncio.run(drain(base.bootstrap_servers or broker.bootstrap, args.fills, args.seconds, out))
    finally:
        if broker is not None:
            broker.stop()
    print(f"one worker drained {args.fills:,} fills at {rate:,.0f} fills/s")
    if out is not None and out.exists():
        print(shares(out, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
