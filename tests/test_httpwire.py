"""agent.httpwire against small real socket servers: framing, limits, cut-off answers, the
kept-alive retry in InfluxClient, and that plain http:// never loads ssl, http.client or email.

Each server is a thread on 127.0.0.1 that runs a script per accepted connection. Nothing
waits on the clock: a server that must hold back waits for an event the test sets, and the
client's timeout (generous) only ends a test that has already failed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.httpwire import MAX_HEADERS, MAX_LINE, Connection, WireError
from agent.influx import InfluxClient, InfluxError

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0  # seconds: a test that needs this long has already failed
OK_EMPTY = b"HTTP/1.1 204 No Content\r\nX-Influxdb-Version: 1.8.10\r\n\r\n"


class Peer:
    """The server's end of one accepted connection."""

    def __init__(self, sock, number: int, server: Server) -> None:
        self.sock = sock
        self.number = number  # 1 for the first connection the server accepted
        self._file = sock.makefile("rb")
        self.server = server

    def read_request(self) -> tuple[str, dict[str, str], bytes] | None:
        """(request line, {lower-case name: value}, body), or None when the client closed."""
        line = self._file.readline()
        if not line:
            return None
        headers = {}
        while (field := self._file.readline()) not in (b"\r\n", b""):
            name, _, value = field.decode("latin-1").partition(":")
            headers[name.lower()] = value.strip()
        body = self._file.read(int(headers.get("content-length", 0)))
        request = (line.decode("latin-1").rstrip("\r\n"), headers, body)
        self.server.requests.append((self.number, *request))
        return request

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        """Close this end (the socket's file too: while it is open the socket stays open)."""
        self._file.close()
        self.sock.close()


class Server:
    """Runs ``script(peer)`` in a thread for every connection accepted on 127.0.0.1."""

    def __init__(self, script: Callable[[Peer], None]) -> None:
        self.script = script
        self.requests: list[tuple[int, str, dict[str, str], bytes]] = []
        self.connections = 0
        self.release = threading.Event()  # set at the end: a server holding back lets go
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            peer = Peer(sock, self.connections, self)
            threading.Thread(target=self._run, args=(peer,), daemon=True).start()

    def _run(self, peer: Peer) -> None:
        peer.sock.settimeout(WAIT)
        try:
            self.script(peer)
        except OSError:
            pass  # the client went away: what the test checks is on its side
        finally:
            peer.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self._listener.close()


def answer_each(*replies: bytes) -> Callable[[Peer], None]:
    """A script: each request on a connection gets the next of ``replies``; then close."""

    def script(peer: Peer) -> None:
        for reply in replies:
            if peer.read_request() is None:
                return
            peer.send(reply)

    return script


def connect(server: Server, timeout: float = WAIT) -> Connection:
    return Connection("127.0.0.1", server.port, timeout)


# -- the request ---------------------------------------------------------------------------


def test_a_request_goes_out_with_host_content_length_keep_alive_headers_and_body():
    with Server(answer_each(OK_EMPTY)) as server:
        conn = connect(server)
        reply = conn.request("POST", "/write?db=k1", b"a b=1", {"Authorization": "Token t"})
        assert reply.status == 204 and reply.read() == b""
        conn.close()
    ((_, line, headers, body),) = server.requests
    assert line == "POST /write?db=k1 HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["content-length"] == "5" and body == b"a b=1"
    assert headers["connection"] == "keep-alive"
    assert headers["authorization"] == "Token t"


def test_a_request_header_with_a_line_break_is_refused_before_anything_is_sent():
    with socket.socket() as nobody:  # bound, not listening: a connection would be refused
        nobody.bind(("127.0.0.1", 0))
        conn = Connection("127.0.0.1", nobody.getsockname()[1], WAIT)
        with pytest.raises(WireError, match="line break"):
            conn.request("GET", "/ping", None, {"X-Evil": "a\r\nX-Injected: 1"})


