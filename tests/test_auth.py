"""An auth-enabled InfluxDB: admin creates the database, a user with only a WRITE grant still
writes, a wrong password fails with one clear message that never shows the password."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import write_config

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60
    )


def as_user(server, statement: str, user: tuple[str, str], db: str = "") -> list[dict]:
    """InfluxQL as ``user`` with a Basic header; returns results (errors included)."""
    params = {"q": statement, "epoch": "s"} | ({"db": db} if db else {})
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    request = urllib.request.Request(
        f"{server.url}/query",
        data=urllib.parse.urlencode(params).encode(),
        headers={"Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())["results"]
    except urllib.error.HTTPError as err:  # 403 for what the user may not do
        return [{"error": json.loads(err.read())["error"]}]


def admin(server, statement: str, db: str = "") -> list[dict]:
    results = as_user(server, statement, server.admin, db)
    assert all("error" not in r for r in results), results
    return results


def admin_rows(server, statement: str, db: str) -> list[dict]:
    rows = []
    for result in admin(server, statement, db):
        for series in result.get("series", []):
            values = series.get("values", [])
            rows += [dict(zip(series["columns"], v, strict=True)) for v in values]
    return rows


def databases(server) -> set[str]:
    return {r["name"] for r in admin_rows(server, "SHOW DATABASES", "")}


def kit_file(tmp_path: Path, project: str, serial: str = "kit") -> Path:
    path = tmp_path / f"{project}.jsonl"
    records = [
        {"ident": {"project": project, "serial": serial, "label": "auth"}},
        {"data": {"time": 1600000000, "pm_25": 1}},
        {"data": {"time": 1600000060, "pm_25": 2}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def ini(tmp_path: Path, server, credentials: str) -> Path:
    return write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = Other\nserial = x\nstate_dir = {tmp_path / 'state'}\n"
        f"[influx]\nurl = {server.url}\n{credentials}\n[console]\nenabled = no\n",
    )


def log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]


def everything_written(tmp_path: Path, done: subprocess.CompletedProcess) -> str:
    """stdout, stderr and every file the agent left under tmp_path, except the config."""
    texts = [done.stdout, done.stderr]
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".ini" and path.name != "password":
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(texts)


def test_admin_publish_creates_the_database(auth_influx, tmp_path):
    user, password = auth_influx.admin
    assert "Admin_kit" not in databases(auth_influx)
    config = ini(tmp_path, auth_influx, f"username = {user}\npassword = {password}")
    done = run_cli("publish", "-c", str(config), str(kit_file(tmp_path, "Admin")), "--wait", "20")
    assert done.returncode == 0, done.stderr
    assert "Admin_kit" in databases(auth_influx)
    assert f'created database "Admin_kit" at {auth_influx.url}' in done.stderr
    rows = admin_rows(auth_influx, "SELECT pm_25 FROM data", "Admin_kit")
    assert [(r["time"], r["pm_25"]) for r in rows] == [(1600000000, 1), (1600000060, 2)]
    assert log_lines(done.stderr) == []
    assert password not in everything_written(tmp_path, done)


def test_a_user_with_only_a_write_grant_still_writes(auth_influx, tmp_path):
    admin(auth_influx, 'CREATE DATABASE "Grant_kit"')
    admin(auth_influx, "CREATE USER writer WITH PASSWORD 'w-r1te only'")
    admin(auth_influx, 'GRANT WRITE ON "Grant_kit" TO "writer"')
    # the premise: this user may write, but neither read nor create
    [read] = as_user(auth_influx, "SELECT * FROM data", ("writer", "w-r1te only"), "Grant_kit")
    assert "requires READ" in read["error"]
    [create] = as_user(auth_influx, 'CREATE DATABASE "x"', ("writer", "w-r1te only"))
    assert "requires admin privilege" in create["error"]

    (tmp_path / "password").write_text("w-r1te only\n")
    (tmp_path / "password").chmod(0o600)
    config = ini(tmp_path, auth_influx, "username = writer\npassword_file = password")
    done = run_cli("publish", "-c", str(config), str(kit_file(tmp_path, "Grant")), "--wait", "20")
    assert done.returncode == 0, done.stderr
    rows = admin_rows(auth_influx, "SELECT pm_25 FROM data", "Grant_kit")
    assert [(r["time"], r["pm_25"]) for r in rows] == [(1600000000, 1), (1600000060, 2)]
    assert len(admin_rows(auth_influx, "SELECT * FROM info", "Grant_kit")) == 1
    # influxd 1.6 lets such a user SHOW DATABASES (it sees the ones it has a grant on), so
    # there is at most the one warning that it cannot list or create databases, never an error
    problems = log_lines(done.stderr)
    assert all(line.startswith("WARNING") for line in problems), problems
    assert len(problems) <= 1
    assert all("cannot list or create databases" in line for line in problems)
    assert "w-r1te only" not in everything_written(tmp_path, done)


def test_a_user_without_a_grant_gets_one_warning_and_one_error_saying_what_to_do(
    auth_influx, tmp_path
):
    admin(auth_influx, 'CREATE DATABASE "NoGrant_kit"')
    admin(auth_influx, "CREATE USER stranger WITH PASSWORD 'str4nger'")
    config = ini(tmp_path, auth_influx, "username = stranger\npassword = str4nger")
    done = run_cli(
        "publish", "-c", str(config), str(kit_file(tmp_path, "NoGrant")), "--wait", "1.5"
    )
    assert done.returncode == 1
    warnings = [line for line in log_lines(done.stderr) if line.startswith("WARNING")]
    errors = [line for line in log_lines(done.stderr) if line.startswith("ERROR")]
    assert len(warnings) == 1 and "cannot list or create databases" in warnings[0]
    assert len(errors) == 1, errors
    assert "user 'stranger'" in errors[0] and auth_influx.url in errors[0]
    assert 'GRANT WRITE ON "NoGrant_kit" TO "stranger"' in errors[0]
    assert "points are still queued safely" in done.stderr
    assert admin_rows(auth_influx, "SELECT * FROM data", "NoGrant_kit") == []
    assert "str4nger" not in everything_written(tmp_path, done)


@pytest.mark.parametrize("existing", [True, False])
def test_a_wrong_password_fails_with_one_clear_message_and_never_shows_it(
    auth_influx, tmp_path, existing
):
    project = f"Wrong{int(existing)}"
    if existing:
        admin(auth_influx, f'CREATE DATABASE "{project}_kit"')
    user = auth_influx.admin[0]
    wrong = "not-the-Secret#42"
    config = ini(tmp_path, auth_influx, f"username = {user}\npassword = {wrong}")
    done = run_cli("publish", "-c", str(config), str(kit_file(tmp_path, project)), "--wait", "3")
    assert done.returncode != 0
    problems = log_lines(done.stderr)
    assert len(problems) == 1, problems
    message = problems[0]
    assert message.startswith("ERROR")
    assert f"user '{user}'" in message and auth_influx.url in message
    assert "401" in message and "password" in message  # says what to check
    written = everything_written(tmp_path, done)
    assert wrong not in written
    assert base64.b64encode(f"{user}:{wrong}".encode()).decode() not in written
    assert (f"{project}_kit" in databases(auth_influx)) is existing


def test_no_credentials_on_an_auth_server_says_so(auth_influx, tmp_path):
    config = ini(tmp_path, auth_influx, "")
    done = run_cli("publish", "-c", str(config), str(kit_file(tmp_path, "Anon")), "--wait", "1.5")
    assert done.returncode == 1
    [message] = log_lines(done.stderr)
    assert "401" in message and auth_influx.url in message
    assert "no user ([influx] username unset)" in message
