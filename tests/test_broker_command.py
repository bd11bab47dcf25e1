"""``kpimargin broker`` (the embedded engine) as a user runs it: one line once the broker
answers, one line and a non-zero status when the port is taken, a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from stream.kafka.ports import free_port

pytestmark = pytest.mark.timeout(120)


def _broker(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def test_the_banner_comes_once_the_broker_answers_and_sigterm_stops_it():
    port = free_port()
    proc = _broker(port)
    try:
        line = proc.stdout.readline()  # blocks until the command prints its one line
        assert line.startswith("kpimargin broker: embedded Kafka-protocol broker") and f"127.0.0.1:{port}" in line
        assert _answers(port)  # already answering when the line came
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    assert "Traceback" not in proc.stderr.read()


def test_a_port_in_use_is_one_line_and_status_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _broker(port)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out == ""
    assert err.strip().splitlines() == [f"kpimargin broker: port {port} on 127.0.0.1 is already in use (another "
                                        "broker?); choose another with --port"]


def test_a_port_out_of_range_is_a_usage_error():
    proc = _broker(70000)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and out == ""
    assert err.strip().splitlines() == ["kpimargin broker: --port 70000 is not a TCP port (1-65535)"]


def test_kafka_engine_a_port_in_use_is_one_line_and_status_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "stream", "broker", "--engine", "kafka", "--port", str(port - 1)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and out == "", err
    assert len(lines) == 1 and lines[0].startswith(f"kpimargin broker: port {port} on 127.0.0.1 is already in use")


def test_an_embedded_broker_that_exits_while_starting_is_reported_at_once_with_its_status(monkeypatch):
    """EmbeddedBroker (the demo's, the tests' and the benchmark's broker) says the broker
    exited and with which status, instead of waiting out the port's 20 s and saying nobody
    answered. The stand-in exits with status 3 the way Tansu exits on a bad environment."""
    from stream.kafka import tansu

    monkeypatch.setattr(tansu, "broker_command", lambda port: [sys.executable, "-c", "import sys; sys.exit(3)"])
    broker = tansu.EmbeddedBroker()
    with pytest.raises(tansu.EmbeddedBrokerError, match=r"exited while starting \(status 3\)"):
        broker.start()
    assert broker.process is None


def test_an_embedded_broker_on_a_port_in_use_says_so_instead_of_taking_the_listener_for_a_broker():
    """Whatever listens on the port would have answered wait_for_port, and the caller would
    have talked Kafka to it."""
    import socket

    from stream.kafka import tansu

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = tansu.EmbeddedBroker(port=port)
        with pytest.raises(tansu.EmbeddedBrokerError, match=f"port {port} on 127.0.0.1 is already in use"):
            broker.start()
        assert broker.process is None
