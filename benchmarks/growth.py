"""Growth benchmark: bytes on the server's disk per kit per year, raw forever vs provisioned.

For each pace (one telegram a minute, the agent's default, and every 10 s, the shipped bench
agent.ini), the same 90 days of one kit's ``data`` points, ending now, are written to a
fresh auth-enabled influxd twice:

- **forever**: a database as an admin's ``sensorkit publish`` creates it (``autogen``: kept
  forever, 7-day shards). It grows by the same amount every year, without end.
- **provisioned**: a kit set up by the real ``sensorkit provision`` (``--keep 90d``: 1-day
  raw shards, InfluxDB's default for 90 days). From day 90 on it stays at its 90 days.

Its means are measured over a whole year: a kit provisioned with ``--keep inf`` (so its raw
policy takes a year of back-dated points) gets a year at one a minute, and its continuous
queries' own SELECT, taken from ``SHOW CONTINUOUS QUERIES``, is run over that year with an
explicit time range: what the CQ service writes in a year (the test server's CQ service is
off). Means do not depend on the pace (a point an hour and a day); they grow until
``--keep-means 10y`` drops the oldest year.

The server snapshots and fully compacts every shard (cold after 1 s instead of 10 min and
4 h: the same files, sooner); then every file and folder under the database's data and WAL
folders is counted in allocated blocks (``st_blocks``, what ``du`` shows), the shards apart
from the per-database series file (fixed, not growing). Per year = shard bytes x 365 days /
the span written. A second server with influxd's default snapshot delay measures what one
day of points costs in the WAL before its shard goes cold (up to a shard's length of it:
1 day raw provisioned, 7 days forever).

Points look like the agent's: seven fields as a random walk at the agent's resolution
(Dylos counts in halves, DHT22 0.1, BME280 to 6 decimals as the aggregator rounds), tags
label, geolocation and new, second stamps at the pace. Every telegram carries all seven
fields (at 10 s the real Dylos adds a count once a minute, so that pace is an upper bound);
the ``info`` series (one point per agent start) is left out: it is bytes per year.

    python benchmarks/growth.py [--days 90] [--pace 60,10]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, InfluxServer, emit, settle  # noqa: E402

DAY = 86400
YEAR = 365 * DAY
KEEP_MEANS_YEARS = 10
TAGS = r"data,geolocation=51.420635\,6.1356117\,22.9,label=garden,new=0"


class GrowthServer(InfluxServer):
    """An auth influxd whose shards go cold (snapshot, then full compaction) after ``cold``."""

    def __init__(self, cold: str) -> None:
        super().__init__(auth=True)
        self.cold = cold

    def config(self) -> str:
        text = super().config()
        line = '  cache-snapshot-write-cold-duration = "1s"\n'
        assert line in text, "tests/influxd.py changed its [data] section"
        full = "1s" if self.cold == "1s" else "4h"
        return text.replace(
            line,
            f'  cache-snapshot-write-cold-duration = "{self.cold}"\n'
            f'  compact-full-write-cold-duration = "{full}"\n',
        )

    def post(self, path: str, params: dict[str, str], body: bytes) -> bytes:
        token = base64.b64encode(f"{self.admin[0]}:{self.admin[1]}".encode()).decode()
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(
            url, data=body, headers={"Authorization": f"Basic {token}"}
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.read()

    def write(self, db: str, lines: list[str]) -> None:
        for i in range(0, len(lines), 5000):
            self.post(
                "/write", {"db": db, "precision": "s"}, "\n".join(lines[i : i + 5000]).encode()
            )

    def run(self, statement: str) -> None:
        answer = json.loads(
            self.post("/query", {}, urllib.parse.urlencode({"q": statement}).encode())
        )
        errors = [r["error"] for r in answer.get("results", []) if "error" in r]
        if errors:
            raise RuntimeError(f"{statement}: {errors}")


def kit_lines(start: int, end: int, pace: int, seed: int = 1) -> list[str]:
    """One kit's data points from ``start`` to ``end`` every ``pace`` s, agent-like values."""
    rnd = random.Random(seed)
    pm25, pm10, temp, rh, hpa = 300.0, 40.0, 12.0, 75.0, 1013.0
    out = []
    for stamp in range(start, end, pace):
        pm25 = min(5000.0, max(0.0, pm25 + rnd.gauss(0, 25)))
        pm10 = min(900.0, max(0.0, pm10 + rnd.gauss(0, 6)))
        temp += rnd.gauss(0, 0.08) + 0.02 * (12.0 - temp) / 10
        rh = min(100.0, max(5.0, rh + rnd.gauss(0, 0.4)))
        hpa += rnd.gauss(0, 0.05) + 0.01 * (1013.0 - hpa)
        dust = f"pm_25={round(pm25 * 2) / 2},pm_10={round(pm10 * 2) / 2}"
        dht = f"dtemp={round(temp + rnd.gauss(0, 0.2), 1)},drh={round(rh + rnd.gauss(0, 1), 1)}"
        bme = (
            f"temp={round(temp + rnd.gauss(0, 0.01), 6)},rh={round(rh + rnd.gauss(0, 0.05), 6)},"
            f"hpa={round(hpa + rnd.gauss(0, 0.01), 6)}"
        )
        out.append(f"{TAGS} {dust},{dht},{bme} {stamp}")
    return out


