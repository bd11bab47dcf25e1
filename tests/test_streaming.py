"""Integration tests: a real Kafka-protocol broker over TCP, real faust workers as
subprocesses, and what they publish, read back from the topics."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
import json
import random
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from stream.core.topics import CALLS, DEADLETTER, FLASH, LOG, REQUIREMENTS, TICKS
from stream.harness.scenario import is_final, load_scenario, scenario_accounts
from stream.log.ordered_log import log_partition

from .conftest import comparable_rows
from .streaming_support import Cluster, by_account, fresh_settings, run_phases_and_settle

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
PHASES = load_scenario()
ACCOUNTS = scenario_accounts(PHASES)


@pytest.fixture(scope="module")
def bootstrap(broker):
    return broker


def all_final(outputs: dict[str, dict]) -> bool:
    finals = {r["account_id"] for r in outputs.values() if r["_topic"] == REQUIREMENTS and is_final(r)}
    return finals >= ACCOUNTS


@pytest.fixture(scope="module")
def clean_run(bootstrap, tmp_path_factory):
    """The demo scenario through one worker, start to finish, with nothing going wrong."""
    tmp = tmp_path_factory.mktemp("clean")
    cluster = Cluster(fresh_settings(bootstrap, tmp), tmp)
    cluster.start_worker()
    try:
        outputs = run_phases_and_settle(cluster, PHASES)
        assert all_final(outputs)
        replayed, states = cluster.replayed()
        rows = cluster.table_rows()
    finally:
        cluster.stop()
    return {"outputs": outputs, "replayed": replayed, "states": states, "rows": rows, "settings": cluster.settings}


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _comparable_rows(rows: dict[str, dict]) -> dict[str, dict]:
    """State rows without their per-source offset marks (bookkeeping for re-deliveries)."""
    return comparable_rows(rows.items())


# --------------------------------------------------------------------------- scenario
def test_published_records_equal_a_replay_of_the_log(clean_run):
    outputs, replayed = clean_run["outputs"], clean_run["replayed"]
    assert replayed and set(outputs) == set(replayed)
    for rid, record in replayed.items():
        assert outputs[rid] == record


def test_every_published_record_matches_its_schema(clean_run):
    validators = {REQUIREMENTS: _validator("requirement"), CALLS: _validator("call"), DEADLETTER: _validator("deadletter")}
    for record in clean_run["outputs"].values():
        body = {k: v for k, v in record.items() if k != "_topic"}
        validators[record["_topic"]].validate(body)


def test_fills_issue_and_deposit_satisfies(clean_run):
    calls = by_account(clean_run["outputs"], CALLS)
    beta = sorted(calls["BETA"], key=lambda c: c["cause"]["offset"] if c["cause"]["topic"] != "trades.fills" else -1)
    statuses = [(c["status"], c["cause"]["topic"], c["cause"]["id"]) for c in calls["BETA"]]
    assert ("ISSUED", "trades.fills", "T-2") in statuses
    assert ("SATISFIED", "collateral.movements", "M-5") in statuses
    issued = next(c for c in beta if c["status"] == "ISSUED")
    assert issued["shortfall"] == "1666.67" and issued["im"] == "4666.67" and issued["equity"] == "3000.00"


FLASH_CONTRACT = {
    "contract_id": "NFLX-SUBS-2026-06", "kpi": "Monthly paid subscribers (millions)", "lower": 250, "upper": 350,
    "listing_time": "2026-05-01T00:00:00Z", "settlement_time": "2026-07-01T00:00:00Z",
    "history": [281.2, 283.0, 287.9, 290.1, 294.4, 296.0, 301.6],
    "params": {"beta": 0.05, "k": 0.2},  # small floor and convergence: ES and stress bind
}


def test_flash_remargins_every_holder_in_every_partition(bootstrap, tmp_path):
    cluster = Cluster(fresh_settings(bootstrap, tmp_path), tmp_path)
    cluster.start_worker()
    holders = [f"H{i}" for i in range(12)]
    fills = [{"trade_id": f"F{i}", "account_id": a, "contract_id": FLASH_CONTRACT["contract_id"],
              "side": "BUY" if i % 2 else "SELL", "price": 302, "notional": 10000 + 1000 * i, "ts": "2026-05-02T00:00:00Z"}
             for i, a in enumerate(holders)]
    flash = {"contract_id": FLASH_CONTRACT["contract_id"], "as_of": "2026-05-10T00:00:00Z", "value": 301, "coverage": 0.5}
    try:
        cluster.publish([
            {"title": "listing", "topic": "kpi.contracts", "messages": [FLASH_CONTRACT]},
            {"title": "tick", "topic": TICKS, "messages": [{"ts": "2026-05-02T00:00:00Z"}]},
            {"title": "fills", "topic": "trades.fills", "messages": fills},
            {"title": "flash", "topic": FLASH, "messages": [flash]},
        ])
        outputs = cluster.settle()
    finally:
        cluster.stop()
    flash_reqs = [r for r in outputs.values() if r["_topic"] == REQUIREMENTS and r["cause"]["topic"] == FLASH]
    assert sorted(r["account_id"] for r in flash_reqs) == sorted(holders)
    partitions = {log_partition(a, cluster.settings.partitions) for a in holders}
    assert partitions == set(range(cluster.settings.partitions))
    before = {r["account_id"]: Decimal(r["im"]) for r in outputs.values() if r["_topic"] == REQUIREMENTS and r["cause"]["id"].startswith("F")}
    assert all(Decimal(r["im"]) < before[r["account_id"]] for r in flash_reqs)  # half the period seen: less risk


def test_ticks_grow_convergence_until_a_call(clean_run):
    gamma = by_account(clean_run["outputs"], CALLS)["GAMMA"]
    issued = [c for c in gamma if c["status"] == "ISSUED"]
    assert len(issued) == 1 and issued[0]["cause"]["topic"] == TICKS
    ims = [Decimal(r["im"]) for r in sorted(by_account(clean_run["outputs"], REQUIREMENTS)["GAMMA"], key=lambda r: r["as_of"])
           if r["cause"]["topic"] == TICKS]
    assert ims == sorted(ims) and ims[-1] > ims[0]


def test_settlement_moves_pnl_into_equity(clean_run):
    finals = {r["account_id"]: r for r in clean_run["outputs"].values() if r["_topic"] == REQUIREMENTS and is_final(r)}
    assert set(finals) == ACCOUNTS
    assert all(r["im"] == "0.00" and r["positions"] == [] for r in finals.values())
    # ACME: 6000 deposited, BUY 10000 TSLA at 460000 settles at 401234: 10000*(401234-460000)/300000
    assert finals["ACME"]["equity"] == "4041.13"
    assert finals["BETA"]["equity"] == "6958.87"


def test_persisted_state_equals_the_replayed_state(clean_run):
    for partition, state in clean_run["states"].items():
        expected = _comparable_rows(dict(state.rows()))
        got = _comparable_rows(clean_run["rows"].get(partition, {}))
        assert got == expected, f"partition {partition}"


# --------------------------------------------------------------------------- bad input
BAD_FILLS = [
    (b"{not json", "undecodable"),
    (b"\xff\xfe\x00", "undecodable"),
    (b"[1, 2]", "undecodable"),
    (orjson.dumps({"trade_id": "B1", "account_id": "ACME"}), "schema_violation"),
    (orjson.dumps({"trade_id": "B2", "account_id": "ACME", "contract_id": "TSLA-Q2-2026-DELIVERIES", "side": "BUY",
                   "price": 460000, "notional": 0, "ts": "2026-04-02T00:00:00Z"}), "non_positive_notional"),
    (orjson.dumps({"trade_id": "B3", "account_id": "ACME", "contract_id": "TSLA-Q2-2026-DELIVERIES", "side": "BUY",
                   "price": 999999, "notional": 10, "ts": "2026-04-02T00:00:00Z"}), "price_out_of_range"),
    (orjson.dumps({"trade_id": "B4", "account_id": "ACME", "contract_id": "NOPE", "side": "BUY",
                   "price": 1, "notional": 10, "ts": "2026-04-02T00:00:00Z"}), "unknown_contract"),
    (orjson.dumps({"trade_id": "T-1", "account_id": "ACME", "contract_id": "TSLA-Q2-2026-DELIVERIES", "side": "SELL",
                   "price": 460000, "notional": 10000, "ts": "2026-04-02T14:00:00Z"}), "duplicate_conflict"),
    (b'{"trade_id": "B5", "account_id": "ACME", "price": NaN}', "undecodable"),
    (b"x" * 100_000, "oversized"),  # above the 64 KiB limit this test sets
]


def test_bad_input_goes_to_the_deadletter_and_the_partition_keeps_flowing(bootstrap, tmp_path):
    cluster = Cluster(fresh_settings(bootstrap, tmp_path, max_message_bytes=65_536), tmp_path)
    cluster.start_worker()
    try:
        cluster.publish(PHASES[:4])  # listings, a tick, deposits, the trading phase
        import asyncio

        from stream.kafka.clients import publish

        asyncio.run(publish(cluster.settings, "trades.fills", [raw for raw, _ in BAD_FILLS]))
        good = [{"trade_id": "G1", "account_id": "ACME", "contract_id": "TSLA-Q2-2026-DELIVERIES", "side": "BUY",
                 "price": 450000, "notional": 1000, "ts": "2026-04-03T00:00:00Z"}]
        cluster.publish([{"title": "a good fill after the bad ones", "topic": "trades.fills", "messages": good}])
        expected = sorted(reason for _, reason in BAD_FILLS)

        def all_dead(outputs):
            dead = [r for r in outputs.values() if r["_topic"] == DEADLETTER]
            done = any(r["_topic"] == REQUIREMENTS and r["cause"]["id"] == "G1" for r in outputs.values())
            return len(dead) >= len(BAD_FILLS) and done

        outputs = cluster.wait_for_outputs(all_dead, what="dead letters and the good fill's requirement")
        dead = [r for r in outputs.values() if r["_topic"] == DEADLETTER]
        assert sorted(r["reason"] for r in dead) == expected
        assert all(r["source"]["topic"] == "trades.fills" and r["source"]["offset"] is not None for r in dead)
        schema = _validator("deadletter")
        for record in dead:
            schema.validate({k: v for k, v in record.items() if k != "_topic"})
        # none of them changed ACME: its only requirements come from valid events
        acme = by_account(outputs, REQUIREMENTS)["ACME"]
        assert {r["cause"]["id"] for r in acme} <= {"M-1", "T-1", "G1"}
        cluster.assert_alive()
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- scale-out
def test_two_workers_publish_what_one_does(bootstrap, tmp_path, clean_run):
    cluster = Cluster(fresh_settings(bootstrap, tmp_path), tmp_path)
    cluster.start_worker()
    cluster.start_worker()
    try:
        outputs = run_phases_and_settle(cluster, PHASES)
        assert all_final(outputs)
        assignments = [p.read_text(errors="replace").count("state loaded") for p in tmp_path.glob("worker-*.log")]
    finally:
        cluster.stop()
    assert outputs == clean_run["outputs"]
    assert sum(1 for n in assignments if n) == 2, f"both workers must own partitions: {assignments}"


# --------------------------------------------------------------------------- crashes
def test_sigkill_mid_stream_then_restart_equals_a_clean_run(bootstrap, tmp_path, clean_run):
    cluster = Cluster(fresh_settings(bootstrap, tmp_path), tmp_path)
    worker = cluster.start_worker()
    rnd = random.Random(20261122)
    kills = {2, 3, 6, 7, 9}
    state = {"worker": worker, "killed": 0}

    async def maybe_kill(phase):
        index = PHASES.index(phase)
        if index in kills:
            import asyncio

            await asyncio.sleep(rnd.uniform(0.0, 0.4))  # fault injection at a random moment, not synchronisation
            cluster.kill(state["worker"])
            state["killed"] += 1
            state["worker"] = cluster.start_worker()

    try:
        cluster.publish(copy.deepcopy(PHASES), after_publish=maybe_kill, timeout_s=120)
        outputs = cluster.settle(timeout_s=120)
        assert all_final(outputs)
        replayed, states = cluster.replayed()
        rows = cluster.table_rows()
    finally:
        cluster.stop()
    assert state["killed"] == len(kills)
    assert outputs == clean_run["outputs"]
    for partition, st in states.items():
        assert _comparable_rows(rows.get(partition, {})) == _comparable_rows(dict(st.rows()))


def test_rocksdb_store_survives_a_restart(bootstrap, tmp_path, clean_run):
    """The docker-compose default: rocksdb:// local state. The restarted worker starts
    from an empty directory and recovers from the changelog: reusing the directory trips
    faust's check of the persisted offset against the changelog's end offset, which the
    embedded broker reports late (on Kafka the directory is reused as usual)."""
    cluster = Cluster(fresh_settings(bootstrap, tmp_path, store="rocksdb://"), tmp_path)
    state = {"worker": cluster.start_worker()}

    async def restart_midway(phase):
        if PHASES.index(phase) == 5:
            from stream.harness.processes import stop_process

            stop_process(state["worker"])
            cluster.workers.remove(state["worker"])
            state["worker"] = cluster.start_worker()

    try:
        cluster.publish(PHASES, after_publish=restart_midway)
        outputs = cluster.settle()
        assert all_final(outputs)
    finally:
        cluster.stop()
    assert any((tmp_path / "data-1").rglob("*.sst")) or any((tmp_path / "data-1").rglob("CURRENT"))
    assert outputs == clean_run["outputs"]


def test_a_group_offset_ahead_of_the_durable_state_is_sought_back(bootstrap, tmp_path):
    """The engine resumes at its own durable state, not at the group's committed offset:
    with the log offsets committed beyond it (and the worker told not to correct them on
    the rebalance), the first record delivered is past the next one to apply, and the
    engine seeks the log back -- nothing is skipped."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream.kafka.clients import client_kwargs

    settings = fresh_settings(bootstrap, tmp_path, fault_injection="skip_resume_commit")
    cluster = Cluster(settings, tmp_path)

    async def commit_ahead() -> None:
        consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=settings.app_id, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(settings.topic(LOG), p) for p in range(settings.partitions)]
            consumer.assign(tps)
            await consumer.commit({tp: 2 for tp in tps})
        finally:
            await consumer.stop()

    asyncio.run(commit_ahead())
    cluster.start_worker()
    try:
        outputs = run_phases_and_settle(cluster, PHASES)
        replayed, _ = cluster.replayed()
        logs = cluster.logs()
    finally:
        cluster.stop()
    assert "seeking the log back to offset 0" in logs
    assert set(outputs) == set(replayed) and all(outputs[i] == r for i, r in replayed.items())


