"""Faults only a replicated cluster has, on a three-node Apache Kafka (KRaft) cluster.

Each test publishes the crash test's scenario (``KPIMARGIN_FAULT_EVENTS`` events, 3,000 by
default) in pieces, strictly in order, to two workers, while a fault runs beside the
publication on its own timeline (a step starts once a given piece is published; the
publication waits for a step only where the fault must be over before it goes on):

* ``leader_killed``: SIGKILL the broker that leads the most ``margin.log`` partitions
  mid-stream, restart it later;
* ``broker_frozen``: SIGSTOP the broker that leads the most ``margin.log`` partitions for
  longer than the clients' request timeout and the brokers' session timeout (the
  controller fences it and moves its leaderships), then SIGCONT it;
* ``rolling_restart``: restart the three brokers one after the other (each stopped
  gracefully, started again and caught up -- no partition under-replicated -- before the
  next), while inputs flow.

Topics have replication factor 3 and ``min.insync.replicas=2``. The processor keeps working
or stops by its own rules (a send the cluster did not take within the request timeout
stops a worker with exit status 70); the test, like a process supervisor, starts a
replacement for every worker that stopped. Afterwards :func:`check_outcome` asserts that
nothing was lost or applied twice, no input was dead-lettered, the published records equal
the pure engine applied in publication order (a clean run) and a replay of the log, the
persisted state equals the replayed state and ``kpimargin replay`` reports zero mismatches.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest

from stream.worker.lifecycle import EXIT_FAILED
from stream.core.topics import LOG

from .streaming_support import Cluster, breakdown, check_outcome, fresh_settings, kafka_cluster
from .test_crash import chunked, scenario

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

EVENTS = int(os.environ.get("KPIMARGIN_FAULT_EVENTS", "3000"))
PIECES = 12
REQUEST_TIMEOUT_S = 10.0  # the clients' request timeout in these tests (30 s by default)
FROZEN_S = 16.0  # > the request timeout and > the brokers' session timeout (9 s)


@pytest.fixture(scope="module")
def three_nodes():
    with kafka_cluster(nodes=3) as cluster:
        yield cluster


@pytest.fixture
def kafka(three_nodes):
    """The three-node cluster with every node running and every partition in sync."""
    for node in three_nodes.node_ids:
        if three_nodes.pid(node) is None:
            three_nodes.restart(node)
        elif node in three_nodes._paused:  # noqa: SLF001 - a test that failed mid-freeze
            three_nodes.resume(node)
    three_nodes.wait_in_sync()
    return three_nodes


class Timeline:
    """The fault's steps, run one after the other in a thread beside the publication: a
    step starts once piece ``at`` is published; piece ``before`` is published only once
    the step is over."""

    def __init__(self, steps: list[tuple[int, int, str, callable]]):
        self.steps = steps
        self.published = 0
        self.done = 0
        self.log: list[str] = []
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for at, _before, what, action in self.steps:
                with self.cond:
                    self.cond.wait_for(lambda: self.published >= at)
                started = time.monotonic()
                action()
                self.log.append(f"{what} after piece {at} ({time.monotonic() - started:.1f} s)")
                with self.cond:
                    self.done += 1
                    self.cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            self.error = exc
            with self.cond:
                self.done = len(self.steps)
                self.cond.notify_all()

    def before_piece(self, i: int, timeout_s: float = 300.0) -> None:
        """Wait until every step that must be over before piece ``i`` is."""
        must = sum(1 for _at, before, _w, _a in self.steps if before <= i)
        with self.cond:
            if not self.cond.wait_for(lambda: self.done >= must, timeout=timeout_s):
                raise AssertionError(f"fault step {self.done + 1} not over within {timeout_s:.0f} s: {self.log}")
        if self.error is not None:
            raise self.error

    def published_piece(self) -> None:
        with self.cond:
            self.published += 1
            self.cond.notify_all()


def busiest_log_leader(kafka, settings) -> int:
    """The node leading the most margin.log partitions."""
    leaders = Counter(kafka.leader_of(settings.topic(LOG), p) for p in range(settings.partitions))
    leaders.pop(-1, None)  # a partition without a leader, or not yet known to the node asked
    assert leaders, "no margin.log partition has a leader"
    return leaders.most_common(1)[0][0]


def restart_stopped(cluster: Cluster) -> list[int]:
    """Start a replacement for every worker that stopped; their exit statuses."""
    codes = []
    for proc in list(cluster.workers):
        if proc.poll() is not None:
            codes.append(proc.returncode)
            cluster.workers.remove(proc)
            cluster.start_worker()
    return codes


def settle_supervised(cluster: Cluster, codes: list[int], timeout_s: float = 300.0) -> dict[str, dict]:
    """:meth:`Cluster.settle`, replacing workers that stop meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        codes += restart_stopped(cluster)
        try:
            return cluster.settle(timeout_s=min(60.0, max(1.0, deadline - time.monotonic())))
        except AssertionError:
            if time.monotonic() > deadline or all(p.poll() is None for p in cluster.workers):
                raise


