"""Footprint benchmark: memory and CPU of ``sensorkit run`` on the bench, steady and draining.

All three sensors simulated (the Dylos's lines made up from the weather, DHT22 and BME280 at
the wire),
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

Then the same run again with a backlog of ``--backlog`` points (default 1,000,000) in the
agent's queue at start, as after a long outage: the peak RSS while it drains with the three
sensors running (target <= 40 MB, like the steady state), and a check that all of it arrived.

    python benchmarks/footprint.py [--seconds 60] [--backlog 1000000]
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
from _common import (  # noqa: E402
    ROOT,
    SENSORS,
    InfluxServer,
    cpu_seconds,
    data_lines,
    emit,
    tmpdir,
    write_ini,
)

from agent.buffer import DurableQueue  # noqa: E402

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


def run_agent(server: InfluxServer, work: Path, seconds: int, kit: str, influx: dict) -> dict:
    """``sensorkit run`` for ``seconds``: samples of (t, cpu s, VmRSS kB, VmHWM kB), rusage."""
    ini = write_ini(work, server.url, kit=kit, sensors=SENSORS, **influx)
    cmd = [sys.executable, "-m", "agent", "run", "-c", str(ini), "--duration", str(seconds)]
    log = open(work / "agent.log", "wb")  # noqa: SIM115 - the child keeps it
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    samples: list[tuple[float, float, int, int]] = []
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
    log.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print((work / "agent.log").read_text(), file=sys.stderr)
        raise RuntimeError(f"sensorkit run exited with {code}")
    return {"samples": samples, "usage": usage, "wall": time.monotonic() - started}


def backlog(work: Path, points: int) -> int:
    """About ``points`` points (whole appends of 512) in the agent's queue, as an outage
    leaves them; how many."""
    queue = DurableQueue(work / "state", "influx", max_bytes=10**10)
    lines = data_lines(512, start=1_600_000_000)
    for i in range(0, points, len(lines)):
        queue.append([("bench_1", ln.rsplit(" ", 1)[0] + f" {1_600_000_000 + i + j}")
                      for j, ln in enumerate(lines)])  # fmt: skip
    queued = queue.depth
    queue.close()
    return queued


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--backlog", type=int, default=1_000_000, help="points (default 1M)")
    args = parser.parse_args()

    baseline = min(bare_python_rss_kb() for _ in range(3))
    server = InfluxServer().start()
    work = tmpdir("sensorkit-footprint-")
    drain_work = tmpdir("sensorkit-footprint-drain-")
    try:
        steady = run_agent(server, work, args.seconds, "interval = 1", {})
        rows = server.rows(
            "SELECT count(pm_25) AS pm_25, count(dtemp) AS dtemp, count(hpa) AS hpa FROM data",
            "bench_1",
        )
        counts = {k: rows[0][k] for k in ("pm_25", "dtemp", "hpa")} if rows else {}
        log_lines = (work / "agent.log").read_text().splitlines()
        queued = backlog(drain_work, args.backlog)
        draining = run_agent(
            server, drain_work, args.seconds, "interval = 1", {"queue_max_mb": 2000}
        )
        backlog_rows = server.rows(
            "SELECT count(pm_25) FROM data WHERE time < '2021-01-01T00:00:00Z'", "bench_1"
        )
        drained = backlog_rows[0]["count"] if backlog_rows else 0
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(drain_work, ignore_errors=True)

    samples, usage, wall = steady["samples"], steady["usage"], steady["wall"]
    steady_samples = [s for s in samples if s[0] >= WARMUP]
    t0, c0 = steady_samples[0][0], steady_samples[0][1]
    t1, c1 = steady_samples[-1][0], steady_samples[-1][1]
    cpu_pct = 100 * (c1 - c0) / (t1 - t0)
    whole_cpu = usage.ru_utime + usage.ru_stime
    hwm = max(s[3] for s in samples)
    rss_mb = hwm / 1024
    drain_mb = max(s[3] for s in draining["samples"]) / 1024
    print(f"sensorkit run, 3 simulated sensors, interval 1 s, InfluxDB output, {args.seconds} s")
    print(f"  data points in InfluxDB: {counts}; agent log lines: {len(log_lines)}")
    print(
        f"  peak RSS (VmHWM): {rss_mb:.1f} MB; at the end {samples[-1][2] / 1024:.1f} MB;"
        f" baseline `python -c pass`: {baseline / 1024:.1f} MB; target <= 40 MB: "
        f"{'met' if rss_mb <= 40 else 'MISSED'}"
    )
    print(
        f"  CPU, steady state ({t0:.0f}-{t1:.0f} s): {c1 - c0:.2f} s over {t1 - t0:.1f} s ="
        f" {cpu_pct:.2f} % of one core; target <= 2 %: {'met' if cpu_pct <= 2 else 'MISSED'}"
    )
    print(
        f"  CPU, whole run incl. start-up: {whole_cpu:.2f} s over {wall:.1f} s ="
        f" {100 * whole_cpu / wall:.2f} % (start-up to {WARMUP:.0f} s: {c0:.2f} s)"
    )
    print(
        f"the same with a {args.backlog:,}-point backlog in the queue at start (three sensors "
        f"running while it drains): peak RSS {drain_mb:.1f} MB (target <= 40 MB: "
        f"{'met' if drain_mb <= 40 else 'MISSED'}); {drained:,} backlog points in InfluxDB "
        "at the end"
    )
    if drained != queued:
        raise RuntimeError(f"the backlog did not drain in {args.seconds} s: {drained:,} stored")
    emit(
        {
            "rss_mb": round(rss_mb, 1),
            "rss_mb_draining": round(drain_mb, 1),
            "cpu_pct": round(cpu_pct, 2),
            "cpu_pct_incl_startup": round(100 * whole_cpu / wall, 2),
            "baseline_rss_mb": round(baseline / 1024, 1),
            "backlog_points": queued,
            "seconds": args.seconds,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
