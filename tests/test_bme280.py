"""The BME280 driver, run through the real adafruit_bme280 code on a simulated I2C bus."""

from __future__ import annotations

import errno
import json
import math
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from realdata import fixture_params

from drivers.bme280 import BME280, open_bme280, probe_bme280
from drivers.reading import SensorError
from drivers.sim.bme280 import (
    SIM_CALIBRATION,
    Calibration,
    SimulatedBME280Chip,
    SimulatedI2CBus,
)
from drivers.sim.weather import Weather

T0 = 1_700_000_000.0  # a fixed instant for the simulated chip's clock
# Register dumps recorded or published by others, with the values they must give.
VECTORS = fixture_params("bme280-bosch-vector.json", "external/bme280-*.json")


def vector_registers(vector: dict) -> dict[int, bytes]:
    return {int(start, 16): bytes.fromhex(block) for start, block in vector["registers"].items()}


def bus_with(chip: SimulatedBME280Chip, address: int = 0x76) -> SimulatedI2CBus:
    bus = SimulatedI2CBus()
    bus.attach(address, chip)
    return bus


def values(sensor: BME280) -> dict[str, float]:
    return {r.field: r.value for r in sensor.read()}


# Real register dumps (../shared/fixtures) ------------------------------------------------

QUANTITIES = (("temp", "temperature_C"), ("hpa", "pressure_hPa"), ("rh", "humidity_pct"))


@pytest.mark.parametrize("path", VECTORS)
def test_real_vector_decodes_to_expected_values_through_adafruit_library(path: Path) -> None:
    vector = json.loads(path.read_text())
    chip_id = int(vector["chip_id_register_0xD0"], 16)
    chip = SimulatedBME280Chip.from_dump(vector_registers(vector), chip_id=chip_id)
    assert chip.registers[0xD0] == chip_id
    got = values(open_bme280(i2c=bus_with(chip), address=0x76))
    want, tol = vector["expected"], vector["expected"]["tolerance"]
    checked = [(f, k) for f, k in QUANTITIES if k in want]
    assert len(checked) >= 2
    for field, key in checked:
        assert got[field] == pytest.approx(want[key], abs=tol[key]), key


@pytest.mark.parametrize("path", VECTORS)
def test_real_vector_decodes_to_expected_values_with_sim_integer_compensation(
    path: Path,
) -> None:
    vector = json.loads(path.read_text())
    regs = bytearray(256)
    for start, block in vector_registers(vector).items():
        regs[start : start + len(block)] = block
    cal = Calibration.from_registers(regs)
    d = regs[0xF7:0xFF]
    adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
    adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
    adc_h = (d[6] << 8) | d[7]
    t_fine = cal.t_fine(adc_t)
    want, tol = vector["expected"], vector["expected"]["tolerance"]
    if "t_fine" in want:
        assert t_fine == want["t_fine"]
    assert ((t_fine * 5 + 128) >> 8) / 100 == pytest.approx(want["temperature_C"], abs=1e-9)
    hpa = cal.pressure(adc_p, t_fine) / 25600
    assert hpa == pytest.approx(want["pressure_hPa"], abs=tol["pressure_hPa"])
    if "humidity_pct" in want:
        rh = cal.humidity(adc_h, t_fine) / 1024
        assert rh == pytest.approx(want["humidity_pct"], abs=tol["humidity_pct"])


@pytest.mark.parametrize("path", VECTORS)
def test_simulated_calibration_is_the_projects_own_not_a_real_dump(path: Path) -> None:
    registers = vector_registers(json.loads(path.read_text()))
    assert registers[0x88] != SIM_CALIBRATION[0x88]
    assert registers[0xE1] != SIM_CALIBRATION[0xE1]


# Weather model round trip -----------------------------------------------------------------


