"""bench/RESULTS.md keeps one generated block per broker and a side-by-side table built from
both: a run on one broker replaces its own block and leaves the other's alone."""

import orjson

import bench.__main__ as bench


def result(engine: str, processor_eps: float, p99_ms: float) -> dict:
    """A run's result with just what the tables read (figures made up for the test)."""
    lat = {"rate": 1000.0, "p50_ms": 5.0, "p99_ms": p99_ms, "measured": 900, "max_ms": 40.0,
           "stages": {"fills": 900, "router": {"p50_ms": 1.5, "p99_ms": 3.0}, "engine": None}}
    stack = {"passthrough": {"eps": 20_000.0, "events": 100}, "faust_floor": {"eps": 2_000.0, "events": 10},
             "processor": {"eps": processor_eps, "events": 100, "latency": lat},
             "hop": {"rate": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "messages": 10, "max_ms": 3.0}}
    return {"engine": engine, "broker": f"the {engine} broker", "stack": stack, "date_utc": "2026-12-03T00:00:00+00:00",
            "seconds": 1.0, "code": {"git_head": "abc"}, "machine": {},
            "fanout": {"positions_per_s": 1e6, "tick_apply_ms": 1.0, "remargin_ms": 1.0, "tick_records": 1},
            "whatif": {"request": {"median_ms": 0.5, "p99_ms": 0.6}, "one_shot": {"median_ms": 1.0}},
            "reestimate_mc": {"median_ms": 0.1}, "reestimate_analytic": {"median_ms": 1.0},
            "memory": {"rss_mb_per_100k_positions": 100.0, "positions": 10}}


def headline_in(text: str, engine: str) -> dict:
    begin, end = bench.markers(engine)
    block = text.split(begin, 1)[1].split(end, 1)[0]
    return orjson.loads([line for line in block.splitlines() if line.startswith("{")][-1])


def test_each_broker_keeps_its_own_block_and_the_side_by_side_table_shows_both(tmp_path, monkeypatch):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\nhand-written analysis\n")
    monkeypatch.setattr(bench, "RESULTS", path)

    bench.write_results(result("embedded", 6_000.0, 250.0), "python -m bench")
    bench.write_results(result("kafka", 7_000.0, 60.0), "python -m bench --broker kafka")
    bench.write_results(result("embedded", 6_500.0, 240.0), "python -m bench")  # a re-run replaces its block

    text = path.read_text()
    assert "hand-written analysis" in text
    assert text.count(bench.markers("embedded")[0]) == text.count(bench.markers("kafka")[0]) == 1
    assert headline_in(text, "embedded")["processor_eps"] == 6_500
    assert headline_in(text, "kafka")["processor_eps"] == 7_000
    table = text.split(bench.SIDE_BY_SIDE[0], 1)[1].split(bench.SIDE_BY_SIDE[1], 1)[0]
    assert "| (c) processor, 1 worker | 6,500 | 7,000 | fills/s |" in table
    assert "| fill-to-requirement p99 at 1,000 fills/s (target <= 20 ms) | 240 | 60 | ms |" in table
    assert "| (c') processor, 2 worker processes | — | — | fills/s |" in table  # neither run had it
    assert "router 1.5 / 3 ms" in text  # the stages row (a stage without data left out)


def test_the_side_by_side_table_says_which_broker_has_not_run_yet(tmp_path, monkeypatch):
    path = tmp_path / "RESULTS.md"
    monkeypatch.setattr(bench, "RESULTS", path)
    bench.write_results(result("kafka", 7_000.0, 60.0), "python -m bench --broker kafka")
    table = path.read_text().split(bench.SIDE_BY_SIDE[0], 1)[1]
    assert "| (c) processor, 1 worker | — | 7,000 | fills/s |" in table
