"""Helpers for the integration tests: a real broker, real worker processes, real topics.

Every integration test runs on each broker of :func:`broker_kinds` (the ``broker``
fixture of ``conftest.py``): the embedded Tansu and a real Apache Kafka, or only the broker
``KAFKA_BOOTSTRAP_SERVERS`` names when it is set.
Every test gets its own topic prefix and consumer group, so tests never see each other.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import orjson

from stream.core.engine import apply
from stream.core.messages import Cause, parse
from stream.core.state import EngineState
from stream.core.topics import ACCOUNT_TOPICS, CALLS, DEADLETTER, INPUT_TOPICS, LOG, REQUIREMENTS
from stream.harness.processes import start_worker_process, stop_process
from stream.harness.scenario import publish_phases, wait_until
from stream.kafka.clients import changelog_topic, ensure_topics, read_topic
from stream.log.ordered_log import entry_source, record_entries, record_positions, replay
from stream.settings import Settings
from stream.worker import durable

from .diagnosis import differing_keys


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def broker_kinds() -> list[str]:
    """The brokers the integration suite runs on: the one ``KAFKA_BOOTSTRAP_SERVERS``
    names when it is set, else the embedded Tansu and a real Apache Kafka."""
    return ["external"] if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else ["embedded", "kafka"]


@contextmanager
def start_broker(kind: str) -> Iterator[str]:
    """Bootstrap servers of a broker of ``kind`` (:func:`broker_kinds`), stopped afterwards.

    ``kafka`` is a testcontainers Kafka when a Docker daemon answers, else Apache Kafka's
    own jars run by ``stream.kafka.apache`` (fetched with Maven once, then cached). Where
    neither Java nor Maven is installed the real-Kafka cases are skipped with the reason --
    except under CI (``CI=true``), where a real-Kafka case that cannot start fails."""
    if kind == "external":
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif kind == "embedded":
        from stream.kafka.tansu import EmbeddedBroker

        with EmbeddedBroker() as broker:
            yield broker.bootstrap
    elif docker_available():
        from testcontainers.kafka import KafkaContainer

        from stream.kafka.apache import KAFKA_VERSION

        with KafkaContainer(f"apache/kafka:{KAFKA_VERSION}").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        with kafka_cluster(nodes=1) as cluster:
            yield cluster.bootstrap


@contextmanager
def kafka_cluster(nodes: int, **options):
    """A :class:`stream.kafka.apache.KafkaCluster` of ``nodes`` started for a test (its jars
    fetched with Maven once, then cached), stopped afterwards; ``options`` go to the class
    (e.g. ``sasl_users``, ``tls``). Without Java or Maven (or openssl, for ``tls``) the test is
    skipped with the reason, except under CI (``CI=true``), where it fails."""
    import pytest

    from stream.kafka.apache import KAFKA_VERSION, KafkaBrokerError, KafkaCluster, missing_tools
    from stream.kafka.dist import is_cached

    missing = missing_tools(need_maven=not is_cached(KAFKA_VERSION), need_openssl=bool(options.get("tls")))
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"real Kafka cannot start under CI: {missing}")
        pytest.skip(f"real Kafka: {missing}")
    try:
        cluster = KafkaCluster(nodes=nodes, **options).start()
    except KafkaBrokerError as exc:
        pytest.fail(f"real Kafka did not start: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


def fresh_settings(bootstrap: str, tmp: Path, **overrides) -> Settings:
    tag = uuid.uuid4().hex[:8]
    base = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    return replace(
        base,
        app_id=f"kpimargin-test-{tag}",
        topic_prefix=f"t{tag}.",
        partitions=4,
        session_timeout_s=6.0,
        commit_interval_s=0.5,
        data_dir=str(tmp / "data"),
        log_level="info",
        **overrides,
    )


class Cluster:
    """Worker processes of one processor (one consumer group) and its topics."""

    def __init__(self, settings: Settings, tmp: Path):
        self.settings = settings
        self.tmp = tmp
        self.workers: list = []
        self.started = 0
        # a supervisor (systemd, Kubernetes) restarts a worker that stopped itself with
        # status 70 (a machinery failure: docs/delivery.md); tests that model one set this
        self.supervise = False
        self.restarts: list[int] = []  # pids a supervisor restarted
        self.sources: set[tuple[str, int, int]] = set()
        self.published: list[tuple[str, int, int, dict]] = []  # (topic, partition, offset, message) in publication order
        asyncio.run(ensure_topics(settings))

    def start_worker(self, settings: Settings | None = None, data_dir: str | None = None):
        """A worker with its own local state directory, or ``data_dir`` to reuse one."""
        self.started += 1
        settings = replace(settings or self.settings, data_dir=data_dir or str(self.tmp / f"data-{self.started}"))
        proc = start_worker_process(settings, self.tmp / f"worker-{self.started}.log")
        self.workers.append(proc)
        return proc

    def kill(self, proc) -> None:
        """SIGKILL: no shutdown code runs, in-flight sends and uncommitted offsets are lost."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self.workers.remove(proc)

    def stop(self) -> None:
        for proc in self.workers:
            stop_process(proc)
        self.workers = []

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.tmp.glob("worker-*.log")))

    def assert_alive(self) -> None:
        """Fail if a worker exited -- unless :attr:`supervise` is set and it stopped itself
        with status 70: then, as a supervisor would, start a fresh worker in its place."""
        for proc in [p for p in self.workers if p.poll() is not None]:
            if not (self.supervise and proc.returncode == 70):
                break
            self.workers.remove(proc)
            self.restarts.append(proc.pid)
            self.start_worker()
        dead = [p.returncode for p in self.workers if p.poll() is not None]
        assert not dead, f"worker exited with {dead}\n{self.logs()}"

    # -- topics
    def publish(self, phases: list[dict], after_publish=None, timeout_s: float = 90.0) -> None:
        asyncio.run(publish_phases(self.settings, phases, after_publish=after_publish, timeout_s=timeout_s))

    def publish_messages(self, runs: list[tuple[str, list[dict]]]) -> None:
        """Publish ``(topic, messages)`` runs one after the other, without waiting for the
        processor (the log's order is then whatever the router sees)."""
        from stream.kafka.clients import publish

        async def run():
            for topic, messages in runs:
                positions = await publish(self.settings, topic, [orjson.dumps(m) for m in messages])
                for (partition, offset), message in zip(positions, messages):
                    self.sources.add((topic, partition, offset))
                    self.published.append((topic, partition, offset, message))

        asyncio.run(run())

    def published_sources(self) -> set[tuple[str, int, int]]:
        """(topic, partition, offset) of every message published with :meth:`publish_messages`."""
        return set(self.sources)

    def read(self, topic: str, idle_s: float = 2.0) -> list[tuple[int, int, bytes]]:
        async def run():
            return [(p, o, v) async for p, o, _t, _k, v in read_topic(self.settings, topic, idle_timeout_s=idle_s)]

        return asyncio.run(run())

    def outputs(self) -> dict[str, dict]:
        """Every published record by id; a repeated id must repeat the same content."""
        by_id: dict[str, dict] = {}
        for topic in (REQUIREMENTS, CALLS, DEADLETTER):
            for _p, _o, value in self.read(topic, idle_s=1.0):
                record = orjson.loads(value)
                record["_topic"] = topic
                previous = by_id.setdefault(record["id"], record)
                if previous != record:
                    diff = {k: (previous.get(k), record.get(k)) for k in differing_keys(previous, record)}
                    raise AssertionError(f"id {record['id']} published with different content: {diff}\n"
                                         f"first: {previous}\nlater: {record}")
        return by_id

    def replayed(self) -> tuple[dict[str, dict], dict[int, EngineState]]:
        """What the pure core publishes when it replays margin.log: outputs by id, states."""
        entries = sorted(self.read(LOG, idle_s=1.0), key=lambda e: (e[0], e[1]))
        states: dict[int, EngineState] = {}
        by_id = {}
        for _p, _o, out in replay(entries, states):
            by_id[out.value["id"]] = {**out.value, "_topic": out.topic}
        return by_id, states

    def wait_for_outputs(self, predicate, timeout_s: float = 90.0, what: str = "outputs") -> dict[str, dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            self.assert_alive()
            outputs = self.outputs()
            if predicate(outputs):
                return outputs
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")

    def committed(self, topics: list[str], group: str | None = None) -> dict[tuple[str, int], int]:
        """A consumer group's committed offset of every partition of ``topics`` (the
        processor's group by default)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from stream.kafka.clients import client_kwargs

        async def run():
            consumer = AIOKafkaConsumer(**client_kwargs(self.settings), group_id=group or self.settings.app_id,
                                        enable_auto_commit=False)
            await consumer.start()
            try:
                return {(t, p): await consumer.committed(TopicPartition(self.settings.topic(t), p)) or 0
                        for t in topics for p in range(self.settings.partitions)}
            finally:
                await consumer.stop()

        return asyncio.run(run())

    def ends(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """One past the last offset actually read from every partition of ``topics`` (not
        ListOffsets: the embedded broker can report end offsets late)."""
        ends = {(t, p): 0 for t in topics for p in range(self.settings.partitions)}

        async def one(topic: str) -> None:
            async for p, offset, _t, _k, _v in read_topic(self.settings, topic, idle_timeout_s=1.0):
                ends[(topic, p)] = max(ends[(topic, p)], offset + 1)

        async def run() -> None:
            await asyncio.gather(*(one(t) for t in topics))  # the topics side by side: one idle wait

        asyncio.run(run())
        return ends

    def wait_consumed(self, timeout_s: float = 90.0, until=None) -> None:
        """Wait until the log has taken in every input -- each log partition's last record
        says its router is past the end of every input partition it reads -- and then the
        processor's group has committed every log record (committed only once the batch's
        outputs, rows and meta row are durable); or, with ``until``, until that is true."""
        deadline = time.monotonic() + timeout_s
        while until is None or not until():
            self.assert_alive()
            behind = self.routing_behind()
            if not behind:  # the log is read after the inputs are taken in: it holds them all
                behind = self.behind([LOG], self.settings.app_id)
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for the workers to consume everything: "
                                     f"(consumed, end) {behind}\n{self.logs()}")
            time.sleep(0.5)  # polling interval between two reads of the broker

    def routing_behind(self) -> dict:
        """``(log partition, input topic, partition) -> (router position, end)`` for every
        input a log partition's router has not taken in yet (positions from its last record)."""
        ends = self.ends(list(INPUT_TOPICS))
        positions: dict[int, dict] = {}
        for p, _o, value in self.read(LOG, idle_s=1.0):
            got = record_positions(value)
            if got is not None:
                positions[p] = got
        behind = {}
        for p in range(self.settings.partitions):
            for (topic, q), end in ends.items():
                if topic in ACCOUNT_TOPICS and q != p:
                    continue
                at = positions.get(p, {}).get((topic, q), 0)
                if at < end:
                    behind[(p, topic, q)] = (at, end)
        return behind

    def behind(self, topics: list[str], group: str) -> dict[tuple[str, int], tuple[int, int]]:
        """``(committed, end)`` of the partitions of ``topics`` the group has not consumed."""
        ends = self.ends(topics)
        committed = self.committed(topics, group)
        return {tp: (committed[tp], end) for tp, end in ends.items() if committed[tp] < end}

    def routed_sources(self) -> set[tuple[str, int, int]]:
        """(topic, partition, offset) of every input the log or the dead-letter topic holds."""
        sources = set()
        for _p, _o, value in self.read(LOG, idle_s=1.0):
            for entry in record_entries(value):
                source = entry_source(entry)
                if source is not None:
                    sources.add(source[:3])
        for _p, _o, value in self.read(DEADLETTER, idle_s=1.0):
            src = orjson.loads(value)["source"]
            sources.add((src["topic"], int(src["partition"]), int(src["offset"])))
        return sources

    def settle(self, timeout_s: float = 90.0) -> dict[str, dict]:
        """Wait until the workers consumed everything, then check that what they published
        covers a replay of the log (each record once by id, same content)."""
        self.wait_consumed(timeout_s)
        outputs = self.outputs()
        expected, _ = self.replayed()
        missing = sorted(set(expected) - set(outputs))
        if missing:
            sample = [(expected[i]["_topic"], expected[i]["cause"]) for i in missing[:5]]
            raise AssertionError(f"{len(missing)} records of the replay were never published, e.g. {sample}\n{self.logs()}")
        return outputs

    def table_rows(self, timeout_s: float = 60.0) -> dict[int, dict[str, dict]]:
        """The workers' persisted state: per log partition, every row as of its durable
        ``meta`` offset (the latest changelog record of each key, read as the worker does,
        :mod:`stream.worker.durable`). Called once the workers settled, when every log
        record is durable: the changelog is read again until each partition's ``meta``
        names its log partition's last record (right after a leader moved, the new
        leader's high watermark can lag behind what the old one acknowledged, and a read
        that ends at it misses the last rows)."""
        name = changelog_topic(self.settings)
        deadline = time.monotonic() + timeout_s
        while True:
            latest: dict[int, dict[str, bytes]] = defaultdict(dict)

            async def run():
                settings = replace(self.settings, topic_prefix="")
                async for _p, _o, _t, key, value in read_topic(settings, name, idle_timeout_s=1.0):
                    partition, _, row_key = key.decode().partition("|")
                    if value is not None:
                        latest[int(partition)][row_key] = value
                    else:  # a tombstone: the row is gone
                        latest[int(partition)].pop(row_key, None)

            asyncio.run(run())
            metas = {p: orjson.loads(stored["meta"])["log_offset"] if "meta" in stored else -1
                     for p, stored in latest.items()}
            short = {p: (metas.get(p, -1), end) for (_topic, p), end in self.ends([LOG]).items()
                     if metas.get(p, -1) < end - 1}
            if not short:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the changelog's meta rows never reached the log's last records: "
                                     f"(meta, log end) {short}")
        rows: dict[int, dict[str, dict]] = defaultdict(dict)
        for partition, stored in latest.items():
            meta = orjson.loads(stored.pop("meta"))["log_offset"] if "meta" in stored else -1
            for row_key, value in stored.items():
                row = durable.effective(value, meta)
                if row is not None and row != b"null":  # null: an id the dedup horizon forgot
                    rows[partition][row_key] = orjson.loads(row)
        return rows


