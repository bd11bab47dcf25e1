"""The account engine (SPEC §3): requirements, calls, settlement, idempotency, rejection."""

from __future__ import annotations

import copy
import random
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import model
from stream.core.engine import apply
from stream.core.errors import Rejected
from stream.core.money import cents_to_decimal, cents_up
from stream.core.messages import Cause, parse
from stream.core.requirements import account_risk
from stream.core.state import EngineState, position_of, seen_entry, seen_row, seen_ts_us
from stream.core.topics import CALLS, COLLATERAL, FILLS, FLASH, REQUIREMENTS, SETTLEMENTS, TICKS

from .conftest import TSLA, Driver

CID = TSLA["contract_id"]


def _reqs(outputs):
    return [o.value for o in outputs if o.topic == REQUIREMENTS]


def _calls(outputs):
    return [o.value for o in outputs if o.topic == CALLS]


def test_fill_publishes_requirement_and_issues_call(driver):
    driver.list(TSLA)
    driver.tick("2026-04-25T00:00:00Z")
    out = driver.fill("T1", "ACME", CID, "BUY", 460000, 10000)
    (req,) = _reqs(out)
    assert req["im"] == "5333.34"  # 5333.333... rounded up to the cent
    assert req["equity"] == "0.00" and req["excess"] == "-5333.34"
    assert req["as_of"] == "2026-04-25T00:00:00Z"
    assert req["cause"] == {"topic": FILLS, "partition": 0, "offset": 0, "id": "T1"}
    assert [p["contract_id"] for p in req["positions"]] == [CID]
    (call,) = _calls(out)
    assert call["status"] == "ISSUED" and call["shortfall"] == "5333.34"


def test_deposit_satisfies_and_withdrawal_reissues(driver):
    driver.list(TSLA)
    driver.tick("2026-04-25T00:00:00Z")
    issued = _calls(driver.fill("T1", "ACME", CID, "BUY", 460000, 10000))[0]
    out = driver.deposit("M1", "ACME", "1000.00")
    (updated,) = _calls(out)
    assert updated["status"] == "UPDATED" and updated["shortfall"] == "4333.34"
    assert updated["call_id"] == issued["call_id"]
    out = driver.deposit("M2", "ACME", 5000)
    (satisfied,) = _calls(out)
    assert satisfied["status"] == "SATISFIED" and satisfied["call_id"] == issued["call_id"]
    assert _reqs(out)[0]["excess"] == "666.66"
    out = driver.deposit("M3", "ACME", "-1000")
    (reissued,) = _calls(out)
    assert reissued["status"] == "ISSUED" and reissued["call_id"] != issued["call_id"]


def test_update_threshold_is_configurable(tsla):
    from stream.core.state import EngineConfig

    d = Driver(EngineState(config=EngineConfig(call_update_threshold=Decimal("500"))))
    d.list(tsla)
    d.tick("2026-04-25T00:00:00Z")
    d.fill("T1", "ACME", CID, "BUY", 460000, 10000)
    assert _calls(d.deposit("M1", "ACME", "100")) == []  # shortfall moved 100 < 500
    assert _reqs(d.outputs)[-1]["equity"] == "100.00"  # the requirement still moves
    assert _calls(d.deposit("M2", "ACME", "600"))[0]["status"] == "UPDATED"


def test_ticks_grow_convergence_until_call_near_settlement(web):
    d = Driver()
    d.list(web)
    d.tick("2026-04-02T00:00:00Z")
    d.fill("T1", "ACME", web["contract_id"], "BUY", 124, 50000, ts="2026-04-02T00:00:00Z")
    d.deposit("M1", "ACME", "20000")
    assert _calls(d.outputs)[-1]["status"] == "SATISFIED"
    start = len(d.outputs)
    for day in ("2026-04-20", "2026-05-10", "2026-05-25", "2026-06-01", "2026-06-04"):
        d.tick(f"{day}T00:00:00Z")
    ims = [Decimal(r["im"]) for r in _reqs(d.outputs[start:])]
    assert ims == sorted(ims) and len(ims) >= 3
    assert ims[-1] == Decimal("27500.00")  # max_loss = 50000 * (124 - 80) / 80: the cap binds
    calls = _calls(d.outputs[start:])
    assert calls[0]["status"] == "ISSUED" and calls[0]["as_of"] == "2026-05-10T00:00:00Z"
    assert {c["status"] for c in calls[1:]} == {"UPDATED"}


