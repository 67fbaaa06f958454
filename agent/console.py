"""The console output: telegrams as JSON Lines on stdout or appended to a file."""

from __future__ import annotations

import sys
from typing import TextIO

from agent.telegram import Telegram, to_json_line


class ConsoleOutput:
    """Prints each telegram as one JSON line; ``path`` ``-`` means standard output."""

    name = "console"

    def __init__(self, path: str = "-") -> None:
        self.path = path
        self._stream: TextIO = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")
        self.sent = 0

    def send(self, telegram: Telegram) -> None:
        self._stream.write(to_json_line(telegram) + "\n")
        self._stream.flush()
        self.sent += 1

    def status(self) -> dict[str, object]:
        return {"kind": "console", "file": self.path, "sent": self.sent}

    def close(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()
