"""Speed of ``kpimargin backtest``: ``python -m bench.backtest [--series N] [--length L] [--repeat R]``.

Writes a synthetic panel with the shipped generator (``student_t``, seed 1; 1,000 series of
20 levels by default: 17,000 origins, 34,000 forecast rows), then times

* ``command``: the whole ``kpimargin backtest PANEL --out DIR`` as a child process (Python
  start-up and imports included, 1,000 simulated panels for the ES test, every plot and
  file written) -- what a user waits for; median over ``--repeat`` runs;
* ``phases``: one in-process run split into reading the panel, the forecasts (the model's
  own functions, per origin), the statistics (with the ES simulations), the plots and
  writing the files.

Prints a human summary, then one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except Exception:
        return "unknown"


def phases(panel: Path, out: Path) -> dict:
    from stream.backtest import forecast, plots, report
    from stream.backtest.panel import read_panel
    from stream.backtest.summary import summarize

    t = {}
    start = time.perf_counter()
    p = read_panel(panel, {})
    t["read_panel_s"] = time.perf_counter() - start
    start = time.perf_counter()
    fc = forecast.run(p, seed=0)
    t["forecast_s"] = time.perf_counter() - start
    start = time.perf_counter()
    result = summarize(fc, sims=1000, seed=0)
    t["statistics_s"] = time.perf_counter() - start
    start = time.perf_counter()
    plots.all_plots(fc, out)
    t["plots_s"] = time.perf_counter() - start
    start = time.perf_counter()
    report.write_forecasts_csv(fc, out / "forecasts.csv")
    report.write_json(result, out / "summary.json")
    t["write_s"] = time.perf_counter() - start
    t["origins"] = fc.origins
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.backtest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        panel = Path(tmp) / "panel.jsonl"
        subprocess.run([sys.executable, "-m", "stream", "backtest", "--generate", "student_t", "--series",
                        str(args.series), "--length", str(args.length), "--seed", "1", "--out", str(panel)],
                       check=True, capture_output=True)
        runs = []
        for i in range(args.repeat):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "stream", "backtest", str(panel), "--out", f"{tmp}/out{i}"],
                                  capture_output=True, text=True)
            runs.append(time.perf_counter() - start)
            if proc.returncode not in (0, 1):
                print(proc.stderr, file=sys.stderr)
                return 2
        split = phases(panel, Path(tmp) / "phases")
    result = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_head": _git_head(),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg": list(os.getloadavg())},
        "series": args.series, "length": args.length, "origins": split["origins"],
        "command_median_s": statistics.median(runs), "command_runs_s": runs,
        "phases_s": {k: v for k, v in split.items() if k.endswith("_s")},
    }
    print(f"kpimargin backtest, {args.series:,} series x {args.length} levels ({split['origins']:,} origins): "
          f"median {result['command_median_s']:.1f} s over {len(runs)} runs "
          f"({', '.join(f'{r:.1f}' for r in runs)} s)")
    print("  one in-process run: " + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in result["phases_s"].items()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