def test_a_hung_rebalance_stops_the_worker_and_the_group_completes(bootstrap, tmp_path, clean_run):
    """The rebalance watch (stream.worker.recovery): a worker whose rebalance hangs in
    faust's callback (KPIMARGIN_FAULT_INJECTION=stall_rebalance, as seen once on three Kafka
    nodes) stops itself with status 70 after twice KPIMARGIN_STALL_TIMEOUT_S without
    progress; a supervisor starts a worker in its place, and every output equals the clean
    run."""
    settings = fresh_settings(bootstrap, tmp_path)
    cluster = Cluster(settings, tmp_path)
    cluster.supervise = True
    cluster.start_worker()
    hung = cluster.start_worker(replace(settings, fault_injection="stall_rebalance", stall_timeout_s=2.0))
    try:
        cluster.publish(copy.deepcopy(PHASES), after_publish=lambda phase: _supervise(cluster), timeout_s=120)
        outputs = cluster.settle(timeout_s=120)
    finally:
        cluster.stop()
    text = (tmp_path / "worker-2.log").read_text(errors="replace")
    assert "fault injection: the rebalance hangs here" in text
    assert hung.returncode == 70 and cluster.restarts == [hung.pid], (hung.returncode, cluster.restarts)
    assert "has made no progress for 4 s" in text
    assert outputs == clean_run["outputs"]


