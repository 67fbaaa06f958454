"""Sensor faults on the bench: each is reported with its message while the others keep flowing."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, run_sensorkit
from test_agent_run import ALL_SIMULATED, kit_ini, telegrams

from agent.config import load
from agent.console import ConsoleOutput
from agent.runner import Agent
from agent.sensors import open_sensor
from drivers.dylos import counts_to_mass
from drivers.sim.bme280 import SimulatedBME280Chip, SimulatedI2CBus
from drivers.sim.dylos import SimulatedDylos


def run_in_process(settings, tmp_path, seconds, during=None, transports=None):
    agent = Agent(settings, [ConsoleOutput(str(tmp_path / "telegrams.jsonl"))], transports)
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
def test_bme280_fault_and_dylos_unplug_leave_the_dht22_flowing(tmp_path, chip, message):
    sim = SimulatedDylos(speedup=300).start()
    bus = SimulatedI2CBus()
    if chip is not None:
        bus.attach(0x76, SimulatedBME280Chip(chip_id=chip))
    body = ALL_SIMULATED.replace("[bme280]\n", "[bme280]\naddress = 0x76\n")
    settings = load(kit_ini(tmp_path, body))

    def unplug_dylos(_agent):
        time.sleep(2.5)
        sim.unplug()

    try:
        transports = {"dylos": sim, "bme280": bus}
        kit, data = run_in_process(settings, tmp_path, 8, unplug_dylos, transports)
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
    assert 0 < pm25 < pm10 < 200  # the made-up counts are those of ordinary indoor air


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


def test_a_dylos_line_with_one_implausible_count_is_dropped_whole_and_shown_in_status(tmp_path):
    replay = tmp_path / "lines.txt"
    replay.write_bytes(b"515,21\r\n100000,5\r\n")  # the DC1100 cannot show 100000
    body = f"[dylos]\nenabled = yes\nbackend = simulated\nspeedup = 600\nreplay = {replay}\n"
    ini = kit_ini(tmp_path, body)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(ini)],  # stopped by SIGTERM below
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        shown = ""
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not re.search(r"implausible +\d+", shown):
            time.sleep(0.5)
            shown = run_sensorkit("status", "-c", str(ini)).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    dylos = shown.split("sensor dylos:", 1)[1]
    dropped = int(re.search(r"implausible +(\d+) readings dropped", dylos)[1])
    assert dropped >= 2 and dropped % 2 == 0  # both values of each refused line
    assert stderr.count("refused line b'100000,5'") == 1, stderr
    data = [t["data"] for t in telegrams(tmp_path / "telegrams.jsonl") if "data" in t]
    assert data and all(d == {"time": d["time"], "pm_25": 515.0, "pm_10": 21.0} for d in data)


def test_a_calibration_that_overflows_drops_its_field_and_never_gives_a_traceback(tmp_path):
    body = ALL_SIMULATED + "calibration.hpa = 1e308 1e308\n"  # bme280 is the last section
    ini = kit_ini(tmp_path, body)
    done = run_sensorkit("run", "-c", str(ini), "--duration", "4", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "StatisticsError" not in done.stderr
    said = [line for line in done.stderr.splitlines() if "calibration.hpa = 1e+308" in line]
    assert len(said) == 1 and f"{ini} [bme280]" in said[0], done.stderr
    data = [t["data"] for t in telegrams(tmp_path / "telegrams.jsonl") if "data" in t]
    assert len(data) >= 2
    assert not any("hpa" in d for d in data)
    assert sum("temp" in d and "rh" in d for d in data) >= 2  # its other fields still go out