def test_settlement_moves_pnl_to_equity_and_im_to_zero(driver):
    driver.list(TSLA)
    driver.fill("T1", "ACME", CID, "BUY", 460000, 10000)
    driver.fill("T2", "BETA", CID, "SELL", 460000, 10000)
    out = driver.send(SETTLEMENTS, {"contract_id": CID, "value": 400000, "ts": "2026-07-02T00:00:00Z"})
    reqs = {r["account_id"]: r for r in _reqs(out)}
    # BUY 10000 at 460000 settles at 400000: P&L = 10000 * (400000 - 460000) / 300000 = -2000
    assert reqs["ACME"]["equity"] == "-2000.00" and reqs["ACME"]["im"] == "0.00"
    assert reqs["BETA"]["equity"] == "2000.00" and reqs["BETA"]["positions"] == []
    with pytest.raises(Rejected) as info:
        driver.fill("T3", "ACME", CID, "BUY", 460000, 10)
    assert info.value.reason == "contract_settled"


def test_settlement_clamps_to_range(driver):
    driver.list(TSLA)
    driver.fill("T1", "ACME", CID, "SELL", 310000, 30000)
    out = driver.send(SETTLEMENTS, {"contract_id": CID, "value": 100000, "ts": "2026-07-02T00:00:00Z"})
    assert _reqs(out)[0]["equity"] == "1000.00"  # clamped to 300000: 30000 * 10000 / 300000


def test_flash_remargins_every_holder(driver, web):
    driver.list(web)
    driver.fill("T1", "A", web["contract_id"], "BUY", 124, 50000, ts="2026-04-02T00:00:00Z")
    driver.fill("T2", "B", web["contract_id"], "SELL", 124, 20000, ts="2026-04-02T00:00:00Z")
    driver.fill("T3", "C", web["contract_id"], "BUY", 120, 1000, ts="2026-04-02T00:00:00Z")
    before = {a: acc.published_im_cents for a, acc in driver.state.accounts.items()}
    out = driver.send(FLASH, {"contract_id": web["contract_id"], "as_of": "2026-04-20T00:00:00Z", "value": 100, "coverage": 0.5})
    after = {a: cents_up(account_risk(driver.state, acc)[0]) for a, acc in driver.state.accounts.items()}
    moved = sorted(a for a in before if before[a] != after[a])
    assert moved == ["A", "C"]  # B is short: its beta floor binds before and after the flash
    assert sorted(r["account_id"] for r in _reqs(out)) == moved
    assert all(r["cause"]["topic"] == FLASH for r in _reqs(out))
    with pytest.raises(Rejected) as info:  # an older flash is stale
        driver.send(FLASH, {"contract_id": web["contract_id"], "as_of": "2026-04-19T00:00:00Z", "value": 130, "coverage": 0.4})
    assert info.value.reason == "stale_flash"


@pytest.mark.parametrize(
    "msg, reason",
    [
        ({"contract_id": "NOPE"}, "unknown_contract"),
        ({"price": 600000.01}, "price_out_of_range"),
        ({"price": 299999}, "price_out_of_range"),
        ({"notional": 0}, "non_positive_notional"),
        ({"notional": -5}, "non_positive_notional"),
        ({"side": "HOLD"}, "schema_violation"),
        ({"price": "abc"}, "schema_violation"),
        ({"ts": "2025-12-01T00:00:00Z"}, "fill_before_listing"),
        ({"trade_id": None}, "schema_violation"),
    ],
)
def test_rejected_fill_changes_nothing(driver, msg, reason):
    driver.list(TSLA)
    driver.fill("T1", "ACME", CID, "BUY", 460000, 10000)
    before = sorted(driver.state.rows())
    fill = {"trade_id": "T9", "account_id": "ACME", "contract_id": CID, "side": "BUY", "price": 460000,
            "notional": 10, "ts": "2026-04-20T00:00:00Z", **msg}
    with pytest.raises(Rejected) as info:
        driver.send(FILLS, fill)
    assert info.value.reason == reason
    assert sorted(driver.state.rows()) == before


