"""``[influx] api = v1 | v2`` and the v2 keys (org, bucket, token, token_file): each one read,
each refusal of the form ``<file> [influx] key: what is wrong; allowed: ...`` with exit 2, and
the token never echoed, logged or shown."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_config

from agent.config import ConfigError, load
from agent.outputs import influx_sink
from agent.sinks import InfluxV1Sink, InfluxV2Sink

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata" / "bdp-test_sense.json"
TOKEN = "tOk3n-Zx81_q9w==#;not-a-comment"  # comment characters are kept: text is taken whole
V2 = "api = v2\norg = citizens\nbucket = BdP_kit\n"


def ini(tmp_path: Path, influx: str) -> Path:
    text = (
        f"[kit]\nproject = BdP\nserial = bench1\nstate_dir = {tmp_path / 'state'}\n"
        f"[console]\nenabled = no\n[influx]\n{influx}"
    )
    return write_config(tmp_path / "agent.ini", text)


def token_file(tmp_path: Path, text: str = TOKEN + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "influx.token"
    path.write_text(text)
    path.chmod(mode)
    return path


def refusal(path: Path) -> str:
    """The one line ``sensorkit publish`` prints for a bad config (it must exit 2)."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "publish", "-c", str(path), str(TESTDATA), "--wait", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "tOk3n" not in line
    return line


def assert_refused(line: str, path: Path, key: str, wrong: str, allowed: str) -> None:
    match = re.fullmatch(
        rf"sensorkit: {re.escape(str(path))} \[influx\] {key}: (.+); allowed: (.+)", line
    )
    assert match, line
    assert wrong in match[1], line
    assert allowed in match[2], line


# -- good settings -------------------------------------------------------------------------------


def test_api_defaults_to_v1_with_no_v2_target(tmp_path):
    settings = load(ini(tmp_path, "")).influx
    assert settings.api == "v1"
    assert (settings.org, settings.bucket, settings.token) == ("", "", "")
    assert isinstance(influx_sink(load(ini(tmp_path, "api = v1 # the default\n"))), InfluxV1Sink)


def test_api_v2_reads_org_bucket_and_the_token_whole_and_picks_the_v2_sink(tmp_path):
    settings = load(ini(tmp_path, f"{V2}token = {TOKEN}\n"))
    influx = settings.influx
    assert (influx.api, influx.org, influx.bucket, influx.token) == (
        "v2",
        "citizens",
        "BdP_kit",
        TOKEN,
    )
    assert "tOk3n" not in repr(settings)
    sink = influx_sink(settings)
    assert isinstance(sink, InfluxV2Sink)
    assert (sink.org, sink.bucket, sink.url) == ("citizens", "BdP_kit", "http://localhost:8086")
    assert sink.user == "a token of org 'citizens' (bucket 'BdP_kit')"
    assert "tOk3n" not in f"{sink.user} {sink.url} {sink.client.who()}"


def test_token_file_is_read_relative_to_the_config_and_stripped(tmp_path, monkeypatch):
    token_file(tmp_path)
    monkeypatch.chdir("/")
    assert load(ini(tmp_path, f"{V2}token_file = influx.token\n")).influx.token == TOKEN


def test_a_token_file_others_can_read_gets_the_password_files_warning_without_the_token(
    tmp_path, caplog
):
    path = token_file(tmp_path)
    config = ini(tmp_path, f"{V2}token_file = influx.token\n")
    with caplog.at_level(logging.WARNING, logger="sensorkit.config"):
        load(config)
    assert caplog.records == []  # 0600: nothing to say
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="sensorkit.config"):
        load(config)
    [record] = caplog.records
    message = record.getMessage()
    assert f"{path} holds the InfluxDB API token ([influx] token_file)" in message
    assert "every user can read it" in message and f"chmod o-r {path}" in message
    assert "tOk3n" not in caplog.text


def test_a_token_in_a_config_others_can_read_gets_the_warning_too(tmp_path, caplog):
    config = ini(tmp_path, f"{V2}token = {TOKEN}\n")
    config.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="sensorkit.config"):
        load(config)
    [record] = caplog.records
    assert f"{config} holds the InfluxDB API token ([influx] token)" in record.getMessage()
    assert "tOk3n" not in caplog.text