def check_outcome(cluster: Cluster, outputs: dict[str, dict]) -> dict:
    """What every fault test asserts once the workers settled, against independent
    expectations: every published input is in the log or the dead letters (nothing lost);
    no input is dead-lettered (the scenarios hold no bad input); the published records
    (each id with one content, :meth:`Cluster.outputs`) equal what the pure engine publishes
    applying the inputs in the order they were published -- what a clean run publishes --
    and a pure replay of ``margin.log``; the persisted state equals the replayed state; and
    ``kpimargin replay`` reports no mismatch. Returns the counts to print."""
    import subprocess
    import sys

    from .conftest import comparable_rows
    from .diagnosis import changelog_history, order_inversions, record_difference, replay_agreement

    replayed, states = cluster.replayed()
    rows = cluster.table_rows()
    log_records = cluster.read(LOG, idle_s=2.0)
    routed = cluster.routed_sources()
    proc = subprocess.run([sys.executable, "-m", "stream", "replay"], env={**os.environ, **cluster.settings.env()},
                          capture_output=True, text=True, timeout=900)
    published = cluster.published_sources()
    assert routed == published, (f"{len(published - routed)} inputs missing from the log and the dead letters, e.g. "
                                 f"{sorted(published - routed)[:5]}; {len(routed - published)} never published, e.g. "
                                 f"{sorted(routed - published)[:5]}")
    dead = [r for r in outputs.values() if r["_topic"] == DEADLETTER]
    assert not dead, f"{len(dead)} good inputs dead-lettered, e.g. {[(d['reason'], d['source']) for d in dead[:5]]}"
    expected = in_publication_order(cluster.published, cluster.settings)
    assert set(outputs) == set(expected), (f"the outputs differ from the pure engine applied in publication order: "
                                           f"{len(set(outputs) - set(expected))} extra, "
                                           f"{len(set(expected) - set(outputs))} missing; "
                                           f"{order_inversions(cluster, log_records)}; {replay_agreement(outputs, replayed)}")
    for rid, record in expected.items():
        assert outputs[rid] == record, (f"record {rid} differs from the publication-order computation: "
                                        f"{record_difference(outputs[rid], record)}; {order_inversions(cluster, log_records)}; "
                                        f"{replay_agreement(outputs, replayed)}")
    assert set(outputs) == set(replayed), (
        f"the outputs differ from a replay of margin.log: published, not replayed "
        f"{[(outputs[i]['_topic'], outputs[i].get('cause')) for i in sorted(set(outputs) - set(replayed))[:3]]}; "
        f"replayed, not published {[(replayed[i]['_topic'], replayed[i].get('cause')) for i in sorted(set(replayed) - set(outputs))[:3]]}")
    for rid, record in replayed.items():
        assert outputs[rid] == record, f"record {rid} differs from its replay"
    for partition, state in states.items():
        got, want = comparable_rows(rows.get(partition, {}).items()), comparable_rows(state.rows())
        differ = differing_keys(got, want)
        assert not differ, (f"persisted state of log partition {partition} differs from the replayed state in "
                            f"{len(differ)} rows, e.g. {differ[0]}: persisted {got.get(differ[0])}, "
                            f"replayed {want.get(differ[0])}; {changelog_history(cluster, partition, differ[0])}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"inputs": len(cluster.published), "log_records": len(log_records),
            "log_entries": sum(len(record_entries(value)) for _p, _o, value in log_records),
            "records": len(outputs), "replayed": len(replayed), "mismatches": 0, "replay_exit": proc.returncode}


