"""The audit tools on in-memory logs, no broker: the replay comparison, field diffs,
explain, and the same answers however the router cut the log into records."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream.audit.explain import explain, format_explain
from stream.audit.export import TopicMessage
from stream.audit.inputs import load_topics, log_entries
from stream.audit.replay import Filters, field_diffs, run_replay
from stream.core.state import EngineState
from stream.core.timeutil import parse_time_us
from stream.core.topics import CALLS, COLLATERAL, DEADLETTER, FILLS, INPUT_TOPICS, LISTINGS, LOG, REQUIREMENTS, TICKS
from stream.harness.offline import as_records, route_offline
from stream.harness.scenario import load_scenario
from stream.log.ordered_log import apply_entry, encode_entry, encode_record, expand, home_partition, replay, route_batch

from .conftest import TSLA, load_example

PHASES = load_scenario()


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


def _published(entries) -> dict[str, list[TopicMessage]]:
    """What a faithful worker would have published: the replay's requirements and calls."""
    topics = {REQUIREMENTS: [], CALLS: []}
    for _p, _o, out in replay(entries):
        if out.topic in topics:
            topics[out.topic].append(TopicMessage(0, len(topics[out.topic]), None, out.key.encode(), orjson.dumps(out.value)))
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
    topics[REQUIREMENTS] = published[REQUIREMENTS] + [TopicMessage(0, 99, None, None, orjson.dumps(v)) for v in (altered, extra)]
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


def _batched(batch: int) -> list[tuple[int, int, bytes]]:
    """The demo scenario routed like the worker's router, ``batch`` input messages per
    fetch (so records hold many entries when ``batch`` is large)."""
    messages, offsets = [], {}
    for ph in PHASES:
        for m in ph["messages"]:
            offsets[ph["topic"]] = offsets.get(ph["topic"], -1) + 1
            messages.append((ph["topic"], home_partition(ph["topic"], m, 4), offsets[ph["topic"]], orjson.dumps(m)))
    records, next_offset = [], [0] * 4
    for i in range(0, len(messages), batch):
        for p, record in route_batch(messages[i:i + batch], 4, 65_536, 1_000_000)[0]:
            records.append((p, next_offset[p], record))
            next_offset[p] += 1
    return sorted(records)


@pytest.mark.parametrize("batch", [7, 1000])
def test_replay_and_explain_give_the_same_answers_however_the_log_is_batched(batch):
    one_each, batched = _batched(1), _batched(batch)
    assert len(batched) < len(one_each) and len(expand(batched)) == len(expand(one_each))
    published = _published(one_each)
    report = run_replay({LOG: as_records(batched), **published})
    assert report.ok and report.compared == report.recomputed > 20 and report.records == len(batched)
    for account, at in (("GAMMA", "2026-05-01T00:00:00Z"), ("BETA", "2026-04-02T14:00:00Z"), ("DELTA", None)):
        at_us = parse_time_us(at, "at") if at else None
        a, b = explain(expand(one_each), account, at_us), explain(expand(batched), account, at_us)
        for key in ("im", "equity", "excess", "positions", "open_call", "entries_applied", "clock"):
            assert a[key] == b[key], (account, key)
        assert [c["summary"] for c in a["chain"]] == [c["summary"] for c in b["chain"]]
        assert f"#{b['last_log_entry']}" in format_explain(b)


def test_offset_filters_select_whole_records():
    batched = _batched(1000)  # one record per log partition holds the whole scenario
    published = _published(batched)
    topics = {LOG: as_records(batched), **published}
    everything = run_replay(topics).compared
    assert run_replay(topics, Filters(from_offset=0, to_offset=0)).compared == everything
    assert run_replay(topics, Filters(from_offset=1)).compared == 0


def test_bad_entries_of_one_record_get_distinct_dead_letter_ids():
    record = encode_record([b'{"source": 7}', b'{"source": 8}', encode_entry(TICKS, 0, 0, {"ts": "2026-04-02T00:00:00Z"})])
    entries = log_entries([TopicMessage(0, 3, None, None, record)])
    assert [(p, o, i) for p, o, i, _e in entries] == [(0, 3, 0), (0, 3, 1), (0, 3, 2)]
    outputs = [out for _p, _o, out in replay([(0, 3, record)])]
    ids = [o.value["id"] for o in outputs]
    assert len(outputs) == 2 and len(set(ids)) == 2


# --------------------------------------------------------------------------- a log written by an earlier version
OLD_EXPORT = Path(__file__).parent / "corpus" / "demo-export-18380e3"


def test_a_log_written_before_the_layout_change_replays_to_every_published_record():
    """``kpimargin demo`` run and exported (``kpimargin export``) by git 18380e3, before
    ``stream/`` was split into layers: the current code, replaying that ``margin.log``,
    recomputes exactly the requirements and calls that version published -- the log
    format and the engine's numbers did not move."""
    topics = load_topics(INPUT_TOPICS + (LOG, REQUIREMENTS, CALLS, DEADLETTER), str(OLD_EXPORT))
    published = {orjson.loads(r.value)["id"]: orjson.loads(r.value) for t in (REQUIREMENTS, CALLS) for r in topics[t]}
    assert len(published) == 33 and not topics[DEADLETTER]
    report = run_replay(topics)
    assert report.ok and report.published == report.recomputed == report.compared == 33
    states: dict[int, EngineState] = {}
    recomputed = {}
    for p, o, i, entry in log_entries(topics[LOG]):
        for out in apply_entry(states.setdefault(p, EngineState()), p, o, entry, i):
            recomputed.setdefault(out.value["id"], out.value)
    assert recomputed == published  # every id, bit for bit as that version published it
