"""How busy the machine's CPUs were during a measurement, per process (Linux only).

On the benchmark's machine the broker, the worker(s) and the load generator share a few
cores. When their demand reaches the cores' count, a runnable process waits for a CPU, and
that wait lands in every latency measured then. Linux counts both per thread in
``/proc/<pid>/task/<tid>/schedstat``: nanoseconds run on a CPU, nanoseconds waited on a run
queue (runnable, not running). :class:`Contention` reads them for named processes before and
after a window and reports, per process, the cores it used (``cpu_cores``: CPU seconds per
second of the window) and how long its threads waited for one (``wait_cores``: run-queue
seconds per second, summed over threads), and for the machine the busy share of all cores
(``/proc/stat``). It also counts the collections of the measuring process's own garbage
collector in the window (``this_process_gc``): the load generator and the requirement
reader run there, so a pause of theirs would pass for the processor's latency.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

PROC = Path("/proc")


def schedstat_seconds(pid: int, proc: Path = PROC) -> tuple[float, float] | None:
    """``(run_s, wait_s)`` summed over the threads of process ``pid`` (None when the process
    or the kernel's schedstat is gone). Threads that ended are not counted."""
    run = wait = 0
    try:
        tids = os.listdir(proc / str(pid) / "task")
    except OSError:
        return None
    for tid in tids:
        try:
            fields = (proc / str(pid) / "task" / tid / "schedstat").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        run += int(fields[0])
        wait += int(fields[1])
    return run / 1e9, wait / 1e9


def busy_jiffies(proc: Path = PROC) -> tuple[int, int] | None:
    """``(busy, total)`` jiffies of all CPUs since boot, from the first line of ``/proc/stat``."""
    try:
        first = (proc / "stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class Contention:
    """CPU and run-queue wait of named processes over a window (module docstring)."""

    def __init__(self, pids: dict[str, int | None], proc: Path = PROC):
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.proc = proc
        self.t0 = 0.0
        self.before: dict[str, tuple[float, float] | None] = {}
        self.machine0: tuple[int, int] | None = None
        self.gc_pauses: list[float] = []  # this process's collections in the window (seconds each)
        self._gc_started = 0.0

    def _collected(self, phase: str, info: dict) -> None:
        """gc callback: this process's collections during the window, with their pauses."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    def start(self) -> "Contention":
        self.gc_pauses = []
        gc.callbacks.append(self._collected)
        self.t0 = time.monotonic()
        self.before = {name: schedstat_seconds(pid, self.proc) for name, pid in self.pids.items()}
        self.machine0 = busy_jiffies(self.proc)
        return self

    def stop(self) -> dict:
        """Per process ``{"cpu_cores", "wait_cores"}`` over the window, and ``machine``:
        ``{"busy_share", "cores"}`` (each None where the system does not tell)."""
        elapsed = time.monotonic() - self.t0
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        out: dict = {"seconds": round(elapsed, 2),
                     "this_process_gc": {"collections": len(self.gc_pauses),
                                         "longest_ms": round(max(self.gc_pauses, default=0.0) * 1000, 1)}}
        for name, pid in self.pids.items():
            before, after = self.before.get(name), schedstat_seconds(pid, self.proc)
            out[name] = None if before is None or after is None or elapsed <= 0 else {
                "cpu_cores": round((after[0] - before[0]) / elapsed, 3),
                "wait_cores": round((after[1] - before[1]) / elapsed, 3)}
        machine1 = busy_jiffies(self.proc)
        if self.machine0 is None or machine1 is None or machine1[1] == self.machine0[1]:
            out["machine"] = None
        else:
            out["machine"] = {"busy_share": round((machine1[0] - self.machine0[0]) / (machine1[1] - self.machine0[1]), 3),
                              "cores": os.cpu_count()}
        return out


def describe(contention: dict | None) -> str:
    """One line: ``worker 0.62 core (waited 0.30), broker ..., all 2 cores 91 % busy, this
    process's garbage collector did not run``."""
    if not contention:
        return "not measured"
    parts = [f"{name} {v['cpu_cores']:.2f} core (waited {v['wait_cores']:.2f})"
             for name, v in contention.items() if isinstance(v, dict) and "cpu_cores" in v]
    machine = contention.get("machine")
    if machine:
        parts.append(f"all {machine['cores']} cores {machine['busy_share']:.0%} busy")
    collected = contention.get("this_process_gc")  # the measuring process's own pauses
    if collected is not None:
        parts.append(f"this process's garbage collector ran {collected['collections']} times "
                     f"(longest pause {collected['longest_ms']:g} ms)" if collected["collections"]
                     else "this process's garbage collector did not run")
    return ", ".join(parts) or "not measured"
