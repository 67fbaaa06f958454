"""`sensorkit probe`: what it finds on the bench and what it says to put in agent.ini."""

from __future__ import annotations

import logging
import re
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import ROOT, run_sensorkit, write_config

from agent.config import load
from agent.probe import probe
from agent.runner import Agent
from drivers.sim.dylos import SimulatedDylos


def run_probe(ini) -> subprocess.CompletedProcess:
    return run_sensorkit("probe", "-c", str(ini))


def test_probe_on_the_bench_finds_the_simulated_devices_and_prints_ini_lines():
    done = run_probe(ROOT / "agent.ini")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "serial ports (for [dylos] port):" in out
    assert "0x76: BME280 (chip id 0x60)" in out
    assert "0x77: nothing" in out
    assert "DHT22 on GPIO4: " in out and " C, " in out
    suggestion = out.split("put this in", 1)[1]
    assert "[bme280]\nenabled = yes\nbackend = simulated\nbus = 1\naddress = 0x76" in suggestion
    assert "[dht22]\nenabled = yes\nbackend = simulated\npin = 4" in suggestion


def test_probe_reports_an_absent_dht22_without_suggesting_it(tmp_path):
    ini = write_config(
        tmp_path / "agent.ini",
        "[kit]\nproject = P\nserial = s\n[dht22]\nbackend = simulated\nsim_absent = yes\n"
        "[bme280]\nbackend = simulated\n[dylos]\nbackend = simulated\n",
    )
    done = run_probe(ini)
    assert done.returncode == 0, done.stderr
    assert "DHT22 on GPIO4 (BCM) does not answer" in done.stdout
    assert "[dht22]\nenabled" not in done.stdout


ON_A_PI = "Raspberry Pi" in (
    Path("/proc/device-tree/model").read_text(errors="replace")
    if Path("/proc/device-tree/model").exists()
    else ""
)


def hardware_ini(tmp_path, port: str) -> Path:
    return write_config(
        tmp_path / "garden.ini",
        f"[kit]\nproject = P\nserial = s\n[dylos]\nbackend = hardware\nport = {port}\n"
        "[dht22]\nbackend = hardware\n[bme280]\nbackend = hardware\n",
    )


def test_probe_off_a_pi_suggests_nothing_it_did_not_find(tmp_path):
    if ON_A_PI:
        pytest.skip("on a Raspberry Pi the hardware may really be there")
    silent = SimulatedDylos()
    silent.replug()  # a port that exists, with nothing talking on it
    try:
        report = probe(load(hardware_ini(tmp_path, silent.url)), patience=1.0)
    finally:
        silent.stop()
    assert f"{silent.url} (configured in {tmp_path / 'garden.ini'}): no Dylos line in 1 s" in report
    assert "DHT22 (for [dht22], backend hardware):" in report
    assert "put this in" not in report and "enabled = yes" not in report
    assert report.endswith("no sensor found; check wiring, and `backend` in each sensor section")


def test_probe_suggests_the_port_a_dylos_was_heard_on(tmp_path):
    with SimulatedDylos(speedup=600) as talking:
        report = probe(load(hardware_ini(tmp_path, talking.url)), patience=2.0)
    assert re.search(rf"{re.escape(talking.url)} \(configured in .*\): a Dylos is talking: \d+,\d+",
                     report)  # fmt: skip
    suggestion = report.split("put this in", 1)[1]
    assert suggestion.endswith(f"[dylos]\nenabled = yes\nbackend = hardware\nport = {talking.url}")


def test_a_missing_dylos_port_is_named_in_the_config_file_used_and_waited_for(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    missing = tmp_path / "ttyUSB7"
    ini = write_config(
        tmp_path / "garden.ini",
        f"[kit]\nproject = P\nserial = s\ninterval = 1\nstate_dir = {tmp_path / 'state'}\n"
        f"[dylos]\nenabled = yes\nbackend = hardware\nport = {missing}\n[influx]\nenabled = no\n",
    )
    agent = Agent(load(ini), [])
    threading.Timer(1.5, agent.stop.set).start()
    assert agent.run() == 0
    messages = [r.getMessage() for r in caplog.records]
    warned = [m for m in messages if "does not exist" in m]
    assert warned and warned[0].startswith(f"{ini} [dylos] port: {missing} does not exist")
    assert not any("agent.ini" in m for m in messages)
    assert "dylos: waiting for the device (hardware backend); readings start when it answers" in (
        messages
    )
    assert not any(m.startswith("dylos: opened") for m in messages)
    assert agent.status()["sensors"]["dylos"]["state"] == "disconnected"
