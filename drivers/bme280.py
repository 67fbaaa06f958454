"""Bosch BME280 temperature, humidity and pressure over I2C, read with ``adafruit_bme280``.

The Adafruit library (and the Blinka modules it pulls in) is imported only when a sensor is
opened, so this module imports on any machine. ``backend="simulated"`` puts the same library
on :class:`drivers.sim.bme280.SimulatedI2CBus`, so its real decoding code runs on the bench.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from drivers.driver import Driver, Probe, SectionReader, Setup
from drivers.reading import Field, OptionError, Reading, SensorError
from drivers.sim.weather import Weather

log = logging.getLogger(__name__)

ADDRESSES = (0x76, 0x77)  # SDO to GND, SDO to VDD
OVERSAMPLING = (1, 2, 4, 8, 16)
BME280_ID = 0x60
BMP280_IDS = (0x56, 0x57, 0x58)  # samples, samples, mass production
CHIP_ID_REGISTER = 0xD0
ATTEMPTS = 3  # tries of one read before a transient I/O error becomes a SensorError
FIELDS = (
    Field("temp", "C", "BME280", -40.0, 85.0),
    Field("rh", "%", "BME280", 0.0, 100.0),
    Field("hpa", "hPa", "BME280", 300.0, 1100.0),
)
"""Temperature, humidity and station pressure: default names and datasheet operating ranges."""
ENABLE_I2C = (
    "check wiring, enable I2C with `sudo raspi-config nonint do_i2c 0`, "
    "and list devices with `i2cdetect -y {bus}` or `sensorkit probe`"
)


def chip_name(chip_id: int | None) -> str:
    """What a chip id read from register 0xD0 says is there."""
    if chip_id is None:
        return "nothing"
    if chip_id == BME280_ID:
        return "BME280"
    if chip_id in BMP280_IDS:
        return "BMP280"
    return f"unknown chip 0x{chip_id:02x}"


def read_chip_id(i2c: Any, address: int, attempts: int = ATTEMPTS) -> int | None:
    """Register 0xD0 of the device at ``address``; None when nothing answers."""
    buf = bytearray(1)
    for _ in range(attempts):
        _lock(i2c)
        try:
            i2c.writeto_then_readfrom(address, bytes([CHIP_ID_REGISTER]), buf)
            return buf[0]
        except OSError:
            continue
        finally:
            i2c.unlock()
    return None


def probe_bme280(i2c: Any) -> list[tuple[int, int | None, str]]:
    """For ``sensorkit probe``: (address, chip id or None, name) at 0x76 and 0x77."""
    result = []
    for address in ADDRESSES:
        chip_id = read_chip_id(i2c, address)
        result.append((address, chip_id, chip_name(chip_id)))
    return result


def _lock(i2c: Any, timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not i2c.try_lock():
        if time.monotonic() > deadline:
            raise SensorError(f"I2C bus stayed locked for {timeout} s; is another process stuck?")
        time.sleep(0.001)


def _find_chip(i2c: Any, bus: int, address: int | None) -> int:
    """The address of the BME280, or a SensorError saying what is (not) there instead."""
    tried = ADDRESSES if address is None else (address,)
    wrong: list[tuple[int, int]] = []
    for candidate in tried:
        chip_id = read_chip_id(i2c, candidate)
        if chip_id == BME280_ID:
            return candidate
        if chip_id is not None:
            wrong.append((candidate, chip_id))
    if wrong:
        at, chip_id = wrong[0]
        where = f"I2C bus {bus} address 0x{at:02x}: chip id 0x{chip_id:02x}"
        if chip_id in BMP280_IDS:
            raise SensorError(
                f"{where} is a BMP280 (temperature and pressure only, no humidity); "
                "sensorkit needs a BME280"
            )
        raise SensorError(
            f"{where} is not a BME280 (expected 0x{BME280_ID:02x}); another device uses this "
            "address: set [bme280] address to the BME280's address (see `sensorkit probe`)"
        )
    addresses = " or ".join(f"0x{a:02x}" for a in tried)
    raise SensorError(
        f"no device answers at address {addresses} on I2C bus {bus}; " + ENABLE_I2C.format(bus=bus)
    )


class BME280:
    """One BME280 on an open I2C bus; each ``read()`` runs forced conversions."""

    name = "bme280"

    def __init__(
        self,
        i2c: Any,
        *,
        bus: int = 1,
        address: int | None = None,
        oversampling: int = 1,
        field_names: tuple[str, str, str] = ("temp", "rh", "hpa"),
        poll_interval: float = 10.0,
        owns_bus: bool = False,
    ) -> None:
        _check_oversampling(oversampling)
        if len(field_names) != 3 or len(set(field_names)) != 3 or not all(field_names):
            raise OptionError(f"BME280 field_names must be 3 distinct names, not {field_names!r}")
        self.fields = tuple(
            dataclasses.replace(f, name=n) for f, n in zip(FIELDS, field_names, strict=True)
        )
        self.poll_interval = poll_interval
        self.bus = bus
        self.oversampling = oversampling
        self.implausible = 0  # values dropped as outside the field's physical range
        self.attempts = ATTEMPTS
        self.retry_delay = 0.05  # s between attempts; a glitch on the wire is short
        self._i2c = i2c
        self._owns_bus = owns_bus
        self.address = _find_chip(i2c, bus, address)
        self._where = f"BME280 on I2C bus {bus} address 0x{self.address:02x}"
        # The library turns a missed probe ack into ValueError and a garbled id into
        # RuntimeError; the id was just read fine, so both are glitches worth a retry.
        self._chip = self._retry("set up", self._open, (OSError, ValueError, RuntimeError))

    def _open(self) -> Any:
        """The library object, configured for forced mode at our oversampling."""
        from adafruit_bme280 import advanced, basic

        chip = basic.Adafruit_BME280_I2C(self._i2c, self.address)  # resets, reads calibration
        code = {
            1: advanced.OVERSCAN_X1,
            2: advanced.OVERSCAN_X2,
            4: advanced.OVERSCAN_X4,
            8: advanced.OVERSCAN_X8,
            16: advanced.OVERSCAN_X16,
        }[self.oversampling]
        chip.overscan_temperature = chip.overscan_pressure = chip.overscan_humidity = code
        chip.mode = advanced.MODE_FORCE  # writes ctrl_hum, then ctrl_meas
        return chip

    def _retry(
        self, what: str, action: Any, transient: tuple[type[Exception], ...] = (OSError,)
    ) -> Any:
        """Run ``action``, retrying ``transient`` errors; ``attempts`` tries in all."""
        for attempt in range(1, self.attempts):
            try:
                return action()
            except transient as err:
                log.debug("%s: %s attempt %d failed: %s", self._where, what, attempt, err)
                time.sleep(self.retry_delay)
        try:
            return action()
        except transient as err:
            raise SensorError(
                f"{self._where}: {what} failed {max(self.attempts, 1)} times ({err}); check the "
                "wiring (loose jumpers, long leads) and the 3.3 V supply"
            ) from err

    def _measure(self) -> tuple[float, float, float]:
        chip = self._chip
        return float(chip.temperature), float(chip.humidity), float(chip.pressure)

    def read(self) -> list[Reading]:
        """Temperature, humidity and station pressure now; implausible values are dropped."""
        if self._chip is None:
            raise SensorError(f"{self._where}: read() after close()")
        try:
            values = self._retry("read", self._measure)
        except ArithmeticError as err:  # all-zero calibration (dig_P1 == 0)
            raise SensorError(f"{self._where}: calibration data invalid ({err})") from err
        now = time.time()
        readings = []
        for field, value in zip(self.fields, values, strict=True):
            if field.plausible(value):
                readings.append(Reading(field.name, value, now))
            else:
                self.implausible += 1
                log.warning(
                    "%s: dropped %s = %r %s, outside %g..%g",
                    self._where,
                    field.name,
                    value,
                    field.unit,
                    field.low,
                    field.high,
                )
        return readings

    def close(self) -> None:
        """Forget the chip; release the bus if this driver opened it."""
        self._chip = None
        if self._owns_bus and self._i2c is not None:
            self._i2c.deinit()
        self._i2c = None


def _check_oversampling(oversampling: int) -> None:
    if oversampling not in OVERSAMPLING:
        allowed = ", ".join(str(n) for n in OVERSAMPLING)
        raise OptionError(f"BME280 oversampling must be one of {allowed}, not {oversampling!r}")


def hardware_bus(bus: int) -> Any:
    """Open I2C bus ``bus`` through Blinka (bus 1: the header pins 3 and 5)."""
    try:
        if bus == 1:
            import board
            import busio

            return busio.I2C(board.SCL, board.SDA)
        try:
            from adafruit_extended_bus import ExtendedI2C
        except ImportError as err:
            raise SensorError(
                f"I2C bus {bus} needs the adafruit-extended-bus package "
                "(`pip install adafruit-extended-bus`); or wire the BME280 to bus 1 "
                "(header pins 3 SDA and 5 SCL)"
            ) from err
        return ExtendedI2C(bus)
    except SensorError:
        raise
    except (ImportError, NotImplementedError, OSError, ValueError, RuntimeError) as err:
        raise SensorError(
            f"cannot open I2C bus {bus} ({type(err).__name__}: {err}); on a Raspberry Pi "
            "enable I2C with `sudo raspi-config nonint do_i2c 0` and check that "
            f"/dev/i2c-{bus} exists; install Blinka with `pip install sensorkit[pi]`"
        ) from err


def open_bme280(
    backend: str = "simulated",
    *,
    bus: int = 1,
    address: int | None = None,
    oversampling: int = 1,
    field_names: tuple[str, str, str] = ("temp", "rh", "hpa"),
    poll_interval: float = 10.0,
    weather: Weather | None = None,
    i2c: Any = None,
) -> BME280:
    """Open a BME280 on real I2C (``"hardware"``) or on a simulated bus (``"simulated"``).

    ``address=None`` tries 0x76 then 0x77. ``i2c`` supplies an already open bus (a simulated
    one in tests), which stays the caller's; otherwise the backend opens one and the driver
    closes it.
    """
    if backend not in ("hardware", "simulated"):
        raise OptionError(f"BME280 backend must be 'hardware' or 'simulated', not {backend!r}")
    _check_oversampling(oversampling)
    if address is not None and address not in range(0x80):
        raise OptionError(f"BME280 address must be a 7-bit I2C address, not {address!r}")
    owns_bus = i2c is None
    if owns_bus:
        i2c = _open_bus(backend, bus, address, weather)
    try:
        return BME280(
            i2c,
            bus=bus,
            address=address,
            oversampling=oversampling,
            field_names=field_names,
            poll_interval=poll_interval,
            owns_bus=owns_bus,
        )
    except BaseException:
        if owns_bus:
            i2c.deinit()
        raise


def _open_bus(backend: str, bus: int, address: int | None, weather: Weather | None) -> Any:
    """The backend's I2C bus: Blinka's, or a simulated one carrying a simulated BME280."""
    if backend == "hardware":
        return hardware_bus(bus)
    from drivers.sim.bme280 import SimulatedBME280Chip, SimulatedI2CBus

    i2c = SimulatedI2CBus()
    i2c.attach(ADDRESSES[0] if address is None else address, SimulatedBME280Chip(weather))
    return i2c


def _parse_options(s: SectionReader) -> dict[str, object]:
    """The [bme280] keys of its own: bus, address, oversampling, interval."""
    address_text = s.typed("address") or "auto"
    try:
        address = 0 if address_text.lower() == "auto" else int(address_text, 0)
    except ValueError:
        address = -1
    if address not in (0, *ADDRESSES):
        raise s.fail("address", f"{address_text!r} is not allowed; allowed: 0x76, 0x77, auto")
    oversampling = s.number("oversampling", 1, int, 1, 16)
    if oversampling not in OVERSAMPLING:
        allowed = ", ".join(str(n) for n in OVERSAMPLING)
        raise s.fail("oversampling", f"{oversampling} is not allowed; allowed: {allowed}")
    return {
        "bus": s.number("bus", 1, int, 0, 99),
        "address": address or None,
        "oversampling": oversampling,
        "poll_interval": s.number("interval", 10.0, float, 1.0, None, "seconds"),
    }


def _open(setup: Setup) -> BME280:
    """Open the BME280 the settings describe."""
    return open_bme280(
        setup.backend,
        field_names=setup.fields,  # type: ignore[arg-type]
        weather=setup.weather,
        i2c=setup.transport,
        **setup.options,  # type: ignore[arg-type]
    )


def _probe(setup: Setup, patience: float) -> Probe:
    """Read the chip id at 0x76 and 0x77; suggest the first address that holds a BME280."""
    bus_number = int(setup.options.get("bus", 1))  # type: ignore[call-overload]
    address = setup.options.get("address")
    simulated = setup.backend == "simulated" and setup.transport is None
    title = f"{'simulated ' if simulated else ''}I2C bus {bus_number} (for [bme280]):"
    bus = setup.transport
    if bus is None:
        try:
            bus = _open_bus(setup.backend, bus_number, address, setup.weather)  # type: ignore[arg-type]
        except SensorError as err:
            return Probe((title, f"  {err}"))
    try:
        found = probe_bme280(bus)
    finally:
        if setup.transport is None:
            bus.deinit()
    lines = [title]
    suggest: tuple[str, ...] = ()
    for at, chip_id, name in found:
        chip = f"chip id 0x{chip_id:02x}" if chip_id is not None else "no answer"
        lines.append(f"  0x{at:02x}: {name} ({chip})")
        if name == "BME280" and not suggest:
            suggest = (f"backend = {setup.backend}", f"bus = {bus_number}", f"address = 0x{at:02x}")
    return Probe(tuple(lines), suggest)


DRIVER = Driver(
    section="bme280",
    summary="Bosch BME280 temperature, humidity and pressure sensor on I2C",
    fields=FIELDS,
    parse_options=_parse_options,
    open=_open,
    probe=_probe,
)
