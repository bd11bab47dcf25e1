"""Records to publish, gathered into one producer batch per topic-partition.

aiokafka's ``send`` costs ~11 µs of CPU a message here (metadata check, partitioner,
accumulator, one future per message) and faust's wrapper adds its own; appending to a
batch and handing the whole batch over costs ~2.5 µs a message (bench/RESULTS.md).
A busy worker publishes about four records per fill (a requirement, often a call, the
account's state row and the id it remembers), so the engine and its persister build
batches themselves:

* :meth:`Outbox.add` appends a record to the open batch of its topic-partition; it is
  synchronous, so a caller can apply an event and queue its outputs without yielding to
  another task in between;
* :meth:`Outbox.take` closes and detaches every batch gathered so far (again
  synchronous: what the caller applied before calling it is exactly what it took);
* :meth:`Outbox.submit` hands taken batches to the producer in the order they were
  taken -- one submission at a time, so a partition's records reach the broker in the
  order they were added -- and keeps one delivery future per batch;
* :meth:`Outbox.deliveries` returns (and forgets) the delivery futures of every batch
  submitted so far. Submissions queue in the order of their :meth:`take` (the lock is
  fair and taken without yielding), so after a caller's own :meth:`submit` returns, the
  deliveries cover everything taken before its :meth:`take`, by whichever task.

A closed batch is sent at once (the producer's linger applies to batches it fills
itself). A keyed record goes to the partition the producer's own partitioner picks
(murmur2 of the key, as Kafka's default), the same as ``producer.send`` would.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stream.kafka import shim


class Outbox:
    """Per topic-partition batches for one aiokafka producer (see the module docstring)."""

    KEY_CACHE_MAX = 1_000_000  # (topic, key) -> partition entries kept before the cache is reset

    def __init__(self, producer: Any):
        self.producer = producer  # an started aiokafka.AIOKafkaProducer
        self.open: dict[tuple[str, int], Any] = {}
        self.full: list[tuple[str, int, Any]] = []  # batches closed because they filled up, in order
        self.lock = asyncio.Lock()
        self.delivering: list[asyncio.Future] = []  # deliveries of submitted batches, until collected
        self._partitions: dict[str, list[int]] = {}
        self._key_partition: dict[tuple[str, bytes], int] = {}

    async def prepare(self, topics) -> None:
        """Fetch the metadata (partition counts) of the topics keyed records go to."""
        for topic in topics:
            await shim.wait_on_metadata(self.producer, topic)
            self._partitions[topic] = sorted(self.producer.client.cluster.partitions_for_topic(topic))

    def partition_for(self, topic: str, key: bytes) -> int:
        """The partition the producer's partitioner gives ``key`` (cached per key)."""
        cached = self._key_partition.get((topic, key))
        if cached is None:
            partitions = self._partitions.get(topic)
            if partitions is None:
                raise RuntimeError(f"Outbox.prepare was not given topic {topic!r}")
            if len(self._key_partition) >= self.KEY_CACHE_MAX:
                self._key_partition.clear()
            cached = self._key_partition[(topic, key)] = shim.key_partition(self.producer, key, partitions)
        return cached

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """Append one record (``partition`` None: the key's partition)."""
        if partition is None:
            partition = self.partition_for(topic, key)  # type: ignore[arg-type]
        tp = (topic, partition)
        batch = self.open.get(tp)
        if batch is not None:
            if batch.append(key=key, value=value, timestamp=None) is not None:
                return
            self.full.append((topic, partition, batch))  # full: it goes out as it is
        batch = self.open[tp] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # pragma: no cover - a new batch takes any record
            raise RuntimeError(f"a record for {topic}/{partition} does not fit an empty batch")

    def take(self) -> list[tuple[str, int, Any]]:
        """Detach every batch gathered so far, closed, in the order to send them."""
        taken = self.full + [(topic, p, batch) for (topic, p), batch in self.open.items()]
        self.full, self.open = [], {}
        for _topic, _p, batch in taken:
            batch.close()
        return taken

    async def submit(self, taken: list[tuple[str, int, Any]]) -> None:
        """Hand taken batches to the producer, in order (after every earlier submission,
        even when ``taken`` is empty); their deliveries go to :meth:`deliveries`."""
        async with self.lock:
            for topic, p, batch in taken:
                self.delivering.append(await self.producer.send_batch(batch, topic, partition=p))

    async def flush(self) -> None:
        """:meth:`take` then :meth:`submit`."""
        await self.submit(self.take())

    def deliveries(self) -> list[asyncio.Future]:
        """The delivery futures of the batches submitted since the last call."""
        futures, self.delivering = self.delivering, []
        return futures
