"""The bad-input corpus: every malformed or inapplicable message, on every input topic,
reaches the dead-letter topic with its specific reason and changes no state.

``OfflineProcessor`` runs exactly the worker's logic without Kafka -- the router
(:func:`route_batch`) then the engine per log partition (:func:`apply_record`) -- so the
fixed corpus and the generated messages are checked quickly and exhaustively; one
integration test then sends the whole corpus through a real broker and worker.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
from collections import Counter
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.state import EngineState, position_of
from stream.core.topics import COLLATERAL, DEADLETTER, FILLS, FLASH, INPUT_TOPICS, LISTINGS, SETTLEMENTS, TICKS
from stream.log.ordered_log import apply_record, home_partition, route_batch

from .conftest import TSLA, load_example

CORPUS = [orjson.loads(line) for line in (Path(__file__).parent / "corpus" / "bad_inputs.jsonl").read_bytes().splitlines()]
MAX_BYTES = 65_536
RECORD_BYTES = 4 * MAX_BYTES
SETTLED = {
    "contract_id": "OLD-SETTLED-2026", "kpi": "settled before the test starts", "lower": 50, "upper": 150,
    "listing_time": "2026-01-01T00:00:00Z", "settlement_time": "2026-04-01T00:00:00Z",
    "history": [90, 95, 97, 101], "params": {},
}
KNOWN_REASONS = {
    "undecodable", "oversized", "schema_violation", "invalid_listing", "unknown_contract", "contract_settled",
    "out_of_range", "price_out_of_range", "non_positive_notional", "fill_before_listing",
    "fill_after_settlement_time", "duplicate_conflict", "stale_flash", "tick_out_of_order",
}


def raw_bytes(item: dict) -> bytes:
    return base64.b64decode(item["raw_b64"]) if "raw_b64" in item else item["raw"].encode()


class OfflineProcessor:
    """The worker's route + apply, with P log partitions, no Kafka."""

    def __init__(self, partitions: int = 4):
        self.partitions = partitions
        self.states = {p: EngineState() for p in range(partitions)}
        self.offsets = {t: itertools.count() for t in INPUT_TOPICS}
        self.log_offsets = {p: itertools.count() for p in range(partitions)}

    def feed(self, topic: str, raw: bytes) -> list:
        """Route and apply one message, published to the partition its key gives (keyed as SPEC §4 says)."""
        records, outputs = route_batch([(topic, self.partition(topic, raw), next(self.offsets[topic]), raw)],
                                       self.partitions, MAX_BYTES, RECORD_BYTES)
        for p, record in records:
            outputs.extend(apply_record(self.states[p], p, next(self.log_offsets[p]), record))
        return outputs

    def partition(self, topic: str, raw: bytes) -> int:
        try:
            return home_partition(topic, orjson.loads(raw), self.partitions)
        except orjson.JSONDecodeError:
            return 0

    def feed_obj(self, topic: str, obj: dict) -> list:
        outputs = self.feed(topic, orjson.dumps(obj))
        assert not [o for o in outputs if o.topic == DEADLETTER], outputs
        return outputs

    def snapshot(self) -> dict:
        """Every row of every partition, without the clock row's ``taken`` marks (which source
        messages each log partition has taken in: delivery bookkeeping, which a rejected
        message does move, so that a re-forwarded copy is not rejected a second time)."""
        def strip(key: str, row):
            return {k: v for k, v in row.items() if k != "taken"} if key == "clock" else row

        return {p: sorted(orjson.dumps(strip(key, row), option=orjson.OPT_SORT_KEYS) for key, row in state.rows())
                for p, state in self.states.items()}


def baseline() -> OfflineProcessor:
    proc = OfflineProcessor()
    for listing in (TSLA, load_example("web_listing.json"), SETTLED):
        proc.feed_obj(LISTINGS, listing)
    proc.feed_obj(SETTLEMENTS, {"contract_id": SETTLED["contract_id"], "value": 120, "ts": "2026-04-01T00:00:00Z"})
    proc.feed_obj(TICKS, {"ts": "2026-04-05T00:00:00Z"})
    proc.feed_obj(FLASH, {"contract_id": TSLA["contract_id"], "as_of": "2026-04-05T00:00:00Z", "value": 415000, "coverage": 0.1})
    proc.feed_obj(FILLS, {"trade_id": "T-1", "account_id": "ACME", "contract_id": TSLA["contract_id"], "side": "BUY",
                          "price": 460000, "notional": 10000, "ts": "2026-04-05T00:00:00Z"})
    proc.feed_obj(COLLATERAL, {"movement_id": "M-1", "account_id": "ACME", "amount": "6000.00", "ts": "2026-04-05T00:00:00Z"})
    return proc


