"""systemd/sensorkit.service: `systemd-analyze verify` clean (with and without the credentials
drop-in), `systemd-analyze security --offline=yes` at 4.0 or lower, and the settings the agent
relies on (notify, watchdog, never giving up, device access, stop time)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "sensorkit.service"
DROPIN = ROOT / "systemd" / "sensorkit.service.d" / "credentials.conf"
INSTALLED_BINARY = "/opt/sensorkit/bin/sensorkit"
MAX_EXPOSURE = 4.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd)",
)


def settings(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, in order (keys may repeat), comments dropped."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def unit_copy(tmp_path: Path, dropin: bool = False) -> Path:
    """The unit as shipped, but ExecStart names a sensorkit that exists here (this venv's):
    verify checks that the binary is there. Nothing else differs (asserted)."""
    here = Path(sys.executable).parent / "sensorkit"
    assert here.is_file(), f"{here} missing: pip install -e . first"
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 1
    copy = tmp_path / "sensorkit.service"
    copy.write_text(text.replace(INSTALLED_BINARY, str(here)))
    diff = [
        (a, b)
        for a, b in zip(text.splitlines(), copy.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert diff == [(f"ExecStart={INSTALLED_BINARY} run -c /etc/sensorkit/agent.ini",
                     f"ExecStart={here} run -c /etc/sensorkit/agent.ini")]  # fmt: skip
    if dropin:
        (tmp_path / "sensorkit.service.d").mkdir()
        shutil.copy(DROPIN, tmp_path / "sensorkit.service.d" / "credentials.conf")
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


@needs_analyze
@pytest.mark.parametrize("dropin", [False, True], ids=["unit", "unit+credentials"])
def test_systemd_analyze_verify_is_clean(tmp_path, dropin):
    done = analyze("verify", str(unit_copy(tmp_path, dropin)))
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""  # warnings (unknown keys...) go to stderr


@needs_analyze
def test_verify_does_check_the_unit(tmp_path):
    """The premise of the test above: verify reports a missing binary and unknown keys."""
    done = analyze("verify", str(UNIT))
    assert done.returncode != 0 and f"Command {INSTALLED_BINARY} is not executable" in done.stderr
    copy = unit_copy(tmp_path)
    copy.write_text(copy.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    done = analyze("verify", str(copy))
    assert "Unknown key 'WatchdogSecs'" in done.stderr


def exposure(unit: Path) -> float:
    done = analyze("security", "--offline=yes", str(unit))
    assert done.returncode == 0, done.stderr
    match = re.search(r"Overall exposure level for sensorkit\.service: (\d+\.\d)", done.stdout)
    assert match, done.stdout
    return float(match[1])


@needs_analyze
def test_systemd_analyze_security_exposure_is_at_most_4(tmp_path):
    score = exposure(unit_copy(tmp_path))
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}"


@needs_analyze
def test_the_security_score_reflects_the_sandbox(tmp_path):
    """The premise: without its sandbox lines the same unit scores far worse."""
    copy = unit_copy(tmp_path)
    text = copy.read_text()
    bare = text[: text.index("# Sandbox.")] + text[text.index("[Install]") :]
    copy.write_text(bare)
    assert exposure(copy) > 8.0


def test_the_unit_is_a_notify_service_with_a_watchdog_that_never_gives_up():
    unit = settings(UNIT)
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert int(unit["WatchdogSec"][0]) >= 30  # the window loop checks in every 5 s
    assert unit["Restart"] == ["always"]
    assert int(unit["RestartSec"][0]) >= 5
    assert unit["StartLimitIntervalSec"] == ["0"]  # no start limit: never "failed" for good
    assert "StartLimitBurst" not in unit and "StartLimitAction" not in unit


def test_the_stop_timeout_covers_the_agents_worst_case_shutdown():
    """SIGTERM: sensor threads get 5 s each to finish a read (runner.py), an output 5 s of
    grace plus one request timeout (10 s default) and 5 s to join its sender."""
    unit = settings(UNIT)
    worst = 3 * 5 + 5 + 10 + 5
    assert int(unit["TimeoutStopSec"][0]) >= worst + 10
    assert unit["KillSignal"] == ["SIGTERM"]


def test_the_sandbox_still_reaches_serial_i2c_and_gpio():
    unit = settings(UNIT)
    assert unit["DevicePolicy"] == ["closed"]
    allowed = set(unit["DeviceAllow"])
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-i2c rw", "char-gpiochip rw"} <= allowed
    assert "PrivateDevices" not in unit  # it would hide /dev/ttyUSB0 and /dev/serial/by-id
    assert unit["User"] == ["sensorkit"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["StateDirectory"] == ["sensorkit"]  # the one place it writes to, with /run


def test_the_password_can_come_as_a_systemd_credential():
    text = UNIT.read_text()
    assert "#LoadCredential=influx-password:/etc/sensorkit/influx-password" in text
    assert settings(DROPIN)["LoadCredential"] == ["influx-password:/etc/sensorkit/influx-password"]
