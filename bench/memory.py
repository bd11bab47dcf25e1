"""Resident memory of engine state (run by ``python -m bench`` in a fresh process).

    python -m bench.memory [--accounts 10000]

Builds an :class:`stream.core.state.EngineState` with 10 listed contracts and ``--accounts``
accounts holding one position in each (10 x accounts positions), through
``engine.apply`` of real parsed fills, and prints one JSON line: resident set size
(``/proc/self/status`` VmRSS) before and after, and the growth per 100,000 positions.
The fills are generated and applied one at a time, so the figure is the state itself
(positions, books with their risk columns, accounts with their dedup ids), not the input;
the set of rows changed since the last batch is emptied every 2,000 fills, as the
worker's batch boundary does (``KPIMARGIN_BATCH_MAX``).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import orjson

from stream.core import engine
from stream.core import state as core_state
from stream.core.messages import Cause, parse
from stream.core.topics import FILLS, LISTINGS, TICKS

from .core import FILL_TS, TICK_TS, listing_raws


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def build(accounts: int) -> tuple[core_state.EngineState, int]:
    state = core_state.EngineState()
    raws = listing_raws()
    offset = 0

    def apply(topic: str, raw: dict, event_id: str) -> None:
        nonlocal offset
        offset += 1
        engine.apply(state, parse(topic, raw), Cause(topic, 0, offset, event_id), raw)

    for raw in raws:
        apply(LISTINGS, raw, raw["contract_id"])
    apply(TICKS, {"ts": TICK_TS}, TICK_TS)
    positions = 0
    for a in range(accounts):
        for i, raw in enumerate(raws):
            mid = (raw["lower"] + raw["upper"]) / 2
            fill = {"trade_id": f"M{a}-{i}", "account_id": f"ACC{a:07d}", "contract_id": raw["contract_id"],
                    "side": "BUY" if (a + i) % 2 else "SELL", "price": mid, "notional": 1_000 + a % 997, "ts": FILL_TS}
            apply(FILLS, fill, fill["trade_id"])
            positions += 1
            if positions % 2000 == 0:  # a batch boundary: the worker takes (and clears) the rows it changed
                state.touched.clear()
    return state, positions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    args = parser.parse_args(argv)
    gc.collect()
    before = rss_mb()
    state, positions = build(args.accounts)
    gc.collect()
    after = rss_mb()
    assert sum(len(a.positions) for a in state.accounts.values()) == positions
    print(orjson.dumps({"positions": positions, "accounts": args.accounts, "rss_mb_before": round(before, 1),
                        "rss_mb_after": round(after, 1),
                        "rss_mb_per_100k_positions": round((after - before) * 100_000 / positions, 1)}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
