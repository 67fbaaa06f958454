"""DHT22 driver and simulator: adafruit_dht's own decoder runs on the simulated pulse trains."""

from __future__ import annotations

import array
import contextlib
import io
import json
import random
import re
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from realdata import fixture

from drivers.dht22 import DHT22, open_dht22, probe_dht22
from drivers.reading import SensorError
from drivers.sim.dht22 import SimulatedDHT22, adafruit_dht, encode_frame, encode_pulses
from drivers.sim.weather import Weather

with contextlib.redirect_stdout(io.StringIO()):  # Blinka's note about an unsupported board
    from adafruit_dht import DHT22 as LibraryDHT22

ROOT = Path(__file__).resolve().parents[1]
NOON = 1_700_000_000.0  # a fixed UNIX time so the weather is repeatable
WIRING = (
    "DHT22 on GPIO4 (BCM) does not answer; check wiring, the pull-up resistor and `[dht22] pin`"
)


class Replay(adafruit_dht.DHT22):
    """The library's DHT22 fed one given pulse train, to decode it with the library's code."""

    def __init__(self, pulses: array.array) -> None:
        super().__init__(4, use_pulseio=False)
        self.pulses = pulses

    def _get_pulses_bitbang(self) -> array.array:
        return self.pulses


def decode(pulses: array.array) -> tuple[float, float]:
    """(temperature, humidity) as adafruit_dht decodes ``pulses``."""
    dev = Replay(pulses)
    dev.measure()
    return dev._temperature, dev._humidity


class FakeTime:
    """A monotonic clock that only moves when the driver sleeps; records the sleeps."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def fixed(t: float, h: float) -> Callable[[float], tuple[float, float]]:
    return lambda _now: (t, h)


def sim_driver(fake: FakeTime, **sim: object) -> DHT22:
    """A driver on a simulated sensor, spaced by ``fake`` time instead of real sleeps."""
    device = SimulatedDHT22(4, now=lambda: NOON, seed=7, **sim)  # type: ignore[arg-type]
    return DHT22(device, sleep=fake.sleep, clock=fake.clock, now=lambda: NOON)


# --- simulator: pulse trains ---------------------------------------------------------------


def test_encode_pulses_is_an_81_pulse_train_of_lows_and_bit_highs() -> None:
    pulses = encode_pulses(21.3, 55.0)
    assert len(pulses) == 81 and pulses.typecode == "H"
    assert all(45 <= p <= 55 for p in pulses[0::2])  # the ~50 us lows
    assert all(p < 30 or p > 65 for p in pulses[1::2])  # 0 ~27 us, 1 ~70 us


def test_encode_frame_puts_the_sign_in_the_top_bit_and_sums_the_checksum() -> None:
    frame = encode_frame(-10.1, 65.2)
    assert frame[:4] == bytes([0x02, 0x8C, 0x80, 0x65])
    assert frame[4] == sum(frame[:4]) & 0xFF


@given(
    temperature=st.floats(-3276.7, 3276.7),
    humidity=st.floats(0.0, 100.0),
    seed=st.none() | st.integers(0, 2**32),
)
@example(temperature=-40.0, humidity=0.0, seed=None)
@example(temperature=80.0, humidity=100.0, seed=None)
@example(temperature=-0.04, humidity=50.0, seed=None)
@example(temperature=-0.05, humidity=0.05, seed=1)
def test_library_decodes_encoded_pulses_to_the_values_rounded_to_a_tenth(
    temperature: float, humidity: float, seed: int | None
) -> None:
    rng = None if seed is None else random.Random(seed)
    t, h = decode(encode_pulses(temperature, humidity, rng=rng))
    assert t == round(temperature * 10) / 10 and abs(t - temperature) <= 0.05 + 1e-9
    assert h == round(humidity * 10) / 10 and abs(h - humidity) <= 0.05 + 1e-9


@pytest.mark.parametrize(("temperature", "humidity"), [(20.0, -1.0), (4000.0, 50.0), (0, 7000)])
def test_encode_refuses_values_the_frame_cannot_hold(temperature: float, humidity: float) -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        encode_pulses(temperature, humidity)


def test_library_refuses_humidity_above_100_percent_even_with_a_good_checksum() -> None:
    with pytest.raises(RuntimeError, match="unplausible"):
        decode(encode_pulses(20.0, 150.0))


@pytest.mark.parametrize(
    ("fault", "message"),
    [("checksum", "Checksum"), ("short", "full buffer"), ("absent", "not found")],
)
def test_simulated_faults_raise_the_libraries_own_errors(fault: str, message: str) -> None:
    device = SimulatedDHT22(now=lambda: NOON, seed=3, script=[fault])
    with pytest.raises(RuntimeError, match=message):
        device.measure()


def test_simulator_is_repeatable_with_a_seed() -> None:
    def trains(seed: int) -> list[array.array]:
        device = SimulatedDHT22(now=lambda: NOON, seed=seed, checksum_error_rate=0.5)
        return [device.pulse_train() for _ in range(5)]

    assert trains(11) == trains(11)
    assert trains(11) != trains(12)


def test_simulated_fault_sequence_does_not_depend_on_the_values() -> None:
    def faults(source: Callable[[float], tuple[float, float]]) -> list[int]:
        device = SimulatedDHT22(source=source, seed=4, checksum_error_rate=0.5)
        return [len(device.pulse_train()) and device.injected["checksum"] for _ in range(20)]

    assert faults(fixed(-12.3, 5.0)) == faults(fixed(33.3, 99.9))


def test_simulator_reports_the_weather_now() -> None:
    weather = Weather(seed=5)
    device = SimulatedDHT22(weather=weather, now=lambda: NOON, seed=1)
    device.measure()
    t, h, _ = weather.at(NOON)
    assert (device._temperature, device._humidity) == (round(t * 10) / 10, round(h * 10) / 10)


# --- real frames (../shared/fixtures/external/dht22-frames.json) ----------------------------


def frame_window(frame: bytes, timing: dict) -> array.array:
    """The 81-pulse window adafruit_dht keeps for ``frame``, built from the datasheet timing
    here (not by drivers.sim.dht22): per bit a low, then a short (0) or long (1) high; a low."""
    pulses = array.array("H")
    for byte in frame:
        for bit in range(7, -1, -1):
            pulses.append(timing["low"])
            pulses.append(timing["one_high"] if byte >> bit & 1 else timing["zero_high"])
    pulses.append(timing["low"])
    return pulses


class RealFrame(LibraryDHT22):
    """adafruit_dht's own DHT22 whose pulse capture hands back one given window."""

    def __init__(self, pulses: array.array) -> None:
        super().__init__(4, use_pulseio=False)
        self.pulses = pulses
        self.captures = 0

    def _get_pulses_bitbang(self) -> array.array:
        self.captures += 1
        return self.pulses


