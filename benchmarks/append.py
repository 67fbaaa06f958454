"""Append benchmark: how fast the queue takes points, and what a running kit costs the SD card.

(a) pushed: ``DurableQueue.append`` of one telegram's line each, as fast as possible for a few
    seconds, then the flush that makes them power-cut safe.
(b) paced: the real ``sensorkit run`` (three simulated sensors, InfluxDB output, console to a
    RAM file) at the shipped agent.ini's pace and at one telegram a second, with the server up
    and with it down, four processes at once, for ``--seconds`` (default 600). For each:

    - bytes written: ``write_bytes - cancelled_write_bytes`` of the agent's /proc/PID/io from
      after start-up to just before the stop, and the whole run including start-up and stop
      from ``wait4``'s ``ru_oublock`` (the same counter at exit). This is what the process makes
      the kernel write to disk-backed files: the queue's segments, head, counters, quarantine,
      the window log and the status snapshot (these two live in RAM, /dev/shm or /run, so
      they cost nothing; their size is shown apart). The kernel charges a page (4 KiB) when it
      is dirtied and credits it back when it is truncated before writeback.
    - file-system metadata: on an ext4 without a journal the agent's own thread also dirties
      the inode-table and bitmap blocks that its appends change (``i_size``, ``mtime``, a new
      block), and is charged for them; with a journal, jbd2 writes them. Where tracefs is
      there (root), the ``writeback_dirty_folio`` trace event tells them apart
      (``_dirtied.py``): they are shown apart from the bytes of the agent's files, and the
      pages of each file are listed.
    - fdatasyncs: counted with ``strace -f -e trace=fsync,fdatasync`` (all threads).
    - floor: what any store-and-forward queue must write: with the server down, every byte of
      line protocol plus one page per flush that carries new points; with it up, nothing
      (points leave before a flush).
    - per day: the steady rate times a day, plus one start and stop, plus the delivery counters
      the queue writes once an hour (which a run shorter than an hour does not see).

Targets: server up <= 1 MB a day at the shipped pace; server down <= 1.5 x the floor.

    python benchmarks/append.py [--seconds 600] [--pushed-seconds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SENSORS, InfluxServer, data_lines, emit, tmpdir, write_ini  # noqa: E402
from _dirtied import Dirtied, device_inode, journal, metadata_pages, pages_by_file  # noqa: E402

from agent.buffer import COUNTERS_EVERY, DurableQueue  # noqa: E402
from agent.config import load  # noqa: E402
from agent.series import SeriesEncoder  # noqa: E402
from agent.status import snapshot_path  # noqa: E402
from agent.telegram import parse_telegrams  # noqa: E402

PAGE = 4096
DAY = 86400
WARMUP = 30.0


def shipped_interval() -> int:
    return load(ROOT / "agent.ini").kit.interval


# -- (a) pushed ------------------------------------------------------------------------------


def pushed(seconds: float, limit: int = 300_000) -> dict[str, float]:
    work = tmpdir("sensorkit-append-")
    try:
        queue = DurableQueue(work, "influx", max_bytes=10**10)
        lines = data_lines(limit)
        n = 0
        started = time.perf_counter()
        deadline = started + seconds
        while n < limit:
            queue.append([("bench_1", lines[n])])
            n += 1
            if n % 1000 == 0 and time.perf_counter() > deadline:
                break
        appended = time.perf_counter() - started
        queue.sync()
        total = time.perf_counter() - started
        queue.close()
        return {"appends": n, "appends_per_s": n / total, "flush_s": total - appended}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- (b) paced ---------------------------------------------------------------------------------


def io(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, value = line.split(":")
        out[key] = int(value)
    return out


def net(sample: dict[str, int]) -> int:
    return sample["write_bytes"] - sample["cancelled_write_bytes"]


def start(name: str, url: str, interval: int, seconds: int, strace: str | None) -> dict:
    work = tmpdir(f"sensorkit-append-{name}-")
    console = Path("/dev/shm") / f"sensorkit-append-{name}-{os.getpid()}.jsonl"
    ini = write_ini(work, url, kit=f"interval = {interval}", sensors=SENSORS)
    ini.write_text(
        ini.read_text().replace(
            "[console]\nenabled = no", f"[console]\nenabled = yes\nfile = {console}"
        )
    )
    cmd = [sys.executable, "-m", "agent", "run", "-c", str(ini), "--duration", str(seconds)]
    trace = Path("/dev/shm") / f"sensorkit-append-{name}-{os.getpid()}.strace"  # not charged
    if strace:
        cmd = [
            strace,
            "-f",
            "-ttt",
            "-qq",
            "-e",
            "trace=fsync,fdatasync",
            "-y",
            "-o",
            str(trace),
        ] + cmd
    # The log goes where journald keeps it on a Pi (RAM unless made persistent); its size
    # is shown apart, like the status snapshot.
    log_path = Path("/dev/shm") / f"sensorkit-append-{name}-{os.getpid()}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return {"name": name, "work": work, "proc": proc, "console": console, "trace": trace,
            "interval": interval, "up": "down" not in name, "t0": time.monotonic(), "log": log_path,
            "traced": bool(strace)}  # fmt: skip


def agent_pid(run: dict) -> int:
    """The agent's pid: the child itself, or strace's child."""
    proc = run["proc"]
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    if run["traced"] and children.exists() and children.read_text().strip():
        return int(children.read_text().split()[0])
    return proc.pid


def sample_until_exit(runs: list[dict], seconds: int) -> None:
    """The io counters after the warm-up and as late as possible before each stops."""
    while any("usage" not in r for r in runs):
        now = time.monotonic()
        for run in runs:
            if "usage" in run:
                continue
            reaped, status, usage = os.wait4(run["proc"].pid, os.WNOHANG)  # keeps rusage
            if reaped:
                run["status"], run["usage"] = status, usage
                continue
            pid = agent_pid(run)
            try:
                sample = io(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            elapsed = now - run["t0"]
            if elapsed >= WARMUP and "first" not in run:
                run["first"], run["first_t"], run["first_wall"] = sample, now, time.time()
            if elapsed <= seconds - 1.0:
                run["last"], run["last_t"], run["last_wall"] = sample, now, time.time()
            run["pid"] = pid
        time.sleep(0.2)


def fdatasyncs(trace: Path, start: float, stop: float) -> int:
    """fsync/fdatasync calls on segment files between two wall times (-1 without strace)."""
    if not trace.exists():
        return -1
    pattern = re.compile(r"^\d+\s+(\d+\.\d+)\s+(fsync|fdatasync)\((\d+)<([^>]*\.seg)>")
    calls = 0
    for line in trace.read_text().splitlines():
        match = pattern.match(line)
        if match and start <= float(match.group(1)) <= stop:
            calls += 1
    return calls


def line_bytes(console: Path, start: float, stop: float) -> int:
    """Bytes of line protocol of the telegrams stamped between two wall times."""
    encoder = SeriesEncoder()
    text = console.read_text() if console.exists() else ""
    total = 0
    for telegram in parse_telegrams(text, str(console)) if text.strip() else []:
        lines = encoder.encode(telegram)
        if getattr(telegram, "values", None) is not None and start <= telegram.time <= stop:
            total += sum(len(line.encode()) + 1 for _, line in lines)
    return total


def finish(run: dict, dirtied: list | None, device: int) -> dict:
    """The run's figures; ``dirtied`` (the trace's pages, None without one) takes the file
    system's own metadata out of the bytes charged to the agent."""
    status, usage = run["status"], run["usage"]
    # ru_oublock counts every page dirtied, also those truncated before writeback (a segment
    # cut to nothing once delivered); /proc/PID/io credits those back: take the credit the
    # last sample saw (what is cancelled during the stop itself is still counted).
    whole_io = max(0, usage.ru_oublock * 512 - run["last"]["cancelled_write_bytes"])
    steady_s = run["last_t"] - run["first_t"]
    steady_io = net(run["last"]) - net(run["first"])
    meta_steady = meta_whole = 0
    files: dict[str, int] = {}
    if dirtied is not None:
        pids = {run["proc"].pid, run["pid"]}
        meta_steady = PAGE * metadata_pages(dirtied, pids, device, run["first_t"], run["last_t"])
        meta_whole = PAGE * metadata_pages(dirtied, pids, device, 0.0, float("inf"))
        files = pages_by_file(dirtied, pids, run["work"], run["first_t"], run["last_t"])
    steady, whole = steady_io - meta_steady, whole_io - meta_whole
    lines = line_bytes(run["console"], run["first_wall"], run["last_wall"])
    syncs = fdatasyncs(run["trace"], run["first_wall"], run["last_wall"])
    snapshot = snapshot_path(run["work"] / "state")
    per_day = steady / steady_s * DAY
    once = max(0, whole - steady)  # start-up and stop: once a day at most
    meta_per_day = meta_steady / steady_s * DAY + max(0, meta_whole - meta_steady)
    io_per_day = steady_io / steady_s * DAY + max(0, whole_io - steady_io)
    # Deliveries change the counters, written once an hour: a shorter run does not see it.
    counters = (DAY / COUNTERS_EVERY) * PAGE if run["up"] and steady_s < COUNTERS_EVERY else 0
    floor = 0.0 if run["up"] else (lines + syncs * PAGE) / steady_s * DAY
    result = {
        "name": run["name"],
        "interval": run["interval"],
        "steady_s": steady_s,
        "steady_bytes": steady,
        "whole_bytes": whole,
        "line_bytes": lines,
        "fdatasyncs": syncs,
        "bytes_per_day": per_day + once + counters,
        "metadata_per_day": meta_per_day if dirtied is not None else None,
        "io_per_day": io_per_day + counters,
        "pages_by_file": files,
        "floor_per_day": floor,
        "counters_per_day": counters,
        "snapshot_bytes": snapshot.stat().st_size if snapshot.exists() else 0,
        "log_per_day": run["log"].stat().st_size / (time.monotonic() - run["t0"]) * DAY,
        "exit": os.waitstatus_to_exitcode(status),
    }
    run["console"].unlink(missing_ok=True)
    run["trace"].unlink(missing_ok=True)
    run["log"].unlink(missing_ok=True)
    shutil.rmtree(run["work"], ignore_errors=True)
    return result


def rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600, help="paced run length (default 600)")
    parser.add_argument("--pushed-seconds", type=float, default=3.0)
    args = parser.parse_args()

    p = pushed(args.pushed_seconds)
    print(
        f"(a) pushed: {p['appends']:,} appends of one line, then one flush "
        f"({p['flush_s'] * 1000:.0f} ms): {p['appends_per_s']:,.0f} durable appends/s"
    )
    strace = shutil.which("strace")
    shipped = shipped_interval()
    paces = [(shipped, "shipped"), (1, "1s")] if shipped != 1 else [(1, "1s")]
    print(
        f"\n(b) paced: sensorkit run with three simulated sensors for {args.seconds} s, at the "
        f"shipped pace (interval {shipped} s) and at 1 s, server up and down, four at once;"
        f" fdatasyncs by {'strace' if strace else 'nothing (install strace)'}"
    )
    from influxd import free_port

    base = tmpdir("sensorkit-append-fs-")
    device, journaled = device_inode(base), journal(base)
    base.rmdir()
    try:
        tracer: Dirtied | None = Dirtied(f"sensorkit-append-{os.getpid()}")
    except OSError as err:
        tracer = None
        print(
            f"  no trace of dirtied pages ({err}; needs root and tracefs): the figures include"
            " what the file system's own metadata costs where it is charged to the agent"
        )
    print(
        "  temp dirs on "
        + {True: "ext4 with a journal (its metadata is written by jbd2, not charged to the"
           " agent)", False: "ext4 without a journal (the agent's own thread writes the inode"
           " and bitmap blocks its appends change: shown apart)", None: "a file system that is"
           " not ext4"}[journaled]
    )  # fmt: skip
    server = InfluxServer().start()
    try:
        if tracer is not None:  # and every process started from now on (the agents, straces)
            tracer.follow(os.getpid())
        runs = []
        for interval, label in paces:
            runs.append(start(f"{label}-up", server.url, interval, args.seconds, strace))
            down = f"http://127.0.0.1:{free_port()}"
            runs.append(start(f"{label}-down", down, interval, args.seconds, strace))
        sample_until_exit(runs, args.seconds)
        dirtied = tracer.pages() if tracer is not None else None
        results = [finish(run, dirtied, device) for run in runs]
    finally:
        server.cleanup()
        if tracer is not None:
            tracer.close()

    for r in results:
        if r["exit"] != 0:
            raise RuntimeError(f"{r['name']}: sensorkit run exited {r['exit']}")
        ratio = r["bytes_per_day"] / r["floor_per_day"] if r["floor_per_day"] else None
        print(
            f"  {r['name']:12s} interval {r['interval']:2d} s: "
            f"{r['bytes_per_day'] / 1e6:7.3f} MB/day"
            f" written (steady {r['steady_bytes']:,} B in {r['steady_s']:.0f} s; whole run "
            f"{r['whole_bytes']:,} B; {r['fdatasyncs']} fdatasyncs; "
            f"{r['counters_per_day'] / 1e3:.0f} kB/day of hourly counters added)"
        )
        if ratio is not None:
            print(
                f"  {'':12s} floor {r['floor_per_day'] / 1e6:.3f} MB/day ({r['line_bytes']:,} B of "
                f"line protocol + a page per flush): ratio {ratio:.2f}"
            )
        if r["metadata_per_day"] is not None:
            print(
                f"  {'':12s} file-system metadata charged to the agent (apart): "
                f"{r['metadata_per_day'] / 1e6:.3f} MB/day; /proc/PID/io in all "
                f"{r['io_per_day'] / 1e6:.3f} MB/day"
            )
            if r["pages_by_file"]:
                print(
                    f"  {'':12s} pages dirtied in the steady part, by file: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(r["pages_by_file"].items()))
                )
        print(
            f"  {'':12s} status snapshot in RAM: {r['snapshot_bytes']} B, every 5 s (not the card);"
            f" log {r['log_per_day'] / 1e3:,.0f} kB/day (to journald)"
        )
    by = {r["name"]: r for r in results}
    up = by[f"{paces[0][1]}-up"]
    down = by[f"{paces[0][1]}-down"]
    down_ratio = down["bytes_per_day"] / down["floor_per_day"]
    print(
        f"\nshipped pace: server up {up['bytes_per_day'] / 1e6:.3f} MB/day (target <= 1: "
        f"{'met' if up['bytes_per_day'] <= 1e6 else 'MISSED'}); server down "
        f"{down['bytes_per_day'] / 1e6:.3f} MB/day = {down_ratio:.2f} x the floor (target <= 1.5: "
        f"{'met' if down_ratio <= 1.5 else 'MISSED'})"
    )
    one = {k.split("-")[1]: v for k, v in by.items() if k.startswith("1s")}
    emit(
        {
            "appends_per_s": round(p["appends_per_s"]),
            "bytes_per_day_up": round(up["bytes_per_day"]),
            "bytes_per_day_down": round(down["bytes_per_day"]),
            "floor_per_day_down": round(down["floor_per_day"]),
            "ratio_down": round(down_ratio, 3),
            "bytes_per_day_up_1s": round(one["up"]["bytes_per_day"]) if one else None,
            "bytes_per_day_down_1s": round(one["down"]["bytes_per_day"]) if one else None,
            "floor_per_day_down_1s": round(one["down"]["floor_per_day"]) if one else None,
            "fsyncs_per_min_down": round(down["fdatasyncs"] / (args.seconds / 60), 2),
            "metadata_per_day_down": rounded(down["metadata_per_day"]),
            "io_per_day_down": round(down["io_per_day"]),
            "journal": journaled,
            "shipped_interval": shipped,
            "seconds": args.seconds,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
