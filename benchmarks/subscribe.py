"""Subscribe benchmark: a kit database read back by ``sensorkit subscribe --once`` to /dev/null.

Agent: ``python -m agent subscribe --once`` as a child process, ``[console] file = /dev/null``,
``[subscriber] databases`` naming the one database (default ``batch = 5000``), its cursor
removed before each run so every run reads every point: chunked ``/query``, rows into
telegrams, JSON Lines written, a cursor saved (fsynced) after every chunk. Timed from the
spawn (interpreter start-up included) to its exit.

Baseline: the same ``SELECT * FROM data`` as a raw chunked ``GET /query?epoch=s&chunked=true
&chunk_size=5000`` with ``requests`` in this process, each chunk decoded with ``json.loads``
(the least a reader must do with the rows); the best baseline of each round is its reference.
Runs alternate baseline / agent / baseline. Median and range over the rounds are reported.

Memory: peak RSS of the child as ``wait4`` reports it (``ru_maxrss``; this process keeps
little in memory, so the pre-``exec`` image it counts is small) and ``VmHWM`` of
``/proc/PID/status`` polled while it runs; both for 200,000 and for 1,000,000 points.

    python benchmarks/subscribe.py [--points N] [--big N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import requests  # noqa: E402
from _common import ROOT, START, InfluxServer, data_lines, emit, settle, tmpdir  # noqa: E402

BATCH = 5000
INFO = 'info,label=bench project="bench",serial="{serial}",geolocation="51.42,6.13,22.9" {t}'


def load(url: str, db: str, serial: str, n: int) -> None:
    """``n`` data points (one a second) and one info point into ``db``, 5,000 a request."""
    with requests.Session() as session:
        session.post(f"{url}/query", params={"q": f'CREATE DATABASE "{db}"'}, timeout=60)
        write = f"{url}/write?db={db}&precision=s"
        session.post(write, data=INFO.format(serial=serial, t=START), timeout=60)
        for first in range(0, n, BATCH):
            body = "\n".join(data_lines(min(BATCH, n - first), START + first, seed=first))
            answer = session.post(write, data=body.encode(), timeout=120)
            answer.raise_for_status()


def raw(url: str, db: str) -> tuple[float, int]:
    """Seconds for a raw chunked read of every data point, and the rows it got."""
    params = {"db": db, "q": "SELECT * FROM data", "epoch": "s", "chunked": "true"}
    params["chunk_size"] = str(BATCH)
    rows = 0
    started = time.perf_counter()
    with requests.get(f"{url}/query", params=params, stream=True, timeout=600) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines(chunk_size=1 << 16):
            if line:
                for series in json.loads(line)["results"][0].get("series", []):
                    rows += len(series["values"])
    return time.perf_counter() - started, rows


def config(folder: Path, url: str, db: str) -> Path:
    path = folder / "agent.ini"
    path.write_text(
        f"[kit]\nproject = bench\nserial = reader\nstate_dir = {folder / 'state'}\n"
        "[dylos]\nenabled = no\n[dht22]\nenabled = no\n[bme280]\nenabled = no\n"
        "[influx]\nenabled = no\n[console]\nfile = /dev/null\n"
        f"[subscriber]\nurl = {url}\ndatabases = {db}\n"
    )
    return path


def agent(ini: Path, expect: int) -> dict[str, float]:
    """One ``subscribe --once`` from scratch: seconds, ru_maxrss and polled VmHWM (MB)."""
    shutil.rmtree(ini.parent / "state", ignore_errors=True)
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "agent", "subscribe", "-c", str(ini), "--once"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    hwm = 0
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    err = child.stderr.read().decode() if child.stderr else ""
    if child.returncode != 0 or f"{expect} data points read" not in err:
        raise RuntimeError(f"subscribe failed ({child.returncode}): {err}")
    return {"seconds": elapsed, "vmhwm_mb": hwm / 1024}


def agent_rusage(ini: Path, expect: int) -> dict[str, float]:
    """:func:`agent` with the child's own ``ru_maxrss`` from ``os.wait4``."""
    shutil.rmtree(ini.parent / "state", ignore_errors=True)
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "agent", "subscribe", "-c", str(ini), "--once"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, code, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(code)
    if child.returncode != 0:
        raise RuntimeError(f"subscribe failed ({child.returncode})")
    return {"seconds": time.perf_counter() - started, "rss_mb": usage.ru_maxrss / 1024}


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = tmpdir("sensorkit-bench-subscribe-")
    server = InfluxServer().start()
    try:
        n = args.points
        load(server.url, "bench_1", "1", n)
        settle(server.proc.pid)
        ini = config(folder, server.url, "bench_1")
        warm = raw(server.url, "bench_1")
        assert warm[1] == n, warm
        agent(ini, n)
        print(f"subscribe: {n:,} points in one database, read to /dev/null, {args.rounds} rounds")
        print(f"  warm-up: raw {warm[0]:.2f} s, one agent run (neither counted)")
        ratios, agent_s, raw_s, hwms = [], [], [], []
        for r in range(args.rounds):
            before = min(raw(server.url, "bench_1")[0], raw(server.url, "bench_1")[0])
            run = agent(ini, n)
            best = min(before, raw(server.url, "bench_1")[0])
            ratios.append(best / run["seconds"])
            agent_s.append(run["seconds"])
            raw_s.append(best)
            hwms.append(run["vmhwm_mb"])
            print(
                f"  round {r + 1}: raw {best:.2f} s ({n / best:,.0f} points/s), agent "
                f"{run['seconds']:.2f} s ({n / run['seconds']:,.0f} points/s), ratio "
                f"{ratios[-1]:.2f}, VmHWM {run['vmhwm_mb']:.1f} MB"
            )
        small = agent_rusage(ini, n)
        print(f"ratio raw / agent time: {spread(ratios)}")
        print(f"  agent {spread(agent_s)} s, raw (best of the round) {spread(raw_s)} s")
        print(
            f"peak RSS at {n:,} points: ru_maxrss {small['rss_mb']:.1f} MB, "
            f"VmHWM {max(hwms):.1f} MB"
        )
        figures = {
            "points": n,
            "rounds": args.rounds,
            "ratio": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "agent_points_per_s": round(n / statistics.median(agent_s)),
            "raw_points_per_s": round(n / statistics.median(raw_s)),
            "rss_mb": round(small["rss_mb"], 1),
            "vmhwm_mb": round(max(hwms), 1),
        }
        if args.big:
            load(server.url, "bench_2", "2", args.big)
            settle(server.proc.pid)
            (folder / "big").mkdir()
            big_ini = config(folder / "big", server.url, "bench_2")
            big = agent_rusage(big_ini, args.big)
            big_hwm = agent(big_ini, args.big)["vmhwm_mb"]
            growth = big["rss_mb"] / small["rss_mb"] - 1
            print(
                f"peak RSS at {args.big:,} points: ru_maxrss {big['rss_mb']:.1f} MB, VmHWM "
                f"{big_hwm:.1f} MB ({growth:+.1%} vs {n:,}); read in {big['seconds']:.1f} s"
            )
            figures.update(
                big_points=args.big,
                rss_mb_big=round(big["rss_mb"], 1),
                vmhwm_mb_big=round(big_hwm, 1),
                rss_growth=round(growth, 3),
            )
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