def test_duplicate_ids(driver):
    driver.list(TSLA)
    first = driver.fill("T1", "ACME", CID, "BUY", 460000, 10000)
    assert first
    assert driver.fill("T1", "ACME", CID, "BUY", 460000, 10000) == []  # identical: ignored
    with pytest.raises(Rejected) as info:
        driver.fill("T1", "ACME", CID, "BUY", 460000, 20000)
    assert info.value.reason == "duplicate_conflict" and info.value.field == "trade_id"
    driver.deposit("M1", "ACME", 10)
    with pytest.raises(Rejected) as info:
        driver.deposit("M1", "ACME", 11)
    assert info.value.field == "movement_id"
    assert account_risk(driver.state, driver.state.accounts["ACME"])[1][0]["q"] == 10000.0


def test_an_id_is_identified_within_its_account(driver):
    """The dedup key is (account_id, trade_id): an exchange gives the buyer's and the
    seller's fill of one trade the same trade_id, and both must be applied."""
    driver.list(TSLA)
    assert driver.fill("X1", "BUYER", CID, "BUY", 460000, 10000)
    assert driver.fill("X1", "SELLER", CID, "SELL", 460000, 10000)
    assert driver.fill("X1", "BUYER", CID, "BUY", 460000.0, "10000.00") == []  # the same content, spelled otherwise
    with pytest.raises(Rejected) as info:
        driver.fill("X1", "SELLER", CID, "SELL", 460001, 10000)
    assert info.value.reason == "duplicate_conflict"
    q = {a: account_risk(driver.state, driver.state.accounts[a])[1][0]["q"] for a in ("BUYER", "SELLER")}
    assert q == {"BUYER": 10000.0, "SELLER": -10000.0}


def test_tick_back_in_time_is_rejected(driver):
    driver.tick("2026-04-25T00:00:00Z")
    assert driver.tick("2026-04-25T00:00:00Z") == []
    with pytest.raises(Rejected) as info:
        driver.tick("2026-04-24T00:00:00Z")
    assert info.value.reason == "tick_out_of_order"


def test_relisting_with_other_terms_is_a_conflict(driver):
    driver.list(TSLA)
    assert driver.list(TSLA) == []
    with pytest.raises(Rejected) as info:
        driver.list({**TSLA, "upper": 700000})
    assert info.value.reason == "duplicate_conflict"


def test_money_is_exact(driver):
    driver.list(TSLA)
    for i in range(10):
        driver.deposit(f"M{i}", "ACME", 0.1)
    assert driver.state.accounts["ACME"].equity_cents == 100  # ten times 0.1, exactly
    with pytest.raises(Rejected):
        driver.deposit("M99", "ACME", "0.001")


