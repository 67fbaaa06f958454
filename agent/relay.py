"""Where the subscriber hands what it read: JSON Lines on the console, or another InfluxDB.

A relay takes idents and data rows of a database, then :meth:`commit` makes them durable; the
subscriber moves that database's cursor only after ``commit`` returned.

* :class:`ConsoleRelay` writes the telegram contract (``sensorkit subscribe | sensorkit
  publish -`` relays), each data line preceded by its kit's ident whenever the stream's last
  ident is another one. To a regular file it is exact across a crash: ``commit`` flushes and
  fsyncs and returns the file's size, the cursors keep it, and at start anything past the
  largest size a cursor recorded (written, never committed) is cut off. To a pipe the last
  batch before a crash may be written twice (nothing can take back what a pipe carried).
* :class:`InfluxRelay` re-publishes the very points (same measurement, tags -- ``new``
  included -- fields and time) through a :class:`~agent.delivery.Delivery` with its own
  durable queue; ``commit`` returns once they are appended and fsynced. A batch read twice
  (a crash before the cursor was saved) writes the same points again, which InfluxDB
  stores once.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from typing import Protocol, TextIO

from agent.delivery import Delivery
from agent.errors import SensorkitError
from agent.lineprotocol import encode_point
from agent.readback import DataColumns
from agent.series import info_point
from agent.telegram import Ident, to_json_line

QUEUE_AT = 5000  # points handed on that are appended to the queue at once


class RelayError(SensorkitError):
    """What was read could not be handed on (a full disk, a queue that refuses points)."""

    exit_code = 1


class Relay(Protocol):
    name: str

    def ident(self, db: str, ident: Ident) -> None: ...

    def data(self, db: str, ident: Ident, columns: DataColumns, rows: list) -> None: ...

    def commit(self) -> int | None: ...

    def close(self) -> None: ...


class ConsoleRelay:
    """Telegrams as JSON Lines to standard output (``-``) or appended to a file."""

    name = "console"

    def __init__(self, path: str = "-", committed: int | None = None) -> None:
        self.path = path
        self._regular = False
        if path == "-":
            self._stream: TextIO = sys.stdout
        else:
            self._stream = open(path, "a", encoding="utf-8")  # noqa: SIM115
            self._regular = stat.S_ISREG(os.fstat(self._stream.fileno()).st_mode)
            if self._regular and committed is not None:
                self._stream.truncate(min(committed, self._stream.tell()))
                self._stream.seek(0, os.SEEK_END)
        self._current: tuple[str, Ident] | None = None
        self.sent = 0

    def ident(self, db: str, ident: Ident) -> None:
        if self._current != (db, ident):
            self._write(to_json_line(ident) + "\n")
            self._current = (db, ident)

    def data(self, db: str, ident: Ident, columns: DataColumns, rows: list) -> None:
        self.ident(db, ident)
        lines = columns.json_lines(rows, ident.geolocation)
        lines.append("")
        self._write("\n".join(lines), len(rows))

    def _write(self, text: str, telegrams: int = 1) -> None:
        try:
            self._stream.write(text)
        except OSError as err:
            raise RelayError(f"cannot write telegrams to {self.path} ({err.strerror})") from None
        self.sent += telegrams

    def commit(self) -> int | None:
        """Flush (and fsync a regular file); the file's size, or None for a pipe."""
        try:
            self._stream.flush()
            if self._regular:
                os.fsync(self._stream.fileno())
                return self._stream.tell()
        except OSError as err:
            raise RelayError(f"cannot write telegrams to {self.path} ({err.strerror})") from None
        return None

    def close(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()
        else:
            self._stream.flush()


class InfluxRelay:
    """The points, unchanged, into a second server through the durable delivery."""

    name = "influx"

    def __init__(self, delivery: Delivery, stop: threading.Event, wait: float) -> None:
        self.delivery = delivery
        self.stop = stop
        self.wait = wait  # seconds a --once run waits for a destination that takes nothing
        self._points: list[tuple[str, str]] = []
        self._relayed: dict[str, Ident] = {}
        delivery.start()

    def ident(self, db: str, ident: Ident) -> None:
        if self._relayed.get(db) != ident:
            self._points.append((db, info_point(ident, ident.time or 0)))
            self._relayed[db] = ident

    def data(self, db: str, ident: Ident, columns: DataColumns, rows: list) -> None:
        self.ident(db, ident)
        for row in rows:
            line = encode_point("data", columns.tags(row), columns.measured(row), row[0])
            if line is not None:
                self._points.append((db, line))
        if len(self._points) >= QUEUE_AT:
            self._queue()

    def commit(self) -> int | None:
        """Queue what was handed on and make it durable (fsync)."""
        self._queue()
        self.delivery.sync()
        return None

    def _queue(self) -> None:
        """Append what was handed on to the queue; waits while the queue is at its high-water
        mark (a quarter of its cap), so a slow destination slows reading, never drops."""
        if not self._points:
            return
        high = min(self.delivery.capacity // 4, 16_000_000)
        since = None
        while self.delivery.queued_bytes() > high:
            if self.stop.is_set():
                raise RelayError("interrupted while the relay's queue was full")
            if self.delivery.failing():
                since = since or time.monotonic()
                if time.monotonic() - since > self.wait:
                    raise RelayError(
                        f"the destination {self.delivery.sink.url} took no points for "
                        f"{self.wait:g} s and the relay's queue is full; what was read "
                        "stays queued, and the cursor where it was"
                    )
            else:
                since = None
            self.stop.wait(0.05)
        if not self.delivery.accept(self._points):
            raise RelayError(
                "the relay's queue refused points (the disk is full or failing); the "
                "cursor stays where it was"
            )
        self._points = []

    def close(self) -> None:
        self.delivery.close()
