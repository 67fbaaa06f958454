"""Tiny loopback HTTP servers for what a real InfluxDB cannot be made to do on demand.

- :class:`FlakyProxy` answers the first requests with scripted errors (503, 429, 500...) and
  forwards every later one, byte for byte, to a real ``influxd``; it can also delay forwarded
  ``/write`` requests, so that a test can kill the agent while a send is in flight.
- :class:`SilentServer` accepts TCP connections and never answers (a hung server or proxy).

Both record what they saw, with monotonic timestamps, so tests can check retries and backoff.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_FORWARDED = ("Content-Type", "Content-Encoding", "Authorization")


@dataclass(frozen=True)
class Seen:
    """One request the stub answered."""

    at: float  # time.monotonic() when it was answered
    method: str
    path: str  # without the query string
    params: dict[str, str]
    status: int


class FlakyProxy:
    """Answers the first ``len(failures)`` requests with those statuses, then proxies.

    ``failures`` items are a status, or ``(status, headers)``. ``upstream`` is a real server's
    URL; without one, requests after the script get 204 (and ``/query`` an empty result).
    ``write_delay`` seconds are slept before each forwarded ``/write``. With ``only``, the
    scripted errors answer requests to those paths alone (e.g. ``("/write",)``).
    """

    def __init__(
        self,
        failures: list[int | tuple[int, dict[str, str]]] = (),  # type: ignore[assignment]
        upstream: str | None = None,
        write_delay: float = 0.0,
        only: tuple[str, ...] | None = None,
    ) -> None:
        self.failures = list(failures)
        self.only = only
        self.upstream = urllib.parse.urlsplit(upstream) if upstream else None
        self.write_delay = write_delay
        self.seen: list[Seen] = []
        self.writes_in_flight = 0  # /write requests received and not answered yet
        self.writes_started = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                stub._handle(self)

            def do_POST(self) -> None:  # noqa: N802
                stub._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> FlakyProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def failed(self) -> list[Seen]:
        """The requests answered with a scripted error."""
        return [s for s in self.seen if s.status >= 400]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urllib.parse.urlsplit(handler.path)
        params = dict(urllib.parse.parse_qsl(parts.query))
        with self._lock:
            scripted = None
            if self.failures and (self.only is None or parts.path in self.only):
                scripted = self.failures.pop(0)
            if parts.path == "/write":
                self.writes_in_flight += 1
                self.writes_started += 1
        try:
            status = self._respond(handler, parts.path, body, scripted)
        finally:
            if parts.path == "/write":
                with self._lock:
                    self.writes_in_flight -= 1
        with self._lock:
            self.seen.append(Seen(time.monotonic(), handler.command, parts.path, params, status))

    def _respond(
        self,
        handler: BaseHTTPRequestHandler,
        path: str,
        body: bytes,
        scripted: int | tuple[int, dict[str, str]] | None,
    ) -> int:
        if scripted is not None:
            status, headers = scripted if isinstance(scripted, tuple) else (scripted, {})
            payload = json.dumps({"error": f"stub says {status}"}).encode()
            self._answer(handler, status, payload, {"Content-Type": "application/json", **headers})
        elif self.upstream is not None:
            if path == "/write" and self.write_delay:
                time.sleep(self.write_delay)
            status, payload, headers = self._forward(handler, body)
            self._answer(handler, status, payload, headers)
        else:
            status = 204 if path == "/write" else 200
            payload = b"" if status == 204 else b'{"results":[{"statement_id":0}]}'
            self._answer(handler, status, payload, {"Content-Type": "application/json"})
        return status

    def _forward(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        assert self.upstream is not None
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            headers = {k: handler.headers[k] for k in _FORWARDED if handler.headers.get(k)}
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            answer = conn.getresponse()
            payload = answer.read()
            kept = {"Content-Type": answer.getheader("Content-Type", "application/json")}
            return answer.status, payload, kept
        finally:
            conn.close()

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str]
    ) -> None:
        try:
            handler.send_response(status)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if payload:
                handler.wfile.write(payload)
        except OSError:  # the client went away (killed mid-request): nobody to answer
            handler.close_connection = True


class SilentServer:
    """Accepts connections (and reads what is sent) but never answers a byte."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: list[float] = []  # monotonic accept times
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> SilentServer:
        self._thread.start()
        return self

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(time.monotonic())
            self._held.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def stop(self) -> None:
        self._stopping.set()
        self._sock.close()
        for conn in self._held:
            try:
                conn.close()
            except OSError:
                pass


class TruncatingServer:
    """Answers each request with ``replies`` in turn: raw bytes, then the connection closes.

    For what no real server does: a reply cut off mid-headers (``HTTP/1.1 204 No Content\r\n``
    and no blank line), which a careless client takes for a successful write.
    """

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> TruncatingServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                request = b""
                try:
                    while b"\r\n\r\n" not in request:
                        request += conn.recv(65536)
                    head, _, body = request.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    while len(body) < length:
                        body += conn.recv(65536)
                except OSError:
                    continue
                self.requests.append(head)
                reply = self.replies.pop(0) if self.replies else b"HTTP/1.1 500 Oops\r\n\r\n"
                try:
                    conn.sendall(reply)
                except OSError:
                    pass

    def stop(self) -> None:
        self._sock.close()
