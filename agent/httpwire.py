"""HTTP/1.1 over one kept-alive socket: a request out, a complete response in.

The agent's own client instead of :mod:`http.client`, which loads :mod:`email` and
:mod:`ssl` (some 6 MB of RSS) for kits that mostly speak plain http:// to InfluxDB. TLS
comes only from the :class:`ssl.SSLContext` a caller passes, so this module never imports
:mod:`ssl`. Only a complete head counts as an answer: a reply cut off before the blank line
that ends its headers is an error, never a success.
"""

from __future__ import annotations

import io
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

MAX_LINE = 65536  # bytes in the status line or in one header line (http.client's limit too)
MAX_HEADERS = 100  # header lines in one answer (http.client's limit too)
MAX_INTERIM = 10  # 1xx answers skipped before the final one
_JOIN_UP_TO = 16384  # a body this small goes out in the same send as the head
_PIECE = 1 << 20  # bytes read at a time: a huge length a server claims is never allocated
_WITH_BODY = ("POST", "PUT", "PATCH")  # methods that say Content-Length: 0 for no body


class WireError(Exception):
    """The server's bytes are not a complete HTTP/1.x answer, or a request cannot be sent."""


class Response:
    """A final answer's status line and headers, read whole; its body is read on demand.

    ``headers`` has lower-case names; a repeated field's values are joined with ", ".
    """

    def __init__(
        self,
        fp: io.BufferedReader,
        version: str,
        status: int,
        reason: str,
        headers: dict[str, str],
        method: str,
    ) -> None:
        self._fp = fp
        self.status = status
        self.reason = reason
        self.headers = headers
        self._chunked = False
        self._crlf_due = False  # the CRLF after a chunk's data, read when the next is needed
        self._left: int | None = None  # body bytes still to come (in this chunk); None: to EOF
        self._done = False
        if method == "HEAD" or status < 200 or status in (204, 304):
            self._left = 0
        elif "transfer-encoding" in headers:
            self._chunked = _tokens(headers["transfer-encoding"])[-1:] == ["chunked"]
            self._left = 0 if self._chunked else None
        elif "content-length" in headers:
            self._left = _content_length(headers["content-length"])
        self._done = self._left == 0 and not self._chunked
        said = _tokens(headers.get("connection", ""))
        self.will_close = (
            "close" in said
            or (version == "HTTP/1.0" and "keep-alive" not in said)
            or (self._left is None)
            or status == 101
        )

    def header(self, name: str, default: str = "") -> str:
        """The value of header ``name`` (any case), or ``default``."""
        return self.headers.get(name.lower(), default)

    @property
    def done(self) -> bool:
        """The whole body has been read: the connection may carry the next exchange."""
        return self._done

    def read(self) -> bytes:
        """The rest of the body, decoded from its chunks."""
        parts = []
        while data := self._take(line=False):
            parts.append(data)
        return b"".join(parts)

    def readline(self) -> bytes:
        """The next line of the body (with its ``\\n``), read chunk by chunk; b"" at the end."""
        parts = []
        while data := self._take(line=True):
            parts.append(data)
            if data.endswith(b"\n"):
                break
        return b"".join(parts)

    def _take(self, line: bool) -> bytes:
        """Body bytes up to the end of this chunk (or of the body), one line at most when
        ``line``; b"" at the end. WireError when the body breaks off before it should."""
        while self._chunked and self._left == 0 and not self._done:
            self._next_chunk()
        if self._done:
            return b""
        if self._left is None:  # until the server closes the connection
            data = self._fp.readline() if line else self._fp.read(_PIECE)
            self._done = not data
            return data
        want = self._left if line else min(self._left, _PIECE)
        data = self._fp.readline(want) if line else self._fp.read(want)
        if len(data) < want and not (line and data.endswith(b"\n")):
            raise WireError(f"the body broke off {self._left - len(data)} bytes short")
        self._left -= len(data)
        self._done = self._left == 0 and not self._chunked
        return data

    def _next_chunk(self) -> None:
        """Read the next chunk's size line; after the last (size 0) chunk, its trailer."""
        if self._crlf_due:
            end = self._fp.read(2)
            if end != b"\r\n":
                raise WireError(f"a chunk of the body ends with {end!r}, not CRLF")
        line = _head_line(self._fp, "chunk size line")
        size = _chunk_size(line)
        self._left, self._crlf_due = size, True
        if size == 0:
            _header_fields(self._fp)  # the trailer: read to its blank line and dropped
            self._done = True


