"""One benchmark command: ``python -m bench [--broker embedded|kafka] [--quick] [--no-write]``.

Measures, in one run, on the embedded Tansu broker (the default), on a one-node Apache Kafka
it starts itself (``--broker kafka``: :class:`stream.kafka.apache.KafkaCluster`, jars from
Maven Central, cached), or on ``KAFKA_BOOTSTRAP_SERVERS`` when that is set:

* ``passthrough_eps``: raw aiokafka consume-and-produce, one output per input, no logic --
  the limit of this stack;
* ``faust_floor_eps``: a bare faust agent doing one table write per event -- the framework
  floor;
* ``processor_eps``: the real worker, fills published to requirements published (a backlog
  drained by one worker process);
* ``p50_ms``/``p99_ms``: fill-to-requirement latency at a fixed offered 1,000 fills/s,
  timed at an outside consumer, once the broker has carried the throughput runs (with the
  cores each process used and waited for meanwhile, bench/contention.py);
* ``hop_p50_ms``/``hop_p99_ms``: one broker hop (produce -> fetch, no logic) at the same
  rate for the same time, just before -- the latency floor of the stack (a fill reaches
  its requirement through at least two hops);
* ``p99_first_ms``/``hop_p99_first_ms``: the same two on the broker's first minute, before
  the throughput runs (a JVM broker still compiles then);

and in-process:

* ``fanout_positions_per_s``: positions re-margined per second when one tick reaches
  100,000 positions (10,000 accounts x 10 contracts) -- the vectorised re-margin of every
  book and the account totals; ``tick_apply_100k_ms`` is the whole ``engine.apply(tick)``
  including the requirement records of every account that moved;
* ``whatif_ms``: :func:`stream.core.whatif.whatif` for one account with 10 positions (10
  listings, a tick, 10 fills: the what-if command without file reading);
* ``reestimate_mc_ms``/``reestimate_analytic_ms``: a contract's re-estimation on a flash;
* ``rss_mb_per_100k_positions``: resident memory of engine state (bench/memory.py, in a fresh
  process).

The full run adds the processor with 2 worker processes (scale-out) and writes
``bench/RESULTS.md``: each broker's table between its own generated-section markers, and a
side-by-side table of the two brokers' last full runs. ``--quick`` finishes in
about a minute. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import gc
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from . import contention, stack
from .core import Fixture, bench_risk_vector, code_version, machine, summarize

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
BROKERS = ("embedded", "kafka")


def markers(broker: str) -> tuple[str, str]:
    """The generated-section markers of one broker's table (the embedded one keeps the
    markers it had before there were two)."""
    name = "python -m bench" if broker == "embedded" else f"python -m bench --broker {broker}"
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


SIDE_BY_SIDE = ("<!-- python -m bench, both brokers: begin -->", "<!-- python -m bench, both brokers: end -->")


# --------------------------------------------------------------------------- in-process
def fanout(accounts: int) -> dict:
    """One tick over ``accounts`` x 10 positions: the re-margin alone, and the whole apply."""
    from stream.core import engine
    from stream.core import state as core_state
    from stream.core.messages import Cause, parse
    from stream.core.topics import TICKS

    from .memory import build

    state, positions = build(accounts)
    contracts = list(state.contracts.values())
    remargin = []
    for day in range(26, 30):  # a new clock value each time: every book is recomputed
        state.now_us = parse(TICKS, {"ts": f"2026-04-{day:02d}T00:00:00Z"}).ts_us
        gc.collect()
        t0 = time.perf_counter()
        for contract in contracts:
            core_state.set_time(state, contract)
            core_state.refresh_book(state, contract)
        totals = np.zeros(len(state.accounts))
        for contract in contracts:
            book = contract.book
            totals[book.account_idx[: book.n]] += book.im[: book.n]
        remargin.append(time.perf_counter() - t0)
    applies, records = [], 0
    for i, day in enumerate(range(1, 4)):
        tick = {"ts": f"2026-05-{day:02d}T00:00:00Z"}
        gc.collect()
        t0 = time.perf_counter()
        _, outputs = engine.apply(state, parse(TICKS, tick), Cause(TICKS, 0, 1_000 + i, tick["ts"]), tick)
        applies.append(time.perf_counter() - t0)
        records = len(outputs)
    best = statistics.median(remargin)
    return {"positions": positions, "remargin_ms": best * 1e3, "positions_per_s": positions / best,
            "tick_apply_ms": statistics.median(applies) * 1e3, "tick_records": records}


def whatif_latency(n: int) -> dict:
    """``Market.margin`` (contracts prepared once, the request's 10 fills applied and the
    account re-margined) and, for reference, the one-shot ``whatif`` that also estimates
    the 10 contracts."""
    from stream.core.whatif import Market, whatif

    from .core import listing_raws

    raws = listing_raws()
    account_fills = [{"trade_id": f"W{i}", "account_id": "ACME", "contract_id": r["contract_id"], "side": "BUY",
                      "price": (r["lower"] + r["upper"]) / 2, "notional": 10_000, "ts": "2026-04-21T09:30:00Z"}
                     for i, r in enumerate(raws)]
    listings, fills, at = [("listings.json", raws)], [("fills.json", account_fills)], "2026-04-25T00:00:00Z"
    market = Market(listings, at)
    assert market.margin(fills) == whatif(listings, fills, at)
    assert len(market.margin(fills)["accounts"][0]["positions"]) == 10

    def timed(fn, reps: int) -> dict:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return _ms(summarize(times))

    return {"request": timed(lambda: market.margin(fills), n), "one_shot": timed(lambda: whatif(listings, fills, at), n // 4)}


def _ms(summary: dict) -> dict:
    """bench.core's summary (microseconds) in milliseconds."""
    return {k.replace("_us", "_ms"): (v / 1e3 if k.endswith("_us") else v) for k, v in summary.items()}


