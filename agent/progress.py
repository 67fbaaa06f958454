"""Progress of long work for a person: a live line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("sensorkit.progress")


class Progress:
    """Counts work done out of ``total`` and shows count, rate and time left."""

    def __init__(self, what: str, total: int, stream: TextIO = sys.stderr, every: float = 10.0):
        self.what = what
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.every = 0.2 if self.tty else every
        self.started = time.monotonic()
        self._shown: float | None = None  # when a line was last shown; None: never yet
        self._shown_done = -1

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done == self._shown_done:
            return
        recent = self._shown is not None and now - self._shown < self.every
        if recent and done < self.total:
            return
        self._shown, self._shown_done = now, done
        line = self.describe(done, now)
        if self.tty:
            self.stream.write(f"\r{line}   ")
            self.stream.flush()
        else:
            log.info("%s", line)

    def remaining(self, left: int) -> None:
        """:meth:`update` given what is left rather than what is done."""
        self.update(self.total - left)

    def describe(self, done: int, now: float | None = None) -> str:
        elapsed = max(1e-6, (time.monotonic() if now is None else now) - self.started)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else float("inf")
        eta = "?" if left == float("inf") else f"{int(left // 60)}:{int(left % 60):02d}"
        return f"{self.what}: {done:,}/{self.total:,}  {rate:,.0f}/s  {eta} left"

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