# -- bodies --------------------------------------------------------------------------------


def test_a_content_length_body_is_read_exactly_and_the_connection_carries_the_next_request():
    replies = (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfirst!", b"HTTP/1.1 200 OK\r\n"
               b"Content-Length: 6\r\n\r\nsecond")  # fmt: skip
    with Server(answer_each(*replies)) as server:
        conn = connect(server)
        assert conn.request("GET", "/a").read() == b"first!"
        assert conn.kept_alive
        assert conn.request("GET", "/b").read() == b"second"
        conn.close()
    assert server.connections == 1


def test_a_chunked_body_is_read_line_by_line_across_chunk_boundaries_as_it_arrives():
    first_lines_read = threading.Event()

    def script(peer: Peer) -> None:
        peer.read_request()
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        peer.send(head + b'c\r\n{"a": 1}\n{"b\r\n' + b'6\r\n": 2}\n\r\n')
        # the rest only once the client has its first two lines: it must not wait for all
        first_lines_read.wait(WAIT)
        peer.send(b'4;ext=1\r\n{"c"\r\n' + b"5\r\n: 3}\n\r\n" + b"0\r\nX-Trailer: t\r\n\r\n")
        peer.read_request()
        peer.send(OK_EMPTY)

    with Server(script) as server:
        conn = connect(server)
        reply = conn.request("GET", "/query?chunked=true")
        assert reply.readline() == b'{"a": 1}\n'
        assert reply.readline() == b'{"b": 2}\n'
        first_lines_read.set()
        assert reply.readline() == b'{"c": 3}\n'
        assert reply.readline() == b""
        assert reply.done and conn.kept_alive
        assert conn.request("GET", "/ping").status == 204  # the trailer was read to its end
        conn.close()
    assert server.connections == 1


def test_a_chunked_body_read_whole_is_the_chunks_joined():
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    with Server(answer_each(reply)) as server:
        assert connect(server).request("GET", "/").read() == b"abcde"


def test_a_body_without_length_or_chunks_is_read_until_the_server_closes():
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it,\nto the end")

    with Server(script) as server:
        conn = connect(server)
        reply = conn.request("GET", "/a")
        assert reply.read() == b"all of it,\nto the end"
        assert reply.will_close and not conn.kept_alive
        conn.request("GET", "/b")  # on a new connection: the first ended with the body
    assert server.connections == 2


