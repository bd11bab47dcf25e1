"""The pure core's cost per fill, as the worker runs it, with no broker:
``python -m bench.fillpath [--fills N] [--rounds R] [LABEL=DIR ...]``.

One fill here is what the worker's router and engine do to it in one process: route it
(decode, parse, the log entry: ``_route``), apply it (``apply_parsed``) and encode what it
publishes (``orjson.dumps`` of each output). The fills are the benchmark's own
(``bench.stack.fills``: 1,000 accounts, the two example contracts), after both are listed and
the clock set; the first 10,000 warm up, the rest are timed in CPU seconds of this process
(``time.process_time``: another process on the machine does not count, its cache traffic
does). The garbage collector is set as the worker sets it.

With ``LABEL=DIR`` arguments (checkouts: ``git archive <commit> | tar -x -C DIR``) the
versions run in turn, ``R`` rounds, each in a fresh interpreter with its checkout first on
``PYTHONPATH``; the minimum and the median of each are printed. On a shared VM one run can
be 50 % slower than the next: compare minimums of alternating rounds, never two single runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

WARMUP = 10_000

ONE = """
import gc, sys, time
import orjson
from bench.stack import fills, _listings
from stream.core.state import EngineState
from stream.core.topics import FILLS, LISTINGS, TICKS
from stream.log.ordered_log import _route, apply_parsed
n, warmup, big = int(sys.argv[1]), int(sys.argv[2]), 1 << 20
state = EngineState()
for offset, raw in enumerate(_listings()):
    apply_parsed(state, 0, _route(LISTINGS, 0, offset, orjson.dumps(raw), 1, big, big)[3])
apply_parsed(state, 0, _route(TICKS, 0, 0, orjson.dumps({"ts": "2026-04-03T12:00:00Z"}), 1, big, big)[3])
raws = [orjson.dumps(f) for f in fills(warmup + n, "fp")]
gc.collect(); gc.freeze(); gc.set_threshold(50_000, 10, 10)

def run(lo, hi):
    published = 0
    for offset in range(lo, hi):
        targets, entry, dead, parsed = _route(FILLS, 0, offset, raws[offset], 1, big, big)
        for out in apply_parsed(state, 0, parsed):
            orjson.dumps(out.value)
            published += 1
    return published

run(0, warmup)
t0 = time.process_time()
published = run(warmup, warmup + n)
cpu = time.process_time() - t0
print(f"RESULT {cpu / n * 1e6:.2f} {published}")
"""


def one(directory: Path, fills: int) -> tuple[float, int]:
    """CPU microseconds per fill and records published, in a fresh interpreter on ``directory``."""
    env = {**os.environ, "PYTHONPATH": str(directory)}
    out = subprocess.run([sys.executable, "-c", ONE, str(fills), str(WARMUP)], cwd=directory, env=env,
                         capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            us, published = line.split()[1:]
            return float(us), int(published)
    raise RuntimeError(f"{directory}: no result: {out.stderr.strip().splitlines()[-1:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fillpath", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fills", type=int, default=30_000, help="fills timed per run (after 10,000 to warm up)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("versions", nargs="*", metavar="LABEL=DIR")
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parent.parent
    versions = [(label, Path(d).resolve()) for label, _, d in (v.partition("=") for v in args.versions)] or [("this", here)]
    for label, directory in versions:
        if not (directory / "stream").is_dir() or not (directory / "bench" / "stack.py").is_file():
            print(f"python -m bench.fillpath: {label}={directory}: not a checkout of this project (no stream/ and "
                  "bench/stack.py)", file=sys.stderr)
            return 2
    figures: dict[str, list[float]] = {label: [] for label, _ in versions}
    counts: dict[str, int] = {}
    for r in range(args.rounds):
        for label, directory in versions:
            us, counts[label] = one(directory, args.fills)
            figures[label].append(us)
            print(f"round {r + 1} {label}: {us:.1f} us a fill", flush=True)
    for label, values in figures.items():
        print(f"{label}: min {min(values):.1f} us a fill, median {statistics.median(values):.1f} "
              f"({args.fills:,} fills a run, {counts[label]:,} records published), all {sorted(values)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, subprocess.TimeoutExpired, KeyboardInterrupt) as error:
        print(f"python -m bench.fillpath: {error}", file=sys.stderr)
        sys.exit(1)
