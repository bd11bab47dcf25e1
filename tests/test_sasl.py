"""SASL/PLAIN against a real Apache Kafka (``KafkaCluster(sasl_users=...)``), through the
real command: the right credentials work end to end; wrong ones, a mechanism the broker
does not offer, or a client that does not speak SASL at all fail at once with one line
naming the bootstrap servers, status 2 (a configuration error), never a traceback.

One single-node cluster serves the module. Needs java (and mvn the first time): skipped
with the reason where they are missing, except under CI=true, where that is a failure."""

from __future__ import annotations

import uuid

import orjson
import pytest

from .streaming_support import kafka_cluster
from .test_cli_failures import _run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

USERS = {"alice": "alice-secret", "bob": "bob-secret"}
# A command that retried a refusal would take the whole connect timeout: the bound below
# is well under it, so such a retry fails the test.
CONNECT_TIMEOUT_S = "30"
FAST_S = 15.0


@pytest.fixture(scope="module")
def sasl_kafka():
    with kafka_cluster(nodes=1, sasl_users=USERS) as cluster:
        yield cluster


def sasl_env(bootstrap: str, user: str = "alice", password: str | None = None, mechanism: str = "PLAIN",
             **more: str) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": mechanism, "KAFKA_SASL_USERNAME": user,
            "KAFKA_SASL_PASSWORD": USERS.get(user, "") if password is None else password,
            "KPIMARGIN_CONNECT_TIMEOUT_S": CONNECT_TIMEOUT_S, **more}


def one_line(err: str) -> str:
    """The only line on stderr (the assertion shows all of stderr otherwise)."""
    assert "Traceback" not in err and "Unclosed" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_the_cluster_is_sasl_only_and_its_own_api_speaks_it(sasl_kafka):
    assert sasl_kafka.security_protocol == "SASL_PLAINTEXT"
    assert sasl_kafka.client_kwargs["sasl_plain_username"] == "alice"
    config = (sasl_kafka.node_dir(1) / "server.properties").read_text()
    assert f"listeners=SASL_PLAINTEXT://{sasl_kafka.bootstrap}," in config
    assert 'user_bob="bob-secret"' in config
    assert sasl_kafka.under_replicated() == []  # an admin client with the cluster's credentials


def test_the_right_credentials_round_trip_a_message(sasl_kafka, tmp_path):
    prefix = f"sasl-{uuid.uuid4().hex[:8]}."
    code, out, err, _took = _run(["topics"], tmp_path, **sasl_env(sasl_kafka.bootstrap, KPIMARGIN_TOPIC_PREFIX=prefix))
    assert code == 0 and "Traceback" not in err, err
    assert f"{prefix}trades.fills" in out.split()
    fill = {"trade_id": f"T-{uuid.uuid4().hex[:8]}", "account_id": "ACME", "contract_id": "C", "qty": 1}
    (tmp_path / "fill.jsonl").write_bytes(orjson.dumps(fill) + b"\n")
    env = sasl_env(sasl_kafka.bootstrap, user="bob", KPIMARGIN_TOPIC_PREFIX=prefix)  # any user of the list
    code, _out, err, _took = _run(["publish", "trades.fills", str(tmp_path / "fill.jsonl")], tmp_path, **env)
    assert code == 0 and f"published 1 messages to {prefix}trades.fills" in err, err
    code, out, err, _took = _run(["consume", "trades.fills", "--from-beginning", "--timeout", "1"], tmp_path, **env)
    assert code == 0 and "Traceback" not in err, err
    assert [orjson.loads(line) for line in out.splitlines()] == [fill]


@pytest.mark.parametrize("args", [["consume", "margin.requirements"], ["topics"],
                                  ["export", "margin.log", "--out", "EXPORT"], ["replay"], ["worker"]],
                         ids=lambda a: a[0])
def test_a_wrong_password_is_one_line_status_2_at_once(sasl_kafka, args, tmp_path):
    code, out, err, took = _run(args, tmp_path, **sasl_env(sasl_kafka.bootstrap, password="not-the-password"))
    line = one_line(err)
    assert code == 2, err
    assert line.startswith(f"kpimargin {args[0]}: the Kafka bootstrap servers {sasl_kafka.bootstrap} "
                           "(SASL_PLAINTEXT): SASL authentication failed for user 'alice' (mechanism PLAIN"), line
    assert line.endswith("check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"), line
    assert out == ""  # the worker did not start faust; nothing was read
    assert took < FAST_S, took


def test_an_unknown_user_is_the_same_refusal(sasl_kafka, tmp_path):
    code, _out, err, took = _run(["topics"], tmp_path, **sasl_env(sasl_kafka.bootstrap, user="mallory", password="x"))
    line = one_line(err)
    assert code == 2 and "SASL authentication failed for user 'mallory'" in line and took < FAST_S, err


def test_a_mechanism_the_broker_does_not_offer_is_one_line_status_2(sasl_kafka, tmp_path):
    env = sasl_env(sasl_kafka.bootstrap, mechanism="SCRAM-SHA-256")
    code, _out, err, took = _run(["topics"], tmp_path, **env)
    line = one_line(err)
    assert code == 2 and took < FAST_S, err
    assert line.startswith(f"kpimargin topics: the Kafka bootstrap servers {sasl_kafka.bootstrap} (SASL_PLAINTEXT): "
                           "SASL authentication impossible: "), line
    assert "does not offer mechanism SCRAM-SHA-256" in line


@pytest.mark.parametrize("args", [["topics"], ["worker"]], ids=lambda a: a[0])
def test_a_plaintext_client_at_the_sasl_listener_is_one_line_status_2(sasl_kafka, args, tmp_path):
    """The broker answers ApiVersions without authentication, then closes the connection at
    the metadata request; asked for a SASL handshake, it names its mechanisms."""
    code, out, err, took = _run(args, tmp_path, KAFKA_BOOTSTRAP_SERVERS=sasl_kafka.bootstrap,
                                KPIMARGIN_CONNECT_TIMEOUT_S=CONNECT_TIMEOUT_S)
    line = one_line(err)
    assert code == 2 and out == "" and took < FAST_S, err
    assert line == (f"kpimargin {args[0]}: the Kafka bootstrap servers {sasl_kafka.bootstrap} (PLAINTEXT): the broker "
                    f"at {sasl_kafka.bootstrap} requires SASL authentication (mechanisms PLAIN) but "
                    "KAFKA_SECURITY_PROTOCOL=PLAINTEXT: set SASL_PLAINTEXT or SASL_SSL and KAFKA_SASL_MECHANISM, "
                    "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD")