BASE = baseline()


def test_corpus_covers_every_input_topic_and_many_reasons():
    topics = Counter(item["topic"] for item in CORPUS)
    assert set(topics) == set(INPUT_TOPICS) and min(topics.values()) >= 8
    assert len({item["reason"] for item in CORPUS}) >= 12


@pytest.mark.parametrize("item", CORPUS, ids=[f"{i['topic']}:{i['note']}" for i in CORPUS])
def test_each_bad_message_is_dead_lettered_with_its_reason_and_changes_nothing(item):
    proc = copy.deepcopy(BASE)
    before = proc.snapshot()
    outputs = proc.feed(item["topic"], raw_bytes(item))
    assert [o.topic for o in outputs] == [DEADLETTER], outputs
    record = outputs[0].value
    assert record["reason"] == item["reason"], record
    assert record["source"]["topic"] == item["topic"] and record["detail"]
    assert proc.snapshot() == before
    # a re-forwarded copy (same source offset) is skipped, not rejected again
    offset = record["source"]["offset"]
    again, _dead = route_batch([(item["topic"], record["source"]["partition"], offset, raw_bytes(item))], proc.partitions,
                               MAX_BYTES, RECORD_BYTES)
    assert [out for p, rec in again for out in apply_record(proc.states[p], p, next(proc.log_offsets[p]), rec)] == []
    # the partition keeps flowing: a valid event right after is applied
    good = proc.feed(COLLATERAL, orjson.dumps({"movement_id": "OK", "account_id": "ACME", "amount": "1.00", "ts": "2026-04-06T00:00:00Z"}))
    assert good and good[0].topic != DEADLETTER


def test_corpus_counts(summary):
    counts = Counter((item["topic"], item["reason"]) for item in CORPUS)
    summary(f"bad-input corpus: {len(CORPUS)} messages, {len({r for _, r in counts})} reasons, {len(INPUT_TOPICS)} topics: "
            + ", ".join(f"{topic} {reason} {n}" for (topic, reason), n in sorted(counts.items())))


# --------------------------------------------------------------------------- generated
VALID = {
    LISTINGS: dict(TSLA, contract_id="GEN-2026"),
    FLASH: {"contract_id": TSLA["contract_id"], "as_of": "2026-04-06T00:00:00Z", "value": 420000, "coverage": 0.2},
    SETTLEMENTS: {"contract_id": TSLA["contract_id"], "value": 420000, "ts": "2026-07-02T00:00:00Z"},
    TICKS: {"ts": "2026-04-06T00:00:00Z"},
    FILLS: {"trade_id": "GEN", "account_id": "ACME", "contract_id": TSLA["contract_id"], "side": "SELL",
            "price": 450000, "notional": 100, "ts": "2026-04-06T00:00:00Z"},
    COLLATERAL: {"movement_id": "GEN", "account_id": "ACME", "amount": "10.00", "ts": "2026-04-06T00:00:00Z"},
}
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    # decimal strings with any exponent, times with odd offsets and years: the hostile kinds
    st.from_regex(r"\A[+-]?[0-9]{0,3}(\.[0-9]{0,12})?([eE][+-]?[0-9]{1,12})?\Z"),
    st.from_regex(r"\A[0-9]{4}-[01][0-9]-[0-3][0-9](T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2}))?\Z"),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=8)
deep = st.integers(min_value=17, max_value=900).map(lambda n: json.loads("[" * n + "]" * n))


