"""The worker's counters: cumulative, cheap on the hot path, read by the 10 s log line and
by ``GET /metrics`` (:mod:`stream.worker.metrics`).

A counter is a plain ``int`` (or a dict of them by label) incremented where the work is
done; a :class:`Histogram` has fixed buckets and costs one bisect an observation. Nothing
here takes a lock or allocates per event: the event loop is the only writer, and a scrape
reads between two events."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter


class Histogram:
    """Observations in fixed buckets (upper bounds, ascending), with their count and sum;
    rendered as a Prometheus histogram (cumulative buckets, ``+Inf`` last)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)``, ``+Inf`` last."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ENTRIES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Stats:
    """Everything the worker counts since it started (see the module docstring)."""

    def __init__(self) -> None:
        # router
        self.inputs: Counter[str] = Counter()  # input messages taken in, by logical topic (broadcast ones by task 0)
        self.routed = 0  # input messages forwarded or dead-lettered, summed over tasks
        self.rejected = 0  # dead letters the router published
        self.deadletters: Counter[tuple[str, str]] = Counter()  # (source topic, reason): router's and engine's
        self.router_steps = 0  # merge steps with input records buffered
        self.end_offset_requests = 0  # ListOffsets requests of the merge (at most two a step)
        # log agent
        self.records = 0  # log records applied
        self.handed_off = 0  # of which handed off by the router
        self.applied: Counter[int] = Counter()  # log entries applied, by log partition
        self.outputs: Counter[str] = Counter()  # records the engine published, by logical topic
        self.calls: Counter[str] = Counter()  # margin calls published, by status
        self.apply_seconds = Histogram(SECONDS)  # per log record
        self.rebuilt = 0  # partitions rebuilt from the log after a digest mismatch
        # persister
        self.boundaries = 0  # batches made durable
        self.entries = 0  # log entries those batches applied
        self.batch_entries = Histogram(ENTRIES)  # per batch handed to the persister
        self.persist_seconds = Histogram(SECONDS)  # per round made durable (outputs acknowledged -> meta durable)
        self._last: dict[str, float] = {}

    @property
    def apply_s(self) -> float:
        return self.apply_seconds.sum

    @property
    def persist_s(self) -> float:
        return self.persist_seconds.sum

    def _totals(self) -> dict[str, float]:
        return {"routed": self.routed, "rejected": self.rejected, "records": self.records,
                "handed_off": self.handed_off, "entries": self.entries, "outputs": sum(self.outputs.values()),
                "boundaries": self.boundaries, "apply_s": self.apply_s, "persist_s": self.persist_s,
                "rebuilt": self.rebuilt}

    def line(self) -> str | None:
        """What was done since the previous line (None: nothing)."""
        now = self._totals()
        d = {k: v - self._last.get(k, 0) for k, v in now.items()}
        self._last = now
        if not d["routed"] and not d["records"]:
            return None
        return (f"router: {d['routed']} inputs routed, {d['rejected']} dead-lettered; engine: {d['records']} log "
                f"records ({d['handed_off']} handed off by the router), {d['entries']} entries, {d['outputs']} "
                f"outputs, {d['boundaries']} batches persisted; apply {d['apply_s']:.2f}s, persist {d['persist_s']:.2f}s"
                + (f"; {d['rebuilt']} partition(s) rebuilt from the log" if d["rebuilt"] else ""))
