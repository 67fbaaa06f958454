"""Fault injection around a real ``sensorkit run``: outages, kill -9, a hung server, the cap.

The ground truth of what the agent built is its console output (JSON Lines in a file); what
InfluxDB holds is compared with it point by point: every data telegram exactly once, with
its values.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_sensorkit as sensorkit
from conftest import write_config
from httpstub import FlakyProxy, SilentServer
from influxd import InfluxServer, free_port

from agent import segments
from agent.ramfiles import ram_path
from agent.stage import staged_frames

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata" / "bdp-test_sense.json"
PASSWORD = "pw-never-shown-5be1"


# -- helpers -----------------------------------------------------------------------------------


def kit_config(tmp_path: Path, url: str, serial: str, **influx: object) -> Path:
    settings = {
        "url": url,
        "username": "kit",
        "password": PASSWORD,
        "timeout": 2,
        "retry_max": 1,
        "sync_interval": 0.5,
        **influx,
    }
    text = f"""
[kit]
project = F
serial = {serial}
label = bench
geolocation = 51.420635,6.1356117
interval = 1
state_dir = {tmp_path / "state"}
[dylos]
enabled = yes
backend = simulated
speedup = 600
[dht22]
enabled = yes
backend = simulated
interval = 2
[console]
enabled = yes
file = {tmp_path / "console.jsonl"}
[influx]
"""
    text += "".join(f"{key} = {value}\n" for key, value in settings.items())
    return write_config(tmp_path / "agent.ini", text)


def start_agent(config: Path, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(config), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),  # noqa: SIM115 - the child keeps it
    )


def status_json(config: Path) -> tuple[dict, str]:
    done = sensorkit("status", "-c", str(config), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stdout


def console_data(tmp_path: Path) -> list[dict]:
    """The data telegrams the agent built, in order (a torn last line from a kill is skipped)."""
    out = []
    path = tmp_path / "console.jsonl"
    for text in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if "data" in record:
            out.append(record["data"])
    return out


def stored_data(server: InfluxServer, db: str) -> list[dict]:
    try:
        return server.rows("SELECT * FROM data", db)
    except RuntimeError as err:  # before the agent created the database
        if "database not found" in str(err):
            return []
        raise


def assert_exactly_once(server: InfluxServer, db: str, built: list[dict], missing=()) -> None:
    """Every built data telegram is in ``db`` once, with its values (``missing``: times the
    queue provably never accepted)."""
    times = [d["time"] for d in built]
    assert len(set(times)) == len(times), "the agent built two data telegrams for one second"
    expected = [d for d in built if d["time"] not in set(missing)]
    rows = stored_data(server, db)
    got_times = sorted(r["time"] for r in rows)
    assert len(got_times) == len(set(got_times)), "a point is stored twice (in two series)"
    assert got_times == sorted(d["time"] for d in expected)
    by_time = {r["time"]: r for r in rows}
    for record in expected:
        row = by_time[record["time"]]
        for key, value in record.items():
            if key in ("time", "geolocation"):
                continue
            assert row[key] == pytest.approx(value, rel=0, abs=0), (record["time"], key)
        fields = {k for k, v in row.items() if v is not None} - {"time", "label", "geolocation"}
        assert fields - {"new"} == set(record) - {"time", "geolocation"}


def queued_lines(state_dir: Path, name: str = "influx") -> list[str]:
    """Every record in the queue's segment files and its stage in RAM (what a restart takes
    back after a kill -9), read without changing them."""
    out = []
    blobs = [p.read_bytes() for p in sorted((state_dir / f"{name}.log").glob("*.seg"))]
    for data in blobs + [staged_frames(ram_path(state_dir, f"{name}.stage"))]:
        for item in segments.walk(data):
            if isinstance(item, segments.Frame):
                out += data[item.body : item.stop].decode().splitlines()
    return out


def integrity(state_dir: Path, name: str = "influx") -> str:
    db = sqlite3.connect(state_dir / f"{name}.sqlite3")
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


# -- the server away during `sensorkit run` ----------------------------------------------------


def test_server_stopped_during_run_loses_and_duplicates_nothing(fresh_influx, tmp_path):
    config = kit_config(tmp_path, fresh_influx.url, "outage")
    log = tmp_path / "agent.log"
    t0 = time.monotonic()
    agent = start_agent(config, "--duration", "12", log=log)
    try:
        wait_until(t0 + 3)
        fresh_influx.stop()
        stopped_at = time.time()
        wait_until(t0 + 6)
        # status --json while the agent runs, the server away.
        status, text = status_json(config)
        assert PASSWORD not in text
        assert status["running"] is True
        out = status["outputs"]["influx"]
        assert out["queued"] >= 1 and out["queued_bytes"] > 0
        assert out["oldest_queued"] is not None and out["oldest_queued"] >= stopped_at - 2
        assert out["last_delivery"] is not None and out["last_delivery"] <= stopped_at + 1
        assert out["last_error"] and fresh_influx.url in out["last_error"]
        assert out["quarantined"] == 0 and out["dropped"] == 0
        assert out["user"] == "kit"
        wait_until(t0 + 8)
        fresh_influx.start_same_dirs()
        assert agent.wait(timeout=30) == 0, log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
    built = console_data(tmp_path)
    outage = [d for d in built if stopped_at + 1 < d["time"] < stopped_at + 4]
    assert outage, "no telegram was built while the server was away"
    assert_exactly_once(fresh_influx, "F_outage", built)
    assert len(fresh_influx.rows("SELECT * FROM info", "F_outage")) == 1
    stderr = log.read_text()
    assert PASSWORD not in stderr
    status, text = status_json(config)
    assert status["running"] is False and PASSWORD not in text
    assert status["outputs"]["influx"]["queued"] == 0


# -- kill -9, again and again ------------------------------------------------------------------


def test_kill_9_during_sends_loses_and_duplicates_nothing(fresh_influx, tmp_path):
    rng = random.Random(os.environ.get("SENSORKIT_FAULT_SEED", "kill-9"))
    # Each /write waits 0.5 s in the proxy, so a kill often lands between send and removal.
    proxy = FlakyProxy(upstream=fresh_influx.url, write_delay=0.5).start()
    config = kit_config(tmp_path, proxy.url, "kill")
    state_dir = tmp_path / "state"
    log = tmp_path / "agent.log"
    never_accepted: list[int] = []
    mid_send = 0
    backlog = 0
    try:
        for round_ in range(5):
            # Odd rounds the server answers 503: a backlog builds up in the segment files.
            proxy.failures[:] = [503] * 100_000 if round_ % 2 else []
            agent = start_agent(config, log=log)
            time.sleep(rng.uniform(1.0, 3.0))
            if round_ % 2 == 0:  # every other kill lands early in a send
                started, deadline = proxy.writes_started, time.monotonic() + 3
                while proxy.writes_started == started and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.1))
            mid_send += proxy.writes_in_flight > 0
            agent.send_signal(signal.SIGKILL)
            assert agent.wait(timeout=10) == -signal.SIGKILL
            # The console prints a telegram before the queue takes it: a kill in between
            # leaves a line that was never accepted. Prove it rather than assume it.
            built = console_data(tmp_path)
            if round_ % 2:
                backlog = max(backlog, len(queued_lines(state_dir)))
            if built:
                last = built[-1]["time"]
                on_disk = any(f" {last}" == ln[ln.rfind(" ") :] for ln in queued_lines(state_dir))
                if not on_disk and not any(
                    r["time"] == last for r in stored_data(fresh_influx, "F_kill")
                ):
                    never_accepted.append(last)
        assert integrity(state_dir) == "ok"
        proxy.failures.clear()
        final = start_agent(config, "--duration", "3", log=log)
        assert final.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        proxy.stop()
    assert mid_send >= 3, "the kills did not hit sends in flight"
    assert backlog >= 2, "no backlog was queued while the server refused"
    assert len(never_accepted) <= 1, never_accepted  # a microsecond window, not a habit
    assert_exactly_once(fresh_influx, "F_kill", console_data(tmp_path), missing=never_accepted)
    assert integrity(state_dir) == "ok"
    assert queued_lines(state_dir) == []


# -- a server that accepts and never answers ---------------------------------------------------


def test_a_hung_server_is_retried_after_the_timeout_not_hung_on(influx, tmp_path):
    silent = SilentServer().start()
    try:
        config = kit_config(tmp_path, silent.url, "hung", timeout=1)
        log = tmp_path / "agent.log"
        started = time.monotonic()
        agent = start_agent(config, "--duration", "5", log=log)
        try:
            code = agent.wait(timeout=5 + 1 + 10)  # duration + timeout + close() bounds
        finally:
            if agent.poll() is None:
                agent.kill()
        took = time.monotonic() - started
        assert code == 0, log.read_text()
        assert took < 5 + 1 + 5, took
        assert len(silent.connections) >= 2, "not retried"
        assert "did not answer within 1 s" in log.read_text()
        built = console_data(tmp_path)
        status, _ = status_json(config)
        assert status["outputs"]["influx"]["queued"] == len(built) + 1  # and the ident's info

        # publish gives up at --wait, also with a request in flight
        other = tmp_path / "publish"
        other.mkdir()
        source = other / "one.json"
        source.write_text('{"ident": {"project": "F", "serial": "hung"}, "data": [{"time": 1}]}')
        started = time.monotonic()
        publish_config = kit_config(other, silent.url, "hung", timeout=1)
        done = sensorkit("publish", "-c", str(publish_config), "--wait", "2", str(source))
        assert done.returncode == 1
        assert time.monotonic() - started < 2 + 1 + 6 + 3
    finally:
        silent.stop()
    # The server back (another URL, same state_dir): everything kept is delivered once.
    kit_config(tmp_path, influx.url, "hung")
    again = start_agent(config, "--duration", "2", log=log)
    assert again.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert_exactly_once(influx, "F_hung", console_data(tmp_path))


# -- the cap -----------------------------------------------------------------------------------


def test_publish_with_the_server_down_queues_what_fits_drops_nothing_and_says_the_rest(
    influx, tmp_path
):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    config = kit_config(tmp_path, down, "cap", queue_max_mb=0.01)
    records = [{"time": 1_700_000_000 + i, "pm_25": float(i), "pm_10": i / 2} for i in range(400)]
    source = tmp_path / "many.jsonl"
    lines = [json.dumps({"ident": {"project": "F", "serial": "cap", "label": "bench"}})]
    source.write_text("\n".join(lines + [json.dumps({"data": r}) for r in records]) + "\n")
    done = sensorkit("publish", "-c", str(config), "--wait", "1", str(source))
    assert done.returncode == 1
    assert "is full" not in done.stderr, done.stderr  # publish never crowds its own points out
    assert "telegrams were NOT queued" in done.stderr and "again" in done.stderr
    status, _ = status_json(config)
    out = status["outputs"]["publish"]
    assert 0 < out["queued"] < 401
    assert out["queued_bytes"] <= 10_000
    assert out["dropped"] == 0
    # The server up: the same file again, and every point arrives exactly once.
    kit_config(tmp_path, influx.url, "cap", queue_max_mb=0.01)
    again = sensorkit("publish", "-c", str(config), "--wait", "20", str(source))
    assert again.returncode == 0, again.stderr
    got = sorted(r["time"] for r in stored_data(influx, "F_cap"))
    assert got == [r["time"] for r in records]
    status, _ = status_json(config)
    assert status["outputs"]["publish"]["dropped"] == 0


def test_points_the_cap_dropped_are_counted_with_the_reason_in_status_after_a_stop(tmp_path):
    from agent.buffer import DurableQueue

    config = kit_config(tmp_path, "http://127.0.0.1:9", "agentcap")
    queue = DurableQueue(tmp_path / "state", "influx", max_bytes=4096)
    for i in range(200):  # an outage: the agent's telegrams, one append each
        queue.append([("F_agentcap", f"data,label=bench pm_25={i}.0 {1_700_000_000 + i}")])
    kept = queue.depth
    queue.close()
    status, _ = status_json(config)
    out = status["outputs"]["influx"]
    assert 0 < out["queued"] == kept < 200
    assert out["queued_bytes"] <= 4096
    assert out["dropped"] == 200 - kept and out["dropped_by"] == {"cap": 200 - kept}
    text = sensorkit("status", "-c", str(config)).stdout
    assert f"dropped         {200 - kept}" in text and "the queue was full" in text


# -- signals -----------------------------------------------------------------------------------


def test_sigterm_stops_a_running_agent_cleanly_and_its_last_window_is_delivered(influx, tmp_path):
    config = kit_config(tmp_path, influx.url, "term")
    log = tmp_path / "agent.log"
    agent = start_agent(config, log=log)
    try:
        deadline = time.monotonic() + 30
        while not console_data(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert console_data(tmp_path), log.read_text()[-2000:]
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
    text = log.read_text()
    assert "got SIGTERM" in text and "Traceback" not in text
    assert_exactly_once(influx, "F_term", console_data(tmp_path))
    status, _ = status_json(config)
    assert status["running"] is False and status["outputs"]["influx"]["queued"] == 0


def test_ctrl_c_during_a_publish_to_a_dead_server_says_what_stays_queued_and_exits_130(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    config = kit_config(tmp_path, down, "ctrlc")
    source = tmp_path / "t.jsonl"
    rows = [json.dumps({"ident": {"project": "F", "serial": "ctrlc"}})]
    rows += [json.dumps({"data": {"time": 1_700_000_000 + i, "dtemp": 1.0}}) for i in range(50)]
    source.write_text("\n".join(rows) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "publish", "-c", str(config), "--wait", "60", str(source)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until it is waiting for the server
            stats = status_json(config)[0]["outputs"].get("publish") or {}
            if stats.get("queued") == 51:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr and "stays in" in stderr
    assert status_json(config)[0]["outputs"]["publish"]["queued"] == 51


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs as state_dir (needs root; else skip); fill it with ``fill_up``."""
    mount = tmp_path / "state"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_up(directory: Path) -> None:
    """Fill the file system of ``directory`` to the last byte, as another program might."""
    with open(directory / "filler", "ab", buffering=0) as filler:
        for size in (65536, 4096, 1):
            try:
                while True:
                    filler.write(b"x" * size)
                    filler.flush()
            except OSError:
                pass


