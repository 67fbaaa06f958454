"""The InfluxDB password from each source -- [influx] password, password_file,
$SENSORKIT_INFLUX_PASSWORD, the systemd credential $CREDENTIALS_DIRECTORY/influx-password --
against an auth-enabled real influxd; the documented precedence; one error for two sources in
agent.ini; and the password never in a log line, an error, `status` or a file the agent
writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, write_config

from agent.config import ConfigError, load

PASSWORD_ENV = "SENSORKIT_INFLUX_PASSWORD"


def run_cli(*args: str, env: dict | None = None, timeout: float = 60):
    """`sensorkit ARGS` with no password or credential inherited from this environment."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in (PASSWORD_ENV, "CREDENTIALS_DIRECTORY", "SENSORKIT_CONFIG")
    }
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def make_writer(server, name: str, password: str) -> str:
    """A kit user that may only write its own database (as provision makes them)."""
    database = f"{name}_kit"
    server.query(f'CREATE DATABASE "{database}"')
    server.query(f"CREATE USER \"{name}\" WITH PASSWORD '{password}'")
    server.query(f'GRANT WRITE ON "{database}" TO "{name}"')
    return database


def kit_config(tmp_path: Path, server, name: str, credentials: str = "") -> Path:
    return write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = {name}\nserial = kit\nstate_dir = {tmp_path / 'state'}\n"
        f"[influx]\nurl = {server.url}\nusername = {name}\n{credentials}"
        "[console]\nenabled = no\n",
    )


