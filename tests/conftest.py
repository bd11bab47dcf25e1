"""Shared fixtures: the example contracts and small helpers to drive the pure engine."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import orjson
import pytest

from stream.core.engine import apply
from stream.core.messages import Cause, parse
from stream.core.state import EngineState
from stream.core.topics import COLLATERAL, FILLS, FLASH, LISTINGS, SETTLEMENTS, TICKS

EXAMPLES = Path(__file__).resolve().parent.parent / "stream" / "examples"

TSLA = {
    "contract_id": "TSLA-Q2-2026-DELIVERIES",
    "kpi": "Tesla quarterly vehicle deliveries",
    "lower": 300000,
    "upper": 600000,
    "listing_time": "2026-01-01T00:00:00Z",
    "settlement_time": "2026-07-02T00:00:00Z",
    "history": [443956, 462890, 495570, 296751, 363000, 497120, 418227, 336681],
    "params": {},
}


def comparable_rows(rows) -> dict:
    """State rows without their per-source offset marks (bookkeeping for re-deliveries,
    which may differ between a run with crashes and a clean one)."""
    return {k: {f: v for f, v in row.items() if f != "src"} if isinstance(row, dict) else row for k, row in rows}


def load_example(name: str):
    return orjson.loads((EXAMPLES / name).read_bytes())


@pytest.fixture(scope="session", params=None)
def broker(request):
    """Bootstrap servers of a running broker; every test that uses it runs once per broker
    of ``broker_kinds()`` (the embedded Tansu and a real Apache Kafka by default)."""
    from .streaming_support import start_broker

    with start_broker(request.param) as servers:
        yield servers


def pytest_generate_tests(metafunc):
    if "broker" in metafunc.fixturenames:
        from .streaming_support import broker_kinds

        metafunc.parametrize("broker", broker_kinds(), indirect=True, scope="session")


@pytest.fixture
def tsla() -> dict:
    return copy.deepcopy(TSLA)


@pytest.fixture
def web() -> dict:
    return load_example("web_listing.json")


class Driver:
    """Feeds messages to one EngineState with increasing offsets per topic, like Kafka."""

    def __init__(self, state: EngineState | None = None):
        self.state = state or EngineState()
        self.offsets = {t: itertools.count() for t in (LISTINGS, FLASH, SETTLEMENTS, TICKS, FILLS, COLLATERAL)}
        self.outputs: list = []

    def send(self, topic: str, msg: dict, offset: int | None = None):
        event = parse(topic, msg)
        off = next(self.offsets[topic]) if offset is None else offset
        cause = Cause(topic, 0, off, getattr(event, "event_id", ""))
        _, outputs = apply(self.state, event, cause, msg)
        self.outputs.extend(outputs)
        return outputs

    def list(self, listing):
        return self.send(LISTINGS, listing)

    def tick(self, ts: str):
        return self.send(TICKS, {"ts": ts})

    def fill(self, trade_id, account, contract, side, price, notional, ts="2026-04-20T00:00:00Z"):
        return self.send(
            FILLS,
            {"trade_id": trade_id, "account_id": account, "contract_id": contract, "side": side,
             "price": price, "notional": notional, "ts": ts},
        )

    def deposit(self, movement_id, account, amount, ts="2026-04-20T00:00:00Z"):
        return self.send(COLLATERAL, {"movement_id": movement_id, "account_id": account, "amount": amount, "ts": ts})


@pytest.fixture
def driver() -> Driver:
    return Driver()


# --------------------------------------------------------------------------- the run's summary
_SUMMARY = pytest.StashKey[list]()


@pytest.fixture
def summary(request):
    """``summary(text)``: a line for the end of the run (pytest's terminal summary, after
    the progress lines) -- what a fault or corpus test measured."""
    lines = request.config.stash.setdefault(_SUMMARY, [])
    return lambda text: lines.append(f"{request.node.nodeid}: {text.strip()}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("what the fault and corpus tests measured")
        for line in lines:
            terminalreporter.write_line(line)
