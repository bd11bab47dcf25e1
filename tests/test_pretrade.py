"""The live account view and pre-trade what-if (stream.core.pretrade), against the file
what-if (``kpimargin whatif``'s Market: books built from scratch) and against the records
the engine published -- two computations that share no state with the live one."""

from __future__ import annotations

import random

import orjson
import pytest

from stream.core import pretrade
from stream.core.whatif import Market

from .conftest import TSLA, Driver, load_example

WEB = load_example("web_listing.json")
AT = "2026-04-25T00:00:00Z"


def _random_book(seed: int, accounts=("A", "B", "C"), fills=40) -> tuple[Driver, list[dict]]:
    rnd = random.Random(seed)
    d = Driver()
    d.list(TSLA)
    d.list(WEB)
    d.tick("2026-04-01T00:00:00Z")
    for a in accounts:
        d.deposit(f"D{a}", a, f"{rnd.randint(1, 200) * 1000}.00", ts="2026-04-01T00:00:00Z")
    sent = []
    for i in range(fills):
        contract = rnd.choice((TSLA, WEB))
        price = rnd.randrange(contract["lower"], contract["upper"]) if contract is TSLA else round(
            rnd.uniform(contract["lower"], contract["upper"]), 2)
        fill = {"trade_id": f"T{i}", "account_id": rnd.choice(accounts), "contract_id": contract["contract_id"],
                "side": rnd.choice(("BUY", "SELL")), "price": price, "notional": rnd.randint(100, 50_000),
                "ts": "2026-04-10T00:00:00Z"}
        d.send("trades.fills", fill)
        sent.append(fill)
    d.tick(AT)
    return d, sent


def _last_requirement(d: Driver, account: str) -> dict:
    return [o.value for o in d.outputs if o.topic.endswith("requirements") and o.key == account][-1]


@pytest.mark.parametrize("seed", range(6))
def test_the_view_equals_the_last_published_requirement_and_the_file_whatif(seed):
    """IM, equity and excess equal the last requirement published (a requirement is
    published whenever one of them moves by a cent); the components equal the file
    what-if's at the clock (the last tick may have moved them without moving the IM)."""
    d, sent = _random_book(seed)
    market = Market([("tsla", TSLA), ("web", WEB)], AT)
    for account in ("A", "B", "C"):
        view = pretrade.account_view(d.state, account)
        published = _last_requirement(d, account)
        assert {k: view[k] for k in ("account_id", "im", "equity", "excess")} == \
            {k: published[k] for k in ("account_id", "im", "equity", "excess")}
        fills = [{**f, "ts": AT} for f in sent if f["account_id"] == account]
        expected = next(a for a in market.margin([("fills", fills)])["accounts"] if a["account_id"] == account)
        assert (view["im"], view["positions"], view["as_of"]) == (expected["im"], expected["positions"], AT)
    assert pretrade.account_view(d.state, "NOBODY") is None


@pytest.mark.parametrize("seed", range(6))
def test_whatif_equals_the_file_whatif_on_every_fill_and_changes_nothing(seed):
    d, sent = _random_book(seed)
    rows_before = orjson.dumps(sorted(d.state.rows(), key=lambda kv: kv[0]))
    touched_before = set(d.state.touched)
    rnd = random.Random(100 + seed)
    extra = [{"contract_id": WEB["contract_id"], "side": rnd.choice(("BUY", "SELL")), "price": 121.5,
              "notional": rnd.randint(1000, 90_000)},
             {"contract_id": TSLA["contract_id"], "side": "SELL", "price": "410000", "notional": "2500.00"}]
    result = pretrade.whatif(d.state, "A", extra)
    # independently: the file what-if builds A's book from all its fills, with and without the extra ones
    mine = [{k: f[k] for k in ("trade_id", "account_id", "contract_id", "side", "price", "notional")}
            | {"ts": AT} for f in sent if f["account_id"] == "A"]
    market = Market([("tsla", TSLA), ("web", WEB)], AT)
    hypothetical = [{**f, "trade_id": f"X{i}", "account_id": "A", "ts": AT} for i, f in enumerate(extra)]

    def im_of(fills):
        accounts = market.margin([("fills", fills)])["accounts"]
        return next((a for a in accounts if a["account_id"] == "A"), {"im": "0.00", "positions": []})

    before, after = im_of(mine), im_of(mine + hypothetical)
    assert result["before"]["im"] == before["im"] and result["before"]["positions"] == before["positions"]
    assert result["after"]["im"] == after["im"] and result["after"]["positions"] == after["positions"]
    assert result["before"]["im"] == pretrade.account_view(d.state, "A")["im"]
    assert result["after"]["equity"] == result["before"]["equity"] == _last_requirement(d, "A")["equity"]
    assert orjson.dumps(sorted(d.state.rows(), key=lambda kv: kv[0])) == rows_before
    assert d.state.touched == touched_before
    # and the live stream goes on as if no what-if had run
    twin, _ = _random_book(seed)
    assert d.fill("N1", "A", WEB["contract_id"], "BUY", 120, 1000, ts=AT) == \
        twin.fill("N1", "A", WEB["contract_id"], "BUY", 120, 1000, ts=AT)