class Connection:
    """One server over one socket at a time, kept alive between exchanges. Not thread-safe.

    After an error, an answer not read to its end or one that closes the connection, the next
    request opens a new socket. A ``context`` makes it HTTPS (wrapped for ``host``).
    """

    def __init__(
        self, host: str, port: int, timeout: float, context: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.context = context
        self._sock: socket.socket | None = None
        self._file: io.BufferedReader | None = None
        self._last: Response | None = None

    @property
    def kept_alive(self) -> bool:
        """The next request goes out on the socket of an earlier, finished exchange."""
        last = self._last
        return self._sock is not None and last is not None and last.done and not last.will_close

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request; the answer with its status line and headers read (a timeout:
        TimeoutError; no complete answer: WireError or OSError). The body is left to read."""
        head = _request_head(method, target, self._host_header(), body, headers or {})
        if not self.kept_alive:
            self.close()
            self._open()
        assert self._sock is not None and self._file is not None
        self._last = None
        try:
            if body and len(body) > _JOIN_UP_TO:
                self._sock.sendall(head)
                self._sock.sendall(body)
            else:
                self._sock.sendall(head + body if body else head)
            self._last = _read_response(self._file, method)
        except BaseException:
            self.close()
            raise
        return self._last

    def close(self) -> None:
        """Close the socket (if open); an answer still being read cannot be read on."""
        file, sock = self._file, self._sock
        self._file = self._sock = self._last = None
        if file is not None:
            file.close()
        if sock is not None:
            sock.close()

    def _open(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not TCP after all; only a small send would wait longer
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._file = sock.makefile("rb")

    def _host_header(self) -> str:
        host = self.host if self.host.isascii() else self.host.encode("idna").decode()
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        default = 80 if self.context is None else 443
        return host if self.port == default else f"{host}:{self.port}"


def _request_head(
    method: str, target: str, host: str, body: bytes | None, headers: Mapping[str, str]
) -> bytes:
    """The request line and headers, with Host, Content-Length and Connection: keep-alive."""
    if not (target.isascii() and target.isprintable()) or " " in target:
        raise WireError(f"the request target {target[:80]!r} holds a space or a control character")
    given = {name.lower() for name in headers}
    fields = [("Host", host)] if "host" not in given else []
    if "accept-encoding" not in given:
        fields.append(("Accept-Encoding", "identity"))
    if "connection" not in given:
        fields.append(("Connection", "keep-alive"))
    fields.extend(headers.items())
    if body is not None or method in _WITH_BODY:
        fields.append(("Content-Length", str(len(body or b""))))
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in fields:
        if not name.isprintable() or ":" in name or " " in name or not value.isprintable():
            raise WireError(f"the request header {name[:40]!r} holds a line break or a colon")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_response(fp: io.BufferedReader, method: str) -> Response:
    """Read the status line and headers of the final answer (1xx interim ones are skipped)."""
    for _ in range(MAX_INTERIM + 1):
        version, status, reason = _status_line(fp)
        headers = _header_fields(fp)
        if status >= 200 or status == 101:
            return Response(fp, version, status, reason, headers, method)
    raise WireError(f"the server sent more than {MAX_INTERIM} interim (1xx) answers")


def _status_line(fp: io.BufferedReader) -> tuple[str, int, str]:
    """``HTTP/1.1 204 No Content`` as (version, status, reason)."""
    if not fp.peek(1):
        raise WireError("the server closed the connection without answering")
    text = _head_line(fp, "status line").decode("latin-1").rstrip("\r\n")
    version, _, rest = text.partition(" ")
    code, _, reason = rest.partition(" ")
    if not (
        version[:7] == "HTTP/1." and version[7:].isdigit()
        and len(code) == 3 and code.isascii() and code.isdigit() and code[0] != "0"
    ):  # fmt: skip
        raise WireError(f"the status line is not HTTP/1.x: {text[:80]!r}")
    return version, int(code), reason.strip()


def _header_fields(fp: io.BufferedReader) -> dict[str, str]:
    """Header lines up to the blank line that ends them, as {lower-case name: value}."""
    fields: dict[str, str] = {}
    name = ""
    for _ in range(MAX_HEADERS + 1):
        line = _head_line(fp, "headers")
        if line in (b"\r\n", b"\n"):
            return fields
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and name:  # obsolete line folding: more of the previous value
            fields[name] = f"{fields[name]} {text.strip()}"
            continue
        name, colon, value = text.partition(":")
        name = name.lower()
        if not colon or not name or " " in name or "\t" in name:
            raise WireError(f"a header line is not 'Name: value': {text[:80]!r}")
        value = value.strip(" \t")
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    raise WireError(f"the answer has more than {MAX_HEADERS} header lines")


def _head_line(fp: io.BufferedReader, what: str) -> bytes:
    """One line ending with LF, at most MAX_LINE bytes; ``what`` names it in errors."""
    line = fp.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise WireError(f"the {what} is longer than {MAX_LINE} bytes")
    if not line.endswith(b"\n"):
        raise WireError(f"the answer broke off in its {what} (after {len(line)} bytes)")
    return line


def _chunk_size(line: bytes) -> int:
    """The size in a chunk size line (hex digits, then maybe ``;extensions``)."""
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
        raise WireError(f"bad chunk size {line[:40]!r} in the chunked body")
    return int(digits, 16)


def _content_length(value: str) -> int:
    """Content-Length: one decimal number (repeats must agree)."""
    values = {v.strip() for v in value.split(",")}
    number = values.pop()
    if values or not (number.isascii() and number.isdigit()):
        raise WireError(f"Content-Length is not one number of bytes: {value[:40]!r}")
    return int(number)


def _tokens(value: str) -> list[str]:
    """A comma-separated header value as lower-case tokens (Connection, Transfer-Encoding)."""
    return [t.strip().lower() for t in value.split(",") if t.strip()]
