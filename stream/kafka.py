"""Plain aiokafka plumbing shared by the commands: client security settings, topic
creation, publishing files and consuming topics."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import AsyncIterator, Callable, Iterable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from .ordered_log import log_partition  # noqa: F401  (re-exported for callers)
from .settings import Settings
from .topics import ACCOUNT_TOPICS, CALLS, DEADLETTER, INPUT_TOPICS, LOG, OUTPUT_TOPICS, REQUIREMENTS, TICKS


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if "SSL" not in settings.security_protocol:
        return None
    context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.ssl_certfile:
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None)
    return context


def client_kwargs(settings: Settings) -> dict:
    """Connection and security options for aiokafka clients (SASL PLAIN/SCRAM, TLS)."""
    kwargs: dict = {"bootstrap_servers": settings.bootstrap, "security_protocol": settings.security_protocol}
    if settings.security_protocol.startswith("SASL"):
        kwargs.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password,
        )
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    return kwargs


def all_topics(settings: Settings) -> list[str]:
    return [settings.topic(t) for t in (*INPUT_TOPICS, LOG, *OUTPUT_TOPICS)]


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create every topic the processor reads or writes, with ``settings.partitions``
    partitions; existing topics are left as they are. With a replication factor of 3 or
    more they get ``min.insync.replicas=2``: an acknowledged write (acks=all) is then on
    at least two brokers, and one broker down still leaves the topics writable."""
    deadline = time.monotonic() + timeout_s
    configs = {"min.insync.replicas": "2"} if settings.replication_factor >= 3 else {}
    while True:
        admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication_factor,
                         topic_configs=configs)
                for name in all_topics(settings)
                if name not in existing
            ]
            for topic in wanted:  # one by one: an existing one must not hide the others
                try:
                    await admin.create_topics([topic])
                except TopicAlreadyExistsError:
                    pass
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


def key_for(topic: str, obj: object) -> bytes | None:
    """The message key SPEC §4 names for each topic: account_id for fills, movements,
    requirements and calls; contract_id for listings, flashes and settlements; ``clock``
    for every tick (one partition, in order); the record id for dead letters."""
    if topic == TICKS:
        return b"clock"
    if not isinstance(obj, dict):
        return None
    if topic in (*ACCOUNT_TOPICS, REQUIREMENTS, CALLS):
        name = "account_id"
    elif topic == DEADLETTER:
        name = "id"
    else:
        name = "contract_id"
    value = obj.get(name)
    return str(value).encode() if value is not None else None


_last_timestamp_ms = 0


def _later_timestamp_ms() -> int:
    """Now in ms, but at least 1 ms after the last one :func:`publish` used in this process."""
    global _last_timestamp_ms
    _last_timestamp_ms = max(int(time.time() * 1000), _last_timestamp_ms + 1)
    return _last_timestamp_ms


async def publish(
    settings: Settings, topic: str, lines: Iterable[bytes], skip_blank: bool = True
) -> list[tuple[int, int]]:
    """Publish raw JSON lines to a (logical) topic, keyed as SPEC §4 says; wait for acks.
    Blank lines are skipped unless ``skip_blank`` is false (then every value is sent as is).
    Returns the (partition, offset) of every message, in order.

    The messages carry a timestamp later than any an earlier call of this process gave:
    the processor orders topics by record timestamp (ties by topic), so a call published
    after another one is ordered after it even within the same millisecond."""
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5)
    await producer.start()
    try:
        stamp = _later_timestamp_ms()
        futures = []
        for line in lines:
            if skip_blank:
                line = line.strip()
                if not line:
                    continue
            try:
                key = key_for(topic, orjson.loads(line))
            except orjson.JSONDecodeError:
                key = None  # published as is: the processor dead-letters it
            futures.append(await producer.send(settings.topic(topic), value=line, key=key, timestamp_ms=stamp))
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


async def read_topic(
    settings: Settings,
    topic: str,
    from_beginning: bool = True,
    idle_timeout_s: float | None = 5.0,
    stop: Callable[[], bool] | None = None,
    reconnect_idle_s: float = 1.5,
) -> AsyncIterator[tuple[int, int, int, bytes | None, bytes | None]]:
    """Yield ``(partition, offset, timestamp_ms, key, value)`` from every partition of a
    (logical) topic without joining a group. Ends after ``idle_timeout_s`` without a
    message (never, if None) or when ``stop()`` turns true.

    After ``reconnect_idle_s`` without data the client is replaced and resumes where it
    was: the embedded broker has been seen to stop answering a long-lived reader's
    fetches while a fresh connection reads on."""
    name = settings.topic(topic)
    positions: dict[int, int] = {}
    last = time.monotonic()
    while not (stop and stop()):
        consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            tps = await _assign(consumer, name, settings)
            if not tps:
                return
            for tp in tps:
                if tp.partition in positions:
                    consumer.seek(tp, positions[tp.partition])
                elif from_beginning:
                    await consumer.seek_to_beginning(tp)
                else:
                    await consumer.seek_to_end(tp)
            quiet_since = time.monotonic()
            while not (stop and stop()):
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
                got = False
                for tp in sorted(batch, key=lambda t: t.partition):
                    for record in batch[tp]:
                        got = True
                        positions[tp.partition] = record.offset + 1
                        yield tp.partition, record.offset, record.timestamp, record.key, record.value
                now = time.monotonic()
                if got:
                    last = quiet_since = now
                elif idle_timeout_s is not None and now - last > idle_timeout_s:
                    return
                elif now - quiet_since > reconnect_idle_s:
                    for tp in tps:  # remember where each partition stands, then reconnect
                        positions.setdefault(tp.partition, await consumer.position(tp))
                    break
        finally:
            await consumer.stop()


async def _assign(consumer: AIOKafkaConsumer, name: str, settings: Settings) -> list[TopicPartition]:
    """Assign every partition of topic ``name``; none (an empty list) when it does not exist.

    The partitions come from the admin client's metadata request for the topic: a new
    consumer knows no topic until it subscribes (Apache Kafka answers its bootstrap
    metadata request with no topics), and ``partitions_for_topic`` never asks the broker."""
    partitions = await topic_partitions(settings, name)
    tps = [TopicPartition(name, p) for p in partitions]
    if tps:
        consumer.assign(tps)
    return tps


async def topic_partitions(settings: Settings, name: str, timeout_s: float = 10.0) -> list[int]:
    """The partition numbers of topic ``name`` (an empty list when it does not exist)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        described = await admin.describe_topics([name])
    finally:
        await admin.close()
    return sorted(p["partition"] for t in described if t.get("error_code", 0) == 0 for p in t.get("partitions", ()))
