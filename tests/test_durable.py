"""Versioned state rows (stream/durable.py): a batch whose rows landed only in part is
rolled back to the last complete batch, and re-applying the log then reproduces the clean
run exactly -- the property the worker's crash recovery rests on."""

from __future__ import annotations

import itertools

import orjson
import pytest

from stream import durable
from stream.engine import EngineState, row_order
from stream.ordered_log import apply_record, encode_entry, encode_record
from stream.topics import COLLATERAL, FILLS, LISTINGS, SETTLEMENTS, TICKS

from .conftest import TSLA, comparable_rows

CID = TSLA["contract_id"]


def test_encode_split_effective_round_trip():
    row, prev = orjson.dumps({"a": [1, 2, {"b": "x,y}"}]}), orjson.dumps({"a": []})
    stored = durable.encode(41, row, prev)
    assert orjson.loads(stored) == {"v": 41, "n": len(row), "row": {"a": [1, 2, {"b": "x,y}"}]}, "prev": {"a": []}}
    assert durable.split(stored) == (41, row, prev)
    assert durable.effective(stored, 41) == row and durable.effective(stored, 40) == prev
    new = durable.encode(7, row, None)
    assert durable.split(new) == (7, row, None) and durable.effective(new, 6) is None and durable.effective(None, 9) is None
    with pytest.raises(ValueError):
        durable.split(b'{"listing": 1}')


def _batches() -> list[list[bytes]]:
    """Log records of one partition: the listing and deposits, then a batch whose fill
    precedes a tick and the contract's settlement (rows of every kind change in it)."""
    offsets = {t: itertools.count() for t in (LISTINGS, COLLATERAL, FILLS, TICKS, SETTLEMENTS)}

    def entry(topic, value):
        return encode_entry(topic, 0, next(offsets[topic]), value)

    first = [encode_record([entry(LISTINGS, TSLA), entry(TICKS, {"ts": "2026-04-10T00:00:00Z"}),
                            entry(COLLATERAL, {"movement_id": "M", "account_id": "A", "amount": "100000.00",
                                               "ts": "2026-04-10T00:00:00Z"})])]
    second = [encode_record([
        entry(FILLS, {"trade_id": "T1", "account_id": "A", "contract_id": CID, "side": "BUY", "price": 450000,
                      "notional": 10000, "ts": "2026-04-10T01:00:00Z"}),
        entry(FILLS, {"trade_id": "T2", "account_id": "B", "contract_id": CID, "side": "SELL", "price": 455000,
                      "notional": 5000, "ts": "2026-04-10T01:00:00Z"}),
        entry(TICKS, {"ts": "2026-04-22T00:00:00Z"}),
        entry(SETTLEMENTS, {"contract_id": CID, "value": 470000, "ts": "2026-07-02T00:00:00Z"}),
    ])]
    return [first, second]


def _persist(store: dict, state: EngineState, offset: int, durable_offset: int, keep) -> None:
    """What the persister writes for a batch ending at log ``offset``; ``keep`` chooses
    which of the changed rows land (a crash in between loses the others)."""
    keys = sorted(state.touched, key=row_order)
    for key in keys:
        if keep(key, keys):
            row = orjson.dumps(state.row(key))
            store[key] = durable.encode(offset, row, durable.effective(store.get(key), durable_offset))
    state.touched.clear()


def _load(store: dict, meta: int) -> EngineState:
    rows = {k: orjson.loads(r) for k, v in store.items() if (r := durable.effective(v, meta)) is not None}
    return EngineState.from_rows(rows.items())


def _rows(state: EngineState) -> dict:
    return comparable_rows(state.rows())


@pytest.mark.parametrize("landed", ["none", "clock and contracts", "accounts", "every other row", "all but meta"])
def test_a_partly_written_batch_is_rolled_back_and_replayed_exactly(landed):
    batches = _batches()
    clean = EngineState()
    clean_outputs = [o.value for offset, records in enumerate(batches) for r in records
                     for o in apply_record(clean, 0, offset, r)]

    store: dict[str, bytes] = {}
    state = EngineState()
    outputs = [o.value for r in batches[0] for o in apply_record(state, 0, 0, r)]
    _persist(store, state, 0, -1, lambda key, keys: True)  # batch 0 complete: meta = 0
    outputs += [o.value for r in batches[1] for o in apply_record(state, 0, 1, r)]  # outputs published
    choose = {
        "none": lambda key, keys: False,
        "clock and contracts": lambda key, keys: not key.startswith("account:"),
        "accounts": lambda key, keys: key.startswith("account:"),
        "every other row": lambda key, keys: keys.index(key) % 2 == 0,
        "all but meta": lambda key, keys: True,
    }[landed]
    _persist(store, state, 1, 0, choose)  # ... and the worker dies before batch 1's meta

    recovered = _load(store, meta=0)  # exactly the state after batch 0
    replayed = [o.value for r in batches[1] for o in apply_record(recovered, 0, 1, r)]
    assert outputs == clean_outputs  # what was published before the crash
    assert replayed == clean_outputs[len(clean_outputs) - len(replayed):]  # published again: same ids, same content
    assert _rows(recovered) == _rows(clean)
    assert replayed and any(o.get("cause", {}).get("topic") == SETTLEMENTS for o in replayed)


def test_a_second_crash_in_the_same_place_still_rolls_back_to_the_last_meta():
    batches = _batches()
    store: dict[str, bytes] = {}
    state = EngineState()
    for r in batches[0]:
        apply_record(state, 0, 0, r)
    _persist(store, state, 0, -1, lambda key, keys: True)
    for attempt in range(2):  # crash twice while writing batch 1, each time a different half
        state = _load(store, meta=0)
        for r in batches[1]:
            apply_record(state, 0, 1, r)
        _persist(store, state, 1, 0, lambda key, keys, a=attempt: keys.index(key) % 2 == a)
    clean = EngineState()
    for offset, records in enumerate(batches):
        for r in records:
            apply_record(clean, 0, offset, r)
    state = _load(store, meta=0)
    for r in batches[1]:
        apply_record(state, 0, 1, r)
    assert _rows(state) == _rows(clean)
