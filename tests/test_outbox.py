"""The outbox (stream/outbox.py) against a real broker: records land in the partition the
producer's own partitioner gives their key, in the order they were added, across batches
that filled up and across concurrent submissions; every delivery is reported."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.worker.outbox import Outbox


pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PARTITIONS = 3


@pytest.fixture(scope="module")
def bootstrap(broker):
    return broker


async def _topic(bootstrap: str) -> str:
    name = f"outbox-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    return name


async def _read(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0) -> dict[int, list[tuple[bytes, bytes]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    got: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while sum(map(len, got.values())) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"read {sum(map(len, got.values()))} of {count} records")
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                got[tp.partition] += [(r.key, r.value) for r in records]
    finally:
        await consumer.stop()
    return got


def test_records_keep_their_key_partition_and_order(bootstrap):
    async def run():
        topic = await _topic(bootstrap)
        # a small batch size, so that batches fill up and a partition's records span several
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=1024)
        await producer.start()
        try:
            outbox = Outbox(producer)
            await outbox.prepare([topic])
            records = [(f"account-{i % 17}".encode(), f"value-{i:05d}-{'x' * (i % 50)}".encode()) for i in range(600)]
            for key, value in records[:300]:
                outbox.add(topic, key, value)
            first = outbox.take()
            for key, value in records[300:]:
                outbox.add(topic, key, value)
            second = outbox.take()
            assert len(first) > PARTITIONS  # some batches filled up
            # submitted concurrently: the second take still lands after the first
            await asyncio.gather(outbox.submit(first), outbox.submit(second))
            deliveries = outbox.deliveries()
            assert len(deliveries) == len(first) + len(second)
            await asyncio.wait(deliveries)
            assert all(f.exception() is None for f in deliveries)
            assert outbox.deliveries() == []
            expected = {p: [] for p in range(PARTITIONS)}
            all_partitions = sorted(producer.client.cluster.partitions_for_topic(topic))
            for key, value in records:
                partition = outbox.partition_for(topic, key)
                # the producer's default partitioner (murmur2, as Kafka's), as producer.send picks
                assert partition == producer._partitioner(key, all_partitions, all_partitions)  # noqa: SLF001
                expected[partition].append((key, value))
            assert await _read(bootstrap, topic, len(records)) == expected
        finally:
            await producer.stop()

    asyncio.run(run())


def test_explicit_partitions_and_tombstones(bootstrap):
    async def run():
        topic = await _topic(bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            outbox = Outbox(producer)
            outbox.add(topic, b"k1", b"v1", partition=2)
            outbox.add(topic, b"k1", None, partition=2)  # a tombstone
            outbox.add(topic, b"k2", b"v2", partition=0)
            await outbox.flush()
            await asyncio.wait(outbox.deliveries())
            got = await _read(bootstrap, topic, 3)
            assert got == {0: [(b"k2", b"v2")], 1: [], 2: [(b"k1", b"v1"), (b"k1", None)]}
            with pytest.raises(RuntimeError, match="prepare"):
                outbox.add("not-prepared", b"k", b"v")
        finally:
            await producer.stop()

    asyncio.run(run())
