"""Real Apache Kafka on this machine, without Docker: a KRaft cluster of 1 or more nodes on
127.0.0.1, each node broker and controller in one JVM, run from Kafka's own jars (fetched
once from Maven Central with Maven, then cached: see ``stream.kafka.dist``).

    with KafkaCluster(nodes=3) as kafka:
        kafka.bootstrap            # "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
        kafka.kill(2); kafka.restart(2)

Used by ``kpimargin broker --engine kafka``, the tests and the benchmarks.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from stream.kafka import certs, dist as kafka_dist
from stream.kafka.ports import accepts, free_ports, port_in_use

KAFKA_VERSION = "4.4.0"
# The SLF4J binding Kafka's jars do not bring, per major version (Kafka 4.x: log4j2 behind
# slf4j-api 1.7; Kafka 3.x: log4j 1 as reload4j).
LOGGING_JARS = {
    4: ["org.apache.logging.log4j:log4j-slf4j-impl:2.24.3", "org.apache.logging.log4j:log4j-core:2.24.3"],
    3: ["org.slf4j:slf4j-reload4j:1.7.36", "ch.qos.reload4j:reload4j:1.2.25"],
}
JAVA_MIN = 17
HEAP = ["-Xmx512m", "-Xms512m"]
JVM_OPTIONS = ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
               "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true"]  # kafka-server-start.sh's
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


class KafkaBrokerError(Exception):
    """A cluster could not be started or controlled (the message is one line)."""


def missing_tools(need_maven: bool, need_openssl: bool = False) -> str | None:
    """Why a cluster cannot start here (one line), or None when it can (``need_openssl``:
    a cluster with ``tls``)."""
    if shutil.which("java") is None:
        return f"java not found on PATH: install OpenJDK {JAVA_MIN} or newer"
    found = kafka_dist.java_major()
    if found is None:
        return f"java on PATH ({shutil.which('java')}) does not run: install OpenJDK {JAVA_MIN} or newer"
    if found < JAVA_MIN:
        return f"java on PATH is Java {found}: Kafka needs {JAVA_MIN} or newer"
    if need_maven and shutil.which("mvn") is None:
        return ("mvn not found on PATH: Maven fetches the Kafka jars once (then they are cached): "
                "install Maven 3.6.3 or newer")
    return certs.missing_openssl() if need_openssl else None


_running: "set[KafkaCluster]" = set()  # strong references: a started cluster is stopped, never collected


@atexit.register
def _stop_all() -> None:  # a cluster is never left running by an interpreter that exits
    for cluster in list(_running):
        cluster.stop()


class KafkaCluster:
    """A KRaft cluster of ``nodes`` combined broker+controller JVMs on 127.0.0.1.

    ``port`` is node 1's client port; node i then listens on ``port + i - 1`` and its
    controller on ``port + nodes + i - 1`` (free ports are picked when it is None).
    A given ``data_dir`` is formatted the first time and reused after; without one a
    temporary directory is used and removed by ``stop()``.

    With ``sasl_users`` (user name -> password) the client listeners speak SASL_PLAINTEXT
    with the PLAIN mechanism and accept only these users (the first one is also the
    brokers' own on the inter-broker listener); clients then need :attr:`client_kwargs`.

    With ``tls`` the client listeners speak TLS (SSL, or SASL_SSL with ``sasl_users``) with a
    throwaway CA's certificate for 127.0.0.1 and localhost (:attr:`tls_files`, made in the
    data directory's ``tls/``), and each node has a PLAINTEXT listener too, on port
    ``port + 2 * nodes + i - 1`` (:attr:`plaintext_bootstrap`). With ``tls_client_auth`` the
    TLS listeners want a client certificate the CA signed (mutual TLS; :attr:`client_kwargs`
    shows the throwaway one)."""

    def __init__(self, nodes: int = 1, port: int | None = None, data_dir: str | Path | None = None,
                 version: str = KAFKA_VERSION, sasl_users: dict[str, str] | None = None, tls: bool = False,
                 tls_client_auth: bool = False):
        if nodes < 1:
            raise KafkaBrokerError("a cluster needs at least 1 node")
        try:
            self._major = kafka_dist.major(version)
        except ValueError as exc:
            raise KafkaBrokerError(str(exc)) from None
        if self._major not in LOGGING_JARS:
            raise KafkaBrokerError(f"Kafka {version} is not supported (3.x and 4.x are)")
        if port is not None and not 1 <= port <= 65536 - (3 if tls else 2) * nodes:
            raise KafkaBrokerError(f"port {port} leaves no room for {(3 if tls else 2) * nodes} ports")
        if sasl_users is not None:
            try:
                kafka_dist.check_sasl_users(sasl_users)
            except ValueError as exc:
                raise KafkaBrokerError(str(exc)) from None
        self.sasl_users = dict(sasl_users) if sasl_users is not None else None
        if tls_client_auth and not tls:
            raise KafkaBrokerError("tls_client_auth needs tls")
        self.tls, self.tls_client_auth, self.tls_files = tls, tls_client_auth, None  # certs.TlsFiles once started
        self.nodes, self.version, self._port = nodes, version, port
        self._given_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else None
        self.data_dir: Path | None = self._given_dir
        self._client_ports: list[int] = []
        self._controller_ports: list[int] = []
        self._plain_ports: list[int] = []
        self._procs: dict[int, subprocess.Popen] = {}
        self._paused: set[int] = set()
        self._jars: Path | None = None

    # ------------------------------------------------------------------ properties
    @property
    def node_ids(self) -> list[int]:
        return list(range(1, self.nodes + 1))

    @property
    def bootstrap(self) -> str:
        if not self._client_ports:
            raise KafkaBrokerError("the cluster is not started")
        return ",".join(f"127.0.0.1:{p}" for p in self._client_ports)

    @property
    def plaintext_bootstrap(self) -> str:
        """The PLAINTEXT listeners of a cluster with ``tls``."""
        if not self._plain_ports:
            raise KafkaBrokerError("the cluster is not started" if not self._client_ports else "the cluster has no tls")
        return ",".join(f"127.0.0.1:{p}" for p in self._plain_ports)

    @property
    def security_protocol(self) -> str:
        return ("SASL_" if self.sasl_users else "") + ("SSL" if self.tls else "PLAINTEXT")

    @property
    def client_kwargs(self) -> dict:
        """The security options an aiokafka client needs here (none without SASL or TLS; with
        SASL the first user's credentials, with TLS a context trusting the cluster's CA and,
        with ``tls_client_auth``, showing the client certificate)."""
        kwargs: dict = {}
        if self.sasl_users:
            user, password = next(iter(self.sasl_users.items()))
            kwargs.update(sasl_mechanism="PLAIN", sasl_plain_username=user, sasl_plain_password=password)
        if self.tls:
            if self.tls_files is None:
                raise KafkaBrokerError("the cluster is not started")
            kwargs["ssl_context"] = self.tls_files.client_context(client_cert=self.tls_client_auth)
        return {"security_protocol": self.security_protocol, **kwargs} if kwargs else {}

    def node_dir(self, node_id: int) -> Path:
        self._check_node(node_id)
        assert self.data_dir is not None
        return self.data_dir / f"node-{node_id}"

    def pid(self, node_id: int) -> int | None:
        """The JVM's process id of a node while it runs."""
        proc = self._procs.get(node_id)
        return proc.pid if proc is not None and proc.poll() is None else None

    def log_tail(self, node_id: int, lines: int = 3) -> str:
        """The last lines of a node's logs, on one line."""
        return kafka_dist.log_tail(self.node_dir(node_id), lines)

    # ------------------------------------------------------------------ start and stop
    def start(self) -> "KafkaCluster":
        """Fetch the jars if needed, format, start every node; return once every broker
        accepts connections and a metadata request lists all of them."""
        if self._procs:
            raise KafkaBrokerError("the cluster is already started")
        reason = missing_tools(need_maven=not kafka_dist.is_cached(self.version))
        if reason:
            raise KafkaBrokerError(reason)
        try:
            self._jars = kafka_dist.fetch_jars(self.version, LOGGING_JARS[self._major])
        except kafka_dist.FetchError as exc:
            raise KafkaBrokerError(str(exc)) from None
        self._pick_ports()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="kpimargin-kafka-"))
        _running.add(self)
        try:
            cluster_id = self._prepare_dir()
            if self.tls:
                try:
                    self.tls_files = certs.tls_files(self.data_dir / "tls")
                except certs.CertError as exc:
                    raise KafkaBrokerError(str(exc)) from None
            self._format(cluster_id)
            for node_id in self.node_ids:
                self._launch(node_id)
            self._wait(self.node_ids, all_brokers=True)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every JVM, SIGKILL what is left after ~15 s; idempotent. Removes the
        data directory if it was a temporary one."""
        procs = [p for p in self._procs.values() if p.poll() is None]
        for proc in procs:
            self._signal(proc, signal.SIGTERM)
            self._signal(proc, signal.SIGCONT)  # a paused JVM handles SIGTERM only once resumed
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in procs:
            self._end(proc, max(0.1, deadline - time.monotonic()))
        self._procs.clear()
        self._paused.clear()
        _running.discard(self)
        if self._given_dir is None and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> "KafkaCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults
    def kill(self, node_id: int) -> None:
        """SIGKILL a node's JVM (and reap it)."""
        proc = self._proc(node_id)
        self._signal(proc, signal.SIGKILL)
        proc.wait()
        self._paused.discard(node_id)

    def restart(self, node_id: int) -> None:
        """Start a node again on the same directory and ports, and wait until it answers
        metadata requests listing itself. A node still running is stopped first (SIGTERM,
        SIGKILL after ~15 s): a graceful restart."""
        proc = self._proc(node_id)
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            self._signal(proc, signal.SIGCONT)
            self._end(proc, STOP_TIMEOUT_S)
        self._paused.discard(node_id)
        self._launch(node_id)
        self._wait([node_id], all_brokers=False)

    def pause(self, node_id: int) -> None:
        """SIGSTOP a node's JVM and return once it is stopped (it keeps its sockets; nothing
        answers)."""
        proc = self._live(node_id)
        self._signal(proc, signal.SIGSTOP)
        self._paused.add(node_id)
        kafka_dist.wait_for_state(proc.pid, stopped=True)

    def resume(self, node_id: int) -> None:
        """SIGCONT a paused node's JVM and return once it runs again."""
        proc = self._live(node_id)
        self._signal(proc, signal.SIGCONT)
        self._paused.discard(node_id)
        kafka_dist.wait_for_state(proc.pid, stopped=False)

    def leader_of(self, topic: str, partition: int) -> int:
        """The node id leading a partition, from a fresh metadata request (synchronous;
        works inside a running event loop too). -1 while the partition has no leader, or
        while the node that answered does not know the topic yet (a new topic reaches each
        node's metadata cache a moment after CreateTopics returns)."""
        from aiokafka import TopicPartition

        try:
            metadata = kafka_dist.run_sync(kafka_dist.metadata(self._live_bootstrap(), **self.client_kwargs))
        except Exception as exc:
            raise KafkaBrokerError(f"metadata request failed: {type(exc).__name__}: {exc}") from None
        leader = metadata.leader_for_partition(TopicPartition(topic, partition))
        return -1 if leader is None else int(leader)

    def under_replicated(self) -> list[tuple[str, int]]:
        """Every ``(topic, partition)`` with fewer in-sync replicas than replicas, or no
        leader, from a fresh metadata answer of the running nodes."""
        from aiokafka.admin import AIOKafkaAdminClient

        async def describe():
            admin = AIOKafkaAdminClient(bootstrap_servers=self._live_bootstrap(), request_timeout_ms=5000,
                                        **self.client_kwargs)
            await admin.start()
            try:
                return await admin.describe_topics(None)
            finally:
                await admin.close()

        return sorted((t["topic"], p["partition"]) for t in kafka_dist.run_sync(describe()) for p in t["partitions"]
                      if p["leader"] < 0 or len(p["isr"]) < len(p["replicas"]))

    def wait_in_sync(self, timeout_s: float = 120.0) -> None:
        """Until no partition is under-replicated (what an operator waits for between two
        steps of a rolling restart)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                lagging = self.under_replicated()
            except Exception as exc:  # a node still settling after a restart: ask again
                lagging = [f"{type(exc).__name__}: {exc}"]
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise KafkaBrokerError(f"partitions still under-replicated after {timeout_s:.0f} s: {lagging[:5]}")
            time.sleep(0.5)  # polling interval of the check, not a synchronisation

    def _live_bootstrap(self) -> str:
        live = [n for n in self.node_ids if self.pid(n) is not None and n not in self._paused]
        if not live:
            raise KafkaBrokerError("no node of the cluster is running")
        return ",".join(f"127.0.0.1:{self._client_ports[n - 1]}" for n in live)

    # ------------------------------------------------------------------ internals
    def _check_node(self, node_id: int) -> None:
        if node_id not in self.node_ids:
            raise KafkaBrokerError(f"no node {node_id}: the cluster's nodes are {self.node_ids}")

    def _proc(self, node_id: int) -> subprocess.Popen:
        self._check_node(node_id)
        if node_id not in self._procs:
            raise KafkaBrokerError("the cluster is not started")
        return self._procs[node_id]

    def _live(self, node_id: int) -> subprocess.Popen:
        proc = self._proc(node_id)
        if proc.poll() is not None:
            raise KafkaBrokerError(f"node {node_id} is not running")
        return proc

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass

    @staticmethod
    def _end(proc: subprocess.Popen, timeout_s: float) -> None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _pick_ports(self) -> None:
        if self._client_ports:
            return
        count = (3 if self.tls else 2) * self.nodes
        if self._port is None:
            ports = free_ports(count)
        else:
            ports = list(range(self._port, self._port + count))
            for i, port in enumerate(ports):
                if port_in_use(port):
                    role = ("client", "controller", "plaintext")[i // self.nodes]
                    raise KafkaBrokerError(f"port {port} on 127.0.0.1 (the {role} port of node "
                                           f"{i % self.nodes + 1}) is already in use: pick another port")
        n = self.nodes
        self._client_ports, self._controller_ports, self._plain_ports = ports[:n], ports[n:2 * n], ports[2 * n:]

    def _prepare_dir(self) -> str:
        """The cluster id: read back from a directory this class formatted before, else new."""
        assert self.data_dir is not None
        info_path = self.data_dir / "cluster.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            if info["nodes"] != self.nodes:
                raise KafkaBrokerError(f"{self.data_dir} holds a {info['nodes']}-node cluster: start it with "
                                       f"{info['nodes']} node(s) or use another data directory")
            if kafka_dist.version_key(self.version) < kafka_dist.version_key(info["version"]):
                raise KafkaBrokerError(f"{self.data_dir} was formatted by Kafka {info['version']}: an older "
                                       f"version ({self.version}) cannot run it")
            return info["cluster_id"]
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise KafkaBrokerError(f"{self.data_dir} is not empty and holds no cluster of kpimargin broker: "
                                   "give an empty or new directory")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = kafka_dist.new_cluster_id()
        info = {"cluster_id": cluster_id, "nodes": self.nodes, "version": self.version}
        info_path.write_text(json.dumps(info, indent=1) + "\n")
        return cluster_id

    def _write_config(self, node_id: int) -> Path:
        node_dir = self.node_dir(node_id)
        node_dir.mkdir(parents=True, exist_ok=True)
        (node_dir / "logging.properties").write_text(kafka_dist.logging_config(self.version, node_dir / "server.log"))
        (node_dir / "server.properties").write_text(kafka_dist.server_properties(
            self.version, node_id, self.nodes, self._client_ports, self._controller_ports, node_dir / "data",
            sasl_users=self.sasl_users, tls=self.tls_files, plain_ports=self._plain_ports,
            tls_client_auth=self.tls_client_auth))
        return node_dir

    def _java(self, node_dir: Path, heap: list[str]) -> list[str]:
        return ["java", *heap, *JVM_OPTIONS, "-cp", f"{self._jars}/*",
                kafka_dist.logging_option(self.version, node_dir / "logging.properties"), f"-Dkafka.logs.dir={node_dir}"]

    def _format(self, cluster_id: str) -> None:
        """Format every node's storage that is not formatted yet (all at once)."""
        running = {}
        for node_id in self.node_ids:
            node_dir = self._write_config(node_id)
            if (node_dir / "data" / "meta.properties").is_file():
                continue
            command = [*self._java(node_dir, ["-Xmx256m"]), "kafka.tools.StorageTool", "format", "-t", cluster_id,
                       "-c", str(node_dir / "server.properties")]
            log = open(node_dir / "format.log", "wb")
            running[node_id] = (subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                 start_new_session=True), log)
        failed = []
        try:
            for node_id, (proc, log) in running.items():
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    pass
                if proc.poll() != 0:
                    failed.append(node_id)
        finally:  # also when interrupted: no formatting JVM is left behind
            for proc, log in running.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        if failed:
            node_dir = self.node_dir(failed[0])
            text = (node_dir / "format.log").read_text(errors="replace").strip().splitlines()
            raise KafkaBrokerError(f"formatting node {failed[0]}'s storage failed: {(text or ['no output'])[-1]}")

    def _launch(self, node_id: int) -> None:
        node_dir = self._write_config(node_id)
        command = [*self._java(node_dir, HEAP), "kafka.Kafka", str(node_dir / "server.properties")]
        with open(node_dir / "jvm.log", "ab") as log:
            self._procs[node_id] = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)

    def _wait(self, node_ids: list[int], all_brokers: bool) -> None:
        """Until each of ``node_ids`` answers a metadata request listing itself (and, with
        ``all_brokers``, every node of the cluster); raise if a node exits or time runs out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = list(node_ids)
        last = "no answer yet"
        while pending:
            for node_id in pending:
                if self._procs[node_id].poll() is not None:
                    code = self._procs[node_id].returncode
                    raise KafkaBrokerError(f"Kafka node {node_id} exited (code {code}) while starting: "
                                           f"{self.log_tail(node_id)}")
            node_id = pending[0]
            port = self._client_ports[node_id - 1]
            if accepts(port):
                try:
                    answer = kafka_dist.run_sync(kafka_dist.metadata(f"127.0.0.1:{port}", **self.client_kwargs))
                    brokers = {b.nodeId for b in answer.brokers()}
                except Exception as exc:
                    brokers, last = set(), f"{type(exc).__name__}: {exc}"
                wanted = set(self.node_ids) if all_brokers else {node_id}
                if wanted <= brokers:
                    pending.pop(0)
                    continue
                last = f"metadata lists brokers {sorted(brokers)}"
            if time.monotonic() > deadline:
                raise KafkaBrokerError(f"Kafka node {node_id} not ready within {START_TIMEOUT_S:.0f} s ({last}): "
                                       f"{self.log_tail(node_id)}")
            time.sleep(0.1)  # polling interval of the readiness check, not a synchronisation