def kit_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "telegrams.jsonl"
    records = [
        {"ident": {"project": name, "serial": "kit", "label": "cred"}},
        {"data": {"time": 1600000000, "pm_25": 1.5}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def written_by_agent(tmp_path: Path, *runs: subprocess.CompletedProcess) -> str:
    """Everything the agent printed or left on disk, but not the files holding the password."""
    texts = [r.stdout + r.stderr for r in runs]
    for path in tmp_path.rglob("*"):
        secret = "secret" in str(path.relative_to(tmp_path))  # the sources themselves
        if path.is_file() and path.suffix != ".ini" and not secret:
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(texts)


def points(server, database: str) -> list[tuple]:
    return [(r["time"], r["pm_25"]) for r in server.rows("SELECT pm_25 FROM data", database)]


def secret_file(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def credential_dir(tmp_path: Path, password: str) -> Path:
    """What systemd makes of LoadCredential=influx-password:FILE: a directory with the file."""
    secret_file(tmp_path / "credentials-secret", "influx-password", password + "\n")
    return tmp_path / "credentials-secret"


SOURCES = ["password", "password_file", "environment", "systemd credential"]


@pytest.mark.parametrize("source", SOURCES)
def test_each_password_source_delivers_to_an_auth_enabled_influxd(auth_influx, tmp_path, source):
    name = "Src" + "".join(word.capitalize() for word in source.replace("_", " ").split())
    password = f"pw for {source} #;%(x)s"
    database = make_writer(auth_influx, name, password)
    credentials, env = "", {}
    if source == "password":
        credentials = f"password = {password}\n"
    elif source == "password_file":
        secret_file(tmp_path, "influx-secret", password + "\n")
        credentials = "password_file = influx-secret\n"
    elif source == "environment":
        env = {PASSWORD_ENV: password}
    else:
        env = {"CREDENTIALS_DIRECTORY": str(credential_dir(tmp_path, password))}
    config = kit_config(tmp_path, auth_influx, name, credentials)
    done = run_cli(
        "publish", "-c", str(config), str(kit_file(tmp_path, name)), "--wait", "20", env=env
    )
    assert done.returncode == 0, done.stderr
    assert points(auth_influx, database) == [(1600000000, 1.5)]
    status = run_cli("status", "--json", "-c", str(config), env=env)
    assert status.returncode == 0, status.stderr
    assert password not in written_by_agent(tmp_path, done, status)


def test_without_any_source_the_server_refuses_and_the_data_stays_queued(auth_influx, tmp_path):
    """The premise of the test above: the password really is needed."""
    name = "SrcNone"
    database = make_writer(auth_influx, name, "unused-pw")
    config = kit_config(tmp_path, auth_influx, name)
    done = run_cli("publish", "-c", str(config), str(kit_file(tmp_path, name)), "--wait", "1.5")
    assert done.returncode == 1
    assert "401" in done.stderr and "still queued safely" in done.stderr
    assert points(auth_influx, database) == []


def test_a_wrong_password_from_the_credential_is_refused_without_showing_it(auth_influx, tmp_path):
    name = "SrcWrong"
    make_writer(auth_influx, name, "the-right-one")
    env = {"CREDENTIALS_DIRECTORY": str(credential_dir(tmp_path, "Wr0ng-but-secret"))}
    config = kit_config(tmp_path, auth_influx, name)
    done = run_cli(
        "publish", "-c", str(config), str(kit_file(tmp_path, name)), "--wait", "2", env=env
    )
    assert done.returncode == 1
    assert "401" in done.stderr
    assert "Wr0ng-but-secret" not in written_by_agent(tmp_path, done)


def test_agent_ini_wins_over_the_environment_which_wins_over_the_credential(auth_influx, tmp_path):
    """The order agent.ini documents; the ignored source is named in one warning, never its
    value."""
    name = "SrcOrder"
    database = make_writer(auth_influx, name, "right-pw")
    wrong_cred = {"CREDENTIALS_DIRECTORY": str(credential_dir(tmp_path, "wrong-cred-pw"))}
    kit = kit_file(tmp_path, name)

    config = kit_config(tmp_path, auth_influx, name, "password = right-pw\n")
    done = run_cli(
        "publish",
        "-c",
        str(config),
        str(kit),
        "--wait",
        "20",
        env={PASSWORD_ENV: "wrong-env-pw", **wrong_cred},
    )
    assert done.returncode == 0, done.stderr
    [warning] = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert "password comes from [influx] password" in warning
    assert f"${PASSWORD_ENV} and systemd credential" in warning and "ignored" in warning

    config = kit_config(tmp_path, auth_influx, name)
    again = run_cli(
        "publish",
        "-c",
        str(config),
        str(kit),
        "--wait",
        "20",
        env={PASSWORD_ENV: "right-pw", **wrong_cred},
    )
    assert again.returncode == 0, again.stderr
    assert f"password comes from ${PASSWORD_ENV}; systemd credential" in again.stderr
    assert points(auth_influx, database) == [(1600000000, 1.5)]
    written = written_by_agent(tmp_path, done, again)
    assert not any(pw in written for pw in ("right-pw", "wrong-env-pw", "wrong-cred-pw"))


def test_password_and_password_file_together_is_one_clear_error(tmp_path):
    secret_file(tmp_path, "influx-secret", "file-pw\n")
    config = write_config(
        tmp_path / "agent.ini",
        "[kit]\nproject = P\n[influx]\nusername = kit\npassword = inline-pw\n"
        "password_file = influx-secret\n",
    )
    done = run_cli("status", "-c", str(config))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"sensorkit: {config} [influx] password_file: is set and so is password; allowed: one "
        f"of password, password_file (or neither, with ${PASSWORD_ENV} or the systemd "
        "credential influx-password)"
    ]
    assert "inline-pw" not in done.stderr and "file-pw" not in done.stderr


def ini(tmp_path: Path, influx: str = "") -> Path:
    return write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = P\nstate_dir = {tmp_path / 'state'}\n[influx]\nusername = kit\n{influx}",
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [("", "is empty"), ("\n  \n", "is empty"), ("one\ntwo\n", "holds more than one line")],
)
def test_a_bad_credential_file_is_refused_naming_it_and_what_to_do(
    tmp_path, monkeypatch, content, problem
):
    directory = tmp_path / "creds"
    secret_file(directory, "influx-password", content)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    config = ini(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert str(caught.value) == (
        f"{config} [influx]: the systemd credential {directory / 'influx-password'} {problem}; "
        "allowed: the password on one line, from LoadCredential=influx-password:FILE in the unit"
    )
    assert "two" not in str(caught.value)


def test_an_unreadable_credential_says_why(tmp_path, monkeypatch):
    directory = tmp_path / "creds"
    (directory / "influx-password").mkdir(parents=True)  # readable by nobody as a file
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    with pytest.raises(ConfigError, match="cannot read the systemd credential .*: Is a directory"):
        load(ini(tmp_path))


def test_an_empty_password_file_is_refused(tmp_path, monkeypatch):
    secret_file(tmp_path, "influx-secret", "\n")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = ini(tmp_path, "password_file = influx-secret\n")
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert str(caught.value) == (
        f"{config} [influx] password_file: {tmp_path / 'influx-secret'} is empty; allowed: a "
        "file the agent can read, holding the password on one line"
    )


def test_an_empty_environment_variable_counts_as_unset(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert load(ini(tmp_path)).influx.password == ""
    monkeypatch.setenv(PASSWORD_ENV, "  env-pw \n")
    assert load(ini(tmp_path)).influx.password == "env-pw"


def test_a_credentials_directory_without_our_credential_is_no_source(tmp_path, monkeypatch):
    """systemd sets CREDENTIALS_DIRECTORY for any LoadCredential=; only ours counts."""
    secret_file(tmp_path / "creds", "other-credential", "other")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert load(ini(tmp_path)).influx.password == ""


def test_a_password_from_the_environment_still_needs_a_user_name(tmp_path):
    config = write_config(tmp_path / "agent.ini", "[kit]\nproject = P\n[influx]\n")
    done = run_cli("status", "-c", str(config), env={PASSWORD_ENV: "env-secret"})
    assert done.returncode == 2
    assert done.stderr == (
        f"sensorkit: {config} [influx] username: is missing but a password is set "
        f"(${PASSWORD_ENV}); allowed: the InfluxDB user name\n"
    )


def test_the_running_agent_never_logs_or_reports_the_credential(auth_influx, tmp_path):
    """`sensorkit run` as the unit runs it (password only as a systemd credential): points
    arrive, and neither its log, its status snapshot, its queue nor `status` holds it."""
    name = "SrcRun"
    password = "run-secret-Pw"
    database = make_writer(auth_influx, name, password)
    config = write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = {name}\nserial = kit\ninterval = 1\nstate_dir = {tmp_path / 'state'}\n"
        "[dylos]\nenabled = yes\nbackend = simulated\nspeedup = 600\n"
        f"[influx]\nurl = {auth_influx.url}\nusername = {name}\nsync_interval = 1\n"
        "[console]\nenabled = no\n",
    )
    env = {"CREDENTIALS_DIRECTORY": str(credential_dir(tmp_path, password))}
    done = run_cli("-v", "run", "-c", str(config), "--duration", "4", env=env)
    assert done.returncode == 0, done.stderr
    rows = auth_influx.rows("SELECT pm_25 FROM data", database)
    assert len(rows) >= 2
    status = run_cli("status", "--json", "-c", str(config), env=env)
    assert status.returncode == 0, status.stderr
    written = written_by_agent(tmp_path, done, status)
    for snapshot in Path("/dev/shm").glob("sensorkit-*.json"):
        written += snapshot.read_text(errors="replace")
    assert password not in written
