"""Append benchmark: how fast the durable queue takes points, and what one telegram a second
costs the SD card (fsyncs per minute, bytes written per byte of line protocol).

(a) pushed: ``DurableQueue.append`` of one telegram's line each, as fast as possible for a few
    seconds, default settings (``sync_interval`` 10 s, 64 MB cap). The rate counts the group
    commit that makes the appended points power-cut safe (a final ``sync()``), too.
(b) paced: the agent's InfluxDB output (``open_outputs`` of a default agent.ini: queue + sender
    thread) gets an ident and then one data telegram a second for 90 s, in a child process
    -- once with a real influxd up (points delivered online), once with the server down
    (everything stays on disk). Both children run at the same time.

    fsyncs: counted for real with ``strace -f -ttt -e trace=fsync,fdatasync`` on the child (all
    its threads); only calls inside the measured window count.

    write amplification = (write_bytes - cancelled_write_bytes) / bytes of line protocol
    appended, from the child's own /proc/self/io, read after setup and again after the output
    closed (final flush, segment emptied). The kernel charges write_bytes to the process
    when it dirties a page of the page cache (4 KiB at a time), not when the page reaches the
    disk; a page dirtied again before writeback is charged once (it is written once), a page
    written back (e.g. by an fsync) and dirtied again is charged again, and dirty pages that are
    truncated away before writeback (a segment emptied once all of it was delivered) are credited
    back in cancelled_write_bytes. So the difference is what this process makes the kernel
    write back, including pages still dirty at the end (already charged, written later by the
    flusher). A trailing os.sync() would add nothing: writeback done by kernel threads is never
    charged to the process, which is why the figure is taken from dirtying, not from writeback.
    Pages of SQLite's memory-mapped -shm file count too (charged at the write fault), and so do
    ext4 metadata blocks the process dirties itself (inode table entries, via the block device's
    page cache); what the ext4 journal thread (jbd2) writes on top is not charged to anyone's
    /proc/PID/io and is left out. State files live in a temp dir on a disk-backed file system
    (tmpfs pages are never counted). An alternative check of where the bytes go: the
    writeback:writeback_dirty_folio trace event, per inode (see benchmarks/README.md).

    python benchmarks/append.py [--seconds 90] [--pushed-seconds 3]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import InfluxServer, data_lines, emit, tmpdir, write_ini  # noqa: E402

from agent.buffer import DurableQueue  # noqa: E402
from agent.config import load  # noqa: E402

DB = "bench_1"
FIELDS = (
    ("pm_25", "pcs/0.01cf"),
    ("pm_10", "pcs/0.01cf"),
    ("dtemp", "C"),
    ("drh", "%"),
    ("temp", "C"),
    ("rh", "%"),
    ("hpa", "hPa"),
)


def read_io() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        out[key] = int(value)
    return out


# -- (a) pushed ------------------------------------------------------------------------------


def pushed(seconds: float, limit: int = 300_000) -> dict[str, float]:
    work = tmpdir("sensorkit-append-")
    try:
        settings = load(write_ini(work, "http://127.0.0.1:9"))
        s = settings.influx
        queue = DurableQueue(
            settings.kit.state_dir,
            "influx",
            max_bytes=int(s.queue_max_mb * 1_000_000),
            sync_interval=s.sync_interval,
        )
        lines = data_lines(limit)
        n = 0
        started = time.perf_counter()
        deadline = started + seconds
        while n < limit:
            queue.append([(DB, lines[n])])
            queue.maybe_sync()  # what the sender thread does between sends
            n += 1
            if n % 1000 == 0 and time.perf_counter() > deadline:
                break
        appended = time.perf_counter() - started
        queue.sync()
        total = time.perf_counter() - started
        depth, fsyncs = queue.depth, queue.fsyncs
        queue.close()
        assert depth == n, (depth, n)
        return {
            "appends": n,
            "seconds": total,
            "appends_per_s": n / total,
            "journal_only_per_s": n / appended,
            "commit_s": total - appended,
            "group_commits": fsyncs,
            "sync_interval": s.sync_interval,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- (b) paced, the child ----------------------------------------------------------------------


def paced_child(url: str, work: Path, seconds: int, result: Path) -> None:
    """One telegram a second through the agent's InfluxDB output; writes figures to ``result``."""
    import random

    from agent.outputs import open_outputs
    from agent.series import SeriesEncoder
    from agent.telegram import Data, Ident

    settings = load(work / "agent.ini")
    (output,) = open_outputs(settings, "influx", database=settings.influx.database)
    output.start()
    ident = Ident(
        project="bench",
        serial="1",
        label="bench",
        geolocation="51.42,6.13,22.9",
        description="sensorkit append benchmark",
        fields=("time",) + tuple(f for f, _ in FIELDS),
        units=("s",) + tuple(u for _, u in FIELDS),
        types=("time",) + ("float",) * len(FIELDS),
        version="bench",
    )
    counter = SeriesEncoder()  # the same encoding, to count the bytes of line protocol
    rnd = random.Random(1)
    line_bytes = 0
    time.sleep(0.5)  # let the sender settle (first database check happens with the ident)
    io0, t0 = read_io(), time.time()
    base = int(t0)
    telegrams = [ident] + [
        Data(
            time=base + 1 + i,
            values=(
                ("pm_25", float(rnd.randint(50, 900))),
                ("pm_10", float(rnd.randint(5, 120))),
                ("dtemp", round(rnd.uniform(10, 30), 1)),
                ("drh", round(rnd.uniform(20, 90), 1)),
                ("temp", round(rnd.uniform(10, 30), 2)),
                ("rh", round(rnd.uniform(20, 90), 1)),
                ("hpa", round(rnd.uniform(990, 1030), 1)),
            ),
        )
        for i in range(seconds)
    ]
    for i, telegram in enumerate(telegrams):
        delay = t0 + i - time.time()
        if delay > 0:
            time.sleep(delay)
        line_bytes += sum(len(line.encode()) for _, line in counter.encode(telegram))
        output.send(telegram)
    time.sleep(1.0)  # the last one's delivery (server up)
    io1, t1 = read_io(), time.time()  # the steady state ends here
    status = output.status()
    output.close()  # final flush, counters, SQLite's closing checkpoint
    io2, t2 = read_io(), time.time()

    def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {k: b[k] - a[k] for k in ("write_bytes", "cancelled_write_bytes", "wchar")}

    result.write_text(
        json.dumps(
            {
                "t0": t0,
                "t1": t1,
                "t2": t2,
                "telegrams": len(telegrams),
                "line_bytes": line_bytes,
                "steady": delta(io0, io1),
                "close": delta(io1, io2),
                "queue_fsyncs": output.queue.fsyncs,
                "queued_at_end": status["queued"],
                "delivered": status["delivered"],
            }
        )
    )


