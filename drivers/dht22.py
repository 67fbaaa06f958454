"""DHT22 temperature/humidity driver on adafruit_dht, with hardware or simulated pulse trains.

adafruit_dht, Blinka's ``board`` and ``digitalio`` are imported only when a backend is opened,
so this module imports on any machine.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drivers.driver import Driver, Probe, SectionReader, Setup
from drivers.reading import Field, OptionError, Reading, SensorError
from drivers.sim.weather import Weather

if TYPE_CHECKING:
    import adafruit_dht

MIN_INTERVAL = 2.0  # s between two reads of the sensor (DHT22 datasheet)
FIELDS = (
    Field("dtemp", "C", "DHT22", -40.0, 80.0),
    Field("drh", "%", "DHT22", 0.0, 100.0),
)
"""Temperature and relative humidity with their default names and datasheet ranges."""

# What adafruit_dht's RuntimeErrors mean, keyed by a fragment of their message.
_KINDS = {
    "Checksum": "checksum",
    "full buffer": "short",
    "not found": "absent",
    "unplausible": "implausible",
}
_LABELS = {
    "checksum": "checksum did not validate",
    "short": "incomplete pulse train",
    "absent": "no answer",
    "implausible": "implausible data (humidity outside 0..100 %)",
}
_ADVICE = {
    "checksum": "bits are corrupted on the wire: shorten the cable and check the 4.7-10 kOhm "
    "pull-up resistor and the 3.3 V supply",
    "short": "bits were missed: check the connection and reduce the CPU load on the Pi",
    "absent": "check wiring, the pull-up resistor and `[dht22] pin`",
    "implausible": "the sensor may be failing; replace it if this persists",
    "other": "see the error above",
}


def _check_settings(poll_interval: float, retries: int, field_names: tuple[str, str]) -> None:
    """OptionError for settings the sensor cannot work with."""
    if not poll_interval >= MIN_INTERVAL:
        raise OptionError(
            f"DHT22 poll_interval {poll_interval} s is below the 2 s minimum between reads "
            "(datasheet); set `[dht22] interval` to 2 or more"
        )
    if retries < 0:
        raise OptionError(f"DHT22 retries = {retries}; use 0 or more")
    if len(field_names) != 2 or field_names[0] == field_names[1]:
        raise OptionError(f"DHT22 field_names {field_names!r}: give two different names")


class DHT22:
    """A DHT22 behind adafruit_dht: retries its transient errors and drops implausible values.

    ``device`` is an ``adafruit_dht.DHT22`` (or the simulated subclass); ``sleep`` and
    ``clock`` space reads >= 2 s apart and are injectable so the bench need not wait.
    """

    name = "dht22"

    def __init__(
        self,
        device: adafruit_dht.DHTBase,
        *,
        pin: int = 4,
        field_names: tuple[str, str] = ("dtemp", "drh"),
        poll_interval: float = 5.0,
        retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        _check_settings(poll_interval, retries, field_names)
        self.device = device
        self.pin = pin
        self.fields = tuple(
            dataclasses.replace(f, name=n) for f, n in zip(FIELDS, field_names, strict=True)
        )
        self.poll_interval = poll_interval
        self.retries = retries
        self.implausible = 0  # values refused as outside the sensor's physical range
        self._sleep, self._clock, self._now = sleep, clock, now
        self._last_measure = -math.inf
        self._closed = False

    @property
    def where(self) -> str:
        return f"DHT22 on GPIO{self.pin} (BCM)"

    def _measure(self) -> tuple[float, float]:
        """One fresh measurement, started >= 2 s after the previous one."""
        wait = self._last_measure + MIN_INTERVAL - self._clock()
        if wait > 0:
            self._sleep(wait)
        self._last_measure = self._clock()
        # adafruit_dht hands back its cached values for 2 s after a call, even after a failed
        # one; we space reads ourselves, so force it to capture a new pulse train.
        self.device._last_called = 0
        self.device.measure()
        # Read what measure() just stored; the properties would measure again after 2 s.
        return float(self.device._temperature), float(self.device._humidity)  # type: ignore[arg-type]

    def read(self) -> list[Reading]:
        """Both fields now; transient library errors are retried, then raise SensorError."""
        errors: Counter[str] = Counter()
        other = ""
        for _ in range(self.retries + 1):
            try:
                values = self._measure()
            except RuntimeError as e:
                kind = next((k for frag, k in _KINDS.items() if frag in str(e)), "other")
                errors[kind] += 1
                if kind == "implausible":  # the library refused humidity outside 0..100 %
                    self.implausible += 1
                elif kind == "other":
                    other = str(e)
                continue
            except OSError as e:
                raise SensorError(
                    f"{self.where}: cannot use the pin ({e}); is the user in the `gpio` group "
                    "and no other process using it?"
                ) from e
            t = self._now()
            readings = []
            for field, value in zip(self.fields, values, strict=True):
                if field.plausible(value):
                    readings.append(Reading(field.name, value, t))
                else:
                    self.implausible += 1
            return readings
        raise SensorError(self._explain(errors, other))

    def _explain(self, errors: Counter[str], other: str) -> str:
        if set(errors) == {"absent"}:
            return f"{self.where} does not answer; {_ADVICE['absent']}"
        parts = ", ".join(f"{_LABELS.get(k, other)} {n}x" for k, n in errors.most_common())
        worst = errors.most_common(1)[0][0]
        return (
            f"{self.where}: no good read in {errors.total()} attempts ({parts}); {_ADVICE[worst]}"
        )

    def close(self) -> None:
        """Release the pin (adafruit_dht's ``exit()``); safe to call twice."""
        if not self._closed:
            self._closed = True
            self.device.exit()


def _open_hardware(pin: int) -> adafruit_dht.DHT22:
    """adafruit_dht's DHT22 on BCM ``pin`` through Blinka's ``board``."""
    try:
        import adafruit_dht
        import board
    except (ImportError, NotImplementedError) as e:
        raise SensorError(
            f"DHT22 on GPIO{pin} (BCM): cannot load the GPIO libraries ({e}); on the Pi run "
            "`pip install sensorkit[pi]`, elsewhere set `[dht22] backend = simulated`"
        ) from e
    pin_obj = getattr(board, f"D{pin}", None)
    if pin_obj is None:
        raise SensorError(
            f"DHT22: board {getattr(board, 'board_id', '?')} has no GPIO{pin} (BCM, board.D{pin});"
            " set `[dht22] pin` to the BCM number of the data pin, e.g. 4"
        )
    try:
        return adafruit_dht.DHT22(pin_obj)
    except (RuntimeError, OSError, ValueError) as e:
        raise SensorError(
            f"DHT22 on GPIO{pin} (BCM): cannot open the pin ({e}); is another process using it?"
        ) from e


def _no_wait(seconds: float) -> None:
    """The simulated sensor needs no rest between reads."""


def open_dht22(
    backend: str = "simulated",
    *,
    pin: int = 4,
    field_names: tuple[str, str] = ("dtemp", "drh"),
    poll_interval: float = 5.0,
    weather: Weather | None = None,
    checksum_error_rate: float = 0.0,
    short_train_rate: float = 0.0,
    absent: bool = False,
    seed: int | None = None,
    retries: int = 3,
    device: adafruit_dht.DHTBase | None = None,
) -> DHT22:
    """Open the DHT22 on BCM ``pin``; ``backend`` is "hardware" or "simulated".

    ``weather``, the fault rates, ``absent`` and ``seed`` shape the simulated sensor only.
    ``device`` (an ``adafruit_dht`` device, e.g. one fed given pulse trains) is used instead
    of the one the backend would open; the driver then does not wait 2 s between reads.
    """
    _check_settings(poll_interval, retries, field_names)
    options: dict[str, Any] = dict(
        pin=pin, field_names=field_names, poll_interval=poll_interval, retries=retries
    )
    if backend not in ("hardware", "simulated"):
        raise OptionError(f"unknown DHT22 backend {backend!r}; use 'hardware' or 'simulated'")
    if device is not None:
        return DHT22(device, sleep=_no_wait, **options)
    if backend == "hardware":
        return DHT22(_open_hardware(pin), **options)
    from drivers.sim.dht22 import SimulatedDHT22

    try:
        simulated = SimulatedDHT22(
            pin,
            weather=weather,
            checksum_error_rate=checksum_error_rate,
            short_train_rate=short_train_rate,
            absent=absent,
            seed=seed,
        )
    except ValueError as e:
        raise OptionError(f"[dht22] sim_*: {e}") from e
    return DHT22(simulated, sleep=_no_wait, **options)


def probe_dht22(backend: str = "simulated", pin: int = 4, **options: Any) -> str:
    """One read, described in one line for ``sensorkit probe``: the values or why not."""
    return _read_once(backend, pin, options)[0]


def _read_once(backend: str, pin: int, options: dict[str, Any]) -> tuple[str, bool]:
    """One read described in one line, and whether it gave values (the sensor answered)."""
    try:
        sensor = open_dht22(backend, pin=pin, **options)
    except SensorError as e:
        return (str(e) if str(e).startswith("DHT22") else f"DHT22 on GPIO{pin}: {e}"), False
    try:
        readings = sensor.read()
    except SensorError as e:
        return str(e), False
    finally:
        sensor.close()
    units = {f.name: f.unit for f in sensor.fields}
    parts = [f"{r.value:.1f} {units[r.field]}" for r in readings]
    if sensor.implausible:
        parts.append(f"{sensor.implausible} implausible value(s) refused")
    return f"DHT22 on GPIO{pin}: " + ", ".join(parts), bool(readings)


def _parse_options(s: SectionReader) -> dict[str, object]:
    """The [dht22] keys of its own: pin, interval and the simulated faults."""
    return {
        "pin": s.number("pin", 4, int, 0, 27, "(BCM GPIO number)"),
        "poll_interval": s.number("interval", 5.0, float, MIN_INTERVAL, None, "seconds"),
        "checksum_error_rate": s.number("sim_checksum_error_rate", 0.0, float, 0, 1),
        "short_train_rate": s.number("sim_short_train_rate", 0.0, float, 0, 1),
        "absent": s.flag("sim_absent", False),
    }


def _open(setup: Setup) -> DHT22:
    """Open the DHT22 the settings describe."""
    return open_dht22(
        setup.backend,
        field_names=setup.fields,  # type: ignore[arg-type]
        weather=setup.weather,
        seed=setup.weather.seed,
        device=setup.transport,  # type: ignore[arg-type]
        **setup.options,  # type: ignore[arg-type]
    )


def _probe(setup: Setup, patience: float) -> Probe:
    """Read the sensor once; suggest it only when the read gave values."""
    options = {k: v for k, v in setup.options.items() if k not in ("pin", "poll_interval")}
    pin = int(setup.options.get("pin", 4))  # type: ignore[call-overload]
    options.update(weather=setup.weather, device=setup.transport)
    line, answered = _read_once(setup.backend, pin, options)
    suggest = (f"backend = {setup.backend}", f"pin = {pin}") if answered else ()
    return Probe((f"DHT22 (for [dht22], backend {setup.backend}):", f"  {line}"), suggest)


DRIVER = Driver(
    section="dht22",
    summary="DHT22 temperature and humidity sensor on a GPIO pin",
    fields=FIELDS,
    parse_options=_parse_options,
    open=_open,
    probe=_probe,
)