def run_through_fault(kafka, tmp_path, summary, name: str, steps) -> None:
    # stall_timeout_s: a rebalance hung for twice as long stops its worker (stream.worker.recovery),
    # and the supervisor below starts another -- within one settle window
    settings = fresh_settings(kafka.bootstrap, tmp_path, batch_max=20, replication_factor=3,
                              request_timeout_s=REQUEST_TIMEOUT_S, stall_timeout_s=15.0)
    cluster = Cluster(settings, tmp_path)
    pieces = chunked(scenario(EVENTS), PIECES)
    timeline = Timeline(steps(kafka, settings))
    codes: list[int] = []
    try:
        cluster.start_worker()
        cluster.start_worker()
        timeline.thread.start()
        for i, piece in enumerate(pieces):
            timeline.before_piece(i)
            cluster.publish_messages(piece)
            timeline.published_piece()
            codes += restart_stopped(cluster)
        timeline.before_piece(len(pieces) + 1)
        outputs = settle_supervised(cluster, codes)
        counts = check_outcome(cluster, outputs)
    finally:
        cluster.stop()
    summary(f"{name}: {counts['inputs']} input events, {counts['log_entries']} log entries in "
              f"{counts['log_records']} records, faults {timeline.log}, {len(codes)} worker(s) stopped "
              f"(exit {sorted(set(codes))}) and replaced, {cluster.started} worker starts, {counts['records']} "
              f"distinct records published ({breakdown(outputs)}), replay: {counts['mismatches']} mismatches")
    assert set(codes) <= {EXIT_FAILED}, f"a worker stopped other than by its own rules: {codes}\n{cluster.logs()}"


def test_killing_the_log_leader_loses_nothing(kafka, tmp_path, summary):
    def steps(kafka, settings):
        victim = []

        def kill():
            victim.append(busiest_log_leader(kafka, settings))
            kafka.kill(victim[0])

        return [(3, 4, "SIGKILL the log leader", kill),
                (7, PIECES + 1, "restart it", lambda: (kafka.restart(victim[0]), kafka.wait_in_sync()))]

    run_through_fault(kafka, tmp_path, summary, "leader_killed", steps)


def test_a_frozen_broker_loses_nothing(kafka, tmp_path, summary):
    def steps(kafka, settings):
        victim = []

        def freeze():
            victim.append(busiest_log_leader(kafka, settings))
            kafka.pause(victim[0])

        def thaw():
            time.sleep(FROZEN_S)  # how long the broker stays frozen: the fault itself, not a synchronisation
            kafka.resume(victim[0])
            kafka.wait_in_sync()

        return [(3, 4, "SIGSTOP the log leader", freeze), (4, PIECES + 1, f"SIGCONT it after {FROZEN_S:.0f} s", thaw)]

    run_through_fault(kafka, tmp_path, summary, "broker_frozen", steps)


def test_a_rolling_restart_loses_nothing(kafka, tmp_path, summary):
    def steps(kafka, settings):
        def restart(node):
            return lambda: (kafka.restart(node), kafka.wait_in_sync())

        return [(2 + 3 * i, 5 + 3 * i, f"restart node {node}", restart(node)) for i, node in enumerate(kafka.node_ids)]

    run_through_fault(kafka, tmp_path, summary, "rolling_restart", steps)