@pytest.mark.parametrize("oversampling", [1, 16])
@pytest.mark.parametrize("hour", [0, 5, 11, 17, 23])
def test_simulated_chip_reads_back_the_weather_model(oversampling: int, hour: int) -> None:
    t = T0 + hour * 3600
    weather = Weather()
    chip = SimulatedBME280Chip(weather, clock=lambda: t)
    sensor = open_bme280(i2c=bus_with(chip), oversampling=oversampling)
    got = values(sensor)
    temp, rh, hpa = weather.at(t)
    assert got["temp"] == pytest.approx(temp, abs=0.05)
    assert got["rh"] == pytest.approx(rh, abs=0.1)
    assert got["hpa"] == pytest.approx(hpa, abs=0.05)


def test_simulated_backend_opens_its_own_bus_and_reads_now() -> None:
    before = time.time()
    sensor = open_bme280("simulated", weather=Weather(temperature=20.0))
    readings = sensor.read()
    assert [r.field for r in readings] == ["temp", "rh", "hpa"]
    assert all(before <= r.time <= time.time() for r in readings)
    assert sensor.address == 0x76
    sensor.close()
    with pytest.raises(SensorError, match="after close"):
        sensor.read()


def test_simulated_backend_puts_chip_at_given_address() -> None:
    assert open_bme280(address=0x77).address == 0x77


# Sensor protocol --------------------------------------------------------------------------


def test_fields_carry_names_units_type_and_datasheet_ranges() -> None:
    sensor = open_bme280(field_names=("t_out", "rh_out", "p_out"))
    assert sensor.name == "bme280"
    assert sensor.poll_interval == 10.0
    got = [(f.name, f.unit, f.type, f.low, f.high) for f in sensor.fields]
    assert got == [
        ("t_out", "C", "BME280", -40.0, 85.0),
        ("rh_out", "%", "BME280", 0.0, 100.0),
        ("p_out", "hPa", "BME280", 300.0, 1100.0),
    ]
    assert [r.field for r in sensor.read()] == ["t_out", "rh_out", "p_out"]


def test_poll_interval_is_a_constructor_argument() -> None:
    sensor = BME280(bus_with(SimulatedBME280Chip()), poll_interval=60.0)
    assert sensor.poll_interval == 60.0


def test_duplicate_field_names_raise_value_error() -> None:
    with pytest.raises(ValueError, match="distinct"):
        open_bme280(field_names=("t", "t", "p"))


# Finding the chip -------------------------------------------------------------------------


def test_no_device_message_names_bus_address_and_how_to_enable_i2c() -> None:
    with pytest.raises(SensorError) as err:
        open_bme280(i2c=SimulatedI2CBus(), bus=1, address=0x76)
    assert str(err.value) == (
        "no device answers at address 0x76 on I2C bus 1; check wiring, enable I2C with "
        "`sudo raspi-config nonint do_i2c 0`, and list devices with `i2cdetect -y 1` or "
        "`sensorkit probe`"
    )


def test_no_device_with_auto_address_lists_both_addresses_tried() -> None:
    with pytest.raises(SensorError, match=r"address 0x76 or 0x77 on I2C bus 3; .*i2cdetect -y 3"):
        open_bme280(i2c=SimulatedI2CBus(), bus=3)


def test_auto_address_finds_chip_at_0x77() -> None:
    sensor = open_bme280(i2c=bus_with(SimulatedBME280Chip(), 0x77))
    assert sensor.address == 0x77
    assert len(sensor.read()) == 3


def test_auto_address_prefers_a_bme280_over_another_chip_at_0x76() -> None:
    bus = bus_with(SimulatedBME280Chip(chip_id=0x58), 0x76)
    bus.attach(0x77, SimulatedBME280Chip())
    assert open_bme280(i2c=bus).address == 0x77


