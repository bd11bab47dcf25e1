"""The ordered log's record format and the router's batching, without a broker.

A log record batches entries only to amortise per-message costs: applying a record is
applying its entries in order, so where the router cut its batches must change no output,
no id and no state.
"""

from __future__ import annotations

import random

import orjson
import pytest

from stream.core.state import EngineState
from stream.core.topics import COLLATERAL, DEADLETTER, FILLS, LISTINGS, LOG, TICKS
from stream.log.ordered_log import (
    BadRecord,
    RecordBuilder,
    apply_parsed,
    apply_record,
    encode_entry,
    encode_record,
    expand,
    home_partition,
    log_partition,
    record_entries,
    replay,
    route_batch,
    route_batch_parsed,
)

from .conftest import TSLA, load_example

WEB = load_example("web_listing.json")
PARTITIONS = 4


def _inputs(n_fills: int, seed: int = 3) -> list[tuple[str, int, int, bytes]]:
    """Listings, a tick, deposits, fills (some invalid), another tick: as the router reads them."""
    rnd = random.Random(seed)
    accounts = [f"A{i}" for i in range(9)]
    offsets: dict[str, int] = {}

    def msg(topic: str, obj) -> tuple[str, int, int, bytes]:
        offsets[topic] = offsets.get(topic, -1) + 1
        partition = home_partition(topic, obj, PARTITIONS)  # keyed by account, as a producer does
        return topic, partition, offsets[topic], obj if isinstance(obj, bytes) else orjson.dumps(obj)

    out = [msg(LISTINGS, TSLA), msg(LISTINGS, WEB), msg(TICKS, {"ts": "2026-04-02T00:00:00Z"})]
    out += [msg(COLLATERAL, {"movement_id": f"M{a}", "account_id": a, "amount": "5000.00", "ts": "2026-04-02T00:00:00Z"})
            for a in accounts]
    for i in range(n_fills):
        contract = rnd.choice((TSLA, WEB))
        price = rnd.uniform(contract["lower"], contract["upper"])
        if i % 17 == 5:
            price = contract["upper"] * 2  # rejected by the engine: price_out_of_range
        fill = {"trade_id": f"T{i}", "account_id": rnd.choice(accounts), "contract_id": contract["contract_id"],
                "side": rnd.choice(("BUY", "SELL")), "price": round(price, 2), "notional": rnd.randint(100, 9000),
                "ts": "2026-04-03T00:00:00Z"}
        out.append(msg(FILLS, b"{broken" if i % 23 == 7 else fill))  # rejected by the router: undecodable
        if i % 20 == 19:
            out.append(msg(TICKS, {"ts": f"2026-04-{4 + i // 20:02d}T00:00:00Z"}))
    return out


def _run(records: list[tuple[int, bytes]]) -> tuple[list, dict[int, EngineState]]:
    offsets = [0] * PARTITIONS
    numbered = []
    for p, record in records:
        numbered.append((p, offsets[p], record))
        offsets[p] += 1
    states: dict[int, EngineState] = {}
    published = replay(numbered, states)
    # the order within each partition is the log's; across partitions there is none
    return [out for _p, _o, out in sorted(published, key=lambda item: item[0])], states


def _rows(states: dict[int, EngineState]) -> dict:
    return {p: orjson.dumps(dict(s.rows()), option=orjson.OPT_SORT_KEYS) for p, s in states.items()}


@pytest.mark.parametrize("batch", [1, 7, 50, 10_000])
def test_where_the_router_cuts_batches_changes_no_output(batch):
    inputs = _inputs(300)
    one_by_one = [route_batch([m], PARTITIONS, 65_536, 1_000_000) for m in inputs]
    expected_out, expected_states = _run([r for records, _ in one_by_one for r in records])
    expected_dead = [d.value for _, dead in one_by_one for d in dead]

    records, dead = [], []
    for i in range(0, len(inputs), batch):
        r, d = route_batch(inputs[i:i + batch], PARTITIONS, 65_536, 1_000_000)
        records += r
        dead += d
    outputs, states = _run(records)
    assert [(o.topic, o.value) for o in outputs] == [(o.topic, o.value) for o in expected_out]
    assert [d.value for d in dead] == expected_dead and dead  # undecodable fills, found by the router
    assert any(o.topic == DEADLETTER and o.value["reason"] == "price_out_of_range" for o in outputs)
    assert _rows(states) == _rows(expected_states)


@pytest.mark.parametrize("batch", [1, 40, 10_000])
def test_applying_the_routers_parsed_inputs_equals_applying_the_log(batch):
    """The worker's hand-off (the router's Parsed inputs applied with apply_parsed) publishes
    exactly what applying the record read back from the log publishes, and leaves the same
    state -- including the entries the engine rejects (price out of range, duplicates)."""
    inputs = _inputs(300)
    inputs += [inputs[10], inputs[11]]  # re-forwarded fills: skipped as already applied
    from_log: dict[int, EngineState] = {}
    handed: dict[int, EngineState] = {}
    offsets = [0] * PARTITIONS
    for i in range(0, len(inputs), batch):
        records, _dead = route_batch_parsed(inputs[i:i + batch], PARTITIONS, 65_536, 1_000_000)
        for p, record, parsed in records:
            assert len(record_entries(record)) == len(parsed)
            expected = apply_record(from_log.setdefault(p, EngineState()), p, offsets[p], record)
            got = [out for item in parsed for out in apply_parsed(handed.setdefault(p, EngineState()), p, item)]
            assert [(o.topic, o.key, o.value) for o in got] == [(o.topic, o.key, o.value) for o in expected]
            offsets[p] += 1
    assert _rows(handed) == _rows(from_log)
    assert sum(offsets) >= len(inputs) // batch and all(st.accounts for st in handed.values())


