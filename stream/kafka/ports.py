"""Local TCP ports for the brokers this package starts (the embedded Tansu, a local Apache
Kafka): pick free ones, tell whether one is taken, wait until one answers."""

from __future__ import annotations

import socket
import time


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports nothing listens on now (all held open while choosing)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Something already listens on (or holds) ``host:port``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Something answers a connection on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 20.0, give_up=None) -> bool:
    """Wait until something answers on ``host:port``: True; False as soon as ``give_up()``
    is true (e.g. the broker process exited); TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if give_up is not None and give_up():
            return False
        if accepts(port, host):
            return True
        if time.monotonic() > deadline:
            raise TimeoutError(f"no broker answered on {host}:{port} within {timeout_s:.0f} s")
        time.sleep(0.05)
