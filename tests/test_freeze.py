"""A worker frozen mid-batch -- a long GC pause, a frozen VM, a paused container -- for
longer than the session timeout is replaced by the group; when it thaws it is a *zombie*:
it goes on from where it stopped, with partitions that are no longer its own. It must not
corrupt anything.

Each test runs two workers. One has a freeze point (``KPIMARGIN_FAULT_INJECTION=freeze_<point>:N``:
it SIGSTOPs itself there, once, after N persisted batches):

* ``in_apply``: a log record applied in memory, its outputs not yet queued (mid-burst);
* ``mid_rows``: half of a round's state rows durable, the rest not yet sent;
* ``after_rows``: every state row of a round durable, its ``meta`` row not yet written.

Once both workers are in the group, the test publishes the crash test's scenario in
pieces, strictly in order, each taken in before the next, until the freeze point fired (how
many batches a piece makes then depends less on how fast the router forwards a backlog:
published without waiting, five pieces once left the worker short of its freeze point, in
CI); then it waits until the group has only the other member left (the session timeout
passed, the other took every partition over), publishes more and waits until the survivor
consumed it all; then SIGCONTs the frozen worker and lets it run -- it writes whatever it
was about to write, learns it was replaced and rejoins -- while the rest but the last
piece is published. Then every worker is killed, a fresh one (empty local state: it
loads the changelog) starts and the last piece is published. :func:`check_outcome` then
asserts what a crash-free run gives: no input lost or dead-lettered, every published
record (each id with one content) equal to the pure engine applied in publication order
and to a replay of the log, the persisted state equal to the replayed state, ``kpimargin
replay`` without mismatch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from stream.kafka.clients import changelog_topic, client_kwargs
from stream.kafka.dist import wait_for_state

from .streaming_support import Cluster, breakdown, check_outcome, fresh_settings, kafka_cluster
from .test_crash import chunked, scenario

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

EVENTS = int(os.environ.get("KPIMARGIN_FREEZE_EVENTS", "2000"))
PIECES = 8
FREEZE_AT = 6  # persisted batches before the freeze point fires: into the fills (a batch holds ~40 inputs)
# KPIMARGIN_FREEZE_ROUTER_BATCH_MAX=20 splits the inputs' batches in the router: this is how
# the embedded broker's short end offsets were found (docs/delivery.md)
ROUTER_BATCH_MAX = int(os.environ.get("KPIMARGIN_FREEZE_ROUTER_BATCH_MAX", "2000"))


async def _group(settings) -> tuple[str, int]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        response = (await admin.describe_consumer_groups([settings.app_id]))[0]
    except KafkaError as exc:  # no group (or no coordinator) yet: none of its members joined
        return type(exc).__name__, 0
    finally:
        await admin.close()
    group = response.groups[0]
    return group[2], len(group[5])  # (state, members): the same fields in every version


def group(settings) -> tuple[str, int]:
    """The processor group's state and member count, as its coordinator reports them."""
    return asyncio.run(_group(settings))


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.2)  # polling interval of a condition with a deadline


def stopped(pid: int) -> bool:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] in "Tt"