@pytest.mark.parametrize("chip_id", [0x56, 0x57, 0x58])
def test_bmp280_chip_id_is_named_as_bmp280(chip_id: int) -> None:
    with pytest.raises(SensorError) as err:
        open_bme280(i2c=bus_with(SimulatedBME280Chip(chip_id=chip_id)))
    assert str(err.value) == (
        f"I2C bus 1 address 0x76: chip id 0x{chip_id:02x} is a BMP280 (temperature and "
        "pressure only, no humidity); sensorkit needs a BME280"
    )


def test_unknown_chip_id_is_named() -> None:
    with pytest.raises(SensorError, match=r"I2C bus 1 address 0x77: chip id 0x42 is not a BME280"):
        open_bme280(i2c=bus_with(SimulatedBME280Chip(chip_id=0x42), 0x77), address=0x77)


def test_probe_reports_chip_id_and_name_at_both_addresses() -> None:
    bus = bus_with(SimulatedBME280Chip(), 0x76)
    bus.attach(0x77, SimulatedBME280Chip(chip_id=0x58))
    assert probe_bme280(bus) == [(0x76, 0x60, "BME280"), (0x77, 0x58, "BMP280")]
    bus = bus_with(SimulatedBME280Chip(chip_id=0x42), 0x77)
    assert probe_bme280(bus) == [(0x76, None, "nothing"), (0x77, 0x42, "unknown chip 0x42")]


# Transient faults and implausible values --------------------------------------------------


def test_transient_io_error_is_retried_then_read_succeeds() -> None:
    chip = SimulatedBME280Chip()
    sensor = open_bme280(i2c=bus_with(chip))
    sensor.retry_delay = 0
    chip.fail_next = sensor.attempts - 1  # every attempt but the last hits a glitch
    assert len(sensor.read()) == 3
    assert chip.fail_next == 0


def test_persistent_io_error_raises_sensor_error_naming_the_failure() -> None:
    chip = SimulatedBME280Chip()
    sensor = open_bme280(i2c=bus_with(chip))
    sensor.retry_delay = 0
    chip.io_error_rate = 1.0
    with pytest.raises(SensorError, match=r"I2C bus 1 address 0x76: read failed 3 times") as err:
        sensor.read()
    assert "Remote I/O error" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)


def test_glitch_during_setup_is_retried() -> None:
    chip = SimulatedBME280Chip()
    bus = bus_with(chip)
    # Let our chip-id read pass, then fail the library's first accesses.
    original = chip.read

    def read_then_glitch(length: int) -> bytes:
        data = original(length)
        chip.read = original  # type: ignore[method-assign]
        chip.fail_next = 2
        return data

    chip.read = read_then_glitch  # type: ignore[method-assign]
    assert len(open_bme280(i2c=bus).read()) == 3


def test_implausible_values_are_dropped_and_counted() -> None:
    hot_vacuum = Weather(temperature=100.0, temperature_swing=0.0, pressure=250.0, noise=0.0)
    sensor = open_bme280(weather=hot_vacuum)
    readings = sensor.read()
    assert [r.field for r in readings] == ["rh"]
    assert sensor.implausible == 2
    sensor.read()
    assert sensor.implausible == 4


def test_blank_calibration_is_a_sensor_error_not_a_crash() -> None:
    sensor = open_bme280(i2c=bus_with(SimulatedBME280Chip.from_dump({0x88: bytes(24)})))
    with pytest.raises(SensorError, match="calibration data invalid"):
        sensor.read()


# Oversampling -----------------------------------------------------------------------------


@pytest.mark.parametrize(("oversampling", "code"), [(1, 1), (2, 2), (4, 3), (8, 4), (16, 5)])
def test_oversampling_is_written_to_ctrl_meas_and_ctrl_hum(oversampling: int, code: int) -> None:
    chip = SimulatedBME280Chip()
    sensor = open_bme280(i2c=bus_with(chip), oversampling=oversampling)
    sensor.read()
    ctrl_meas = chip.registers[0xF4]
    assert ctrl_meas >> 5 == code  # osrs_t
    assert (ctrl_meas >> 2) & 0x07 == code  # osrs_p
    assert chip.registers[0xF2] & 0x07 == code  # osrs_h
    assert ctrl_meas & 0x03 == 0  # back to sleep after the forced conversion
    assert chip.conversions == 4  # one at setup, then one per quantity (library behaviour)


