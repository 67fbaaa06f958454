"""``publish`` of big files to a healthy server with the default cap: every point stored,
memory flat (issue: the whole file was queued first, the cap dropped half of a 1M-point file).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import write_config

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_600_000_000


def record(i: int) -> dict:
    return {"time": T0 + i, "pm_25": float(i % 900), "pm_10": float(i % 97), "dtemp": 20.5}


def run_measured(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python -m agent ARGS``; its peak RSS in MB from /proc (VmHWM), read while alive."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    deadline = time.monotonic() + timeout
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), peak / 1024


def count(influx, db: str) -> int:
    rows = influx.rows("SELECT count(pm_25) FROM data", db)
    return rows[0]["count"] if rows else 0


def test_a_million_point_file_is_stored_whole_with_memory_flat(influx, tmp_path):
    n = 1_000_000
    source = tmp_path / "big.jsonl"
    with open(source, "w") as out:
        out.write(json.dumps({"ident": {"project": "big", "serial": "lines"}}) + "\n")
        for i in range(n):
            out.write(json.dumps({"data": record(i)}) + "\n")
    ini = write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = x\nserial = y\nstate_dir = {tmp_path / 'state'}\n"
        f"[influx]\nurl = {influx.url}\n[console]\nenabled = no\n",
    )
    done, rss = run_measured(["publish", "-c", str(ini), "--wait", "120", str(source)], 900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is full" not in done.stderr and "dropped" not in done.stderr
    assert count(influx, "big_lines") == n  # every point, none pushed out by the cap
    assert rss <= 100, f"peak RSS {rss:.0f} MB"


def test_a_200000_point_one_object_file_is_stored_whole_with_memory_flat(influx, tmp_path):
    n = 200_000
    source = tmp_path / "big.json"
    with open(source, "w") as out:
        out.write('{"ident": {"project": "big", "serial": "object"},\n "data": [\n')
        out.write(",\n".join(json.dumps(record(i)) for i in range(n)))
        out.write("\n]}\n")
    ini = write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = x\nserial = y\nstate_dir = {tmp_path / 'state'}\n"
        f"[influx]\nurl = {influx.url}\n[console]\nenabled = no\n",
    )
    done, rss = run_measured(["publish", "-c", str(ini), "--wait", "120", str(source)], 600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert count(influx, "big_object") == n
    assert rss <= 100, f"peak RSS {rss:.0f} MB"
