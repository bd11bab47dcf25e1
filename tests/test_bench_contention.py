"""bench/contention.py reads per-thread CPU and run-queue wait from /proc: sums over threads,
survives threads and processes that end, and counts a real process's CPU time."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench.contention import Contention, busy_jiffies, describe, schedstat_seconds


def fake_proc(root: Path, threads: dict[int, str], stat: str) -> Path:
    for tid, text in threads.items():
        (root / "42" / "task" / str(tid)).mkdir(parents=True)
        if text:
            (root / "42" / "task" / str(tid) / "schedstat").write_text(text)
    (root / "stat").write_text(stat)
    return root


def test_threads_are_summed_and_a_thread_without_its_file_is_skipped(tmp_path):
    proc = fake_proc(tmp_path, {42: "1500000000 250000000 10\n", 43: "500000000 750000000 3\n", 44: ""},
                     "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert schedstat_seconds(42, proc) == (2.0, 1.0)
    assert schedstat_seconds(7, proc) is None  # no such process
    # busy = all but idle (800) and iowait (50)
    assert busy_jiffies(proc) == (150, 1000)


def test_a_window_reports_cores_used_and_waited_per_process_and_the_machine(tmp_path):
    proc = fake_proc(tmp_path, {42: "0 0 1\n"}, "cpu  0 0 0 100 0 0 0 0\n")
    window = Contention({"worker": 42, "broker": None, "gone": 99}, proc).start()
    (proc / "42" / "task" / "42" / "schedstat").write_text("9000000000000 3000000000000 5\n")
    (proc / "stat").write_text("cpu  300 0 100 200 0 0 0 0\n")
    out = window.stop()
    assert "broker" not in out  # no pid: not measured
    assert out["gone"] is None
    # whatever the window's length, the ratio of waited to used is the counters' (3 to 9)
    assert out["worker"]["wait_cores"] / out["worker"]["cpu_cores"] == pytest.approx(1 / 3, rel=1e-3)
    assert out["worker"]["cpu_cores"] > 1  # 9,000 s of CPU over a window far shorter
    assert out["machine"]["busy_share"] == pytest.approx(400 / 500)
    assert describe(out).startswith("worker ") and "80% busy" in describe(out)
    assert describe(None) == "not measured"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux /proc only")
def test_a_real_process_that_burns_cpu_is_counted_and_an_idle_one_is_not():
    # each says 'ready', waits for a line, does its work (0.3 s of CPU, or nothing), says 'done'
    burn = "while time.process_time() - t < 0.3: pass\n"
    code = "import sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\nt = time.process_time()\n{}" \
           "print('done', flush=True)\nsys.stdin.read()\n"
    procs = [subprocess.Popen([sys.executable, "-c", code.format(work)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for work in (burn, "")]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        before = [schedstat_seconds(p.pid) for p in procs]
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout.readline().strip() == "done"
        after = [schedstat_seconds(p.pid) for p in procs]
        burned, idled = (a[0] - b[0] for a, b in zip(after, before))
        assert burned >= 0.29
        assert idled < 0.1
    finally:
        for p in procs:
            p.communicate("")


def test_a_window_counts_this_processs_garbage_collections_and_stops_counting_after(tmp_path):
    """The load generator and the reader run in the measuring process: a window says
    whether its collector paused it (a pause there would show as the processor's latency)."""
    import gc

    proc = fake_proc(tmp_path, {42: "0 0 1\n"}, "cpu  0 0 0 100 0 0 0 0\n")
    quiet = Contention({}, proc).start()
    quiet_out = quiet.stop()
    assert quiet_out["this_process_gc"] == {"collections": 0, "longest_ms": 0.0}
    assert describe(quiet_out).endswith("this process's garbage collector did not run")
    window = Contention({}, proc).start()
    gc.collect()
    gc.collect()
    out = window.stop()
    assert out["this_process_gc"]["collections"] == 2
    assert out["this_process_gc"]["longest_ms"] >= 0.0
    assert "garbage collector ran 2 times" in describe(out)
    gc.collect()  # after the window: not counted, and no callback left behind
    assert window._collected not in gc.callbacks
