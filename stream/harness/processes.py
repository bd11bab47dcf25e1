"""Worker child processes, as the demo, the integration tests and the benchmarks run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from stream.settings import Settings


def start_worker_process(settings: Settings, log_path: Path | None = None) -> subprocess.Popen:
    """A worker (``python -m stream worker``) as a child process in its own session, with
    ``settings`` in its environment and its output appended to ``log_path``."""
    env = {**os.environ, **settings.env()}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "stream", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM (the worker makes what it applied durable, then exits); SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
