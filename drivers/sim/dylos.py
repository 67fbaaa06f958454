"""A simulated Dylos DC1100: replays a real capture into a pseudo-terminal, like the device's port.

The driver opens :attr:`SimulatedDylos.url` exactly as it opens ``/dev/ttyUSB0``, so the real
serial parsing code runs on the bench. Fault injection (partial writes, garbage lines, four-field
lines, unplugging) lets tests drive the driver's error handling through the same path.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import shutil
import tempfile
import threading
import time
import tty
from pathlib import Path

CAPTURE = Path(__file__).resolve().parent.parent / "data" / "dylos-dc1100-capture.txt"
"""400 lines captured from a real DC1100 (MySense test data, 2017); never edit it."""

SECONDS_PER_LINE = 60.0
"""The DC1100 reports once a minute: the average counts of the past minute."""

GARBAGE_LINES = (b"\x00\x00\xff\xfe\r\n", b"ERR\r\n", b"412\r\n", b"-5,3\r\n", b"\xfe\x80,\x81\r\n")
"""What a noisy line or a reset device may send: binary noise, text, one field, a negative."""


def _pairs(lines: list[bytes], source: Path) -> list[tuple[int, int] | None]:
    """The (small, large) pair of each line (None for a blank line); ValueError names a bad one."""
    pairs: list[tuple[int, int] | None] = []
    for number, line in enumerate(lines, 1):
        fields = line.strip().split(b",")
        if fields == [b""]:
            pairs.append(None)
            continue
        if len(fields) < 2 or not all(f.strip().isdigit() for f in fields[:2]):
            raise ValueError(
                f"{source} line {number}: {line[:40]!r} is not 'small,large' counts; "
                "a replay file holds lines as the Dylos sends them, e.g. b'515,21\\r\\n'"
            )
        pairs.append((int(fields[0]), int(fields[1])))
    return pairs


class SimulatedDylos:
    """Writes a capture, line by line, into a pty at ``speedup`` times the device's pace.

    ``url`` is a stable symlink to the current pty (as ``/dev/serial/by-id/...`` is to a USB
    adapter), so the driver finds the device again after :meth:`unplug` and :meth:`replug`.
    Writes wait while the pty's buffer is full (nothing is dropped, the replay just pauses), so
    ``written`` is exactly what entered the port. Runs in a daemon thread.
    """

    def __init__(
        self,
        capture: str | os.PathLike[str] | None = None,
        *,
        speedup: float = 60.0,
        chunked: bool = False,
        chunk_gap: float = 0.0005,
        garbage_every: int = 0,
        four_fields: bool = False,
        seed: int = 1,
    ) -> None:
        """Load ``capture`` (default: the shipped DC1100 capture); nothing is written until start().

        ``chunked`` writes each line in random 1..4 byte pieces ``chunk_gap`` seconds apart;
        ``garbage_every`` > 0 writes a garbage line before every n-th line; ``four_fields``
        appends two extra fields to each line, as some DC1100 Pro firmware does.
        """
        if not speedup > 0:
            raise ValueError(f"speedup must be > 0 (60 = a line a second): {speedup}")
        self.source = Path(capture) if capture is not None else CAPTURE
        try:
            data = self.source.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the Dylos replay file {self.source}: {exc}") from exc
        lines = data.splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\r\n"  # looping must not glue the last line to the first
        self._pairs = _pairs(lines, self.source)
        if not any(self._pairs):
            raise ValueError(f"the Dylos replay file {self.source} holds no 'small,large' lines")
        self._lines = lines
        self.speedup = speedup
        self.chunked = chunked
        self.chunk_gap = chunk_gap
        self.garbage_every = garbage_every
        self.four_fields = four_fields
        self._rng = random.Random(seed)
        self.written: list[tuple[int, int]] = []
        """The (small, large) pairs written so far, in order; only lines written whole count.

        A pair is added just before the last byte of its line goes out, so a reader of the
        port never sees a line that is not listed here yet.
        """
        self.garbage_written = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._replug_timer: threading.Timer | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._dir = tempfile.mkdtemp(prefix="sensorkit-dylos-")
        self._link = os.path.join(self._dir, "ttyDylos")

    @property
    def url(self) -> str:
        """The port path for the driver: a symlink to the current pty."""
        return self._link

    port = url

    @property
    def plugged(self) -> bool:
        """True while the simulated device is connected (its pty exists)."""
        return self._master is not None

    def start(self) -> SimulatedDylos:
        """Plug the device in and start replaying in a daemon thread."""
        if self._thread is None:
            self.replug()
            self._thread = threading.Thread(target=self._run, name="simulated-dylos", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop replaying, unplug, and remove the port symlink. Safe to call twice."""
        self._stopping.set()
        if self._replug_timer is not None:
            self._replug_timer.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.unplug()
        shutil.rmtree(self._dir, ignore_errors=True)

    def unplug(self, seconds: float | None = None) -> None:
        """Close the pty (the driver's next read fails) and remove the symlink.

        With ``seconds``, plug back in after that long (the pty gets a new /dev/pts name).
        """
        with self._lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._link)
        if seconds is not None and not self._stopping.is_set():
            self._replug_timer = threading.Timer(seconds, self.replug)
            self._replug_timer.daemon = True
            self._replug_timer.start()

    def replug(self) -> None:
        """Plug in: open a fresh raw pty and point the symlink at it."""
        with self._lock:
            if self._master is not None or self._stopping.is_set():
                return
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no CR/LF translation before the driver configures it
            os.set_blocking(master, False)
            temp = self._link + ".new"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            os.symlink(os.ttyname(slave), temp)
            os.replace(temp, self._link)
            # Keep the slave open too, so writes before the driver opens are buffered, not lost.
            self._master, self._slave = master, slave

    def inject(self, data: bytes) -> bool:
        """Write raw bytes now (tests: blank lines, overlong lines); False when unplugged."""
        return self._send(data)

    def _run(self) -> None:
        """Write one line per 60/speedup seconds, looping over the capture, until stopped."""
        interval = SECONDS_PER_LINE / self.speedup
        next_time = time.monotonic()
        index = 0
        while not self._stopping.is_set():
            delay = next_time - time.monotonic()
            if delay > 0 and self._stopping.wait(delay):
                break
            # After a stall (a full pty), carry on at the normal pace instead of catching up.
            next_time = max(next_time + interval, time.monotonic() - interval)
            if not self.plugged:
                continue
            at = index % len(self._lines)
            line, pair = self._lines[at], self._pairs[at]
            index += 1
            if self.garbage_every and index % self.garbage_every == 0:
                noise = GARBAGE_LINES[(index // self.garbage_every) % len(GARBAGE_LINES)]
                if self._write_line(noise):
                    self.garbage_written += 1
            if self.four_fields and pair is not None:
                small, large = pair
                line = line.rstrip(b"\r\n") + b",%d,%d\r\n" % (small * 100, large * 100)
            self._write_line(line, pair)

    def _write_line(self, line: bytes, pair: tuple[int, int] | None = None) -> bool:
        """Write one line whole, or in small random pieces when chunked; record its pair."""
        if not self.chunked:
            return self._send(line, pair)
        start = 0
        while start < len(line):
            size = self._rng.randint(1, 4)
            last = start + size >= len(line)
            if not self._send(line[start : start + size], pair if last else None):
                return False
            start += size
            if start < len(line) and self._stopping.wait(self.chunk_gap):
                return False
        return True

    def _send(self, data: bytes, pair: tuple[int, int] | None = None) -> bool:
        """Write all of ``data`` to the pty, waiting while it is full; False if unplugged."""
        view = memoryview(data)
        while view:
            if self._stopping.is_set():
                return False
            with self._lock:
                if self._master is None:
                    return False
                _, writable, _ = select.select([], [self._master], [], 0)
                if writable:
                    if pair is not None:
                        self.written.append(pair)  # before the reader can see the line's end
                    try:
                        sent = os.write(self._master, view)
                    except BlockingIOError:
                        sent = 0
                    if pair is not None and sent < len(view):
                        self.written.pop()  # the line's end is still to come
                    view = view[sent:]
                    continue
            self._stopping.wait(0.005)
        return True

    def __enter__(self) -> SimulatedDylos:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