@pytest.mark.parametrize("oversampling", [0, 3, 32, -1])
def test_invalid_oversampling_raises_value_error_naming_allowed_values(oversampling: int) -> None:
    with pytest.raises(ValueError, match=r"one of 1, 2, 4, 8, 16"):
        open_bme280(oversampling=oversampling)


def test_unknown_backend_raises_value_error() -> None:
    with pytest.raises(ValueError, match="'hardware' or 'simulated'"):
        open_bme280("spi")


# Hardware backend (with Blinka stand-ins) -------------------------------------------------


def test_hardware_bus_1_uses_busio_on_board_pins_and_releases_it(monkeypatch) -> None:
    bus = bus_with(SimulatedBME280Chip())
    opened = []

    def i2c(scl: str, sda: str) -> SimulatedI2CBus:
        opened.append((scl, sda))
        return bus

    monkeypatch.setitem(sys.modules, "board", types.SimpleNamespace(SCL="SCL", SDA="SDA"))
    monkeypatch.setitem(sys.modules, "busio", types.SimpleNamespace(I2C=i2c))
    sensor = open_bme280("hardware")
    assert opened == [("SCL", "SDA")]
    assert len(sensor.read()) == 3
    sensor.close()
    with pytest.raises(RuntimeError, match="deinit"):
        bus.scan()


def test_hardware_other_bus_uses_extended_bus(monkeypatch) -> None:
    buses = {4: bus_with(SimulatedBME280Chip(), 0x77)}
    module = types.SimpleNamespace(ExtendedI2C=buses.__getitem__)
    monkeypatch.setitem(sys.modules, "adafruit_extended_bus", module)
    assert open_bme280("hardware", bus=4).address == 0x77


def test_hardware_other_bus_without_extended_bus_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "adafruit_extended_bus", None)
    with pytest.raises(SensorError, match=r"I2C bus 3 needs the adafruit-extended-bus package"):
        open_bme280("hardware", bus=3)


def test_hardware_bus_that_cannot_open_says_how_to_enable_i2c(monkeypatch) -> None:
    def i2c(scl: str, sda: str) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/dev/i2c-1")

    monkeypatch.setitem(sys.modules, "board", types.SimpleNamespace(SCL="SCL", SDA="SDA"))
    monkeypatch.setitem(sys.modules, "busio", types.SimpleNamespace(I2C=i2c))
    with pytest.raises(SensorError, match=r"cannot open I2C bus 1 .*raspi-config nonint do_i2c 0"):
        open_bme280("hardware")


