"""Footprint benchmark: memory and CPU of ``sensorkit run`` on the bench for a minute.

All three sensors simulated (Dylos replayed at speedup 60, DHT22 and BME280 at the wire),
``[kit] interval = 1`` (one data telegram a second), console off, InfluxDB output to a local
influxd started here. The agent runs as ``python -m agent run -c <ini> --duration 60`` with the
interpreter running this script.

- peak RSS: the kernel's high-water mark, VmHWM in /proc/PID/status, sampled 4 times a second
  until exit (the mark only rises, so the last sample holds the peak of the whole run).
- CPU: utime + stime from /proc/PID/stat over wall time, as a share of one core, for the steady
  state (from 10 s after start to the last sample before exit); the whole run including
  interpreter start-up and imports (from wait4's rusage) is shown too.
- baseline: VmHWM of a bare ``python -c pass`` (kept alive a moment to be read) with the same
  interpreter, in the same run. (wait4's ru_maxrss is not used for RSS: for a child it includes
  the image it had before exec, a copy of this benchmark process.)

    python benchmarks/footprint.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, InfluxServer, cpu_seconds, emit, tmpdir, write_ini  # noqa: E402

SENSORS = """[dylos]
enabled = yes
backend = simulated
speedup = 60
[dht22]
enabled = yes
backend = simulated
[bme280]
enabled = yes
backend = simulated
"""
WARMUP = 10.0


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def bare_python_rss_kb() -> int:
    """VmHWM of a bare interpreter, read the same way as the agent's (from /proc, alive).

    Not wait4's ru_maxrss: for a child that counts the memory image it had before exec(), i.e.
    a copy of this (bigger) benchmark process, so it would overstate the baseline. The child
    does what ``python -c pass`` does, then sleeps (a built-in module: no RSS) to be read.
    """
    proc = subprocess.Popen([sys.executable, "-c", "pass; import time; time.sleep(0.6)"])
    try:
        time.sleep(0.4)
        return status_kb(proc.pid, "VmHWM")
    finally:
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()

    baseline = min(bare_python_rss_kb() for _ in range(3))
    server = InfluxServer().start()
    work = tmpdir("sensorkit-footprint-")
    try:
        ini = write_ini(work, server.url, kit="interval = 1", sensors=SENSORS)
        cmd = [
            sys.executable,
            "-m",
            "agent",
            "run",
            "-c",
            str(ini),
            "--duration",
            str(args.seconds),
        ]
        log = open(work / "agent.log", "wb")
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        samples: list[tuple[float, float, int, int]] = []  # (t, cpu s, VmRSS kB, VmHWM kB)
        while True:
            reaped, status, usage = os.wait4(proc.pid, os.WNOHANG)  # not poll(): keep rusage
            if reaped:
                break
            try:
                samples.append(
                    (
                        time.monotonic() - started,
                        cpu_seconds(proc.pid),
                        status_kb(proc.pid, "VmRSS"),
                        status_kb(proc.pid, "VmHWM"),
                    )
                )
            except (FileNotFoundError, ProcessLookupError, KeyError, IndexError):
                pass  # it is exiting
            time.sleep(0.25)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        if proc.returncode != 0:
            print((work / "agent.log").read_text(), file=sys.stderr)
            raise RuntimeError(f"sensorkit run exited with {proc.returncode}")
        rows = server.rows(
            "SELECT count(pm_25) AS pm_25, count(dtemp) AS dtemp, count(hpa) AS hpa FROM data",
            "bench_1",
        )
        counts = {k: rows[0][k] for k in ("pm_25", "dtemp", "hpa")} if rows else {}
        log_lines = (work / "agent.log").read_text().splitlines()
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    steady = [s for s in samples if s[0] >= WARMUP]
    t0, c0 = steady[0][0], steady[0][1]
    t1, c1 = steady[-1][0], steady[-1][1]
    cpu_pct = 100 * (c1 - c0) / (t1 - t0)
    whole_cpu = usage.ru_utime + usage.ru_stime
    hwm = max(s[3] for s in samples)
    peak = hwm
    rss_mb = peak / 1024
    print(f"sensorkit run, 3 simulated sensors, interval 1 s, InfluxDB output, {args.seconds} s")
    print(f"  data points in InfluxDB: {counts}; agent log lines: {len(log_lines)}")
    print(f"  peak RSS (VmHWM): {hwm / 1024:.1f} MB")
    print(
        f"  RSS at the end: {samples[-1][2] / 1024:.1f} MB;"
        f" baseline `python -c pass`: {baseline / 1024:.1f} MB"
    )
    print(
        f"  -> {rss_mb:.1f} MB peak, {rss_mb - baseline / 1024:.1f} MB above a bare interpreter;"
        f" target <= 40 MB: {'met' if rss_mb <= 40 else 'MISSED'}"
    )
    print(
        f"  CPU, steady state ({t0:.0f}-{t1:.0f} s): {c1 - c0:.2f} s over {t1 - t0:.1f} s ="
        f" {cpu_pct:.2f} % of one core; target <= 2 %: {'met' if cpu_pct <= 2 else 'MISSED'}"
    )
    print(
        f"  CPU, whole run incl. start-up: {whole_cpu:.2f} s over {wall:.1f} s ="
        f" {100 * whole_cpu / wall:.2f} % (start-up to {WARMUP:.0f} s: {c0:.2f} s)"
    )
    emit(
        {
            "rss_mb": round(rss_mb, 1),
            "cpu_pct": round(cpu_pct, 2),
            "cpu_pct_incl_startup": round(100 * whole_cpu / wall, 2),
            "baseline_rss_mb": round(baseline / 1024, 1),
            "rss_over_baseline_mb": round(rss_mb - baseline / 1024, 1),
            "rss_ratio": round(peak / baseline, 2),
            "seconds": args.seconds,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
