"""Core benchmark of the pure margin engine (SPEC §2): ``python -m bench.core [--quick]``.

Measures, in one run, with ``time.perf_counter`` (figures in microseconds, median and p99):

a. per-fill re-margin: ``engine.apply(state, fill, cause)`` on an EngineState with 10 listed
   contracts and one account holding one position in each; every fill is new (distinct
   trade_id, increasing cause offset), so each one re-margins the account and builds its
   requirement (and call) records. Also shown: parse + apply, a flash through apply, and
   ``requirements.account_risk`` with the per-position risk caches warm and dropped.
b. the bare O(1) position IM ``model.position_risk(q, a, rv, tau, conv_f)``.
c. contract re-estimation ``model.risk_vector(...)`` for a flash (new anchor), es_method
   "mc" (steady state: sorted draws cached) and "analytic", and "mc" cold (after
   ``distribution.sorted_standard_t.cache_clear()``: draw and sort M Student-t variates).
d. the naive per-fill Monte Carlo re-margin: ``model.direct_es`` for each of the account's
   10 positions (sample M = 12,000 outcomes, sort the losses, mean of the worst m), plus a
   kinder variant drawing once per fill and sharing the draws across the 10 positions.
e. vectorised fan-out: ``model.positions_risk`` on arrays of 100,000 positions.
f. MC sampling error of ES at M = 12,000 / 48,000 / 192,000 vs the analytic tail integral,
   for the interior-ES contract stream/examples/web_listing.json (BUY/SELL 50000 at 124).

Operations much shorter than the timer resolution (b) are timed in batches; their median
and p99 are over per-batch means. GC stays enabled (it is part of real per-fill cost).
Prints a human table, then, as the last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

import stream
from stream.core import distribution, engine, model, requirements
from stream.core import state as core_state
from stream.core.messages import Cause, parse
from stream.core.topics import FILLS, FLASH, LISTINGS, TICKS

EXAMPLES = Path(stream.__file__).resolve().parent / "examples"
N_CONTRACTS = 10
ACCOUNT = "BENCH-ACCT"
FILL_TS = "2026-04-21T09:30:00Z"  # inside both templates' listing..settlement windows
TICK_TS = "2026-04-25T00:00:00Z"
FAN_OUT = 100_000


# --------------------------------------------------------------------------- timing
def _pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize(seconds: list[float], unit_scale: float = 1e6) -> dict:
    values = sorted(s * unit_scale for s in seconds)
    return {
        "median_us": statistics.median(values),
        "p99_us": _pct(values, 99.0),
        "mean_us": statistics.fmean(values),
        "min_us": values[0],
        "n": len(values),
    }


def time_each(fn: Callable[[int], object], n: int, warmup: int = 0) -> list[float]:
    """Time ``fn(i)`` call by call; ``fn`` gets the call's index (warm-up calls first)."""
    for i in range(warmup):
        fn(i)
    out = []
    clock = time.perf_counter
    for i in range(warmup, warmup + n):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return out


def time_batches(fn: Callable[[], object], batches: int, per_batch: int, warmup_batches: int = 5) -> list[float]:
    """Per-call seconds, one figure per batch of ``per_batch`` calls (for sub-µs ops)."""
    clock = time.perf_counter
    out = []
    for b in range(warmup_batches + batches):
        t0 = clock()
        for _ in range(per_batch):
            fn()
        dt = (clock() - t0) / per_batch
        if b >= warmup_batches:
            out.append(dt)
    return out


# --------------------------------------------------------------------------- machine
def machine() -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import scipy

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu or platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
    }


