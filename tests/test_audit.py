"""Audit tools (replay, explain, export, report): one real worker runs the demo scenario on a
real broker once; the tools then run as the real CLI in subprocesses against the broker or
an export directory. The broker-free tests of the same tools are in test_audit_offline.py."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stream.audit.export import read_export
from stream.core.timeutil import parse_time_us
from stream.core.topics import CALLS, COLLATERAL, FILLS, LOG, REQUIREMENTS
from stream.harness.scenario import load_scenario
from stream.kafka.clients import publish

from .streaming_support import Cluster, fresh_settings, run_phases_and_settle
from .test_streaming import all_final

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PHASES = load_scenario()
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bootstrap(broker):
    return broker


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
        last = got["chain"][-1]["log"]
        assert (last["offset"], last["entry"]) == (got["last_log_offset"], got["last_log_entry"]), "the chain ends with the last entry applied"
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
