"""Every command that talks to a broker fails the way a user can act on: within
``KPIMARGIN_CONNECT_TIMEOUT_S``, with one line naming the bootstrap servers (or the topic
and the prefix) and what went wrong, status 1 for a broker that does not answer, 2 for
settings or names that are wrong on their face -- never a traceback, unless ``--debug``
asks for it. Each case runs the real command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from stream.kafka.ports import free_port

BROKER_COMMANDS = [
    ["consume", "margin.requirements"],
    ["export", "margin.log", "--out", "EXPORT"],
    ["replay"],
    ["explain", "ACME"],
    ["report", "ACME", "--out", "EXPORT/acme.png"],
    ["backtest", "--from-log", "--out", "EXPORT"],
    ["topics"],
    ["publish", "trades.fills", "FILE"],
    ["worker"],
    ["demo"],
]


def _run(args: list[str], tmp_path, **env: str) -> tuple[int, str, str, float]:
    args = [str(tmp_path / "out") if a == "EXPORT" else str(tmp_path / "out" / a.split("/", 1)[1])
            if a.startswith("EXPORT/") else a for a in args]
    if "FILE" in args:
        (tmp_path / "fills.jsonl").write_text('{"trade_id": "T"}\n')
        args = [str(tmp_path / "fills.jsonl") if a == "FILE" else a for a in args]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "KPIMARGIN_"))}
    full_env.update(env)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stream", *args], capture_output=True, text=True, env=full_env,
                          timeout=120, cwd=tmp_path)
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0


@pytest.mark.parametrize("args", BROKER_COMMANDS, ids=lambda a: a[0] + ("-from-log" if "--from-log" in a else ""))
def test_no_broker_there_is_one_line_and_status_1(args, tmp_path):
    servers = f"127.0.0.1:{free_port()}"  # nothing listens there
    code, out, err, took = _run(args, tmp_path, KAFKA_BOOTSTRAP_SERVERS=servers, KPIMARGIN_CONNECT_TIMEOUT_S="2")
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith(f"kpimargin {args[0]}: the Kafka bootstrap servers {servers} "), err
    assert "no broker answered" in lines[0]
    assert took < 30  # bounded by the connect timeout, not the request timeout (30 s) or faust's retries


def test_a_broker_that_does_not_answer_fails_within_the_connect_timeout(tmp_path):
    """A bootstrap address that accepts the TCP connection but never speaks Kafka."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        servers = f"127.0.0.1:{silent.getsockname()[1]}"
        code, _out, err, took = _run(["topics"], tmp_path, KAFKA_BOOTSTRAP_SERVERS=servers,
                                     KPIMARGIN_CONNECT_TIMEOUT_S="2")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"kpimargin topics: the Kafka bootstrap servers {servers}")
    assert took < 30


def test_an_unreadable_tls_file_is_a_configuration_error(tmp_path):
    code, _out, err, _took = _run(["topics"], tmp_path, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
                                  KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(tmp_path / "missing-ca.pem"))
    assert code == 2
    assert err.strip().splitlines() == [f"kpimargin topics: KAFKA_SSL_CAFILE={tmp_path / 'missing-ca.pem'}: "
                                        "No such file or directory"]


def test_debug_lets_the_traceback_through(tmp_path):
    code, _out, err, _took = _run(["--debug", "topics"], tmp_path, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                                  KPIMARGIN_CONNECT_TIMEOUT_S="2")
    assert code == 1 and "Traceback (most recent call last)" in err and "BrokerUnavailable" in err
    code, _out, err, _took = _run(["topics"], tmp_path, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                                  KPIMARGIN_CONNECT_TIMEOUT_S="2", KPIMARGIN_LOG_LEVEL="debug")
    assert code == 1 and "Traceback (most recent call last)" in err


@pytest.mark.integration
@pytest.mark.parametrize("args", [["consume", "margin.calls"], ["export", "margin.log", "--out", "EXPORT"], ["replay"],
                                  ["backtest", "--from-log", "--out", "EXPORT"]], ids=lambda a: a[0])
def test_a_missing_topic_names_itself_the_prefix_and_the_topics_there(broker, args, tmp_path):
    prefix = f"absent-{uuid.uuid4().hex[:8]}-"
    code, out, err, _took = _run(args, tmp_path, KAFKA_BOOTSTRAP_SERVERS=broker, KPIMARGIN_TOPIC_PREFIX=prefix)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"kpimargin {args[0]}: topic {prefix}"), err
    assert f"does not exist at {broker} (KPIMARGIN_TOPIC_PREFIX='{prefix}'); processor topics there: " in lines[0]


def test_a_report_that_cannot_write_is_one_line(tmp_path):
    """Writing fails (here: the output path is under a file); the same handler serves a
    full disk. Offline (``report --dir`` on the stored demo export), so no broker is needed."""
    (tmp_path / "afile").write_text("x")
    exported = Path(__file__).parent / "corpus" / "demo-export-18380e3"
    code, _out, err, _took = _run(["report", "ACME", "--dir", str(exported), "--out", str(tmp_path / "afile" / "r.png")],
                                  tmp_path)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0] == f"kpimargin report: {tmp_path / 'afile'}: File exists", err
