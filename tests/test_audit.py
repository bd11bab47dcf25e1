"""Audit tools (replay, explain, export, report): one real worker runs the demo scenario on a
real broker once; the tools then run as the real CLI in subprocesses against the broker or
an export directory. Plus a pure unit test of the replay comparison on an in-memory log."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stream.audit import (
    Filters,
    Record,
    as_records,
    explain,
    field_diffs,
    read_export,
    route_offline,
    run_replay,
)
from stream.demo import load_scenario
from stream.kafka import publish
from stream.ordered_log import encode_entry, encode_record, expand, replay
from stream.timeutil import parse_time_us
from stream.topics import CALLS, COLLATERAL, FILLS, LISTINGS, LOG, REQUIREMENTS, TICKS

from .conftest import TSLA, load_example
from .streaming_support import Cluster, fresh_settings, kafka_bootstrap, run_phases_and_settle
from .test_streaming import all_final

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PHASES = load_scenario()
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bootstrap():
    with kafka_bootstrap() as servers:
        yield servers


def cli(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The real ``kpimargin`` command in a subprocess."""
    return subprocess.run([sys.executable, "-m", "stream", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(bootstrap, tmp_path_factory):
    """The demo scenario through one worker; then every topic the tools read, exported."""
    tmp = tmp_path_factory.mktemp("audit")
    cluster = Cluster(fresh_settings(bootstrap, tmp), tmp)
    cluster.start_worker()
    try:
        outputs = run_phases_and_settle(cluster, PHASES)
        assert all_final(outputs)
    finally:
        cluster.stop()
    env = {**os.environ, **cluster.settings.env()}
    export_dir = tmp / "export"
    exported = cli(env, "export", LOG, REQUIREMENTS, CALLS, "--out", str(export_dir))
    assert exported.returncode == 0, exported.stderr
    return {"cluster": cluster, "settings": cluster.settings, "env": env, "outputs": outputs,
            "export": export_dir, "tmp": tmp}


def compared(stdout: str) -> int:
    return int(re.search(r"records compared:\s+([\d,]+)", stdout).group(1).replace(",", ""))


def mismatches(stdout: str) -> int:
    return int(re.search(r"mismatches:\s+([\d,]+)", stdout).group(1).replace(",", ""))


# --------------------------------------------------------------------------- replay
def test_replay_after_the_scenario_finds_no_mismatch(run):
    result = cli(run["env"], "replay")
    assert result.returncode == 0, result.stdout + result.stderr
    published = [r for r in run["outputs"].values() if r["_topic"] in (REQUIREMENTS, CALLS)]
    assert mismatches(result.stdout) == 0
    assert compared(result.stdout) == len(published) > 0
    assert "\r" not in result.stderr  # not a TTY: no progress bar


def test_replay_from_the_raw_input_topics(run):
    """--from-inputs rebuilds the log with the router's own function: the scenario was
    published phase by phase, so timestamp order is the order the router saw."""
    result = cli(run["env"], "replay", "--from-inputs")
    assert result.returncode == 0, result.stdout + result.stderr
    published = [r for r in run["outputs"].values() if r["_topic"] in (REQUIREMENTS, CALLS)]
    assert mismatches(result.stdout) == 0 and compared(result.stdout) == len(published)


def test_replay_filters_restrict_what_is_compared(run):
    records = [r for r in run["outputs"].values() if r["_topic"] in (REQUIREMENTS, CALLS)]
    beta = cli(run["env"], "replay", "--dir", str(run["export"]), "--account", "BETA")
    assert beta.returncode == 0, beta.stdout + beta.stderr
    assert compared(beta.stdout) == sum(r["account_id"] == "BETA" for r in records)

    web, start, end = "SHOP-WEB-2026-05", "2026-04-10T00:00:00Z", "2026-06-30T00:00:00Z"
    shop = cli(run["env"], "replay", "--dir", str(run["export"]), "--contract", web, "--from-time", start, "--to-time", end)
    assert shop.returncode == 0, shop.stdout + shop.stderr
    cause = lambda r: (r["account_id"], tuple(r["cause"].values()))  # noqa: E731
    holds = {cause(r) for r in records if r["_topic"] == REQUIREMENTS and any(p["contract_id"] == web for p in r["positions"])}
    expected = [r for r in records if (cause(r) in holds or r["cause"]["id"] == web) and start <= r["as_of"] <= end]
    assert compared(shop.stdout) == len(expected) > 0


def test_explain_equals_the_published_requirement_at_that_time(run):
    for account, at in (("GAMMA", "2026-05-15T00:00:00Z"), ("DELTA", "2026-04-20T00:00:00Z"), ("BETA", "2026-04-03T09:00:00Z")):
        result = cli(run["env"], "explain", account, "--at", at, "--json")
        assert result.returncode == 0, result.stderr
        got = orjson.loads(result.stdout)
        published = [r for r in _published_in_order(run["export"], REQUIREMENTS)
                     if r["account_id"] == account and parse_time_us(r["as_of"], "as_of") <= parse_time_us(at, "at")]
        expected = published[-1]
        assert (got["im"], got["equity"], got["excess"]) == (expected["im"], expected["equity"], expected["excess"]), account
        assert got["positions"] == expected["positions"], account
        for position in got["positions"]:
            contract = got["contracts"][position["contract_id"]]
            assert {"mu", "sigma_adj", "n"} <= set(contract["estimate"]) and contract["rv"]["tail_count"] > 0
            assert contract["params"]["alpha"] == 0.99
        assert got["chain"][-1]["log"]["offset"] == got["last_log_offset"], "the chain ends with the last entry applied"
        assert any(item["source"]["topic"] in (FILLS, COLLATERAL) for item in got["chain"])


def test_explain_text_reads_well(run):
    result = cli(run["env"], "explain", "BETA", "--at", "2026-04-02T14:00:00Z", "--dir", str(run["export"]))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for needle in ("IM", "4666.67", "equity", "3000.00", "max_loss", "sigma_adj", "chain of events",
                   "fill T-2 SELL", "deposit M-2", "call ISSUED shortfall 1666.67"):
        assert needle in text, needle
    missing = cli(run["env"], "explain", "NOBODY", "--dir", str(run["export"]))
    assert missing.returncode == 2 and "NOBODY" in missing.stderr


def _published_in_order(directory: Path, topic: str) -> list[dict]:
    """A topic's records from an export, each id once, in publish order."""
    seen, records = set(), []
    for r in read_export(directory, topic):
        value = orjson.loads(r.value)
        if value["id"] not in seen:
            seen.add(value["id"])
            records.append(value)
    return records


def test_export_then_replay_from_the_directory_round_trips(run):
    from_broker = cli(run["env"], "replay")
    from_dir = cli(run["env"], "replay", "--dir", str(run["export"]))
    assert from_dir.returncode == 0, from_dir.stdout + from_dir.stderr
    assert mismatches(from_dir.stdout) == 0
    assert compared(from_dir.stdout) == compared(from_broker.stdout) > 0
    for line in (run["export"] / f"{LOG}.jsonl").read_bytes().splitlines():
        obj = orjson.loads(line)
        assert set(obj) == {"partition", "offset", "timestamp", "key", "value"}
        entries = obj["value"]["entries"]
        assert entries and all(e["source"]["topic"] for e in entries) and obj["key"] is None


def test_report_writes_a_png(run):
    out = run["tmp"] / "beta.png"
    result = cli(run["env"], "report", "BETA", "--out", str(out), "--dir", str(run["export"]))
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_an_altered_published_record_is_caught(run):
    """Runs last: it adds a forged record to margin.requirements."""
    real = next(r for r in _published_in_order(run["export"], REQUIREMENTS) if r["account_id"] == "BETA" and r["positions"])
    forged = {**real, "im": "9999.99"}
    asyncio.run(publish(run["settings"], REQUIREMENTS, [orjson.dumps(forged)]))
    result = cli(run["env"], "replay")
    assert result.returncode == 1, result.stdout + result.stderr
    assert mismatches(result.stdout) == 1
    assert real["id"] in result.stdout
    assert re.search(rf"^\s+im\s+9999\.99\s+{re.escape(real['im'])}\s*$", result.stdout, re.M), result.stdout
    others = cli(run["env"], "replay", "--account", "ACME")
    assert others.returncode == 0, others.stdout


# --------------------------------------------------------------------------- pure
WEB = load_example("web_listing.json")


def _small_log() -> list[tuple[int, int, bytes]]:
    """Two log partitions built by hand with encode_entry, one entry per record: listings
    and a tick in both, each account's deposit and fills in its own partition."""
    entries = []
    for p in (0, 1):
        entries += [(p, 0, encode_entry(LISTINGS, 0, 0, TSLA)), (p, 1, encode_entry(LISTINGS, 0, 1, WEB)),
                    (p, 2, encode_entry(TICKS, 0, 0, {"ts": "2026-04-10T00:00:00Z"}))]
    accounts = {0: "A", 1: "B"}
    for p, account in accounts.items():
        deposit = {"movement_id": f"M-{account}", "account_id": account, "amount": "2000.00", "ts": "2026-04-10T01:00:00Z"}
        entries.append((p, 3, encode_entry(COLLATERAL, p, 0, deposit)))
        for i, (contract, price) in enumerate(((TSLA["contract_id"], 450000), (WEB["contract_id"], 124))):
            fill = {"trade_id": f"T-{account}{i}", "account_id": account, "contract_id": contract, "side": "BUY",
                    "price": price, "notional": 5000, "ts": "2026-04-10T02:00:00Z"}
            entries.append((p, 4 + i, encode_entry(FILLS, p, i, fill)))
    return sorted((p, o, encode_record([entry])) for p, o, entry in entries)


def _published(entries) -> dict[str, list[Record]]:
    """What a faithful worker would have published: the replay's requirements and calls."""
    topics = {REQUIREMENTS: [], CALLS: []}
    for _p, _o, out in replay(entries):
        if out.topic in topics:
            topics[out.topic].append(Record(0, len(topics[out.topic]), None, out.key.encode(), orjson.dumps(out.value)))
    return topics


def test_replay_comparison_without_a_broker():
    entries = _small_log()
    published = _published(entries)
    topics = {LOG: as_records(entries), **published}
    report = run_replay(topics)
    assert report.ok and report.entries == len(entries) == 12 and report.compared == report.recomputed > 4

    # a repeated identical record (at-least-once) is not a mismatch
    topics[REQUIREMENTS] = published[REQUIREMENTS] + published[REQUIREMENTS][:1]
    assert run_replay(topics).ok

    # a changed im, a missing call, an extra record
    first = orjson.loads(published[REQUIREMENTS][-1].value)
    altered = {**first, "im": "1.00", "positions": [{**first["positions"][0], "es": 0.5}, *first["positions"][1:]]}
    extra = {**first, "id": "not-a-replayed-id"}
    topics[REQUIREMENTS] = published[REQUIREMENTS] + [Record(0, 99, None, None, orjson.dumps(v)) for v in (altered, extra)]
    calls = [r for r in published[CALLS] if orjson.loads(r.value)["account_id"] == first["account_id"]]
    topics[CALLS] = [r for r in published[CALLS] if r not in calls[:1]]
    report = run_replay(topics)
    kinds = sorted(m.kind for m in report.mismatches)
    assert calls and kinds == ["differs", "extra", "missing"]
    differs = next(m for m in report.mismatches if m.kind == "differs")
    assert differs.record_id == first["id"]
    assert differs.diffs == [("im", "1.00", first["im"]), ("positions[0].es", 0.5, first["positions"][0]["es"])]

    # filters restrict what is compared, never what is applied
    other = "B" if first["account_id"] == "A" else "A"
    assert run_replay(topics, Filters(account=other)).ok
    assert not run_replay(topics, Filters(account=first["account_id"])).ok
    assert run_replay(topics, Filters(contract="NO-SUCH-CONTRACT")).compared == 0
    assert run_replay(topics, Filters(from_offset=0, to_offset=3)).compared == 2  # the two deposits


def test_field_diffs_names_nested_fields():
    assert field_diffs({"a": 1, "p": [{"x": 1.0}]}, {"a": 1, "p": [{"x": 1.0}]}) == []
    assert field_diffs({"p": [{"x": 1.0}]}, {"p": [{"x": 2.0}, {"x": 3.0}]}) == [
        ("p[0].x", 1.0, 2.0), ("p[1]", "(absent)", {"x": 3.0})]


def test_explain_on_an_in_memory_log_matches_the_last_requirement():
    records = route_offline([(ph["topic"], m) for ph in PHASES for m in ph["messages"]], 4)
    result = explain(expand(records), "GAMMA", parse_time_us("2026-05-01T00:00:00Z", "at"))
    last = [out.value for _p, _o, out in replay([r for r in records if r[0] == result["log_partition"]])
            if out.topic == REQUIREMENTS and out.value["account_id"] == "GAMMA" and out.value["as_of"] <= "2026-05-01T00:00:00Z"][-1]
    assert (result["im"], result["equity"]) == (last["im"], last["equity"])
    assert result["positions"] == last["positions"]
    assert result["open_call"] is not None
