"""The worker's counters, reported every 10 s at INFO."""

from __future__ import annotations


class Stats:
    """Counters reported every 10 s at INFO (reset after each report)."""

    FIELDS = ("records", "handed_off", "entries", "outputs", "boundaries", "routed", "rejected", "apply_s", "persist_s",
              "rebuilt")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, 0)

    def line(self) -> str:
        return (f"router: {self.routed} inputs routed, {self.rejected} dead-lettered; engine: {self.records} log records "
                f"({self.handed_off} handed off by the router), "
                f"{self.entries} entries, {self.outputs} outputs, {self.boundaries} batches persisted; "
                f"apply {self.apply_s:.2f}s, persist {self.persist_s:.2f}s"
                + (f"; {self.rebuilt} partition(s) rebuilt from the log" if self.rebuilt else ""))