# --------------------------------------------------------------------------- determinism
SCENARIO = [
    (TICKS, {"ts": "2026-04-02T00:00:00Z"}),
    (FILLS, {"trade_id": "T1", "account_id": "A", "contract_id": CID, "side": "BUY", "price": 460000, "notional": 10000, "ts": "2026-04-02T00:00:00Z"}),
    (FILLS, {"trade_id": "T2", "account_id": "B", "contract_id": CID, "side": "SELL", "price": 455000, "notional": 25000, "ts": "2026-04-02T00:00:00Z"}),
    (COLLATERAL, {"movement_id": "M1", "account_id": "A", "amount": "6000", "ts": "2026-04-02T00:00:00Z"}),
    (FILLS, {"trade_id": "T3", "account_id": "A", "contract_id": "SHOP-WEB-2026-05", "side": "BUY", "price": 124, "notional": 50000, "ts": "2026-04-03T00:00:00Z"}),
    (FILLS, {"trade_id": "T4", "account_id": "B", "contract_id": "SHOP-WEB-2026-05", "side": "SELL", "price": 125, "notional": 9000, "ts": "2026-04-03T00:00:00Z"}),
    (FLASH, {"contract_id": CID, "as_of": "2026-05-01T00:00:00Z", "value": 420000, "coverage": 0.3}),
    (TICKS, {"ts": "2026-05-02T00:00:00Z"}),
    (COLLATERAL, {"movement_id": "M2", "account_id": "B", "amount": 40000.5, "ts": "2026-05-02T00:00:00Z"}),
    (TICKS, {"ts": "2026-06-30T00:00:00Z"}),
    (SETTLEMENTS, {"contract_id": "SHOP-WEB-2026-05", "value": 131.5, "ts": "2026-06-05T00:00:00Z"}),
    (SETTLEMENTS, {"contract_id": CID, "value": 401234, "ts": "2026-07-02T00:00:00Z"}),
]


def _run(events, state=None, web=None):
    d = Driver(state)
    d.list(TSLA)
    d.list(web)
    for topic, msg in events:
        d.send(topic, msg)
    return d


def test_same_log_same_outputs_bit_for_bit(web):
    a, b = _run(SCENARIO, web=web), _run(copy.deepcopy(SCENARIO), web=web)
    assert [o.value for o in a.outputs] == [o.value for o in b.outputs]
    assert len({o.value["id"] for o in a.outputs}) == len(a.outputs)


def test_applying_every_event_twice_equals_once(web):
    once = _run(SCENARIO, web=web)
    d = Driver()
    d.list(TSLA)
    d.list(web)
    for topic, msg in SCENARIO:
        offset = next(d.offsets[topic])
        d.send(topic, msg, offset=offset)
        assert d.send(topic, msg, offset=offset) == []  # a re-delivery is a no-op
    assert [o.value for o in d.outputs] == [o.value for o in once.outputs]
    assert sorted(d.state.rows()) == sorted(once.state.rows())


def test_state_round_trips_through_rows(web):
    full = _run(SCENARIO, web=web)
    half = _run(SCENARIO[:6], web=web)
    restored = EngineState.from_rows(list(half.state.rows()))
    d = Driver(restored)
    d.offsets = half.offsets
    for topic, msg in SCENARIO[6:]:
        d.send(topic, msg)
    tail = [o.value for o in full.outputs][len(half.outputs):]
    assert [o.value for o in d.outputs] == tail


