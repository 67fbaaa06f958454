"""HTTPS to InfluxDB: certificates are verified unless the user turns that off by name."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT, _require_influxd, run_sensorkit, write_config
from influxd import InfluxServer


@pytest.fixture(scope="module")
def tls_influx(tmp_path_factory):
    _require_influxd()
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = InfluxServer(tls=(cert, key)).start()
    server.cert = cert
    yield server
    server.cleanup()


def publish(tmp_path, url: str, extra: str = "") -> subprocess.CompletedProcess:
    ini = write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = P\nserial = s\nstate_dir = {tmp_path / 'state'}\n"
        f"[influx]\nurl = {url}\ntimeout = 5\n{extra}",
    )
    return run_sensorkit(
        "publish", "-c", str(ini), "--wait", "3", str(ROOT / "testdata/bdp-test_sense.json")
    )


def count(server) -> int:
    if "BdP_test_sense" not in [r["name"] for r in server.rows("SHOW DATABASES", "")]:
        return 0
    rows = server.rows("SELECT count(pm_25) FROM data", "BdP_test_sense")
    return rows[0]["count"] if rows else 0


def test_self_signed_certificate_is_refused_by_default_and_points_stay_queued(tls_influx, tmp_path):
    done = publish(tmp_path, tls_influx.url)
    assert done.returncode == 1
    assert "certificate not trusted" in done.stderr
    assert "ca_file" in done.stderr and "tls_verify = no" in done.stderr
    assert "4 points are still queued safely" in done.stderr
    assert count(tls_influx) == 0


def test_ca_file_makes_the_self_signed_server_trusted(tls_influx, tmp_path):
    done = publish(tmp_path, tls_influx.url, f"ca_file = {tls_influx.cert}\n")
    assert done.returncode == 0, done.stderr
    assert count(tls_influx) == 3


def test_tls_verify_no_turns_checking_off_with_a_warning(tls_influx, tmp_path):
    done = publish(tmp_path, tls_influx.url, "tls_verify = no\n")
    assert done.returncode == 0, done.stderr
    assert "tls_verify = no: the certificate of" in done.stderr
    assert count(tls_influx) == 3
