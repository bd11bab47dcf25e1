"""How the worker's tasks fail: never on bad input (that is dead-lettered), only on a bug or
a broken broker -- and then the whole process stops at once, so that a restart resumes from
the last durable state, exactly as after a SIGKILL. And how the process's garbage collector
is set for a stream of events (:func:`tune_gc`)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os

log = logging.getLogger("kpimargin")

EXIT_FAILED = 70  # EX_SOFTWARE: a failure that is not bad input (a bug, a broken broker)


def die(what: str) -> None:
    """Stop the process: faust would restart an agent *past* the failed events, so stop
    everything instead, before anything more is committed."""
    log.critical("%s failed; exiting so that a restart resumes from the last durable state", what, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_FAILED)


async def guarded(what: str, run, *args) -> None:
    """Await ``run(*args)``; anything but a cancellation (shutdown) stops the process (:func:`die`)."""
    try:
        await run(*args)
    except asyncio.CancelledError:
        raise
    except BaseException:
        die(what)


def undelivered_log_record(future) -> None:
    """Done-callback of every router send: a record the broker refused (after the
    producer's retries) stops the worker at once -- before a later record of the same log
    partition could land after the gap."""
    if future.cancelled() or future.exception() is not None:
        log.critical("a margin.log record was not delivered (%r); exiting", None if future.cancelled() else future.exception())
        logging.shutdown()
        os._exit(EXIT_FAILED)


async def confirm(futures: list, what: str) -> None:
    """Wait until the broker acknowledged every send; raise if one was not delivered.

    The futures are few -- one per producer batch (:mod:`stream.worker.outbox`) or per log
    record -- so waiting on them directly costs nothing worth saving."""
    pending = [f for f in futures if not f.done()]
    if pending:
        await asyncio.wait(pending)
    failed = [f for f in futures if f.cancelled() or f.exception() is not None]
    if failed:
        error = "cancelled" if failed[0].cancelled() else repr(failed[0].exception())
        raise RuntimeError(f"{len(failed)} {what} not delivered: {error}")


def tune_gc(young_objects: int) -> None:
    """Fit CPython's cycle collector to a stream worker, or to ``kpimargin replay`` once it
    has read the topics (``KPIMARGIN_GC_YOUNG_OBJECTS``;
    bench/RESULTS.md, "Against the issue-16 targets (2026-12-07, afternoon)"). Everything alive at start -- modules, faust's
    and aiokafka's machinery -- goes to the permanent generation (:func:`gc.freeze`), which
    no collection scans again; the youngest generation is collected every ``young_objects``
    net allocations instead of 700. A batch's input records, parsed events and outputs live
    for thousands of allocations: at 700 they survive two young collections, reach the
    oldest generation and trigger full collections of the heap (about 70 ms each, 14 in an
    80,000-fill drain). Collection stays on: cycles are still freed. 0 changes nothing."""
    if young_objects <= 0:
        return
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(young_objects, middle, old)
