"""`sensorkit run` on the bench: simulated device lines through the real drivers into InfluxDB."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_sensorkit, write_config

from agent.aggregator import robust_mean
from agent.config import load
from agent.console import ConsoleOutput
from agent.ramfiles import runtime_path
from agent.runner import Agent
from drivers.sim.dylos import SimulatedDylos


def kit_ini(tmp_path: Path, body: str, url: str = "", interval: int = 1) -> Path:
    influx = f"[influx]\nurl = {url}\nsync_interval = 1\n" if url else "[influx]\nenabled = no\n"
    return write_config(
        tmp_path / "agent.ini",
        f"""[kit]
project = Bench
serial = k1
label = garden bench
geolocation = 51.420635,6.1356117,22.9
interval = {interval}
state_dir = {tmp_path / "state"}
{body}
{influx}
[console]
enabled = yes
file = {tmp_path / "telegrams.jsonl"}
""",
    )


def telegrams(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def contiguous_in(pairs: list[tuple[int, int]], written: list[tuple[int, int]]) -> bool:
    n = len(pairs)
    return any(written[i : i + n] == pairs for i in range(len(written) - n + 1))


def test_each_window_holds_the_mean_of_the_device_lines_that_arrived_in_it(tmp_path):
    ini = kit_ini(tmp_path, "[dylos]\nenabled = yes\nbackend = simulated\n")
    settings = load(ini)
    sim = SimulatedDylos(speedup=180).start()
    agent = Agent(
        settings, [ConsoleOutput(str(tmp_path / "telegrams.jsonl"))], transports={"dylos": sim}
    )
    events: list[tuple] = []
    lock = threading.Lock()
    add, close = agent.aggregator.add, agent.aggregator.close_window

    def recording_add(readings):
        readings = list(readings)
        with lock:
            events.append(("add", {r.field: r.value for r in readings}))
            add(readings)

    def recording_close(end):
        with lock:
            data = close(end)
            events.append(("close", data))
            return data

    agent.aggregator.add = recording_add
    agent.aggregator.close_window = recording_close
    threading.Timer(6.5, agent.stop.set).start()
    try:
        assert agent.run() == 0
    finally:
        sim.stop()

    windows, current, lines = [], [], []
    for kind, payload in events:
        if kind == "add":
            current.append(payload)
            lines.append((int(payload["pm_25"]), int(payload["pm_10"])))
        else:
            if payload is not None:
                windows.append((current, dict(payload.values)))
            else:
                assert current == []
            current = []
    assert len(lines) >= 12, "the simulated Dylos should give about 3 lines a second"
    assert contiguous_in(lines, sim.written), "readings must be consecutive lines the device sent"
    assert len(windows) >= 5
    for readings, values in windows:
        assert values["pm_25"] == pytest.approx(statistics.fmean(r["pm_25"] for r in readings))
        assert values["pm_10"] == pytest.approx(statistics.fmean(r["pm_10"] for r in readings))
    printed = [t["data"] for t in telegrams(tmp_path / "telegrams.jsonl") if "data" in t]
    assert [d["pm_25"] for d in printed] == [pytest.approx(v["pm_25"]) for _, v in windows]


def run_agent(ini: Path, seconds: float) -> subprocess.CompletedProcess:
    return run_sensorkit("run", "-c", str(ini), "--duration", str(seconds), timeout=seconds + 60)


def test_run_with_simulated_dylos_puts_points_in_influxdb_and_prints_telegrams(tmp_path, influx):
    ini = kit_ini(
        tmp_path, "[dylos]\nenabled = yes\nbackend = simulated\nspeedup = 300\n", influx.url
    )
    ini.write_text(ini.read_text().replace(f"file = {tmp_path / 'telegrams.jsonl'}", "file = -"))
    done = run_agent(ini, 4)
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert "ident" in printed[0]
    data = [t["data"] for t in printed if "data" in t]
    assert len(data) >= 3
    rows = influx.rows("SELECT * FROM data", "Bench_k1")
    assert [r["time"] for r in rows] == [d["time"] for d in data]
    assert [r["pm_25"] for r in rows] == [pytest.approx(d["pm_25"]) for d in data]
    assert rows[0]["new"] == "1" and {r["new"] for r in rows[1:]} == {"0"}
    assert {r["label"] for r in rows} == {"garden bench"}
    info = influx.rows("SELECT * FROM info", "Bench_k1")
    assert info[0]["fields"] == "time,pm_25,pm_10"


ALL_SIMULATED = """
[dylos]
enabled = yes
backend = simulated
speedup = 300
[dht22]
enabled = yes
backend = simulated
interval = 2
[bme280]
enabled = yes
backend = simulated
interval = 1
"""


def test_full_kit_on_the_bench_sends_all_seven_fields_and_an_ordered_ident(tmp_path, influx):
    ini = kit_ini(tmp_path, ALL_SIMULATED, influx.url, interval=2)
    done = run_agent(ini, 7)
    assert done.returncode == 0, done.stderr
    rows = influx.rows("SELECT * FROM data", "Bench_k1")
    fields = ("pm_25", "pm_10", "dtemp", "drh", "temp", "rh", "hpa")
    full = [r for r in rows if all(r.get(f) is not None for f in fields)]
    assert len(full) >= 2, rows
    for row in full:
        assert -40 <= row["dtemp"] <= 80 and 0 <= row["drh"] <= 100
        assert 300 <= row["hpa"] <= 1100 and abs(row["temp"] - row["dtemp"]) < 5
    info = influx.rows("SELECT * FROM info", "Bench_k1")[-1]
    assert info["fields"] == "time," + ",".join(fields)
    assert info["units"] == "s,pcs/qf,pcs/qf,C,%,C,%,hPa"
    assert info["types"] == ("time,Dylos DC1100,Dylos DC1100,DHT22,DHT22,BME280,BME280,BME280")


def test_a_failing_sensor_is_reported_while_the_others_carry_on(tmp_path):
    body = ALL_SIMULATED.replace("interval = 2\n", "interval = 2\nsim_absent = yes\n")
    ini = kit_ini(tmp_path, body, interval=1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(ini), "--duration", "9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    time.sleep(7)
    status = run_sensorkit("status", "-c", str(ini), "--json")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    health = json.loads(status.stdout)["sensors"]
    assert health["dht22"]["state"] == "failing"
    assert "does not answer" in health["dht22"]["last_error"]
    assert health["bme280"]["state"] == "ok" and health["dylos"]["state"] == "ok"
    assert stderr.count("keeps failing") == 1, stderr
    data = [t["data"] for t in telegrams(tmp_path / "telegrams.jsonl") if "data" in t]
    assert len(data) >= 4
    assert all("dtemp" not in d and "drh" not in d for d in data)
    assert sum("hpa" in d for d in data) >= 3 and sum("pm_25" in d for d in data) >= 3


def test_readings_of_a_window_cut_by_kill_9_are_sent_after_the_restart(tmp_path):
    ini = kit_ini(
        tmp_path, "[dylos]\nenabled = yes\nbackend = simulated\nspeedup = 600\n", interval=5
    )
    while time.time() % 5 > 0.3:  # start just after a window began, so the kill falls inside it
        time.sleep(0.05)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(ini)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    window_end = (int(time.time()) // 5 + 1) * 5
    time.sleep(3.5)
    proc.kill()
    proc.wait(timeout=10)
    logged = runtime_path(tmp_path / "state", "window.log").read_text().splitlines()
    pm25 = [float(line.split("\t")[1]) for line in logged if line.startswith("pm_25\t")]
    assert len(pm25) >= 10, logged
    before = [t["data"] for t in telegrams(tmp_path / "telegrams.jsonl") if "data" in t]
    assert all(d["time"] != window_end for d in before)  # the window was cut short
    while time.time() < window_end + 0.2:
        time.sleep(0.1)
    done = run_sensorkit("run", "-c", str(ini), "--duration", "1.5")
    assert done.returncode == 0, done.stderr
    assert f"recovered {len(logged)} readings of the window ending {window_end}" in done.stderr
    after = [t["data"] for t in telegrams(tmp_path / "telegrams.jsonl") if "data" in t]
    [late] = [d for d in after if d["time"] == window_end]
    assert late["pm_25"] == pytest.approx(robust_mean(pm25))
