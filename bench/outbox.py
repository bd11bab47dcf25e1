"""Cost of publishing one record: the producer's ``send`` against the outbox's batches.

    python -m bench.outbox [--records 50000]

On the embedded broker (or ``KAFKA_BOOTSTRAP_SERVERS``), one aiokafka producer (acks=all,
1 ms linger, 256 KiB batches) publishes the same ``--records`` records of 600 bytes,
keyed over 1,000 accounts, to a fresh 4-partition topic three ways: ``await
producer.send`` per record (what the worker did before :mod:`stream.worker.outbox`), the
accumulator's ``add_message`` with the partition precomputed, and
:class:`stream.worker.outbox.Outbox` (a batch per partition, handed over every 500 records, as
the engine does per log record). Reports process CPU and wall time per record, each until
every record is acknowledged. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from stream.worker.outbox import Outbox


async def _topic(bootstrap: str) -> str:
    name = f"bench-outbox-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])
    finally:
        await admin.close()
    return name


async def measure(bootstrap: str, n: int) -> dict:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1, max_batch_size=262_144,
                                max_request_size=1 << 20)
    await producer.start()
    value = os.urandom(300).hex().encode()
    keys = [f"B{i % 1000:04d}".encode() for i in range(n)]
    results = {}
    try:
        async def per_send(topic: str) -> None:
            for key in keys:
                await producer.send(topic, value, key=key)
            await producer.flush()

        async def add_message(topic: str) -> None:
            outbox = Outbox(producer)  # only for its partitioner cache
            await outbox.prepare([topic])
            tps = [TopicPartition(topic, p) for p in range(4)]
            futures = [await producer._message_accumulator.add_message(tps[outbox.partition_for(topic, key)], key,  # noqa: SLF001
                                                                        value, 30) for key in keys]
            await asyncio.wait(futures)

        async def outbox_batches(topic: str) -> None:
            outbox = Outbox(producer)
            await outbox.prepare([topic])
            for i, key in enumerate(keys):
                outbox.add(topic, key, value)
                if i % 500 == 499:
                    await outbox.flush()
            await outbox.flush()
            await asyncio.wait(outbox.deliveries())

        for name, run in (("send", per_send), ("add_message", add_message), ("outbox", outbox_batches)):
            topic = await _topic(bootstrap)
            await producer.send_and_wait(topic, b"warm-up", key=b"w")
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await run(topic)
            results[name] = {"cpu_us_per_record": (time.process_time() - cpu0) / n * 1e6,
                             "wall_us_per_record": (time.perf_counter() - wall0) / n * 1e6}
    finally:
        await producer.stop()
    return {"records": n, "record_bytes": len(value), **results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args(argv)
    from stream.kafka.tansu import EmbeddedBroker

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None if bootstrap else EmbeddedBroker().start()
    try:
        result = asyncio.run(measure(bootstrap or broker.bootstrap, args.records))
    finally:
        if broker is not None:
            broker.stop()
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
