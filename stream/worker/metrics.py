"""``GET /metrics``: the worker's counters (:mod:`stream.worker.stats`) and its live gauges
(lag, state size, clock) in the Prometheus text format, read at scrape time.

Nothing is registered globally: one :class:`WorkerCollector` in a registry of its own reads
the worker's objects when scraped, so the hot path pays only its plain counters. Every
metric is named ``kpimargin_*`` with its unit (``_seconds``, ``_records``, ``_total``);
``docs/operations.md`` lists them and ``docs/grafana-dashboard.json`` draws them.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from stream.worker.stats import Histogram, Stats


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


class WorkerCollector:
    """Collects from a running worker: ``stats`` (counters), and ``view`` -- an object with
    ``health()``, ``readiness()``, ``engine_lag()``, ``router_lag()`` and ``partition_sizes()``
    (:class:`stream.worker.http.WorkerView`)."""

    def __init__(self, stats: Stats, view):
        self.stats, self.view = stats, view

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        family = CounterMetricFamily("kpimargin_inputs", "Input messages the router took in, by topic (a message of a "
                                     "topic for all accounts counts once, in the task of log partition 0)", labels=["topic"])
        for topic, n in sorted(s.inputs.items()):
            family.add_metric([topic], n)
        yield family
        family = CounterMetricFamily("kpimargin_deadletters", "Dead letters published, by source topic and reason "
                                     "(the router's and the engine's)", labels=["topic", "reason"])
        for (topic, reason), n in sorted(s.deadletters.items()):
            family.add_metric([topic, reason], n)
        yield family
        yield CounterMetricFamily("kpimargin_router_steps", "Merge steps the router ran with input records buffered",
                                  value=s.router_steps)
        yield CounterMetricFamily("kpimargin_router_end_offset_requests", "End-offset (ListOffsets) requests of the "
                                  "router's merge, its proof that no older input is still on its way: at most two a "
                                  "step, for all its log partitions", value=s.end_offset_requests)
        family = CounterMetricFamily("kpimargin_log_entries_applied", "margin.log entries applied, by log partition",
                                     labels=["partition"])
        for p, n in sorted(s.applied.items()):
            family.add_metric([str(p)], n)
        yield family
        yield CounterMetricFamily("kpimargin_log_records_applied", "margin.log records applied", value=s.records)
        yield CounterMetricFamily("kpimargin_log_records_handed_off", "margin.log records applied from the router's "
                                  "hand-off (no fetch)", value=s.handed_off)
        family = CounterMetricFamily("kpimargin_outputs", "Records the engine published, by topic", labels=["topic"])
        for topic, n in sorted(s.outputs.items()):
            family.add_metric([topic], n)
        yield family
        family = CounterMetricFamily("kpimargin_calls", "Margin calls published, by status", labels=["status"])
        for status, n in sorted(s.calls.items()):
            family.add_metric([status], n)
        yield family
        yield CounterMetricFamily("kpimargin_batches_persisted", "Batches made durable", value=s.boundaries)
        yield CounterMetricFamily("kpimargin_partitions_rebuilt", "Partitions rebuilt from margin.log after a digest "
                                  "mismatch (a replaced worker's late rows)", value=s.rebuilt)
        yield _histogram("kpimargin_apply_seconds", "Time to apply one margin.log record and queue its outputs",
                         s.apply_seconds)
        yield _histogram("kpimargin_persist_seconds", "Time to make one round of batches durable (outputs "
                         "acknowledged, rows, meta)", s.persist_seconds)
        yield _histogram("kpimargin_batch_entries", "Log entries per batch handed to the persister", s.batch_entries)
        yield from self._live()

    def _live(self) -> Iterator[Metric]:
        view = self.view
        yield GaugeMetricFamily("kpimargin_healthy", "1 while the worker's loop and tasks are alive",
                                value=1 if view.health()[0] else 0)
        yield GaugeMetricFamily("kpimargin_ready", "1 while /readyz answers 200", value=1 if view.readiness()[0] else 0)
        family = GaugeMetricFamily("kpimargin_engine_lag_records", "margin.log records not yet applied, by owned "
                                   "log partition", labels=["partition"])
        for p, lag in sorted(view.engine_lag().items()):
            family.add_metric([str(p)], lag)
        yield family
        family = GaugeMetricFamily("kpimargin_router_lag_records", "Input records not yet routed, by input topic "
                                   "and partition", labels=["topic", "partition"])
        for (topic, q), lag in sorted(view.router_lag().items()):
            family.add_metric([topic, str(q)], lag)
        yield family
        sizes = view.partition_sizes()
        for name, doc, key in (("kpimargin_state_rows", "State rows held, by owned log partition", "rows"),
                               ("kpimargin_accounts", "Accounts held, by owned log partition", "accounts"),
                               ("kpimargin_positions", "Open positions held, by owned log partition", "positions"),
                               ("kpimargin_contracts", "Contracts listed, by owned log partition", "contracts")):
            family = GaugeMetricFamily(name, doc, labels=["partition"])
            for p, size in sorted(sizes.items()):
                family.add_metric([str(p)], size[key])
            yield family
        family = GaugeMetricFamily("kpimargin_clock_seconds", "Event time of the latest clock tick applied (Unix "
                                   "seconds), by owned log partition", labels=["partition"])
        for p, size in sorted(sizes.items()):
            if size["clock_us"] is not None:
                family.add_metric([str(p)], size["clock_us"] / 1e6)
        yield family


def registry(stats: Stats, view) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(WorkerCollector(stats, view))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``reg``."""
    return generate_latest(reg)
