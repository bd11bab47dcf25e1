"""Same-run A/B of processor throughput between code versions:
``python -m bench.ab [--broker embedded|kafka] [--fills N] [--rounds R] LABEL=DIR[:k=v,...] ...``.

Each ``DIR`` is a checkout of some commit (``git archive <commit> | tar -x -C DIR``);
``k=v`` are settings overrides (e.g. ``http_port=18555`` to run with the HTTP API on). The
versions run in turn, ``R`` rounds, each round in a fresh process with that checkout first
on ``PYTHONPATH``: its own broker (embedded Tansu, or with ``--broker kafka`` a one-node
Apache Kafka started for the round), one worker, a backlog of ``N`` fills drained
(``bench.stack.processor`` of that checkout, the figure ``python -m bench`` calls (c)).
Alternating the versions spreads the machine's drift over all of them; the median of each
is printed, with every figure. Throughput differences below the spread of one version's
own figures are noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ONE = """
import asyncio, sys, tempfile, time
from pathlib import Path
from bench.__main__ import start_broker
from bench import stack
n, engine = int(sys.argv[1]), sys.argv[2]
overrides = {k: int(v) if v.isdigit() else v for k, v in (a.split("=", 1) for a in sys.argv[3:])}
broker, _ = start_broker(engine)
try:
    settings = stack.bench_settings(broker.bootstrap, f"ab{int(time.time() * 1000)}", **overrides)
    r = asyncio.run(stack.processor(settings, n, 1000.0, 3, workers=1, log_dir=Path(tempfile.mkdtemp()),
                                    measure_latency=False))
    print(f"RESULT {r['eps']:.0f}")
finally:
    broker.stop()
"""


def one(directory: Path, fills: int, overrides: list[str], engine: str = "embedded") -> int:
    env = {**os.environ, "PYTHONPATH": str(directory)}
    out = subprocess.run([sys.executable, "-c", ONE, str(fills), engine, *overrides], cwd=directory, env=env,
                         capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return int(line.split()[1])
    raise RuntimeError(f"{directory}: no result\n{out.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--fills", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("versions", nargs="+", metavar="LABEL=DIR[:k=v,...]")
    args = parser.parse_args(argv)
    versions = []
    for spec in args.versions:
        label, _, rest = spec.partition("=")
        directory, _, extra = rest.partition(":")
        versions.append((label, Path(directory).resolve(), [kv for kv in extra.split(",") if kv]))
    figures: dict[str, list[int]] = {label: [] for label, _, _ in versions}
    for r in range(args.rounds):
        for label, directory, overrides in versions:
            figures[label].append(one(directory, args.fills, overrides, args.broker))
            print(f"round {r + 1} {label}: {figures[label][-1]:,} fills/s", flush=True)
    base = statistics.median(figures[versions[0][0]])
    for label, values in figures.items():
        median = statistics.median(values)
        print(f"{label}: median {median:,.0f} fills/s ({median / base - 1:+.1%} against {versions[0][0]}), "
              f"min {min(values):,}, max {max(values):,}, all {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