def memory(accounts: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.memory", "--accounts", str(accounts)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return orjson.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- broker
async def broker_figures(bootstrap: str, quick: bool, log_dir: Path, broker_pid: int | None = None) -> dict:
    """The broker-side figures. The latency measures come twice: right after the broker
    started (``hop_first``, ``latency_first``: a JVM broker is still compiling its hot paths
    then) and, the figures the targets are read from, once the broker has carried the
    throughput runs (``hop``, ``latency``): a broker in service has been running for days."""
    tag = str(int(time.time()))
    n_pass = 10_000 if quick else 100_000
    n_floor = 2_000 if quick else 20_000
    n_proc = 6_000 if quick else 100_000
    latency_s = 3 if quick else 10
    figures: dict = {}

    async def measured(settings, run):
        """``run``'s result, the measurement's topics deleted afterwards (stack.drop_topics)."""
        try:
            return await run
        finally:
            await stack.drop_topics(settings)

    def fresh(suffix: str, **overrides):
        return stack.bench_settings(bootstrap, tag + suffix, **overrides)

    settings = fresh("")
    figures["passthrough"] = await measured(settings, stack.passthrough(settings, n_pass))
    figures["faust_floor"] = await measured(settings, stack.faust_floor(settings, n_floor, log_dir))
    if not quick:
        hop = fresh("h0")
        figures["hop_first"] = await measured(hop, stack.hop_latency(hop, 1_000.0, latency_s, broker_pid))
        lat = fresh("l0")
        first = await measured(lat, stack.processor(lat, 0, 1_000.0, latency_s, workers=1, log_dir=log_dir,
                                                    broker_pid=broker_pid))
    # each measurement on fresh topics: the embedded broker slows down as partitions fill
    drain = fresh("p1")
    figures["processor"] = await measured(drain, stack.processor(drain, n_proc, 1_000.0, latency_s, workers=1,
                                                                 log_dir=log_dir, measure_latency=False))
    # the same drain with the worker's HTTP API on (docs/operations.md): its cost on the hot path
    from stream.kafka.ports import free_port

    from .http import measure as http_measure

    drain = fresh("p1h", http_port=free_port())
    figures["processor_http"] = await measured(drain, stack.processor(drain, n_proc, 1_000.0, latency_s, workers=1,
                                                                      log_dir=log_dir, measure_latency=False))
    figures["http"] = await http_measure(bootstrap, 1_000 if quick else 5_000, log_dir)
    if not quick:
        drain = fresh("p2")
        figures["processor_2_workers"] = await measured(drain, stack.processor(drain, n_proc, 1_000.0, latency_s, workers=2,
                                                                               log_dir=log_dir, measure_latency=False))
    hop = fresh("h")
    figures["hop"] = await measured(hop, stack.hop_latency(hop, 1_000.0, latency_s, broker_pid))
    lat = fresh("l1")
    latency = await measured(lat, stack.processor(lat, 0, 1_000.0, latency_s, workers=1, log_dir=log_dir,
                                                  broker_pid=broker_pid))
    figures["processor"]["latency"] = latency["latency"]
    if not quick:
        figures["processor"]["latency_first"] = first["latency"]
        lat = fresh("l2")
        unsaturated = await measured(lat, stack.processor(lat, 0, 250.0, latency_s, workers=1, log_dir=log_dir,
                                                          broker_pid=broker_pid))
        figures["processor"]["latency_unsaturated"] = unsaturated["latency"]
    return figures


def broker_pid(broker) -> int | None:
    """The process id of a broker this run started (its first node's), else None."""
    if broker is None:
        return None
    if hasattr(broker, "node_ids"):
        return broker.pid(broker.node_ids[0])
    process = getattr(broker, "process", None)
    return None if process is None else process.pid


def start_broker(engine: str):
    """The broker the run measures, started here: ``(broker object, its description)``."""
    if engine == "kafka":
        from stream.kafka.apache import KAFKA_VERSION, KafkaCluster

        return KafkaCluster(nodes=1).start(), f"Apache Kafka {KAFKA_VERSION} (1 node, KRaft, started by the run)"
    from stream.kafka.tansu import EmbeddedBroker

    return EmbeddedBroker().start(), "embedded Tansu"


def run(quick: bool, engine: str = "embedded") -> dict:
    from stream.settings import Settings

    started = time.perf_counter()
    log_dir = Path(tempfile.mkdtemp(prefix="kpimargin-bench-logs-"))
    result: dict = {"quick": quick, "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine(), "code": code_version()}
    base = Settings.from_env()
    broker, result["broker"] = (None, f"KAFKA_BOOTSTRAP_SERVERS={base.bootstrap_servers}") if base.bootstrap_servers \
        else start_broker(engine)
    result["engine"] = engine
    try:
        bootstrap = base.bootstrap_servers or broker.bootstrap
        result["stack"] = asyncio.run(broker_figures(bootstrap, quick, log_dir, broker_pid(broker)))
    finally:
        if broker is not None:
            broker.stop()
    fx = Fixture()
    result["reestimate_mc"] = _ms(summarize(bench_risk_vector(fx, "mc", 200 if quick else 2_000, warmup=20)))
    result["reestimate_analytic"] = _ms(summarize(bench_risk_vector(fx, "analytic", 50 if quick else 500, warmup=5)))
    result["whatif"] = whatif_latency(100 if quick else 1_000)
    result["fanout"] = fanout(10_000)
    result["memory"] = memory(5_000 if quick else 10_000)
    result["seconds"] = time.perf_counter() - started
    shutil.rmtree(log_dir, ignore_errors=True)
    return result


def headline(r: dict) -> dict:
    s = r["stack"]
    proc = s["processor"]
    out = {
        "passthrough_eps": round(s["passthrough"]["eps"]),
        "faust_floor_eps": round(s["faust_floor"]["eps"]),
        "processor_eps": round(proc["eps"]),
        "p50_ms": round(proc["latency"]["p50_ms"], 2),
        "p99_ms": round(proc["latency"]["p99_ms"], 2),
        "hop_p50_ms": round(s["hop"]["p50_ms"], 2),
        "hop_p99_ms": round(s["hop"]["p99_ms"], 2),
        "fanout_positions_per_s": round(r["fanout"]["positions_per_s"]),
        "whatif_ms": round(r["whatif"]["request"]["median_ms"], 3),
        "reestimate_mc_ms": round(r["reestimate_mc"]["median_ms"], 3),
        "reestimate_analytic_ms": round(r["reestimate_analytic"]["median_ms"], 3),
        "rss_mb_per_100k_positions": r["memory"]["rss_mb_per_100k_positions"],
        "processor_share_of_passthrough": round(proc["eps"] / s["passthrough"]["eps"], 3),
        "tick_apply_100k_ms": round(r["fanout"]["tick_apply_ms"], 1),
    }
    if "latency_first" in proc:
        out["p99_first_ms"] = round(proc["latency_first"]["p99_ms"], 2)
        out["hop_p99_first_ms"] = round(s["hop_first"]["p99_ms"], 2)
    if "processor_2_workers" in s:
        out["processor_2_workers_eps"] = round(s["processor_2_workers"]["eps"])
    if "processor_http" in s:
        out["processor_http_eps"] = round(s["processor_http"]["eps"])
        out["http_on_over_off"] = round(s["processor_http"]["eps"] / proc["eps"], 3)
    if "http" in s:
        out["whatif_http_p50_ms"] = s["http"]["whatif"]["p50_ms"]
        out["whatif_http_p99_ms"] = s["http"]["whatif"]["p99_ms"]
    return out


def markdown(r: dict, command: str) -> str:
    begin, end = markers(r.get("engine", "embedded"))
    h = headline(r)
    s = r["stack"]
    m = r["machine"]
    lat = s["processor"]["latency"]
    rows = [
        ("(a) raw aiokafka pass-through (consume + produce, no logic)", f"{h['passthrough_eps']:,} events/s",
         f"{s['passthrough']['events']:,} events"),
        ("(b) faust agent, one table write per event (framework floor)", f"{h['faust_floor_eps']:,} events/s",
         f"{s['faust_floor']['events']:,} events"),
        ("(c) processor, 1 worker: fill in to requirement published", f"{h['processor_eps']:,} events/s",
         f"{s['processor']['events']:,} fills, {h['processor_share_of_passthrough']:.0%} of (a)"),
    ]
    if "processor_2_workers" in s:
        rows.append(("(c') processor, 2 worker processes", f"{h['processor_2_workers_eps']:,} events/s",
                     f"{s['processor_2_workers']['events']:,} fills"))
    if "processor_http" in s:
        rows.append(("(c'') processor, 1 worker, HTTP API on", f"{h['processor_http_eps']:,} events/s",
                     f"{s['processor_http']['events']:,} fills, {h['http_on_over_off']:.1%} of (c)"))
    if "http" in s:
        http = s["http"]
        rows.append(("what-if over HTTP, one account with 10 positions, idle worker",
                     f"p50 {http['whatif']['p50_ms']} ms, p99 {http['whatif']['p99_ms']} ms",
                     f"{http['whatif']['n']:,} requests; GET account p99 {http['account']['p99_ms']} ms; "
                     f"at 1,000 fills/s p99 {http['whatif_at_1000_fills_s']['p99_ms']} ms; draining a backlog "
                     f"p99 {http['whatif_draining_backlog']['p99_ms']} ms"))
    rows += [
        (f"fill-to-requirement latency at {lat['rate']:,.0f} fills/s offered", f"p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms",
         f"{lat['measured']:,} fills, max {lat['max_ms']:.1f} ms; measured after the throughput runs"),
        (f"CPU while offering {lat['rate']:,.0f} fills/s (cores used, and waited for on a run queue)",
         contention.describe(lat.get("cpu")), "per process, over the measured seconds (bench/contention.py)"),
        *([(f"where it goes at {lat['rate']:,.0f} fills/s (p50 / p99, from the records' timestamps)",
            ", ".join(f"{k} {v['p50_ms']:g} / {v['p99_ms']:g} ms" for k, v in lat["stages"].items() if isinstance(v, dict)),
            "router: fill sent -> log record; engine: log record -> requirement; delivery: requirement -> reader")]
          if lat.get("stages") else []),
        (f"one broker hop, no logic, at {s['hop']['rate']:,.0f} messages/s (the stack's latency floor)",
         f"p50 {h['hop_p50_ms']} ms, p99 {h['hop_p99_ms']} ms", f"{s['hop']['messages']:,} messages, max {s['hop']['max_ms']:.1f} ms"),
        *([(f"the same two on the broker's first minute (after (a) and (b), before the throughput runs)",
            f"fill-to-requirement p50 {s['processor']['latency_first']['p50_ms']:.1f} ms, "
            f"p99 {s['processor']['latency_first']['p99_ms']:.1f} ms; hop p99 {s['hop_first']['p99_ms']:.1f} ms",
            "CPU: " + contention.describe(s["processor"]["latency_first"].get("cpu")))]
          if "latency_first" in s["processor"] else []),
        *([(f"fill-to-requirement latency at {s['processor']['latency_unsaturated']['rate']:,.0f} fills/s offered",
            f"p50 {s['processor']['latency_unsaturated']['p50_ms']:.1f} ms, p99 {s['processor']['latency_unsaturated']['p99_ms']:.1f} ms",
            "a rate one worker sustains here")] if "latency_unsaturated" in s["processor"] else []),
        ("fan-out: one tick re-margins 100,000 positions", f"{h['fanout_positions_per_s']:,} positions/s",
         f"{r['fanout']['remargin_ms']:.1f} ms; whole apply with {r['fanout']['tick_records']:,} records "
         f"{h['tick_apply_100k_ms']} ms"),
        ("what-if, one account with 10 positions (contracts prepared)", f"{h['whatif_ms']} ms",
         f"median; p99 {r['whatif']['request']['p99_ms']:.3f} ms; one-shot incl. estimating the 10 contracts "
         f"{r['whatif']['one_shot']['median_ms']:.2f} ms"),
        ("re-estimation on a flash, mc (draws cached)", f"{h['reestimate_mc_ms']} ms", "median"),
        ("re-estimation on a flash, analytic", f"{h['reestimate_analytic_ms']} ms", "median"),
        ("resident memory of engine state", f"{h['rss_mb_per_100k_positions']} MB per 100,000 positions",
         f"{r['memory']['positions']:,} positions built"),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    return f"""{begin}
## `{command}` (generated by the full run)

- **Command:** `{command}`
- **Date:** {r['date_utc']}; code `{r['code'].get('git_head')}` (core digest {r['code'].get('core_sha256_12')}); broker: {r['broker']}; run time {r['seconds']:.0f} s.
- **Machine:** {m.get('platform')}, {m.get('cpu_model')}, {m.get('cpu_count')} vCPUs, Python {m.get('python')}, numpy {m.get('numpy')}.
  Broker, worker(s) and the load generator share the machine's cores.

| measure | figure | notes |
|---|---|---|
{table}

Last line of the run:

```json
{orjson.dumps(h).decode()}
```
{end}"""


def _replace_block(text: str, begin: str, end: str, section: str, after: str | None = None) -> str:
    """``text`` with the block between ``begin`` and ``end`` replaced by ``section``; a new
    block goes right after the block ending in ``after`` when there is one, else under the
    title."""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        return head + section + tail
    if after and after in text:
        head, tail = text.split(after, 1)
        return f"{head}{after}\n\n{section}{tail}"
    title, _, body = text.partition("\n")
    return f"{title}\n\n{section}\n{body}"


def _headline_of(text: str, broker: str) -> dict | None:
    """The JSON headline inside a broker's generated block of RESULTS.md (None without one)."""
    begin, end = markers(broker)
    if begin not in text or end not in text:
        return None
    block = text.split(begin, 1)[1].split(end, 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("{")]
    return orjson.loads(lines[-1]) if lines else None


SIDE_ROWS = [  # (headline key, what it measures, unit)
    ("passthrough_eps", "(a) raw aiokafka pass-through", "events/s"),
    ("faust_floor_eps", "(b) faust agent, one table write per event", "events/s"),
    ("processor_eps", "(c) processor, 1 worker", "fills/s"),
    ("processor_2_workers_eps", "(c') processor, 2 worker processes", "fills/s"),
    ("processor_share_of_passthrough", "(c) / (a)", ""),
    ("p50_ms", "fill-to-requirement p50 at 1,000 fills/s", "ms"),
    ("p99_ms", "fill-to-requirement p99 at 1,000 fills/s (target <= 20 ms)", "ms"),
    ("p99_first_ms", "the same, on the broker's first minute", "ms"),
    ("hop_p50_ms", "one bare broker hop p50 at 1,000 messages/s", "ms"),
    ("hop_p99_ms", "one bare broker hop p99 at 1,000 messages/s", "ms"),
]


def side_by_side(text: str) -> str:
    """The generated table of both brokers' broker-side figures, from their blocks."""
    heads = {b: _headline_of(text, b) for b in BROKERS}
    rows = []
    for key, what, unit in SIDE_ROWS:
        cells = []
        for b in BROKERS:
            value = (heads[b] or {}).get(key)
            cells.append("—" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:g}"))
        rows.append(f"| {what} | {' | '.join(cells)} | {unit} |")
    begin, end = SIDE_BY_SIDE
    return (f"{begin}\n## Both brokers side by side (generated from the two blocks below)\n\n"
            "The in-process figures (fan-out, what-if, re-estimation, memory) do not involve the broker; each "
            "block below has its own.\n\n"
            "| measure | embedded Tansu | Apache Kafka (1 node) | unit |\n|---|---|---|---|\n"
            + "\n".join(rows) + f"\n{end}")


def write_results(r: dict, command: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    engine = r.get("engine", "embedded")
    begin, end = markers(engine)
    others = [markers(b)[1] for b in BROKERS if b != engine]
    text = _replace_block(text, begin, end, markdown(r, command), after=others[0] if engine == "kafka" else None)
    text = _replace_block(text, *SIDE_BY_SIDE, side_by_side(text))
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=BROKERS, default="embedded",
                        help="the broker the run starts and measures: the embedded Tansu (default) or a one-node "
                             "Apache Kafka (needs java and mvn; jars cached after the first run)")
    parser.add_argument("--quick", action="store_true", help="smaller runs, about a minute; writes nothing")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.broker == "kafka":
        from stream.kafka.apache import KAFKA_VERSION, missing_tools
        from stream.kafka.dist import is_cached

        missing = missing_tools(need_maven=not is_cached(KAFKA_VERSION))
        if missing:
            print(f"python -m bench --broker kafka: {missing}", file=sys.stderr)
            return 2
    try:
        r = run(args.quick, args.broker)
    except Exception as exc:  # one line, no traceback: the broker did not start, a worker failed, ...
        print(f"python -m bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(r, option=orjson.OPT_INDENT_2).decode())
    if not args.quick and not args.no_write:
        write_results(r, "python -m bench" + (f" --broker {args.broker}" if args.broker != "embedded" else ""))
        print(f"wrote {RESULTS}", file=sys.stderr)
    print(orjson.dumps(headline(r)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