fill_lists = st.lists(
    st.tuples(st.sampled_from(["BUY", "SELL"]), st.integers(300000, 600000), st.integers(1, 10**6)),
    min_size=1, max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(fill_lists, st.randoms(use_true_random=False))
def test_fill_order_changes_neither_position_nor_im(fills, rnd):
    def run(order):
        d = Driver()
        d.list(TSLA)
        d.tick("2026-04-25T00:00:00Z")
        for i in order:
            side, price, notional = fills[i]
            d.fill(f"T{i}", "ACME", CID, side, price, notional)
        account = d.state.accounts["ACME"]
        return position_of(d.state, account, CID), account_risk(d.state, account)[0]

    order = list(range(len(fills)))
    shuffled = order[:]
    rnd.shuffle(shuffled)
    (p1, im1), (p2, im2) = run(order), run(shuffled)
    assert (p1.q, p1.a) == (p2.q, p2.a)
    assert im1 == im2


def test_vectorised_fanout_equals_per_account_path(web):
    d = _run(SCENARIO[:9], web=web)
    rnd = random.Random(7)
    for i in range(200):
        contract = rnd.choice([CID, "SHOP-WEB-2026-05"])
        price = rnd.choice([310000, 455000, 590000]) if contract == CID else rnd.choice([81, 124, 159])
        d.fill(f"X{i}", f"ACC{i % 37}", contract, rnd.choice(["BUY", "SELL"]), price, rnd.randint(1, 10**5),
               ts="2026-05-03T00:00:00Z")
    before = {a: acc.published_im_cents for a, acc in d.state.accounts.items()}
    out = d.tick("2026-06-01T00:00:00Z")
    moved = {a for a, acc in d.state.accounts.items() if acc.published_im_cents != before[a]}
    # every row's components came from the tick's vectorised pass
    assert all(set(c.book.versions) == {c.version} for c in d.state.contracts.values())
    assert len(moved) > 10 and {r["account_id"] for r in _reqs(out)} == moved
    for req in _reqs(out):
        total, positions = account_risk(d.state, d.state.accounts[req["account_id"]])
        assert req["im"] == str(cents_to_decimal(cents_up(total)))
        assert req["positions"] == positions
        account = d.state.accounts[req["account_id"]]
        for got in req["positions"]:  # the vectorised pass's dicts, bit for bit the scalar formula's
            contract, position = d.state.contracts[got["contract_id"]], position_of(d.state, account, got["contract_id"])
            scalar = model.position_risk_dict(contract.contract_id, position.q_float, position.a_float, contract.rv,
                                              contract.tau, contract.conv_f)
            assert orjson.dumps(got) == orjson.dumps(scalar)


def test_fill_parse_rejects_undecodable():
    from stream.core.messages import parse_bytes

    with pytest.raises(Rejected) as info:
        parse_bytes(FILLS, b"\xff{not json")
    assert info.value.reason == "undecodable"
    with pytest.raises(Rejected) as info:
        parse(FILLS, {"trade_id": "T", "account_id": "A", "contract_id": CID, "side": "BUY", "price": float("nan"), "notional": 1, "ts": "2026-04-02T00:00:00Z"})
    assert info.value.field == "price"


def test_cause_none_offset_still_applies(driver):
    driver.list(TSLA)
    event = parse(FILLS, {"trade_id": "T1", "account_id": "A", "contract_id": CID, "side": "BUY", "price": 460000, "notional": 1, "ts": "2026-04-02T00:00:00Z"})
    _, out = apply(driver.state, event, Cause("api", 0, None, "T1"))
    assert out


def test_listing_order_does_not_change_outputs(web):
    """Two routers may put listings into a partition in either order: outputs must not care."""
    def run(first, second):
        d = Driver()
        d.list(first)
        d.list(second)
        for topic, msg in SCENARIO:
            d.send(topic, msg)
        return [o.value for o in d.outputs]

    assert run(TSLA, web) == run(web, TSLA)


# --------------------------------------------------------------------------- dedup horizon
def _day(d: int) -> str:
    return f"2026-04-{d:02d}T00:00:00Z"


def test_ids_are_forgotten_after_the_horizon_and_older_events_are_rejected(driver):
    """Memory is bounded by the horizon; exact dedup holds for every event applied."""
    driver.list(TSLA)
    driver.tick(_day(2))
    driver.fill("T1", "ACME", CID, "BUY", 460000, 1000, ts=_day(2))
    driver.deposit("M1", "ACME", 100, ts=_day(2))
    for day in range(3, 30):
        driver.tick(_day(day))
        driver.fill(f"T{day}", "ACME", CID, "BUY", 460000, 1000, ts=_day(day))
        seen = driver.state.accounts["ACME"].seen
        assert len(seen) <= 8 + 1  # the last 7 days (plus today) of fills, nothing older
        assert all(seen_ts_us(e) >= driver.state.now_us - 7 * 86_400_000_000 for e in seen.values())
    assert "t:T1" not in seen and "m:M1" not in seen
    before = sorted(driver.state.rows())
    q_before = position_of(driver.state, driver.state.accounts["ACME"], CID).q
    for resend in (lambda: driver.fill("T1", "ACME", CID, "BUY", 460000, 1000, ts=_day(2)),  # forgotten duplicate
                   lambda: driver.deposit("M1", "ACME", 100, ts=_day(2)),
                   lambda: driver.fill("LATE", "ACME", CID, "BUY", 460000, 1000, ts=_day(21))):  # new but too late
        with pytest.raises(Rejected) as info:
            resend()
        assert info.value.reason == "outside_dedup_horizon" and info.value.field == "ts"
    assert sorted(driver.state.rows()) == before and position_of(driver.state, driver.state.accounts["ACME"], CID).q == q_before
    # within the horizon a duplicate is still recognised
    assert driver.fill("T25", "ACME", CID, "BUY", 460000, 1000, ts=_day(25)) == []
    with pytest.raises(Rejected) as info:
        driver.fill("T25", "ACME", CID, "BUY", 460000, 999, ts=_day(25))
    assert info.value.reason == "duplicate_conflict"


def test_no_horizon_remembers_every_id():
    from stream.core.state import EngineConfig

    driver = Driver(EngineState(config=EngineConfig(dedup_horizon_us=None)))
    driver.list(TSLA)
    for day in range(2, 30):
        driver.tick(_day(day))
        driver.fill(f"T{day}", "ACME", CID, "BUY", 460000, 1000, ts=_day(2))
    assert len(driver.state.accounts["ACME"].seen) == 28
    assert driver.fill("T2", "ACME", CID, "BUY", 460000, 1000, ts=_day(2)) == []


def test_pruned_state_round_trips_and_replays_identically(web):
    """Pruning happens at deterministic points: a state rebuilt from rows mid-way and fed the
    rest of the log ends with the same rows and outputs as the uninterrupted run."""
    def events():
        yield TICKS, {"ts": _day(2)}
        for day in range(2, 24):
            yield TICKS, {"ts": _day(day)}
            for i in range(5):
                yield FILLS, {"trade_id": f"W{day}-{i}", "account_id": f"A{i % 3}", "contract_id": web["contract_id"],
                              "side": "BUY" if i % 2 else "SELL", "price": 100 + i, "notional": 1000 + i, "ts": _day(day)}

    log = list(events())
    whole = Driver()
    whole.list(web)
    for topic, msg in log:
        whole.send(topic, msg)
    for cut in (17, 40, 77):
        first = Driver()
        first.list(web)
        for topic, msg in log[:cut]:
            first.send(topic, msg)
        resumed = Driver(EngineState.from_rows(list(first.state.rows())))
        resumed.offsets = first.offsets
        for topic, msg in log[cut:]:
            resumed.send(topic, msg)
        assert [o.value for o in first.outputs + resumed.outputs] == [o.value for o in whole.outputs]
        assert sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in resumed.state.rows()) == sorted(
            orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in whole.state.rows())


