"""The readings of the window being averaged, on disk, so ``kill -9`` does not lose them.

Each accepted reading is one ``write()`` of a short text line to the window log, kept in RAM
(``/run/sensorkit`` or ``/dev/shm``, see :mod:`agent.ramfiles`), so it costs the
SD card nothing however long the window; the file is emptied when the window's telegram has
been handed to the outputs. After a crash or ``kill -9`` the agent reads it back and sends
that window's telegram late rather than never. A power cut loses it with the RAM: at most one
window, as the queue's own flush interval bounds what a power cut costs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from drivers.reading import Reading

log = logging.getLogger("sensorkit.window")


class WindowLog:
    """Append readings; empty after each window; read back what a crash left."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self.last_stamp = 0  # the last window stamp of the run before (read by recover())

    def recover(self) -> list[Reading]:
        """The readings a previous run accepted but did not get into a telegram."""
        readings = []
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            if line.startswith("#stamp\t"):
                self.last_stamp = int(line.split("\t")[1]) if line[7:].isdigit() else 0
                continue
            try:
                name, value, stamp = line.split("\t")
                readings.append(Reading(name, float(value), float(stamp)))
            except ValueError:  # a line torn by the crash: only that reading is lost
                log.warning("%s line %d is torn; that reading is lost", self.path, number)
        return readings

    def append(self, readings: Iterable[Reading]) -> None:
        text = "".join(f"{r.field}\t{r.value!r}\t{r.time!r}\n" for r in readings)
        if text:
            os.write(self._fd, text.encode())

    def clear(self, stamp: int = 0) -> None:
        """Empty the log; ``stamp``, the last window stamp used, stays for a restart."""
        os.ftruncate(self._fd, 0)
        if stamp:
            os.write(self._fd, f"#stamp\t{stamp}\n".encode())

    def close(self) -> None:
        os.close(self._fd)