def freeze_and_thaw(bootstrap: str, tmp_path, summary, point: str, name: str, **overrides) -> None:
    settings = fresh_settings(bootstrap, tmp_path, batch_max=20, router_batch_max=ROUTER_BATCH_MAX, **overrides)
    cluster = Cluster(settings, tmp_path)
    # a thawed worker whose sends were in flight across the freeze finds them timed out
    # and stops itself (status 70), as any worker whose send failed does: its supervisor
    # starts it again -- both are correct ends of a zombie
    cluster.supervise = True
    pieces = chunked(scenario(EVENTS), PIECES)
    marks = {}
    try:
        zombie = cluster.start_worker(replace(settings, fault_injection=f"freeze_{point}:{FREEZE_AT}"))
        cluster.start_worker()
        # both in the group before anything is published: the worker to freeze must own
        # partitions while the pieces come in (joining after the router of the other had
        # routed them all, it would have nothing to apply and never reach its freeze point)
        wait_until(lambda: group(settings) == ("Stable", 2), 120, "both workers in the group")
        t0 = time.monotonic()
        first = 0
        while first < PIECES - 2 and not stopped(zombie.pid):  # publish until the freeze point fired
            cluster.publish_messages(pieces[first])
            first += 1
            cluster.wait_consumed(timeout_s=120, until=lambda: stopped(zombie.pid))
        if not stopped(zombie.pid):
            pytest.fail(f"the worker to freeze at {point} took {first} pieces in without reaching it\n"
                        f"{cluster.logs()}")
        marks["frozen"], marks["pieces"] = time.monotonic() - t0, first
        wait_until(lambda: group(settings) == ("Stable", 1), 120, "the group down to the other worker")
        marks["taken_over"] = time.monotonic() - t0
        for piece in pieces[first:max(first + 1, PIECES // 2)]:
            cluster.publish_messages(piece)
        cluster.wait_consumed(timeout_s=300)  # the survivor alone took all of it in
        os.kill(zombie.pid, signal.SIGCONT)
        wait_for_state(zombie.pid, stopped=False)
        marks["thawed"] = time.monotonic() - t0
        for piece in pieces[max(first + 1, PIECES // 2):-1]:
            cluster.publish_messages(piece)
        cluster.settle(timeout_s=300)
        for proc in list(cluster.workers):
            cluster.kill(proc)
        cluster.start_worker()  # empty local state: it loads the changelog ...
        cluster.publish_messages(pieces[-1])  # ... of every partition (the last piece reaches them all)
        outputs = cluster.settle(timeout_s=300)
        counts = check_outcome(cluster, outputs)
    finally:
        cluster.stop()
    rebuilds = sum(log.read_text(errors="replace").count("rebuilding from margin.log")
                   for log in tmp_path.glob("worker-*.log"))
    summary(f"{name}: {counts['inputs']} input events, {counts['log_entries']} log entries in "
              f"{counts['log_records']} records; frozen at {point} {marks['frozen']:.1f} s in (after {marks['pieces']} of "
              f"{PIECES} pieces), replaced "
              f"{marks['taken_over'] - marks['frozen']:.1f} s later, thawed at {marks['thawed']:.1f} s; "
              f"{cluster.started} worker starts ({len(cluster.restarts)} after a status-70 stop); {rebuilds} partition(s) rebuilt from the log after a digest mismatch; "
              f"{counts['records']} distinct records ({breakdown(outputs)}); "
              f"replay: {counts['mismatches']} mismatches")


POINTS = ["in_apply", "mid_rows", "after_rows"]

@pytest.mark.parametrize("point", POINTS)
def test_a_frozen_worker_corrupts_nothing(broker, tmp_path, summary, point):
    freeze_and_thaw(broker, tmp_path, summary, point, f"freeze {point}")


@pytest.fixture(scope="module")
def three_nodes():
    with kafka_cluster(nodes=3) as cluster:
        yield cluster


def test_a_frozen_worker_corrupts_nothing_on_three_nodes(three_nodes, tmp_path, summary):
    three_nodes.wait_in_sync()
    freeze_and_thaw(three_nodes.bootstrap, tmp_path, summary, "after_rows", "freeze after_rows, 3 nodes",
                    replication_factor=3)


def test_a_changelog_row_no_writer_held_is_rebuilt_from_the_log(broker, tmp_path, summary):
    """The repair itself, deterministically: with the worker stopped, an account row of
    one partition is overwritten in the changelog by a value no worker held (what a
    zombie's late row is); the next worker to load that partition finds the digest of its
    meta row broken, rebuilds the partition from margin.log and writes every row again."""
    from aiokafka import AIOKafkaProducer

    from stream.worker import durable
    from stream.worker.persister import row_key

    settings = fresh_settings(broker, tmp_path, batch_max=20)
    cluster = Cluster(settings, tmp_path)
    pieces = chunked(scenario(EVENTS // 2), 4)
    try:
        worker = cluster.start_worker()
        for piece in pieces[:2]:
            cluster.publish_messages(piece)
        cluster.settle(timeout_s=300)
        cluster.kill(worker)
        p, rows = next((p, rows) for p, rows in sorted(cluster.table_rows().items())
                       if any(k.startswith("account:") for k in rows))
        key = next(k for k in sorted(rows) if k.startswith("account:"))
        forged = {**rows[key], "equity": "1.00"}
        meta = -1  # a version no later than any meta: the loader takes the row as it is

        async def forge():
            producer = AIOKafkaProducer(**client_kwargs(settings))
            await producer.start()
            try:
                await producer.send_and_wait(changelog_topic(settings),
                                             durable.encode(meta, orjson.dumps(forged), None),
                                             key=row_key(p, key), partition=p)
            finally:
                await producer.stop()

        asyncio.run(forge())
        cluster.start_worker()
        for piece in pieces[2:]:
            cluster.publish_messages(piece)
        outputs = cluster.settle(timeout_s=300)
        counts = check_outcome(cluster, outputs)
    finally:
        cluster.stop()
    logs = "".join(log.read_text(errors="replace") for log in tmp_path.glob("worker-*.log"))
    assert f"partition {p}: the changelog's rows do not match the digest" in logs
    assert f"partition {p}: state rebuilt from" in logs
    summary(f"forged changelog row {p}|{key}: rebuilt from the log; {counts['inputs']} inputs, "
              f"{counts['records']} records, replay: {counts['mismatches']} mismatches")
