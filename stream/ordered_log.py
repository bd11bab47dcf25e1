"""The processor's ordered per-partition log (``margin.log``) and how one entry is applied.

Each entry is the decoded input message plus where it came from::

    {"source": {"topic": "trades.fills", "partition": 2, "offset": 17}, "value": {...}}

:func:`apply_entry` is the single function that turns one entry into outputs -- the faust
engine agent, the replay/audit tool and the integration tests all call it, so a replay of
the log reproduces exactly what the processor published.
"""

from __future__ import annotations

from typing import Any, Iterable

import orjson

from .engine import EngineState, Output, apply
from .errors import Rejected, SchemaViolation
from .records import Cause, deadletter_record, parse
from .topics import ACCOUNT_TOPICS, DEADLETTER, LOG


def encode_entry(topic: str, partition: int, offset: int, value: Any) -> bytes:
    return orjson.dumps({"source": {"topic": topic, "partition": partition, "offset": offset}, "value": value})


def deadletter_output(topic: str, partition: int, offset: int | None, raw: bytes, error: Exception) -> Output:
    record = deadletter_record(topic, partition, offset, raw, error)
    return Output(DEADLETTER, record["id"], record)


def apply_entry(state: EngineState, log_partition: int, log_offset: int, raw: bytes) -> list[Output]:
    """Apply one log entry to the state of its log partition; return what to publish.

    A rejected event becomes a dead-letter record. A broadcast event (listing, flash,
    settlement, tick) is rejected identically in every partition, so only partition 0
    reports it."""
    try:
        entry = orjson.loads(raw)
        src, obj = entry["source"], entry["value"]
        source, src_partition, src_offset = str(src["topic"]), int(src["partition"]), int(src["offset"])
    except Exception as exc:  # not written by our router: report it, never crash
        return [deadletter_output(LOG, log_partition, log_offset, raw, SchemaViolation(f"bad log entry: {exc!r}"))]
    try:
        event = parse(source, obj)
        cause = Cause(source, src_partition, src_offset, event.event_id)
        _, outputs = apply(state, event, cause, obj)
        return outputs
    except Rejected as error:
        if source in ACCOUNT_TOPICS or log_partition == 0:
            return [deadletter_output(source, src_partition, src_offset, orjson.dumps(obj), error)]
        return []


def replay(entries: Iterable[tuple[int, int, bytes]], states: dict[int, EngineState] | None = None) -> list[tuple[int, int, Output]]:
    """Apply ``(log_partition, log_offset, raw)`` entries in order, one state per
    partition; return ``(partition, offset, output)`` for everything published."""
    states = {} if states is None else states
    published = []
    for partition, offset, raw in entries:
        state = states.setdefault(partition, EngineState())
        for out in apply_entry(state, partition, offset, raw):
            published.append((partition, offset, out))
    return published
