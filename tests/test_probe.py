"""`sensorkit probe`: what it finds on the bench and what it says to put in agent.ini."""

from __future__ import annotations

import subprocess

from conftest import ROOT, run_sensorkit, write_config


def probe(ini) -> subprocess.CompletedProcess:
    return run_sensorkit("probe", "-c", str(ini))


def test_probe_on_the_bench_finds_the_simulated_devices_and_prints_ini_lines():
    done = probe(ROOT / "agent.ini")
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
    done = probe(ini)
    assert done.returncode == 0, done.stderr
    assert "DHT22 on GPIO4 (BCM) does not answer" in done.stdout
    assert "[dht22]\nenabled" not in done.stdout