def test_import_does_not_load_hardware_modules() -> None:
    code = (
        "import sys, drivers.bme280\n"
        "bad = {'board', 'busio', 'digitalio', 'adafruit_bme280', 'adafruit_extended_bus'}\n"
        "print(sorted(bad & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


# The simulated bus and chip ---------------------------------------------------------------


def test_bus_raises_remote_io_error_for_an_absent_address() -> None:
    bus = SimulatedI2CBus()
    assert bus.try_lock()
    with pytest.raises(OSError) as err:
        bus.writeto(0x76, b"")
    assert err.value.errno == errno.EREMOTEIO
    with pytest.raises(OSError):
        bus.readfrom_into(0x76, bytearray(1))
    bus.unlock()


def test_bus_requires_the_lock_like_busio() -> None:
    bus = bus_with(SimulatedBME280Chip())
    with pytest.raises(RuntimeError, match="lock"):
        bus.scan()
    assert bus.try_lock() and not bus.try_lock()
    assert bus.scan() == [0x76]


def test_chip_burst_read_auto_increments_over_the_calibration_block() -> None:
    bus = bus_with(SimulatedBME280Chip())
    buf = bytearray(26)
    bus.try_lock()
    bus.writeto_then_readfrom(0x76, b"\x88", buf)
    assert bytes(buf[:24]) == SIM_CALIBRATION[0x88]
    assert buf[25] == SIM_CALIBRATION[0xA1][0]


def test_forced_conversion_shows_measuring_then_sleeps_with_fresh_data() -> None:
    chip = SimulatedBME280Chip(clock=lambda: T0)
    bus = bus_with(chip)
    bus.try_lock()
    status, data = bytearray(1), bytearray(8)
    bus.writeto(0x76, bytes([0xF2, 0x01, 0xF4, 0x25]))  # x1 everywhere, forced
    bus.writeto_then_readfrom(0x76, b"\xf7", data)
    assert bytes(data) == bytes.fromhex("8000008000008000")  # not done yet: reset values
    bus.writeto_then_readfrom(0x76, b"\xf3", status)
    assert status[0] & 0x08  # measuring (conversion_reads=1: done after this read)
    bus.writeto_then_readfrom(0x76, b"\xf3", status)
    assert status[0] == 0
    assert chip.registers[0xF4] == 0x24
    bus.writeto_then_readfrom(0x76, b"\xf7", data)
    assert bytes(data) != bytes.fromhex("8000008000008000")


def test_soft_reset_restores_control_registers_and_keeps_calibration() -> None:
    chip = SimulatedBME280Chip()
    chip.write(bytes([0xF2, 0x05, 0xF4, 0xB4, 0xF5, 0xA0]))
    chip.write(bytes([0xE0, 0xB6]))
    assert bytes(chip.registers[0xF2:0xF6]) == bytes(4)
    assert bytes(chip.registers[0xF7:0xFF]) == bytes.fromhex("8000008000008000")
    assert bytes(chip.registers[0x88:0xA0]) == SIM_CALIBRATION[0x88]


def test_frozen_dump_keeps_its_data_registers_through_reset_and_conversions() -> None:
    dump = {**SIM_CALIBRATION, 0xF7: bytes.fromhex("51 20 00 80 10 00 70 00")}  # made up
    chip = SimulatedBME280Chip.from_dump(dump, conversion_reads=0)
    chip.write(bytes([0xE0, 0xB6, 0xF4, 0x25]))
    assert bytes(chip.registers[0xF7:0xFF]) == dump[0xF7]


def test_io_error_rate_injects_remote_io_errors_at_about_that_rate() -> None:
    chip = SimulatedBME280Chip(io_error_rate=0.1, rng=7)
    failures = 0
    for _ in range(1000):
        try:
            chip.write(b"\xd0")
        except OSError as err:
            assert err.errno == errno.EREMOTEIO
            failures += 1
    assert 60 < failures < 140


def test_compensation_inversion_is_exact_at_full_resolution() -> None:
    chip = SimulatedBME280Chip(Weather(noise=0.0), clock=lambda: T0, conversion_reads=0)
    chip.write(bytes([0xF2, 0x05, 0xF4, 0xB5]))  # x16: 20-bit temperature and pressure
    d = chip.registers[0xF7:0xFF]
    cal = chip.calibration
    t_fine = cal.t_fine((d[3] << 12) | (d[4] << 4) | (d[5] >> 4))
    temp, rh, hpa = Weather(noise=0.0).at(T0)
    assert t_fine / 5120 == pytest.approx(temp, abs=0.001)
    assert cal.pressure((d[0] << 12) | (d[1] << 4) | (d[2] >> 4), t_fine) / 25600 == (
        pytest.approx(hpa, abs=0.001)
    )
    assert cal.humidity((d[6] << 8) | d[7], t_fine) / 1024 == pytest.approx(rh, abs=0.01)
    assert not math.isnan(t_fine)
