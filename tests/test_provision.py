"""``sensorkit provision`` against a real auth-enabled influxd: what it makes, what the kit
user may then do, the means the continuous queries keep, idempotence, dry runs, hostile names,
``--kits`` agent.ini files that publish, and one clear message per failure."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import ROOT, _require_influxd, run_sensorkit
from influxd import InfluxServer, free_port

from agent.config import load
from agent.influx import InfluxClient, quote_literal, run_statement
from agent.influxql import go_duration, parse_duration, same_statement, tokens

ADMIN_ENV = "SENSORKIT_ADMIN_PASSWORD"
UNCHANGED = ("exists", "present", "kept")


# -- helpers -----------------------------------------------------------------------------


def provision(server, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``sensorkit provision --url <server> ARGS`` with the admin password in the environment."""
    environment = {ADMIN_ENV: server.admin[1]} | (env or {})
    return run_sensorkit("provision", "--url", server.url, *args, env=environment)


def request(server, path: str, params: dict, user: tuple[str, str], body: bytes | None = None):
    """(status, decoded JSON or {}) of one request as ``user``."""
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    url = f"{server.url}{path}?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, data=body, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            text = answer.read()
            return answer.status, json.loads(text) if text else {}
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, json.loads(text) if text else {}


def write_as(server, user: tuple[str, str], db: str, lines: str) -> int:
    return request(server, "/write", {"db": db, "precision": "s"}, user, lines.encode())[0]


def read_as(server, user: tuple[str, str], db: str, q: str) -> str:
    """The error the server gives ``user`` for ``q`` on ``db``, or "" when it answered."""
    status, answer = request(server, "/query", {"db": db, "q": q}, user, b"")
    if status != 200:
        return answer.get("error", str(status))
    return next((r["error"] for r in answer.get("results", []) if "error" in r), "")


def rows(server, q: str, db: str = "") -> list[dict]:
    return server.rows(q, db)


def snapshot(server) -> dict:
    """Everything provisioning could touch: databases, users, grants, policies, queries."""
    dbs = sorted(r["name"] for r in rows(server, "SHOW DATABASES"))
    users = sorted((r["user"], r["admin"]) for r in rows(server, "SHOW USERS"))
    return {
        "databases": dbs,
        "users": users,
        "grants": {
            u: sorted(
                (r["database"], r["privilege"]) for r in rows(server, f'SHOW GRANTS FOR "{u}"')
            )
            for u, _ in users
        },
        "policies": {
            db: sorted(
                tuple(r.values()) for r in rows(server, f'SHOW RETENTION POLICIES ON "{db}"')
            )
            for db in dbs
        },
        "queries": sorted(
            (series.get("name"), tuple(v))
            for result in server.query("SHOW CONTINUOUS QUERIES")
            for series in result.get("series", [])
            for v in series.get("values", [])
        ),
    }


def queries_on(server, db: str) -> dict[str, str]:
    """Name -> text of the continuous queries on ``db``, as the server shows them."""
    return {
        values[0]: values[1]
        for result in server.query("SHOW CONTINUOUS QUERIES")
        for series in result.get("series", [])
        if series["name"] == db
        for values in series.get("values", [])
    }


def printed_password(stdout: str) -> str:
    [password] = re.findall(r"^password = (\S+)$", stdout, re.MULTILINE)
    return password