def test_every_prefix_of_a_batch_in_row_order_loads(web):
    """A crash can persist any prefix of the rows a batch changed: written in row_order,
    every prefix is a loadable state (no account row names a contract without a row)."""
    from stream.core.state import row_order

    driver = Driver()
    driver.list(TSLA)
    driver.list(web)
    driver.tick("2026-04-10T00:00:00Z")
    driver.deposit("M", "Z-ACCOUNT", 1000)
    driver.fill("T1", "A-ACCOUNT", web["contract_id"], "BUY", 120, 5000)
    driver.fill("T2", "Z-ACCOUNT", CID, "SELL", 450000, 5000)
    keys = sorted(driver.state.touched, key=row_order)
    assert keys[0] == "clock" and keys[-1].startswith("account:") and keys.index(f"contract:{web['contract_id']}") < keys.index("account:A-ACCOUNT")
    for n in range(len(keys) + 1):
        prefix = [(k, driver.state.row(k)) for k in keys[:n]]
        EngineState.from_rows(prefix)  # must not raise


def test_a_fill_rewrites_o1_bytes_however_many_ids_the_account_remembers():
    """Remembered ids are rows of their own: a fill changes its account's row (whose size
    does not grow with the ids) and one id row; ids the horizon forgets are deleted rows."""
    from stream.core.state import seen_key, split_seen_key

    driver = Driver()
    driver.list(TSLA)
    driver.tick("2026-04-10T00:00:00Z")
    driver.state.touched.clear()
    sizes = []
    for i in range(300):
        driver.fill(f"T{i}", "ACME", CID, "BUY" if i % 2 else "SELL", 450000, 100, ts="2026-04-10T00:00:00Z")
        touched = driver.state.touched
        assert touched == {"account:ACME", seen_key("ACME", f"t:T{i}")}, touched
        sizes.append(len(orjson.dumps(driver.state.row("account:ACME"))))
        driver.state.touched.clear()
    # the row does not grow with the 300 ids remembered (same position after an even or an odd number of fills)
    assert sizes[-1] <= sizes[1] + 20 and sizes[-2] <= sizes[0] + 20
    assert split_seen_key(seen_key("A|B:1", "t:X")) == ("A|B:1", "t:X")
    driver.tick("2026-04-30T00:00:00Z")  # 20 days later: every id is past the 7-day horizon
    driver.fill("LATE", "ACME", CID, "BUY", 450000, 100, ts="2026-04-30T00:00:00Z")
    deleted = [k for k in driver.state.touched if k.startswith("seen:") and driver.state.row(k) is None]
    assert len(deleted) == 300 and driver.state.row(seen_key("ACME", "t:LATE")) is not None
    restored = EngineState.from_rows(driver.state.rows())
    assert restored.accounts["ACME"].seen == driver.state.accounts["ACME"].seen