# -- (b) paced, the parent ---------------------------------------------------------------------


def count_fsyncs(trace: Path, t0: float, t1: float) -> tuple[int, int]:
    """(calls inside [t0, t1], calls in all) from an ``strace -f -ttt`` output file."""
    inside = total = 0
    pattern = re.compile(r"^\d+\s+(\d+\.\d+)\s+(fsync|fdatasync)\(")
    for line in trace.read_text().splitlines():
        match = pattern.match(line)
        if match:  # a call's start ("<unfinished ...>" too); "resumed" lines do not match
            total += 1
            if t0 <= float(match.group(1)) <= t1:
                inside += 1
    return inside, total


def start_paced(name: str, url: str, seconds: int, strace: str | None) -> dict:
    work = tmpdir(f"sensorkit-append-{name}-")
    write_ini(work, url)
    result, trace = work / "result.json", work / "strace.txt"
    cmd = [sys.executable, __file__, "--paced-child", url, str(work), str(seconds), str(result)]
    if strace:
        cmd = [strace, "-f", "-ttt", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(trace)] + cmd
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent)
    return {"name": name, "work": work, "proc": proc, "result": result, "trace": trace}


def finish_paced(run: dict, strace: str | None) -> dict:
    if run["proc"].wait() != 0:
        raise RuntimeError(f"paced child ({run['name']}) failed: exit {run['proc'].returncode}")
    r = json.loads(run["result"].read_text())
    r["minutes"] = (r["t1"] - r["t0"]) / 60
    if strace:
        r["fsyncs"], total = count_fsyncs(run["trace"], r["t0"], r["t1"])
        r["fsyncs_close"], _ = count_fsyncs(run["trace"], r["t1"], r["t2"] + 1)
        r["fsyncs_whole_process"], r["fsync_source"] = total, "strace"
    else:
        r["fsyncs"], r["fsyncs_close"], r["fsyncs_whole_process"] = r["queue_fsyncs"], 0, None
        r["fsync_source"] = "the queue's own fsyncs count (strace not available)"
    r["fsyncs_per_min"] = r["fsyncs"] / r["minutes"]
    for part in ("steady", "close"):
        io = r[part]
        io["net"] = io["write_bytes"] - io["cancelled_write_bytes"]
    r["write_amplification"] = r["steady"]["net"] / r["line_bytes"]
    r["write_amplification_incl_close"] = (r["steady"]["net"] + r["close"]["net"]) / r["line_bytes"]
    shutil.rmtree(run["work"], ignore_errors=True)
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=90, help="paced run length (default 90)")
    parser.add_argument("--pushed-seconds", type=float, default=3.0)
    parser.add_argument("--paced-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paced_child:
        url, work, seconds, result = args.paced_child
        paced_child(url, Path(work), int(seconds), Path(result))
        return 0

    print(
        f"(a) pushed: DurableQueue.append of one line each, for {args.pushed_seconds:g} s or"
        " 300,000 appends (under the 64 MB cap), whichever comes first"
    )
    p = pushed(args.pushed_seconds)
    print(
        f"    {p['appends']:,} appends in {p['seconds']:.2f} s incl. the final group commit "
        f"({p['commit_s'] * 1000:.0f} ms): {p['appends_per_s']:,.0f} durable appends/s "
        f"(journal alone: {p['journal_only_per_s']:,.0f}/s); target >= 5,000/s -> "
        f"{'met' if p['appends_per_s'] >= 5000 else 'MISSED'}"
    )

    strace = shutil.which("strace")
    print(
        f"\n(b) paced: one telegram a second for {args.seconds} s through the InfluxDB output, "
        "default settings;\n    server up and server down at the same time, each in its own "
        f"process; fsyncs counted by {'strace' if strace else 'the queue (strace missing)'}"
    )
    from influxd import free_port

    server = InfluxServer().start()
    try:
        runs = [
            start_paced("up", server.url, args.seconds, strace),
            start_paced("down", f"http://127.0.0.1:{free_port()}", args.seconds, strace),
        ]
        up, down = (finish_paced(run, strace) for run in runs)
        rows = server.rows("SELECT count(pm_25) FROM data", DB)
        in_db = rows[0]["count"] if rows else 0
    finally:
        server.cleanup()

    print(
        "    write amplification = (write_bytes - cancelled_write_bytes) / line-protocol bytes,\n"
        "    from the child's /proc/self/io: charged when a page-cache page is dirtied (a page\n"
        "    dirtied twice before writeback counts once; re-dirtied after an fsync counts again),\n"
        "    credited back when a dirty page is truncated before writeback (an emptied segment).\n"
        "    Steady state: from the first telegram to just before close; the close (final commit\n"
        "    and SQLite's checkpoint, once per agent stop) is shown apart. The -shm mmap and the\n"
        "    metadata blocks the process dirties count; ext4's own journal (jbd2) writes do not."
    )
    for name, r in (("server up", up), ("server down", down)):
        st, cl = r["steady"], r["close"]
        print(
            f"    {name}: {r['telegrams']} telegrams ({r['minutes']:.2f} min),"
            f" {r['line_bytes']:,} B of line protocol; {r['delivered']} points delivered,"
            f" {r['queued_at_end']} left queued"
        )
        print(
            f"        fsyncs: {r['fsyncs']} = {r['fsyncs_per_min']:.1f}/min; +{r['fsyncs_close']}"
            f" at close ({r['fsync_source']}; whole process incl. setup"
            f" {r['fsyncs_whole_process']}; the queue's own count {r['queue_fsyncs']})"
        )
        print(
            f"        written: {st['write_bytes']:,} - {st['cancelled_write_bytes']:,} cancelled ="
            f" {st['net']:,} B -> write amplification {r['write_amplification']:.2f}"
            f" (write() calls carried {st['wchar']:,} B)"
        )
        print(
            f"        close: +{cl['net']:,} B net once"
            f" -> {r['write_amplification_incl_close']:.2f} over this run including it"
        )
    print(f"    server up: {in_db} data points queryable in InfluxDB (expected {args.seconds})")
    worst = max((up, down), key=lambda r: r["write_amplification"])
    worst_name = "server down" if worst is down else "server up"
    fsync_worst = max(up["fsyncs_per_min"], down["fsyncs_per_min"])
    print(
        f"\nappends/s {p['appends_per_s']:,.0f} (target >= 5,000: "
        f"{'met' if p['appends_per_s'] >= 5000 else 'MISSED'}); write amplification "
        f"{worst['write_amplification']:.2f}, the worse case: {worst_name} (target <= 3: "
        f"{'met' if worst['write_amplification'] <= 3 else 'MISSED'}); fsyncs/min "
        f"{up['fsyncs_per_min']:.1f} up, {down['fsyncs_per_min']:.1f} down"
    )
    emit(
        {
            "appends_per_s": round(p["appends_per_s"]),
            "fsyncs_per_min": round(fsync_worst, 1),
            "fsyncs_per_min_up": round(up["fsyncs_per_min"], 1),
            "fsyncs_per_min_down": round(down["fsyncs_per_min"], 1),
            "write_amplification": round(worst["write_amplification"], 2),
            "write_amplification_case": worst_name,
            "write_amplification_up": round(up["write_amplification"], 2),
            "write_amplification_down": round(down["write_amplification"], 2),
            "write_amplification_up_incl_close": round(up["write_amplification_incl_close"], 2),
            "write_amplification_down_incl_close": round(down["write_amplification_incl_close"], 2),
            "fsync_source": up["fsync_source"],
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
