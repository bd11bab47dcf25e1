"""The worker's HTTP API (docs/operations.md) on real worker processes and a real broker.

Two workers with the API on (and a token); worker A starts alone, worker B joins. One
producer then publishes, strictly in order, listings, deposits, fills, a tick, a flash,
more fills and two bad inputs. The expectations are computed independently of the worker:
the pure engine applying the inputs in publication order as one state, the records the
workers published, and ``kpimargin whatif`` (a separate process, books built from files).
"""

from __future__ import annotations

import calendar
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
from jsonschema import Draft202012Validator

from stream.core import pretrade
from stream.core.engine import apply
from stream.core.errors import Rejected
from stream.core.messages import Cause, parse
from stream.core.state import EngineState
from stream.core.topics import CALLS, COLLATERAL, DEADLETTER, FILLS, FLASH, LISTINGS, REQUIREMENTS, TICKS
from stream.kafka.ports import free_port
from stream.log.ordered_log import log_partition

from .conftest import TSLA, load_example
from .streaming_support import Cluster, fresh_settings
from .test_order import publish_in_order

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

API = orjson.loads((Path(__file__).resolve().parent.parent / "schemas" / "http-api.json").read_bytes())


def conforms(name: str, body: dict) -> None:
    """``body`` is valid against the OpenAPI document's component schema ``name``."""
    Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": API["components"]}).validate(body)

WEB = load_example("web_listing.json")
ACCOUNTS = [f"H{i:02d}" for i in range(12)]
TOKEN = "s3cret-token"
CLOCK = "2026-04-25T00:00:00Z"
FLASH_MSG = {"contract_id": WEB["contract_id"], "value": 126.0, "coverage": 0.5, "as_of": "2026-04-26T00:00:00Z"}


def scenario() -> list[tuple[str, object]]:
    rnd = random.Random(11)

    def fills(prefix: str, n: int, ts: str):
        out = []
        for i in range(n):
            contract = rnd.choice((TSLA, WEB))
            price = rnd.randrange(contract["lower"], contract["upper"]) if contract is TSLA else round(
                rnd.uniform(contract["lower"], contract["upper"]), 2)
            out.append((FILLS, {"trade_id": f"{prefix}{i}", "account_id": rnd.choice(ACCOUNTS),
                                "contract_id": contract["contract_id"], "side": rnd.choice(("BUY", "SELL")),
                                "price": price, "notional": rnd.randint(100, 20000), "ts": ts}))
        return out

    messages: list[tuple[str, object]] = [(LISTINGS, TSLA), (LISTINGS, WEB)]
    messages += [(COLLATERAL, {"movement_id": f"D-{a}", "account_id": a, "amount": f"{rnd.randint(1, 40) * 250}.00",
                               "ts": "2026-04-02T00:00:00Z"}) for a in ACCOUNTS]
    messages += fills("A", 60, "2026-04-03T12:00:00Z")
    messages.append((TICKS, {"ts": CLOCK}))
    messages += fills("B", 40, CLOCK)
    messages.append((FLASH, FLASH_MSG))
    messages += fills("C", 20, "2026-04-26T12:00:00Z")
    messages.append((FILLS, b"{not json"))  # the router dead-letters it: undecodable
    messages.append((FILLS, {"trade_id": "X1", "account_id": ACCOUNTS[0], "contract_id": "NO-SUCH", "side": "BUY",
                             "price": 1, "notional": 5, "ts": CLOCK}))  # the engine: unknown_contract
    return messages


def expected_state(published, settings) -> tuple[EngineState, dict[str, dict]]:
    """The pure engine on the inputs in publication order, as one state: its final state
    and every record it publishes (rejected inputs publish nothing here)."""
    state = EngineState(config=settings.engine_config())
    records: dict[str, dict] = {}
    for topic, partition, offset, message in published:
        try:
            event = parse(topic, message)
            _, outputs = apply(state, event, Cause(topic, partition, offset, event.event_id), message)
        except (Rejected, TypeError):
            continue
        for out in outputs:
            records[out.value["id"]] = {**out.value, "_topic": out.topic}
    return state, records


