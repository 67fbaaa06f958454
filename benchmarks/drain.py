"""Drain benchmark: a 200,000-point backlog delivered to a local influxd, against plain POSTs.

The agent's side is what ``sensorkit run`` does after an outage: the points sit in the
output's DurableQueue (appended as encoded line protocol, then group-committed to SQLite, the
queue closed and reopened as after a restart), and the InfluxOutput's sender thread delivers
them with the settings of a default agent.ini. Timed: from starting the sender until the queue
is empty and ``SELECT count(pm_25) FROM data`` returns all points.

The baseline POSTs the same pre-encoded line protocol with ``requests`` (one Session, 5,000
lines a request, precision=s, no gzip) to a fresh database on the same server, timed to the
same query. Every run writes its own database; runs alternate (baseline, gzip, plain, then
the reverse, ...) and the best of each kind counts, so server warm-up and growth hit all
alike. Before each timed run the page cache is flushed (os.sync) and influxd is left to go
idle (its cache snapshots and compactions of the previous run), so no run pays for another.

    python benchmarks/drain.py [--points N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import requests  # noqa: E402
from _common import InfluxServer, data_lines, emit, settle, tmpdir, write_ini  # noqa: E402

from agent.config import load  # noqa: E402
from agent.outputs import open_outputs  # noqa: E402

BATCH = 5000


def count(session: requests.Session, url: str, db: str) -> int:
    answer = session.post(
        f"{url}/query", params={"db": db, "q": "SELECT count(pm_25) FROM data"}, timeout=60
    )
    answer.raise_for_status()
    series = answer.json()["results"][0].get("series")
    return series[0]["values"][0][1] if series else 0


def wait_count(session: requests.Session, url: str, db: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (got := count(session, url, db)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {got} of {n} points queryable in {db} after {timeout} s")
        time.sleep(0.01)
    if got != n:
        raise RuntimeError(f"{got} points in {db}, expected {n}")


def run_baseline(server: InfluxServer, bodies: list[bytes], n: int, db: str) -> float:
    with requests.Session() as session:
        session.post(
            f"{server.url}/query", params={"q": f'CREATE DATABASE "{db}"'}
        ).raise_for_status()
        os.sync()
        settle(server.proc.pid)
        started = time.perf_counter()
        for body in bodies:
            answer = session.post(
                f"{server.url}/write",
                params={"db": db, "precision": "s"},
                data=body,
                headers={"Content-Type": "text/plain; charset=utf-8"},
            )
            if answer.status_code != 204:
                raise RuntimeError(f"baseline write: {answer.status_code} {answer.text}")
        wait_count(session, server.url, db, n)
        return time.perf_counter() - started


def run_agent(server: InfluxServer, lines: list[str], db: str, gzip: bool) -> tuple[float, float]:
    """Returns (seconds to drain and be queryable, seconds it took to queue the backlog)."""
    work = tmpdir("sensorkit-drain-")
    try:
        ini = write_ini(work, server.url, gzip="yes" if gzip else "no")
        settings = load(ini)
        assert settings.influx.gzip is gzip and settings.influx.batch_size == BATCH
        # The outage: every point appended (one telegram's line each, as the agent does) and
        # group-committed to disk; then the agent restarts with the backlog on disk.
        t = time.perf_counter()
        (output,) = open_outputs(settings, "influx")
        for line in lines:
            output.queue.append([(db, line)])
        output.queue.sync()
        output.close()
        queued = time.perf_counter() - t
        os.sync()  # the backlog's writeback must not run during the timed drain
        settle(server.proc.pid)
        (output,) = open_outputs(settings, "influx")
        assert output.queue.depth == len(lines), output.queue.depth
        with requests.Session() as session:
            # a fresh database, created beforehand as for the baseline
            session.post(f"{server.url}/query", params={"q": f'CREATE DATABASE "{db}"'})
            started = time.perf_counter()
            output.start()
            if not output.wait_drained(120):
                raise RuntimeError(f"agent did not drain: {output.status()}")
            wait_count(session, server.url, db, len(lines))
            elapsed = time.perf_counter() - started
        output.close()
        return elapsed, queued
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each kind (default 3)")
    args = parser.parse_args()
    n = args.points
    lines = data_lines(n)
    bodies = ["\n".join(lines[i : i + BATCH]).encode() for i in range(0, n, BATCH)]
    mb = sum(len(b) for b in bodies) / 1e6
    print(f"drain: {n:,} points, {mb:.1f} MB of line protocol, {len(bodies)} batches of {BATCH}")

    server = InfluxServer().start()
    results: dict[str, list[float]] = {"baseline": [], "gzip": [], "plain": []}
    try:
        warm = run_baseline(server, bodies, n, "drain_warmup")
        print(f"  warm-up: baseline {warm:.2f} s (not counted)")
        order = ["baseline", "gzip", "plain"] * args.rounds
        for r in range(1, args.rounds, 2):  # alternate: B G P, P G B, B G P, ...
            order[3 * r : 3 * r + 3] = order[3 * r : 3 * r + 3][::-1]
        for i, kind in enumerate(order, 1):
            db = f"drain_{kind}_{i}"
            if kind == "baseline":
                seconds = run_baseline(server, bodies, n, db)
                note = ""
            else:
                seconds, queued = run_agent(server, lines, db, gzip=(kind == "gzip"))
                note = f"  (queueing the backlog took {queued:.1f} s, not timed)"
            results[kind].append(seconds)
            label = {
                "baseline": "baseline requests",
                "gzip": "agent, gzip on ",
                "plain": "agent, gzip off",
            }
            print(
                f"  run {i}: {label[kind]:18s} {seconds:6.2f} s  {n / seconds:9,.0f} points/s{note}"
            )
    finally:
        server.cleanup()

    best = {kind: n / min(times) for kind, times in results.items()}
    median = {kind: n / statistics.median(times) for kind, times in results.items()}
    ratio = best["gzip"] / best["baseline"]
    ratio_plain = best["plain"] / best["baseline"]
    k = args.rounds
    print()
    print(f"points/s, best and median of {k} runs each (the ratio uses the best: other load")
    print("on the machine can only slow a run down):")
    for kind, label in (
        ("baseline", "baseline (requests, 5,000-line POSTs)"),
        ("gzip", "agent, gzip on (default)"),
        ("plain", "agent, gzip off"),
    ):
        r = "" if kind == "baseline" else f"  ratio {best[kind] / best['baseline']:.2f}"
        r += "" if kind == "baseline" else f" (median {median[kind] / median['baseline']:.2f})"
        print(f"  {label:40s} {best[kind]:9,.0f}  median {median[kind]:9,.0f}{r}")
    print(f"target: ratio (gzip on, the default) >= 0.8 -> {'met' if ratio >= 0.8 else 'MISSED'}")
    emit(
        {
            "ratio": round(ratio, 3),
            "ratio_gzip_off": round(ratio_plain, 3),
            "ratio_median": round(median["gzip"] / median["baseline"], 3),
            "points_per_s": round(best["gzip"]),
            "points_per_s_gzip_off": round(best["plain"]),
            "baseline_points_per_s": round(best["baseline"]),
            "points": n,
            "runs_each": k,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
