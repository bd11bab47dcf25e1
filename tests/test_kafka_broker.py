"""Real Apache Kafka without Docker: ``kpimargin broker --engine kafka`` and the KafkaCluster
API, with real JVMs, real sockets and aiokafka clients (no mocks).

Needs java (and mvn the first time, to fetch the jars into the cache): skipped with one line
when they are missing, except under CI=true, where that is a failure."""

from __future__ import annotations

import asyncio
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream.kafka import dist as kafka_dist
from stream.kafka.clients import all_topics, ensure_topics
from stream.kafka.apache import KAFKA_VERSION, LOGGING_JARS, KafkaCluster, missing_tools
from stream.settings import Settings
from stream.core.topics import LOG

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def require_kafka() -> None:
    reason = missing_tools(need_maven=not kafka_dist.is_cached(KAFKA_VERSION))
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and real Kafka cannot start here: {reason}")
        pytest.skip(f"real Kafka: {reason}")


@pytest.fixture(scope="module")
def jars() -> Path:
    require_kafka()
    return kafka_dist.fetch_jars(KAFKA_VERSION, LOGGING_JARS[4])


# --------------------------------------------------------------------------- helpers
def port_pair() -> int:
    """A free port whose successor is free too (client and controller port of one node)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65535:
            with socket.socket() as other:
                try:
                    other.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no two consecutive free ports")


def java_only_path(tmp: Path) -> str:
    """A PATH with java on it and nothing else (no mvn)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(os.path.realpath(shutil.which("java")))
    assert shutil.which("mvn", path=str(bin_dir)) is None
    return str(bin_dir)


def broker_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream", "broker", "--engine", "kafka", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def ready_line(proc: subprocess.Popen, timeout_s: float = 120.0) -> str:
    """The first stdout line of the broker command (its ready line); fails if it exits first."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = proc.stdout.readline()
            if line:
                return line
        if proc.poll() is not None:
            pytest.fail(f"broker command exited {proc.returncode} before its ready line: {proc.stderr.read()!r}")
    proc.kill()
    pytest.fail(f"no ready line within {timeout_s:.0f} s")


def bootstrap_of(line: str) -> str:
    return line.split(" bootstrap ", 1)[1].split()[0]


def java_children(pid: int) -> list[int]:
    """Process ids of the java processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if comm == "java" and int(rest[1]) == pid:
                found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=60_000)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0) -> list[bytes]:
    """The first ``count`` values of a topic, from the beginning (fails after ``timeout_s``)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(values) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            values += [record.value for records in batch.values() for record in records]
    finally:
        await consumer.stop()
    return values


async def create_topic(bootstrap: str, name: str, replicas: int, configs: dict | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, replicas, topic_configs=configs or {})])
    finally:
        await admin.close()


async def describe(bootstrap: str, names: list[str], config: str = "min.insync.replicas") -> tuple[dict, dict] | None:
    """({topic: [replica counts of its partitions]}, {topic: its ``config``}), or None while
    a broker does not know every topic yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = await admin.describe_topics(names)
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    if any(t["error_code"] for t in topics):
        return None
    replicas = {t["topic"]: [len(p["replicas"]) for p in t["partitions"]] for t in topics}
    min_isr = {}
    for response in configs:
        for error, _message, _type, name, entries in response.resources:
            if error:
                return None
            min_isr[name] = next(value for key, value, *_ in entries if key == config)
    return replicas, min_isr


