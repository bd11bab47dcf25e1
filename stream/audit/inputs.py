"""Where the audit tools get their topics (the broker or an export directory), the entries of
``margin.log``, and logs built offline with the router's own functions."""

from __future__ import annotations

from typing import Any, Iterable

from stream.audit.export import Record, read_export, sort_records
from stream.core.topics import (
    ACCOUNT_TOPICS,
)
from stream.log.ordered_log import Entry, encode_record, expand, merge_inputs, route_input


async def read_broker(settings: Any, topics: Iterable[str], idle_s: float = 2.0) -> dict[str, list[Record]]:
    """Every record of the given (logical) topics, read concurrently from the beginning
    until each has been idle for ``idle_s`` seconds."""
    import asyncio

    from stream.kafka.clients import read_topic

    async def one(topic: str) -> list[Record]:
        return [Record(p, o, t, k, v) async for p, o, t, k, v in read_topic(settings, topic, idle_timeout_s=idle_s)]

    topics = list(topics)
    results = await asyncio.gather(*(one(t) for t in topics))
    return {t: sort_records(r) for t, r in zip(topics, results)}


def load_topics(topics: Iterable[str], directory: str | None = None, settings: Any = None) -> dict[str, list[Record]]:
    """Topics from an export directory when given, else from the broker of ``settings``."""
    topics = list(topics)
    if directory is not None:
        return {t: read_export(directory, t) for t in topics}
    import asyncio

    return asyncio.run(read_broker(settings, topics))


def log_entries(records: Iterable[Record]) -> list[tuple[int, int, int, Entry]]:
    """The entries of ``margin.log`` records as ``(log partition, log offset, index in the
    record, entry)`` in log order (tombstones -- which the router never writes -- are
    skipped)."""
    return expand((r.partition, r.offset, r.value) for r in sort_records(records) if r.value is not None)


def log_from_inputs(topics: dict[str, list[Record]], partitions: int, max_bytes: int,
                    max_record_bytes: int | None = None) -> list[Record]:
    """Rebuild an ordered log from the raw input topics with the router's own functions
    (:func:`stream.log.ordered_log.merge_inputs` then :func:`stream.log.ordered_log.route_input`),
    one entry per record: record boundaries change no output. It equals the processor's
    log wherever the router saw the events in timestamp order -- true for inputs published
    one after another; events published at the same moment on different topics may have
    been routed in another order."""
    from stream.core.topics import INPUT_TOPICS

    runs: dict[tuple[str, int], list[tuple[int | None, int, bytes | None]]] = {}
    for topic in INPUT_TOPICS:
        for r in sort_records(topics.get(topic, ())):
            runs.setdefault((topic, r.partition), []).append((r.timestamp, r.offset, r.value))
    next_offset = [0] * partitions
    log: list[Record] = []
    for topic, partition, offset, raw in merge_inputs((t, p, msgs) for (t, p), msgs in runs.items()):
        targets, entry, _rejected = route_input(topic, partition, offset, raw, partitions, max_bytes, max_record_bytes)
        for p in targets:
            log.append(Record(p, next_offset[p], None, None, encode_record([entry])))  # type: ignore[list-item]
            next_offset[p] += 1
    return log


def route_offline(messages: Iterable[tuple[str, dict]], partitions: int) -> list[tuple[int, int, bytes]]:
    """A ``margin.log`` built in memory from ``(topic, message)`` pairs, routed as the
    router does (account events to their account's partition, from the input partition
    their key gives; the others to every partition, from partition 0), one entry per
    record. For tests and benchmarks; returns ``(log partition, log offset, record)`` in
    log order."""
    from stream.log.ordered_log import encode_entry, home_partition

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


def as_records(records: Iterable[tuple[int, int, bytes]]) -> list[Record]:
    """``(partition, offset, value)`` tuples as topic :class:`Record` objects (timestamps
    and keys left out)."""
    return [Record(p, o, None, None, raw) for p, o, raw in records]
