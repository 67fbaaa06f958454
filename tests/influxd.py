"""A real InfluxDB 1.x server for tests and benchmarks, on free loopback ports, in a temp dir."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def influxd_binary() -> str | None:
    return shutil.which("influxd") or (
        "/usr/bin/influxd" if os.path.exists("/usr/bin/influxd") else None
    )


class InfluxServer:
    """``influxd`` with its own meta, data and WAL dirs and its own HTTP and RPC ports."""

    def __init__(
        self,
        auth: bool = False,
        max_body_size: int = 0,
        tls: tuple[Path, Path] | None = None,
        continuous_queries: bool = False,
    ) -> None:
        self.tls = tls  # (certificate, private key): serve HTTPS
        self.continuous_queries = continuous_queries  # run CQs (influxd checks every 1 s)
        self.auth = auth
        self.max_body_size = max_body_size
        self.root = Path(tempfile.mkdtemp(prefix="sensorkit-influxd-"))
        self.port = free_port()
        self.rpc_port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.admin = ("admin", "admin-secret") if auth else None

    def config(self) -> str:
        return f"""
reporting-enabled = false
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{self.root}/meta"
[data]
  dir = "{self.root}/data"
  wal-dir = "{self.root}/wal"
  query-log-enabled = false
  cache-snapshot-write-cold-duration = "1s"
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {"true" if self.auth else "false"}
  log-enabled = false
  max-body-size = {self.max_body_size or 25000000}
{self._tls_config()}[continuous_queries]
  enabled = {"true" if self.continuous_queries else "false"}
"""

    def _tls_config(self) -> str:
        if not self.tls:
            return ""
        cert, key = self.tls
        return (
            f'  https-enabled = true\n  https-certificate = "{cert}"\n'
            f'  https-private-key = "{key}"\n'
        )

    def _open(self, url: str | urllib.request.Request, data: bytes | None = None, timeout=10):
        context = ssl._create_unverified_context() if self.tls else None
        return urllib.request.urlopen(url, data=data, timeout=timeout, context=context)

    def start(self) -> InfluxServer:
        binary = influxd_binary()
        if binary is None:
            raise RuntimeError("influxd is not installed; run ./install.sh --test")
        conf = self.root / "influxdb.conf"
        conf.write_text(self.config())
        self.log = open(self.root / "influxd.log", "ab")
        self.proc = subprocess.Popen(
            [binary, "-config", str(conf)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited: {(self.root / 'influxd.log').read_text()}")
            try:
                self._open(f"{self.url}/ping", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("influxd did not answer /ping within 30 s")
        if self.auth and self.admin:
            # With auth on and no users yet, influxd lets anyone create the first admin.
            self.query(
                f"CREATE USER {self.admin[0]} WITH PASSWORD '{self.admin[1]}' WITH ALL PRIVILEGES",
                user=None,
            )
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start_same_dirs()

    def start_same_dirs(self) -> None:
        """Start again on the same port and data (after :meth:`stop`)."""
        auth, self.auth = self.auth, self.auth
        admin, self.admin = self.admin, None  # the admin user already exists
        try:
            self.start()
        finally:
            self.admin = admin
            self.auth = auth

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def query(self, q: str, db: str = "", user: tuple[str, str] | None | bool = True) -> list[dict]:
        """Run InfluxQL as the admin (``user=True``), as nobody (None) or as a given user."""
        params = {"q": q, "epoch": "s"}
        if db:
            params["db"] = db
        credentials = self.admin if user is True else (user or None)
        headers = {}
        if credentials:  # influxd 1.6 reads u/p from the URL or a Basic header, not a form body
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        data = urllib.parse.urlencode(params).encode()
        request = urllib.request.Request(f"{self.url}/query", data=data, headers=headers)
        with self._open(request) as answer:
            results = json.loads(answer.read())["results"]
        for result in results:
            if "error" in result:
                raise RuntimeError(result["error"])
        return results

    def rows(self, q: str, db: str) -> list[dict]:
        """Query rows as dicts (column -> value)."""
        out = []
        for result in self.query(q, db):
            for series in result.get("series", []):
                for values in series.get("values", []):
                    row = dict(zip(series["columns"], values, strict=True))
                    row.update(series.get("tags", {}))
                    out.append(row)
        return out

    def series(self, db: str) -> list[str]:
        return sorted(r["key"] for r in self.rows("SHOW SERIES", db))

    def influx_cli(self, q: str, db: str) -> str:
        """Run ``q`` through the real ``influx`` CLI (what a person would see)."""
        cmd = ["influx", "-host", "127.0.0.1", "-port", str(self.port), "-database", db]
        if self.tls:
            cmd += ["-ssl", "-unsafeSsl"]
        if self.admin:
            cmd += ["-username", self.admin[0], "-password", self.admin[1]]
        cmd += ["-format", "json", "-precision", "s", "-execute", q]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
