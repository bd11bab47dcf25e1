"""Logs built in memory, without a broker, for the tests and benchmarks of the audit tools."""

from __future__ import annotations

from typing import Iterable

from stream.audit.export import TopicMessage
from stream.core.topics import ACCOUNT_TOPICS
from stream.log.ordered_log import encode_entry, encode_record, home_partition


def route_offline(messages: Iterable[tuple[str, dict]], partitions: int) -> list[tuple[int, int, bytes]]:
    """A ``margin.log`` built in memory from ``(topic, message)`` pairs, routed as the
    router does (account events to their account's partition, from the input partition
    their key gives; the others to every partition, from partition 0), one entry per
    record. For tests and benchmarks; returns ``(log partition, log offset, record)`` in
    log order."""
    source_offsets: dict[str, int] = {}
    log_offsets = [0] * partitions
    records = []
    for topic, message in messages:
        src_offset = source_offsets[topic] = source_offsets.get(topic, -1) + 1
        home = home_partition(topic, message, partitions)
        raw = encode_record([encode_entry(topic, home, src_offset, message)])
        targets = [home] if topic in ACCOUNT_TOPICS else range(partitions)
        for p in targets:
            records.append((p, log_offsets[p], raw))
            log_offsets[p] += 1
    return sorted(records, key=lambda e: (e[0], e[1]))


def as_records(records: Iterable[tuple[int, int, bytes]]) -> list[TopicMessage]:
    """``(partition, offset, value)`` tuples as topic :class:`TopicMessage` objects (timestamps
    and keys left out)."""
    return [TopicMessage(p, o, None, None, raw) for p, o, raw in records]
