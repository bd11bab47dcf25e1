"""The JSON Schemas in ``schemas/`` (SPEC §4) against the core: the schemas are valid
Draft 2020-12, their examples validate and are accepted by the parser, real engine output
validates, and typical bad messages are rejected. No broker needed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from stream.core import topics
from stream.core.engine import apply
from stream.core.errors import Rejected
from stream.core.messages import Cause, deadletter_record, parse, parse_bytes
from stream.core.state import EngineState

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
EXAMPLES = SCHEMAS / "examples"

INPUT_TOPICS = {
    "listing": topics.LISTINGS,
    "flash": topics.FLASH,
    "settlement": topics.SETTLEMENTS,
    "tick": topics.TICKS,
    "fill": topics.FILLS,
    "collateral": topics.COLLATERAL,
}
OUTPUT_TOPICS = {
    "requirement": topics.REQUIREMENTS,
    "call": topics.CALLS,
    "deadletter": topics.DEADLETTER,
}
ALL = {**INPUT_TOPICS, **OUTPUT_TOPICS}


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def schema(name: str) -> dict:
    return _load(SCHEMAS / f"{name}.json")


def example(name: str):
    return _load(EXAMPLES / f"{name}.json")


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(name: str, instance) -> list[str]:
    return [e.message for e in validator(name).iter_errors(instance)]


# --------------------------------------------------------------------------- the files
def test_index_maps_every_topic_to_its_schema():
    index = _load(SCHEMAS / "index.json")
    assert index == {topic: f"{name}.json" for name, topic in ALL.items()}
    assert set(index) == set(topics.INPUT_TOPICS) | set(topics.OUTPUT_TOPICS)


@pytest.mark.parametrize("name", sorted(ALL))
def test_schema_is_valid_draft_2020_12(name):
    s = schema(name)
    Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["$id"] == f"https://kpimargin.dev/schemas/{name}.json"
    assert s["title"] and s["description"]
    # Inputs are open for forward compatibility; outputs are closed.
    assert s["additionalProperties"] is (name in INPUT_TOPICS)


@pytest.mark.parametrize("name", sorted(ALL))
def test_example_validates(name):
    assert errors(name, example(name)) == []


@pytest.mark.parametrize("name", sorted(INPUT_TOPICS))
def test_input_example_is_accepted_by_the_parser(name):
    parse(INPUT_TOPICS[name], example(name))


# --------------------------------------------------------------------------- real output
def _run(messages):
    state = EngineState()
    outputs = []
    for offset, (topic, msg) in enumerate(messages):
        assert errors(next(n for n, t in INPUT_TOPICS.items() if t == topic), msg) == []
        event = parse(topic, msg)
        state, out = apply(state, event, Cause(topic, 0, offset, event.event_id), msg)
        outputs.extend(out)
    return outputs


@pytest.fixture(scope="module")
def scenario_outputs():
    """Listing, tick, a fill that opens a call, a partial deposit (UPDATED), a deposit that
    satisfies it, a flash, and the settlement."""
    listing = example("listing")
    cid = listing["contract_id"]
    return _run(
        [
            (topics.LISTINGS, listing),
            (topics.TICKS, {"ts": "2026-04-25T00:00:00Z"}),
            (topics.FILLS, {"trade_id": "T-1", "account_id": "ACME", "contract_id": cid, "side": "BUY",
                            "price": 460000, "notional": 10000, "ts": "2026-04-25T14:00:00Z"}),
            (topics.FILLS, {"trade_id": "T-2", "account_id": "BETA", "contract_id": cid, "side": "SELL",
                            "price": "460000.5", "notional": "2500.00", "ts": "2026-04-25T14:00:00.250Z"}),
            (topics.COLLATERAL, {"movement_id": "M-1", "account_id": "ACME", "amount": "2000.00",
                                 "ts": "2026-04-25T15:00:00Z"}),
            (topics.COLLATERAL, {"movement_id": "M-2", "account_id": "ACME", "amount": 4000,
                                 "ts": "2026-04-25T16:00:00+00:00"}),
            (topics.TICKS, {"ts": "2026-05-01T00:00:00.123456Z"}),
            (topics.FLASH, {"contract_id": cid, "as_of": "2026-05-15T12:00:00Z", "value": 410000, "coverage": 0.5}),
            (topics.SETTLEMENTS, {"contract_id": cid, "value": "384122", "ts": "2026-07-02T00:00:00Z"}),
        ]
    )


def test_real_requirements_validate(scenario_outputs):
    reqs = [o.value for o in scenario_outputs if o.topic == topics.REQUIREMENTS]
    assert len(reqs) >= 4
    assert any(r["positions"] for r in reqs) and any(not r["positions"] for r in reqs)
    for record in reqs:
        assert errors("requirement", record) == [], record


def test_real_calls_validate(scenario_outputs):
    calls = [o.value for o in scenario_outputs if o.topic == topics.CALLS]
    assert {c["status"] for c in calls} == {"ISSUED", "UPDATED", "SATISFIED"}
    for record in calls:
        assert errors("call", record) == [], record


def test_output_examples_match_a_real_run():
    """The output examples were copied from the engine: re-running it yields them again."""
    outputs = _run([(INPUT_TOPICS[n], example(n)) for n in ("listing", "tick", "fill", "collateral")])
    assert example("requirement") == next(o.value for o in outputs if o.topic == topics.REQUIREMENTS)
    assert example("call") == next(o.value for o in outputs if o.topic == topics.CALLS)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2]",
        b'{"trade_id": "T-9", "account_id": "ACME", "contract_id": "X", "side": "HOLD", '
        b'"price": 1, "notional": 1, "ts": "2026-04-25T14:05:00Z"}',
    ],
)
def test_deadletter_records_validate(raw):
    with pytest.raises(Rejected) as info:
        parse_bytes(topics.FILLS, raw)
    record = deadletter_record(topics.FILLS, 3, 41, raw, info.value)
    assert errors("deadletter", record) == [], record
    record = deadletter_record(topics.FILLS, 0, None, raw, RuntimeError("boom"))
    assert errors("deadletter", record) == [], record


# --------------------------------------------------------------------------- negatives
def _without(obj: dict, name: str) -> dict:
    out = copy.deepcopy(obj)
    del out[name]
    return out


def _with(obj: dict, path: str, value) -> dict:
    out = copy.deepcopy(obj)
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[leaf] = value
    return out


@pytest.mark.parametrize("name", sorted(ALL))
def test_missing_required_field_is_rejected(name):
    s = schema(name)
    base = example(name)
    for field in s["required"]:
        assert errors(name, _without(base, field)), f"{name} without {field}"


NEGATIVES = [
    ("fill", "side", "HOLD"),
    ("fill", "side", "buy"),
    ("fill", "notional", 0),
    ("fill", "notional", "0.00"),
    ("fill", "notional", -5),
    ("fill", "price", "1e5"),  # the schema asks for plain decimals; the parser is lenient
    ("fill", "price", True),
    ("fill", "trade_id", ""),
    ("fill", "trade_id", "x" * 201),
    ("fill", "ts", "2026-04-25T14:00:00"),  # no UTC offset
    ("fill", "ts", "25/04/2026 14:00"),
    ("flash", "coverage", 1.5),
    ("flash", "coverage", -0.1),
    ("flash", "value", 0),
    ("collateral", "amount", "12.345"),  # sub-cent
    ("collateral", "amount", "12,00"),
    ("collateral", "amount", None),
    ("settlement", "value", "abc"),
    ("tick", "ts", 1767225600),
    ("listing", "history", [443956]),
    ("listing", "history", [443956, 0, 1]),
    ("listing", "history", [443956, "462890", 495570]),
    ("listing", "params.alpha", 1),
    ("listing", "params.alpha", 0),
    ("listing", "params.nu", 2),
    ("listing", "params.beta", 1.5),
    ("listing", "params.k", 0),
    ("listing", "params.depth", 0),
    ("listing", "params.c", -1),
    ("listing", "params.lam", -1),
    ("listing", "params.gamma", -0.01),
    ("listing", "params.mc_samples", 0),
    ("listing", "params.mc_samples", 100.5),
    ("listing", "params.mc_seed", -1),
    ("listing", "params.es_method", "quad"),
    ("listing", "params.sigma_prior", 0),
    ("listing", "params.unknown_knob", 1),  # unknown params are rejected by the core
    ("requirement", "im", "5333.3"),
    ("requirement", "im", 5333.34),
    ("requirement", "im", "-1.00"),
    ("requirement", "as_of", "2026-04-25T00:00:00+00:00"),
    ("requirement", "cause.offset", -1),
    ("requirement", "extra", 1),  # outputs are closed
    ("requirement", "cause.extra", 1),
    ("call", "status", "OPEN"),
    ("call", "shortfall", "-1.00"),
    ("call", "extra", 1),
    ("deadletter", "raw_b64", "not base64!"),
    ("deadletter", "extra", 1),
]


# Forms the schema rejects although the core tolerates them (the schema is the stricter contract).
STRICTER_THAN_PARSER = [("fill", "price", "1e5")]


@pytest.mark.parametrize("name,path,value", NEGATIVES, ids=[f"{n}.{p}={v!r}"[:60] for n, p, v in NEGATIVES])
def test_bad_message_is_rejected_by_the_schema(name, path, value):
    assert errors(name, _with(example(name), path, value)), f"{name}.{path}={value!r} should be rejected"
    if name in INPUT_TOPICS and (name, path, value) not in STRICTER_THAN_PARSER:
        # the schema is never looser than the parser on these
        with pytest.raises(Rejected):
            parse(INPUT_TOPICS[name], _with(example(name), path, value))


def test_requirement_position_is_closed():
    record = example("requirement")
    record["positions"][0]["extra"] = 1
    assert errors("requirement", record)


def test_two_level_history_needs_sigma_prior():
    listing = _with(example("listing"), "history", [443956, 462890])
    assert errors("listing", listing)
    with pytest.raises(Rejected):
        parse(topics.LISTINGS, listing)
    listing["params"]["sigma_prior"] = 0.25
    assert errors("listing", listing) == []
    parse(topics.LISTINGS, listing)


def test_inputs_accept_unknown_fields_and_alternative_forms():
    fill = _with(example("fill"), "venue", "XKPI")
    fill.update(price="460000.25", notional="10000.00", ts="2026-04-25T16:00:00.5+02:00")
    assert errors("fill", fill) == []
    parse(topics.FILLS, fill)
    movement = _with(example("collateral"), "amount", -12.5)
    assert errors("collateral", movement) == []
    parse(topics.COLLATERAL, movement)
    listing = _with(example("listing"), "params", None)
    assert errors("listing", listing) == []
    parse(topics.LISTINGS, listing)


def test_the_http_api_document_is_openapi_with_valid_schemas():
    """schemas/http-api.json (the worker's HTTP API, OpenAPI 3.1): every component schema is
    valid Draft 2020-12, and every $ref names a component; tests/test_http.py validates
    the worker's real answers against them."""
    api = _load(SCHEMAS / "http-api.json")
    assert api["openapi"].startswith("3.1")
    for name, sub in api["components"]["schemas"].items():
        Draft202012Validator.check_schema(sub)
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(api)
    assert refs and all(r.startswith("#/components/schemas/") and r.rsplit("/", 1)[1] in api["components"]["schemas"]
                        for r in refs)
    request = {"fills": [{"contract_id": "TSLA-Q2-2026-DELIVERIES", "side": "BUY", "price": 455000, "notional": 10000}]}
    root = {"$ref": "#/components/schemas/WhatIfRequest", "components": api["components"]}
    Draft202012Validator(root).validate(request)
    assert not Draft202012Validator(root).is_valid({"fills": [{**request["fills"][0], "account_id": "X"}]})
