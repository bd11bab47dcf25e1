"""Apache Kafka's broker jars, fetched from Maven Central with Maven and cached; the files
one KRaft node runs with (server.properties, the logging configuration); small helpers on
ports and logs.

Knows nothing of which Kafka version is pinned: ``stream.kafka.apache`` passes that in.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from stream.kafka import shim

if TYPE_CHECKING:
    from stream.kafka.certs import TlsFiles

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


class FetchError(Exception):
    """Maven could not fetch the jars (one-line message)."""


def cache_root() -> Path:
    return Path(os.environ.get("KPIMARGIN_CACHE_DIR") or Path.home() / ".cache" / "kpimargin").expanduser()


def major(version: str) -> int:
    match = re.match(r"(\d+)\.", version)
    if not match:
        raise ValueError(f"not a Kafka version: {version!r} (expected e.g. 4.4.0 or 3.9.1)")
    return int(match.group(1))


def jar_dir(version: str) -> Path:
    return cache_root() / f"kafka-{version}" / "lib"


def is_cached(version: str) -> bool:
    return (jar_dir(version) / f"kafka_2.13-{version}.jar").is_file()


def _pom(version: str, extra: list[str]) -> str:
    deps = [f"org.apache.kafka:kafka_2.13:{version}", *extra]
    lines = []
    for coords in deps:
        group, artifact, ver = coords.split(":")
        lines.append(f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
                     f"<version>{ver}</version></dependency>")
    body = "\n".join(lines)
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>kpimargin</groupId><artifactId>kafka-broker-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{body}
  </dependencies>
</project>
"""


def _drop_stale_temps(root: Path) -> None:
    """Remove what fetches that were killed left behind (their process is gone)."""
    for path in root.glob(".fetch-*-*.tmp"):
        try:
            pid = int(path.name.split("-")[-1].removesuffix(".tmp"))
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def fetch_jars(version: str, logging_jars: list[str], timeout_s: float = 600.0) -> Path:
    """The cached jar folder of this Kafka version; fetched with ``mvn`` first if absent.

    Fetched into a temporary folder beside the cache entry and renamed into place, so a
    killed fetch never leaves a half cache; the folder is never changed after that."""
    if is_cached(version):
        return jar_dir(version)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    _drop_stale_temps(root)
    temp = Path(tempfile.mkdtemp(prefix=f".fetch-{version}-", suffix=f"-{os.getpid()}.tmp", dir=root))
    try:
        (temp / "pom.xml").write_text(_pom(version, logging_jars))
        command = ["mvn", "-q", "-B", "-f", str(temp / "pom.xml"), f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                   f"-DoutputDirectory={temp / 'lib'}", "-DincludeScope=runtime"]
        try:
            proc = subprocess.run(command, cwd=temp, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise FetchError(f"mvn did not fetch the Kafka {version} jars within {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not (temp / "lib" / f"kafka_2.13-{version}.jar").is_file():
            raise FetchError(f"mvn could not fetch the Kafka {version} jars (exit {proc.returncode}): "
                             f"{_last_error(proc.stdout + proc.stderr)}")
        target = root / f"kafka-{version}"
        try:
            os.rename(temp, target)
        except OSError:  # another fetch finished first: keep its folder
            if not is_cached(version):
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return jar_dir(version)


def _last_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("[ERROR]") and "Re-run Maven" not in ln and "-> [Help" not in ln]
    text = (errors or lines or ["no output"])[0]
    return text.removeprefix("[ERROR] ")[:400]


def logging_option(version: str, config_file: Path) -> str:
    """The JVM option that makes Kafka read its logging configuration from ``config_file``."""
    if major(version) >= 4:
        return f"-Dlog4j2.configurationFile={config_file}"
    return f"-Dlog4j.configuration=file:{config_file}"


def logging_config(version: str, log_file: Path) -> str:
    """A WARN-level logging configuration writing to ``log_file`` only: log4j2 for Kafka
    4.x, log4j 1 (reload4j) for 3.x."""
    pattern = "[%d] %p %m (%c)%n"
    if major(version) >= 4:
        return (f"status = error\nappender.file.type = File\nappender.file.name = FILE\n"
                f"appender.file.fileName = {log_file}\nappender.file.layout.type = PatternLayout\n"
                f"appender.file.layout.pattern = {pattern}\nrootLogger.level = WARN\n"
                f"rootLogger.appenderRef.file.ref = FILE\n")
    return (f"log4j.rootLogger=WARN, file\nlog4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={log_file}\nlog4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            f"log4j.appender.file.layout.ConversionPattern={pattern}\n")


SASL_USERNAME = re.compile(r"[A-Za-z0-9._-]+")


def check_sasl_users(users: dict[str, str]) -> None:
    """Raise ValueError unless every user name and password can be written into a JAAS
    entry of server.properties as is: names of letters, digits, ``._-``; passwords of
    printable ASCII without ``"`` or ``\\`` (a properties file is read as ISO-8859-1, with
    backslash escapes)."""
    if not users:
        raise ValueError("sasl_users needs at least one user")
    for name, password in users.items():
        if not SASL_USERNAME.fullmatch(name):
            raise ValueError(f"SASL user name {name!r}: use letters, digits, '.', '_' and '-' only")
        if not password or any(not " " <= c <= "~" or c in '"\\' for c in password):
            raise ValueError(f"SASL password of {name!r}: use printable ASCII without '\"' or '\\' (and not empty)")


def plain_jaas_config(users: dict[str, str]) -> str:
    """The broker's SASL/PLAIN JAAS entry: every ``user_<name>="<password>"``, and the first
    user as the broker's own identity on the inter-broker listener."""
    check_sasl_users(users)
    first, password = next(iter(users.items()))
    entries = " ".join(f'user_{name}="{secret}"' for name, secret in users.items())
    return (f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{first}" '
            f'password="{password}" {entries};')


def server_properties(version: str, node_id: int, nodes: int, client_ports: list[int], controller_ports: list[int],
                      log_dir: Path, sasl_users: dict[str, str] | None = None, tls: TlsFiles | None = None,
                      plain_ports: list[int] | None = None, tls_client_auth: bool = False) -> str:
    """One combined broker+controller node of a ``nodes``-voter KRaft cluster on 127.0.0.1.

    With ``sasl_users`` (name -> password) the client listener, also the inter-broker one,
    is SASL_PLAINTEXT with the PLAIN mechanism only (the first user is the brokers' own);
    the controller listener stays PLAINTEXT. With ``tls`` (:class:`stream.kafka.certs.
    TlsFiles`) the client listener speaks TLS (SSL, or SASL_SSL with ``sasl_users``), the
    broker's key and chain in a PEM key store, the CA its trust store (the inter-broker
    connections verify each other), and each node also has a PLAINTEXT listener on its
    port of ``plain_ports``; ``tls_client_auth``: clients must show a certificate the CA
    signed (mutual TLS)."""
    voters = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(controller_ports))
    client, controller = client_ports[node_id - 1], controller_ports[node_id - 1]
    replicas, min_isr = min(3, nodes), min(2, nodes)
    # its name is its security protocol
    listener = {(False, False): "PLAINTEXT", (True, False): "SASL_PLAINTEXT", (False, True): "SSL",
                (True, True): "SASL_SSL"}[(bool(sasl_users), tls is not None)]
    plain = f",PLAINTEXT://127.0.0.1:{plain_ports[node_id - 1]}" if tls and plain_ports else ""
    props = {
        "process.roles": "broker,controller",
        "node.id": node_id,
        "controller.quorum.voters": voters,
        "listeners": f"{listener}://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller}{plain}",
        "advertised.listeners": f"{listener}://127.0.0.1:{client}{plain}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT"
                                          + (",PLAINTEXT:PLAINTEXT" if plain else ""),
        "inter.broker.listener.name": listener,
        "log.dirs": log_dir,
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": 10,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "false",
    }
    if major(version) >= 4:  # share groups' state topic (created only when share groups are used)
        props["share.coordinator.state.topic.replication.factor"] = replicas
        props["share.coordinator.state.topic.min.isr"] = min_isr
    if sasl_users:
        props["sasl.enabled.mechanisms"] = "PLAIN"
        props["sasl.mechanism.inter.broker.protocol"] = "PLAIN"
        props[f"listener.name.{listener.lower()}.plain.sasl.jaas.config"] = plain_jaas_config(sasl_users)
    if tls:  # PEM stores (Kafka 2.7+): the key unencrypted, so no ssl.key.password
        props["ssl.keystore.type"] = "PEM"
        props["ssl.keystore.location"] = tls.broker
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = tls.ca
        if tls_client_auth:
            props["ssl.client.auth"] = "required"
    return "".join(f"{key}={value}\n" for key, value in props.items())


def java_major() -> int | None:
    """The major version of the ``java`` on PATH (None when it does not run)."""
    try:
        proc = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        return None
    first = int(match.group(1))
    return int(match.group(2) or 0) if first == 1 else first


def new_cluster_id() -> str:
    while True:  # Kafka's own Uuid strings never start with "-" (it would read as an option)
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def log_tail(node_dir: Path, lines: int = 3) -> str:
    found: list[str] = []
    for name in ("server.log", "jvm.log"):
        try:
            text = (node_dir / name).read_text(errors="replace")
        except OSError:
            continue
        found += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(("\tat ", "at "))]
    return " | ".join(found[-lines:]) or "its log is empty"


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("-")[0].split(".") if x.isdigit())


