"""Dylos DC1100 particle counter over a serial port (pyserial): one ``small,large`` line a minute.

The device sends, every minute at 9600 baud 8N1, the average counts of the past minute per
0.01 cubic foot as ``small,large\\r\\n`` (small: particles > 0.5 um, large: > 2.5 um on the
DC1100 Pro; > 1 um and > 5 um on the standard model). They go out as ``pm_25``/``pm_10``, the
original kit's names: counts, not mass concentrations. The port is any pyserial URL: a device
path, ``loop://``, ``socket://host:port``, or the simulated Dylos's pty; the driver does not
know which. An unplugged or absent port is retried with
capped exponential backoff and reported once; read() never raises for it. One line is one
measurement: a line the device cannot have sent is refused whole, never in part.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import serial
import serial.tools.list_ports

from drivers.driver import Driver, Probe, SectionReader, Setup
from drivers.reading import DataError, Field, OptionError, Reading, SensorError
from drivers.sim.weather import Weather

log = logging.getLogger("sensorkit.dylos")

MAX_LINE = 256
"""Bytes without a line end after which the line is garbage (a real line is under 20 bytes)."""

DISPLAY_MAX = 99999.0
"""Counts per 0.01 cubic foot: the DC1100's five-digit display (assumed: no datasheet figure)."""

SLICE = 0.1
"""Longest single blocking serial read, so read() keeps close to its own deadline."""

PER_M3 = 1 / (0.01 * 0.028316846592)  # (counts per 0.01 cubic foot) -> counts per m3
DENSITY = 1.65e12  # ug/m3 (1.65 g/cm3)
RADIUS_FINE = 0.44e-6  # m, representative radius of the 0.5-2.5 um channel
RADIUS_COARSE = 2.6e-6  # m, representative radius of the > 2.5 um channel


def counts_to_mass(small: float, large: float) -> tuple[float, float]:
    """Estimated PM2.5 and PM10 mass (ug/m3) from ``small,large`` counts per 0.01 cubic foot.

    The physical conversion used for Dylos counters: particles are taken as spheres of density
    1.65 g/cm3 with a representative radius of 0.44 um for the fine channel (small - large)
    and 2.6 um for the coarse one (large), so mass = count * 3531.5 /m3 * density * 4/3*pi*r^3.
    These assumptions, and how far such conversions agree with gravimetric samples, are
    discussed in Franken et al., "Comparison of methods for converting Dylos particle number
    concentrations to PM2.5 mass concentrations", Indoor Air 29(3):450-459 (2019),
    doi:10.1111/ina.12546. It is an estimate, not a calibration: add one per field.
    """
    fine_mass = DENSITY * 4 / 3 * math.pi * RADIUS_FINE**3
    coarse_mass = DENSITY * 4 / 3 * math.pi * RADIUS_COARSE**3
    pm25 = max(0.0, small - large) * PER_M3 * fine_mass
    return pm25, pm25 + large * PER_M3 * coarse_mass


_WARN_FIRST = 10  # garbage lines logged one by one, then every _WARN_EVERY-th
_WARN_EVERY = 100


def parse_line(line: bytes) -> tuple[int, int] | None:
    """The (small, large) counts of one line without its line end; None for a blank line.

    Takes the first two fields and ignores any more (some DC1100 Pro firmware sends four).
    Raises DataError (a ValueError) when the line is not two non-negative integers.
    """
    text = line.strip()
    if not text:
        return None
    fields = text.split(b",")
    if len(fields) < 2:
        raise DataError("one field, expected 'small,large'")
    small, large = fields[0].strip(), fields[1].strip()
    if not (small.isdigit() and large.isdigit() and small.isascii() and large.isascii()):
        raise DataError("not two non-negative integers")
    return int(small), int(large)