def real_frames() -> tuple[list[dict], dict]:
    data = json.loads(fixture("external/dht22-frames.json").read_text())
    return data["frames"], data["timing_us"]


def test_real_frames_decode_through_the_driver_to_their_values() -> None:
    frames, timing = real_frames()
    good = [f for f in frames if f["valid"]]
    assert len(good) == 3
    for frame in good:
        window = frame_window(bytes.fromhex(frame["bytes"]), timing)
        assert len(window) == 81
        device = RealFrame(window)
        sensor = open_dht22("simulated", device=device)  # the driver on the given device
        readings = {r.field: r.value for r in sensor.read()}
        assert readings == {"dtemp": frame["temperature_C"], "drh": frame["humidity_pct"]}
        assert device.captures == 1


def test_real_frame_with_a_bad_checksum_is_refused_never_reported() -> None:
    frames, timing = real_frames()
    [bad] = [f for f in frames if not f["valid"]]
    device = RealFrame(frame_window(bytes.fromhex(bad["bytes"]), timing))
    sensor = open_dht22("simulated", device=device, retries=2)
    with pytest.raises(SensorError, match=r"checksum did not validate 3x"):
        sensor.read()
    assert device.captures == 3


# --- driver: retries and errors -------------------------------------------------------------


def test_checksum_errors_are_retried_and_the_good_read_comes_through() -> None:
    fake = FakeTime()
    sensor = sim_driver(fake, source=fixed(21.3, 55.0), script=["checksum", "checksum"])
    readings = sensor.read()
    assert [(r.field, r.value, r.time) for r in readings] == [
        ("dtemp", 21.3, NOON),
        ("drh", 55.0, NOON),
    ]
    assert sensor.device.captures == 3
    assert fake.sleeps == [2.0, 2.0]  # the sensor rests 2 s between attempts


def test_short_trains_are_retried() -> None:
    fake = FakeTime()
    sensor = sim_driver(fake, source=fixed(-5.5, 80.0), script=["short", "short", "short"])
    assert [r.value for r in sensor.read()] == [-5.5, 80.0]
    assert sensor.device.captures == 4


def test_persistent_checksum_errors_raise_sensor_error_saying_checksum() -> None:
    sensor = open_dht22("simulated", checksum_error_rate=1.0, seed=1, retries=2)
    with pytest.raises(SensorError, match=r"GPIO4 \(BCM\).*checksum did not validate 3x"):
        sensor.read()
    assert sensor.device.captures == 3


def test_persistent_short_trains_raise_sensor_error_saying_incomplete() -> None:
    sensor = open_dht22("simulated", short_train_rate=1.0, seed=1)
    with pytest.raises(SensorError, match="incomplete pulse train 4x"):
        sensor.read()


def test_absent_sensor_raises_the_wiring_message() -> None:
    sensor = open_dht22("simulated", absent=True, seed=1)
    with pytest.raises(SensorError) as err:
        sensor.read()
    assert str(err.value) == WIRING
    assert sensor.device.captures == 4


def test_absent_sensor_message_names_the_configured_pin() -> None:
    with pytest.raises(SensorError, match=r"GPIO17 \(BCM\) does not answer"):
        open_dht22("simulated", pin=17, absent=True).read()


