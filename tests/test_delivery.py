"""The delivery rules of docs/design.md section 5, row by row, against a real influxd.

Each row is produced by the real server where it can be (404 no database, 401 wrong password,
403 no grant, 400 a field type conflict made by another writer, 413 a small max-body-size) and
by the loopback stub of ``httpstub.py`` only for 5xx and 429.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import _require_influxd, run_sensorkit, write_config
from httpstub import FlakyProxy, TruncatingServer
from influxd import InfluxServer

from agent.delivery import Backoff, Delivery, DeliverySettings
from agent.influx import InfluxClient
from agent.series import SeriesEncoder
from agent.sinks import InfluxV1Sink
from agent.telegram import Data, Ident

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata" / "bdp-test_sense.json"
T0 = 1_700_000_000


# -- helpers -----------------------------------------------------------------------------------


def http(server: InfluxServer, path: str, params: dict, body: bytes | None = None, user=True):
    """A request with Basic auth (influxd reads ``u``/``p`` only from the URL, not a form)."""
    credentials = server.admin if user is True else user
    headers = {}
    if credentials:
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    url = f"{server.url}{path}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def admin(server: InfluxServer, statement: str, db: str = "") -> list[dict]:
    params = {"q": statement, "epoch": "s", **({"db": db} if db else {})}
    status, body = http(server, "/query", params)
    assert status == 200, body
    results = json.loads(body)["results"]
    for result in results:
        assert "error" not in result, result["error"]
    return results


def rows(server: InfluxServer, measurement: str, db: str) -> list[dict]:
    out = []
    for result in admin(server, f'SELECT * FROM "{measurement}"', db):
        for series in result.get("series", []):
            for values in series["values"]:
                out.append(dict(zip(series["columns"], values, strict=True)))
    return out


def databases(server: InfluxServer) -> list[str]:
    series = admin(server, "SHOW DATABASES")[0].get("series", [])
    return [r[0] for s in series for r in s.get("values", [])]


def records(n: int, start: int = T0, conflict_every: int = 0) -> list[dict]:
    """Data records; every ``conflict_every``-th one carries ``pm_25`` (the others do not)."""
    out = []
    for i in range(n):
        record: dict = {"time": start + i, "dtemp": 20.0 + i / 8, "drh": 50.0 + i % 7}
        if conflict_every and i % conflict_every == 0:
            record["pm_25"] = 100.0 + i
        out.append(record)
    return out


def telegram_file(path: Path, serial: str, data: list[dict]) -> Path:
    ident = {"project": "T", "serial": serial, "label": "bench"}
    lines = [json.dumps({"ident": ident})] + [json.dumps({"data": d}) for d in data]
    path.write_text("\n".join(lines) + "\n")
    return path


def kit_config(tmp_path: Path, url: str, *influx_lines: str) -> Path:
    text = f"""