class Dylos:
    """A Dylos DC1100 on a serial port; read() waits up to ``read_timeout`` for the next line.

    For ``sensorkit status``: ``connected`` and ``last_error`` (the most recent open or I/O
    problem, kept after recovery), ``garbage_lines`` (lines ignored as unparseable) and
    ``implausible`` (values refused: both counts of each line with a count beyond the
    display). ``config_file`` names the file the port came from, in messages.
    """

    name = "dylos"
    poll_interval = 0.0

    def __init__(
        self,
        port: str,
        *,
        field_names: tuple[str, str] = ("pm_25", "pm_10"),
        read_timeout: float = 1.0,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        on_close: Callable[[], None] | None = None,
        mass: bool = False,
        config_file: str = "agent.ini",
    ) -> None:
        """Open ``port`` now; if that fails, say why once and keep retrying from read()."""
        if len(field_names) != 2 or field_names[0] == field_names[1]:
            raise OptionError(
                f"{config_file} [dylos] fields: need two different names (small, large), "
                f"not {field_names!r}"
            )
        if not read_timeout > 0 or not 0 < retry_base <= retry_cap:
            raise OptionError(
                f"Dylos timings: need read_timeout > 0 and 0 < retry_base <= retry_cap, not "
                f"{read_timeout}, {retry_base}, {retry_cap}"
            )
        self.port = port
        self.config_file = config_file
        self.mass = mass
        top = max(counts_to_mass(DISPLAY_MAX, DISPLAY_MAX)) if mass else DISPLAY_MAX
        self.fields = tuple(
            Field(n, "ug/m3" if mass else "pcs/qf", "Dylos DC1100", 0.0, top) for n in field_names
        )
        self.read_timeout = read_timeout
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.connected = False
        self.last_error: str | None = None
        self.garbage_lines = 0
        self.implausible = 0
        self._refusals_said: set[tuple[str, ...]] = set()
        self.serial: serial.SerialBase | None = None
        self._on_close = on_close
        self._closed = False
        self._buffer = bytearray()
        self._skipping = False  # inside an overlong line: drop bytes up to its line end
        self._discard_next = True  # the first line after an open is partial
        self._outage_reported = False
        self._delay = retry_base
        self._next_attempt = 0.0
        self._open()

    def read(self) -> list[Reading]:
        """Readings of the lines completed within ``read_timeout``; [] when none (or unplugged)."""
        if self._closed:
            raise SensorError(f"Dylos on {self.port}: read() after close(); open the sensor again")
        deadline = time.monotonic() + self.read_timeout
        while True:
            if self.serial is None and not self._reopen_before(deadline):
                return []
            try:
                readings = self._read_until(deadline)
            except (serial.SerialException, OSError) as exc:
                self._lost(exc)
                continue
            if readings or time.monotonic() >= deadline:
                return readings

    def close(self) -> None:
        """Close the port (and stop a simulator this driver owns). Safe to call twice."""
        self._closed = True
        self._close_port()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    def _read_until(self, deadline: float) -> list[Reading]:
        """Read chunks until a line gives readings or the deadline passes."""
        assert self.serial is not None
        while True:
            data = self.serial.read(self.serial.in_waiting or 1)
            if data:
                readings = self._feed(data, time.time())
                if readings:
                    return readings
            if time.monotonic() >= deadline:
                return []

    def _feed(self, data: bytes, now: float) -> list[Reading]:
        """Add bytes to the line buffer; return the readings of the lines they complete."""
        readings: list[Reading] = []
        while data:
            end = data.find(b"\n")
            part, data = (data, b"") if end < 0 else (data[:end], data[end + 1 :])
            if self._skipping:
                self._skipping = end < 0
                continue
            self._buffer += part
            if len(self._buffer) > MAX_LINE:  # bounded buffer: drop the line up to its end
                self._garbage(bytes(self._buffer), f"longer than {MAX_LINE} bytes")
                self._buffer.clear()
                self._skipping = end < 0
                continue
            if end < 0:
                break
            line = bytes(self._buffer).removesuffix(b"\r")
            self._buffer.clear()
            readings += self._line(line, now)
        return readings

    def _line(self, line: bytes, now: float) -> list[Reading]:
        """Readings of one complete line (``\\r`` and blanks stripped), or [] when ignored."""
        if not line.strip():
            return []
        if self._discard_next:
            self._discard_next = False
            log.debug("Dylos on %s: discarded the first line after opening: %r", self.port, line)
            return []
        try:
            pair = parse_line(line)
        except DataError as exc:
            self._garbage(line, str(exc))
            return []
        assert pair is not None
        if max(pair) > DISPLAY_MAX:
            self._refuse(line, pair)
            return []
        values = counts_to_mass(*pair) if self.mass else pair
        return [Reading(f.name, float(v), now) for f, v in zip(self.fields, values, strict=True)]

    def _garbage(self, line: bytes, why: str) -> None:
        """Count an ignored line and warn about it, quoting it (the first few, then every 100th)."""
        self.garbage_lines += 1
        n = self.garbage_lines
        if n <= _WARN_FIRST or n % _WARN_EVERY == 0:
            quoted = repr(line[:40]) + ("..." if len(line) > 40 else "")
            more = "" if n < _WARN_FIRST else "; from now on only every 100th is logged"
            log.warning(
                "Dylos on %s: ignored garbage line %s (%s); %d so far%s; check the cable and "
                "the port's baud rate (9600 8N1)",
                self.port,
                quoted,
                why,
                n,
                more,
            )

    def _refuse(self, line: bytes, pair: tuple[int, int]) -> None:
        """Drop a line with a count beyond the display: both counts, counted, said once per kind."""
        self.implausible += len(pair)
        names = ("small", "large")
        beyond = tuple(n for n, count in zip(names, pair, strict=True) if count > DISPLAY_MAX)
        if beyond in self._refusals_said:
            log.debug("Dylos on %s: refused line %r", self.port, line[:40])
            return
        self._refusals_said.add(beyond)
        log.warning(
            "Dylos on %s: refused line %r: the %s beyond the DC1100's five-digit display "
            "(%d), so the device did not send it; a line is one measurement, so neither count "
            "is kept. Such lines are counted in `sensorkit status` (implausible) and not logged "
            "again; check the cable and the port's baud rate (9600 8N1)",
            self.port,
            line[:40],
            f"{beyond[0]} count is" if len(beyond) == 1 else "small and large counts are",
            DISPLAY_MAX,
        )

    def _open(self) -> bool:
        """Try to open the port once; on failure describe it, once per outage, and back off."""
        try:
            self.serial = serial.serial_for_url(
                self.port,
                baudrate=9600,
                bytesize=8,
                parity="N",
                stopbits=1,
                timeout=min(self.read_timeout, SLICE),
            )
        except (serial.SerialException, OSError) as exc:
            self._failed(self._describe(exc))
            return False
        self.connected = True
        self._buffer.clear()
        self._skipping = False
        self._discard_next = True
        self._delay = self.retry_base
        if self._outage_reported:
            log.info("Dylos on %s is back; reading again", self.port)
            self._outage_reported = False
        return True

    def _reopen_before(self, deadline: float) -> bool:
        """Sleep until the next retry (never past ``deadline``) and try it; True once open."""
        while True:
            now = time.monotonic()
            if self._next_attempt > deadline:
                time.sleep(max(0.0, deadline - now))
                return False
            time.sleep(max(0.0, self._next_attempt - now))
            if self._open():
                return True

    def _lost(self, exc: BaseException) -> None:
        """The port failed while reading (unplugged, I/O error): close it and retry later."""
        self._close_port()
        self._failed(f"Dylos on {self.port} went away ({exc}); unplugged or powered off?")

    def _failed(self, message: str) -> None:
        """Record a problem, warn once per outage, and schedule the next open with backoff."""
        self.connected = False
        self.last_error = message
        if not self._outage_reported:
            log.warning(
                "%s -- retrying, every %g s backing off to every %g s; other sensors carry on",
                message,
                self.retry_base,
                self.retry_cap,
            )
            self._outage_reported = True
        else:
            log.debug("%s (retry in %g s)", message, self._delay)
        self._next_attempt = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.retry_cap)

    def _describe(self, exc: BaseException) -> str:
        """Say what is wrong with the port in config-file terms, and what to do."""
        where = f"{self.config_file} [dylos] port: {self.port}"
        problem = _port_problem(self.port, exc)
        if problem == "does not exist":
            return f"{where} does not exist; plugged in? see `sensorkit probe`"
        if problem.startswith("permission denied"):
            return f"{where}: {problem}"
        return f"{where}: {problem}; check the cable, see `sensorkit probe`"

    def _close_port(self) -> None:
        """Close the serial port, ignoring errors from a port that is already gone."""
        ser, self.serial = self.serial, None
        self.connected = False
        self._buffer.clear()
        if ser is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                ser.close()


