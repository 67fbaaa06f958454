"""``sensorkit subscribe``: kits' telegrams read back from real influxd servers, each once.

Every test runs the real command (``python -m agent subscribe``) against servers the suite
starts; nothing of HTTP is faked. Waits poll with generous deadlines, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import replace
from itertools import count
from pathlib import Path
from unittest.mock import ANY

import pytest
from conftest import ROOT, run_sensorkit, write_config
from httpstub import FlakyProxy
from influxd import InfluxServer
from test_lineprotocol import HOSTILE_TAGS, HOSTILE_TEXT

from agent.cli import parse_since
from agent.config import ConfigError, load
from agent.cursor import Cursor
from agent.cursor import load as load_cursor
from agent.cursor import save as save_cursor
from agent.errors import UsageError
from agent.influx import InfluxClient
from agent.readback import DataColumns
from agent.series import SeriesEncoder
from agent.sinks import InfluxV1Sink
from agent.telegram import Ident, parse_telegrams, to_json_line

_kits = count()
KIT = "[kit]\nproject = Sub\nserial = self\n"
START = 1_600_000_000


def ini(tmp_path: Path, source: str, sub: str = "", influx: str = "", console: str = "-") -> Path:
    """An agent.ini whose [subscriber] reads ``source``; [influx] (the relay target) off
    unless ``influx`` names a server."""
    target = f"url = {influx}\n" if influx else "enabled = no\n"
    return write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = Sub\nserial = self\nstate_dir = {tmp_path / 'state'}\n"
        f"[influx]\n{target}[console]\nfile = {console}\n"
        f"[subscriber]\nurl = {source}\n{sub}",
    )


def publish(tmp_path: Path, server, records: list[dict], extra: str = "") -> None:
    """Publish JSON Lines ``records`` to ``server`` with sensorkit's own publish."""
    folder = tmp_path / f"pub{next(_kits)}"
    folder.mkdir()
    config = write_config(
        folder / "agent.ini",
        f"[kit]\nproject = P\nserial = p\nstate_dir = {folder / 'state'}\n"
        f"[influx]\nurl = {server.url}\n{extra}[console]\nenabled = no\n",
    )
    source = folder / "in.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    done = run_sensorkit("publish", "-c", str(config), str(source), "--wait", "60", timeout=300)
    assert done.returncode == 0, done.stderr


