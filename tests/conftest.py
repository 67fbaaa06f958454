"""Shared fixtures: a real influxd per test module (or per test where state matters)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the same examples every time (a failure there must be reproducible, not luck);
# a developer's run explores new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

sys.path.insert(0, str(Path(__file__).parent))

# The agent's RAM files (status snapshot, window log, queue stage; agent/ramfiles.py) go to a
# directory of this run's own, inherited by every child: what a kill -9 in one run leaves
# in /dev/shm can never be taken back by a later run whose temp dir has the same name.
_RAM = tempfile.mkdtemp(
    prefix="sensorkit-tests-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
)
os.environ["RUNTIME_DIRECTORY"] = _RAM


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_RAM, ignore_errors=True)


from influxd import InfluxServer, influxd_binary  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _require_influxd() -> None:
    if influxd_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("influxd is missing in CI; .ci/run must install it")
        pytest.skip("influxd not installed (./install.sh --test installs it)")


@pytest.fixture(scope="module")
def influx():
    """A plain (no auth) InfluxDB 1.x server shared by one test module."""
    _require_influxd()
    server = InfluxServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def fresh_influx():
    """A server of its own for a test that stops, restarts or breaks it."""
    _require_influxd()
    server = InfluxServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def auth_influx():
    """An auth-enabled server with an admin (``server.admin``)."""
    _require_influxd()
    server = InfluxServer(auth=True).start()
    yield server
    server.cleanup()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def run_sensorkit(
    *args: str, stdin: str | None = None, timeout: float = 60, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -m agent ARGS`` from the project root, as a user would run ``sensorkit``."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