async def _supervise(cluster) -> None:
    cluster.assert_alive()  # restarts a worker that stopped with status 70


def test_a_stalled_changelog_recovery_asks_for_a_rebalance_and_completes(bootstrap, tmp_path, clean_run):
    """The recovery watch (stream.worker.recovery): a worker that takes over a partition
    whose changelog has rows, its first recovery taken for stalled
    (KPIMARGIN_FAULT_INJECTION=stall_recovery), asks the group to rebalance through faust's
    consumer thread; the new generation recovers and every output equals the clean run."""
    settings = fresh_settings(bootstrap, tmp_path)
    cluster = Cluster(settings, tmp_path)
    state = {"worker": cluster.start_worker()}

    async def restart_midway(phase):
        if PHASES.index(phase) == 5:
            cluster.kill(state["worker"])
            state["worker"] = cluster.start_worker(replace(settings, fault_injection="stall_recovery"))

    try:
        cluster.publish(copy.deepcopy(PHASES), after_publish=restart_midway, timeout_s=120)
        outputs = cluster.settle(timeout_s=120)
    finally:
        cluster.stop()
    log = (tmp_path / "worker-2.log").read_text(errors="replace")  # the worker started with the fault
    asked = log.find("asking the group to rebalance")
    assert asked >= 0 and log.find("generation id", asked) > asked, "no rebalance after the stall"
    assert outputs == clean_run["outputs"]
