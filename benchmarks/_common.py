"""Shared helpers for the benchmarks: paths, realistic data lines, an agent.ini, the JSON line."""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from influxd import InfluxServer, influxd_binary  # noqa: E402  (tests/influxd.py)

__all__ = [
    "ROOT",
    "SENSORS",
    "InfluxServer",
    "influxd_binary",
    "data_lines",
    "write_ini",
    "emit",
    "tmpdir",
]

SENSORS = """[dylos]
enabled = yes
backend = simulated
[dht22]
enabled = yes
backend = simulated
[bme280]
enabled = yes
backend = simulated
"""
"""All three sensors on their simulated backends (as on the bench)."""

TAGS = r"data,geolocation=51.42\,6.13\,22.9,label=bench,new=0"
START = 1_700_000_000  # 2023-11-14: well inside InfluxDB's default (infinite) retention


def data_lines(n: int, start: int = START, seed: int = 1) -> list[str]:
    """``n`` line-protocol data points as the kit sends them, one second apart."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            f"{TAGS} pm_25={rnd.randint(50, 900)}.0,pm_10={rnd.randint(5, 120)}.0,"
            f"dtemp={rnd.uniform(10, 30):.1f},drh={rnd.uniform(20, 90):.1f},"
            f"temp={rnd.uniform(10, 30):.2f},rh={rnd.uniform(20, 90):.1f},"
            f"hpa={rnd.uniform(990, 1030):.1f} {start + i}"
        )
    return out


def write_ini(
    directory: Path, url: str, kit: str = "", sensors: str = "", **influx: object
) -> Path:
    """A minimal agent.ini in ``directory`` (sensors off unless ``sensors`` says otherwise)."""
    extra = "".join(f"{k} = {v}\n" for k, v in influx.items())
    sensors = sensors or "[dylos]\nenabled = no\n[dht22]\nenabled = no\n[bme280]\nenabled = no\n"
    text = (
        f"[kit]\nproject = bench\nserial = 1\nlabel = bench\n"
        f"geolocation = 51.42,6.13,22.9\nstate_dir = state\n{kit}\n"
        f"{sensors}\n[influx]\nurl = {url}\n{extra}\n[console]\nenabled = no\n"
    )
    path = directory / "agent.ini"
    path.write_text(text)
    return path


def tmpdir(prefix: str) -> Path:
    """A temp dir on a disk-backed file system (not tmpfs), so /proc/*/io sees its writes."""
    base = os.environ.get("SENSORKIT_BENCH_TMP") or None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def emit(figures: dict) -> None:
    """The benchmark's last line: one JSON object of its figures."""
    sys.stdout.flush()
    print(json.dumps(figures), flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, idle: float = 0.05, window: float = 0.5, timeout: float = 20.0) -> float:
    """Wait until ``pid`` uses under ``idle`` of a core over ``window`` s (influxd done with
    snapshots and compactions), so one run's background work does not slow the next."""
    import time

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(window)
        if (cpu_seconds(pid) - before) / window < idle:
            break
    return time.monotonic() - started
