"""A fourth sensor added the way the built-in three are: its module, its simulator, its section.

This module plays the new driver module: it exports ``DRIVER`` and is listed in
``drivers.DRIVER_MODULES``, as drivers/dylos.py is. Nothing in agent/ is changed or patched:
config, sensor opening, probe and ``sensorkit run`` take it from the description alone.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, write_config

import drivers
from agent.cli import main
from agent.config import ConfigError, load
from agent.probe import probe
from drivers.driver import Driver, Probe, SectionReader, Setup
from drivers.reading import Field, OptionError, Reading, SensorError
from drivers.sim.weather import Weather

# --- the simulator: a cup anemometer's reed switch, as a pulse counter ----------------------


class SimulatedAnemometer:
    """Counts the reed-switch pulses of a cup anemometer in a made-up wind of 2..4 m/s."""

    def __init__(self, weather: Weather, clock: Callable[[], float] = time.time) -> None:
        self.weather = weather
        self.clock = clock

    def wind(self, t: float) -> float:
        """Wind speed (m/s) at ``t``: 3 m/s with a one-minute gust cycle."""
        return 3.0 + math.sin(t / 60.0 + self.weather.seed)

    def pulses(self, metres_per_pulse: float) -> int:
        """Pulses since the epoch: the run of wind (the integral of its speed) over a pulse."""
        t = self.clock()
        run = 3.0 * t - 60.0 * math.cos(t / 60.0 + self.weather.seed)
        return int(run / metres_per_pulse)


# --- the driver ----------------------------------------------------------------------------

FIELDS = (Field("wind", "m/s", "Anemometer", 0.0, 70.0),)


class Anemometer:
    """Wind speed from the pulses counted between two reads."""

    name = "anemometer"

    def __init__(
        self,
        counter: SimulatedAnemometer,
        *,
        field_names: tuple[str, ...],
        poll_interval: float,
        metres_per_pulse: float,
    ) -> None:
        if len(field_names) != 1:
            raise OptionError(f"anemometer: one field name, not {field_names!r}")
        self.fields = (Field(field_names[0], "m/s", "Anemometer", 0.0, 70.0),)
        self.poll_interval = poll_interval
        self.metres_per_pulse = metres_per_pulse
        self.counter = counter
        self._last = (time.monotonic(), counter.pulses(metres_per_pulse))

    def read(self) -> list[Reading]:
        """The mean wind speed since the last read (none after too short a time to count)."""
        now, count = time.monotonic(), self.counter.pulses(self.metres_per_pulse)
        then, before = self._last
        if now - then < self.poll_interval / 2:
            return []
        self._last = (now, count)
        speed = (count - before) * self.metres_per_pulse / (now - then)
        return [Reading(self.fields[0].name, speed, time.time())]

    def close(self) -> None:
        """Nothing to release: the counter belongs to whoever made it."""


def _parse_options(s: SectionReader) -> dict[str, object]:
    return {
        "poll_interval": s.number("interval", 1.0, float, 0.2, None, "seconds"),
        "metres_per_pulse": s.number("metres_per_pulse", 0.667, float, 0.01, 10, "m"),
    }


def _counter(setup: Setup) -> SimulatedAnemometer:
    if setup.transport is not None:
        return setup.transport  # type: ignore[return-value]
    if setup.backend == "hardware":
        raise SensorError(
            f"{setup.config_file} [anemometer] backend: this sensor exists only in a test; "
            "use backend = simulated"
        )
    return SimulatedAnemometer(setup.weather)


def _open(setup: Setup) -> Anemometer:
    return Anemometer(_counter(setup), field_names=setup.fields, **setup.options)  # type: ignore[arg-type]


def _probe(setup: Setup, patience: float) -> Probe:
    try:
        sensor = _open(setup)
    except SensorError as err:
        return Probe(("anemometer:", f"  {err}"))
    time.sleep(sensor.poll_interval)
    [reading] = sensor.read()
    return Probe(
        ("anemometer (for [anemometer]):", f"  {reading.value:.1f} m/s"),
        (f"backend = {setup.backend}",),
    )


DRIVER = Driver(
    section="anemometer",
    summary="cup anemometer on a GPIO pin (reed switch)",
    fields=FIELDS,
    parse_options=_parse_options,
    open=_open,
    probe=_probe,
)

# --- the tests -----------------------------------------------------------------------------


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module listed as a driver module, exactly as the built-in ones are."""
    monkeypatch.setattr(drivers, "DRIVER_MODULES", (*drivers.DRIVER_MODULES, __name__))


