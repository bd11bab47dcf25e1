"""The fast paths of parsing a fill and an event time against the checked reference they
fall back to: on any input, the same event or the same rejection (type, reason, field,
message). The reference is each field checked one by one (``parse_fill_checked``,
``parse_time_us_checked``); the fast path is what the router and the replay run."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stream.core.errors import Rejected
from stream.core.messages import parse_fill, parse_fill_checked
from stream.core.timeutil import parse_time_us, parse_time_us_checked

prop = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(fn, *args):
    """What a parser did: its result (with its repr: ``Decimal('100.0')`` equals
    ``Decimal('1E+2')``, but a rejection's message shows which one it is), or its rejection
    as comparable data."""
    try:
        result = fn(*args)
        return "ok", result, repr(result)
    except Rejected as error:
        return "rejected", type(error).__name__, error.reason, error.field, error.message
    except Exception as error:  # not input the parsers are for (e.g. bytes): the same error too
        return "error", type(error).__name__, str(error)


# Numbers as JSON gives them: floats of every kind (0, -0, tiny, huge, many decimals,
# NaN and infinities), integers near and past the limits, booleans, strings, None.
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda x: round(x, 2)),
    st.integers(0, 11).flatmap(lambda places: st.decimals(min_value=-10**13, max_value=10**16, places=places,
                                                          allow_nan=False, allow_infinity=False)).map(float),
    st.integers(-10**16, 10**16),
    st.sampled_from([0, 1, -1, 10**12, 10**12 + 1, 10**15, 10**15 + 1, 1e12, 1e15, 1.5e15, 0.005, 0.01, 1e-8,
                     1.23456789, 1.2345678, 0.123456789, 12.3456789, 5e-324, -0.0, 100.0, 1e5, 4.6e5, True, False]),
    st.text(max_size=12),
    st.none(),
)
times = st.one_of(
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.datetimes().map(lambda d: d.isoformat(timespec="seconds") + "Z"),
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,12})?[Zz]\Z"),
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d{1,9})?([+-]\d{2}:\d{2}|Z))?\Z"),
    st.sampled_from(["2026-04-03T12:00:00Z", "2026-02-29T00:00:00Z", "2024-02-29T23:59:59.999999999Z",
                     "1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "2199-12-31T23:59:59.5Z", "2200-01-01T00:00:00Z",
                     "2026-04-03T24:00:00Z", "2026-04-03T12:60:00Z", "2026-04-03T12:00:60Z", "2026-13-01T00:00:00Z",
                     "2026-04-03t12:00:00z", "2026-04-03T12:00:00+00:00", "2026-04-03", "２０２６-04-03T12:00:00Z"]),
    st.text(max_size=30), st.integers(), st.none(),
)
ids = st.one_of(st.text(min_size=0, max_size=3), st.text(min_size=199, max_size=201), st.integers(), st.none())


@prop
@given(trade_id=ids, account_id=ids, contract_id=ids, side=st.sampled_from(["BUY", "SELL", "buy", "", None, 1]),
       price=numbers, notional=numbers, ts=times, drop=st.sets(st.sampled_from(["trade_id", "price", "ts"])))
@example(trade_id="T", account_id="A", contract_id="C", side="BUY", price=4.6e5, notional=1e5,
         ts="2026-04-03T12:00:00Z", drop=set())
def test_parse_fill_fast_path_gives_what_the_checked_parser_gives(trade_id, account_id, contract_id, side, price,
                                                                  notional, ts, drop):
    obj = {"trade_id": trade_id, "account_id": account_id, "contract_id": contract_id, "side": side,
           "price": price, "notional": notional, "ts": ts}
    for name in drop:
        del obj[name]
    assert outcome(parse_fill, obj) == outcome(parse_fill_checked, obj)


@prop
@given(price=st.one_of(numbers, st.floats(min_value=-1e15, max_value=1e15).map(lambda x: round(x, 8))),
       notional=st.one_of(numbers, st.floats(min_value=0.01, max_value=1e12).map(lambda x: round(x, 2))),
       ts=st.one_of(st.just("2026-04-03T12:00:00.25Z"), times))
@example(price=0.123456789, notional=5.0, ts="2026-04-03T12:00:00Z")  # a ninth decimal
@example(price=12.5, notional=0.005, ts="2026-04-03T12:00:00Z")  # a sub-cent notional
@example(price=12.5, notional=-0.0, ts="2026-04-03T12:00:00Z")
@example(price=10**15 + 1, notional=10**12 + 1, ts="2026-04-03T12:00:00Z")
@example(price=1e15, notional=1e12, ts="2026-04-03T12:00:00Z")
@example(price=1e-05, notional=1e5, ts="2026-04-03T12:00:00Z")  # repr with an exponent
def test_fills_valid_but_for_their_numbers_agree(price, notional, ts):
    """Every field valid but the numbers and the time, which are drawn from the edge cases."""
    obj = {"trade_id": "T-1", "account_id": "A", "contract_id": "C", "side": "SELL", "price": price,
           "notional": notional, "ts": ts}
    assert outcome(parse_fill, obj) == outcome(parse_fill_checked, obj)


@pytest.mark.parametrize("obj", [b'{"trade_id": "T"}', "T", None, 7, ["trade_id"], {"trade_id": "T"}.items()])
def test_what_is_not_a_decoded_message_meets_the_checked_parser(obj):
    assert outcome(parse_fill, obj) == outcome(parse_fill_checked, obj)


@pytest.mark.parametrize("price, notional, units, cents", [
    (4.6e5, 1e5, 46_000_000_000_000, 10_000_000),
    (0.12345678, 0.01, 12_345_678, 1),
    (-3, 7, -300_000_000, 700),
])
def test_fast_path_amounts_are_exact(price, notional, units, cents):
    fill = parse_fill({"trade_id": "T", "account_id": "A", "contract_id": "C", "side": "BUY", "price": price,
                       "notional": notional, "ts": "2026-04-03T12:00:00Z"})
    assert (fill.price_units, fill.notional_cents) == (units, cents)
    assert fill.price == Decimal(repr(price))


@prop
@given(times)
def test_parse_time_fast_path_gives_what_the_checked_parser_gives(value):
    assert outcome(parse_time_us, value, "ts") == outcome(parse_time_us_checked, value, "ts")


@pytest.mark.parametrize("text, us", [
    ("1970-01-01T00:00:00Z", 0),
    ("2026-04-03T12:00:00Z", 1_775_217_600_000_000),
    ("2026-04-03T12:00:00.1234567Z", 1_775_217_600_123_456),
    ("2199-12-31T23:59:59.999999Z", 7_258_118_399_999_999),
])
def test_event_times_in_microseconds(text, us):
    assert parse_time_us(text, "ts") == us
