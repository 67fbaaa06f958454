"""The console output: telegrams as JSON Lines on stdout or appended to a file."""

from __future__ import annotations

import sys
from typing import TextIO

from agent.errors import UsageError
from agent.telegram import Telegram, to_json_line


class ConsoleError(UsageError):
    """The console file does not take what is written to it (a full disk, ``/dev/full``)."""


class ConsoleOutput:
    """Prints each telegram as one JSON line; ``path`` ``-`` means standard output.

    ``where`` names the setting in messages (e.g. ``agent.ini [console] file``).
    """

    name = "console"

    def __init__(self, path: str = "-", where: str = "[console] file") -> None:
        self.path = path
        self.where = where
        self._stream: TextIO = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")
        self.sent = 0

    def send(self, telegram: Telegram) -> None:
        try:
            self._stream.write(to_json_line(telegram) + "\n")
            self._stream.flush()
        except OSError as err:
            raise ConsoleError(
                f"{self.where}: cannot write telegrams to {self.path} ({err.strerror}); "
                "allowed: - or a file on a disk with room"
            ) from None
        self.sent += 1

    def status(self) -> dict[str, object]:
        return {"kind": "console", "file": self.path, "sent": self.sent}

    def close(self) -> None:
        if self._stream is not sys.stdout:
            try:
                self._stream.close()
            except OSError:
                pass  # what could not be written was said when it was written
