"""A small HTTP client for InfluxDB: requests with credentials, and InfluxQL ``/query``.

Built on :mod:`agent.httpwire` with one kept-alive connection, so it needs no third-party
package on the Pi, nor :mod:`http.client` (which loads :mod:`email` and :mod:`ssl`); ssl is
imported only for an https:// URL. Credentials travel in an ``Authorization`` header, never
in a URL, so they cannot leak into a log line. HTTPS verifies certificates unless
``verify_tls`` is off. Only a complete response counts: one cut off before its headers end
is no answer at all.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import socket
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent import httpwire
from agent.errors import SensorkitError

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("sensorkit.influx")


class InfluxError(SensorkitError):
    """A request that did not succeed. ``status`` is None when no HTTP answer came."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        server_message: str = "",
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.server_message = server_message
        self.retry_after = retry_after  # seconds the server asked us to wait (429, 503)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def server_message(self) -> str:
        """The server's own words: 1.x and 3.x say ``{"error": ...}``, 2.x ``{"message": ...}``."""
        try:
            data = json.loads(self.body)
            said = data.get("error") or data.get("message") or ""
            return str(said) or self.body.decode()[:300]
        except (ValueError, AttributeError):
            return self.body.decode("utf-8", "replace")[:300]


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes (database and user names)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxClient:
    """One InfluxDB server at ``url`` as one user, or with one API token (``token``, for the
    2.x/3.x write API). Not thread-safe: one thread per client."""

    def __init__(
        self,
        url: str,
        username: str = "",
        password: str = "",
        timeout: float = 10.0,
        verify_tls: bool = True,
        ca_file: str = "",
        compress: bool = True,
        token: str = "",
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the InfluxDB URL is not an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("the InfluxDB URL holds credentials; pass username and password")
        self.url = url.rstrip("/")
        self.username = username
        self.timeout = timeout
        self.compress = compress
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._https = parts.scheme == "https"
        self._context = _tls_context(self.url, ca_file, verify_tls) if self._https else None
        if token and username:
            raise ValueError("an InfluxDB client logs in with a user or a token, not both")
        self._auth = ""
        if username:
            basic = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._auth = f"Basic {basic}"
        elif token:  # InfluxDB 2.x/3.x API token (the v2 write API)
            self._auth = f"Token {token}"
        self.uses_token = bool(token)
        self.section = "influx"  # the agent.ini section messages point at ([subscriber] too)
        self._conn: httpwire.Connection | None = None

    def twin(self) -> InfluxClient:
        """The same server and user on a connection of its own (for a second thread)."""
        other = copy.copy(self)
        other._conn = None
        return other

    def who(self) -> str:
        """User and server, for messages (never the password or token)."""
        if self.uses_token:
            return f"the API token ([{self.section}] token) at {self.url}"
        unset = f"no user ([{self.section}] username unset)"
        user = f"user {self.username!r}" if self.username else unset
        return f"{user} at {self.url}"

    # -- requests -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """One HTTP exchange; InfluxError(status=None) when no answer came."""
        target = f"{self._prefix}{path}?{urllib.parse.urlencode(params)}"
        send_headers = dict(headers or {})
        if self._auth:
            send_headers["Authorization"] = self._auth
        answer, data = self._send(method, target, body, send_headers, read=True)
        if answer.header("Connection").lower() == "close":
            self.close()
        return Response(answer.status, data, answer.headers)

    def query(self, statement: str, database: str = "", post: bool = False) -> list[dict]:
        """Run InfluxQL; returns the ``results`` list; InfluxError on any error in it."""
        params = {"q": statement, "epoch": "s"}
        if database:
            params["db"] = database
        answer = self.request("POST" if post else "GET", "/query", params)
        if answer.status != 200:
            raise InfluxError(
                self.explain(answer, f"running {statement!r}"),
                answer.status,
                answer.server_message(),
            )
        results = json.loads(answer.body).get("results", [])
        for result in results:
            if "error" in result:
                raise InfluxError(
                    f"InfluxDB at {self.url} refused {statement!r}: {result['error']}",
                    answer.status,
                    result["error"],
                )
        return results

    def stream(self, statement: str, database: str, chunk_size: int) -> Iterator[dict]:
        """Run a SELECT with ``chunked=true``; yields each JSON object as it arrives.

        InfluxDB 1.x sends one object per line, ``chunk_size`` rows at most, so a whole
        database never sits in memory. InfluxError for a refusal (status set), for an error
        in a result (``status`` 404 when the database is not there) or when no complete
        answer came (status None). Closing the generator early closes the connection.
        """
        params = {"q": statement, "db": database, "epoch": "s", "chunked": "true"}
        params["chunk_size"] = str(chunk_size)
        target = f"{self._prefix}/query?{urllib.parse.urlencode(params)}"
        headers = {"Authorization": self._auth} if self._auth else {}
        answer, _ = self._send("GET", target, None, headers)
        complete = False
        try:
            if answer.status != 200:
                try:
                    body = Response(answer.status, answer.read(), {})
                except (OSError, httpwire.WireError) as err:
                    raise _no_answer(self, err) from None
                said = self.explain(body, f"reading database {database!r}", database)
                if answer.status == 403:
                    said = (
                        f"InfluxDB at {self.url} does not allow user {self.username!r} to read "
                        f"database {database!r} (403 {body.server_message()}); an admin can "
                        f"grant it with GRANT READ ON {quote_ident(database)} TO "
                        f"{quote_ident(self.username)}"
                    )
                raise InfluxError(
                    said,
                    answer.status,
                    body.server_message(),
                    seconds(answer.header("Retry-After")),
                )
            while True:
                try:
                    line = answer.readline()
                except TimeoutError:
                    raise InfluxError(
                        f"InfluxDB at {self.url} stopped sending within {self.timeout:g} s"
                    ) from None
                except (OSError, httpwire.WireError) as err:
                    raise InfluxError(
                        f"InfluxDB at {self.url} broke off the answer: {_reason(err)}"
                    ) from None
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    chunk = json.loads(line)
                except ValueError:
                    raise InfluxError(
                        f"InfluxDB at {self.url} sent a chunk that is not JSON (cut off?)"
                    ) from None
                for result in chunk.get("results", ()):
                    if "error" in result:
                        said = str(result["error"])
                        missing = said.startswith("database not found")
                        raise InfluxError(
                            f"InfluxDB at {self.url} refused reading {database!r}: {said}",
                            404 if missing else 400,
                            said,
                        )
                yield chunk
            complete = True
        finally:
            if not complete or answer.header("Connection").lower() == "close":
                self.close()

    def _send(
        self,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
        read: bool = False,
    ) -> tuple[httpwire.Response, bytes]:
        """Send a request; the response, and its body when ``read`` (else left to stream).
        A kept-alive connection the server closed meanwhile is retried once, fresh."""
        for attempt in (1, 2):
            conn = self._connection()
            fresh = not conn.kept_alive
            try:
                answer = conn.request(method, target, body, headers)
                return answer, answer.read() if read else b""
            except (OSError, httpwire.WireError) as err:
                self.close()
                if attempt == 1 and not fresh and not isinstance(err, TimeoutError):
                    continue
                raise _no_answer(self, err) from None
        raise AssertionError("unreachable")

    def databases(self) -> list[str]:
        results = self.query("SHOW DATABASES")
        series = results[0].get("series", []) if results else []
        return [row[0] for s in series for row in s.get("values", [])]

    def create_database(self, name: str) -> None:
        self.query(f"CREATE DATABASE {quote_ident(name)}", post=True)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- helpers --------------------------------------------------------------------------

    def _connection(self) -> httpwire.Connection:
        if self._conn is None:
            self._conn = httpwire.Connection(self._host, self._port, self.timeout, self._context)
        return self._conn

    def explain(self, answer: Response, doing: str, database: str = "") -> str:
        """What went wrong, for a person: the user, the server, and what to do."""
        said = answer.server_message()
        if answer.status == 401:
            return (
                f"InfluxDB refused {self.who()} while {doing} (401 {said}); "
                f"check [{self.section}] "
                + ("token" if self.uses_token else "username and password")
            )
        if answer.status == 403:
            return (
                f"InfluxDB at {self.url} does not allow user {self.username!r} {doing} "
                f"(403 {said}); an admin can grant it with GRANT WRITE ON "
                f"{quote_ident(database) if database else '<database>'} TO "
                f"{quote_ident(self.username)}"
            )
        return f"InfluxDB at {self.url} answered {answer.status} while {doing}: {said}"


def seconds(text: str) -> float | None:
    """A Retry-After given in seconds (the HTTP-date form is rare and ignored)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value < 86400 else None


def _no_answer(client: InfluxClient, err: BaseException) -> InfluxError:
    """No complete HTTP answer came: a timeout, or the server could not be reached."""
    if isinstance(err, TimeoutError):
        return InfluxError(f"InfluxDB at {client.url} did not answer within {client.timeout:g} s")
    return InfluxError(f"cannot reach InfluxDB at {client.url}: {_reason(err)}")


def _tls_context(url: str, ca_file: str, verify: bool) -> ssl.SSLContext:
    """The certificate checks for an https:// server; ssl (some 5 MB) is imported only here."""
    import ssl

    context = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning(
            "[influx] tls_verify = no: the certificate of %s is NOT checked; anyone "
            "on the path can read and change what is sent",
            url,
        )
    return context


def _reason(err: BaseException) -> str:
    ssl = sys.modules.get("ssl")  # loaded only if an https:// client was made
    if ssl is not None and isinstance(err, ssl.SSLCertVerificationError):
        return (
            f"certificate not trusted ({err.verify_message}); set [influx] ca_file, "
            "or tls_verify = no to turn checking off"
        )
    if isinstance(err, socket.gaierror):
        return f"host name not found ({err.strerror})"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is influxd running?)"
    return str(err) or type(err).__name__


