"""A loopback InfluxDB 2.x write API, for the v2 sink: no 2.x or 3.x server can be installed here.

:class:`V2Server` answers ``POST /api/v2/write`` the way the InfluxDB OSS 2.x documentation
says a server does ("Troubleshoot issues writing data", and the ``/api/v2/write`` reference):

- 401 ``{"code": "unauthorized", ...}`` unless ``Authorization: Token <token>``;
- 404 ``{"code": "not found", ...}`` for an org or bucket that does not exist;
- 403 ``insufficient permissions for write`` for a bucket the token may not write;
- 413 when the (decompressed) body is larger than ``max_body``;
- 400 for a batch with a line ``malformed`` names (nothing of it is written);
- 422 ``partial write`` for lines ``rejected`` names (the others are written);
- 204 otherwise, keeping the lines in :attr:`stored`.

``script`` answers the first writes with given statuses, bodies and headers (429 and 503
with ``Retry-After``, 500), before any of the above. Every request is recorded as it came
(method, path, query pairs in order, headers in order, body as sent), with the status given.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WRITE = "/api/v2/write"


@dataclass(frozen=True)
class Request:
    """One request exactly as the stub received it, and the status it answered."""

    at: float  # time.monotonic() when it was answered
    method: str
    path: str  # without the query string
    query: tuple[tuple[str, str], ...]  # every pair, in order, repeats kept
    headers: tuple[tuple[str, str], ...]  # every header, in order, as sent
    body: bytes  # as sent: gzip-compressed when Content-Encoding says so
    status: int

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def params(self) -> dict[str, str]:
        return dict(self.query)

    def text(self) -> str:
        """The body as InfluxDB reads it: decompressed when ``Content-Encoding: gzip``."""
        data = (
            gzip.decompress(self.body) if self.header("Content-Encoding") == ["gzip"] else self.body
        )
        return data.decode("utf-8")

    def lines(self) -> list[str]:
        """The points of the body: its lines that are not comments (``#``) nor empty."""
        return [ln for ln in self.text().split("\n") if ln and not ln.startswith("#")]


@dataclass(frozen=True)
class Scripted:
    """A reply given before the server's own logic: status, JSON body, headers."""

    status: int
    body: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def error(code: str, message: str) -> dict[str, str]:
    """InfluxDB 2.x's JSON error body."""
    return {"code": code, "message": message}


class V2Server:
    """A 2.x ``/api/v2/write`` on 127.0.0.1; see the module docstring for what it answers."""

    def __init__(
        self,
        org: str = "citizens",
        bucket: str = "BdP_kit",
        token: str = "tok-v2-3f9a1c",
        *,
        script: list[Scripted] | None = None,
        max_body: int | None = None,
        malformed: Callable[[str], str | None] = lambda line: None,
        rejected: Callable[[str], str | None] = lambda line: None,
    ) -> None:
        self.token = token
        self.orgs = {org}
        self.buckets = {(org, bucket)}
        self.writable = {(org, bucket)}  # what the token may write
        self.script = list(script or [])
        self.max_body = max_body
        self.malformed = malformed
        self.rejected = rejected
        self.seen: list[Request] = []
        self.stored: list[str] = []  # lines written, in order (a re-sent point appears again)
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                stub._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                stub._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> V2Server:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def writes(self) -> list[Request]:
        with self._lock:
            return [r for r in self.seen if r.path == WRITE]

    # -- answering -------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urllib.parse.urlsplit(handler.path)
        query = tuple(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        headers = tuple(handler.headers.items())
        request = Request(0.0, handler.command, parts.path, query, headers, body, 0)
        with self._lock:  # recorded before the answer leaves: a client never outruns it
            status, payload, extra = self._reply(request)
            at = time.monotonic()
            self.seen.append(
                Request(at, request.method, request.path, query, headers, body, status)
            )
        try:
            handler.send_response(status)
            data = json.dumps(payload).encode() if payload else b""
            if data:
                handler.send_header("Content-Type", "application/json; charset=utf-8")
            for key, value in extra.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            handler.close_connection = True

    def _reply(self, request: Request) -> tuple[int, dict[str, str], dict[str, str]]:
        """Status, JSON body and headers for ``request`` (called under the lock)."""
        if request.method != "POST" or request.path != WRITE:
            return 404, error("not found", "path not found"), {}
        if self.script:
            scripted = self.script.pop(0)
            return scripted.status, scripted.body, scripted.headers
        if request.header("Authorization") != [f"Token {self.token}"]:
            return 401, error("unauthorized", "unauthorized access"), {}
        org, bucket = request.params.get("org", ""), request.params.get("bucket", "")
        if org not in self.orgs:
            return 404, error("not found", f'organization name "{org}" not found'), {}
        if (org, bucket) not in self.buckets:
            return 404, error("not found", f'bucket "{bucket}" not found'), {}
        if (org, bucket) not in self.writable:
            return 403, error("forbidden", "insufficient permissions for write"), {}
        text = request.text()
        if self.max_body is not None and len(text.encode()) > self.max_body:
            return (
                413,
                error("request too large", "unable to read data: points batch is too large"),
                {},
            )
        lines = request.lines()
        for line in lines:
            why = self.malformed(line)
            if why:
                return 400, error("invalid", f"unable to parse '{line}': {why}"), {}
        dropped = [line for line in lines if self.rejected(line)]
        self.stored.extend(line for line in lines if line not in dropped)
        if dropped:
            why = self.rejected(dropped[0])
            message = (
                f"failure writing points to database: partial write: {why} dropped={len(dropped)}"
            )
            return 422, error("unprocessable entity", message), {}
        return 204, {}, {}