def allocated(path: Path) -> int:
    """Bytes allocated to ``path`` and everything under it (files and folders, like du)."""
    if not path.exists():
        return 0
    total = path.lstat().st_blocks * 512
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def database_bytes(server: InfluxServer, db: str) -> tuple[int, int]:
    """(shard bytes: grow with time, fixed bytes: the series file and the folders above)."""
    data, wal = server.root / "data" / db, server.root / "wal" / db
    shards = sum(
        allocated(shard)
        for top in (data, wal)
        if top.exists()
        for policy in top.iterdir()
        if policy.is_dir() and policy.name != "_series"
        for shard in policy.iterdir()
    )
    return shards, allocated(data) + allocated(wal) - shards


def compacted(server: InfluxServer, dbs: list[str]) -> bool:
    """Every shard of ``dbs`` in one TSM file, nothing left in its WAL."""
    for db in dbs:
        for wal in (server.root / "wal" / db).rglob("*.wal"):
            if wal.stat().st_size:
                return False
        for shard in (server.root / "data" / db).glob("*/*"):
            if shard.parent.name == "_series":
                continue
            names = [p.name for p in shard.iterdir()]
            if sum(n.endswith(".tsm") for n in names) != 1 or any(".tmp" in n for n in names):
                return False
    return True


def wait_compacted(server: InfluxServer, dbs: list[str], timeout: float = 300) -> float:
    started = time.monotonic()
    last = None
    while time.monotonic() - started < timeout:
        settle(server.proc.pid)
        sizes = [database_bytes(server, db) for db in dbs]
        if compacted(server, dbs) and sizes == last:
            return time.monotonic() - started
        last = sizes
        time.sleep(2)
    raise RuntimeError(f"influxd did not compact {dbs} within {timeout:g} s")


def provision(server: InfluxServer, project: str, serial: str, keep: str) -> None:
    """The real ``sensorkit provision`` for one kit (its password is not needed here)."""
    env = {**os.environ, "SENSORKIT_ADMIN_PASSWORD": server.admin[1]}
    cmd = [
        sys.executable,
        "-m",
        "agent",
        "provision",
        "--url",
        server.url,
        "--project",
        project,
        "--serial",
        serial,
        "--keep",
        keep,
        "--keep-means",
        f"{KEEP_MEANS_YEARS}y",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"provision failed: {done.stderr}")


def means_statements(server: InfluxServer, db: str, start: int, end: int) -> list[str]:
    """Each continuous query's own SELECT ... INTO on ``db``, bounded to [start, end)."""
    out = []
    for result in json.loads(server.post("/query", {"q": "SHOW CONTINUOUS QUERIES"}, b""))[
        "results"
    ]:
        for series in result.get("series", []):
            if series["name"] != db:
                continue
            for _name, text in series.get("values", []):
                select = re.search(r" BEGIN (SELECT .*) END$", text)[1]
                where = f" WHERE time >= {start}s AND time < {end}s GROUP BY "
                out.append(select.replace(" GROUP BY ", where, 1))
    if len(out) != 2:
        raise RuntimeError(f"expected the two means queries on {db}, found {out}")
    return out


def measure_raw(server: GrowthServer, pace: int, days: int, now: int) -> dict:
    """Forever and provisioned raw bytes for ``days`` of points at ``pace``."""
    end = now - now % 3600
    start = end - days * DAY + 3600  # inside the 90 days the raw policy accepts
    span = end - start
    lines = kit_lines(start, end, pace)
    forever, raw = f"forever_{pace}", f"growth_kit{pace}"
    server.run(f'CREATE DATABASE "{forever}"')
    provision(server, "growth", f"kit{pace}", "90d")
    began = time.monotonic()
    server.write(forever, lines)
    server.write(raw, lines)
    wrote = time.monotonic() - began
    waited = wait_compacted(server, [forever, raw])
    f_shards, f_fixed = database_bytes(server, forever)
    r_shards, r_fixed = database_bytes(server, raw)
    print(
        f"pace {pace} s: {len(lines):,} points over {span / DAY:.2f} days into each "
        f"(written in {wrote:.1f} s, compacted {waited:.1f} s later)"
    )
    return {
        "points": len(lines),
        "bytes_per_point": round(f_shards / len(lines), 2),
        "forever_per_year": round(f_shards * YEAR / span),
        "forever_fixed": f_fixed,
        "raw_90d": round(r_shards * 90 * DAY / span),
        "raw_fixed": r_fixed,
    }