async def broker_ids(bootstrap: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    return sorted(broker["node_id"] for broker in cluster["brokers"])


async def isr_of(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = described["partitions"] if not described["error_code"] else []
    return sorted(partitions[0]["isr"]) if partitions else []  # [] while the answering broker lacks the topic


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)  # polling interval of a condition with a deadline


# --------------------------------------------------------------------------- the command
def test_without_java_the_command_exits_2_with_one_line(tmp_path):
    proc = broker_cli("--port", str(port_pair()), env={"PATH": str(tmp_path)})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out == ""
    assert err.strip().splitlines() == [err.strip()] and "java not found on PATH" in err


def test_without_maven_and_without_cached_jars_the_command_exits_2(tmp_path, jars):
    env = {"PATH": java_only_path(tmp_path), "KPIMARGIN_CACHE_DIR": str(tmp_path / "empty-cache")}
    proc = broker_cli("--port", str(port_pair()), env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1 and "mvn not found on PATH" in err


def test_a_port_in_use_is_one_line_and_leaves_nothing_running(jars):
    port = port_pair()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = broker_cli("--port", str(port))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and f"port {port}" in err and "in use" in err
    assert java_children(proc.pid) == []


def test_broker_command_round_trip_sigterm_and_a_kept_data_dir_reused_without_maven(tmp_path, jars):
    """Run 1: ready line, produce+consume, SIGTERM ends it with its JVM gone. Run 2 on the
    same --data-dir with no mvn on PATH: the cached jars and the same cluster, data kept."""
    data_dir, port, topic = tmp_path / "kafka", port_pair(), "round-trip"
    started = time.monotonic()
    proc = broker_cli("--port", str(port), "--data-dir", str(data_dir))
    try:
        line = ready_line(proc)
        ready_s = time.monotonic() - started
        bootstrap = bootstrap_of(line)
        assert bootstrap == f"127.0.0.1:{port}"
        assert line.startswith(f"kpimargin broker: Apache Kafka {KAFKA_VERSION}, 1 node, bootstrap ")
        jvms = java_children(proc.pid)
        assert len(jvms) == 1
        values = [f"v{i}".encode() for i in range(20)]
        asyncio.run(create_topic(bootstrap, topic, 1))
        asyncio.run(produce(bootstrap, topic, values))
        assert asyncio.run(consume(bootstrap, topic, len(values))) == values
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == "" and err == ""  # the ready line was the only output
    assert all(gone(pid) for pid in jvms)
    cluster_json = (data_dir / "cluster.json").read_text()
    meta = (data_dir / "node-1" / "data" / "meta.properties").read_text()

    proc = broker_cli("--port", str(port), "--data-dir", str(data_dir), env={"PATH": java_only_path(tmp_path)})
    try:
        line = ready_line(proc)
        print(f"\nbroker command ready in {ready_s:.1f} s (first run, format included)")
        assert bootstrap_of(line) == f"127.0.0.1:{port}"
        jvms = java_children(proc.pid)
        assert asyncio.run(consume(bootstrap_of(line), topic, len(values))) == values  # the data survived
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert all(gone(pid) for pid in jvms)
    assert (data_dir / "cluster.json").read_text() == cluster_json  # formatted only the first time
    assert (data_dir / "node-1" / "data" / "meta.properties").read_text() == meta
    assert (data_dir / "node-1" / "server.log").is_file()


# --------------------------------------------------------------------------- three nodes
@pytest.fixture(scope="module")
def three(jars):
    cluster = KafkaCluster(nodes=3).start()
    try:
        yield cluster
    finally:
        data_dir, pids = cluster.data_dir, [cluster.pid(n) for n in cluster.node_ids]
        cluster.stop()
        assert all(gone(pid) for pid in pids if pid is not None)
        assert data_dir is not None and not data_dir.exists()  # its temporary directory is removed


def test_three_nodes_are_three_brokers(three):
    assert three.node_ids == [1, 2, 3]
    assert len(three.bootstrap.split(",")) == 3
    assert asyncio.run(broker_ids(three.bootstrap)) == [1, 2, 3]


def test_ensure_topics_with_replication_factor_3_sets_min_insync_replicas_2(three):
    env = {"KAFKA_BOOTSTRAP_SERVERS": three.bootstrap, "KPIMARGIN_REPLICATION_FACTOR": "3"}
    settings = replace(Settings.from_env(env), topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    asyncio.run(ensure_topics(settings))
    names = all_topics(settings)
    replicas, min_isr = wait_until(lambda: asyncio.run(describe(three.bootstrap, names)), 30, "topics described")
    assert set(replicas) == set(names)
    assert all(counts == [3] * settings.partitions for counts in replicas.values())
    assert min_isr == {name: "2" for name in names}
    _, retention = asyncio.run(describe(three.bootstrap, names, "retention.ms"))
    log = settings.topic(LOG)
    assert retention[log] == "-1"  # the log is kept for good: audits and rebuilds replay it from offset 0
    assert all(value != "-1" for name, value in retention.items() if name != log)


def test_a_topic_stays_readable_when_its_leader_is_killed_and_restarted(three):
    topic = f"kill-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topic(three.bootstrap, topic, 3, {"min.insync.replicas": "2"}))
    wait_until(lambda: asyncio.run(isr_of(three.bootstrap, topic)) == [1, 2, 3], 30, "all three replicas in sync")
    first = [f"a{i}".encode() for i in range(50)]
    asyncio.run(produce(three.bootstrap, topic, first))
    victim = wait_until(lambda: max(three.leader_of(topic, 0), 0), 30, "the new topic's leader")
    assert victim in three.node_ids

    three.kill(victim)
    assert three.pid(victim) is None
    assert asyncio.run(consume(three.bootstrap, topic, len(first))) == first  # read from the other two
    later = [f"b{i}".encode() for i in range(50)]
    asyncio.run(produce(three.bootstrap, topic, later))  # two replicas in sync: writable
    assert wait_until(lambda: three.leader_of(topic, 0) not in (victim, -1), 60, "a new leader")

    three.restart(victim)
    assert three.pid(victim) is not None
    wait_until(lambda: asyncio.run(isr_of(three.bootstrap, topic)) == [1, 2, 3], 60, "the restarted node in sync")
    assert asyncio.run(consume(three.bootstrap, topic, 100)) == first + later


def test_pause_stops_a_node_and_resume_lets_it_answer_again(three):
    topic = f"pause-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topic(three.bootstrap, topic, 3))
    node = three.node_ids[-1]
    pid = three.pid(node)
    wait_until(lambda: three.leader_of(topic, 0) in three.node_ids, 30, "the new topic known")
    three.pause(node)
    try:
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"  # stopped
        # leader_of asks the running nodes only: asking the paused one would time out (a
        # KafkaBrokerError), not answer. While the controller fences the paused node (after
        # broker.session.timeout.ms) and moves its leaderships, a running node may answer
        # "no leader" (-1) for a moment: an answer all the same (CI run at 2672806).
        for _ in range(5):
            assert three.leader_of(topic, 0) in [*three.node_ids, -1]
        # then the partition is led by a running replica (all three are in sync)
        wait_until(lambda: three.leader_of(topic, 0) in set(three.node_ids) - {node}, 60, "a running leader")
    finally:
        three.resume(node)
    port = three.bootstrap.split(",")[node - 1]
    assert wait_until(lambda: asyncio.run(broker_ids(port)) == [1, 2, 3], 30, "the resumed node answering")