def test_random_faults_are_mostly_absorbed_by_retries() -> None:
    sensor = open_dht22("simulated", checksum_error_rate=0.3, short_train_rate=0.1, seed=2)
    good = 0
    for _ in range(50):
        try:
            good += len(sensor.read()) == 2
        except SensorError:  # 4 bad trains in a row: about 2 % of reads at these rates
            pass
    assert good >= 45
    injected = sensor.device.injected
    assert injected["checksum"] > 10 and injected["short"] > 3


# --- driver: plausibility and freshness -----------------------------------------------------


def test_temperature_outside_the_physical_range_is_dropped_and_counted() -> None:
    hot = Weather(temperature=95.0, temperature_swing=0.0)
    sensor = open_dht22("simulated", weather=hot, seed=1)
    readings = sensor.read()
    assert [r.field for r in readings] == ["drh"]
    assert sensor.implausible == 1


def test_humidity_above_100_is_refused_by_the_library_counted_and_retried() -> None:
    sensor = sim_driver(FakeTime(), source=fixed(20.0, 150.0))
    with pytest.raises(SensorError, match="implausible data"):
        sensor.read()
    assert sensor.implausible == 4


def test_each_read_captures_a_fresh_train_despite_the_librarys_2_s_cache() -> None:
    values = iter([(20.0, 50.0), (21.0, 51.0)])
    device = SimulatedDHT22(source=lambda _now: next(values))
    sensor = DHT22(device, sleep=lambda _s: None)  # real clock: both reads within 2 s
    assert [r.value for r in sensor.read()] == [20.0, 50.0]
    assert [r.value for r in sensor.read()] == [21.0, 51.0]
    assert device.captures == 2


def test_reads_are_spaced_at_least_2_s_apart() -> None:
    fake = FakeTime()
    sensor = sim_driver(fake)
    sensor.read()
    fake.t += 0.5
    sensor.read()
    assert fake.sleeps == [1.5]
    fake.t += sensor.poll_interval
    sensor.read()
    assert fake.sleeps == [1.5]


# --- driver: settings, protocol, close ------------------------------------------------------


def test_driver_satisfies_the_sensor_protocol() -> None:
    sensor = open_dht22("simulated", field_names=("t_in", "rh_in"), poll_interval=10)
    assert sensor.name == "dht22" and sensor.poll_interval == 10
    (t, h) = sensor.fields
    assert (t.name, t.unit, t.type, t.low, t.high) == ("t_in", "C", "DHT22", -40.0, 80.0)
    assert (h.name, h.unit, h.type, h.low, h.high) == ("rh_in", "%", "DHT22", 0.0, 100.0)
    assert {r.field for r in sensor.read()} == {"t_in", "rh_in"}


@pytest.mark.parametrize("interval", [0.0, 1.0, 1.99, float("nan")])
def test_poll_interval_below_2_s_is_rejected(interval: float) -> None:
    with pytest.raises(ValueError, match="2 s minimum"):
        open_dht22("simulated", poll_interval=interval)


def test_poll_interval_of_2_s_is_accepted() -> None:
    assert open_dht22("simulated", poll_interval=2.0).poll_interval == 2.0


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="'hardware' or 'simulated'"):
        open_dht22("gpio")


def test_close_calls_the_librarys_exit_once() -> None:
    sensor = open_dht22("simulated")
    sensor.close()
    assert sensor.device.closed
    device = mock.Mock()
    sensor = DHT22(device)
    sensor.close()
    sensor.close()
    device.exit.assert_called_once_with()


# --- hardware backend without hardware ------------------------------------------------------


def test_hardware_backend_opens_adafruit_dht_on_the_board_pin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pin = object()
    monkeypatch.setitem(sys.modules, "board", types.SimpleNamespace(board_id="FAKE", D17=pin))
    sensor = open_dht22("hardware", pin=17)
    assert type(sensor.device) is adafruit_dht.DHT22 and sensor.device._pin is pin
    sensor.close()


def test_hardware_backend_names_a_pin_the_board_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "board", types.SimpleNamespace(board_id="FAKE"))
    with pytest.raises(SensorError, match=r"board FAKE has no GPIO4 .*`\[dht22\] pin`"):
        open_dht22("hardware", pin=4)


def test_importing_the_driver_loads_no_hardware_library() -> None:
    code = (
        "import sys, drivers.dht22\n"
        "print(sorted({'board', 'digitalio', 'adafruit_dht'} & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# --- probe ----------------------------------------------------------------------------------


def test_probe_describes_a_good_read_in_one_line() -> None:
    line = probe_dht22("simulated", 4, seed=1)
    assert re.fullmatch(r"DHT22 on GPIO4: -?\d+\.\d C, \d+\.\d %", line), line


def test_probe_says_why_an_absent_sensor_cannot_be_read() -> None:
    assert probe_dht22("simulated", 4, absent=True) == WIRING


def test_probe_reports_bad_settings_instead_of_raising() -> None:
    assert "2 s minimum" in probe_dht22("simulated", 4, poll_interval=1)
