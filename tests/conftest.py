"""Shared fixtures: a real influxd per test module (or per test where state matters)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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
