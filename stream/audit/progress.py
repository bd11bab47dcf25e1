"""A one-line progress bar for long replays."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A one-line progress bar (events/s and ETA) on a TTY stream; silent otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "replay", every_s: float = 0.2):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.label, self.every_s = total, label, every_s
        self.started = self.last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        self.stream.write("\r" + self.line(done, now - self.started))
        self.stream.flush()

    def line(self, done: int, elapsed: float, width: int = 30) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        eta_text = f"{eta:5.0f} s" if eta == eta else "    ? s"
        return f"{self.label} [{bar}] {done:,}/{self.total:,} entries  {rate:,.0f} ev/s  ETA {eta_text}"

    def close(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            self.stream.write("\n")
            self.stream.flush()
