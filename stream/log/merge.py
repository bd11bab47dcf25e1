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

:func:`step` is one round of the router over all its tasks, with the broker requests it
makes passed in, so that it runs the same against a broker and against the simulated one
of ``tests/test_merge_liveness.py`` (order and liveness under producers that never stop).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Hashable

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


def add_fetched(tasks: dict[int, TaskInputs], tp: Hashable, records: list[Fetched]) -> None:
    """Buffer records fetched from input partition ``tp`` in every task that reads it (a
    partition of the topics that concern all accounts is read by every task)."""
    for task in tasks.values():
        if tp in task.buffers:
            for record in records:
                task.add(tp, record)


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


async def step(tasks: dict[int, TaskInputs], ends: dict[Hashable, End], idle_s: float, clock: Callable[[], float],
               position: Callable[[Hashable], Awaitable[int]],
               end_offsets: Callable[[list], Awaitable[dict[Hashable, int]]],
               forward: Callable[[int, list], Awaitable[None]], name=lambda tp: tp) -> tuple[float, int]:
    """Forward what every task may forward now; return how long the next fetch may wait and
    how many end-offset requests were made.

    ``position(tp)`` is the consumer's next offset to return for ``tp`` (it moves only when
    records are fetched, so it is read once a step: a partition with nothing buffered is at
    least there, which skips what a task never sees, such as control records);
    ``end_offsets(tps)`` asks the broker the end offsets of ``tps`` (its answers go into
    ``ends``, each with the time it was asked);
    ``forward(p, released)`` sends what task ``p`` released, in order.

    The end offsets the tasks need are asked in one request for all of them, then every
    task is tried again, and what a partition that emptied meanwhile needs is asked once
    more, for the next step: at most two requests a step, however many log partitions the
    router has (a request per task, in turn, made a step last that many round trips: at
    1,000 fills/s on Kafka with 16 log partitions, p50 122 -> 41-46 ms, bench/RESULTS.md).

    Asking in the first request the ends of the partitions with records buffered too (so
    that one emptied by the step needs no second request) halves the wait against the
    simulated broker of tests/test_merge_liveness.py and is as safe, but not faster on
    Apache Kafka: at 1,000 fills/s with 16 log partitions its router stage had p99 283-831
    ms in 5 of 7 runs (87-105 in the others), against 87-208 ms in 7 runs of this rule,
    p50 alike (bench/RESULTS.md, 2026-12-08; the simulation lacks what does it: not the
    shared connection, which did not help; perhaps the next fetch waiting behind one that
    waits out its ``fetch_max_wait``)."""
    wait_s, requests = 1.0, 0
    positions: dict[Hashable, int] = {}
    for _ in range(2):  # once more after asking the end offsets the tasks need
        asks: set[Hashable] = set()
        for p, task in sorted(tasks.items()):
            for tp, buf in task.buffers.items():
                if not buf:
                    at = positions.get(tp)
                    if at is None:
                        at = positions[tp] = await position(tp)
                    task.fetched[tp] = max(task.fetched.get(tp, 0), at)
            released, ask, idle = release(task, ends, idle_s, clock(), name)
            if released:
                await forward(p, released)
            if idle is not None:
                wait_s = min(wait_s, idle)
            asks |= ask
        if not asks:
            break
        asked = clock()
        requests += 1
        for tp, offset in (await end_offsets(sorted(asks))).items():
            ends[tp] = End(offset, asked)
    if any(task.buffered() for task in tasks.values()):
        wait_s = min(wait_s, 0.05)
    return wait_s, requests