@pytest.mark.parametrize(
    "method, head",
    [
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
    ],
)
def test_no_body_is_read_for_204_304_and_head(method, head):
    # nothing follows the head until the next request: a client waiting for a body would
    # run into its timeout instead of reading the next answer
    with Server(answer_each(head, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")) as server:
        conn = connect(server)
        reply = conn.request(method, "/a")
        assert reply.read() == b"" and reply.done
        assert conn.request("GET", "/b").read() == b"next"
        conn.close()
    assert server.connections == 1


def test_an_interim_1xx_answer_is_skipped_for_the_final_one():
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with Server(answer_each(reply)) as server:
        answer = connect(server).request("POST", "/write", b"x")
        assert (answer.status, answer.read()) == (200, b"ok")


def test_header_names_are_case_insensitive_and_connection_close_ends_the_connection():
    reply = b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 3\r\nCONNECTION: Close\r\nX-Influxdb-Version: 1.8\r\n\r\nabc"  # noqa: E501
    # the server keeps connection 1 open: only the client's reading of the header ends it
    with Server(answer_each(reply, reply)) as server:
        conn = connect(server)
        answer = conn.request("GET", "/a")
        assert answer.header("X-INFLUXDB-VERSION") == "1.8" and answer.read() == b"abc"
        assert not conn.kept_alive
        conn.request("GET", "/b").read()
        conn.close()
    assert [number for number, *_ in server.requests] == [1, 2]


def test_a_body_shorter_than_its_content_length_is_an_error_not_a_short_body():
    with Server(answer_each(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")) as server:
        reply = connect(server).request("GET", "/")
        with pytest.raises(WireError, match="broke off 7 bytes short"):
            reply.read()


def test_a_chunked_body_cut_off_inside_a_chunk_is_an_error():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    with Server(answer_each(head + b"5\r\nab")) as server:
        reply = connect(server).request("GET", "/")
        with pytest.raises(WireError, match="broke off"):
            reply.readline()


# -- no answer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut, says",
    [
        (b"", "closed the connection without answering"),
        (b"HTTP/1.1 204 No Content", "broke off in its status line"),
        (b"HTTP/1.1 204 No Content\r\n", "broke off in its headers"),
        (b"HTTP/1.1 204 No Content\r\nX-Influxdb-Ver", "broke off in its headers"),
        (b"HTTP/1.1 204 No Content\r\nX-Influxdb-Version: 1.8.10\r\n", "broke off in its headers"),
    ],
)
def test_an_answer_cut_off_before_the_blank_line_after_its_headers_is_no_answer(cut, says):
    with Server(answer_each(cut)) as server:  # then the server closes the connection
        with pytest.raises(WireError, match=says):
            connect(server).request("POST", "/write", b"a b=1")


def test_influx_client_takes_a_cut_off_answer_for_no_answer_and_does_not_retry_a_fresh_one():
    with Server(answer_each(b"HTTP/1.1 204 No Content\r\n")) as server:
        client = InfluxClient(server.url, timeout=WAIT)
        with pytest.raises(InfluxError) as refused:
            client.request("POST", "/write", {"db": "k1"}, b"a b=1")
    assert refused.value.status is None
    assert f"cannot reach InfluxDB at {server.url}: the answer broke off" in str(refused.value)
    assert server.connections == 1


def test_a_kept_alive_connection_the_server_closed_meanwhile_is_retried_once_fresh():
    closed = threading.Event()

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(OK_EMPTY)
        if peer.number == 1:
            peer.close()  # as a server's idle timeout does
            closed.set()
            return
        peer.read_request()

    with Server(script) as server:
        client = InfluxClient(server.url, timeout=WAIT)
        assert client.request("GET", "/ping", {}).status == 204
        assert closed.wait(WAIT)
        assert client.request("GET", "/ping", {}).status == 204
        client.close()
    assert [number for number, *_ in server.requests] == [1, 2]


def test_when_the_fresh_retry_fails_too_the_client_gives_up_with_no_answer():
    closed = threading.Event()

    def script(peer: Peer) -> None:
        peer.read_request()
        if peer.number == 1:
            peer.send(OK_EMPTY)
            peer.close()
            closed.set()
        # every later connection is closed without an answer

    with Server(script) as server:
        client = InfluxClient(server.url, timeout=WAIT)
        client.request("GET", "/ping", {})
        assert closed.wait(WAIT)
        with pytest.raises(InfluxError, match="closed the connection without answering") as no:
            client.request("GET", "/ping", {})
    assert no.value.status is None
    assert server.connections == 2  # the first, and one fresh retry: not a loop


def test_a_server_that_does_not_answer_in_time_raises_timeout_error():
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.server.release.wait(WAIT)

    with Server(script) as server:
        with pytest.raises(TimeoutError):
            connect(server, timeout=0.5).request("GET", "/ping")


def test_influx_client_reports_a_timeout_on_a_kept_alive_connection_without_retrying_it():
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(OK_EMPTY)
        peer.read_request()
        peer.server.release.wait(WAIT)  # the second request is never answered

    with Server(script) as server:
        client = InfluxClient(server.url, timeout=0.5)
        client.request("GET", "/ping", {})
        with pytest.raises(InfluxError, match="did not answer within 0.5 s"):
            client.request("GET", "/ping", {})
    assert server.connections == 1


def test_a_chunked_stream_that_stalls_is_reported_as_stopped_sending():
    def script(peer: Peer) -> None:
        peer.read_request()
        line = b'{"results": [{"statement_id": 0}]}\n'
        size = f"{len(line):x}".encode()
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\n")
        peer.send(line + b"\r\n")
        peer.server.release.wait(WAIT)

    with Server(script) as server:
        chunks = InfluxClient(server.url, timeout=0.5).stream("SELECT * FROM data", "k1", 100)
        assert next(chunks) == {"results": [{"statement_id": 0}]}
        with pytest.raises(InfluxError, match="stopped sending within 0.5 s"):
            next(chunks)


# -- limits against a broken or hostile server ---------------------------------------------


@pytest.mark.parametrize(
    "reply, says",
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_LINE + b"\r\n\r\n", "headers is longer"),
        (b"HTTP/1.1 200 " + b"O" * MAX_LINE + b"\r\n\r\n", "status line is longer"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n", "more than 100"),
    ],
)
def test_an_oversized_head_is_refused(reply, says):
    with Server(answer_each(reply)) as server:
        with pytest.raises(WireError, match=says):
            connect(server).request("GET", "/")


def test_as_many_header_lines_as_the_limit_are_read():
    reply = b"HTTP/1.1 204 No Content\r\n" + b"X-Many: 1\r\n" * MAX_HEADERS + b"\r\n"
    with Server(answer_each(reply)) as server:
        assert connect(server).request("GET", "/").header("x-many") == ", ".join(["1"] * 100)


@pytest.mark.parametrize("size", [b"zz", b"-5", b"0x10", b"", b"1 2", b"1" * 17])
def test_a_bad_chunk_size_is_refused(size):
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nabc\r\n"
    with Server(answer_each(reply)) as server:
        answer = connect(server).request("GET", "/")
        with pytest.raises(WireError, match="bad chunk size"):
            answer.read()


@pytest.mark.parametrize(
    "status_line",
    [b"HTCPCP/1.0 418 teapot", b"HTTP/1.1 2000 OK", b"HTTP/1.1 OK", b"HTTP/2 200", b"<html>"],
)
def test_a_malformed_status_line_is_refused(status_line):
    with Server(answer_each(status_line + b"\r\n\r\n")) as server:
        with pytest.raises(WireError, match="status line is not HTTP/1.x"):
            connect(server).request("GET", "/")


def test_a_content_length_that_is_not_a_number_is_refused():
    with Server(answer_each(b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n")) as server:
        with pytest.raises(WireError, match="Content-Length is not one number"):
            connect(server).request("GET", "/")


# -- memory: plain http:// loads neither ssl nor http.client nor email ---------------------

HEAVY = ("ssl", "_ssl", "http.client", "email")
CHILD = f"""
import importlib, json, pkgutil, sys
import agent, agent.cli
for module in pkgutil.iter_modules(agent.__path__):
    if module.name != "__main__":  # that one runs the command line
        importlib.import_module("agent." + module.name)
from agent.influx import InfluxClient
client = InfluxClient(sys.argv[1])
status = client.request("GET", "/ping", {{}}).status
heavy = [m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m in {HEAVY!r}]
print(json.dumps({{"status": status, "heavy": sorted(heavy), "from": agent.__file__}}))
"""


def run_child(code: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_agent_talks_plain_http_without_loading_ssl_http_client_or_email():
    with Server(answer_each(OK_EMPTY)) as server:
        seen = run_child(CHILD, server.url)
    assert seen["from"] == str(ROOT / "agent" / "__init__.py")
    assert seen["status"] == 204
    assert seen["heavy"] == []


def test_an_https_url_does_load_ssl_and_still_not_http_client():
    code = """
import json, sys
from agent.influx import InfluxClient
InfluxClient("https://127.0.0.1:8086", verify_tls=True)
print(json.dumps({"ssl": "ssl" in sys.modules, "http.client": "http.client" in sys.modules}))
"""
    assert run_child(code) == {"ssl": True, "http.client": False}
