"""How the worker's tasks fail: never on bad input (that is dead-lettered), only on a bug or
a broken broker -- and then the whole process stops at once, so that a restart resumes from
the last durable state, exactly as after a SIGKILL."""

from __future__ import annotations

import asyncio
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
