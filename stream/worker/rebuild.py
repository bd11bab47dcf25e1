"""Rebuild one log partition's engine state from ``margin.log`` itself: the repair of a
changelog whose rows fail their ``meta`` digest (:mod:`stream.worker.durable`).

The log is the truth and the engine is deterministic: applying log partition ``p`` from
its first record through offset ``last`` with the pure core (the replay's own
:func:`stream.log.ordered_log.apply_record`, outputs discarded -- they were published when
the records were first applied) gives exactly the state every worker held as of
``last``. It needs the log from offset 0: a log whose first records the broker has
deleted (retention) cannot be replayed, and the worker stops with that reason rather than
run on rows it cannot trust.
"""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.core.state import EngineConfig, EngineState
from stream.core.topics import LOG
from stream.kafka.clients import client_kwargs
from stream.log.ordered_log import apply_record
from stream.settings import Settings

log = logging.getLogger("kpimargin")


class RebuildError(Exception):
    """The partition cannot be rebuilt from the log (its first records are gone, or the
    log does not reach the offset the state must be rebuilt to)."""


async def rebuild_from_log(settings: Settings, p: int, last: int, config: EngineConfig,
                           stall_s: float = 60.0) -> EngineState:
    """The engine state of log partition ``p`` as of log offset ``last`` (``-1``: the empty
    state), from ``margin.log``."""
    state = EngineState(config=config)
    if last < 0:
        return state
    tp = TopicPartition(settings.topic(LOG), p)
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    try:
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        if first > 0:
            raise RebuildError(f"margin.log partition {p} starts at offset {first}, not 0 (retention deleted its "
                               f"first records): its state cannot be rebuilt from the log")
        await consumer.seek_to_beginning(tp)
        records, progress = 0, time.monotonic()
        while await consumer.position(tp) <= last:
            batch = (await consumer.getmany(tp, timeout_ms=500, max_records=5_000)).get(tp, [])
            if batch:
                progress = time.monotonic()
            elif time.monotonic() - progress > stall_s:
                raise RebuildError(f"margin.log partition {p}: no record for {stall_s:.0f} s before offset {last}")
            for record in batch:
                if record.offset > last:
                    break
                apply_record(state, p, record.offset, record.value)
                records += 1
        log.info("partition %d: state rebuilt from %d margin.log records (offsets 0-%d)", p, records, last)
        return state
    finally:
        await consumer.stop()
