"""Logs built in memory, without a broker, for the tests and benchmarks of the audit tools."""

from __future__ import annotations

from typing import Iterable

import orjson

from stream.audit.export import TopicMessage
from stream.log.ordered_log import encode_record, home_partition, route_input


def route_offline(messages: Iterable[tuple[str, dict]], partitions: int) -> list[tuple[int, int, bytes]]:
    """A ``margin.log`` built in memory from ``(topic, message)`` pairs by the router's own
    :func:`stream.log.ordered_log.route_input`, each message taken from the input partition
    a producer keying as SPEC §4 says would give it (its account's, else 0), one entry per
    record. For tests and benchmarks; returns ``(log partition, log offset, record)`` in
    log order, and raises ``ValueError`` for a message the router would dead-letter."""
    source_offsets: dict[str, int] = {}
    log_offsets = [0] * partitions
    records = []
    for topic, message in messages:
        src_offset = source_offsets[topic] = source_offsets.get(topic, -1) + 1
        targets, entry, rejected = route_input(topic, home_partition(topic, message, partitions), src_offset,
                                               orjson.dumps(message), partitions, max_bytes=1 << 30)
        if rejected is not None:
            raise ValueError(f"{topic} message {src_offset}: the router rejects it ({rejected.value.get('reason')})")
        raw = encode_record([entry])  # type: ignore[list-item]
        for p in targets:
            records.append((p, log_offsets[p], raw))
            log_offsets[p] += 1
    return sorted(records, key=lambda e: (e[0], e[1]))


def as_records(records: Iterable[tuple[int, int, bytes]]) -> list[TopicMessage]:
    """``(partition, offset, value)`` tuples as topic :class:`TopicMessage` objects (timestamps
    and keys left out)."""
    return [TopicMessage(p, o, None, None, raw) for p, o, raw in records]
