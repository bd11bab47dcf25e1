"""The processor's ordered per-partition log (``margin.log``) and how one entry is applied.

Each entry is the decoded input message plus where it came from::

    {"source": {"topic": "trades.fills", "partition": 2, "offset": 17}, "value": {...}}

:func:`apply_entry` is the single function that turns one entry into outputs -- the faust
engine agent, the replay/audit tool and the integration tests all call it, so a replay of
the log reproduces exactly what the processor published.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable

import orjson

from .engine import EngineState, Output, apply
from .errors import Rejected, SchemaViolation, Undecodable
from .records import Cause, deadletter_record, decode, parse
from .topics import ACCOUNT_TOPICS, DEADLETTER, LOG


def encode_entry(topic: str, partition: int, offset: int, value: Any) -> bytes:
    return orjson.dumps({"source": {"topic": topic, "partition": partition, "offset": offset}, "value": value})


def log_partition(account_id: str, partitions: int) -> int:
    """Stable account -> log partition map (CRC-32: the same in every process and run)."""
    return zlib.crc32(account_id.encode()) % partitions


def route_input(
    topic: str, partition: int, offset: int, raw: bytes | None, log_partitions: int, max_bytes: int
) -> tuple[list[tuple[int, bytes, bytes]], Output | None]:
    """What the router does with one input message: ``([(log partition, key, entry)], None)``
    or ``([], dead-letter output)`` for what is invalid on its own (tombstone, oversized,
    undecodable, schema-invalid). Account events go to their account's partition
    (``crc32(account_id) % P``); listing, flash, settlement and tick events to every one."""
    try:
        if raw is None:
            raise Undecodable("empty message (tombstone)")
        if len(raw) > max_bytes:
            raise SchemaViolation(f"{len(raw)} bytes exceeds the {max_bytes}-byte limit", reason="oversized")
        obj = decode(raw)
        event = parse(topic, obj)
    except Rejected as error:
        return [], deadletter_output(topic, partition, offset, raw or b"", error)
    entry = encode_entry(topic, partition, offset, obj)
    if topic in ACCOUNT_TOPICS:
        account_id = event.account_id  # type: ignore[union-attr]
        return [(log_partition(account_id, log_partitions), account_id.encode(), entry)], None
    key = (getattr(event, "contract_id", None) or "clock").encode()
    return [(p, key, entry) for p in range(log_partitions)], None


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
