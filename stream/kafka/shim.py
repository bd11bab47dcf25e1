"""Every call into faust's or aiokafka's private parts, in one place.

Each is read from faust-streaming 0.15.3 and aiokafka 0.14.0 (the versions pinned by
``pyproject.toml``'s lower bounds and tested in CI); each comment says why the public API
does not serve. Upgrading either package means re-reading these few functions first.

The first group is aiokafka's wire level (``aiokafka.conn``, ``aiokafka.protocol``: modules
its package does not export), used by :mod:`stream.kafka.clients` to ask one broker one
question; the rest is faust's and aiokafka's internals the worker needs
(:mod:`stream.worker`). faust is imported only by the functions that use it.
"""

from __future__ import annotations

import types
import weakref
from contextlib import contextmanager
from typing import Any, Mapping


# ------------------------------------------------------------------ aiokafka's wire level
def bootstrap_hosts(bootstrap: str) -> list:
    """``(host, port, family)`` of each bootstrap server, as aiokafka parses the list
    (``aiokafka.conn.collect_hosts``, shuffled): the broker check asks each one itself."""
    from aiokafka.conn import collect_hosts

    return collect_hosts(bootstrap)


async def connect(host: str, port: int, timeout_ms: int, options: dict):
    """One connection to one broker, authenticated as ``options`` say (``aiokafka.conn.
    create_conn``): ``AIOKafkaClient.bootstrap`` tries every server and turns a refused SASL
    login into "Unable to bootstrap", so the broker check could not tell a wrong password
    from a broker that is starting."""
    from aiokafka.conn import create_conn

    return await create_conn(host, port, request_timeout_ms=timeout_ms, **options)


def metadata_request(all_topics: bool = False):
    """A metadata request for no topic (what a bootstrap asks), or for every topic."""
    from aiokafka.protocol.metadata import MetadataRequest

    return MetadataRequest(None if all_topics else [])


def sasl_handshake_request(mechanism: str):
    """A SASL handshake: a listener that expects SASL answers with the mechanisms it offers."""
    from aiokafka.protocol.admin import SaslHandShakeRequest

    return SaslHandShakeRequest(mechanism)


def init_producer_id_request():
    """``InitProducerId`` without a transactional id: whether the cluster grants producer
    ids (Apache Kafka does, the embedded Tansu answers with an error). aiokafka asks it only
    inside an idempotent producer's start, which then fails in ways hard to tell apart."""
    from aiokafka.protocol.transaction import InitProducerIdRequest

    return InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000)


# ------------------------------------------------------------------ faust's and aiokafka's internals


class _InPartition:
    """Stands for an event of log partition ``p`` where faust's table stores look for the
    current event (only ``event.message.partition`` is read)."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, p: int):
        self.message = types.SimpleNamespace(partition=p)


@contextmanager
def writing_for(p: int):
    """Write to a table's local store as if processing an event of partition ``p``.

    ``faust.streams._current_event``: the task-local "current event" under which a table's
    store writes. faust's rocksdb store keeps one database per partition and takes the
    partition to write from the current event; the persister writes rows outside any event
    (after the broker acknowledged them), and faust has no public way to say "for partition p"."""
    from faust.streams import _current_event

    stand_in = _InPartition(p)
    token = _current_event.set(weakref.ref(stand_in))
    try:
        yield
    finally:
        _current_event.reset(token)


def patch_fetch_wait(max_wait_ms: int, min_bytes: int = 1) -> None:
    """faust's aiokafka driver passes ``fetch_max_wait_ms=1500`` to every consumer it
    creates (``faust/transport/drivers/aiokafka.py``, ``_create_worker_consumer``) and has
    no setting for it (nor for ``fetch_min_bytes``); on a broker that sleeps out the wait
    (Tansu) that is 1.5 s of latency. The driver module's ``aiokafka`` name is replaced by
    a proxy whose consumer class sets both."""
    import aiokafka
    from faust.transport.drivers import aiokafka as driver

    base = aiokafka.AIOKafkaConsumer

    class Consumer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *topics, **kwargs):
            kwargs["fetch_max_wait_ms"] = max_wait_ms
            kwargs["fetch_min_bytes"] = min_bytes
            super().__init__(*topics, **kwargs)

    proxy = types.ModuleType("aiokafka")
    proxy.__dict__.update(aiokafka.__dict__)
    proxy.AIOKafkaConsumer = Consumer  # type: ignore[attr-defined]
    driver.aiokafka = proxy


def aiokafka_producer(app) -> Any:
    """The started aiokafka producer under faust's producer (``Producer._ensure_producer``):
    the outbox hands it whole record batches (``create_batch``/``send_batch``), which
    faust's ``Producer.send`` (one message at a time, ~11 µs each) does not offer."""
    return app.producer._ensure_producer()  # noqa: SLF001


async def commit_offsets(consumer, offsets: Mapping[Any, int]) -> None:
    """Commit exactly these offsets for the group (faust's ``Consumer._commit``): faust's
    public ``commit`` commits what its own acks reached, and the worker must commit the
    offset right after its durable ``meta`` instead, before faust seeks the stream."""
    await consumer._commit(offsets)  # noqa: SLF001


async def wait_on_metadata(producer, topic: str) -> None:
    """Wait for a topic's metadata on an aiokafka producer (``client._wait_on_metadata``,
    what ``send`` awaits first): the outbox partitions keyed records itself and needs the
    partition count before its first batch; aiokafka has no public call that waits for it."""
    await producer.client._wait_on_metadata(topic)  # noqa: SLF001


def key_partition(producer, key: bytes, partitions: list[int]) -> int:
    """The partition aiokafka's partitioner gives ``key`` (``producer._partitioner``,
    murmur2 as Kafka's default): records go out in batches built by the outbox, so it must
    choose the partition ``send`` would have chosen; the partitioner is only reachable
    through this attribute."""
    return producer._partitioner(key, partitions, partitions)  # noqa: SLF001


async def request_rejoin(app) -> None:
    """Make this member rejoin its group, so that the group rebalances (aiokafka's
    ``GroupCoordinator.request_rejoin``, on the aiokafka consumer faust runs in its
    consumer thread: ``app.consumer._thread``, reached through ``call_thread`` so that it
    runs on that thread's loop). Neither faust nor aiokafka offers a public way to ask for
    a rebalance; the recovery watch (``stream.worker.recovery``) needs one."""
    thread = app.consumer._thread  # noqa: SLF001

    async def rejoin() -> None:
        thread._ensure_consumer()._coordinator.request_rejoin()  # noqa: SLF001

    await thread.call_thread(rejoin)