def wait_for_state(pid: int, stopped: bool, timeout_s: float = 5.0) -> None:
    """Wait until the kernel shows a process stopped (SIGSTOP delivered) or running again."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return  # gone, or no /proc here
        if (state in "Tt") == stopped:
            return
        time.sleep(0.005)


def run_sync(coro):
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def metadata(bootstrap: str, timeout_ms: int = 5000, **client_kwargs):
    """A fresh metadata answer for every topic (aiokafka ClusterMetadata) from the first
    server of ``bootstrap`` that answers, asked of that server itself (``client_kwargs``: the
    security options of :attr:`stream.kafka.apache.KafkaCluster.client_kwargs`). A client's
    ``fetch_all_metadata`` would ask a random broker of the cluster, which may be a paused
    one: a whole request timeout lost, and an answer from a node that was not asked."""
    from aiokafka.cluster import ClusterMetadata
    from aiokafka.errors import KafkaConnectionError, KafkaError

    last: BaseException | None = None
    for host, port, _family in shim.bootstrap_hosts(bootstrap):
        try:
            conn = await shim.connect(host, port, timeout_ms, client_kwargs)
        except (OSError, KafkaError, asyncio.TimeoutError) as exc:
            last = exc
            continue
        try:
            answer = await conn.send(shim.metadata_request(all_topics=True))
        except (KafkaError, asyncio.TimeoutError) as exc:
            last = exc
            continue
        finally:
            conn.close()
        cluster = ClusterMetadata(metadata_max_age_ms=60_000)
        cluster.update_metadata(answer)
        return cluster
    raise KafkaConnectionError(f"no server of {bootstrap} answered a metadata request: "
                               f"{type(last).__name__}: {last}")