def test_a_full_disk_costs_only_points_counted_in_status_after_stop_and_restart(
    tiny_disk, tmp_path
):
    down = f"http://127.0.0.1:{free_port()}"  # the server away: everything stays on disk
    config = kit_config(tmp_path, down, "full")
    log = tmp_path / "agent.log"
    agent = start_agent(config, log=log)
    try:
        deadline = time.monotonic() + 30
        while len(console_data(tmp_path)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        fill_up(tiny_disk)
        deadline = time.monotonic() + 30
        while "points lost" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "points lost" in log.read_text(), log.read_text()[-3000:]
        built_at_full = len(console_data(tmp_path))
        deadline = time.monotonic() + 20
        while len(console_data(tmp_path)) < built_at_full + 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(console_data(tmp_path)) >= built_at_full + 3  # it keeps sampling
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
    assert "Traceback" not in log.read_text()
    status, _ = status_json(config)
    first = status["outputs"]["influx"]
    built = len(console_data(tmp_path)) + 1  # data telegrams and the ident, a point each
    assert first["lost"] > 0
    assert first["queued"] + first["lost"] == built  # every point kept or counted
    again = start_agent(config, "--duration", "3", log=log)
    assert again.wait(timeout=30) == 0, log.read_text()[-3000:]
    after = status_json(config)[0]["outputs"]["influx"]
    assert after["lost"] >= first["lost"]  # the count survived the restart
    assert after["queued"] + after["lost"] == len(console_data(tmp_path)) + 2  # a new ident
    done = sensorkit("status", "-c", str(config))
    assert done.returncode == 0 and "lost (disk)" in done.stdout


def test_publish_on_a_full_disk_says_so_once_and_status_still_works(tiny_disk, tmp_path):
    config = kit_config(tmp_path, f"http://127.0.0.1:{free_port()}", "fullpub")
    fill_up(tiny_disk)
    done = sensorkit("publish", "-c", str(config), "--wait", "1", str(TESTDATA))
    assert done.returncode in (1, 2), done.stderr
    assert "Traceback" not in done.stderr
    assert "No space left" in done.stderr or "LOST" in done.stderr, done.stderr
    # what the card refused is kept in RAM: publish says so and does not call it safe
    assert "queued safely" not in done.stderr, done.stderr
    assert "only in RAM" in done.stderr or "LOST" in done.stderr, done.stderr
    assert not any(p.stat().st_size == 0 for p in tiny_disk.glob("*.sqlite3"))
    status = sensorkit("status", "-c", str(config))
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    (tiny_disk / "filler").unlink()  # space again: publish works
    again = sensorkit("publish", "-c", str(config), "--wait", "1", str(TESTDATA))
    assert "Traceback" not in again.stderr and "LOST" not in again.stderr, again.stderr