def test_an_empty_whatif_equals_the_view_and_an_unknown_account_starts_empty():
    d, _ = _random_book(1)
    result = pretrade.whatif(d.state, "B", [])
    view = pretrade.account_view(d.state, "B")
    assert result["before"] == result["after"] == {k: view[k] for k in ("im", "equity", "excess", "positions")}
    fresh = pretrade.whatif(d.state, "NEW", [{"contract_id": WEB["contract_id"], "side": "BUY", "price": 120,
                                              "notional": 1000}])
    assert fresh["before"] == {"im": "0.00", "equity": "0.00", "excess": "0.00", "positions": []}
    assert float(fresh["after"]["im"]) > 0 and "NEW" not in d.state.accounts


@pytest.mark.parametrize("fills, field, reason", [
    ({"contract_id": "X"}, "fills", "schema_violation"),
    ([{"contract_id": "NOPE", "side": "BUY", "price": 1, "notional": 1}], "fills[0].contract_id", "unknown_contract"),
    ([{"contract_id": WEB["contract_id"], "side": "HOLD", "price": 120, "notional": 1}], "fills[0].side",
     "schema_violation"),
    ([{"contract_id": WEB["contract_id"], "side": "BUY", "price": 1e9, "notional": 1}], "fills[0].price",
     "price_out_of_range"),
    ([{"contract_id": WEB["contract_id"], "side": "BUY", "price": 120, "notional": 0}], "fills[0].notional",
     "non_positive_notional"),
    ([{"contract_id": WEB["contract_id"], "side": "BUY", "price": 120}], "fills[0].notional", "schema_violation"),
    ([{"contract_id": WEB["contract_id"], "side": "BUY", "price": 120, "notional": 1, "ts": "x"}], "fills[0].ts",
     "schema_violation"),
    ([{"contract_id": WEB["contract_id"], "side": "BUY", "price": 120, "notional": 1}, 7], "fills[1]",
     "schema_violation"),
])
def test_bad_whatif_input_names_the_fill_the_field_and_the_reason(fills, field, reason):
    d, _ = _random_book(2)
    rows_before = orjson.dumps(sorted(d.state.rows(), key=lambda kv: kv[0]))
    with pytest.raises(pretrade.WhatIfRejected) as info:
        pretrade.whatif(d.state, "A", fills)
    assert (info.value.field, info.value.reason) == (field, reason)
    assert orjson.dumps(sorted(d.state.rows(), key=lambda kv: kv[0])) == rows_before


def test_a_whatif_after_settlement_is_rejected_as_the_stream_would():
    d, _ = _random_book(3)
    d.send("kpi.settlements", {"contract_id": WEB["contract_id"], "value": 130.0, "ts": "2026-06-05T00:00:00Z"})
    with pytest.raises(pretrade.WhatIfRejected) as info:
        pretrade.whatif(d.state, "A", [{"contract_id": WEB["contract_id"], "side": "BUY", "price": 120,
                                        "notional": 10}])
    assert info.value.reason in ("contract_settled", "fill_after_settlement_time")