def test_records_respect_the_size_limit_and_keep_entry_order():
    inputs = _inputs(400)
    limit = 4_000
    records, _dead = route_batch(inputs, PARTITIONS, 65_536, limit)
    assert all(len(r) <= limit for _p, r in records)
    per_partition: dict[int, list] = {}
    for p, r in records:
        per_partition.setdefault(p, []).extend(record_entries(r))
    for p, entries in per_partition.items():
        fills = [e["source"]["offset"] for e in entries if e["source"]["topic"] == FILLS]
        assert fills == sorted(fills)  # each source partition's order is kept
        assert all(log_partition(e["value"]["account_id"], PARTITIONS) == p for e in entries if e["source"]["topic"] == FILLS)
        ticks = [e["source"]["offset"] for e in entries if e["source"]["topic"] == TICKS]
        assert ticks == list(range(len(ticks)))  # every tick reaches every partition, in order


def test_an_entry_too_big_for_a_record_is_dead_lettered_as_oversized():
    # a valid listing whose 3,000 history levels are written 4.5e5: re-encoded as 450000.0,
    # its entry outgrows a record although the message itself is within the input limit
    levels = b",".join(b"4.5e5" if i % 2 else b"4.6e5" for i in range(3000))
    listing = orjson.dumps({**TSLA, "history": []}).replace(b'"history":[]', b'"history":[' + levels + b"]")
    assert len(listing) < 20_000
    records, dead = route_batch([(LISTINGS, 0, 0, listing)], PARTITIONS, 65_536, 20_000)
    assert records == [] and [(d.value["reason"], d.value["raw_bytes"]) for d in dead] == [("oversized", len(listing))]
    records, dead = route_batch([(LISTINGS, 0, 0, listing)], PARTITIONS, 65_536, 40_000)
    assert dead == [] and len(records) == PARTITIONS  # the same listing fits a larger record
    big_tick = orjson.dumps({"ts": "2026-04-02T00:00:00Z", "pad": "x" * 30_000})
    records, dead = route_batch([(TICKS, 0, 0, big_tick)], PARTITIONS, 65_536, 20_000)
    assert records == [] and [(d.value["reason"], d.value["source"]["offset"]) for d in dead] == [("oversized", 0)]


def test_a_single_entry_larger_than_the_limit_alone_would_still_get_a_record():
    builder = RecordBuilder(max_record_bytes=100)
    builder.add([0], b"x" * 10)
    builder.add([0], b"y" * 150)
    builder.add([0], b"z" * 10)
    assert [len(record_entries_raw(r)) for _p, r, _inputs in builder.finish_parsed()] == [1, 1, 1]


def record_entries_raw(record: bytes) -> list[bytes]:
    assert record.startswith(b'{"entries":[') and record.endswith(b"]}")
    return [part for part in record[len(b'{"entries":['):-2].split(b",") if part]


@pytest.mark.parametrize("raw, problem", [
    (b"{not json", "not JSON"),
    (b'{"source": {"topic": "clock.ticks", "partition": 0, "offset": 0}, "value": {"ts": "2026-04-02T00:00:00Z"}}',
     '"entries" list'),
    (b"[1, 2]", '"entries" list'),
])
def test_a_log_message_that_is_not_a_record_is_dead_lettered_against_the_log(raw, problem):
    state = EngineState()
    outputs = apply_record(state, 2, 41, raw)
    assert len(outputs) == 1 and outputs[0].topic == DEADLETTER
    dead = outputs[0].value
    assert dead["source"] == {"topic": LOG, "partition": 2, "offset": 41} and problem in dead["detail"]
    assert state.rows is not None and dict(state.rows()) == dict(EngineState().rows())
    assert isinstance(record_entries(raw)[0], BadRecord)


def test_a_malformed_entry_inside_a_record_does_not_stop_the_others():
    good = encode_entry(TICKS, 0, 0, {"ts": "2026-04-02T00:00:00Z"})
    listing = encode_entry(LISTINGS, 0, 0, TSLA)
    record = encode_record([listing, b'{"source": 7}', good])
    state = EngineState()
    outputs = apply_record(state, 0, 5, record)
    assert [o.value["reason"] for o in outputs] == ["schema_violation"]
    assert outputs[0].value["source"] == {"topic": LOG, "partition": 0, "offset": 5}
    assert state.now_us is not None and TSLA["contract_id"] in state.contracts
    assert [(p, o, i) for p, o, i, _e in expand([(0, 5, record)])] == [(0, 5, 0), (0, 5, 1), (0, 5, 2)]


def test_the_dead_letter_of_a_huge_message_keeps_only_its_head():
    import base64

    from stream.core.messages import DEADLETTER_RAW_MAX_BYTES

    huge = b'{"ts": "' + "é".encode() * 150_000 + b'"}'  # 300,010 bytes, a 2-byte character at the cut
    _records, dead = route_batch([(TICKS, 0, 3, huge)], PARTITIONS, 65_536, 1_000_000)
    record = dead[0].value
    assert record["reason"] == "oversized" and record["raw_bytes"] == len(huge) and record["raw_truncated"] is True
    head = base64.b64decode(record["raw_b64"])
    assert head == huge[:DEADLETTER_RAW_MAX_BYTES]
    assert record["raw"] is not None and huge.decode().startswith(record["raw"]) and len(record["raw"]) > 30_000
    small = route_batch([(TICKS, 0, 4, b"nope")], PARTITIONS, 65_536, 1_000_000)[1][0].value
    assert (small["raw"], small["raw_bytes"], small["raw_truncated"]) == ("nope", 4, False)