def _port_problem(port: str, exc: BaseException) -> str:
    """Why ``port`` did not open, in a few words and what to do about it."""
    if "://" not in port and not os.path.exists(port):
        return "does not exist"
    if getattr(exc, "errno", None) == errno.EACCES:
        return "permission denied; add the agent's user to the 'dialout' group"
    return f"cannot open it ({exc})"


class PortSource(Protocol):
    """What a Dylos transport offers: the path or URL of a port to open (``SimulatedDylos``)."""

    @property
    def url(self) -> str: ...


def open_dylos(
    backend: str = "simulated",
    *,
    port: str = "/dev/ttyUSB0",
    replay: str | None = None,
    speedup: float = 60.0,
    field_names: tuple[str, str] = ("pm_25", "pm_10"),
    read_timeout: float = 1.0,
    retry_base: float = 1.0,
    retry_cap: float = 60.0,
    mass: bool = False,
    weather: Weather | None = None,
    transport: PortSource | None = None,
    config_file: str = "agent.ini",
) -> Dylos:
    """The Dylos driver on ``port`` (hardware) or on a started simulator's pty (simulated).

    ``replay`` (a file of device lines to send byte for byte), ``speedup`` and ``weather``
    (what the made-up lines follow when there is no replay) apply to the simulated backend
    only. ``transport`` (e.g. a started ``SimulatedDylos``) gives the port to open instead;
    it stays the caller's. Bad values raise OptionError naming the config key.
    """
    timing = {
        "read_timeout": read_timeout,
        "retry_base": retry_base,
        "retry_cap": retry_cap,
        "mass": mass,
        "config_file": config_file,
    }
    if backend not in ("hardware", "simulated"):
        raise OptionError(
            f"{config_file} [dylos] backend: {backend!r} is not one of: hardware, simulated"
        )
    if transport is not None:
        return Dylos(transport.url, field_names=field_names, **timing)
    if backend == "hardware":
        return Dylos(port, field_names=field_names, **timing)
    sim = _simulator(replay, speedup, weather, config_file).start()
    try:
        return Dylos(sim.url, field_names=field_names, on_close=sim.stop, **timing)
    except BaseException:
        sim.stop()
        raise