def subscribe(config: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = run_sensorkit("subscribe", "-c", str(config), "--once", *args, timeout=600)
    if ok:
        assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def pairs(text: str) -> list[tuple[dict, dict]]:
    """JSON Lines telegrams as (ident, data) pairs: each data record with its ident."""
    out, ident = [], None
    for line in text.splitlines():
        record = json.loads(line)
        if "ident" in record:
            ident = record["ident"]
        else:
            assert ident is not None, "a data line before any ident"
            out.append((ident, record["data"]))
    return out


def kit(project: str, serial: str, n: int, start: int = START, **ident: object) -> list[dict]:
    head = {"project": project, "serial": serial, "label": "lab", "geolocation": "52.1,5.2,3",
            "fields": ["pm_25", "temp"], "units": ["pcs/qf", "C"], "types": ["Dylos", "BME280"],
            "time": start} | ident  # fmt: skip
    data = [{"time": start + i, "pm_25": i, "temp": 20.5 + i / 4} for i in range(n)]
    return [{"ident": head}] + [{"data": d} for d in data]


def expected(records: list[dict]) -> list[tuple[dict, dict]]:
    return pairs(jsonl(records))


def by_kit(found: list[tuple[dict, dict]]) -> dict[str, list[tuple[dict, dict]]]:
    out: dict[str, list[tuple[dict, dict]]] = {}
    for ident, data in found:
        out.setdefault(f"{ident['project']}_{ident['serial']}", []).append((ident, data))
    return out


def wait_for(what, timeout: float = 240, every: float = 0.2):
    """Poll ``what()`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not reached within {timeout} s: {what.__doc__ or what}")


def hostile_kit(project: str) -> list[dict]:
    """Idents and data holding every hostile text of the line protocol tests."""
    records = []
    texts = [t for t in HOSTILE_TEXT if t]  # an empty ident text is not sent at all
    for i, text in enumerate(texts):
        ident = {"project": project, "serial": "hostile", "label": HOSTILE_TAGS[i % 14],
                 "geolocation": HOSTILE_TAGS[(i + 3) % 14], "description": text,
                 "note": text[::-1], "fields": ["txt", "pm_25"], "units": ["-", "pcs/qf"],
                 "time": START + 10 * i}  # fmt: skip
        records.append({"ident": ident})
        for j in range(2):
            data = {"time": START + 10 * i + j, "txt": text, "pm_25": i + j / 2}
            if j:
                data["geolocation"] = HOSTILE_TAGS[(i + 5) % 14]
            records.append({"data": data})
    return records


# -- what is read -------------------------------------------------------------------------


def test_once_prints_exactly_the_matching_kits_telegrams_hostile_text_byte_for_byte(
    influx, tmp_path
):
    one = hostile_kit("Match")
    two = kit("Match", "two", 30, label="second kit", geolocation="51.0,4.9")
    other = kit("Other", "kit", 5)
    for records in (one, two, other):
        publish(tmp_path, influx, records)
    config = ini(tmp_path, influx.url, "projects = Match\nserials = hostile|two\n")

    done = subscribe(config)
    found = by_kit(pairs(done.stdout))
    assert set(found) == {"Match_hostile", "Match_two"}  # Other_kit does not match
    assert found["Match_hostile"] == expected(one)
    assert found["Match_two"] == expected(two)
    # byte for byte: the text lines carry exactly the strings published
    texts = {d["txt"] for _, d in found["Match_hostile"]}
    assert texts == {t for t in HOSTILE_TEXT if t}
    assert f"{len(found['Match_hostile']) + 30} data points read" in done.stderr


def test_a_second_once_prints_nothing_and_after_more_points_only_those(influx, tmp_path):
    first = kit("Again", "k1", 20)
    publish(tmp_path, influx, first)
    config = ini(tmp_path, influx.url, "projects = Again\n")
    assert pairs(subscribe(config).stdout) == expected(first)
    assert subscribe(config).stdout == ""

    more = kit("Again", "k1", 7, start=START + 20)[1:]  # data only: the same ident
    publish(tmp_path, influx, [first[0], *more])
    again = pairs(subscribe(config).stdout)
    assert [d for _, d in again] == [r["data"] for r in more]
    assert all(i == first[0]["ident"] for i, _ in again)  # the ident comes first again
    assert subscribe(config).stdout == ""


def test_same_second_series_a_batch_inside_a_second_and_a_late_point_none_lost_none_repeated(
    influx, tmp_path
):
    # five series share every second (mobile kit: a geolocation per point), three rows a chunk
    head = kit("Same", "k1", 0)[0]
    records = [head]
    for second in range(4):
        for spot in range(5):
            records.append({"data": {"time": START + second, "pm_25": spot,
                                     "geolocation": f"52.{spot},5.{spot}"}})  # fmt: skip
    publish(tmp_path, influx, records)
    config = ini(tmp_path, influx.url, "projects = Same\nbatch = 3\nlateness = 600\n")
    found = [d for _, d in pairs(subscribe(config).stdout)]
    assert sorted(map(json.dumps, found)) == sorted(json.dumps(r["data"]) for r in records[1:])
    assert [d["time"] for d in found] == sorted(d["time"] for d in found)  # time order

    # late: older than the cursor (START + 3) but within lateness, a series of its own
    late = [{"data": {"time": START + 1, "pm_25": 99, "geolocation": "53,6"}},
            {"data": {"time": START + 2, "pm_25": 98, "geolocation": "52.0,5.0"}}]  # fmt: skip
    publish(tmp_path, influx, [head, *late])
    again = [d for _, d in pairs(subscribe(config).stdout)]
    # the second late record overwrote a point already read (same series and second):
    # InfluxDB holds one point there, already handed on, so only the new series comes
    assert again == [late[0]["data"]]
    assert subscribe(config).stdout == ""


def write_direct(server, records: list[dict], database: str) -> None:
    """Records into ``database`` through sensorkit's own encoder and sink (no queue: fast)."""
    encoder = SeriesEncoder()
    client = InfluxClient(server.url)
    client.create_database(database)
    sink = InfluxV1Sink(client)
    lines = [line for t in parse_telegrams(jsonl(records), "big") for _, line in encoder.encode(t)]
    for first in range(0, len(lines), 5000):
        assert sink.write(database, "\n".join(lines[first : first + 5000]).encode()).ok
    client.close()


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


class SlowPipe:
    """A TCP relay to ``upstream`` that passes the server's answers at ``rate`` bytes a second
    at most, so a read takes seconds however fast the machine (no timing luck)."""

    def __init__(self, upstream: str, rate: int) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.target = (parts.hostname, parts.port)
        self.rate = rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, server, 0), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(server, client, self.rate), daemon=True
            ).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, rate: int) -> None:
        try:
            while data := source.recv(16384):
                sink.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def test_kill_9_during_a_large_read_then_a_restart_hands_on_every_point_exactly_once(
    influx, tmp_path
):
    n = 60_000
    records = kit("Big", "k1", n)
    write_direct(influx, records, "Big_k1")
    pipe = SlowPipe(influx.url, rate=1_000_000)  # about 6 MB of answer: some 6 s of reading
    out = tmp_path / "telegrams.jsonl"
    config = ini(tmp_path, pipe.url, "projects = Big\nbatch = 500\n", console=str(out))
    cursor = tmp_path / "state" / "subscriber" / "Big_k1.cursor.json"

    def partway() -> bool:
        """a commit was made, and more was written since (to be cut off at the restart)"""
        try:
            saved = json.loads(cursor.read_text())
        except (OSError, ValueError):
            return False
        return bool(saved["offset"]) and out.stat().st_size > saved["offset"] + 1000

    follower = subprocess.Popen(
        [sys.executable, "-m", "agent", "subscribe", "-c", str(config)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(partway, every=0.01)
    finally:
        follower.send_signal(signal.SIGKILL)  # also when the wait failed: no orphan
        follower.wait(timeout=60)
        pipe.close()
    saved = json.loads(cursor.read_text())
    assert saved["time"] - START < n - 1, "the read ended before the kill"
    assert out.stat().st_size > saved["offset"]  # written, not committed: a repeat if kept
    config = ini(tmp_path, influx.url, "projects = Big\nbatch = 500\n", console=str(out))
    subscribe(config)
    found = pairs(out.read_text())
    times = [d["time"] for _, d in found]
    assert len(times) == n and len(set(times)) == n, (saved["time"], len(times), len(set(times)))
    assert found == expected(records)


def test_database_gone_is_skipped_and_said(influx, tmp_path):
    records = kit("Here", "k1", 3)
    publish(tmp_path, influx, records)
    config = ini(tmp_path, influx.url, "databases = Here_k1, Gone_k1\n")
    done = subscribe(config, ok=False)
    assert done.returncode == 1
    assert pairs(done.stdout) == expected(records)
    assert "'Gone_k1' is not at" in done.stderr and "skipped" in done.stderr


def test_status_shows_each_database_cursor_and_how_far_behind(influx, tmp_path):
    publish(tmp_path, influx, kit("Stat", "k1", 5))
    config = ini(tmp_path, influx.url, "projects = Stat\n")
    subscribe(config)
    publish(tmp_path, influx, kit("Stat", "k1", 10)[:1] + kit("Stat", "k1", 10)[6:])
    shown = json.loads(run_sensorkit("status", "-c", str(config), "--json").stdout)
    [sub] = shown["subscribed"]
    assert (sub["database"], sub["cursor"], sub["behind_s"]) == ("Stat_k1", START + 4, 0)
    subscribe(config, "--since", str(START + 8))  # reads from START + 8 on, saying "newest"
    text = run_sensorkit("status", "-c", str(config)).stdout
    assert "subscribed Stat_k1: up to date" in text


# -- users and credentials ----------------------------------------------------------------


def auth_publish(tmp_path, server, records):
    user, password = server.admin
    publish(tmp_path, server, records, f"username = {user}\npassword = {password}\n")


def test_a_user_with_a_read_grant_reads_the_databases_named_in_its_config(auth_influx, tmp_path):
    records = kit("Grant", "k1", 12)
    auth_publish(tmp_path, auth_influx, records)
    auth_publish(tmp_path, auth_influx, kit("Grant", "k2", 3))
    auth_influx.query("CREATE USER reader WITH PASSWORD 'r#ad er'")
    auth_influx.query('GRANT READ ON "Grant_k1" TO reader')
    secret = "username = reader\npassword = r#ad er\n"
    config = ini(tmp_path, auth_influx.url, secret + "databases = Grant_k1\n")
    assert pairs(subscribe(config).stdout) == expected(records)

    # Listing instead: this user sees only what it may read, and is told so when that is none
    (tmp_path / "other").mkdir()
    auth_influx.query("CREATE USER nobody WITH PASSWORD 'n0body'")
    config = ini(tmp_path / "other", auth_influx.url, "username = nobody\npassword = n0body\n")
    done = subscribe(config)
    assert done.stdout == ""
    assert "matches [subscriber] projects" in done.stderr
    assert "name them in [subscriber] databases" in done.stderr


def test_a_database_without_a_read_grant_waits_saying_what_to_grant_the_others_go_on(
    auth_influx, tmp_path
):
    records = kit("Held", "k1", 4)
    auth_publish(tmp_path, auth_influx, records)
    auth_publish(tmp_path, auth_influx, kit("Held", "k2", 4))
    auth_influx.query("CREATE USER partial WITH PASSWORD 'p4rtial'")
    auth_influx.query('GRANT READ ON "Held_k1" TO partial')
    secret = "username = partial\npassword = p4rtial\n"
    config = ini(tmp_path, auth_influx.url, secret + "databases = Held_k2 Held_k1\n")
    done = subscribe(config, ok=False)
    assert done.returncode == 1
    assert pairs(done.stdout) == expected(records)
    assert 'GRANT READ ON "Held_k2" TO "partial"' in done.stderr
    assert "p4rtial" not in done.stderr


def test_a_server_that_is_not_there_fails_once_clearly_and_keeps_the_cursor(tmp_path):
    from influxd import free_port

    config = ini(tmp_path, f"http://127.0.0.1:{free_port()}", "databases = Any_k1\n")
    done = subscribe(config, ok=False)
    assert done.returncode == 1
    assert "connection refused" in done.stderr
    assert not (tmp_path / "state" / "subscriber" / "Any_k1.cursor.json").exists()


def test_wrong_credentials_fail_with_one_clear_message(auth_influx, tmp_path):
    config = ini(tmp_path, auth_influx.url, "username = admin\npassword = not-the-s3cret\n")
    done = subscribe(config, ok=False)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "401" in lines[0] and "[subscriber] username and password" in lines[0]
    assert "not-the-s3cret" not in done.stderr
    config = ini(tmp_path, auth_influx.url, "username = admin\npassword = x\ndatabases = A_b\n")
    done = subscribe(config, ok=False)
    assert done.returncode == 1 and "401" in done.stderr and "Traceback" not in done.stderr


# -- relays -------------------------------------------------------------------------------


def rows(server, measurement: str, db: str) -> list[dict]:
    return server.rows(f"SELECT * FROM {measurement}", db)


def same_in(a, b, db: str) -> bool:
    """B holds exactly A's series and points"""
    try:
        return (
            a.series(db) == b.series(db)
            and rows(a, "data", db) == rows(b, "data", db)
            and rows(a, "info", db) == rows(b, "info", db)
        )
    except (OSError, RuntimeError):
        return False


def test_relay_to_a_second_server_with_the_influx_output_even_while_it_is_down(
    fresh_influx, tmp_path
):
    a = fresh_influx
    b = InfluxServer().start()
    try:
        first = hostile_kit("Relay")
        publish(tmp_path, a, first)
        b.stop()  # B is down when the relay starts
        config = ini(
            tmp_path, a.url, "projects = Relay\noutputs = influx\npoll = 1\n", influx=b.url
        )
        follower = subprocess.Popen(
            [sys.executable, "-m", "agent", "subscribe", "-c", str(config)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            cursor = tmp_path / "state" / "subscriber" / "Relay_hostile.cursor.json"
            wait_for(cursor.exists)  # read and queued while B is down
            publish(tmp_path, a, kit("Relay", "hostile", 40, start=START + 500, label="later"))
            b.start_same_dirs()
            wait_for(lambda: same_in(a, b, "Relay_hostile"))
        finally:
            follower.send_signal(signal.SIGTERM)
            _, err = follower.communicate(timeout=120)
        assert follower.returncode == 130, err
        assert "Traceback" not in err
        assert len(rows(b, "data", "Relay_hostile")) == len(first) - len(HOSTILE_TEXT) + 1 + 40
    finally:
        b.cleanup()


def test_subscribe_piped_into_publish_relays_to_another_server(influx, tmp_path):
    records = hostile_kit("Pipe")
    publish(tmp_path, influx, records)
    target = InfluxServer().start()
    try:
        source = ini(tmp_path, influx.url, "projects = Pipe\n")
        (tmp_path / "to").mkdir()
        sink = write_config(
            tmp_path / "to" / "agent.ini",
            f"[kit]\nproject = P\nserial = p\nstate_dir = {tmp_path / 'to' / 'state'}\n"
            f"[influx]\nurl = {target.url}\n[console]\nenabled = no\n",
        )
        env = {**os.environ}
        reader = subprocess.Popen(
            [sys.executable, "-m", "agent", "subscribe", "-c", str(source), "--once"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        writer = subprocess.run(
            [sys.executable, "-m", "agent", "publish", "-c", str(sink), "-"],
            cwd=ROOT, stdin=reader.stdout, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        reader.stdout.close()
        assert reader.wait(timeout=60) == 0
        assert writer.returncode == 0, writer.stderr
        # every point and ident again: same values, times, labels and geolocations
        for measurement in ("info", "data"):
            mine = rows(target, measurement, "Pipe_hostile")
            theirs = rows(influx, measurement, "Pipe_hostile")
            assert mine == theirs, measurement
    finally:
        target.cleanup()


# -- settings and arguments ---------------------------------------------------------------


def test_since_takes_epoch_seconds_iso_8601_and_ages():
    now = 1_700_000_000
    assert parse_since("1600000000", now) == 1_600_000_000
    assert parse_since("2020-09-13T12:26:40Z", now) == 1_600_000_000
    assert parse_since("2020-09-13T14:26:40+02:00", now) == 1_600_000_000
    assert parse_since("2020-09-13 12:26:40", now) == 1_600_000_000  # UTC without a zone
    assert parse_since("2h", now) == now - 7200
    assert parse_since("7d", now) == now - 7 * 86400
    with pytest.raises(UsageError, match="--since 'yesterday': not a time; allowed"):
        parse_since("yesterday", now)


@pytest.mark.parametrize(
    "line, message",
    [
        ("projects = (unclosed", "[subscriber] projects: '(unclosed' is not a regular expression"),
        ("outputs = console, mqtt", "[subscriber] outputs: 'mqtt' is not an output"),
        ("databases = a/b", "[subscriber] databases: 'a/b'"),
        ("batch = 0", "[subscriber] batch: '0' is out of range"),
        ("lateness = soon", "[subscriber] lateness: 'soon' is not a whole number"),
        ("password = x", "[subscriber] username: is missing but a password is set"),
        ("url = http://u:p@host:8086", "[subscriber] url: holds a user name or password"),
        ("colour = red", "[subscriber] colour: unknown key"),
    ],
)
def test_bad_subscriber_settings_are_refused_naming_file_section_and_key(tmp_path, line, message):
    config = write_config(tmp_path / "agent.ini", f"{KIT}[subscriber]\n{line}\n")
    with pytest.raises(ConfigError) as refused:
        load(config)
    assert str(refused.value).startswith(f"{config} ")
    assert message in str(refused.value)
    assert "p@host" not in str(refused.value)


def test_subscriber_password_comes_from_its_own_variable(tmp_path, monkeypatch):
    config = write_config(
        tmp_path / "agent.ini", f"{KIT}[influx]\nusername = w\n[subscriber]\nusername = r\n"
    )
    monkeypatch.setenv("SENSORKIT_SUBSCRIBER_PASSWORD", "from-env")
    monkeypatch.setenv("SENSORKIT_INFLUX_PASSWORD", "not-this-one")
    settings = load(config)
    assert settings.subscriber.password == "from-env"
    assert "from-env" not in repr(settings.subscriber)
    assert settings.subscriber.matches("BdP_test_sense")
    assert not settings.subscriber.matches("_internal")


def test_the_fast_json_lines_are_the_telegram_contract_s_own(tmp_path):
    """DataColumns.json_lines (one template per chunk) == to_json_line of the Data telegram."""
    columns = DataColumns(["time", "a%r", "b", "geolocation", "label", "new", "t"])
    ident = Ident("P", "s", geolocation="g")
    rows = [
        [1, 1.5, 2, "g", "l", "0", None],
        [2, 1e21, -0.0, None, "l", "1", None],
        [3, 7, True, "other", "l", "0", 'say "hi" \\ ü'],
        [4, None, 1, "g", None, "0", ""],
    ]
    for chunk in (rows[:2], rows):  # numbers only (the template), then mixed
        assert columns.json_lines(chunk, "g") == [
            to_json_line(columns.data(row, ident)) for row in chunk
        ]


def test_a_cursor_survives_its_file_with_missing_tags_and_lateness_pruning(tmp_path):
    cursor = Cursor("A_b", time=None).advance(
        [(10, "l", None, "1"), (11, "l", "g", "0"), (20, "l", "g", "0")], 5, 3
    )
    assert cursor.time == 20 and cursor.info_time == 3
    assert cursor.seen == {(20, "l", "g", "0")}  # 10 and 11 are more than 5 s before 20
    save_cursor(tmp_path, cursor)
    assert load_cursor(tmp_path, "A_b") == replace(cursor, checked=ANY)  # save stamps it
    assert cursor.start(5) == 15 and cursor.start(5, since=3) == 3


# -- InfluxDB 2.x / 3.x: their InfluxQL /query with an API token ------------------------------


class TokenGate(FlakyProxy):
    """What 2.x's v1-compatible ``/query`` asks of a reader: ``Authorization: Token <t>``, or
    401 in 2.x's own error form. No 2.x server can be installed here: the stub checks the
    header, and the real influxd behind it answers the query."""

    def __init__(self, upstream: str, token: str) -> None:
        super().__init__(upstream=upstream)
        self.token = token
        self.authorizations: list[str] = []

    def _respond(self, handler, path, body, scripted):
        given = handler.headers.get("Authorization", "")
        self.authorizations.append(given)
        if given != f"Token {self.token}":
            payload = json.dumps({"code": "unauthorized", "message": "unauthorized access"})
            self._answer(handler, 401, payload.encode(), {"Content-Type": "application/json"})
            return 401
        del handler.headers["Authorization"]  # the 1.x server behind has auth off
        return super()._respond(handler, path, body, scripted)


def test_an_api_token_reads_a_2x_server_s_influxql_endpoint(influx, tmp_path):
    records = kit("Tok", "one", 12)
    publish(tmp_path, influx, records)
    gate = TokenGate(influx.url, "s3cret-token").start()
    try:
        config = ini(tmp_path, gate.url, "token = s3cret-token\ndatabases = Tok_one\n")
        config.chmod(0o600)
        done = subscribe(config)
        assert by_kit(pairs(done.stdout)) == {"Tok_one": expected(records)}
        assert set(gate.authorizations) == {"Token s3cret-token"}

        (tmp_path / "w").mkdir()
        wrong = ini(tmp_path / "w", gate.url, "token = not-it\ndatabases = Tok_one\n")
        done = subscribe(wrong, ok=False)
        assert done.returncode == 1
        assert "401" in done.stderr and "[subscriber] token" in done.stderr
        assert "not-it" not in done.stderr
    finally:
        gate.stop()


def test_a_token_and_a_user_together_are_refused(tmp_path):
    config = ini(tmp_path, "http://127.0.0.1:9", "username = u\ntoken = t\n")
    with pytest.raises(ConfigError, match=r"\[subscriber\] token: is set and so is username"):
        load(config)