# ------------------------------------------------------------------ a small HTTP client
def call(base: str, method: str, path: str, body: object = None, token: str | None = TOKEN,
         follow: bool = True) -> tuple[int, dict, dict]:
    """(status, JSON body or {}, headers); a 307 is followed once when ``follow``."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        raw, status, got = response.read(), response.status, dict(response.getheaders())
    finally:
        conn.close()
    if status == 307 and follow:
        target = urlsplit(got["Location"])
        return call(f"{target.scheme}://{target.netloc}", method, target.path, body, token, follow=False)
    is_json = got.get("Content-Type", "").startswith("application/json")
    return status, (orjson.loads(raw) if raw and is_json else {"text": raw.decode()}), got


def metrics(base: str) -> dict[tuple[str, tuple], float]:
    """``/metrics`` parsed: (sample name, sorted labels) -> value."""
    status, body, _ = call(base, "GET", "/metrics", token=None)
    assert status == 200
    out = {}
    for line in body["text"].splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_labels.partition("{")
        pairs = tuple(sorted(tuple(kv.split("=", 1)) for kv in labels.rstrip("}").split(",") if kv))
        out[(name, tuple((k, v.strip('"')) for k, v in pairs))] = float(value)
    return out


def watch_until(base: str, done, timeout_s: float, what: str) -> list[tuple[int, int, str]]:
    """Poll ``/readyz`` and ``/v1/accounts/<one account>`` until ``done(history)``;
    the history is ``(readyz status, account status, account reason)`` per poll."""
    history: list[tuple[int, int, str]] = []
    deadline = time.monotonic() + timeout_s
    while not done(history):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s; seen {sorted(set(history))}")
        try:
            ready = call(base, "GET", "/readyz", token=None)[0]
            status, body, _ = call(base, "GET", f"/v1/accounts/{ACCOUNTS[0]}", follow=False)
            history.append((ready, status, body.get("reason", "")))
        except OSError:  # not listening yet
            history.append((0, 0, "connection refused"))
    return history


@pytest.fixture(scope="module")
def running(broker, tmp_path_factory):
    """Two workers with the API on, the scenario published and consumed."""
    tmp = tmp_path_factory.mktemp("http")
    settings = fresh_settings(broker, tmp, http_token=TOKEN)
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    cluster = Cluster(settings, tmp)
    try:
        cluster.start_worker(replace(settings, http_port=ports[0]))
        seen_a = watch_until(urls[0], lambda h: h and h[-1][0] == 200, 90, "worker A ready")
        cluster.start_worker(replace(settings, http_port=ports[1], log_format="json"))
        # A's view while B joins: ready, then not (the rebalance), then ready again
        seen_join = watch_until(urls[0], lambda h: any(r == 503 for r, _, _ in h) and h[-1][0] == 200, 90,
                                "worker A not ready during the rebalance, then ready again")
        watch_until(urls[1], lambda h: h and h[-1][0] == 200, 90, "worker B ready")
        published = publish_in_order(settings, scenario())
        cluster.wait_consumed(timeout_s=120)
        cluster.assert_alive()
        yield {"settings": settings, "cluster": cluster, "urls": urls, "published": published,
               "outputs": cluster.outputs(), "seen_a": seen_a, "seen_join": seen_join, "tmp": tmp}
    finally:
        cluster.stop()


def test_health_and_readiness_flip_with_start_and_rebalance(running):
    seen_a, seen_join = running["seen_a"], running["seen_join"]
    assert any(r == 503 for r, _, _ in seen_a) and seen_a[-1][0] == 200, seen_a[:3]
    during = [(r, s, reason) for r, s, reason in seen_join if r == 503]
    assert during, "no 503 seen from /readyz during the rebalance"
    # while the rebalance left the partition without an owner, the account API said so
    assert any(s == 503 and reason in ("rebalancing", "loading", "no_owner") for _, s, reason in seen_join), \
        sorted(set(seen_join))
    for url in running["urls"]:
        status, body, _ = call(url, "GET", "/healthz", token=None)
        assert status == 200 and set(body["tasks"]) == {"log_agent", "persister", "router"}, body
        conforms("Status", body)
        status, body, _ = call(url, "GET", "/readyz", token=None)
        assert status == 200 and body["status"] == "ready", body
        conforms("Status", body)
    owned = [call(url, "GET", "/readyz", token=None)[1]["partitions"] for url in running["urls"]]
    assert sorted(owned[0] + owned[1]) == list(range(running["settings"].partitions)) and owned[0] and owned[1]


def test_accounts_equal_the_published_requirements_and_the_publication_order(running):
    settings, outputs = running["settings"], running["outputs"]
    state, expected = expected_state(running["published"], settings)
    assert {i: r for i, r in outputs.items() if r["_topic"] != DEADLETTER} == expected
    order = {(t, p, o): i for i, (t, p, o, _m) in enumerate(running["published"])}

    def in_order(topic: str) -> list[dict]:
        return sorted((r for r in outputs.values() if r["_topic"] == topic),
                      key=lambda r: order[(r["cause"]["topic"], r["cause"]["partition"], r["cause"]["offset"])])

    last = {r["account_id"]: r for r in in_order(REQUIREMENTS)}
    calls = {r["account_id"]: r for r in in_order(CALLS)}
    redirected = 0
    for account in ACCOUNTS:
        status, direct, headers = call(running["urls"][0], "GET", f"/v1/accounts/{account}", follow=False)
        if status == 307:
            redirected += 1
            assert headers["Location"] == f"{running['urls'][1]}/v1/accounts/{account}"
        status, view, _ = call(running["urls"][0], "GET", f"/v1/accounts/{account}")
        assert status == 200, view
        conforms("Account", view)
        published = last[account]
        for key in ("im", "equity", "excess"):
            assert view[key] == published[key], (account, key)
        call_record = calls.get(account)
        open_call = None if call_record is None or call_record["status"] == "SATISFIED" else call_record
        assert (view["call"] or {}).get("call_id") == (open_call or {}).get("call_id"), account
        if open_call is not None:
            assert view["call"]["shortfall"] == open_call["shortfall"]
        truth = pretrade.account_view(state, account)
        assert {k: view[k] for k in truth} == truth, account
        assert view["log_partition"] == log_partition(account, settings.partitions)
    assert 0 < redirected < len(ACCOUNTS), "the accounts should be spread over both workers"
    status, body, _ = call(running["urls"][1], "GET", "/v1/accounts/NOBODY")
    assert status == 404
    conforms("Error", body)


def test_whatif_equals_the_view_when_empty_and_the_file_whatif_with_fills(running):
    tmp: Path = running["tmp"]
    hypothetical = [{"contract_id": TSLA["contract_id"], "side": "SELL", "price": 455000, "notional": 25000},
                    {"contract_id": WEB["contract_id"], "side": "BUY", "price": "121.25", "notional": "9000.50"}]
    (tmp / "tsla.json").write_bytes(orjson.dumps(TSLA))
    (tmp / "web.json").write_bytes(orjson.dumps(WEB))
    (tmp / "flash.json").write_bytes(orjson.dumps(FLASH_MSG))
    for account in ACCOUNTS[:6]:
        status, view, _ = call(running["urls"][1], "GET", f"/v1/accounts/{account}")
        assert status == 200
        status, empty, _ = call(running["urls"][1], "POST", f"/v1/accounts/{account}/whatif", {"fills": []})
        assert status == 200
        assert empty["before"] == empty["after"] == {k: view[k] for k in ("im", "equity", "excess", "positions")}
        status, result, _ = call(running["urls"][1], "POST", f"/v1/accounts/{account}/whatif",
                                 {"fills": hypothetical})
        assert status == 200, result
        conforms("WhatIf", result)
        mine = [m for t, _p, _o, m in running["published"] if t == FILLS and isinstance(m, dict)
                and m["account_id"] == account and m["contract_id"] != "NO-SUCH"]
        mine += [{**f, "trade_id": f"H-{i}", "account_id": account, "ts": CLOCK} for i, f in enumerate(hypothetical)]
        (tmp / "fills.json").write_bytes(orjson.dumps(mine))
        out = subprocess.run([sys.executable, "-m", "stream", "whatif", "--contract", str(tmp / "tsla.json"),
                              "--contract", str(tmp / "web.json"), "--flash", str(tmp / "flash.json"),
                              "--fills", str(tmp / "fills.json"), "--at", CLOCK],
                             capture_output=True, check=True).stdout
        files = next(a for a in orjson.loads(out)["accounts"] if a["account_id"] == account)
        assert (result["after"]["im"], result["after"]["positions"]) == (files["im"], files["positions"]), account
        assert result["after"]["equity"] == view["equity"]
    # a bad fill: 400 naming the fill, the field and the reason; nothing changed
    status, body, _ = call(running["urls"][0], "POST", f"/v1/accounts/{ACCOUNTS[1]}/whatif",
                           {"fills": [hypothetical[0], {**hypothetical[1], "price": 10_000}]})
    assert (status, body["reason"], body["field"]) == (400, "price_out_of_range", "fills[1].price"), body
    conforms("Error", body)
    status, body, _ = call(running["urls"][0], "POST", f"/v1/accounts/{ACCOUNTS[1]}/whatif", {"orders": []})
    assert (status, body["reason"]) == (400, "schema_violation")


def test_metrics_count_what_was_published(running):
    published, outputs = running["published"], running["outputs"]
    samples = [metrics(url) for url in running["urls"]]

    def total(name: str, **labels) -> float:
        want = set(labels.items())
        return sum(v for m in samples for (n, ls), v in m.items() if n == name and want <= set(ls))

    for topic, n in Counter(t for t, _p, _o, _m in published).items():
        assert total("kpimargin_inputs_total", topic=topic) == n, topic
    dead = [r for r in outputs.values() if r["_topic"] == DEADLETTER]
    assert sorted(r["reason"] for r in dead) == ["undecodable", "unknown_contract"]
    for reason in ("undecodable", "unknown_contract"):
        assert total("kpimargin_deadletters_total", reason=reason, topic=FILLS) == 1
    for topic in (REQUIREMENTS, CALLS):
        assert total("kpimargin_outputs_total", topic=topic) == sum(1 for r in outputs.values() if r["_topic"] == topic)
    for status, n in Counter(r["status"] for r in outputs.values() if r["_topic"] == CALLS).items():
        assert total("kpimargin_calls_total", status=status) == n
    assert total("kpimargin_ready") == 2 and total("kpimargin_healthy") == 2
    assert total("kpimargin_engine_lag_records") == 0
    assert total("kpimargin_accounts") == len(ACCOUNTS)
    assert total("kpimargin_apply_seconds_count") == total("kpimargin_log_records_applied_total") > 0
    for m in samples:  # each worker routes two log partitions; broadcast inputs reach both tasks in one step
        steps = sum(v for (n, _ls), v in m.items() if n == "kpimargin_router_steps_total")
        asked = sum(v for (n, _ls), v in m.items() if n == "kpimargin_router_end_offset_requests_total")
        assert 0 < asked <= 2 * steps, (asked, steps)  # one for all tasks, one more for what emptied meanwhile
    dashboard = (Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json").read_text()
    exposed = {n for m in samples for (n, _ls) in m}
    assert set(re.findall(r"kpimargin_[a-z_]+", dashboard)) <= exposed, "the dashboard draws a metric no worker exposes"
    clock = {v for m in samples for (n, _ls), v in m.items() if n == "kpimargin_clock_seconds"}
    assert clock == {calendar.timegm(time.strptime(CLOCK, "%Y-%m-%dT%H:%M:%SZ"))}


def test_the_api_asks_for_the_token_and_shows_no_internals(running):
    url = running["urls"][0]
    for token in (None, "wrong"):
        status, body, headers = call(url, "GET", f"/v1/accounts/{ACCOUNTS[0]}", token=token, follow=False)
        assert status == 401 and body["reason"] == "unauthorized" and headers["WWW-Authenticate"].startswith("Bearer")
        conforms("Error", body)
        assert call(url, "POST", f"/v1/accounts/{ACCOUNTS[0]}/whatif", {"fills": []}, token=token)[0] == 401
    assert call(url, "GET", "/healthz", token=None)[0] == 200
    for path in ("/", "/table/state", "/v1/tables", "/stackdump", "/debug"):
        assert call(url, "GET", path)[0] == 404, path


def test_json_logs_are_one_object_a_line(running):
    log_b = (running["tmp"] / "worker-2.log").read_text().splitlines()
    lines = [orjson.loads(line) for line in log_b if line.strip()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    loaded = [line for line in lines if "state loaded" in line["message"]]
    assert loaded and all(isinstance(line["partition"], int) and isinstance(line["offset"], int) for line in loaded)


def _worker_fails(tmp_path, **env) -> tuple[int, str, float]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "KPIMARGIN_"))}
    full.update(env, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}", KPIMARGIN_CONNECT_TIMEOUT_S="30")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stream", "worker"], capture_output=True, text=True, env=full,
                          timeout=60, cwd=tmp_path)
    return proc.returncode, proc.stderr, time.monotonic() - t0


def test_the_worker_refuses_to_serve_beyond_loopback_without_a_token(tmp_path):
    code, err, took = _worker_fails(tmp_path, KPIMARGIN_HTTP_PORT=str(free_port()), KPIMARGIN_HTTP_BIND="0.0.0.0")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "KPIMARGIN_HTTP_TOKEN" in lines[0] and took < 15, err


def test_a_port_in_use_is_one_line_before_the_broker_is_asked(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, err, took = _worker_fails(tmp_path, KPIMARGIN_HTTP_PORT=str(port))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], err
    assert took < 15  # not after the connect timeout: no broker listens there
