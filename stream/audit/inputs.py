"""Where the audit tools get their topics (the broker or an export directory), the entries of
``margin.log``, and logs built offline with the router's own functions."""

from __future__ import annotations

from typing import Any, Iterable

from stream.audit.export import TopicMessage, read_export, sort_messages
from stream.log.ordered_log import LogEntry, encode_record, expand, merge_inputs, route_input


async def read_broker(settings: Any, topics: Iterable[str], idle_s: float = 2.0) -> dict[str, list[TopicMessage]]:
    """Every record of the given (logical) topics, read concurrently from the beginning
    until each has been idle for ``idle_s`` seconds."""
    import asyncio

    from stream.kafka.clients import read_topic

    async def one(topic: str) -> list[TopicMessage]:
        return [TopicMessage(p, o, t, k, v) async for p, o, t, k, v in read_topic(settings, topic, idle_timeout_s=idle_s)]

    topics = list(topics)
    results = await asyncio.gather(*(one(t) for t in topics))
    return {t: sort_messages(r) for t, r in zip(topics, results)}


def load_topics(topics: Iterable[str], directory: str | None = None, settings: Any = None) -> dict[str, list[TopicMessage]]:
    """Topics from an export directory when given, else from the broker of ``settings``."""
    topics = list(topics)
    if directory is not None:
        return {t: read_export(directory, t) for t in topics}
    import asyncio

    return asyncio.run(read_broker(settings, topics))


def log_entries(records: Iterable[TopicMessage]) -> list[LogEntry]:
    """The entries of ``margin.log`` records as ``(log partition, log offset, index in the
    record, entry)`` in log order (tombstones -- which the router never writes -- are
    skipped)."""
    return expand((r.partition, r.offset, r.value) for r in sort_messages(records) if r.value is not None)


def log_from_inputs(topics: dict[str, list[TopicMessage]], partitions: int, max_bytes: int,
                    max_record_bytes: int | None = None) -> list[TopicMessage]:
    """Rebuild an ordered log from the raw input topics with the router's own functions
    (:func:`stream.log.ordered_log.merge_inputs` then :func:`stream.log.ordered_log.route_input`),
    one entry per record: record boundaries change no output. It equals the processor's
    log wherever the router saw the events in timestamp order -- true for inputs published
    one after another; events published at the same moment on different topics may have
    been routed in another order."""
    from stream.core.topics import INPUT_TOPICS

    runs: dict[tuple[str, int], list[tuple[int | None, int, bytes | None]]] = {}
    for topic in INPUT_TOPICS:
        for r in sort_messages(topics.get(topic, ())):
            runs.setdefault((topic, r.partition), []).append((r.timestamp, r.offset, r.value))
    next_offset = [0] * partitions
    log: list[TopicMessage] = []
    for topic, partition, offset, raw in merge_inputs((t, p, msgs) for (t, p), msgs in runs.items()):
        targets, entry, _rejected = route_input(topic, partition, offset, raw, partitions, max_bytes, max_record_bytes)
        for p in targets:
            log.append(TopicMessage(p, next_offset[p], None, None, encode_record([entry])))  # type: ignore[list-item]
            next_offset[p] += 1
    return log