def code_version() -> dict:
    """Which code was measured: git HEAD, uncommitted changes under stream/, and a digest
    of the core modules (others edit stream/ concurrently)."""
    import hashlib
    import subprocess

    root = Path(stream.__file__).resolve().parent.parent
    info: dict = {}
    try:
        info["git_head"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "stream"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.split("\n")
        info["stream_uncommitted"] = [line.strip() for line in dirty if line.strip()]
    except (OSError, subprocess.SubprocessError):
        info["git_head"] = None
    digest = hashlib.sha256()
    for path in sorted((root / "stream" / "core").glob("*.py")):  # the pure core, every module
        digest.update(path.read_bytes())
    info["core_sha256_12"] = digest.hexdigest()[:12]
    return info


def _cpu_times() -> list[int] | None:
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None


def cpu_share(before: list[int] | None, after: list[int] | None) -> dict | None:
    """Machine-wide busy and steal percentages between two /proc/stat samples; this
    process keeps about one vCPU busy, so busy well above 100/ncpu % means contention."""
    if not before or not after:
        return None
    d = [b - a for a, b in zip(before, after)]
    total = sum(d[:8]) or 1
    idle = d[3] + d[4]
    return {"busy_pct": round(100.0 * (total - idle) / total, 1), "steal_pct": round(100.0 * d[7] / total, 2)}


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages: other processes on the machine skew the timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- fixtures
def _load(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def listing_raws() -> list[dict]:
    """10 listings: even i from the interior-ES web template, odd i from the TSLA one."""
    templates = [_load("web_listing.json"), _load("tsla_listing.json")]
    raws = []
    for i in range(N_CONTRACTS):
        raw = json.loads(json.dumps(templates[i % 2]))
        raw["contract_id"] = f"{raw['contract_id']}-B{i:02d}"
        raws.append(raw)
    return raws


def _mid(raw: dict) -> float:
    return (raw["lower"] + raw["upper"]) / 2.0


class Fixture:
    """An EngineState with 10 contracts, a clock tick and one account with 10 positions."""

    def __init__(self) -> None:
        self.state = core_state.EngineState()
        self.raws = listing_raws()
        self.offsets = {LISTINGS: 0, TICKS: 0, FILLS: 0, FLASH: 0}
        for raw in self.raws:
            self.apply(LISTINGS, raw, raw["contract_id"])
        self.apply(TICKS, {"ts": TICK_TS}, TICK_TS)
        self.trade_no = 0
        for raw in self.raws:  # the account's 10 opening positions
            self.apply(FILLS, self.fill_raw(raw, "BUY", 10_000, _mid(raw)), None)
        self.account = self.state.accounts[ACCOUNT]
        assert len(self.account.positions) == N_CONTRACTS

    def cause(self, topic: str, event_id: str) -> Cause:
        self.offsets[topic] += 1
        return Cause(topic, 0, self.offsets[topic], event_id)

    def apply(self, topic: str, raw: dict, event_id: str | None):
        event = parse(topic, raw)
        cause = self.cause(topic, event_id or raw.get("trade_id", ""))
        return engine.apply(self.state, event, cause, raw)[1]

    def fill_raw(self, listing_raw: dict, side: str, notional: float, price: float) -> dict:
        self.trade_no += 1
        return {
            "trade_id": f"BT-{self.trade_no:08d}",
            "account_id": ACCOUNT,
            "contract_id": listing_raw["contract_id"],
            "side": side,
            "price": price,
            "notional": notional,
            "ts": FILL_TS,
        }

    def fill_stream(self, n: int) -> list[dict]:
        """n new fills cycling over the 10 contracts; BUY then SELL rounds keep positions
        bounded, and the price moves a little so each fill changes the account's IM."""
        raws = []
        for j in range(n):
            lr = self.raws[j % N_CONTRACTS]
            side = "BUY" if (j // N_CONTRACTS) % 2 == 0 else "SELL"
            width = lr["upper"] - lr["lower"]
            price = round(_mid(lr) + width * 0.01 * ((j % 7) - 3), 2)
            raws.append(self.fill_raw(lr, side, 1_000 + (j % 5) * 100, price))
        return raws

    def positions(self) -> list[tuple[core_state.ContractState, float, float]]:
        out = []
        for cid, row in self.account.positions.items():
            contract = self.state.contracts[cid]
            out.append((contract, *contract.book.floats(row)))
        return out


# --------------------------------------------------------------------------- benchmarks
def prepare_fill(fx: Fixture, total: int) -> tuple[Callable[[int], None], list[int]]:
    """``one(_)`` applies the next of ``total`` pre-parsed new fills (parsing not timed);
    the list counts the records published."""
    raws = fx.fill_stream(total)
    events = [parse(FILLS, r) for r in raws]
    causes = [fx.cause(FILLS, r["trade_id"]) for r in raws]
    state = fx.state
    published = [0]
    nxt = iter(range(total))

    def one(_: int) -> None:
        i = next(nxt)
        _, outputs = engine.apply(state, events[i], causes[i])
        published[0] += len(outputs)

    return one, published


def bench_parse_fill(fx: Fixture, n: int, warmup: int) -> list[float]:
    raws = fx.fill_stream(warmup + n)
    causes = [fx.cause(FILLS, r["trade_id"]) for r in raws]
    state = fx.state

    def one(i: int) -> None:
        engine.apply(state, parse(FILLS, raws[i]), causes[i])

    gc.collect()
    return time_each(one, n, warmup)


def bench_flash_apply(fx: Fixture, n: int, warmup: int) -> list[float]:
    """A flash on one of the account's contracts through engine.apply (re-estimate the
    contract, refresh its book, re-margin and publish for the holder)."""
    raws = []
    base = _dt.datetime(2026, 4, 25, 12, tzinfo=_dt.timezone.utc)
    for j in range(warmup + n):
        lr = fx.raws[0]  # a web (interior-ES) contract
        as_of = (base + _dt.timedelta(seconds=j)).strftime("%Y-%m-%dT%H:%M:%SZ")
        raws.append({"contract_id": lr["contract_id"], "as_of": as_of, "value": 124.0 + 0.01 * (j % 50), "coverage": 0.5})
    events = [parse(FLASH, r) for r in raws]
    causes = [fx.cause(FLASH, r["contract_id"]) for r in raws]
    state = fx.state

    def one(i: int) -> None:
        engine.apply(state, events[i], causes[i], raws[i])

    gc.collect()
    return time_each(one, n, warmup)


def bench_account_risk(fx: Fixture, batches: int, per_batch: int) -> list[float]:
    """``requirements.account_risk`` with every position's book row current (as for the
    9 positions a fill does not touch): sum 10 IMs, build 10 dicts for the record."""
    state, account = fx.state, fx.account
    fn = requirements.account_risk
    gc.collect()
    return time_batches(lambda: fn(state, account), batches, per_batch)


def bench_account_risk_cold(fx: Fixture, n: int, warmup: int) -> list[float]:
    """``requirements.account_risk`` with all 10 positions' book rows made stale first
    (untimed): 10 O(1) position IMs and dicts -- what a tick's first record costs per account."""
    state, account = fx.state, fx.account
    books = [state.contracts[cid].book for cid in account.positions]
    fn = requirements.account_risk
    clock = time.perf_counter
    out = []
    gc.collect()
    for i in range(warmup + n):
        for book in books:
            book.versions[:] = [-1] * book.n
        t0 = clock()
        fn(state, account)
        dt = clock() - t0
        if i >= warmup:
            out.append(dt)
    return out


def bench_position_risk(fx: Fixture, batches: int, per_batch: int) -> list[float]:
    contract, q, a = fx.positions()[0]
    rv, tau, conv_f = contract.rv, contract.tau, contract.conv_f
    fn = model.position_risk
    gc.collect()
    return time_batches(lambda: fn(q, a, rv, tau, conv_f), batches, per_batch)


def _web_contract(fx: Fixture) -> core_state.ContractState:
    return fx.state.contracts[fx.raws[0]["contract_id"]]


def bench_risk_vector(fx: Fixture, es_method: str, n: int, warmup: int, cold: bool = False) -> list[float]:
    contract = _web_contract(fx)
    lst = contract.listing
    params = dataclasses.replace(lst.params, es_method=es_method)
    est = contract.estimate
    values = [120.0 + 0.01 * (j % 800) for j in range(warmup + n)]

    def one(i: int) -> None:
        if cold:
            distribution.sorted_standard_t.cache_clear()
        model.risk_vector(lst.lower, lst.upper, lst.history, params, values[i], 0.5, est=est)

    gc.collect()
    out = time_each(one, n, warmup)
    model.risk_vector(lst.lower, lst.upper, lst.history, params, 124.0, 0.5, est=est)  # re-warm the cache
    return out


def prepare_naive(fx: Fixture) -> tuple[Callable[[int], None], float]:
    """``one(_)``: model.direct_es for each of the account's 10 positions (one fill's
    naive re-margin); also the max relative difference naive vs O(1) ES."""
    items = []
    for contract, q, a in fx.positions():
        rv = contract.rv
        items.append((q, a, rv.anchor, rv.loc, rv.t_scale, rv.lower, rv.upper, contract.listing.params))
    direct = model.direct_es

    def one(_: int) -> None:
        for q, a, anchor, loc, ts, lo, hi, params in items:
            direct(q, a, anchor, loc, ts, lo, hi, params)

    # sanity: the naive ES equals the O(1) path's ES (same draws), up to float rounding
    max_rel = 0.0
    for (contract, q, a), it in zip(fx.positions(), items):
        fast = model.position_risk(q, a, contract.rv, contract.tau, contract.conv_f).es
        slow = direct(*it)
        max_rel = max(max_rel, abs(fast - slow) / max(abs(slow), 1e-12))
    return one, max_rel


def bench_fill_vs_naive(fx: Fixture, n_fill: int, n_naive: int, rounds: int) -> dict:
    """(a) and (d), interleaved in ``rounds`` blocks so that both see the same machine
    conditions (the ratio is what matters); one warm-up block of each first."""
    warm_fill, warm_naive = max(50, n_fill // 20), max(5, n_naive // 20)
    fill_one, published = prepare_fill(fx, warm_fill + n_fill)
    naive_one, max_rel = prepare_naive(fx)
    time_each(fill_one, warm_fill)
    time_each(naive_one, warm_naive)
    fill_s: list[float] = []
    naive_s: list[float] = []
    per_round = []
    for r in range(rounds):
        gc.collect()
        f = time_each(fill_one, n_fill // rounds)
        gc.collect()
        d = time_each(naive_one, n_naive // rounds)
        fill_s += f
        naive_s += d
        fm, dm = statistics.median(f) * 1e6, statistics.median(d) * 1e6
        per_round.append({"fill_median_us": fm, "naive_median_us": dm, "ratio": dm / fm})
    applied = warm_fill + rounds * (n_fill // rounds)
    assert published[0] >= applied, f"only {published[0]} records for {applied} fills: something was deduplicated"
    return {
        "fill": fill_s, "naive": naive_s, "rounds": per_round,
        "records_published": published[0], "fills": applied, "max_rel": max_rel,
    }


def bench_naive_shared(fx: Fixture, n: int, warmup: int) -> list[float]:
    """Kinder naive: draw M variates once per fill, share them across the 10 positions;
    per position clip the outcomes, compute the M losses, partition out the worst m."""
    items = []
    for contract, q, a in fx.positions():
        rv = contract.rv
        p = contract.listing.params
        items.append((q, a, rv.anchor, rv.loc, rv.t_scale, rv.lower, rv.upper, p.tail_count()))
    p0 = fx.positions()[0][0].listing.params

    def one(_: int) -> None:
        draws = np.random.default_rng(p0.mc_seed).standard_t(p0.nu, p0.mc_samples)
        for q, a, anchor, loc, ts, lo, hi, m in items:
            outcomes = np.clip(anchor * (1.0 + loc + ts * draws), lo, hi)
            losses = (a - q * outcomes) / (hi - lo)
            float(np.partition(losses, losses.size - m)[-m:].mean())

    gc.collect()
    return time_each(one, n, warmup)


def bench_fan_out(fx: Fixture, reps: int) -> list[float]:
    contract = _web_contract(fx)
    rv, conv_f = contract.rv, contract.conv_f
    rng = np.random.default_rng(7)
    q = rng.choice([-1.0, 1.0], FAN_OUT) * rng.uniform(1_000, 100_000, FAN_OUT).round()
    price = rng.uniform(rv.lower, rv.upper, FAN_OUT)
    a = q * price
    fn = model.positions_risk
    gc.collect()
    return time_each(lambda _: fn(q, a, rv, conv_f), reps, warmup=5)


# --------------------------------------------------------------------------- MC error
def mc_error(seeds: int) -> dict:
    """ES of BUY / SELL 50000 at 124 on the web listing: mc (seed 42, and RMS over seeds
    0..seeds-1) vs analytic, at M = 12k, 48k, 192k."""
    raw = _load("web_listing.json")
    ev = parse(LISTINGS, raw)
    base = ev.params
    est = model.estimate(ev.history, base)
    notional, price = 50_000.0, 124.0
    books = {"long": (notional, notional * price), "short": (-notional, -notional * price)}

    def es_of(params: model.Params) -> dict:
        rv = model.risk_vector(ev.lower, ev.upper, ev.history, params, est=est)
        out = {}
        for name, (q, a) in books.items():
            pr = model.position_risk(q, a, rv, 1.0, 0.0)
            out[name] = {
                "es": pr.es, "max_loss": pr.max_loss, "stress": pr.stress, "im_tau1": pr.im,
                "tail": rv.tail_low if q > 0 else rv.tail_high,
            }
        return out

    analytic = es_of(dataclasses.replace(base, es_method="analytic"))
    rows = []
    for m in (12_000, 48_000, 192_000):
        p = dataclasses.replace(base, es_method="mc", mc_samples=m)
        at42 = es_of(p)
        rel_by_seed = {"long": [], "short": []}
        for seed in range(seeds):
            r = es_of(dataclasses.replace(p, mc_seed=seed))
            for name in books:
                rel_by_seed[name].append(r[name]["es"] / analytic[name]["es"] - 1.0)
        row = {"M": m, "tail_count": p.tail_count()}
        for name in books:
            rels = rel_by_seed[name]
            row[name] = {
                "es_mc_seed42": at42[name]["es"],
                "im_tau1_mc_seed42": at42[name]["im_tau1"],
                "rel_err_seed42": at42[name]["es"] / analytic[name]["es"] - 1.0,
                "rms_rel_err": math.sqrt(statistics.fmean(x * x for x in rels)),
                "mean_rel_err": statistics.fmean(rels),
                "seeds": seeds,
            }
        rows.append(row)
    distribution.sorted_standard_t.cache_clear()
    return {
        "contract": ev.contract_id,
        "position": "BUY/SELL 50000 at 124, no flash, tau 1",
        "analytic": {name: analytic[name] for name in books},
        "rows": rows,
    }


# --------------------------------------------------------------------------- main
def run(quick: bool) -> dict:
    s = 0.1 if quick else 1.0
    n = lambda full: max(20, int(full * s))  # noqa: E731
    fx = Fixture()
    results: dict = {"quick": quick, "machine": machine(), "code": code_version(), "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    t_start = time.perf_counter()
    load_start, cpu_start = _loadavg(), _cpu_times()

    fill = bench_fill_vs_naive(fx, n(20_000), n(500), rounds=5)
    ops = {}
    ops["a_fill_apply"] = summarize(fill["fill"])
    ops["a_fill_parse_apply"] = summarize(bench_parse_fill(fx, n(10_000), warmup=n(500)))
    ops["a_account_risk"] = summarize(bench_account_risk(fx, n(2_000), per_batch=10))
    ops["a_account_risk_cold"] = summarize(bench_account_risk_cold(fx, n(5_000), warmup=n(200)))
    ops["b_position_risk"] = summarize(bench_position_risk(fx, n(5_000), per_batch=200))
    ops["c_risk_vector_mc"] = summarize(bench_risk_vector(fx, "mc", n(5_000), warmup=n(200)))
    ops["c_risk_vector_analytic"] = summarize(bench_risk_vector(fx, "analytic", n(2_000), warmup=n(100)))
    ops["c_risk_vector_mc_cold"] = summarize(bench_risk_vector(fx, "mc", n(500), warmup=n(20), cold=True))
    ops["c_flash_apply_mc"] = summarize(bench_flash_apply(fx, n(3_000), warmup=n(100)))
    ops["d_naive_direct_es_x10"] = summarize(fill["naive"])
    ops["d_naive_shared_draws_x10"] = summarize(bench_naive_shared(fx, n(500), warmup=n(20)))
    fan = summarize(bench_fan_out(fx, n(300)))
    ops["e_positions_risk_100k"] = fan
    results["ops"] = ops
    results["fill_records_published"] = fill["records_published"]
    results["fills_applied"] = fill["fills"]
    results["naive_vs_fast_es_max_rel_diff"] = fill["max_rel"]
    results["fill_vs_naive_rounds"] = fill["rounds"]
    a_med = ops["a_fill_apply"]["median_us"]
    results["speedup_naive_over_fill_median"] = ops["d_naive_direct_es_x10"]["median_us"] / a_med
    results["speedup_naive_over_fill_p99"] = ops["d_naive_direct_es_x10"]["p99_us"] / ops["a_fill_apply"]["p99_us"]
    results["speedup_naive_shared_over_fill_median"] = ops["d_naive_shared_draws_x10"]["median_us"] / a_med
    results["fan_out_positions_per_s_median"] = FAN_OUT / (fan["median_us"] * 1e-6)
    results["fan_out_positions_per_s_p99"] = FAN_OUT / (fan["p99_us"] * 1e-6)
    results["fan_out_ns_per_position_median"] = fan["median_us"] * 1e3 / FAN_OUT
    results["fills_per_s_median"] = 1e6 / a_med
    results["timing_seconds"] = time.perf_counter() - t_start
    results["loadavg_start"], results["loadavg_end"] = load_start, _loadavg()
    results["cpu_during_timing"] = cpu_share(cpu_start, _cpu_times())
    results["mc_error"] = mc_error(seeds=10 if quick else 100)
    return results


LABELS = {
    "a_fill_apply": "(a) per-fill re-margin: engine.apply(fill), 10 positions, records built",
    "a_fill_parse_apply": "(a') parse(fill) + engine.apply(fill)",
    "a_account_risk": "(a'') requirements.account_risk, 10 cached positions (batch means)",
    "a_account_risk_cold": "(a''') requirements.account_risk, caches dropped: 10 position IMs + dicts",
    "b_position_risk": "(b) model.position_risk (O(1) position IM; batch means)",
    "c_risk_vector_mc": "(c) risk_vector flash, es_method=mc, draws cached",
    "c_risk_vector_analytic": "(c) risk_vector flash, es_method=analytic",
    "c_risk_vector_mc_cold": "(c) risk_vector flash, mc, after sorted_standard_t.cache_clear()",
    "c_flash_apply_mc": "(c') engine.apply(flash, mc): re-estimate + refresh + publish",
    "d_naive_direct_es_x10": "(d) naive: model.direct_es x 10 positions, M=12000",
    "d_naive_shared_draws_x10": "(d') naive, draws shared across the 10 positions",
    "e_positions_risk_100k": "(e) model.positions_risk on 100,000 positions",
}


def report(r: dict) -> None:
    m = r["machine"]
    print(f"kpimargin core benchmark  {r['date_utc']}  {'QUICK' if r['quick'] else 'full'}")
    print(f"machine: {m['platform']} | CPU: {m['cpu_model']} x{m['cpu_count']} | "
          f"python {m['python']} | numpy {m['numpy']} | scipy {m['scipy']}")
    print(f"env: OPENBLAS_CORETYPE={m['OPENBLAS_CORETYPE']} OPENBLAS_L2_SIZE={m['OPENBLAS_L2_SIZE']}")
    c = r["code"]
    print(f"code: git {c.get('git_head')} + uncommitted {c.get('stream_uncommitted')} | core sha256 {c['core_sha256_12']}")
    print(f"load average at start {r['loadavg_start']}, at end {r['loadavg_end']}; "
          f"CPU during timing {r['cpu_during_timing']}; timed part {r['timing_seconds']:.1f} s")
    print()
    print(f"{'operation':<72} {'median µs':>11} {'p99 µs':>11} {'n':>7}")
    print("-" * 104)
    for key, label in LABELS.items():
        o = r["ops"][key]
        print(f"{label:<72} {o['median_us']:>11.2f} {o['p99_us']:>11.2f} {o['n']:>7}")
    print("-" * 104)
    print(f"per-fill throughput (median): {r['fills_per_s_median']:,.0f} fills/s "
          f"({r['fills_applied']} fills applied, {r['fill_records_published']} records published)")
    print(f"speed-up naive (d) / per-fill (a): {r['speedup_naive_over_fill_median']:,.0f}x at the median, "
          f"{r['speedup_naive_over_fill_p99']:,.0f}x at p99; vs (d'): {r['speedup_naive_shared_over_fill_median']:,.0f}x")
    rounds = r["fill_vs_naive_rounds"]
    print("  per interleaved round (a | d | ratio): " + "; ".join(
        f"{x['fill_median_us']:.0f} | {x['naive_median_us']:.0f} | {x['ratio']:.0f}x" for x in rounds))
    print(f"naive vs O(1) ES, max relative difference: {r['naive_vs_fast_es_max_rel_diff']:.2e}")
    print(f"fan-out: {r['fan_out_positions_per_s_median']:,.0f} positions/s at the median "
          f"({r['fan_out_ns_per_position_median']:.1f} ns/position), {r['fan_out_positions_per_s_p99']:,.0f} at p99")
    e = r["mc_error"]
    print()
    print(f"MC sampling error of ES: {e['contract']}, {e['position']}")
    print(f"  analytic ES: long {e['analytic']['long']['es']:.4f} (max_loss {e['analytic']['long']['max_loss']:.2f}), "
          f"short {e['analytic']['short']['es']:.4f} (max_loss {e['analytic']['short']['max_loss']:.2f})")
    print(f"  {'M':>8} {'long ES(42)':>12} {'rel err(42)':>12} {'RMS rel':>10} {'short ES(42)':>13} {'rel err(42)':>12} {'RMS rel':>10}")
    for row in e["rows"]:
        lo, sh = row["long"], row["short"]
        print(f"  {row['M']:>8} {lo['es_mc_seed42']:>12.4f} {lo['rel_err_seed42']:>+12.4%} {lo['rms_rel_err']:>10.4%} "
              f"{sh['es_mc_seed42']:>13.4f} {sh['rel_err_seed42']:>+12.4%} {sh['rms_rel_err']:>10.4%}")
    print(f"  (RMS over seeds 0..{e['rows'][0]['long']['seeds'] - 1}). IM at tau 1: analytic long "
          f"{e['analytic']['long']['im_tau1']:.2f} / short {e['analytic']['short']['im_tau1']:.2f}; mc seed 42 "
          + ", ".join(f"M={row['M']}: {row['long']['im_tau1_mc_seed42']:.2f}/{row['short']['im_tau1_mc_seed42']:.2f}" for row in e["rows"]))
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few-second smoke run (fewer repetitions)")
    args = ap.parse_args(argv)
    results = run(args.quick)
    report(results)
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
