"""Drain benchmark: a backlog delivered to a local influxd, against the server's real limit.

Agent: what ``sensorkit run`` does after an outage. The points sit in the InfluxDB output's
queue (appended one telegram's line at a time, flushed, the queue closed as by a stop); the
timed part opens the output as a restart does (the start-up scan of the queue is inside the
timing), starts the sender with the settings of a default agent.ini and ends when the queue is
empty and ``SELECT count(pm_25)`` returns every point. CPU per point is this process's CPU
time (all the agent's threads) from opening the output to the queue being empty.

Baseline: the same pre-encoded line protocol POSTed with ``requests`` in 5,000-line bodies,
on 1, 2, 3 and 4 connections at once, gzip on and off: every configuration is measured in
every round and the best one of the round is the baseline its agent runs are compared with,
so the ratio is against the server's real limit here, not a weak client. The agent runs as
the default agent.ini has it (``gzip = auto``, which is off for a server on loopback) and with
``gzip = yes`` (what a kit sending across a network does). Runs alternate (baseline
configurations, agent gzip on, agent by default, then the reverse) so server warm-up and
growth hit all alike; before each timed run the page cache is flushed and influxd left to go
idle. Median and range over the rounds are reported.

Start-up: a 5,000,000-point backlog (about 1 GB of segments) is queued, then opening the queue
and an offline ``status`` read of it are timed (``--startup-points 0`` skips it).

    python benchmarks/drain.py [--points N] [--rounds R] [--startup-points N]
"""

from __future__ import annotations

import argparse
import gzip as gzip_module
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import requests  # noqa: E402
from _common import InfluxServer, data_lines, emit, settle, tmpdir, write_ini  # noqa: E402

from agent.buffer import DurableQueue, read_stats  # noqa: E402
from agent.config import load  # noqa: E402
from agent.outputs import open_outputs  # noqa: E402

BATCH = 5000
CONNECTIONS = (1, 2, 3, 4)


def count(session: requests.Session, url: str, db: str) -> int:
    answer = session.post(
        f"{url}/query", params={"db": db, "q": "SELECT count(pm_25) FROM data"}, timeout=60
    )
    answer.raise_for_status()
    series = answer.json()["results"][0].get("series")
    return series[0]["values"][0][1] if series else 0