def _simulator(replay: str | None, speedup: float, weather: Weather | None, config_file: str):
    """A simulated Dylos (not started); its ValueError becomes an OptionError naming the key."""
    from drivers.sim.dylos import SimulatedDylos

    try:
        return SimulatedDylos(replay, speedup=speedup, weather=weather)
    except ValueError as exc:
        raise OptionError(f"{config_file} [dylos] replay/speedup: {exc}") from exc


def list_serial_ports() -> list[str]:
    """Serial ports for ``sensorkit probe``: stable /dev/serial/by-id names first, then the rest."""
    ports = sorted(glob.glob("/dev/serial/by-id/*"))
    named = {os.path.realpath(p) for p in ports}
    for info in sorted(serial.tools.list_ports.comports(), key=lambda i: i.device):
        if os.path.realpath(info.device) not in named:
            ports.append(info.device)
    return ports


def listen(port: str, seconds: float) -> tuple[int, int] | str:
    """The first ``small,large`` line heard on ``port`` within ``seconds``, or why none was.

    Any line that parses counts, even the first one after opening (which may be the tail of
    a line): it is enough to tell that a Dylos is talking.
    """
    try:
        ser = serial.serial_for_url(
            port, baudrate=9600, bytesize=8, parity="N", stopbits=1, timeout=SLICE
        )
    except (serial.SerialException, OSError) as exc:
        return _port_problem(port, exc)
    deadline = time.monotonic() + seconds
    pending = b""
    with contextlib.closing(ser):
        while time.monotonic() < deadline:
            try:
                pending += ser.read(ser.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                return f"went away while listening ({exc})"
            *lines, pending = pending.split(b"\n")
            for line in lines:
                with contextlib.suppress(DataError):
                    pair = parse_line(line)
                    if pair is not None and max(pair) <= DISPLAY_MAX:
                        return pair
            pending = pending[-MAX_LINE:]
    return f"no Dylos line in {seconds:g} s (a DC1100 sends one a minute)"


def _probe(setup: Setup, patience: float) -> Probe:
    """List the serial ports, listen for a Dylos, and suggest only a port one was heard on."""
    ports = list_serial_ports()
    lines = ["serial ports (for [dylos] port):"]
    if setup.backend == "simulated" or setup.transport is not None:
        lines += [f"  {p}" for p in ports] or ["  none found; is the Dylos plugged in?"]
        heard = _probe_simulated(setup, patience)
        lines.append(f"  simulated Dylos: {_heard_text(heard)}")
        found = not isinstance(heard, str)
        return Probe(tuple(lines), ("backend = simulated",) if found else ())
    configured = str(setup.options.get("port", ""))
    candidates = list(ports)
    if configured and os.path.realpath(configured) not in {os.path.realpath(p) for p in ports}:
        candidates.append(configured)
    if not candidates:
        return Probe((*lines, "  none found; is the Dylos plugged in?"))
    log.info("listening for a Dylos line on %s for up to %g s", ", ".join(candidates), patience)
    with ThreadPoolExecutor(max_workers=min(8, len(candidates))) as pool:
        heard = list(pool.map(lambda p: listen(p, patience), candidates))
    answered = [p for p, h in zip(candidates, heard, strict=True) if not isinstance(h, str)]
    for port, result in zip(candidates, heard, strict=True):
        label = f" (configured in {setup.config_file})" if port == configured else ""
        lines.append(f"  {port}{label}: {_heard_text(result)}")
    suggest = ("backend = hardware", f"port = {answered[0]}") if answered else ()
    return Probe(tuple(lines), suggest)


def _probe_simulated(setup: Setup, patience: float) -> tuple[int, int] | str:
    """Start the simulated Dylos the settings describe (or use the given one) and listen."""
    if setup.transport is not None:
        return listen(setup.transport.url, patience)  # type: ignore[attr-defined]
    replay = setup.options.get("replay")
    try:
        sim = _simulator(
            str(replay) if replay else None,
            float(setup.options.get("speedup", 60.0)),  # type: ignore[arg-type]
            setup.weather,
            setup.config_file,
        ).start()
    except OptionError as exc:
        return str(exc)
    try:
        return listen(sim.url, patience)
    finally:
        sim.stop()


def _heard_text(heard: tuple[int, int] | str) -> str:
    """A probe result in words."""
    if isinstance(heard, str):
        return heard
    return f"a Dylos is talking: {heard[0]},{heard[1]}"


def _parse_options(s: SectionReader) -> dict[str, object]:
    """The [dylos] keys of its own: port, replay, speedup, mass."""
    replay = s.relative_path("replay")
    if replay is not None and not replay.is_file():
        raise s.fail(
            "replay",
            f"{replay} is not a file; allowed: a file of Dylos lines 'small,large' (relative "
            "to this config), or nothing for lines made up from the [simulated] weather",
        )
    return {
        "port": s.text("port", "/dev/ttyUSB0"),
        "replay": str(replay) if replay is not None else None,
        "speedup": s.number("speedup", 60.0, float, 0.001, None),
        "mass": s.flag("mass", False),
    }


def _open(setup: Setup) -> Dylos:
    """Open the Dylos the settings describe."""
    return open_dylos(
        setup.backend,
        field_names=setup.fields,  # type: ignore[arg-type]
        weather=setup.weather,
        transport=setup.transport,  # type: ignore[arg-type]
        config_file=setup.config_file,
        **setup.options,  # type: ignore[arg-type]
    )


DRIVER = Driver(
    section="dylos",
    summary="Dylos DC1100 particle counter on a serial port",
    fields=(
        Field("pm_25", "pcs/qf", "Dylos DC1100", 0.0, DISPLAY_MAX),
        Field("pm_10", "pcs/qf", "Dylos DC1100", 0.0, DISPLAY_MAX),
    ),
    parse_options=_parse_options,
    open=_open,
    probe=_probe,
)
