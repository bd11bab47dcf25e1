"""Fault injection for the crash and freeze tests (``KPIMARGIN_FAULT_INJECTION``).

``point:N`` SIGKILLs the worker at a named point once N batches are durable;
``freeze_point:N`` SIGSTOPs it there, once (a zombie in the making: it goes on from there
when it gets SIGCONT); ``skip_resume_commit`` leaves the group's log offsets as they are on
a rebalance, and the log agent takes every record from the log (no hand-off from the
router): a worker whose group offsets run ahead of its state must then seek back;
``stall_recovery`` makes the recovery watch (:mod:`stream.worker.recovery`) take the first
changelog recovery with records to read for a stalled one; ``stall_rebalance`` makes
every rebalance hang where it would complete (the rebalance watch stops the worker). The
points:

* ``in_apply``: a log record applied in memory, its outputs not yet queued;
* ``in_recovery``: a partition about to be loaded from the table;
* ``after_outputs``: a round's outputs acknowledged, its state rows not yet written;
* ``mid_rows``: half of a round's state rows durable, the rest not yet sent;
* ``after_rows``: every state row of a round durable, its ``meta`` row not yet written.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("kpimargin")


class Faults:
    def __init__(self, spec: str):
        name, _, at = spec.partition(":")
        self.name, self.at = name, int(at) if at else 0
        self.frozen = False  # a freeze_ fault has fired (it fires once)

    def active(self, name: str) -> bool:
        """This fault (or its freeze) was asked for."""
        return self.name in (name, f"freeze_{name}")

    def here(self, point: str, persisted: int) -> None:
        """The worker reached ``point`` with ``persisted`` batches durable since start."""
        if persisted < self.at:
            return
        if self.name == point:
            log.warning("fault injection: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.name == f"freeze_{point}" and not self.frozen:
            self.frozen = True
            log.warning("fault injection: SIGSTOP at %s", point)
            os.kill(os.getpid(), signal.SIGSTOP)
            log.warning("fault injection: going on from %s after SIGCONT", point)
