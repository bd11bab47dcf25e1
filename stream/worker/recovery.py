"""A watch on faust's changelog recovery: a recovery that reads nothing for
``KPIMARGIN_STALL_TIMEOUT_S`` while records remain asks the group to rebalance.

Seen in about one full test run in three on Kafka (never reproduced alone): after a
rebalance, a worker that kept its log partitions restarts faust's recovery of their
changelog from offset 0 and receives no record at all ("No event received for active tp
... since recovery start"), for minutes, while the partitions stay paused -- the engine
applies what the router hands it, but nothing is committed and no other record of those
partitions is delivered. The cause is inside faust's and aiokafka's fetching (not found);
a new rebalance resets both (the fetcher drops its assignment state, the recovery starts
over), which is what this watch does. A recovery that makes progress, however slowly, is
left alone.

A rebalance can also hang before any recovery starts (seen once on a three-node Kafka with
a broker frozen and thawed: a worker took its new assignment and logged nothing more, its
partitions never loaded). Faust's rebalance callback is then what waits, so a rejoin would
not reach it: a rebalance that has made no progress (same assignment, no recovery, nothing
loaded) for twice ``KPIMARGIN_STALL_TIMEOUT_S`` stops the worker (status 70), and its
supervisor's restart rejoins with a fresh client -- as for any failure of the machinery.
"""

from __future__ import annotations

import asyncio
import logging
import time

from stream.kafka import shim

log = logging.getLogger("kpimargin")


class RecoveryWatch:
    """Decides, from what faust's recovery reports each time it is looked at, when it has
    stalled: records remain and their number has not changed for ``stall_s`` seconds."""

    def __init__(self, stall_s: float, first_stall_s: float | None = None):
        self.stall_s = stall_s
        self.next_stall_s = stall_s if first_stall_s is None else first_stall_s  # testing: a first stall sooner
        self.remaining: int | None = None
        self.since = 0.0

    def stalled(self, in_recovery: bool, remaining: int, now: float) -> bool:
        if not in_recovery:
            self.remaining = None
            return False
        if self.next_stall_s == 0 and remaining > 0:  # testing: stalled at first sight
            self.remaining, self.since, self.next_stall_s = remaining, now, self.stall_s
            return True
        if remaining != self.remaining:
            self.remaining, self.since = remaining, now
            return False
        if remaining > 0 and now - self.since >= self.next_stall_s:
            self.since = now  # give the rebalance the same time before asking again
            self.next_stall_s = self.stall_s
            return True
        return False


class RebalanceWatch:
    """Decides when a rebalance hangs: the worker is rebalancing and what it reports (its
    assignment's generation, whether faust recovers, the records left) has not changed
    for ``limit_s`` seconds of its own running time."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.since: float | None = None
        self.seen: tuple | None = None

    def hung(self, rebalancing: bool, progress: tuple, now: float, paused_s: float = 0.0) -> bool:
        if not rebalancing:
            self.since = None
            return False
        if self.since is None or progress != self.seen:
            self.since, self.seen = now, progress
            return False
        self.since += paused_s  # time the process did not run (a frozen VM) is no rebalance's fault
        return now - self.since >= self.limit_s


async def watch_recovery(app, stall_s: float, interval_s: float = 1.0, first_stall_s: float | None = None,
                         agent=None) -> None:
    """Forever: look at faust's recovery every ``interval_s``; a stall asks for a rebalance
    (``first_stall_s``, testing: the first one after that long instead). With ``agent``
    (the log agent: its ``rebalancing`` and ``generation``), a rebalance hung outside the
    recovery for ``2 * stall_s`` stops the worker."""
    watch = RecoveryWatch(stall_s, first_stall_s)
    rebalance = RebalanceWatch(2 * stall_s)
    recovery = app.tables.recovery
    last = time.monotonic()
    while True:
        await asyncio.sleep(interval_s)  # a polling watchdog's period
        now = time.monotonic()
        paused_s, last = max(0.0, now - last - max(1.0, 5 * interval_s)), now
        remaining = recovery.active_remaining_total() if recovery.in_recovery else 0
        if agent is not None and rebalance.hung(agent.rebalancing and not agent.rebuilding,
                                                (agent.generation, recovery.in_recovery, remaining, len(agent.parts)),
                                                now, paused_s):
            raise RuntimeError(f"the rebalance (assignment {agent.generation}) has made no progress for "
                               f"{rebalance.limit_s:.0f} s (twice KPIMARGIN_STALL_TIMEOUT_S): stopping, so that a "
                               "restart rejoins the group")
        if watch.stalled(recovery.in_recovery, remaining, time.monotonic()):
            log.warning("faust's changelog recovery has read nothing for %.0f s with %d records left "
                        "(KPIMARGIN_STALL_TIMEOUT_S): asking the group to rebalance", stall_s, remaining)
            await shim.request_rejoin(app)