def test_positions_are_exact_integers_that_round_trip_through_rows():
    """q in cents and a in 1e-10 dollar-levels: the row text reads back to the same
    integers, the Decimals are exact beyond Decimal's default 28 digits, and the floats
    are the correctly rounded values of the exact decimals."""
    import random

    from stream.core.positions import Position

    rnd = random.Random(7)
    for _ in range(5000):
        position = Position(rnd.randint(-10**16, 10**16), rnd.randint(-10**32, 10**32))
        row = position.as_dict()
        assert Position.from_dict(row) == position
        assert Position.from_dict({"q": str(position.q), "a": str(position.a)}) == position  # rows of older versions
        assert position.q_float == float(position.q) and position.a_float == float(position.a)
    assert Position.from_dict({"q": "-10000", "a": "4600000000"}) == Position(-1_000_000, 46 * 10**18)


def test_rows_are_written_in_row_order_however_the_keys_are_grouped():
    import random

    from stream.core.state import in_row_order, row_order

    rnd = random.Random(3)
    kinds = ["clock", "contract:", "seen:3:", "account:"]
    for _ in range(200):
        keys = {rnd.choice(kinds) + ("" if rnd.random() < 0.1 else str(rnd.randint(0, 999)))
                for _ in range(rnd.randint(0, 300))}
        assert in_row_order(keys) == sorted(keys, key=row_order)


def test_a_remembered_id_packs_its_fingerprint_and_time_without_loss():
    """The packed dedup entry gives back exactly the row every version persisted:
    the 32 hex digits (leading zeros too) and the time, at both ends of the accepted years."""
    import hashlib

    from stream.core.timeutil import _MAX_US, _MIN_US

    for fp in ("0" * 32, "f" * 32, "00ab" + "0" * 28, hashlib.sha256(b"x").hexdigest()[:32]):
        for ts_us in (_MIN_US, 0, 1_790_000_000_123_456, _MAX_US - 1):
            entry = seen_entry(fp, ts_us)
            assert seen_row(entry) == [fp, ts_us] and seen_ts_us(entry) == ts_us
    assert seen_entry("0" * 32, 5) != seen_entry("0" * 31 + "1", 5)