def wait_count(url: str, db: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while (got := count(session, url, db)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {got} of {n} points queryable in {db} after {timeout} s")
            time.sleep(0.01)
    if got != n:
        raise RuntimeError(f"{got} points in {db}, expected {n}")


def create(url: str, db: str) -> None:
    requests.post(
        f"{url}/query", params={"q": f'CREATE DATABASE "{db}"'}, timeout=30
    ).raise_for_status()


def run_raw(server: InfluxServer, bodies: list[bytes], n: int, db: str, conns: int, gz: bool):
    """Seconds for ``conns`` sessions POSTing the bodies (each its share) until queryable."""
    create(server.url, db)
    payloads = [gzip_module.compress(b, compresslevel=1) if gz else b for b in bodies]
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if gz:
        headers["Content-Encoding"] = "gzip"
    errors: list[str] = []

    def worker(share: list[bytes]) -> None:
        with requests.Session() as session:
            for body in share:
                answer = session.post(
                    f"{server.url}/write",
                    params={"db": db, "precision": "s"},
                    data=body,
                    headers=headers,
                )
                if answer.status_code != 204:
                    errors.append(f"{answer.status_code} {answer.text}")

    os.sync()
    settle(server.proc.pid)
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(payloads[i::conns],)) for i in range(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"baseline write: {errors[0]}")
    wait_count(server.url, db, n)
    return time.perf_counter() - started


def run_agent(server: InfluxServer, lines: list[str], db: str, gzip: bool) -> dict[str, float]:
    """(seconds to drain and be queryable, agent CPU seconds, seconds to queue the backlog).
    ``gzip`` False: the default agent.ini (gzip = auto, off for a server on loopback);
    True: ``gzip = yes``, as a kit sending across a network does."""
    work = tmpdir("sensorkit-drain-")
    try:
        ini = write_ini(work, server.url, **({"gzip": "yes"} if gzip else {}))
        settings = load(ini)
        assert settings.influx.gzip is gzip and settings.influx.batch_size == BATCH
        t = time.perf_counter()
        (output,) = open_outputs(settings, "influx")
        for line in lines:  # the outage: one telegram's line per append, as the agent does
            output.queue.append([(db, line)])
        output.queue.sync()
        output.close()
        queued = time.perf_counter() - t
        create(server.url, db)
        os.sync()  # the backlog's writeback must not run during the timed drain
        settle(server.proc.pid)
        started, cpu = time.perf_counter(), time.process_time()
        (output,) = open_outputs(settings, "influx")  # the restart: its scan is timed too
        assert output.queue.depth == len(lines), output.queue.depth
        output.start()
        if not output.wait_drained(300):
            raise RuntimeError(f"agent did not drain: {output.status()}")
        cpu = time.process_time() - cpu
        wait_count(server.url, db, len(lines))
        elapsed = time.perf_counter() - started
        output.close()
        return {"seconds": elapsed, "cpu": cpu, "queued": queued}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def startup(points: int) -> dict[str, float]:
    """Seconds to open a queue holding ``points`` points, and to read its status offline."""
    work = tmpdir("sensorkit-startup-")
    try:
        queue = DurableQueue(work, "influx", max_bytes=10**12)
        lines = data_lines(512)
        chunk = [("bench_1", ln) for ln in lines]
        for _ in range(points // len(chunk)):
            queue.append(chunk)
        queue.close()
        size = sum(p.stat().st_size for p in (work / "influx.log").glob("*.seg"))
        os.sync()
        opened = []
        offline = []
        for _ in range(3):
            t = time.perf_counter()
            queue = DurableQueue(work, "influx", max_bytes=10**12)
            opened.append(time.perf_counter() - t)
            depth = queue.depth
            queue.close()
            t = time.perf_counter()
            stats = read_stats(work, "influx")
            offline.append(time.perf_counter() - t)
        assert depth == stats.queued == points // len(chunk) * len(chunk), (depth, stats)
        return {"open_s": min(opened), "status_s": min(offline), "bytes": size, "points": depth}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every kind (default 5)")
    parser.add_argument("--startup-points", type=int, default=5_000_000)
    args = parser.parse_args()
    n = args.points
    lines = data_lines(n)
    bodies = ["\n".join(lines[i : i + BATCH]).encode() for i in range(0, n, BATCH)]
    mb = sum(len(b) for b in bodies) / 1e6
    print(f"drain: {n:,} points, {mb:.1f} MB of line protocol, {len(bodies)} batches of {BATCH}")
    raw_kinds = [(c, g) for c in CONNECTIONS for g in (False, True)]
    server = InfluxServer().start()
    rounds: list[dict] = []
    try:
        warm = run_raw(server, bodies, n, "drain_warmup", 4, False)
        print(f"  warm-up: raw 4 connections {warm:.2f} s (not counted)")
        for r in range(args.rounds):
            raw: dict[tuple[int, bool], float] = {}
            agent: dict[str, dict] = {}
            order = ["raw", "gzip", "plain"] if r % 2 == 0 else ["plain", "gzip", "raw"]
            for kind in order:
                if kind == "raw":
                    for conns, gz in raw_kinds:
                        db = f"drain_raw{conns}{'z' if gz else ''}_{r}"
                        raw[(conns, gz)] = run_raw(server, bodies, n, db, conns, gz)
                else:
                    agent[kind] = run_agent(server, lines, f"drain_{kind}_{r}", kind == "gzip")
            best = min(raw, key=raw.get)
            result = {
                "best_raw": best,
                "raw_pps": n / raw[best],
                "gzip_pps": n / agent["gzip"]["seconds"],
                "plain_pps": n / agent["plain"]["seconds"],
                "gzip_us": agent["gzip"]["cpu"] / n * 1e6,
                "plain_us": agent["plain"]["cpu"] / n * 1e6,
            }
            result["ratio"] = result["plain_pps"] / result["raw_pps"]
            result["ratio_gzip"] = result["gzip_pps"] / result["raw_pps"]
            rounds.append(result)
            cells = "  ".join(
                f"{c}{'z' if g else ' '} {n / raw[(c, g)]:8,.0f}" for c, g in raw_kinds
            )
            print(f"  round {r + 1}: raw points/s by connections (z: gzip): {cells}")
            print(
                f"           best raw {best[0]} conn{' gzip' if best[1] else ''}: "
                f"{result['raw_pps']:,.0f}/s; agent (default, gzip off on loopback) "
                f"{result['plain_pps']:,.0f}/s (ratio {result['ratio']:.2f}, "
                f"{result['plain_us']:.2f} us CPU/point), gzip = yes {result['gzip_pps']:,.0f}/s "
                f"(ratio {result['ratio_gzip']:.2f}, {result['gzip_us']:.2f} us/point)"
            )
    finally:
        server.cleanup()

    ratios = [r["ratio"] for r in rounds]
    zipped = [r["ratio_gzip"] for r in rounds]
    us = [r["plain_us"] for r in rounds]
    us_gzip = [r["gzip_us"] for r in rounds]
    print()
    print(f"ratio to the best raw configuration of the same round, over {len(rounds)} rounds:")
    print(
        f"  agent, default agent.ini (gzip = auto: off on loopback): {spread(ratios)}; "
        f"target >= 0.8 -> {'met' if statistics.median(ratios) >= 0.8 else 'MISSED'}"
    )
    print(f"  agent, gzip = yes (a server across a network): {spread(zipped)}")
    print(
        f"agent CPU per delivered point, us: default {spread(us)}, target <= 1 -> "
        f"{'met' if statistics.median(us) <= 1 else 'MISSED'}; gzip = yes {spread(us_gzip)}"
    )
    figures = {
        "ratio": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "ratio_gzip_on": round(statistics.median(zipped), 3),
        "us_per_point": round(statistics.median(us), 3),
        "us_per_point_gzip_on": round(statistics.median(us_gzip), 3),
        "points_per_s": round(statistics.median(r["plain_pps"] for r in rounds)),
        "baseline_points_per_s": round(statistics.median(r["raw_pps"] for r in rounds)),
        "points": n,
        "rounds": len(rounds),
    }
    if args.startup_points:
        s = startup(args.startup_points)
        print(
            f"start-up with a {s['points']:,}-point backlog ({s['bytes'] / 1e9:.2f} GB of "
            f"segments): open {s['open_s']:.3f} s, offline status {s['status_s']:.3f} s; "
            f"target <= 0.5 s -> {'met' if max(s['open_s'], s['status_s']) <= 0.5 else 'MISSED'}"
        )
        figures["startup_s_5m"] = round(max(s["open_s"], s["status_s"]), 3)
        figures["startup_open_s"] = round(s["open_s"], 3)
        figures["startup_status_s"] = round(s["status_s"], 3)
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