def measure_means(server: GrowthServer, now: int) -> tuple[int, int]:
    """(means shard bytes for one whole year, fixed bytes of the means database).

    A kit provisioned with ``--keep inf`` takes a whole year of back-dated points, and its
    queries' SELECT runs over that year: a year of means measured, not extrapolated. The
    means do not depend on the pace (one point an hour and a day either way).
    """
    end = now - now % DAY
    start = end - 365 * DAY
    raw, means = "growth_year", "growth_year_means"
    provision(server, "growth", "year", "inf")
    server.write(raw, kit_lines(start, end, 60, seed=3))
    for statement in means_statements(server, raw, start, end):
        server.run(statement)
    waited = wait_compacted(server, [means])
    print(f"means: a year of them from 525,600 points (compacted {waited:.1f} s later)")
    return database_bytes(server, means)


def wal_per_day(pace: int, now: int) -> int:
    """WAL bytes one day of points costs before its shard goes cold (influxd's defaults)."""
    server = GrowthServer(cold="10m").start()
    try:
        server.run('CREATE DATABASE "hot"')
        end = now - now % 3600
        server.write("hot", kit_lines(end - DAY, end, pace, seed=2))
        return allocated(server.root / "wal" / "hot")
    finally:
        server.cleanup()


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=90, help="days of points written (90)")
    parser.add_argument("--pace", default="60,10", help="seconds between telegrams (60,10)")
    args = parser.parse_args()
    paces = [int(p) for p in args.pace.split(",")]
    now = int(time.time())
    server = GrowthServer(cold="1s").start()
    try:
        results = {pace: measure_raw(server, pace, args.days, now) for pace in paces}
        means_year, means_fixed = measure_means(server, now)
    finally:
        server.cleanup()
    for r in results.values():
        r["means_per_year"] = means_year
        r["provisioned_fixed"] = r.pop("raw_fixed") + means_fixed
        r["forever_10y"] = KEEP_MEANS_YEARS * r["forever_per_year"] + r["forever_fixed"]
        r["provisioned_10y"] = r["raw_90d"] + KEEP_MEANS_YEARS * means_year + r["provisioned_fixed"]
    for pace in paces:
        results[pace]["wal_per_day"] = wal_per_day(pace, now)
    print()
    for pace, r in results.items():
        ratio = r["provisioned_10y"] / r["forever_10y"]
        r["ratio_10y"] = round(ratio, 3)
        print(f"one kit, a telegram every {pace} s ({r['bytes_per_point']} bytes a point on disk):")
        print(
            f"  forever:     {human(r['forever_per_year'])} a year, without end; "
            f"after {KEEP_MEANS_YEARS} years {human(r['forever_10y'])}"
        )
        print(
            f"  provisioned: raw steady at {human(r['raw_90d'])} (90 days) from day 90, "
            f"means {human(r['means_per_year'])} a year; after {KEEP_MEANS_YEARS} years "
            f"{human(r['provisioned_10y'])} ({ratio:.1%} of forever)"
        )
        print(
            f"  while a shard is written: {human(r['wal_per_day'])} of WAL a day of points "
            "(1 day of it provisioned, up to 7 forever)"
        )
        print(
            f"  fifty kits after {KEEP_MEANS_YEARS} years: forever "
            f"{human(50 * r['forever_10y'])}, provisioned {human(50 * r['provisioned_10y'])}"
        )
    main_pace = paces[0]
    figures = {
        "pace_s": main_pace,
        "forever_bytes_per_kit_year": results[main_pace]["forever_per_year"],
        "raw_90d_bytes_per_kit": results[main_pace]["raw_90d"],
        "means_bytes_per_kit_year": results[main_pace]["means_per_year"],
        "forever_bytes_per_kit_10y": results[main_pace]["forever_10y"],
        "provisioned_bytes_per_kit_10y": results[main_pace]["provisioned_10y"],
        "ratio": results[main_pace]["ratio_10y"],
        "by_pace": {str(p): r for p, r in results.items()},
    }
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