def test_the_cli_warns_about_a_readable_token_file_once_and_never_prints_the_token(tmp_path):
    token_file(tmp_path, mode=0o644)
    config = ini(tmp_path, f"{V2}token_file = influx.token\nenabled = no\n")
    config.write_text(
        config.read_text().replace("[console]\nenabled = no", "[console]\nenabled = yes")
    )
    done = subprocess.run(
        [sys.executable, "-m", "agent", "publish", "-c", str(config), str(TESTDATA)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    warnings = [ln for ln in done.stderr.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1 and "API token" in warnings[0]
    assert "tOk3n" not in done.stdout + done.stderr


def test_every_influx_key_is_documented_in_the_shipped_agent_ini(tmp_path):
    path = ini(tmp_path, "no_such_key = 1\n")
    with pytest.raises(ConfigError) as refused:
        load(path)
    keys = str(refused.value).split("allowed: ", 1)[1].split(", ")
    assert {"api", "org", "bucket", "token", "token_file"} <= set(keys)
    text = (ROOT / "agent.ini").read_text()
    section = text.split("[influx]\n", 1)[1].split("\n[", 1)[0]
    for key in keys:
        assert re.search(rf"^#?{re.escape(key)} =", section, re.M), f"[influx] {key} undocumented"


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("influx", "key", "wrong", "allowed"),
    [
        ("api = v3\n", "api", "'v3' is not allowed", "v1, v2"),
        (f"api = v2\nbucket = b\ntoken = {TOKEN}\n", "org", "is missing, and api = v2 needs it",
         "the organization the bucket belongs to"),
        (f"api = v2\norg = o\ntoken = {TOKEN}\n", "bucket", "is missing, and api = v2 needs it",
         "the bucket every point goes to"),
        (V2, "token", "is missing, and api = v2 needs it",
         "an API token that may write the bucket"),
        (f"{V2}token = {TOKEN}\ntoken_file = influx.token\n", "token_file",
         "is set and so is token", "one of token, token_file"),
        (f"{V2}token = tOk3n with space\n", "token", "holds a space or a control character",
         "the API token as InfluxDB gave it"),
        (f"{V2}token_file = nowhere.token\n", "token_file", "cannot read", "holding the API token"),
    ],
)  # fmt: skip
def test_a_v2_setting_that_cannot_work_exits_2_naming_the_key(
    tmp_path, influx, key, wrong, allowed
):
    path = ini(tmp_path, influx)
    assert_refused(refusal(path), path, key, wrong, allowed)


def test_an_empty_token_file_is_refused(tmp_path):
    token_file(tmp_path, "\n")
    path = ini(tmp_path, f"{V2}token_file = influx.token\n")
    assert_refused(
        refusal(path), path, "token_file", "is empty", "holding the API token on one line"
    )


def test_a_token_file_of_two_lines_is_refused_without_echoing_it(tmp_path):
    token_file(tmp_path, "tOk3n\nsecond-line\n")
    path = ini(tmp_path, f"{V2}token_file = influx.token\n")
    assert_refused(refusal(path), path, "token_file", "holds more than one line", "on one line")


def test_a_token_file_holding_two_words_is_refused_without_echoing_it(tmp_path):
    token_file(tmp_path, "tOk3n and more\n")
    path = ini(tmp_path, f"{V2}token_file = influx.token\n")
    assert_refused(refusal(path), path, "token_file", "holds a space", "the API token")


@pytest.mark.parametrize(
    "line", ["database = BdP_x", "username = kit", "password = tOk3n-pw", "password_file = pw",
             "create_database = no"]
)  # fmt: skip
def test_a_v1_key_with_api_v2_is_refused_saying_which_api_reads_it(tmp_path, line):
    key = line.split(" ")[0]
    path = ini(tmp_path, f"{V2}token = {TOKEN}\n{line}\n")
    assert_refused(
        refusal(path), path, key, "is a key of api = v1, and api = v2",
        f"set api = v1, or remove {key} (api = v2 reads org, bucket, token, token_file)",
    )  # fmt: skip


@pytest.mark.parametrize(
    "line", ["org = citizens", "bucket = BdP_kit", f"token = {TOKEN}", "token_file = t"]
)
def test_a_v2_key_with_api_v1_is_refused_saying_which_api_reads_it(tmp_path, line):
    key = line.split(" ")[0]
    path = ini(tmp_path, f"username = kit\npassword = pw\n{line}\n")
    assert_refused(
        refusal(path), path, key, "is a key of api = v2, and api = v1 (the default)",
        f"set api = v2, or remove {key} (api = v1 reads database, username",
    )  # fmt: skip


def test_a_key_of_the_other_api_left_empty_is_no_refusal(tmp_path):
    settings = load(ini(tmp_path, f"{V2}token = {TOKEN}\nusername =\ndatabase =\n")).influx
    assert settings.api == "v2" and settings.username == ""
    assert load(ini(tmp_path, "org =\ntoken =\n")).influx.api == "v1"


def test_a_password_in_the_environment_is_not_read_with_api_v2(tmp_path, monkeypatch):
    monkeypatch.setenv("SENSORKIT_INFLUX_PASSWORD", "env-secret")
    settings = load(ini(tmp_path, f"{V2}token = {TOKEN}\n")).influx
    assert settings.password == "" and settings.username == "" and settings.token == TOKEN