[kit]
project = T
serial = cfg
interval = 1
state_dir = {tmp_path / "state"}
[influx]
url = {url}
timeout = 2
retry_max = 1
sync_interval = 0.5
""" + "\n".join(influx_lines)
    return write_config(tmp_path / "agent.ini", text + "\n")


def sensorkit(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return run_sensorkit(*args, timeout=timeout, env={"SENSORKIT_CONFIG": "/nonexistent"})


def status_json(config: Path) -> dict:
    done = sensorkit("status", "-c", str(config), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("ERROR")]


def assert_delivered(server: InfluxServer, db: str, data: list[dict]) -> None:
    """Exactly these records are in ``data``, once each, with their values."""
    got = rows(server, "data", db)
    assert len(got) == len(data)
    by_time = {r["time"]: r for r in got}
    assert len(by_time) == len(got), "a point was stored twice"
    for record in data:
        row = by_time[record["time"]]
        for key, value in record.items():
            assert row[key] == value, (record["time"], key)


def wait_for(condition, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def output(
    tmp_path: Path,
    url: str,
    *,
    create: bool = True,
    user: str = "",
    password: str = "",
    sync_interval: float = 1.0,
    backoff: Backoff | None = None,
    batch_size: int = 5000,
    compress: bool = True,
    sink_type: type[InfluxV1Sink] = InfluxV1Sink,
) -> Delivery:
    client = InfluxClient(url, username=user, password=password, timeout=2, compress=compress)
    settings = DeliverySettings(
        batch_size=batch_size,
        sync_interval=sync_interval,
        backoff=backoff or Backoff(base=0.1, cap=0.3, slow=0.5),
    )
    sink = sink_type(client, create_database=create)
    return Delivery("influx", sink, tmp_path / "state", "influx", SeriesEncoder().encode, settings)


def ident(serial: str) -> Ident:
    return Ident(project="T", serial=serial, label="bench")


def data(i: int, **values: float) -> Data:
    return Data(time=T0 + i, values=tuple((values or {"dtemp": 20.0 + i}).items()))


@pytest.fixture(scope="module")
def auth_server():
    """Auth on, with a kit user that may write ``T_kit`` and one with no grant at all."""
    _require_influxd()
    server = InfluxServer(auth=True).start()
    admin(server, 'CREATE DATABASE "T_kit"')
    admin(server, "CREATE USER kit WITH PASSWORD 'kit-pass-7f3a'")
    admin(server, 'GRANT WRITE ON "T_kit" TO kit')
    admin(server, "CREATE USER nogrant WITH PASSWORD 'nogrant-pass-91c2'")
    yield server
    server.cleanup()


# -- backoff -----------------------------------------------------------------------------------


def test_backoff_grows_exponentially_is_capped_and_jittered():
    backoff = Backoff(base=1.0, cap=8.0, slow=100.0)
    for failures, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (30, 8)]:
        delays = [backoff.delay(failures) for _ in range(200)]
        assert all(0.5 * ceiling <= d <= ceiling for d in delays), failures
        assert len(set(delays)) > 100  # jitter: retries of many kits do not line up
    assert 50 <= backoff.delay(30, slow=True) <= 100


# -- 204 and 404 -------------------------------------------------------------------------------


def test_204_removes_points_and_404_creates_the_database_when_allowed(influx, tmp_path):
    sent = records(30)
    config = kit_config(tmp_path, influx.url)
    done = sensorkit("publish", "-c", str(config), str(telegram_file(tmp_path / "t", "c1", sent)))
    assert done.returncode == 0, done.stderr
    assert "T_c1" in databases(influx)
    assert 'created database "T_c1"' in done.stderr
    assert_delivered(influx, "T_c1", sent)
    assert len(rows(influx, "info", "T_c1")) == 1
    stats = status_json(config)["outputs"]["publish"]
    assert stats["queued"] == 0 and stats["queued_bytes"] == 0
    assert stats["delivered"] == 31  # 30 data + 1 info
    assert stats["quarantined"] == 0 and stats["dropped"] == 0
    assert stats["last_delivery"] is not None
    assert error_lines(done.stderr) == []


def test_404_without_create_database_keeps_points_says_why_and_delivers_later(influx, tmp_path):
    sent = records(10)
    config = kit_config(tmp_path, influx.url, "create_database = no")
    source = str(telegram_file(tmp_path / "t", "c2", sent))
    done = sensorkit("publish", "-c", str(config), "--wait", "2", source)
    assert done.returncode == 1
    assert "T_c2" not in databases(influx)
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert "create_database" in errors[0] and "T_c2" in errors[0]
    assert status_json(config)["outputs"]["publish"]["queued"] == 11
    admin(influx, 'CREATE DATABASE "T_c2"')
    again = sensorkit("publish", "-c", str(config), "--wait", "20")
    assert again.returncode == 0, again.stderr
    assert_delivered(influx, "T_c2", sent)
    assert status_json(config)["outputs"]["publish"]["queued"] == 0


def test_404_without_create_database_is_retried_by_the_running_sender(influx, tmp_path):
    out = output(tmp_path, influx.url, create=False)
    out.start()
    try:
        out.send(ident("c3"))
        out.send(data(0))
        assert wait_for(lambda: out.failing(), 5)
        assert "create_database is off" in out.stats().last_error
        assert out.queue.depth == 2
        admin(influx, 'CREATE DATABASE "T_c3"')
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
    finally:
        out.close()
    assert len(rows(influx, "data", "T_c3")) == 1


def test_a_database_dropped_while_running_is_created_again_and_bad_points_still_isolated(
    influx, tmp_path
):
    out = output(tmp_path, influx.url, backoff=Backoff(base=0.1, cap=0.3, slow=60))
    out.start()
    try:
        out.send(ident("c4"))
        out.send(data(0))
        assert wait_for(lambda: out.queue.depth == 0, 10)
        admin(influx, 'DROP DATABASE "T_c4"')
        bad = 'data,label=bench dtemp=1.0,dtemp="twice" 1700000001'  # a 400 of its own
        good = "data,label=bench dtemp=2.0 1700000002"
        out.accept([("T_c4", bad), ("T_c4", good)])
        # 404 -> created -> 400 -> split: no slow (60 s) retry in between.
        assert wait_for(lambda: out.queue.depth == 0, 8), out.stats().last_error
        assert out.stats().last_error is None  # not taken for an outage
    finally:
        out.close()
    assert [r["dtemp"] for r in rows(influx, "data", "T_c4")] == [2.0]
    held = out.queue.stats().quarantined
    assert held == 1


# -- 401 and 403 -------------------------------------------------------------------------------


def test_401_wrong_password_keeps_everything_with_one_clear_error(auth_server, tmp_path):
    sent = records(12)
    config = kit_config(
        tmp_path, auth_server.url, "username = kit", "password = wrong-secret-d41d8c"
    )
    source = str(telegram_file(tmp_path / "t", "kit", sent))
    done = sensorkit("publish", "-c", str(config), "--wait", "3", source)
    assert done.returncode == 1
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert "401" in errors[0] and "'kit'" in errors[0] and auth_server.url in errors[0]
    assert "wrong-secret-d41d8c" not in done.stderr + done.stdout
    assert "cannot list or create" not in done.stderr  # no misleading second message
    status = sensorkit("status", "-c", str(config), "--json")
    assert "wrong-secret-d41d8c" not in status.stdout
    stats = json.loads(status.stdout)["outputs"]["publish"]
    assert stats["queued"] == 13 and stats["quarantined"] == 0 and stats["dropped"] == 0
    assert rows(auth_server, "data", "T_kit") == []
    # The user fixes the password: everything kept is delivered.
    kit_config(tmp_path, auth_server.url, "username = kit", "password = kit-pass-7f3a")
    again = sensorkit("publish", "-c", str(config), "--wait", "20")
    assert again.returncode == 0, again.stderr
    assert_delivered(auth_server, "T_kit", sent)


def test_403_user_without_a_grant_keeps_everything_with_one_clear_error(auth_server, tmp_path):
    admin(auth_server, 'CREATE DATABASE "T_nogrant"')
    sent = records(8)
    config = kit_config(
        tmp_path, auth_server.url, "username = nogrant", "password = nogrant-pass-91c2"
    )
    source = str(telegram_file(tmp_path / "t", "nogrant", sent))
    done = sensorkit("publish", "-c", str(config), "--wait", "3", source)
    assert done.returncode == 1
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert "403" in errors[0] and "nogrant" in errors[0] and "T_nogrant" in errors[0]
    assert "GRANT WRITE" in errors[0]
    assert "nogrant-pass-91c2" not in done.stderr
    assert status_json(config)["outputs"]["publish"]["queued"] == 9
    admin(auth_server, 'GRANT WRITE ON "T_nogrant" TO nogrant')
    again = sensorkit("publish", "-c", str(config), "--wait", "20")
    assert again.returncode == 0, again.stderr
    assert_delivered(auth_server, "T_nogrant", sent)


# -- 400 ---------------------------------------------------------------------------------------


def test_400_field_type_conflict_quarantines_only_the_conflicting_points(influx, tmp_path):
    admin(influx, 'CREATE DATABASE "T_c5"')
    status, body = http(
        influx,
        "/write",
        {"db": "T_c5", "precision": "s"},
        f'other,label=x pm_25="text" {T0 - 1}\ndata,label=other pm_25="text" {T0 - 1}'.encode(),
    )
    assert status == 204, body
    sent = records(64, conflict_every=5)  # 13 points carry pm_25, which is a string there now
    conflicting = [r for r in sent if "pm_25" in r]
    good = [r for r in sent if "pm_25" not in r]
    config = kit_config(tmp_path, influx.url)
    done = sensorkit("publish", "-c", str(config), str(telegram_file(tmp_path / "t", "c5", sent)))
    assert done.returncode == 1, done.stderr  # refused points: not everything was delivered
    assert "13 quarantined" in done.stderr
    stored = [r for r in rows(influx, "data", "T_c5") if r["label"] == "bench"]
    assert sorted(r["time"] for r in stored) == [r["time"] for r in good]  # every good point
    assert_values = {r["time"]: r for r in stored}
    for record in good:
        assert assert_values[record["time"]]["dtemp"] == record["dtemp"]
    stats = status_json(config)["outputs"]["publish"]
    assert stats["quarantined"] == 13 and stats["queued"] == 0
    assert stats["delivered"] == 1 + len(good)
    listed = sensorkit("quarantine", "-c", str(config), "--queue", "publish", "list")
    assert listed.returncode == 0
    assert listed.stdout.count("field type conflict") == 13
    exported = sensorkit("quarantine", "-c", str(config), "--queue", "publish", "export")
    lines = exported.stdout.splitlines()
    assert sorted(int(ln.rsplit(" ", 1)[1]) for ln in lines) == [r["time"] for r in conflicting]
    assert all(f"pm_25={r['pm_25']!r}" in lines[i] for i, r in enumerate(conflicting))
    # The conflict resolved (the other writer's string points gone), they can be re-sent.
    admin(influx, 'DROP DATABASE "T_c5"')
    admin(influx, 'CREATE DATABASE "T_c5"')
    resent = sensorkit("quarantine", "-c", str(config), "--queue", "publish", "resend")
    assert resent.returncode == 0, resent.stderr
    assert sorted(r["time"] for r in rows(influx, "data", "T_c5")) == [
        r["time"] for r in conflicting
    ]
    assert status_json(config)["outputs"]["publish"]["quarantined"] == 0


# -- 413 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_body_server():
    _require_influxd()
    server = InfluxServer(max_body_size=4000).start()
    yield server
    server.cleanup()


def test_413_splits_the_batch_until_it_fits_and_delivers_everything(small_body_server, tmp_path):
    # influxd 1.6 checks max-body-size on the body as sent, so gzip would hide the limit.
    sent = records(300)
    config = kit_config(tmp_path, small_body_server.url, "gzip = no")
    done = sensorkit("publish", "-c", str(config), str(telegram_file(tmp_path / "t", "c6", sent)))
    assert done.returncode == 0, done.stderr
    assert_delivered(small_body_server, "T_c6", sent)
    stats = status_json(config)["outputs"]["publish"]
    assert stats["quarantined"] == 0 and stats["queued"] == 0 and stats["dropped"] == 0
    assert error_lines(done.stderr) == []


def test_413_for_a_single_point_quarantines_it_and_delivers_the_rest(small_body_server, tmp_path):
    sent = records(20)
    huge = dict(sent[7], note="x" * 5000)
    config = kit_config(tmp_path, small_body_server.url, "gzip = no")
    source = telegram_file(tmp_path / "t", "c7", sent[:7] + [huge] + sent[8:])
    done = sensorkit("publish", "-c", str(config), str(source))
    assert done.returncode == 1, done.stderr  # one point refused: not everything delivered
    assert sorted(r["time"] for r in rows(small_body_server, "data", "T_c7")) == [
        r["time"] for r in sent if r is not sent[7]
    ]
    held = sensorkit("quarantine", "-c", str(config), "--queue", "publish", "list").stdout
    assert "413" in held and "x" * 100 in held


# -- 5xx and 429 (stub) ------------------------------------------------------------------------


def test_5xx_and_429_are_retried_with_backoff_then_delivered(influx, tmp_path):
    proxy = FlakyProxy([503, 503, 429, 500, 502], upstream=influx.url, only=("/write",)).start()
    try:
        sent = records(25)
        config = kit_config(tmp_path, proxy.url)  # retry_max = 1: waits of 0.5 .. 1 s
        source = str(telegram_file(tmp_path / "t", "c8", sent))
        started = time.monotonic()
        done = sensorkit("publish", "-c", str(config), "--wait", "30", source)
        assert done.returncode == 0, done.stderr
    finally:
        proxy.stop()
    assert_delivered(influx, "T_c8", sent)
    failed = proxy.failed()
    assert [s.status for s in failed] == [503, 503, 429, 500, 502]
    assert {s.path for s in failed} == {"/write"}  # the writes themselves were refused
    gaps = [b.at - a.at for a, b in zip(failed, failed[1:], strict=False)]
    assert all(gap >= 0.45 for gap in gaps), gaps  # backed off, not hammered
    assert time.monotonic() - started < 25
    assert proxy.seen[-1].status in (200, 204)
    stats = status_json(config)["outputs"]["publish"]
    assert stats["quarantined"] == 0 and stats["dropped"] == 0 and stats["queued"] == 0
    assert "503" in done.stderr and "429" in done.stderr
    assert "accepts points again" in done.stderr


class CountingSink(InfluxV1Sink):
    """The real v1 sink that tells a test about each write (its twins share the count)."""

    writes: list[bytes]
    on_write = None

    def write(self, db: str, body: bytes):
        self.writes.append(body)
        if self.on_write:
            self.on_write(len(self.writes))
        return super().write(db, body)

    def twin(self):
        other = type(self)(self.client.twin(), self.may_create)
        other.writes, other.on_write = self.writes, self.on_write
        return other


def test_a_5xx_during_bisection_keeps_the_rest_queued_for_a_retry(influx, tmp_path):
    admin(influx, 'CREATE DATABASE "T_c9"')
    # The first write gets a real 400 (one bad line); the next attempt meets a 503.
    proxy = FlakyProxy([], upstream=influx.url).start()
    out = output(
        tmp_path,
        proxy.url,
        create=False,
        backoff=Backoff(base=0.2, cap=0.4, slow=0.5),
        sink_type=CountingSink,
    )
    lines = [f"data,label=bench dtemp={i}.0 {T0 + i}" for i in range(8)]
    lines[5] = f"data,label=bench dtemp=5.0 dtemp {T0 + 5}"  # unparsable
    out.queue.append([("T_c9", ln) for ln in lines])
    out.sink.writes = []

    def on_write(count: int) -> None:
        if count == 3:  # the second half, after the first was delivered
            proxy.failures.append(503)

    out.sink.on_write = on_write
    out.start()
    try:
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
    finally:
        out.close()
        proxy.stop()
    assert 503 in [s.status for s in proxy.seen]
    assert sorted(r["time"] for r in rows(influx, "data", "T_c9")) == [
        T0 + i for i in range(8) if i != 5
    ]
    assert out.queue.stats().quarantined == 1


# -- the sender itself -------------------------------------------------------------------------


def test_close_delivers_what_was_just_sent_when_the_server_answers(influx, tmp_path):
    out = output(tmp_path, influx.url)
    out.start()
    out.send(ident("c10"))
    for i in range(5):
        out.send(data(i))
    out.close()  # at once: the last telegrams of `sensorkit run` must not wait for a restart
    assert len(rows(influx, "data", "T_c10")) == 5
    assert out.status()["queued"] == 0


def test_a_point_is_queryable_within_about_a_second_of_being_sent(influx, tmp_path):
    out = output(tmp_path, influx.url, sync_interval=10)
    out.start()
    try:
        out.send(ident("c11"))
        out.send(data(0))
        assert wait_for(lambda: out.queue.depth == 0, 5)
        delays = []
        for i in range(1, 6):
            time.sleep(0.3)
            sent = time.monotonic()
            out.send(data(i))
            assert wait_for(lambda: out.queue.depth == 0, 5)
            delays.append(time.monotonic() - sent)
    finally:
        out.close()
    assert max(delays) < 0.5, delays
    assert len(rows(influx, "data", "T_c11")) == 6


def test_sync_interval_zero_commits_every_append_and_the_idle_sender_does_not_spin(
    influx, tmp_path
):
    out = output(tmp_path, influx.url, sync_interval=0)
    out.start()
    try:
        fsyncs = out.queue.fsyncs
        out.send(ident("c12"))
        assert out.queue.fsyncs == fsyncs + 1  # flushed at once
        assert wait_for(lambda: out.queue.depth == 0, 5)
        time.sleep(0.2)
        cpu = time.process_time()
        time.sleep(1.0)
        assert time.process_time() - cpu < 0.3, "the idle sender busy-loops"
    finally:
        out.close()


def test_a_clock_stepped_back_does_not_stall_the_retry(influx, tmp_path, monkeypatch):
    proxy = FlakyProxy([503], upstream=influx.url).start()
    out = output(tmp_path, proxy.url, backoff=Backoff(base=1.0, cap=1.0, slow=1.0))
    out.start()
    try:
        out.send(ident("c13"))
        assert wait_for(lambda: out.failing(), 5)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 3600)  # NTP steps the clock back
        assert wait_for(lambda: out.queue.depth == 0, 5), "the retry waits for the old clock"
    finally:
        monkeypatch.undo()
        out.close()
        proxy.stop()


def test_online_points_are_delivered_before_any_group_commit_touches_sqlite(influx, tmp_path):
    out = output(tmp_path, influx.url, sync_interval=1.5)  # longer than the idle wake-up
    out.start()
    try:
        out.send(ident("c14"))
        assert wait_for(lambda: out.queue.depth == 0, 5)
        for i in range(12):
            out.send(data(i))
            time.sleep(0.3)  # sends wake the sender when the group commit falls due
        assert wait_for(lambda: out.queue.depth == 0, 5)
        assert out.queue.fsyncs == 0, "fresh points were committed (fsync) before being sent"
    finally:
        out.close()
    assert len(rows(influx, "data", "T_c14")) == 12


def test_a_disk_that_refuses_the_append_loses_points_counted_and_said_once(
    tmp_path, caplog, monkeypatch
):
    out = output(tmp_path, "http://127.0.0.1:9")
    monkeypatch.setattr(
        out.queue, "append", lambda items: (_ for _ in ()).throw(OSError(28, "No space left"))
    )
    with caplog.at_level(logging.ERROR, logger="sensorkit.influx"):
        out.send(ident("c20"))
        out.send(ident("c20"))
    assert out.status()["lost"] == 2
    assert caplog.text.count("points lost") == 1
    monkeypatch.undo()
    out.close()


def test_status_after_a_failed_publish_still_shows_the_last_error(tmp_path):
    ini = write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = P\nserial = s\nstate_dir = {tmp_path / 'state'}\n"
        "[influx]\nurl = http://127.0.0.1:9\ntimeout = 1\n",
    )
    done = run_sensorkit("publish", "-c", str(ini), "--wait", "1", str(TESTDATA))
    assert done.returncode == 1
    status = json.loads(run_sensorkit("status", "-c", str(ini), "--json").stdout)
    publish = status["outputs"]["publish"]
    assert publish["queued"] == 4
    assert "cannot reach InfluxDB at http://127.0.0.1:9" in publish["last_error"]
    assert publish["last_error_time"] > 0


def test_retry_after_from_a_429_is_honoured(tmp_path):
    proxy = FlakyProxy([(429, {"Retry-After": "2"})]).start()
    out = output(tmp_path, proxy.url, create=False, backoff=Backoff(base=0.1, cap=0.3, slow=5))
    out.start()
    try:
        out.send(ident("c21"))
        assert wait_for(lambda: out.queue.depth == 0, 10)
    finally:
        out.close()
        proxy.stop()
    writes = [s for s in proxy.seen if s.path == "/write"]
    assert [s.status for s in writes] == [429, 204]
    assert writes[1].at - writes[0].at >= 1.9  # backoff alone would have retried in 0.1 s


def test_a_reply_cut_off_before_its_headers_end_is_no_answer_and_settles_nothing(tmp_path):
    server = TruncatingServer(
        [
            b"HTTP/1.1 204 No Content\r\nX-Influxdb-Ver",  # then the connection closes
            b"HTTP/1.1 204 No Content\r\nX-Influxdb-Version: 1.6.7\r\n\r\n",
        ]
    ).start()
    out = output(tmp_path, server.url, create=False, backoff=Backoff(base=0.1, cap=0.2, slow=1))
    out.start()
    try:
        out.send(ident("cut"))
        assert wait_for(lambda: len(server.requests) >= 1, 5)
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
        assert len(server.requests) >= 2, "the cut reply was taken as a delivery"
        assert out.queue.stats().delivered == 1
    finally:
        out.close()
        server.stop()


def test_points_for_a_database_the_server_will_never_create_do_not_hold_back_others(
    influx, tmp_path
):
    out = output(tmp_path, influx.url, backoff=Backoff(base=0.1, cap=0.3, slow=60))
    bad = "T_tab\tname"  # influxd: "invalid name"; nothing can ever make it right
    out.accept([(bad, f"data,label=bench dtemp=1.0 {T0}")])
    out.accept([("T_fine", f"data,label=bench dtemp=2.0 {T0 + 1}")])
    out.start()
    try:
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats()
    finally:
        out.close()
    assert [r["dtemp"] for r in rows(influx, "data", "T_fine")] == [2.0]
    held = out.queue.stats().quarantined
    assert held == 1
    from agent.buffer import read_quarantine

    (point,) = read_quarantine(tmp_path / "state", "influx")
    assert point.db == bad and "invalid name" in point.reason


def test_a_database_without_a_grant_is_held_back_while_the_others_are_delivered(
    auth_server, tmp_path
):
    admin(auth_server, 'CREATE DATABASE "T_other"')
    admin(auth_server, "CREATE USER halfkit WITH PASSWORD 'half-pass-3c1'")
    admin(auth_server, 'GRANT WRITE ON "T_kit" TO halfkit')
    out = output(
        tmp_path, auth_server.url, user="halfkit", password="half-pass-3c1", create=False,
        backoff=Backoff(base=0.1, cap=0.3, slow=60),
    )  # fmt: skip
    out.accept([("T_other", f"data,label=bench dtemp=1.0 {T0 + 500}")])  # no grant: 403
    out.accept([("T_kit", f"data,label=bench dtemp=2.0 {T0 + 501}")])
    out.start()
    try:
        assert wait_for(lambda: out.queue.depth == 1, 10), out.stats()
        stats = out.stats()
        assert list(stats.held) == ["T_other"] and "403" in stats.held["T_other"]
    finally:
        out.close()
    assert [r["dtemp"] for r in rows(auth_server, "data", "T_kit") if r["time"] == T0 + 501] == [
        2.0
    ]
