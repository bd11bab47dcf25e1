"""docker-compose.yml and the Dockerfile, checked by reading them (no Docker needed): the
broker is Apache Kafka in KRaft mode, the kpimargin services only use real settings, the
start order is broker -> topics -> worker, and the topics step creates every SPEC topic."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from stream.cli.main import build_parser
from stream.kafka.clients import all_topics
from stream.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_PATH = ROOT / "docker-compose.yml"
DOCKERFILE_PATH = ROOT / "Dockerfile"

SPEC_TOPICS = {
    "kpi.contracts",
    "kpi.flash",
    "kpi.settlements",
    "clock.ticks",
    "trades.fills",
    "collateral.movements",
    "margin.requirements",
    "margin.calls",
    "margin.deadletter",
}
KNOWN_ENV = {env for env, _default, _meaning in Settings.documentation()}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_PATH.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE_PATH.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instruction_args(name: str) -> list[str]:
    return [args for word, args in dockerfile_instructions() if word == name]


def test_compose_has_no_version_key(compose):
    assert "version" not in compose
    assert {"kafka", "topics", "worker"} <= set(compose["services"])


def test_kafka_is_apache_kafka_in_kraft_mode(services):
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_of(kafka)
    roles = {r.strip() for r in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert {"broker", "controller"} <= roles
    assert env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    # containers use kafka:9092, the host localhost:29092
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT_HOST://localhost:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert any(str(p).endswith("29092:29092") for p in kafka["ports"])
    test = kafka["healthcheck"]["test"]
    test = " ".join(test) if isinstance(test, list) else test
    assert "/opt/kafka/bin/kafka-topics.sh" in test and "--list" in test
    assert "zookeeper" not in COMPOSE_PATH.read_text().lower()


def test_compose_runs_the_kafka_version_the_tests_run(services):
    """docker compose and `kpimargin broker --engine kafka` (the tests' real Kafka) run the
    same Apache Kafka release."""
    from stream.kafka.apache import KAFKA_VERSION

    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


@pytest.mark.parametrize("name", ["topics", "worker"])
def test_kpimargin_env_is_known_settings(services, name):
    env = env_of(services[name])
    unknown = set(env) - KNOWN_ENV
    assert not unknown, f"{name}: not Settings variables: {sorted(unknown)}"
    settings = Settings.from_env(env)  # raises on a value it cannot parse
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.log_level == "info"
    for var in ("KPIMARGIN_APP_ID", "KPIMARGIN_PARTITIONS", "KPIMARGIN_REPLICATION_FACTOR", "KPIMARGIN_SESSION_TIMEOUT_S"):
        assert var in env, f"{name}: {var} missing"


def test_topics_and_worker_share_the_cluster_settings(services):
    topics_env, worker_env = env_of(services["topics"]), env_of(services["worker"])
    assert topics_env.items() <= worker_env.items()
    t, w = Settings.from_env(topics_env), Settings.from_env(worker_env)
    for attr in ("bootstrap_servers", "app_id", "topic_prefix", "partitions", "replication_factor"):
        assert getattr(t, attr) == getattr(w, attr), attr


def test_worker_keeps_rocksdb_state_on_a_volume(compose, services):
    worker = services["worker"]
    settings = Settings.from_env(env_of(worker))
    assert settings.store.startswith("rocksdb://")
    mounts = {}
    for volume in worker["volumes"]:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source")
        else:
            source, target = str(volume).split(":")[:2]
            mounts[target] = source
    assert settings.data_dir in mounts
    assert mounts[settings.data_dir] in (compose.get("volumes") or {})  # a named volume
    assert worker.get("restart") == "unless-stopped"


def test_start_order_kafka_then_topics_then_worker(services):
    assert services["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "healthcheck" in services["kafka"]


def test_partitions_are_what_settings_create(services):
    for name in ("topics", "worker"):
        env = env_of(services[name])
        settings = Settings.from_env(env)
        assert settings.partitions == int(env["KPIMARGIN_PARTITIONS"]) == 4
        # a host-side `kpimargin demo` with default settings expects the same count
        assert settings.partitions == Settings().partitions
        assert settings.replication_factor == int(env["KPIMARGIN_REPLICATION_FACTOR"]) == 1


def test_kpimargin_services_run_the_project_image(services):
    entrypoint = [json.loads(args) for args in instruction_args("ENTRYPOINT")]
    assert entrypoint[-1] == ["kpimargin"]
    for name, command in (("topics", ["topics"]), ("worker", ["worker"])):
        service = services[name]
        assert service["build"] in (".", {"context": "."})
        assert "entrypoint" not in service  # the image's: kpimargin
        cmd = service["command"]
        cmd = shlex.split(cmd) if isinstance(cmd, str) else cmd
        assert cmd == command
        build_parser().parse_args(cmd)  # a real kpimargin subcommand


def test_topics_step_creates_every_spec_topic(services):
    created = all_topics(Settings.from_env(env_of(services["worker"])))
    assert SPEC_TOPICS | {"margin.log"} <= set(created)
    assert created == all_topics(Settings.from_env(env_of(services["topics"])))


def test_dockerfile_installs_rocksdb_extra_and_runs_unprivileged():
    assert instruction_args("FROM")[0].startswith("python:3.11-slim")
    runs = " ".join(instruction_args("RUN"))
    assert re.search(r"pip install\b[^&;]*['\"]?\.\[rocksdb\]", runs)
    users = instruction_args("USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert instruction_args("WORKDIR")[-1] == "/app"
    assert json.loads(instruction_args("CMD")[-1]) == ["worker"]


def test_dockerfile_copies_what_the_build_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    copied = " ".join(instruction_args("COPY")).split()
    assert "pyproject.toml" in copied
    readme = project.get("readme")
    if isinstance(readme, str):  # setuptools refuses to build without it
        assert readme in copied
    assert "stream" in copied