# -- for provisioning (agent/provision.py): literals, and statements sent in the body ---------


def quote_literal(text: str) -> str:
    """An InfluxQL string literal in single quotes (a password in CREATE USER).

    Escapes what influxql's scanner reads as escapes (backslash, quote) and writes a line
    break as ``\\n``, as influxql.QuoteString does, so the literal always ends where it should.
    """
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def run_statement(client: InfluxClient, statement: str, doing: str) -> list[dict]:
    """Run InfluxQL sent in a form body, never in the URL (servers and proxies log URLs).

    Errors name ``doing`` ("creating user 'x'"), never the statement: it may hold a password.
    """
    body = urllib.parse.urlencode({"q": statement}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = client.request("POST", "/query", {"epoch": "s"}, body, headers)
    said = answer.server_message()
    if answer.status != 200:
        raise InfluxError(
            f"InfluxDB at {client.url} answered {answer.status} while {doing}: {said}",
            answer.status,
            said,
        )
    try:
        results = json.loads(answer.body).get("results", [])
    except (ValueError, AttributeError):
        raise InfluxError(
            f"InfluxDB at {client.url} gave an answer that is not InfluxDB's JSON while {doing}",
            answer.status,
            said,
        ) from None
    for result in results:
        if "error" in result:
            raise InfluxError(
                f"InfluxDB at {client.url} refused {doing}: {result['error']}",
                answer.status,
                str(result["error"]),
            )
    return results
