"""The router's merge of one log partition's inputs, pure: which fetched input records may
be forwarded now, in broker-timestamp order across input partitions (Kafka Streams' rule
for a task with several input partitions, ``max.task.idle.ms`` included).

A *task* routes the inputs of one log partition ``p``: input partition ``p`` of the account
topics and every partition of the topics that concern all accounts. Its merge is one total
order -- by record timestamp, ties by topic (in SPEC §4 order), partition and offset -- and
is forwarded as a sequence of prefixes. The record at the head of that order (the oldest
buffered) may be forwarded once no input partition can still bring an older one:

* a partition with records buffered cannot (its own records come in offset order, and the
  head is no newer than its first);
* a partition with nothing buffered can, unless its end offset, asked of the broker *after*
  the head record was received, shows that nothing is left to fetch there. A producer that
  publishes in order (each message acknowledged before the next is sent) has then put every
  older message below that end offset: the merge is exactly the published order, whether
  the router starts into a backlog, joins while producers publish, or a partition is idle;
* ``idle_s`` > 0 additionally waits that long after the head record was received before
  forwarding it past a partition with nothing buffered (``max.task.idle.ms``): for producers
  that do not wait for acknowledgements or brokers whose end offsets lag.

Time here is the router's monotonic clock, used only to decide *when* to forward, never
*what*: the order is the records' own timestamps, so it is the same on every run.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Hashable

from stream.core.topics import INPUT_TOPICS

TOPIC_RANK = {topic: i for i, topic in enumerate(INPUT_TOPICS)}


@dataclass(frozen=True)
class Fetched:
    """An input record a task holds: its timestamp (ms), offset, raw value and when the
    router received it (monotonic seconds)."""

    timestamp: int
    offset: int
    value: bytes | None
    received: float


@dataclass(frozen=True)
class End:
    """A partition's end offset as the broker answered a request sent at ``asked`` (monotonic s)."""

    offset: int
    asked: float


@dataclass
class TaskInputs:
    """The input side of one task: per input partition (a ``(topic, partition)`` key) the
    records fetched and not yet forwarded, the next offset expected from the fetch, and the
    next offset to forward (where the task resumes: written into its log records)."""

    partitions: list[Hashable]
    buffers: dict[Hashable, deque] = field(default_factory=dict)
    fetched: dict[Hashable, int] = field(default_factory=dict)
    forwarded: dict[Hashable, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for tp in self.partitions:
            self.buffers.setdefault(tp, deque())

    def add(self, tp: Hashable, record: Fetched) -> bool:
        """Buffer a fetched record unless the task is past it (False then)."""
        if record.offset < self.fetched.get(tp, 0):
            return False
        self.buffers[tp].append(record)
        self.fetched[tp] = record.offset + 1
        return True

    def buffered(self) -> int:
        return sum(len(b) for b in self.buffers.values())


def _order(tp: Hashable, record: Fetched) -> tuple:
    topic, partition = tp  # type: ignore[misc]
    return (record.timestamp, TOPIC_RANK.get(topic, len(TOPIC_RANK)), partition, record.offset)


def release(task: TaskInputs, ends: dict[Hashable, End], idle_s: float, now: float,
            name=lambda tp: tp) -> tuple[list[tuple[Hashable, Fetched]], set[Hashable], float | None]:
    """Pop from ``task`` the records that may be forwarded now, in merge order.

    Returns ``(released, ask, wait_s)``: the ``(input partition, record)`` pairs released,
    the partitions whose end offset must be asked again before the next record can go
    (asked before the head record arrived, or never), and how long an ``idle_s`` wait still
    has to run (None when nothing waits on it). ``name`` maps a partition key to its
    ``(logical topic, partition)`` for the tie-break."""
    released: list[tuple[Hashable, Fetched]] = []
    while True:
        heads = [(_order(name(tp), buf[0]), tp) for tp, buf in task.buffers.items() if buf]
        if not heads:
            return released, set(), None
        heads.sort(key=lambda h: h[0])
        _key, tp = heads[0]
        head = task.buffers[tp][0]
        ask: set[Hashable] = set()
        fetching = False
        for other, buf in task.buffers.items():
            if buf:
                continue
            end = ends.get(other)
            if end is None or end.asked < head.received:
                ask.add(other)
            elif task.fetched.get(other, 0) < end.offset:
                fetching = True  # more is there: wait for the fetch to bring it
        if ask or fetching:
            return released, ask, None
        if idle_s > 0 and any(not buf for buf in task.buffers.values()) and now - head.received < idle_s:
            return released, set(), idle_s - (now - head.received)
        # the head goes, and with it the records of its partition that come before every
        # other partition's head and arrived with it (the checks above hold for them alike)
        limit = heads[1][0] if len(heads) > 1 else None
        buf, logical = task.buffers[tp], name(tp)
        while buf:
            record = buf[0]
            if record.received > head.received or (limit is not None and _order(logical, record) > limit):
                break
            buf.popleft()
            task.forwarded[tp] = record.offset + 1
            released.append((tp, record))