@st.composite
def mutated(draw):
    topic = draw(st.sampled_from(INPUT_TOPICS))
    msg = dict(VALID[topic])
    how = draw(st.sampled_from(["drop", "replace", "add", "bytes"]))
    if how == "bytes":
        return topic, draw(st.binary(max_size=200))
    key = draw(st.sampled_from(sorted(msg)))
    if how == "drop":
        del msg[key]
    elif how == "replace":
        msg[key] = draw(st.one_of(json_values, deep))
    else:
        msg[draw(st.text(min_size=1, max_size=8))] = draw(st.one_of(json_values, deep))
    # the standard library writes NaN, Infinity and integers beyond 64 bits: all must be handled
    return topic, json.dumps(msg).encode()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_generated_bad_input_never_crashes_and_never_half_applies(case):
    topic, raw = case
    proc = copy.deepcopy(BASE)
    before = proc.snapshot()
    outputs = proc.feed(topic, raw)  # must not raise, whatever the bytes
    dead = [o for o in outputs if o.topic == DEADLETTER]
    if dead:
        assert len(dead) == 1 and dead[0].value["reason"] in KNOWN_REASONS
        assert len(outputs) == 1 and proc.snapshot() == before


def test_the_same_fill_many_times_counts_once():
    proc = copy.deepcopy(BASE)
    fill = orjson.dumps(dict(VALID[FILLS], trade_id="DUP"))
    first = proc.feed(FILLS, fill)
    assert first
    for _ in range(25):  # redelivered by the matching engine at new offsets
        assert proc.feed(FILLS, fill) == []
    state = next(s for s in proc.states.values() if "ACME" in s.accounts)
    assert position_of(state, state.accounts["ACME"], TSLA["contract_id"]).q == 10000 - 100


# --------------------------------------------------------------------------- on a broker
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_corpus_through_a_real_worker(tmp_path, broker):
    from stream.kafka.clients import publish

    from .streaming_support import Cluster, fresh_settings

    cluster = Cluster(fresh_settings(broker, tmp_path, max_message_bytes=MAX_BYTES), tmp_path)
    cluster.start_worker()
    try:
        setup = [
            {"title": "listings", "topic": LISTINGS, "messages": [TSLA, load_example("web_listing.json"), SETTLED]},
            {"title": "settle the old one", "topic": SETTLEMENTS, "messages": [{"contract_id": SETTLED["contract_id"], "value": 120, "ts": "2026-04-01T00:00:00Z"}]},
            {"title": "tick", "topic": TICKS, "messages": [{"ts": "2026-04-05T00:00:00Z"}]},
            {"title": "flash", "topic": FLASH, "messages": [{"contract_id": TSLA["contract_id"], "as_of": "2026-04-05T00:00:00Z", "value": 415000, "coverage": 0.1}]},
            {"title": "fill", "topic": FILLS, "messages": [{"trade_id": "T-1", "account_id": "ACME", "contract_id": TSLA["contract_id"], "side": "BUY", "price": 460000, "notional": 10000, "ts": "2026-04-05T00:00:00Z"}]},
            {"title": "deposit", "topic": COLLATERAL, "messages": [{"movement_id": "M-1", "account_id": "ACME", "amount": "6000.00", "ts": "2026-04-05T00:00:00Z"}]},
        ]
        cluster.publish(setup)
        for topic in INPUT_TOPICS:
            asyncio.run(publish(cluster.settings, topic, [raw_bytes(i) for i in CORPUS if i["topic"] == topic], skip_blank=False))
        cluster.publish([{"title": "a good deposit after it all", "topic": COLLATERAL, "messages": [
            {"movement_id": "OK", "account_id": "ACME", "amount": "1.00", "ts": "2026-04-06T00:00:00Z"}]}])

        def done(outputs):
            dead = [r for r in outputs.values() if r["_topic"] == DEADLETTER]
            ok = any(r["_topic"] != DEADLETTER and r["cause"]["id"] == "OK" for r in outputs.values())
            return len(dead) >= len(CORPUS) and ok

        outputs = cluster.wait_for_outputs(done, what="the corpus in the dead-letter topic")
    finally:
        cluster.stop()
    dead = sorted((r["source"]["topic"], r["reason"]) for r in outputs.values() if r["_topic"] == DEADLETTER)
    assert dead == sorted((i["topic"], i["reason"]) for i in CORPUS)