def item_states(stdout: str, db: str) -> dict[str, str]:
    """``what -> state`` of every item line the run printed for ``db``."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith(f"{db}: ") and line.count(": ") >= 2:
            _, what, state = line.split(": ", 2)
            out[what] = state
    return out


def jsonl(project: str, serial: str, label: str, points: list[tuple[int, float]]) -> str:
    records = [{"ident": {"project": project, "serial": serial, "label": label}}]
    records += [{"data": {"time": t, "pm_25": v}} for t, v in points]
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.fixture
def server(auth_influx):
    return auth_influx


# -- what it makes -----------------------------------------------------------------------


def test_one_kit_gets_database_user_write_grant_retention_and_continuous_queries(server):
    done = provision(server, "--project", "Make", "--serial", "k1", "--label", "garden")
    assert done.returncode == 0, done.stderr
    assert {"Make_k1", "Make_k1_means"} <= {r["name"] for r in rows(server, "SHOW DATABASES")}
    assert ("Make_k1", False) in {(r["user"], r["admin"]) for r in rows(server, "SHOW USERS")}
    grants = {(r["database"], r["privilege"]) for r in rows(server, 'SHOW GRANTS FOR "Make_k1"')}
    assert grants == {("Make_k1", "WRITE")}
    [raw] = rows(server, 'SHOW RETENTION POLICIES ON "Make_k1"')
    assert (raw["name"], raw["duration"], raw["default"]) == ("raw", "2160h0m0s", True)
    [means] = rows(server, 'SHOW RETENTION POLICIES ON "Make_k1_means"')
    assert (means["name"], go_duration(means["duration"]), means["default"]) == (
        "means",
        parse_duration("10y"),
        True,
    )
    assert means["shardGroupDuration"] == "8736h0m0s"  # a year a shard, not 521 small ones
    queries = queries_on(server, "Make_k1")
    assert set(queries) == {"means_1h", "means_1d"}
    for name, every in (("means_1h", "1h"), ("means_1d", "1d")):
        assert f"RESAMPLE EVERY {every} FOR 1w" in queries[name]
        assert "SELECT mean(*) INTO Make_k1_means.means.data_" in queries[name]
        assert f"FROM Make_k1.raw.data GROUP BY time({every}), label, geolocation" in queries[name]
    # the password is printed once, in the settings to paste, and nowhere else
    password = printed_password(done.stdout)
    assert len(password) >= 32 and done.stdout.count(password) == 1
    assert password not in done.stderr
    assert "label = garden" in done.stdout and "username = Make_k1" in done.stdout


def test_the_kit_user_may_write_its_database_only_and_read_none(server):
    done = provision(server, "--project", "Own", "--serial", "k1")
    assert done.returncode == 0, done.stderr
    assert provision(server, "--project", "Own", "--serial", "k2").returncode == 0
    kit = ("Own_k1", printed_password(done.stdout))
    line = f"data,label=a,geolocation=1\\,2,new=0 pm_25=1.0 {int(time.time()) - 60}"
    assert write_as(server, kit, "Own_k1", line) == 204
    assert write_as(server, kit, "Own_k2", line) == 403  # another kit's database
    assert write_as(server, kit, "Own_k1_means", line) == 403  # its own long-term record
    assert "requires READ" in read_as(server, kit, "Own_k1", "SELECT * FROM data")
    assert "requires READ" in read_as(server, kit, "Own_k2", "SELECT * FROM data")
    assert "admin" in read_as(server, kit, "", 'DROP DATABASE "Own_k2"')
    assert [r["pm_25"] for r in rows(server, "SELECT * FROM data", "Own_k1")] == [1.0]
    assert rows(server, "SELECT * FROM data", "Own_k2") == []


@pytest.fixture
def cq_influx():
    """An auth server that runs continuous queries, as a real one does."""
    _require_influxd()
    server = InfluxServer(auth=True, continuous_queries=True).start()
    yield server
    server.cleanup()


def wait_rows(server, q: str, db: str, count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = rows(server, q, db)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_the_continuous_queries_keep_hourly_and_daily_means_of_every_field(cq_influx, tmp_path):
    server = cq_influx
    done = provision(server, "--project", "Cq", "--serial", "k1", "--label", "roof")
    assert done.returncode == 0, done.stderr
    kit = ("Cq_k1", printed_password(done.stdout))
    # two whole hours of yesterday (in the queries' week and before today, whatever the
    # time of day): pm_25 in both, co2 only from the second hour on (a field added later);
    # the first point is new=1 (first after an ident) and still counts in its hour's mean
    hour = (int(time.time()) // 86400 - 1) * 86400 + 10 * 3600
    lines = []
    for i in range(12):
        new = 1 if i == 0 else 0
        lines.append(
            f"data,label=roof,geolocation=51.4\\,6.1,new={new} pm_25={i}.0 {hour + 300 * i}"
        )
    for i in range(12):
        lines.append(
            f"data,label=roof,geolocation=51.4\\,6.1,new=0 pm_25={100 + i}.0,co2={400 + 2 * i}.0 "
            f"{hour + 3600 + 300 * i}"
        )
    assert write_as(server, kit, "Cq_k1", "\n".join(lines)) == 204
    # influxd runs a CQ at once when it has not run since start: restart, so the run
    # certainly comes after the points (the one at creation may have come before)
    server.restart()
    hourly = wait_rows(server, "SELECT * FROM data_1h", "Cq_k1_means", 2)
    assert [(r["time"], r["mean_pm_25"], r.get("mean_co2")) for r in hourly] == [
        (hour, 5.5, None),
        (hour + 3600, 105.5, 411.0),
    ]
    assert {(r["label"], r["geolocation"]) for r in hourly} == {("roof", "51.4,6.1")}
    assert "new" not in hourly[0]  # grouped by the kit's tags, not split at each restart
    [daily] = wait_rows(server, "SELECT * FROM data_1d", "Cq_k1_means", 1)
    assert daily["time"] == hour - 10 * 3600
    assert daily["mean_pm_25"] == pytest.approx(sum(range(12)) / 24 + sum(range(100, 112)) / 24)
    assert daily["mean_co2"] == 411.0


def test_an_existing_database_keeps_its_data_gets_the_retention_and_its_means_computed(server):
    server.query('CREATE DATABASE "Old_k1"')  # as an admin's `sensorkit publish` makes it
    hour = (int(time.time()) // 86400 - 2) * 86400 + 8 * 3600
    lines = [
        f"data,label=x,geolocation=1\\,2,new=0 pm_25={i}.0 {hour + 600 * i}" for i in range(12)
    ]
    assert write_as(server, server.admin, "Old_k1", "\n".join(lines)) == 204
    done = provision(server, "--project", "Old", "--serial", "k1")
    assert done.returncode == 0, done.stderr
    states = item_states(done.stdout, "Old_k1")
    assert states['retention policy "autogen" on "Old_k1" (default)'] == (
        "altered: kept forever, now 90d"
    )
    assert states['means of the data already in "Old_k1"'].startswith("computed from ")
    [autogen] = rows(server, 'SHOW RETENTION POLICIES ON "Old_k1"')
    assert (autogen["name"], autogen["duration"], autogen["default"]) == (
        "autogen",
        "2160h0m0s",
        True,
    )
    assert len(rows(server, "SELECT * FROM data", "Old_k1")) == 12  # still there, still default
    hourly = rows(server, "SELECT * FROM data_1h", "Old_k1_means")
    assert [(r["time"], r["mean_pm_25"]) for r in hourly] == [(hour, 2.5), (hour + 3600, 8.5)]
    [daily] = rows(server, "SELECT * FROM data_1d", "Old_k1_means")
    assert daily["mean_pm_25"] == 5.5
    again = provision(server, "--project", "Old", "--serial", "k1")
    assert "nothing to change" in again.stdout and "computed from" not in again.stdout


# -- idempotence -------------------------------------------------------------------------


def test_a_second_run_changes_nothing_and_says_so_for_every_item(server, tmp_path):
    first = provision(server, "--project", "Again", "--serial", "k1")
    assert first.returncode == 0, first.stderr
    before = snapshot(server)
    second = provision(server, "--project", "Again", "--serial", "k1")
    assert second.returncode == 0, second.stderr
    assert snapshot(server) == before
    states = item_states(second.stdout, "Again_k1")
    assert len(states) == len(item_states(first.stdout, "Again_k1")) == 8
    assert all(state.startswith(UNCHANGED) for state in states.values()), states
    assert states['user "Again_k1"'].startswith("exists; password unchanged")
    assert states['continuous query "means_1h" on "Again_k1"'] == "present, same text"
    assert "Again_k1: nothing to change" in second.stdout
    assert "password = " not in second.stdout  # an unchanged password is not known, not shown


def test_a_new_keep_alters_the_policy_and_a_changed_query_is_replaced(server):
    assert provision(server, "--project", "Alter", "--serial", "k1").returncode == 0
    done = provision(
        server, "--project", "Alter", "--serial", "k1", "--keep", "30d", "--keep-means", "5y"
    )
    assert done.returncode == 0, done.stderr
    states = item_states(done.stdout, "Alter_k1")
    assert states['retention policy "raw" on "Alter_k1" (default)'] == "altered: kept 90d, now 30d"
    assert states['retention policy "means" on "Alter_k1_means" (default)'] == (
        "altered: kept 10y, now 5y"
    )
    assert rows(server, 'SHOW RETENTION POLICIES ON "Alter_k1"')[0]["duration"] == "720h0m0s"
    # someone changes a query by hand: the next run puts it back
    server.query('DROP CONTINUOUS QUERY "means_1h" ON "Alter_k1"')
    server.query(
        'CREATE CONTINUOUS QUERY "means_1h" ON "Alter_k1" BEGIN SELECT mean(*) INTO '
        '"Alter_k1_means"."means"."data_1h" FROM "Alter_k1"."raw"."data" GROUP BY time(1h) END'
    )
    done = provision(
        server, "--project", "Alter", "--serial", "k1", "--keep", "30d", "--keep-means", "5y"
    )
    states = item_states(done.stdout, "Alter_k1")
    assert states['continuous query "means_1h" on "Alter_k1"'] == "replaced: its text differed"
    assert states['continuous query "means_1d" on "Alter_k1"'] == "present, same text"
    assert "Alter_k1: 1 change" in done.stdout
    again = provision(
        server, "--project", "Alter", "--serial", "k1", "--keep", "30d", "--keep-means", "5y"
    )
    assert "Alter_k1: nothing to change" in again.stdout


def test_a_password_file_is_private_reused_and_replaced_only_when_asked(server, tmp_path):
    secret = tmp_path / "kit.password"
    done = provision(server, "--project", "File", "--serial", "k1", "--password-file", str(secret))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    password = secret.read_text().strip()
    assert password not in done.stdout + done.stderr
    assert f"password_file = {secret}" in done.stdout
    line = f"data,label=a,geolocation=1\\,2,new=0 pm_25=1.0 {int(time.time()) - 60}"
    assert write_as(server, ("File_k1", password), "File_k1", line) == 204
    again = provision(server, "--project", "File", "--serial", "k1", "--password-file", str(secret))
    assert f'user "File_k1": exists; the password in {secret} works' in again.stdout
    assert secret.read_text().strip() == password
    rotated = provision(
        server,
        "--project",
        "File",
        "--serial",
        "k1",
        "--password-file",
        str(secret),
        "--rotate-password",
    )
    assert rotated.returncode == 0, rotated.stderr
    new = secret.read_text().strip()
    assert new != password and new not in rotated.stdout + rotated.stderr
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert read_as(server, ("File_k1", password), "", "SHOW DATABASES") == "authorization failed"
    assert read_as(server, ("File_k1", new), "", "SHOW DATABASES") == ""


def test_a_user_with_more_than_write_is_cut_to_write_and_told_of_other_grants(server):
    server.query('CREATE DATABASE "Wide_k1"')
    server.query('CREATE DATABASE "Wide_other"')
    server.query("CREATE USER \"Wide_k1\" WITH PASSWORD 'wide-pass'")
    server.query('GRANT ALL ON "Wide_k1" TO "Wide_k1"')
    server.query('GRANT READ ON "Wide_other" TO "Wide_k1"')
    done = provision(server, "--project", "Wide", "--serial", "k1")
    assert done.returncode == 0, done.stderr
    states = item_states(done.stdout, "Wide_k1")
    assert states['grant WRITE on "Wide_k1" to "Wide_k1"'] == (
        "granted (it had ALL PRIVILEGES: now WRITE only)"
    )
    grants = {(r["database"], r["privilege"]) for r in rows(server, 'SHOW GRANTS FOR "Wide_k1"')}
    assert grants == {("Wide_k1", "WRITE"), ("Wide_other", "READ")}
    [warning] = [line for line in done.stderr.splitlines() if "warning" in line]
    assert "also has READ on 'Wide_other'" in warning
    assert 'REVOKE READ ON "Wide_other" FROM "Wide_k1"' in warning
    assert "wide-pass" not in done.stdout + done.stderr


def test_an_admin_as_kit_user_is_refused(server):
    done = provision(server, "--project", "Adm", "--serial", "k1", "--user", "admin")
    assert done.returncode == 1
    assert "user 'admin' is an admin" in done.stderr and "--user" in done.stderr
    assert "Adm_k1" not in {r["name"] for r in rows(server, "SHOW DATABASES")}


# -- dry run -----------------------------------------------------------------------------


def test_dry_run_prints_the_influxql_masks_passwords_and_changes_nothing(server, tmp_path):
    before = snapshot(server)
    kits = tmp_path / "kits.csv"
    kits.write_text("project,serial,label,geolocation\nDry,k1,a,\n")
    done = provision(server, "--kits", str(kits), "--out", str(tmp_path / "out"), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert snapshot(server) == before
    assert not (tmp_path / "out").exists()
    assert "dry run, nothing is changed" in done.stdout
    assert '    CREATE DATABASE "Dry_k1" WITH DURATION 90d NAME "raw"' in done.stdout
    assert "    CREATE USER \"Dry_k1\" WITH PASSWORD '********'" in done.stdout
    assert '    GRANT WRITE ON "Dry_k1" TO "Dry_k1"' in done.stdout
    assert done.stdout.count("CREATE CONTINUOUS QUERY") == 2
    assert "would be written" in done.stdout
    assert "password = " not in done.stdout
    # and for an existing user, a rotation is shown masked and not done
    first = provision(server, "--project", "Dry", "--serial", "k2")
    password = printed_password(first.stdout)
    before = snapshot(server)
    done = provision(server, "--project", "Dry", "--serial", "k2", "--rotate-password", "--dry-run")
    assert "    SET PASSWORD FOR \"Dry_k2\" = '********'" in done.stdout
    assert snapshot(server) == before
    assert read_as(server, ("Dry_k2", password), "", "SHOW DATABASES") == ""
    assert not re.search(r"'[A-Za-z0-9_-]{32}'", done.stdout)  # no password in the text


# -- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("project", "serial", "problem"),
    [
        ('Q"x', "k1", "holds '\"'"),
        ("Back\\slash", "k1", "holds '\\\\'"),
        ("Sp ace", "k1", "holds ' '"),
        ('x";DROP', "k1", "holds '\"'"),
        ("New\nDROP DATABASE Make_k1", "k1", "unprintable character U+000A"),
        ("..", "k1", "is '.' or '..'"),
        ("a/b", "k1", "holds '/'"),
        ("Bell\x07", "k1", "U+0007"),
        ("Ok", "k1_means", "ends like another kit's means database"),
        ("Co:lon", "k1", "':'"),
    ],
)
def test_a_hostile_name_is_refused_with_exit_2_and_nothing_changes(
    server, project, serial, problem
):
    before = snapshot(server)
    done = provision(server, "--project", project, "--serial", serial)
    assert done.returncode == 2, done.stdout + done.stderr
    assert problem in done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(server) == before


@pytest.mark.parametrize(
    ("project", "serial"),
    [("o'k;DROP_DATABASE", "select"), ("x);--", "END"), ("é-ü.1", "2.0"), ("_", "k")],
)
def test_names_with_quotes_semicolons_and_keywords_are_quoted_and_inject_nothing(
    server, project, serial
):
    before = snapshot(server)
    done = provision(server, "--project", project, "--serial", serial)
    assert done.returncode == 0, done.stderr
    db = f"{project}_{serial}"
    after = snapshot(server)
    assert set(after["databases"]) - set(before["databases"]) == {db, db + "_means"}
    assert set(before["databases"]) <= set(after["databases"])
    assert set(after["users"]) - set(before["users"]) == {(db, False)}
    assert after["grants"][db] == [(db, "WRITE")]
    assert {k: v for k, v in after["grants"].items() if k != db} == before["grants"]
    assert len(after["queries"]) == len(before["queries"]) + 2
    kit = (db, printed_password(done.stdout))
    line = f"data,label=a,geolocation=1\\,2,new=0 pm_25=3.0 {int(time.time()) - 60}"
    assert write_as(server, kit, db, line) == 204
    again = provision(server, "--project", project, "--serial", serial)
    assert f"{db}: nothing to change" in again.stdout, again.stdout  # quoted text compares


def test_a_password_with_quotes_backslashes_and_a_newline_is_one_literal(server):
    client = InfluxClient(server.url, *server.admin)
    hostile = "it's \\ a'; DROP DATABASE \"x\" -- \n'"
    run_statement(client, f'CREATE USER "lit" WITH PASSWORD {quote_literal(hostile)}', "test")
    assert read_as(server, ("lit", hostile), "", "SHOW DATABASES") == ""
    assert read_as(server, ("lit", "it"), "", "SHOW DATABASES") == "authorization failed"
    client.close()


def test_statement_tokens_ignore_quoting_and_duration_units_but_not_names():
    shown = "CREATE CONTINUOUS QUERY a ON db RESAMPLE FOR 1w BEGIN SELECT mean(*) END"
    assert same_statement(
        shown, 'CREATE CONTINUOUS QUERY "a" ON "db" RESAMPLE FOR 7d BEGIN SELECT mean(*) END'
    )
    assert not same_statement(shown, shown.replace(" db ", " Db "))
    assert not same_statement(shown, shown.replace("1w", "6d"))
    assert tokens('"a\\"b"') == [("ident", 'a"b')]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * 86400), ("10y", 3650 * 86400), ("2w", 14 * 86400), ("1h", 3600), ("inf", 0)],
)
def test_durations_take_h_d_w_y_and_inf(text, seconds):
    assert parse_duration(text).seconds == seconds


@pytest.mark.parametrize("text", ["90", "0d", "30m", "1.5d", "-1d", "ten years"])
def test_a_bad_duration_is_refused_with_exit_2(server, text):
    done = provision(server, "--project", "Dur", "--serial", "k1", "--keep", text)
    assert done.returncode == 2
    assert "--keep" in done.stderr and "Traceback" not in done.stderr


# -- many kits ---------------------------------------------------------------------------


def test_a_kits_file_of_three_gives_three_agent_ini_that_each_publish_to_their_own_database(
    server, tmp_path
):
    kits = tmp_path / "kits.csv"
    kits.write_text(
        "project,serial,label,geolocation\n"
        'Net,k1,garden,"51.42,6.13,22.9"\n'
        "Net,k2,roof,\n"
        'Net,k3,school,"52.1,5.2"\n'
    )
    out = tmp_path / "out"
    done = provision(server, "--kits", str(kits), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "3 kits: 3 changed, 0 already as asked, 0 failed" in done.stdout
    now = int(time.time())
    for n, label in ((1, "garden"), (2, "roof"), (3, "school")):
        ini = out / f"Net_k{n}" / "agent.ini"
        assert stat.S_IMODE(ini.stat().st_mode) == 0o600
        settings = load(ini)
        assert (settings.kit.project, settings.kit.serial, settings.kit.label) == (
            "Net",
            f"k{n}",
            label,
        )
        assert {s.backend for s in settings.sensors} == {"hardware"}
        assert not settings.console.enabled
        assert (settings.influx.url, settings.influx.database, settings.influx.username) == (
            server.url,
            f"Net_k{n}",
            f"Net_k{n}",
        )
        assert settings.influx.password not in done.stdout + done.stderr
        text = ini.read_text()
        assert "# Seconds per window" in text  # the shipped comments are all there
        telegrams = tmp_path / f"k{n}.jsonl"
        telegrams.write_text(jsonl("Net", f"k{n}", label, [(now - 120, n), (now - 60, 10 * n)]))
        state = {"STATE_DIRECTORY": str(tmp_path / f"state{n}")}
        sent = run_sensorkit("publish", "-c", str(ini), str(telegrams), "--wait", "20", env=state)
        assert sent.returncode == 0, sent.stderr
    for n in (1, 2, 3):
        found = rows(server, "SELECT pm_25, label FROM data", f"Net_k{n}")
        assert [(r["pm_25"], r["label"]) for r in found] == [
            (n, ("garden", "roof", "school")[n - 1]),
            (10 * n, ("garden", "roof", "school")[n - 1]),
        ]
    # kit 1's credentials cannot land a telegram in kit 2's database
    stray = tmp_path / "stray.jsonl"
    stray.write_text(jsonl("Net", "k2", "stray", [(now - 30, 99)]))
    sent = run_sensorkit(
        "publish",
        "-c",
        str(out / "Net_k1" / "agent.ini"),
        str(stray),
        "--wait",
        "2",
        env={"STATE_DIRECTORY": str(tmp_path / "stray")},
    )
    assert sent.returncode == 1
    assert 99 not in [r["pm_25"] for r in rows(server, "SELECT pm_25 FROM data", "Net_k2")]
    # a second run keeps the files (their passwords still work) and changes nothing
    before = {n: (out / f"Net_k{n}" / "agent.ini").read_text() for n in (1, 2, 3)}
    again = provision(server, "--kits", str(kits), "--out", str(out))
    assert "3 kits: 0 changed, 3 already as asked, 0 failed" in again.stdout, again.stdout
    assert {n: (out / f"Net_k{n}" / "agent.ini").read_text() for n in (1, 2, 3)} == before
    assert "works" in item_states(again.stdout, "Net_k2")['user "Net_k2"']


def test_a_kit_whose_user_exists_without_a_known_password_fails_alone(server, tmp_path):
    server.query("CREATE USER \"Lost_k2\" WITH PASSWORD 'forgotten'")
    kits = tmp_path / "kits.csv"
    kits.write_text("project,serial,label,geolocation\nLost,k1,,\nLost,k2,,\nLost,k3,,\n")
    done = provision(server, "--kits", str(kits), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    [message] = [line for line in done.stderr.splitlines() if "Lost_k2" in line]
    assert "its password is not known here" in message and "--rotate-password" in message
    assert "3 kits: 2 changed, 0 already as asked, 1 failed" in done.stdout
    assert not (tmp_path / "out" / "Lost_k2").exists()
    assert "Lost_k2" not in {r["name"] for r in rows(server, "SHOW DATABASES")}
    fixed = provision(
        server, "--kits", str(kits), "--out", str(tmp_path / "out"), "--rotate-password"
    )
    assert fixed.returncode == 0, fixed.stderr
    settings = load(tmp_path / "out" / "Lost_k2" / "agent.ini")
    assert read_as(server, ("Lost_k2", settings.influx.password), "", "SHOW DATABASES") == ""


def test_rotating_a_kits_password_rewrites_only_its_line_and_a_changed_row_is_told(
    server, tmp_path
):
    kits = tmp_path / "kits.csv"
    kits.write_text("project,serial,label,geolocation\nTurn,k1,old,\n")
    out = tmp_path / "out"
    assert provision(server, "--kits", str(kits), "--out", str(out)).returncode == 0
    ini = out / "Turn_k1" / "agent.ini"
    before = ini.read_text()
    old = load(ini).influx.password
    kits.write_text("project,serial,label,geolocation\nTurn,k1,new,\n")
    done = run_sensorkit(
        "-v",
        "provision",
        "--url",
        server.url,
        "--kits",
        str(kits),
        "--out",
        str(out),
        "--rotate-password",
        env={ADMIN_ENV: server.admin[1]},
    )
    assert done.returncode == 0, done.stderr
    new = load(ini).influx.password
    assert new != old
    changed = [
        (a, b)
        for a, b in zip(before.splitlines(), ini.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert changed == [(f"password = {old}", f"password = {new}")]
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert old not in done.stdout + done.stderr and new not in done.stdout + done.stderr
    assert read_as(server, ("Turn_k1", old), "", "SHOW DATABASES") == "authorization failed"
    assert read_as(server, ("Turn_k1", new), "", "SHOW DATABASES") == ""
    [warning] = [line for line in done.stderr.splitlines() if "warning" in line]
    assert "[kit] label is 'old', not 'new'" in warning and "delete the file" in warning


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--kits", "k.csv", "--project", "A"],
            "--kits takes every kit from the file; leave out --project",
        ),
        (["--kits", "k.csv", "--password-file", "p"], "leave out --password-file"),
        (["--project", "A"], "give --project and --serial (one kit), or --kits FILE"),
        (["--project", "A", "--serial", "b", "--user", "a:b"], "--user 'a:b' holds ':'"),
        (["--project", "A", "--serial", "b", "--geolocation", "north"], "geolocation 'north'"),
    ],
)
def test_options_that_do_not_go_together_are_bad_usage(server, tmp_path, args, expected):
    (tmp_path / "k.csv").write_text("project,serial,label,geolocation\nA,b,,\n")
    environment = {ADMIN_ENV: server.admin[1]}
    done = subprocess.run(
        [sys.executable, "-m", "agent", "provision", "--url", server.url, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **environment, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("project,serial\nA,b\n", "line 1: the header row must name the columns"),
        (
            "project,serial,label,geolocation\nA,k1,x,51.4,6.1\n",
            "line 2: 5 values, expected 4 (project, serial, label, geolocation); a geolocation "
            "holds commas, so put it in double quotes",
        ),
        (
            "project,serial,label,geolocation\nA,k1,,\nA b,k2,,\n",
            "line 3: project 'A b' holds ' '",
        ),
        (
            "project,serial,label,geolocation\n\nA,k1,,\nA,k1,,\n",
            "line 4: kit 'A_k1' is also on line 3",
        ),
        (
            'project,serial,label,geolocation\nA,k1,,"95,6"\n',
            "line 2: geolocation '95,6' is out of range",
        ),
        (
            "project,serial,label,geolocation\nA,k1,back\\,\n",
            "line 2: label 'back\\\\' ends with a backslash",
        ),
        ("project,serial,label,geolocation\n", "no kits after the header row"),
    ],
)
def test_a_bad_kits_file_names_each_bad_row_by_line_and_provisions_nothing(
    server, tmp_path, content, expected
):
    kits = tmp_path / "kits.csv"
    kits.write_text(content)
    before = snapshot(server)
    done = provision(server, "--kits", str(kits), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert expected in done.stderr, done.stderr
    assert str(kits) in done.stderr and "Traceback" not in done.stderr
    assert snapshot(server) == before
    assert not (tmp_path / "out").exists()


# -- failures ----------------------------------------------------------------------------


def one_message(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    return line


def test_a_wrong_admin_password_gets_one_message_exit_1_and_is_never_shown(server):
    wrong = "wr0ng-Secret#1"
    done = provision(server, "--project", "W", "--serial", "k1", env={ADMIN_ENV: wrong})
    assert done.returncode == 1
    message = one_message(done)
    assert "refused admin user 'admin'" in message and "401" in message
    assert "--admin-user" in message and ADMIN_ENV in message
    assert wrong not in done.stdout + done.stderr


def test_a_user_who_is_not_an_admin_gets_one_message_and_exit_1(server):
    server.query("CREATE USER \"plain\" WITH PASSWORD 'plain-pass'")
    done = provision(
        server,
        "--project",
        "W",
        "--serial",
        "k2",
        "--admin-user",
        "plain",
        env={ADMIN_ENV: "plain-pass"},
    )
    assert done.returncode == 1
    message = one_message(done)
    assert "user 'plain'" in message and "is not an admin" in message and "403" in message
    assert "plain-pass" not in done.stdout + done.stderr


def test_an_unreachable_server_gets_one_message_and_exit_1(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = run_sensorkit(
        "provision", "--url", url, "--project", "W", "--serial", "k3", env={ADMIN_ENV: "x"}
    )
    assert done.returncode == 1
    message = one_message(done)
    assert f"cannot reach InfluxDB at {url}" in message and "--url" in message


def test_no_admin_password_and_no_terminal_is_bad_usage(server):
    environment = {k: v for k, v in os.environ.items() if k != ADMIN_ENV}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "provision",
            "--url",
            server.url,
            "--project",
            "W",
            "--serial",
            "k4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        input="",
        timeout=60,
        env=environment,
        start_new_session=True,  # no controlling terminal: getpass reads the empty stdin
    )
    assert done.returncode == 2
    assert f"no password for admin 'admin': type it at the prompt or set ${ADMIN_ENV}" in (
        done.stderr
    )


def test_a_template_without_an_influx_section_is_refused_before_anything(server, tmp_path):
    kits = tmp_path / "kits.csv"
    kits.write_text("project,serial,label,geolocation\nNoSec,k1,,\n")
    template = tmp_path / "template.ini"
    template.write_text("[kit]\nproject = x\n")
    before = snapshot(server)
    done = provision(
        server, "--kits", str(kits), "--out", str(tmp_path / "out"), "--template", str(template)
    )
    assert done.returncode == 2
    assert "--template: the template has no [dylos] section" in done.stderr
    assert snapshot(server) == before


def test_an_agent_ini_that_would_not_load_is_named_not_a_traceback(server, tmp_path):
    kits = tmp_path / "kits.csv"
    kits.write_text("project,serial,label,geolocation\nBadTpl,k1,,\n")
    template = tmp_path / "template.ini"
    template.write_text((ROOT / "agent.ini").read_text().replace("[simulated]", "[nonsense]"))
    done = provision(
        server, "--kits", str(kits), "--out", str(tmp_path / "out"), "--template", str(template)
    )
    assert done.returncode == 2
    assert "unknown section" in done.stderr and "line 2" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_server_without_auth_is_provisioned_with_a_warning(influx):
    done = run_sensorkit(
        "provision",
        "--url",
        influx.url,
        "--project",
        "NoAuth",
        "--serial",
        "k1",
        env={ADMIN_ENV: "anything"},
    )
    assert done.returncode == 0, done.stderr
    assert "does not check passwords ([http] auth-enabled = false)" in done.stderr
