"""Plain aiokafka plumbing shared by the commands: client security settings, topic
creation, publishing files and consuming topics."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import AsyncIterator, Callable, Iterable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from stream.kafka import shim, tlscheck
from stream.settings import Settings
from stream.core.topics import ACCOUNT_TOPICS, CALLS, DEADLETTER, INPUT_TOPICS, LOG, OUTPUT_TOPICS, REQUIREMENTS, TICKS


class BrokerUnavailable(Exception):
    """No broker of the bootstrap list answered in time (a command exits 1 with this one
    line)."""


class ConnectionConfigError(Exception):
    """The connection settings are wrong on their face, e.g. a TLS file that cannot be
    read (a command exits 2 with this one line)."""


class AuthenticationFailed(ConnectionConfigError):
    """A broker refused the SASL credentials or mechanism, or its listener wants SASL and
    the settings do not speak it (a command exits 2 with this one line, at once: asking
    again cannot help)."""


class TlsFailed(ConnectionConfigError):
    """A broker's TLS does not fit the settings: its certificate does not verify or is for
    another host, its listener does not speak TLS or speaks only TLS, or it refuses the
    client certificate (a command exits 2 with this one line, at once)."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the SSL protocols; :class:`ConnectionConfigError` names the
    setting whose file cannot be used."""
    if "SSL" not in settings.security_protocol:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionConfigError(f"KAFKA_SSL_CAFILE={settings.ssl_cafile}: {_reason(exc)}") from None
    if settings.ssl_certfile:
        try:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionConfigError(f"KAFKA_SSL_CERTFILE={settings.ssl_certfile} (key "
                                        f"{settings.ssl_keyfile or 'in the same file'}): {_reason(exc)}") from None
    return context


class MissingTopic(Exception):
    """A topic a command reads does not exist (a command exits 2 with this one line)."""


async def check_topics(settings: Settings, topics: Iterable[str]) -> None:
    """Raise :class:`MissingTopic` naming the first of these (logical) topics that does not
    exist, the prefix in force, and the processor topics the cluster does have (under any
    prefix: the one meant is usually among them)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=int(settings.connect_timeout_s * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    missing = [t for t in topics if settings.topic(t) not in existing]
    if missing:
        ours = sorted(name for name in existing if name.endswith(tuple(all_topics(Settings()))))
        shown = ", ".join(ours[:12]) + (f" and {len(ours) - 12} more" if len(ours) > 12 else "")
        raise MissingTopic(f"topic {settings.topic(missing[0])} does not exist at {settings.bootstrap} "
                           f"(KPIMARGIN_TOPIC_PREFIX={settings.topic_prefix!r}); processor topics there: "
                           + (shown or "none"))


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__


async def check_broker(settings: Settings, reads: Iterable[str] = ()) -> None:
    """Raise :class:`BrokerUnavailable` (naming the bootstrap servers and what went wrong)
    unless a broker of the list answers a metadata request, with the security settings,
    within ``KPIMARGIN_CONNECT_TIMEOUT_S`` (a refused connection is tried again until then:
    a broker may be starting), or :class:`AuthenticationFailed` as soon as a broker refuses
    the SASL credentials, the mechanism or the protocol, or :class:`TlsFailed` as soon as
    its TLS does not fit the settings; then :class:`MissingTopic` unless
    the (logical) topics the caller ``reads`` exist. Every command that talks to a broker
    asks this first, so that it fails in bounded time with one line instead of retrying for
    ever."""
    await _check_connection(settings)
    reads = list(reads)
    if reads:
        await check_topics(settings, reads)


async def _check_connection(settings: Settings) -> None:
    timeout_s = settings.connect_timeout_s
    deadline = time.monotonic() + timeout_s
    where = f"the Kafka bootstrap servers {settings.bootstrap} ({settings.security_protocol})"
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its "Unable connect" lines: the one line below says it
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                if await asyncio.wait_for(_any_answers(settings, shim.bootstrap_hosts(settings.bootstrap), deadline, where),
                                          max(left, 0.001)):
                    return
            except asyncio.TimeoutError:
                raise BrokerUnavailable(f"{where} did not answer within {timeout_s:g} s "
                                        "(KPIMARGIN_CONNECT_TIMEOUT_S)") from None
            if time.monotonic() + 0.5 >= deadline:
                raise BrokerUnavailable(f"{where}: no broker answered within {timeout_s:g} s (is one running "
                                        "there? KAFKA_BOOTSTRAP_SERVERS, KPIMARGIN_CONNECT_TIMEOUT_S)") from None
            await asyncio.sleep(0.5)
    finally:
        quiet.setLevel(level)


async def _any_answers(settings: Settings, hosts: list, deadline: float, where: str) -> bool:
    """Whether a bootstrap server answers a metadata request with the security settings
    (what ``AIOKafkaClient.bootstrap`` asks, one server after the other, but keeping each
    one's error). A refusal of the credentials or of the protocol raises
    :class:`AuthenticationFailed`, a TLS mismatch :class:`TlsFailed`
    (:func:`stream.kafka.tlscheck.tls_problem`); a server that cannot be reached is
    passed over."""
    from aiokafka.errors import (AuthenticationFailedError, IllegalSaslStateError, SaslAuthenticationFailed,
                                 UnsupportedSaslMechanismError)

    options = {k: v for k, v in client_kwargs(settings).items() if k != "bootstrap_servers"}
    for host, port, _family in hosts:
        # each bootstrap server gets at most 2 s: a silent one (a frozen node) must not
        # keep the others from being asked
        timeout_ms = max(1, int(min(deadline - time.monotonic(), 2.0) * 1000))
        try:
            conn = await shim.connect(host, port, timeout_ms, options)
        except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
            detail = (exc.args[0] if exc.args and isinstance(exc.args[0], str) else "") or type(exc).__name__
            raise AuthenticationFailed(
                f"{where}: SASL authentication failed for user {settings.sasl_username!r} (mechanism "
                f"{settings.sasl_mechanism}; the broker at {host}:{port} says: {detail}): check KAFKA_SASL_USERNAME "
                "and KAFKA_SASL_PASSWORD") from None
        except UnsupportedSaslMechanismError:
            raise AuthenticationFailed(
                f"{where}: SASL authentication impossible: the broker at {host}:{port} does not offer mechanism "
                f"{settings.sasl_mechanism}: check KAFKA_SASL_MECHANISM (and KAFKA_SECURITY_PROTOCOL: does it "
                "do SASL at all?)") from None
        except IllegalSaslStateError:
            raise AuthenticationFailed(
                f"{where}: the broker at {host}:{port} does no SASL authentication on this listener: check "
                "KAFKA_SECURITY_PROTOCOL (PLAINTEXT or SSL there?)") from None
        except (OSError, KafkaError, asyncio.TimeoutError) as exc:
            problem = await tlscheck.tls_problem(settings, host, port, timeout_ms, exc)
            if problem:
                raise TlsFailed(f"{where}: {problem}") from None
            continue  # not there, or not answering: ask the next one
        try:
            await conn.send(shim.metadata_request())
            return True
        except (KafkaError, asyncio.TimeoutError):
            pass
        finally:
            conn.close()
        # A listener that wants SASL answers ApiVersions, then closes the connection at the
        # metadata request of a client that did not authenticate: ask it which mechanisms.
        if not settings.security_protocol.startswith("SASL"):
            mechanisms = await _sasl_mechanisms(host, port, timeout_ms, options)
            if mechanisms is not None:
                raise AuthenticationFailed(
                    f"{where}: the broker at {host}:{port} requires SASL authentication (mechanisms "
                    f"{', '.join(mechanisms) or 'none'}) but KAFKA_SECURITY_PROTOCOL={settings.security_protocol}: "
                    "set SASL_PLAINTEXT or SASL_SSL and KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, "
                    "KAFKA_SASL_PASSWORD")
    return False


async def _sasl_mechanisms(host: str, port: int, timeout_ms: int, options: dict) -> list[str] | None:
    """The SASL mechanisms a listener offers when it expects a SASL handshake, else None
    (a listener without SASL answers the handshake with ILLEGAL_SASL_STATE)."""
    try:
        conn = await shim.connect(host, port, timeout_ms, options)
    except (OSError, KafkaError, asyncio.TimeoutError):
        return None
    try:
        answer = await conn.send(shim.sasl_handshake_request("PLAIN"))
    except (KafkaError, asyncio.TimeoutError):
        return None
    finally:
        conn.close()
    # 0: PLAIN is offered; 33 (UNSUPPORTED_SASL_MECHANISM): others are
    return list(answer.enabled_mechanisms) if answer.error_code in (0, 33) else None


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


def changelog_topic(settings: Settings) -> str:
    """The name faust gives the state table's changelog topic."""
    return f"{settings.app_id}-state-changelog"


def faust_topics(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """The topics faust would declare for the worker's app, ``name -> (partitions,
    configs)``: the state table's changelog (compacted, co-partitioned with the log) and
    the leader assignor's topic. :func:`ensure_topics` creates them; faust does not."""
    return {changelog_topic(settings): (settings.partitions, {"cleanup.policy": "compact"}),
            f"{settings.app_id}-__assignor-__leader": (1, {})}


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create every topic the processor reads or writes, with ``settings.partitions``
    partitions, and faust's own (:func:`faust_topics`); ``margin.log`` is retained without
    limit (time or size); existing topics are left as they are. With a replication factor of 3 or more they get ``min.insync.replicas=2``: an
    acknowledged write (acks=all) is then on at least two brokers, and one broker down
    still leaves the topics writable. Broker errors are retried for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    configs = {"min.insync.replicas": "2"} if settings.replication_factor >= 3 else {}
    topics = {**{name: (settings.partitions, {}) for name in all_topics(settings)}, **faust_topics(settings),
              # the log is the audit trail, and what a partition whose changelog fails its digest is rebuilt from
              # (stream.worker.rebuild): kept for good, not for the broker's default week
              settings.topic(LOG): (settings.partitions, {"retention.ms": "-1", "retention.bytes": "-1"})}
    while True:
        admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(name, num_partitions=partitions, replication_factor=settings.replication_factor,
                         topic_configs={**configs, **extra})
                for name, (partitions, extra) in topics.items()
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


_grants_producer_ids: dict[str, bool] = {}  # bootstrap servers -> answer of supports_idempotence


async def supports_idempotence(settings: Settings) -> bool:
    """Whether the cluster grants producer ids (``InitProducerId``): Apache Kafka does, the
    embedded Tansu answers with an error. Asked once per bootstrap list and process."""
    if settings.bootstrap not in _grants_producer_ids:
        from aiokafka import AIOKafkaClient
        from aiokafka.errors import for_code

        client = AIOKafkaClient(**client_kwargs(settings), request_timeout_ms=10_000)
        deadline = time.monotonic() + 30.0
        granted = False
        try:
            await client.bootstrap()
            while time.monotonic() < deadline:
                try:
                    answer = await client.send(client.get_random_node(), shim.init_producer_id_request())
                except KafkaError as exc:  # e.g. the node picked is down: ask another
                    if not exc.retriable:
                        break
                else:
                    # a cluster that just started answers COORDINATOR_LOAD_IN_PROGRESS for a while
                    granted = answer.error_code == 0
                    if granted or not for_code(answer.error_code).retriable:
                        break
                await asyncio.sleep(0.2)
        except Exception:  # noqa: BLE001 - a broker that cannot answer this request has no producer ids
            granted = False
        finally:
            await client.close()
        _grants_producer_ids[settings.bootstrap] = granted
    return _grants_producer_ids[settings.bootstrap]


async def publish(
    settings: Settings, topic: str, lines: Iterable[bytes], skip_blank: bool = True
) -> list[tuple[int, int]]:
    """Publish raw JSON lines to a (logical) topic, keyed as SPEC §4 says; wait for acks.
    Blank lines are skipped unless ``skip_blank`` is false (then every value is sent as is).
    Returns the (partition, offset) of every message, in order.

    The messages carry a timestamp later than any an earlier call of this process gave:
    the processor orders topics by record timestamp (ties by topic), so a call published
    after another one is ordered after it even within the same millisecond.

    Where the broker grants producer ids (Apache Kafka), the producer is idempotent: a send
    whose answer was lost, or that met a leader change, is retried until the broker takes
    it, and never lands twice. Elsewhere a send is retried until ``request_timeout_s`` and
    then fails (the caller sees the error; a message may then have landed twice)."""
    idempotent = await supports_idempotence(settings)
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5, enable_idempotence=idempotent,
                                request_timeout_ms=int(settings.request_timeout_s * 1000))
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
    message once every partition is read up to the end offset it had when the reading
    began (never, if None), or when ``stop()`` turns true. (A quiet spell alone is no end:
    on a replicated cluster a fetch can stall for seconds while a leader moves.)

    After ``reconnect_idle_s`` without data the client is replaced and resumes where it
    was: the embedded broker has been seen to stop answering a long-lived reader's
    fetches while a fresh connection reads on."""
    name = settings.topic(topic)
    positions: dict[int, int] = {}
    ends: dict[TopicPartition, int] | None = None  # where each partition ended when the reading began
    last = time.monotonic()
    while not (stop and stop()):
        # earliest: an offset out of range (e.g. met while a leader moves) must never skip data
        consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False, group_id=None,
                                    auto_offset_reset="earliest" if from_beginning else "latest")
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
            if ends is None:
                ends = await consumer.end_offsets(tps) if from_beginning else {}
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
                elif idle_timeout_s is not None and now - last > idle_timeout_s and \
                        all([await consumer.position(tp) >= end for tp, end in ends.items()]):
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


async def topic_partitions(settings: Settings, name: str, timeout_s: float = 10.0, retry_s: float = 60.0) -> list[int]:
    """The partition numbers of topic ``name`` (an empty list when it does not exist).
    Each request may take ``timeout_s``; retriable broker errors are retried for ``retry_s``
    (a broker that is down or frozen: another one answers)."""
    deadline = time.monotonic() + retry_s
    while True:
        admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=int(timeout_s * 1000))
        try:
            await admin.start()
            described = await admin.describe_topics([name])
            break
        except KafkaError as exc:  # e.g. the node the admin client picked is down: ask another
            if not exc.retriable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        finally:
            await admin.close()
    return sorted(p["partition"] for t in described if t.get("error_code", 0) == 0 for p in t.get("partitions", ()))
