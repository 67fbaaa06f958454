"""A simulated Dylos DC1100: device lines into a pseudo-terminal, like the device's port.

By default it makes its own lines from the weather model (:class:`Particles`); given a replay
file it sends that file's lines byte for byte instead. The driver opens
:attr:`SimulatedDylos.url` exactly as it opens ``/dev/ttyUSB0``, so the real serial parsing code
runs on the bench. Fault injection (partial writes, garbage lines, four-field lines,
unplugging) lets tests drive the driver's error handling through the same path.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import select
import shutil
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from drivers.sim.weather import Weather

SECONDS_PER_LINE = 60.0
"""The DC1100 reports once a minute: the average counts of the past minute."""

DISPLAY_MAX = 99999
"""The largest count the DC1100's five-digit display (and so its serial line) shows."""

GARBAGE_LINES = (b"\x00\x00\xff\xfe\r\n", b"ERR\r\n", b"412\r\n", b"-5,3\r\n", b"\xfe\x80,\x81\r\n")
"""What a noisy line or a reset device may send: binary noise, text, one field, a negative."""


@dataclass(frozen=True)
class Particles:
    """Made-up DC1100 counts that follow the simulated weather; invented for the bench.

    Counts per 0.01 cubic foot grow with relative humidity (particles take up water) and at
    night (a shallow night-time boundary layer holds them near the ground), drift slowly as
    air masses pass, and carry line-to-line noise. The numbers only give magnitudes like a
    real indoor/garden capture (small: hundreds to a few thousand; large: tens to a few
    hundred); they are not fitted to any data. :meth:`at` is a pure function of the time and
    ``weather.seed``.
    """

    weather: Weather = field(default_factory=Weather)
    small: float = 700.0  # small count at 70 %RH by day, before drift and noise
    large_share: float = 0.045  # large count as a share of the small one, at 70 %RH
    humidity_gain: float = 0.04  # per %RH above 70: small x exp(gain * (rh - 70))
    night_gain: float = 0.6  # extra share at 03:00 local solar time, none at 15:00
    drift: float = 0.15  # amplitude of the slow air-mass drift (log scale)
    noise: float = 0.06  # standard deviation of the line-to-line noise (log scale)

    def at(self, t: float) -> tuple[int, int]:
        """The (small, large) counts of the line the device sends at UNIX time ``t``."""
        _, rh, _ = self.weather.at(t)
        hour = (t / 3600.0) % 24.0
        night = (1 + math.cos(2 * math.pi * (hour - 3.0) / 24.0)) / 2
        phases = random.Random(f"dylos-drift-{self.weather.seed}")
        slow = self.drift * (
            math.sin(2 * math.pi * t / 5820.0 + phases.uniform(0, 2 * math.pi))
            + 0.6 * math.sin(2 * math.pi * t / 22100.0 + phases.uniform(0, 2 * math.pi))
        )
        rng = random.Random(f"dylos-{self.weather.seed}-{t!r}")
        small = (
            self.small
            * math.exp(self.humidity_gain * (rh - 70.0) + slow + rng.gauss(0, self.noise))
            * (1 + self.night_gain * night)
        )
        share = self.large_share * math.exp(0.02 * (rh - 70.0) + rng.gauss(0, 0.15))
        small_count = min(DISPLAY_MAX, max(0, round(small)))
        return small_count, min(small_count, max(0, round(small * share)))


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
    """Writes device lines into a pty at ``speedup`` times the device's pace of one a minute.

    The lines are made up from ``weather`` (:class:`Particles`, at the time each line goes
    out), or, with ``replay``, are that file's lines byte for byte, looping. ``url`` is a
    stable symlink to the current pty (as ``/dev/serial/by-id/...`` is to a USB adapter), so
    the driver finds the device again after :meth:`unplug` and :meth:`replug`. Writes wait
    while the pty's buffer is full (nothing is dropped, the output just pauses), so
    ``written`` is exactly what entered the port. Runs in a daemon thread.
    """

    def __init__(
        self,
        replay: str | os.PathLike[str] | None = None,
        *,
        weather: Weather | None = None,
        clock: Callable[[], float] = time.time,
        speedup: float = 60.0,
        chunked: bool = False,
        chunk_gap: float = 0.0005,
        garbage_every: int = 0,
        four_fields: bool = False,
        seed: int = 1,
    ) -> None:
        """Load ``replay`` if given; nothing is written until start().

        ``weather`` and ``clock`` (the time each made-up line is for) shape the made-up lines;
        ``chunked`` writes each line in random 1..4 byte pieces ``chunk_gap`` seconds apart
        (``seed`` makes the pieces repeatable); ``garbage_every`` > 0 writes a garbage line
        before every n-th line; ``four_fields`` appends two extra fields to each line, as some
        DC1100 Pro firmware does. ValueError for a bad ``speedup`` or replay file.
        """
        if not speedup > 0:
            raise ValueError(f"speedup must be > 0 (60 = a line a second): {speedup}")
        self.particles = Particles(weather or Weather())
        self.clock = clock
        self.source = Path(replay) if replay is not None else None
        """The replay file, or None when the lines are made up from the weather."""
        self._lines: list[bytes] = []
        self._pairs: list[tuple[int, int] | None] = []
        if self.source is not None:
            self._load(self.source)
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

    def _load(self, source: Path) -> None:
        """Read a replay file into lines and their pairs; ValueError says what is wrong."""
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the Dylos replay file {source}: {exc}") from exc
        lines = data.splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\r\n"  # looping must not glue the last line to the first
        self._pairs = _pairs(lines, source)
        if not any(self._pairs):
            raise ValueError(f"the Dylos replay file {source} holds no 'small,large' lines")
        self._lines = lines

    def start(self) -> SimulatedDylos:
        """Plug the device in and start sending lines in a daemon thread."""
        if self._thread is None:
            self.replug()
            self._thread = threading.Thread(target=self._run, name="simulated-dylos", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending, unplug, and remove the port symlink. Safe to call twice."""
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

    def _next_line(self, index: int) -> tuple[bytes, tuple[int, int] | None]:
        """The ``index``-th line to send and its pair: made up now, or from the replay file."""
        if self.source is None:
            pair = self.particles.at(self.clock())
            return b"%d,%d\r\n" % pair, pair  # the DC1100's format: small,large CR LF
        at = index % len(self._lines)
        return self._lines[at], self._pairs[at]

    def _run(self) -> None:
        """Write one line per 60/speedup seconds (a replay loops) until stopped."""
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
            line, pair = self._next_line(index)
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
