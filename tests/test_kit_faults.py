"""Sensor faults on the bench: each is reported with its message while the others keep flowing."""

from __future__ import annotations

import json
import threading
import time

import pytest
from test_agent_run import ALL_SIMULATED, kit_ini

import agent.runner
from agent.config import load
from agent.console import ConsoleOutput
from agent.runner import Agent
from agent.sensors import open_sensor
from drivers.bme280 import open_bme280
from drivers.dylos import Dylos, counts_to_mass
from drivers.sim.bme280 import SimulatedBME280Chip, SimulatedI2CBus
from drivers.sim.dylos import SimulatedDylos


def run_in_process(settings, tmp_path, seconds, during=None):
    agent = Agent(settings, [ConsoleOutput(str(tmp_path / "telegrams.jsonl"))])
    threading.Timer(seconds, agent.stop.set).start()
    if during:
        threading.Thread(target=during, args=(agent,), daemon=True).start()
    assert agent.run() == 0
    data = [
        json.loads(line)["data"]
        for line in (tmp_path / "telegrams.jsonl").read_text().splitlines()
        if '"data"' in line
    ]
    return agent, data


@pytest.mark.parametrize(
    ("chip", "message"),
    [
        (None, "no device answers at address 0x76 on I2C bus 1"),
        (0x58, "BMP280"),
        (0x42, "0x42"),
    ],
)
def test_bme280_fault_and_dylos_unplug_leave_the_dht22_flowing(
    tmp_path, monkeypatch, chip, message
):
    sim = SimulatedDylos(speedup=300).start()

    def fake_open(sensor_settings, weather):
        if sensor_settings.name == "bme280":
            bus = SimulatedI2CBus()
            if chip is not None:
                bus.attach(0x76, SimulatedBME280Chip(chip_id=chip))
            return open_bme280("simulated", address=0x76, i2c=bus)
        if sensor_settings.name == "dylos":
            return Dylos(sim.url, read_timeout=0.3, retry_base=0.2, retry_cap=0.5)
        return open_sensor(sensor_settings, weather)

    monkeypatch.setattr(agent.runner, "open_sensor", fake_open)
    settings = load(kit_ini(tmp_path, ALL_SIMULATED))

    def unplug_dylos(_agent):
        time.sleep(2.5)
        sim.unplug()

    try:
        kit, data = run_in_process(settings, tmp_path, 8, during=unplug_dylos)
        status = kit.status()["sensors"]
    finally:
        sim.stop()
    assert status["bme280"]["state"] == "failing"
    assert message in status["bme280"]["last_error"]
    assert status["dylos"]["state"] == "disconnected"
    assert status["dht22"]["state"] == "ok"
    assert sum("dtemp" in d for d in data) >= 3
    assert any("dtemp" in d for d in data[-2:]), "the DHT22 must keep flowing to the end"
    assert not any("hpa" in d for d in data)
    assert any("pm_25" in d for d in data[:4]) and not any("pm_25" in d for d in data[-2:])


def test_dylos_count_to_mass_is_off_by_default_and_documented_when_on(tmp_path):
    body = "[dylos]\nenabled = yes\nbackend = simulated\nspeedup = 300\n"
    counts = load(kit_ini(tmp_path, body))
    assert counts.sensors[0].options["mass"] is False
    mass_settings = load(kit_ini(tmp_path, body + "mass = yes\n"))
    sensor = open_sensor(mass_settings.sensors[0], mass_settings.weather)
    try:
        assert [f.unit for f in sensor.fields] == ["ug/m3", "ug/m3"]
        readings = []
        deadline = time.monotonic() + 10
        while not readings and time.monotonic() < deadline:
            readings = sensor.read()
    finally:
        sensor.close()
    pm25, pm10 = (r.value for r in readings)
    assert 0 < pm25 < pm10 < 200  # the capture's counts are ordinary indoor air


def test_counts_to_mass_follows_the_spherical_particle_formula():
    pm25, pm10 = counts_to_mass(318, 62)
    # (318 - 62) counts per 0.01 ft3 * 3531.47 /m3 * 1.65e12 ug/m3 * 4/3 pi (0.44e-6 m)^3
    assert pm25 == pytest.approx(
        256 * 3531.47 * 1.65e12 * 4 / 3 * 3.14159265 * 0.44e-6**3, rel=1e-4
    )
    assert pm10 - pm25 == pytest.approx(
        62 * 3531.47 * 1.65e12 * 4 / 3 * 3.14159265 * 2.6e-6**3, rel=1e-4
    )
    assert counts_to_mass(10, 20)[0] == 0.0  # more large than small: no negative mass
