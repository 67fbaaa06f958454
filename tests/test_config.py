"""``agent.ini``: lookup order, typed settings, and refusals of the form
``<file> [section] key: what is wrong; allowed: ...`` with exit 2."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_config

import agent.config
from agent.config import ConfigError, cpu_serial, find_config, load

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata" / "bdp-test_sense.json"
SECRET = "s3cret pass#word;%(x)s"  # comment characters and interpolation syntax, kept whole


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    environment = {k: v for k, v in os.environ.items() if k != "SENSORKIT_CONFIG"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=environment,
    )


def minimal(tmp_path: Path, extra: str = "", kit: str = "") -> str:
    return (
        f"[kit]\nproject = BdP\nserial = bench1\nstate_dir = {tmp_path / 'state'}\n{kit}"
        f"[console]\nenabled = no\n{extra}"
    )


# -- lookup order -------------------------------------------------------------------------


@pytest.fixture
def four_configs(tmp_path, monkeypatch):
    """An -c file, $SENSORKIT_CONFIG, a system config and ./agent.ini, each naming itself."""
    paths = {}
    for name in ("explicit", "env", "system", "cwd"):
        folder = tmp_path / name
        folder.mkdir()
        paths[name] = write_config(folder / "agent.ini", f"[kit]\nproject = {name}\n")
    monkeypatch.setattr(agent.config, "SYSTEM_CONFIG", paths["system"])
    monkeypatch.setenv("SENSORKIT_CONFIG", str(paths["env"]))
    monkeypatch.chdir(paths["cwd"].parent)
    return paths


def test_lookup_order_is_c_then_env_then_system_then_cwd(four_configs, monkeypatch):
    paths = four_configs
    assert find_config(str(paths["explicit"])) == paths["explicit"]
    assert load(find_config(str(paths["explicit"]))).kit.project == "explicit"
    assert load(find_config(None)).kit.project == "env"
    monkeypatch.delenv("SENSORKIT_CONFIG")
    assert load(find_config(None)).kit.project == "system"
    monkeypatch.setattr(agent.config, "SYSTEM_CONFIG", paths["system"].parent / "missing.ini")
    assert find_config(None) == Path("agent.ini")
    assert load(find_config(None)).kit.project == "cwd"
    monkeypatch.setenv("SENSORKIT_CONFIG", "")  # set but empty counts as unset
    assert load(find_config(None)).kit.project == "cwd"


def test_the_cli_uses_env_then_cwd_config(tmp_path):
    if agent.config.SYSTEM_CONFIG.exists():
        pytest.skip(f"{agent.config.SYSTEM_CONFIG} exists on this machine")
    write_config(tmp_path / "agent.ini", "[kit]\ninterval = 0\n")  # ./agent.ini: bad
    done = run_cli("status", cwd=tmp_path)
    assert done.returncode == 2
    assert "agent.ini [kit] project: is missing" in done.stderr
    other = write_config(tmp_path / "env.ini", "[kit]\nproject = p\ninterval = x\n")
    done = run_cli("status", cwd=tmp_path, env={"SENSORKIT_CONFIG": str(other)})
    assert done.returncode == 2
    assert f"{other} [kit] interval: 'x' is not a whole number" in done.stderr
    done = run_cli("status", "-c", str(tmp_path / "nowhere.ini"), cwd=tmp_path,
                   env={"SENSORKIT_CONFIG": str(other)})  # fmt: skip
    assert done.returncode == 2
    assert "nowhere.ini: no such file" in done.stderr


# -- bad values: exit 2 with <file> [section] key: what is wrong; allowed: ... ---------------


@pytest.mark.parametrize(
    ("section_text", "section", "key", "wrong", "allowed"),
    [
        ("[kit]\nproject = BdP\ninterval = 0\n", "kit", "interval", "'0' is out of range",
         "whole numbers 1 or more seconds"),
        ("[kit]\nproject = BdP\ninterval = abc\n", "kit", "interval",
         "'abc' is not a whole number", "whole numbers 1 or more seconds"),
        ("[kit]\nproject = BdP\ninterval = 1.5\n", "kit", "interval",
         "'1.5' is not a whole number", "whole numbers 1 or more seconds"),
        ("[kit]\nproject = BdP\n[dylos]\nbackend = foo\n", "dylos", "backend",
         "'foo' is not allowed", "hardware, simulated"),
        ("[kit]\nproject = BdP\ngeolocation = 51.4;6.1\n", "kit", "geolocation",
         "'51.4;6.1' is not lat,lon[,alt]", "decimal degrees"),
        ("[kit]\nproject = BdP\ngeolocation = 91,6\n", "kit", "geolocation",
         "'91,6' is not lat,lon[,alt]", "latitude -90..90"),
        ("[kit]\nproject = BdP\n[bme280]\naddress = 0x99\n", "bme280", "address",
         "'0x99' is not allowed", "0x76, 0x77, auto"),
        ("[kit]\nproject = BdP\nintervall = 60\n", "kit", "intervall", "unknown key",
         "description, geolocation, interval, label, project, serial, state_dir"),
        ("[kit]\nserial = x\n", "kit", "project", "is missing", "the network's project code"),
        ("[kit]\nproject = BdP\n[influx]\ntimeout = nan\n", "influx", "timeout",
         "'nan' is not a number", "numbers from 0.1 to 600 seconds"),
        ("[kit]\nproject = BdP\n[influx]\nurl = localhost:8086\n", "influx", "url",
         "'localhost:8086' is not allowed", "http://host:port or https://"),
        ("[kit]\nproject = BdP\n[influx]\nurl = http://h:8086 # the server\n", "influx", "url",
         "is not allowed", "http://host:port"),
        ("[kit]\nproject = BdP\n[console]\nenabled = perhaps\n", "console", "enabled",
         "'perhaps' is not a yes/no value", "yes, no, true, false"),
        ("[kit]\nproject = B d P\n", "kit", "project", "'B d P' is not allowed",
         "text without spaces"),
        ("[kit]\nproject = BdP\nlabel = garden\\\n", "kit", "label",
         "'garden\\\\' ends with a backslash", "text on one line"),
        ("[kit]\nproject = BdP\n[dylos]\ncalibration.pm_1 = 0 1\n", "dylos",
         "calibration.pm_1", "'pm_1' is not a field of [dylos]", "calibration.pm_25"),
        ("[kit]\nproject = BdP\n[influx]\nusername = \npassword = x\n", "influx", "username",
         "is missing but a password is set", "the InfluxDB user name"),
        ("[kit]\nproject = BdP\n[dylos]\nfields = pm pm\n", "dylos", "fields",
         "'pm pm' names a field twice", "different names"),
        ("[kit]\nproject = BdP\n[dht22]\nenabled = yes\nfields = temp rh\n[bme280]\n"
         "enabled = yes\n", "bme280", "fields", "'temp' is also a field of [dht22]",
         "names no other enabled sensor uses"),
        ("[kit]\nproject = BdP\n[dylos]\nreplay = nothere.txt\n", "dylos", "replay",
         "nothere.txt is not a file", "a file of Dylos lines"),
        ("[kit]\nproject = BdP\n[influx]\nurl = http://h:8086/?u=bob&p=pw\n", "influx", "url",
         "holds a user name or password (or a query)", "http://host:port"),
        ("[kit]\nproject = BdP\n[influx]\ngzip = maybe\n", "influx", "gzip",
         "'maybe' is not allowed", "auto, yes, no"),
    ],
)  # fmt: skip
def test_bad_values_exit_2_naming_file_section_key_and_what_is_allowed(
    tmp_path, section_text, section, key, wrong, allowed
):
    path = write_config(tmp_path / "agent.ini", section_text)
    done = run_cli("publish", "-c", str(path), str(TESTDATA), "--wait", "1")
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    where = rf"{re.escape(str(path))} \[{section}\] {re.escape(key)}"
    pattern = rf"sensorkit: {where}: (.+); allowed: (.+)"
    match = re.fullmatch(pattern, line)
    assert match, line
    assert wrong in match[1]
    assert allowed in match[2]


def test_an_unknown_section_exits_2_naming_it_and_the_allowed_ones(tmp_path):
    path = write_config(tmp_path / "agent.ini", "[kit]\nproject = BdP\n[dylso]\nenabled = yes\n")
    done = run_cli("publish", "-c", str(path), str(TESTDATA), "--wait", "1")
    assert done.returncode == 2
    assert done.stderr == (
        f"sensorkit: {path} [dylso]: unknown section; allowed: bme280, console, dht22, dylos, "
        "influx, kit, simulated, subscriber\n"
    )


def test_a_line_that_is_no_setting_is_refused_without_echoing_it(tmp_path):
    path = write_config(tmp_path / "agent.ini", f"[kit]\nproject = BdP\n[influx]\n{SECRET}\n")
    done = run_cli("publish", "-c", str(path), str(TESTDATA), "--wait", "1")
    assert done.returncode == 2
    assert f"{path}: line 4: not a setting" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_a_key_set_twice_is_refused(tmp_path):
    path = write_config(tmp_path / "agent.ini", "[kit]\nproject = a\nproject = b\n")
    with pytest.raises(ConfigError, match=r"\[kit\] project: set twice \(line 3\); allowed"):
        load(path)


# -- good values --------------------------------------------------------------------------


def test_a_minimal_config_gives_documented_defaults(tmp_path):
    settings = load(write_config(tmp_path / "agent.ini", "[kit]\nproject = BdP\n"))
    assert settings.kit.interval == 60
    assert settings.influx.url == "http://localhost:8086"
    assert settings.influx.enabled is True and settings.influx.database == ""
    assert settings.console.enabled is False and settings.console.file == "-"
    assert [s.name for s in settings.sensors] == ["dylos", "dht22", "bme280"]
    assert not any(s.enabled for s in settings.sensors)


def test_values_are_typed_and_numbers_may_carry_a_comment(tmp_path):
    text = minimal(
        tmp_path,
        kit="interval = 30   # seconds\nlabel = Garden #2; east\n"
        "geolocation = 51.420635, 6.1356117, 22.9\ndescription = Kit #3; by the school\n",
        extra="[dylos]\nenabled = yes ; on\nbackend = Simulated\n"
        "[bme280]\naddress = 0x77\n[influx]\ntimeout = 2.5\n",
    )
    settings = load(write_config(tmp_path / "agent.ini", text))
    assert settings.kit.interval == 30
    assert settings.kit.label == "Garden #2; east"  # text is taken whole
    assert settings.kit.description == "Kit #3; by the school"
    assert settings.kit.geolocation == "51.420635,6.1356117,22.9"
    assert settings.kit.state_dir == tmp_path / "state"
    dylos, _, bme280 = settings.sensors
    assert dylos.enabled is True and dylos.backend == "simulated"
    assert bme280.options["address"] == 0x77
    assert settings.influx.timeout == 2.5


@pytest.mark.parametrize(
    ("url", "setting", "compressed"),
    [
        ("http://localhost:8086", "", False),
        ("http://127.0.0.1:8086", "", False),
        ("http://[::1]:8086", "gzip = auto", False),
        ("https://influx.example.org", "", True),
        ("http://192.168.1.20:8086", "", True),
        ("http://localhost:8086", "gzip = yes", True),
        ("https://influx.example.org", "gzip = no", False),
    ],
)  # fmt: skip
def test_gzip_auto_compresses_unless_the_server_is_on_this_machine(
    tmp_path, url, setting, compressed
):
    text = f"[kit]\nproject = BdP\n[influx]\nurl = {url}\n{setting}\n"
    assert load(write_config(tmp_path / "agent.ini", text)).influx.gzip is compressed


def test_a_relative_state_dir_is_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    path = write_config(tmp_path / "etc" / "agent.ini", "[kit]\nproject = p\nstate_dir = q\n")
    monkeypatch.chdir(tmp_path)
    assert load(path).kit.state_dir == tmp_path / "etc" / "q"


# -- passwords ----------------------------------------------------------------------------


def test_a_password_is_taken_whole_and_never_shown(tmp_path):
    text = minimal(tmp_path, extra=f"[influx]\nusername = kit\npassword = {SECRET}\n")
    settings = load(write_config(tmp_path / "agent.ini", text))
    assert settings.influx.password == SECRET
    assert SECRET not in repr(settings) and "s3cret" not in repr(settings)


def test_a_world_readable_password_logs_a_warning_without_the_password(tmp_path, caplog):
    path = write_config(
        tmp_path / "agent.ini",
        minimal(tmp_path, extra=f"[influx]\nusername = kit\npassword = {SECRET}\n"),
    )
    with caplog.at_level(logging.WARNING, logger="sensorkit.config"):
        load(path)
    assert caplog.records == []  # 0600: no warning
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="sensorkit.config"):
        load(path)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert str(path) in record.getMessage() and "chmod o-r" in record.getMessage()
    assert "s3cret" not in caplog.text


def test_the_cli_warns_about_a_world_readable_password_and_never_prints_it(tmp_path):
    path = write_config(
        tmp_path / "agent.ini",
        minimal(tmp_path, extra=f"[influx]\nenabled = no\nusername = kit\npassword = {SECRET}\n"
                "[console]\nenabled = yes\n").replace("[console]\nenabled = no\n", ""),
    )  # fmt: skip
    path.chmod(0o644)
    done = run_cli("publish", "-c", str(path), str(TESTDATA), "--wait", "1")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "every user can read it" in warnings[0]
    assert "s3cret" not in done.stdout + done.stderr


def test_password_file_is_read_relative_to_the_config(tmp_path, caplog):
    secret = tmp_path / "influx.pw"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    path = write_config(
        tmp_path / "agent.ini",
        minimal(tmp_path, extra="[influx]\nusername = kit\npassword_file = influx.pw\n"),
    )
    with caplog.at_level(logging.WARNING, logger="sensorkit.config"):
        assert load(path).influx.password == SECRET
    assert caplog.records == []
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="sensorkit.config"):
        load(path)
    assert len(caplog.records) == 1 and str(secret) in caplog.text
    assert "s3cret" not in caplog.text


def test_password_file_problems_exit_2_without_the_password(tmp_path):
    path = write_config(
        tmp_path / "agent.ini",
        minimal(tmp_path, extra="[influx]\nusername = kit\npassword_file = missing.pw\n"),
    )
    done = run_cli("publish", "-c", str(path), str(TESTDATA), "--wait", "1")
    assert done.returncode == 2
    assert f"[influx] password_file: cannot read {tmp_path / 'missing.pw'}" in done.stderr
    assert "; allowed: " in done.stderr
    both = write_config(
        tmp_path / "both.ini",
        minimal(tmp_path, extra=f"[influx]\nusername = kit\npassword = {SECRET}\n"
                "password_file = x.pw\n"),
    )  # fmt: skip
    done = run_cli("publish", "-c", str(both), str(TESTDATA), "--wait", "1")
    assert done.returncode == 2
    assert "[influx] password_file: is set and so is password; allowed: one of" in done.stderr
    assert "s3cret" not in done.stderr


# -- serial -------------------------------------------------------------------------------

PI_CPUINFO = """processor\t: 0
model name\t: ARMv7 Processor rev 4 (v7l)
Hardware\t: BCM2835
Revision\t: a02082
Serial\t\t: 00000000a1b2c3d4
Model\t\t: Raspberry Pi 3 Model B Rev 1.2
"""


def test_cpu_serial_reads_the_pi_serial_else_the_machine_id(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(PI_CPUINFO)
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    assert cpu_serial(cpuinfo, machine_id) == "a1b2c3d4"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: x86\n")
    assert cpu_serial(cpuinfo, machine_id) == "3d1219c7c4c5404a"
    assert cpu_serial(tmp_path / "none", tmp_path / "none") == "unknown"


def test_serial_defaults_to_the_cpu_serial(tmp_path, monkeypatch):
    path = write_config(tmp_path / "agent.ini", "[kit]\nproject = BdP\n")
    assert load(path).kit.serial == cpu_serial()
    monkeypatch.setattr(agent.config, "cpu_serial", lambda: "a1b2c3d4")
    settings = load(path)
    assert settings.kit.serial == "a1b2c3d4"
    write_config(path, "[kit]\nproject = BdP\nserial = own\n")
    assert load(path).kit.serial == "own"


def test_credentials_in_the_url_are_refused_without_echoing_them(tmp_path):
    text = minimal(tmp_path, extra="[influx]\nurl = http://kit:s3cret@localhost:8086\n")
    path = write_config(tmp_path / "agent.ini", text)
    done = run_cli("publish", "-c", str(path), str(TESTDATA), "--wait", "1")
    assert done.returncode == 2
    expected = f"{path} [influx] url: holds a user name or password (or a query); allowed: "
    assert expected in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "agent.ini"
    path.write_bytes("\ufeff[kit]\nproject = BdP\nlabel = Grüße\n".encode())
    assert load(path).kit.label == "Grüße"


@pytest.mark.parametrize(
    "influx, console, key, says",
    [
        ("url = http://127.0.0.1:99999", "", "[influx] url", "out of range"),
        ("url = http://[::1", "", "[influx] url", "IPv6"),
        (
            "url = https://127.0.0.1:8086\nca_file = missing.pem",
            "",
            "[influx] ca_file",
            "not a file",
        ),
        ("url = https://127.0.0.1:8086\nca_file = bad.pem", "", "[influx] ca_file", "no usable"),
        ("enabled = no", "enabled = yes\nfile = /dev/full", "[console] file", "No space left"),
    ],
    ids=["port", "ipv6", "ca-missing", "ca-garbage", "dev-full"],
)
def test_settings_no_connection_or_file_can_use_get_one_message_and_exit_2(
    tmp_path, influx, console, key, says
):
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    ini = write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = P\nserial = s\nstate_dir = state\n[influx]\n{influx}\n"
        f"[console]\n{console}\n",
    )
    telegrams = Path(__file__).resolve().parent.parent / "testdata" / "bdp-test_sense.json"
    done = run_cli("publish", "-c", str(ini), "--wait", "1", str(telegrams))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (message,) = [ln for ln in done.stderr.splitlines() if ln.startswith("sensorkit:")]
    assert key in message and says in message, message
