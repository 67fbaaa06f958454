"""Windows measured before the clock could be trusted, kept on disk until they can be dated.

Each is its monotonic end (valid within one boot), the wall time the unsynchronised clock
showed, and its values: one JSON line each in ``<state_dir>/undated.jsonl``, written only
while the clock is not synchronised. Once it is, they are dated and sent; those of an earlier
boot can never be dated (the monotonic clock restarted) and go to quarantine with the reason.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sensorkit.agent")


@dataclass(frozen=True)
class Held:
    boot: str
    mono: float  # the window's end on the monotonic clock
    wall: float  # what the unsynchronised wall clock showed then
    values: tuple[tuple[str, float], ...]


class Undated:
    """The file of held windows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Held]:
        """Every held window, in order; a torn last line (a crash) is left out."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        held = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                item = json.loads(line)
                values = tuple((str(k), float(v)) for k, v in item["values"])
                held.append(
                    Held(str(item["boot"]), float(item["mono"]), float(item["wall"]), values)
                )
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d is torn; that window is lost", self.path, number)
        return held

    def add(self, held: Held) -> None:
        """Keep one window (one ``write()``: whole or not at all after a crash)."""
        line = json.dumps(
            {"boot": held.boot, "mono": held.mono, "wall": held.wall, "values": held.values}
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
