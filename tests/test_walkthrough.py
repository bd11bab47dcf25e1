"""The README's audit walk-through, run as written: each line of its block, in a fresh
directory, with ``kpimargin`` being this checkout's command. Every line must succeed and
leave what it says (the export, the plot, the backtest report)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def walkthrough() -> list[list[str]]:
    section = README.read_text().split("\n## Audit\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S).group(1)
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]


def test_the_readme_audit_walkthrough_runs_as_written(tmp_path):
    lines = walkthrough()
    before = set(Path(tempfile.gettempdir()).glob("kpimargin-demo-*"))
    assert lines[0][:3] == ["kpimargin", "demo", "--export"] and len(lines) >= 5
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "KPIMARGIN_"))}  # the embedded default
    for words in lines:
        assert words[0] == "kpimargin"
        proc = subprocess.run([sys.executable, "-m", "stream", *words[1:]], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"{shlex.join(words)}: status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
    assert len(list((tmp_path / "audit").glob("*.jsonl"))) == 10
    assert (tmp_path / "gamma.png").stat().st_size > 1000
    assert "PASS" in (tmp_path / "bt-published" / "report.md").read_text()
    assert set(Path(tempfile.gettempdir()).glob("kpimargin-demo-*")) == before  # the demo removed its own folder


def test_the_demo_on_a_running_broker_prints_the_commands_that_audit_it(broker, tmp_path):
    """Against an external broker the demo namespaces its topics; its last lines are the
    exact commands (bootstrap servers and prefix) that audit them there -- and they work."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "KPIMARGIN_"))}
    env["KAFKA_BOOTSTRAP_SERVERS"] = broker
    proc = subprocess.run([sys.executable, "-m", "stream", "demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    commands = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("KAFKA_BOOTSTRAP_SERVERS=")]
    assert [c.split()[2:] for c in commands] == [["kpimargin", "replay"], ["kpimargin", "explain", "ACME"]], proc.stdout
    for command in commands:
        words = shlex.split(command)
        assignments = dict(w.split("=", 1) for w in words[:2])
        assert assignments["KAFKA_BOOTSTRAP_SERVERS"] == broker and assignments["KPIMARGIN_TOPIC_PREFIX"].startswith("demo-")
        run = subprocess.run([sys.executable, "-m", "stream", *words[3:]], cwd=tmp_path, env={**env, **assignments},
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{command}: {run.stderr}"
    assert "OK: every compared record equals its replay" in subprocess.run(
        [sys.executable, "-m", "stream", "replay"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**env, **dict(w.split("=", 1) for w in shlex.split(commands[0])[:2])}).stdout
