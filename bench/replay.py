"""Offline replay throughput of the audit tool: ``python -m bench.replay [--accounts N] [--repeat R]``.

Builds a synthetic ``margin.log`` in memory with the router's own function
(:func:`stream.log.ordered_log.route_batch`, ``--batch`` input messages per record as one
router fetch, over 4 partitions): 20 listings (copies of the two example contracts), one
tick per round of fills and two flashes, and for each account one deposit and 24 fills
over up to 13 contracts. Then times

* ``recompute``: the replay proper, the records decoded into entries, a fresh EngineState
  per log partition and :func:`stream.log.ordered_log.apply_entry` on every entry (what
  ``kpimargin replay`` runs);
* ``run_replay``: recompute plus the comparison with "published" records (here exactly
  the recomputed ones, serialised as a worker would), i.e. the whole audit after reading.

Figures are log entries per second (wall clock, ``time.perf_counter``, the garbage collector
enabled and tuned as ``kpimargin replay`` tunes it, ``KPIMARGIN_GC_YOUNG_OBJECTS``); the
median over ``--repeat`` runs is reported. Prints a human summary, then one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import orjson

import stream
from stream.audit.export import TopicMessage
from stream.audit.inputs import log_entries
from stream.audit.replay import recompute, run_replay
from stream.core.topics import CALLS, COLLATERAL, FILLS, FLASH, LISTINGS, LOG, REQUIREMENTS, TICKS
from stream.harness.offline import as_records
from stream.log.ordered_log import home_partition, replay, route_batch

EXAMPLES = Path(stream.__file__).resolve().parent / "examples"
PARTITIONS = 4
N_CONTRACTS = 20
FILLS_PER_ACCOUNT = 24


def listings() -> list[dict]:
    """Copies of the TSLA (ES at the cap) and web-traffic (interior ES) listings."""
    templates = [orjson.loads((EXAMPLES / name).read_bytes()) for name in ("tsla_listing.json", "web_listing.json")]
    out = []
    for i in range(N_CONTRACTS):
        listing = dict(templates[i % 2])
        listing["contract_id"] = f"{listing['contract_id']}-R{i:02d}"
        out.append(listing)
    return out


def _fill(account: str, j: int, listing: dict, rng_state: int) -> dict:
    lower, upper = listing["lower"], listing["upper"]
    price = lower + (upper - lower) * (0.3 + 0.4 * ((rng_state % 97) / 97))
    price = round(price, 2) if upper < 1000 else int(price)
    return {"trade_id": f"{account}-T{j}", "account_id": account, "contract_id": listing["contract_id"],
            "side": "BUY" if (rng_state >> 3) % 2 else "SELL", "price": price,
            "notional": 1000 + (rng_state % 50) * 100, "ts": "2026-04-10T12:00:00Z"}


def messages(accounts: int) -> list[tuple[str, dict]]:
    """Input messages in publish order: listings, then rounds of fills with ticks and a few
    flashes between them; deposits come first for every account."""
    contracts = listings()
    msgs: list[tuple[str, dict]] = [(LISTINGS, c) for c in contracts]
    msgs.append((TICKS, {"ts": "2026-04-05T00:00:00Z"}))
    ids = [f"ACC{i:05d}" for i in range(accounts)]
    msgs += [(COLLATERAL, {"movement_id": f"{a}-M", "account_id": a, "amount": "25000.00", "ts": "2026-04-05T01:00:00Z"})
             for a in ids]
    day = _dt.datetime(2026, 4, 6, tzinfo=_dt.timezone.utc)
    seed = 12345
    for j in range(FILLS_PER_ACCOUNT):
        for i, account in enumerate(ids):
            seed = (seed * 1103515245 + 12345) % 2**31
            msgs.append((FILLS, _fill(account, j, contracts[(i + 3 * j) % (N_CONTRACTS // 2 + 3)], seed)))
        day += _dt.timedelta(hours=12)  # a tick after every round: re-margins every holder
        msgs.append((TICKS, {"ts": day.strftime("%Y-%m-%dT%H:%M:%SZ")}))
        if j in (8, 16):
            flash_day = day.strftime("%Y-%m-%dT%H:%M:%SZ")
            msgs.append((FLASH, {"contract_id": contracts[j % 4]["contract_id"], "as_of": flash_day,
                                 "value": contracts[j % 4]["history"][-1], "coverage": 0.2}))
    return msgs


def route_log(msgs: list[tuple[str, dict]], batch: int) -> list[tuple[int, int, bytes]]:
    """``margin.log`` as ``(partition, offset, record)``: the router's records, ``batch``
    input messages per fetch, each source topic one partition."""
    offsets: dict[str, int] = {}
    inputs = []
    for topic, message in msgs:
        offsets[topic] = offsets.get(topic, -1) + 1
        inputs.append((topic, home_partition(topic, message, PARTITIONS), offsets[topic], orjson.dumps(message)))
    log, next_offset = [], [0] * PARTITIONS
    for i in range(0, len(inputs), batch):
        for p, record in route_batch(inputs[i:i + batch], PARTITIONS, 131_072, 524_288)[0]:
            log.append((p, next_offset[p], record))
            next_offset[p] += 1
    return sorted(log)


def published(records) -> dict[str, list[TopicMessage]]:
    """Requirements and calls as a faithful worker would have published them."""
    topics: dict[str, list[TopicMessage]] = {REQUIREMENTS: [], CALLS: []}
    for _p, _o, out in replay(records):
        if out.topic in topics:
            topics[out.topic].append(TopicMessage(0, len(topics[out.topic]), None, out.key.encode(), orjson.dumps(out.value)))
    return topics


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"platform": platform.platform(), "cpu_model": model, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "loadavg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=2000, help="accounts (each: 1 deposit + 24 fills)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500, help="input messages per router fetch (per log record)")
    args = parser.parse_args()

    records = route_log(messages(args.accounts), args.batch)
    topics = {LOG: as_records(records), **published(records)}
    entries = log_entries(topics[LOG])
    kinds: dict[str, int] = {}
    for _p, _o, _i, entry in entries:
        topic = entry["source"]["topic"]
        kinds[topic] = kinds.get(topic, 0) + 1
    n_records = len(topics[REQUIREMENTS]) + len(topics[CALLS])
    # the garbage collector as `kpimargin replay` sets it once the topics are read
    # (KPIMARGIN_GC_YOUNG_OBJECTS=0: CPython's thresholds)
    from stream.settings import Settings
    from stream.worker.lifecycle import tune_gc

    tune_gc(Settings.from_env().gc_young_objects)

    rec_s = [timed(lambda: recompute(log_entries(topics[LOG]))) for _ in range(args.repeat)]
    reports = []
    full_s = [timed(lambda: reports.append(run_replay(topics))) for _ in range(args.repeat)]
    assert all(r.ok and r.compared == n_records for r in reports)

    rec_rate = len(entries) / statistics.median(rec_s)
    full_rate = len(entries) / statistics.median(full_s)
    print(f"synthetic margin.log: {len(entries):,} entries in {len(records):,} records over {PARTITIONS} partitions {kinds}; "
          f"{args.accounts:,} accounts, {N_CONTRACTS} contracts; {n_records:,} requirements+calls")
    print(f"recompute (decode records, apply_entry on every entry): median {statistics.median(rec_s):.2f} s -> {rec_rate:,.0f} entries/s")
    print(f"run_replay (recompute + compare):       median {statistics.median(full_s):.2f} s -> {full_rate:,.0f} entries/s")
    print(json.dumps({
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "entries": len(entries), "log_records": len(records), "batch": args.batch, "entries_by_topic": kinds, "records": n_records, "accounts": args.accounts,
        "recompute_s": rec_s, "run_replay_s": full_s, "recompute_entries_per_s": rec_rate,
        "run_replay_entries_per_s": full_rate, "machine": machine(),
    }))


if __name__ == "__main__":
    main()
