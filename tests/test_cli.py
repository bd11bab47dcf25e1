"""The ``kpimargin whatif`` command, run as a user would: a subprocess on files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import EXAMPLES, TSLA

AT = "2026-04-25T00:00:00Z"
BOTH = ("--contract", str(EXAMPLES / "tsla_listing.json"), "--contract", str(EXAMPLES / "web_listing.json"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream", *args], capture_output=True, text=True, timeout=120)


def test_whatif_on_the_shipped_example():
    proc = run("whatif", "--contract", str(EXAMPLES / "tsla_listing.json"), "--contract",
               str(EXAMPLES / "web_listing.json"), "--fills", str(EXAMPLES / "fills.json"), "--at", AT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    accounts = {a["account_id"]: a for a in result["accounts"]}
    assert set(accounts) == {"ACME", "BETA"}
    by_contract = {p["contract_id"]: p for p in accounts["ACME"]["positions"]}
    assert list(by_contract) == sorted(by_contract)  # positions in contract_id order
    tsla = by_contract[TSLA["contract_id"]]
    assert tsla["max_loss"] == pytest.approx(5333.33, abs=0.005)
    assert set(tsla) == {"contract_id", "q", "im", "max_loss", "es", "stress", "conv", "stat", "conc", "tau"}
    im = sum(p["im"] for p in accounts["ACME"]["positions"])
    assert accounts["ACME"]["im"] == f"{-(-round(im * 100, 6) // 1) / 100:.2f}"


def test_whatif_with_a_flash_and_a_list_of_listings(tmp_path: Path):
    listings = [json.loads((EXAMPLES / n).read_text()) for n in ("tsla_listing.json", "web_listing.json")]
    (tmp_path / "l.json").write_text(json.dumps(listings))
    (tmp_path / "f.json").write_text(json.dumps({"contract_id": TSLA["contract_id"], "as_of": "2026-04-20T00:00:00Z", "value": 470000, "coverage": 0.9}))
    base = run("whatif", "--contract", str(tmp_path / "l.json"), "--fills", str(EXAMPLES / "fills.json"), "--at", AT)
    flashed = run("whatif", "--contract", str(tmp_path / "l.json"), "--fills", str(EXAMPLES / "fills.json"),
                  "--at", AT, "--flash", str(tmp_path / "f.json"))
    assert base.returncode == flashed.returncode == 0
    es = lambda out: next(p["es"] for p in json.loads(out)["accounts"][0]["positions"] if p["contract_id"] == TSLA["contract_id"])  # noqa: E731
    assert es(flashed.stdout) < es(base.stdout)


def test_the_latest_flash_wins_whatever_the_order_of_the_files(tmp_path: Path):
    early = {"contract_id": TSLA["contract_id"], "as_of": "2026-04-10T00:00:00Z", "value": 350000, "coverage": 0.2}
    late = {"contract_id": TSLA["contract_id"], "as_of": "2026-04-20T00:00:00Z", "value": 470000, "coverage": 0.9}
    results = []
    for order in ([early, late], [late, early]):
        (tmp_path / "f.json").write_text(json.dumps(order))
        proc = run("whatif", *BOTH, "--fills", str(EXAMPLES / "fills.json"),
                   "--at", AT, "--flash", str(tmp_path / "f.json"))
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(proc.stdout))
    only_late = tmp_path / "late.json"
    only_late.write_text(json.dumps(late))
    proc = run("whatif", *BOTH, "--fills", str(EXAMPLES / "fills.json"),
               "--at", AT, "--flash", str(only_late))
    assert results[0] == results[1] == json.loads(proc.stdout)


def test_fills_long_before_the_what_if_time_are_margined(tmp_path: Path):
    old = [{"trade_id": "OLD", "account_id": "A", "contract_id": TSLA["contract_id"], "side": "BUY", "price": 460000,
            "notional": 10000, "ts": "2026-01-05T00:00:00Z"}]  # months before --at: no dedup horizon in a what-if
    (tmp_path / "old.json").write_text(json.dumps(old))
    proc = run("whatif", "--contract", str(EXAMPLES / "tsla_listing.json"), "--fills", str(tmp_path / "old.json"), "--at", AT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accounts"][0]["im"] == "5333.34"


def test_the_console_script_is_installed_and_is_the_same_program():
    script = Path(sys.executable).parent / "kpimargin"
    assert script.exists(), "pip install -e . installs the kpimargin console script beside the interpreter"
    args = ["whatif", *BOTH, "--fills", str(EXAMPLES / "fills.json"), "--at", AT]
    via_script = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120)
    assert via_script.returncode == 0, via_script.stderr
    assert via_script.stdout == run(*args).stdout


@pytest.mark.parametrize(
    "fills, expect",
    [
        ([{"trade_id": "T", "account_id": "A", "contract_id": TSLA["contract_id"], "side": "BUY", "price": 700000, "notional": 1, "ts": AT}], "[0]: field price"),
        ([{"trade_id": "T", "account_id": "A", "contract_id": "NOPE", "side": "BUY", "price": 4, "notional": 1, "ts": AT}], "field contract_id"),
        ([{"trade_id": "T", "account_id": "A", "contract_id": TSLA["contract_id"], "side": "BUY", "price": 460000, "ts": AT}], "field notional: missing"),
        ({"not": "a list"}, "expected a JSON list"),
    ],
)
def test_bad_fills_exit_2_with_one_line(tmp_path: Path, fills, expect):
    path = tmp_path / "fills.json"
    path.write_text(json.dumps(fills))
    proc = run("whatif", "--contract", str(EXAMPLES / "tsla_listing.json"), "--fills", str(path), "--at", AT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and expect in lines[0], lines


def test_bad_listing_and_bad_json_exit_2(tmp_path: Path):
    bad = tmp_path / "listing.json"
    bad.write_text(json.dumps({**TSLA, "lower": 900000}))
    proc = run("whatif", "--contract", str(bad), "--fills", str(EXAMPLES / "fills.json"), "--at", AT)
    assert proc.returncode == 2 and "field lower" in proc.stderr and str(bad) in proc.stderr
    bad.write_text("{oops")
    proc = run("whatif", "--contract", str(bad), "--fills", str(EXAMPLES / "fills.json"), "--at", AT)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr
    proc = run("whatif", "--contract", str(EXAMPLES / "tsla_listing.json"), "--fills", str(EXAMPLES / "fills.json"), "--at", "yesterday")
    assert proc.returncode == 2 and "--at" in proc.stderr