@pytest.fixture
def signals() -> Iterator[None]:
    """`sensorkit run` installs SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def kit(tmp_path: Path, body: str) -> Path:
    return write_config(
        tmp_path / "garden.ini",
        f"[kit]\nproject = Bench\nserial = k4\ninterval = 1\nstate_dir = {tmp_path / 'state'}\n"
        f"{body}[influx]\nenabled = no\n[console]\nenabled = yes\n"
        f"file = {tmp_path / 'telegrams.jsonl'}\n",
    )


WIND = "[anemometer]\nenabled = yes\nbackend = simulated\ninterval = 0.5\n"
DYLOS = "[dylos]\nenabled = yes\nbackend = simulated\nspeedup = 600\n"


def test_a_fourth_sensor_runs_through_sensorkit_run_into_telegrams(tmp_path, registered, signals):
    ini = kit(tmp_path, DYLOS + WIND + "fields = gust\n")
    assert main(["run", "-c", str(ini), "--duration", "3.5"]) == 0
    printed = [json.loads(line) for line in (tmp_path / "telegrams.jsonl").read_text().splitlines()]
    ident = printed[0]["ident"]
    assert ident["fields"] == ["time", "pm_25", "pm_10", "gust"]
    assert ident["units"][-1] == "m/s" and ident["types"][-1] == "Anemometer"
    data = [t["data"] for t in printed if "data" in t]
    assert sum("gust" in d for d in data) >= 2 and sum("pm_25" in d for d in data) >= 2
    gusts = [d["gust"] for d in data if "gust" in d]  # a pulse more or less: +-1.3 m/s per read
    assert all(0 <= g <= 8 for g in gusts) and 1.5 <= sum(gusts) / len(gusts) <= 4.5


def test_a_fourth_sensor_is_probed_and_suggested_like_the_others(tmp_path, registered):
    report = probe(load(kit(tmp_path, WIND)), patience=1.0)
    assert "anemometer (for [anemometer]):" in report
    assert "[anemometer]\nenabled = yes\nbackend = simulated" in report.split("put this in", 1)[1]


def test_a_fourth_sensors_bad_option_names_file_section_and_key(tmp_path, registered):
    ini = kit(tmp_path, WIND + "metres_per_pulse = -1\n")
    with pytest.raises(ConfigError) as err:
        load(ini)
    assert str(err.value) == (
        f"{ini} [anemometer] metres_per_pulse: '-1' is out of range; allowed: numbers from "
        "0.01 to 10 m"
    )
    with pytest.raises(ConfigError, match=r"\[anemometer\] speed: unknown key; allowed: .*"
                       r"metres_per_pulse, .*calibration.<field>"):  # fmt: skip
        load(kit(tmp_path, WIND + "speed = 3\n"))


def test_a_fourth_sensor_calibration_and_shared_names_work_as_for_the_others(tmp_path, registered):
    settings = load(kit(tmp_path, WIND + "calibration.wind = 0 1.1\n"))
    [wind] = [s for s in settings.sensors if s.name == "anemometer"]
    assert wind.calibration == {"wind": (0.0, 1.1)} and wind.options["metres_per_pulse"] == 0.667
    clash = "[dht22]\nenabled = yes\nfields = wind drh\n" + WIND
    with pytest.raises(ConfigError, match=r"\[anemometer\] fields: 'wind' is also a field"):
        load(kit(tmp_path, clash))


def test_without_its_registration_the_section_is_unknown(tmp_path):
    with pytest.raises(ConfigError, match=r"\[anemometer\]: unknown section"):
        load(kit(tmp_path, WIND))


def test_agent_code_names_no_sensor():
    for module in ("config", "sensors", "probe", "runner", "aggregator"):
        text = (ROOT / "agent" / f"{module}.py").read_text().lower()
        assert not {"dylos", "dht22", "bme280"} & set(text.replace("_", " ").split()), module