def breakdown(outputs: dict[str, dict]) -> str:
    """Published records per topic, dead letters per reason."""
    topics = Counter(record["_topic"] for record in outputs.values())
    reasons = Counter(record["reason"] for record in outputs.values() if record["_topic"].endswith("margin.deadletter"))
    return ", ".join([f"{n} {topic}" for topic, n in sorted(topics.items())] +
                     [f"{n} {reason}" for reason, n in sorted(reasons.items())])


def in_publication_order(published, settings) -> dict[str, dict]:
    """Every record the pure engine publishes applying the inputs in publication order, as
    one state, each with the cause its real topic, partition and offset give."""
    state = EngineState(config=settings.engine_config())
    expected: dict[str, dict] = {}
    for topic, partition, offset, message in published:
        event = parse(topic, message)
        _, outputs = apply(state, event, Cause(topic, partition, offset, event.event_id), message)
        for out in outputs:
            expected[out.value["id"]] = {**out.value, "_topic": out.topic}
    return expected


def by_account(outputs: dict[str, dict], topic: str) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for record in outputs.values():
        if record["_topic"] == topic:
            grouped[record["account_id"]].append(record)
    return grouped


def run_phases_and_settle(cluster: Cluster, phases: list[dict]) -> dict[str, dict]:
    cluster.publish(phases)
    return cluster.settle()


__all__ = ["Cluster", "broker_kinds", "by_account", "breakdown", "check_outcome", "kafka_cluster", "fresh_settings", "in_publication_order", "run_phases_and_settle",
           "start_broker", "wait_until"]
