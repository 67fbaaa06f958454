"""``[influx] api = v2``: the request InfluxDB 2.x/3.x gets, and what each documented reply does.

No 2.x or 3.x server can be installed here, so every test runs against the loopback stub of
``v2stub.py``, which records each request as it arrived and answers as the 2.x docs say a
server does. The real :class:`~agent.delivery.Delivery` (or ``sensorkit publish``) drives the
real :class:`~agent.sinks.InfluxV2Sink`; each test asserts the outcome: delivered, quarantined
with the server's words, held, or retried after the delay asked for.
"""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_sensorkit, write_config
from v2stub import WRITE, Scripted, V2Server, error

from agent.buffer import read_quarantine
from agent.classify import Verdict, classify, classify_target
from agent.delivery import Backoff, Delivery, DeliverySettings
from agent.influx import InfluxClient
from agent.series import SeriesEncoder
from agent.sinks import InfluxV2Sink
from agent.telegram import parse_telegrams

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata" / "bdp-test_sense.json"
ORG, BUCKET, TOKEN = "citizens", "BdP_kit", "tok-v2-3f9a1c"
T0 = 1_700_000_000


@pytest.fixture
def stub():
    server = V2Server(ORG, BUCKET, TOKEN).start()
    yield server
    server.stop()


def sink(url: str, *, compress: bool = True, token: str = TOKEN) -> InfluxV2Sink:
    return InfluxV2Sink(InfluxClient(url, timeout=2, compress=compress, token=token), ORG, BUCKET)


def output(tmp_path: Path, url: str, *, slow: float = 0.5, batch_size: int = 5000) -> Delivery:
    settings = DeliverySettings(
        batch_size=batch_size, sync_interval=1.0, backoff=Backoff(base=0.1, cap=0.3, slow=slow)
    )
    return Delivery(
        "influx", sink(url), tmp_path / "state", "influx", SeriesEncoder().encode, settings
    )


def points(n: int, db: str = "T_kit") -> list[tuple[str, str]]:
    return [(db, f"data,label=bench,new=0 dtemp={20 + i}.5 {T0 + i}") for i in range(n)]


def wait_for(condition, timeout: float, step: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds passed (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def v2_config(tmp_path: Path, url: str, *lines: str, token: str = TOKEN) -> Path:
    """An agent.ini with api = v2; the token in a 0600 token_file beside it."""
    token_file = tmp_path / "influx.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    text = (
        f"[kit]\nproject = T\nserial = cfg\ninterval = 1\nstate_dir = {tmp_path / 'state'}\n"
        f"[influx]\napi = v2\nurl = {url}\norg = {ORG}\nbucket = {BUCKET}\n"
        "token_file = influx.token\ntimeout = 2\nretry_max = 1\nsync_interval = 0.5\n"
        + "".join(line + "\n" for line in lines)
    )
    return write_config(tmp_path / "agent.ini", text)


def sensorkit(*args: str, timeout: float = 90):
    return run_sensorkit(*args, timeout=timeout, env={"SENSORKIT_CONFIG": "/nonexistent"})


def expected_lines(path: Path) -> list[str]:
    """The line protocol ``publish`` makes of a telegram file (what the bucket must hold)."""
    encoder = SeriesEncoder()
    telegrams = parse_telegrams(path.read_text(), str(path))
    return [line for telegram in telegrams for _, line in encoder.encode(telegram)]


# -- the request ---------------------------------------------------------------------------------


def test_a_write_is_one_post_to_api_v2_write_with_org_bucket_precision_the_token_and_gzip(stub):
    body = (
        f"#q 0 {T0} 0 1,2 T_kit\ndata,label=bench dtemp=20.5 {T0}\n"
        f'info,label=bench project="T" {T0}\n'
    ).encode()
    reply = sink(stub.url).write("T_kit", body)
    assert reply.status == 204 and reply.api == "v2"
    assert classify(reply) is Verdict.DELIVERED
    [request] = stub.seen
    assert (request.method, request.path) == ("POST", WRITE)
    assert sorted(request.query) == [("bucket", BUCKET), ("org", ORG), ("precision", "s")]
    assert request.header("Authorization") == [f"Token {TOKEN}"]
    assert request.header("Content-Type") == ["text/plain; charset=utf-8"]
    assert request.header("Content-Encoding") == ["gzip"]
    assert gzip.decompress(request.body) == body  # the line protocol, byte for byte
    assert stub.stored == [
        f"data,label=bench dtemp=20.5 {T0}",
        f'info,label=bench project="T" {T0}',
    ]


def test_with_gzip_off_the_body_goes_as_it_is_without_content_encoding(stub):
    body = f"data,label=bench dtemp=20.5 {T0}\n".encode()
    assert sink(stub.url, compress=False).write("T_kit", body).status == 204
    [request] = stub.seen
    assert request.header("Content-Encoding") == []
    assert request.body == body


def test_the_bucket_is_the_one_of_the_output_whatever_database_the_batch_names(stub):
    v2 = sink(stub.url)
    for db in ("T_kit", "BdP_other", "x"):
        assert v2.write(db, f"data,label=a v=1 {T0}\n".encode()).status == 204
    assert {(r.params["org"], r.params["bucket"]) for r in stub.seen} == {(ORG, BUCKET)}


def test_publish_delivers_every_point_of_a_file_to_the_bucket_with_the_token_never_shown(
    stub, tmp_path
):
    config = v2_config(tmp_path, stub.url, "gzip = yes")  # the stub is on loopback: auto is off
    done = sensorkit("-v", "publish", "-c", str(config), str(TESTDATA))  # -v: debug logging
    assert done.returncode == 0, done.stderr
    assert f"-> bucket {BUCKET!r}" in done.stderr
    assert stub.stored == expected_lines(TESTDATA)
    assert stub.seen and all(r.path == WRITE for r in stub.seen)  # nothing but writes
    for request in stub.seen:
        assert sorted(request.query) == [("bucket", BUCKET), ("org", ORG), ("precision", "s")]
        assert request.header("Authorization") == [f"Token {TOKEN}"]
        assert request.header("Content-Encoding") == ["gzip"]
    assert TOKEN not in done.stdout + done.stderr
    status = sensorkit("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert TOKEN not in status.stdout + status.stderr
    listed = sensorkit("status", "-c", str(config), "--json")
    publish = json.loads(listed.stdout)["outputs"]["publish"]
    assert publish["queued"] == 0 and publish["quarantined"] == 0
    assert TOKEN not in listed.stdout


# -- 400 and 422: the points refused are quarantined with the server's message -------------------


def test_400_quarantines_the_malformed_point_with_the_servers_message_and_delivers_the_rest(
    stub, tmp_path
):
    stub.malformed = lambda line: "missing field value" if "dtemp=25.5" in line else None
    sent = points(8)
    out = output(tmp_path, stub.url)
    out.queue.append(sent)
    out.start()
    try:
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
    finally:
        out.close()
    assert sorted(set(stub.stored)) == sorted(line for _, line in sent if "dtemp=25.5" not in line)
    [held] = read_quarantine(tmp_path / "state", "influx")
    assert "dtemp=25.5" in held.line
    assert held.reason == f"400: unable to parse '{held.line}': missing field value"


def test_422_partial_write_quarantines_the_rejected_point_and_keeps_the_others_written(
    stub, tmp_path
):
    why = "dropped 1 points outside retention policy of duration 720h0m0s"
    stub.rejected = lambda line: why if line.endswith(f" {T0 + 2}") else None
    sent = points(6)
    out = output(tmp_path, stub.url)
    out.queue.append(sent)
    out.start()
    try:
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
    finally:
        out.close()
    assert set(stub.stored) == {line for _, line in sent if not line.endswith(f" {T0 + 2}")}
    [held] = read_quarantine(tmp_path / "state", "influx")
    assert held.line.endswith(f" {T0 + 2}")
    assert held.reason.startswith("422: failure writing points to database: partial write")
    assert why in held.reason


# -- 401, 403, 404: nothing is lost, the message says what to do ---------------------------------


def test_401_keeps_everything_retries_slowly_says_so_once_and_never_shows_the_token(
    stub, tmp_path, caplog
):
    stub.token = "the-server-wants-another"
    out = output(tmp_path, stub.url)
    out.queue.append(points(5))
    with caplog.at_level(logging.INFO, logger="sensorkit"):
        out.start()
        try:
            assert wait_for(lambda: len(stub.writes()) >= 3, 10)  # retried, and retried again
            stats = out.stats()
            assert stats.retrying and stats.held == {}  # the server's problem, not one bucket's
            assert out.queue.depth == 5 and stub.stored == []
            assert "401" in stats.last_error and "[influx] token" in stats.last_error
            assert BUCKET in stats.last_error and ORG in stats.last_error
            stub.token = TOKEN  # the person fixes the token on the server
            assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
        finally:
            out.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "401" in errors[0].getMessage()
    assert TOKEN not in caplog.text
    assert len(stub.stored) == 5


def test_403_holds_the_points_with_how_to_grant_the_token_write_permission(stub, tmp_path):
    stub.writable = set()
    out = output(tmp_path, stub.url)
    out.queue.append(points(4))
    out.start()
    try:
        assert wait_for(lambda: "T_kit" in out.stats().held, 10), out.stats().last_error
        why = out.stats().held["T_kit"]
        assert "403" in why and "insufficient permissions for write" in why
        assert f"bucket {BUCKET!r} of org {ORG!r}" in why and "--write-bucket" in why
        assert out.queue.depth == 4 and stub.stored == []
        stub.writable = {(ORG, BUCKET)}
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
    finally:
        out.close()
    assert len(stub.stored) == 4


def test_404_holds_a_missing_bucket_names_it_says_how_to_create_it_and_never_creates_it(
    stub, tmp_path
):
    stub.buckets = set()
    out = output(tmp_path, stub.url)
    out.queue.append(points(3))
    out.start()
    try:
        assert wait_for(lambda: "T_kit" in out.stats().held, 10), out.stats().last_error
        why = out.stats().held["T_kit"]
        assert f'404 bucket "{BUCKET}" not found' in why
        assert f"bucket {BUCKET!r} of org {ORG!r} at {stub.url} does not exist" in why
        assert f"influx bucket create -n {BUCKET} -o {ORG} -r 90d" in why
        assert out.queue.depth == 3
        stub.buckets = {(ORG, BUCKET)}  # a person creates it
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
    finally:
        out.close()
    assert {r.path for r in stub.seen} == {WRITE}  # never anything that creates a bucket
    assert len(stub.stored) == 3


def test_404_for_a_missing_org_holds_too_with_the_servers_words(stub, tmp_path):
    stub.orgs = set()
    out = output(tmp_path, stub.url)
    out.queue.append(points(1))
    out.start()
    try:
        assert wait_for(lambda: "T_kit" in out.stats().held, 10), out.stats().last_error
    finally:
        out.close()
    assert f'organization name "{ORG}" not found' in out.stats().held["T_kit"]
    assert out.queue.depth == 1


# -- 413: split until it fits ---------------------------------------------------------------------


def test_413_splits_the_batch_until_it_fits_and_delivers_everything(stub, tmp_path):
    sent = points(64)
    stub.max_body = 600  # about 12 points
    out = output(tmp_path, stub.url)
    out.queue.append(sent)
    out.start()
    try:
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
    finally:
        out.close()
    assert 413 in {r.status for r in stub.seen}
    assert set(stub.stored) == {line for _, line in sent}
    assert out.queue.stats().quarantined == 0


def test_413_for_a_single_point_quarantines_it_and_delivers_the_rest(stub, tmp_path):
    sent = points(5)
    huge = ("T_kit", f'data,label=bench note="{"x" * 900}" {T0 + 99}')
    stub.max_body = 600
    out = output(tmp_path, stub.url)
    out.queue.append(sent[:2] + [huge] + sent[2:])
    out.start()
    try:
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
    finally:
        out.close()
    assert set(stub.stored) == {line for _, line in sent}
    [held] = read_quarantine(tmp_path / "state", "influx")
    assert held.line == huge[1]
    assert held.reason == "413: unable to read data: points batch is too large"


# -- 429, 503, 5xx: retried, after Retry-After when the server gives one ---------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_are_retried_after_the_retry_after_the_server_asked_for(status, tmp_path):
    busy = Scripted(status, error("too many requests", "slow down"), {"Retry-After": "2"})
    server = V2Server(ORG, BUCKET, TOKEN, script=[busy]).start()
    out = output(tmp_path, server.url, slow=5.0)  # backoff alone would retry in 0.05..0.1 s
    out.queue.append(points(3))
    out.start()
    try:
        assert wait_for(lambda: out.queue.depth == 0, 15), out.stats().last_error
    finally:
        out.close()
        server.stop()
    first, second = server.writes()[:2]
    assert (first.status, second.status) == (status, 204)
    assert second.at - first.at >= 1.9  # the retry waited as the server asked
    assert len(server.stored) == 3


def test_other_5xx_are_retried_with_backoff_then_delivered(tmp_path):
    script = [Scripted(500, error("internal error", "oops")), Scripted(502), Scripted(504)]
    server = V2Server(ORG, BUCKET, TOKEN, script=script).start()
    out = output(tmp_path, server.url)
    out.queue.append(points(2))
    out.start()
    try:
        assert wait_for(lambda: out.queue.depth == 0, 10), out.stats().last_error
    finally:
        out.close()
        server.stop()
    assert [r.status for r in server.writes()] == [500, 502, 504, 204]
    assert out.queue.stats().quarantined == 0 and len(server.stored) == 2


# -- sensorkit publish and status, end to end, on a refusal --------------------------------------


def test_publish_to_a_missing_bucket_exits_1_keeps_the_points_and_status_says_why(stub, tmp_path):
    stub.buckets = set()
    config = v2_config(tmp_path, stub.url)
    done = sensorkit("publish", "-c", str(config), "--wait", "2", str(TESTDATA))
    assert done.returncode == 1, done.stderr
    assert f"influx bucket create -n {BUCKET} -o {ORG} -r 90d" in done.stderr
    assert "still queued safely" in done.stderr
    shown = sensorkit("status", "-c", str(config))  # offline: read from the queue on disk
    assert "queued          " in shown.stdout and "does not exist" in shown.stdout
    assert TOKEN not in shown.stdout + done.stderr + done.stdout
    stub.buckets = {(ORG, BUCKET)}
    again = sensorkit("publish", "-c", str(config), "--wait", "20")
    assert again.returncode == 0, again.stderr
    assert sorted(set(stub.stored)) == sorted(expected_lines(TESTDATA))


def test_publish_warns_when_several_kits_would_share_the_one_bucket(stub, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps({"ident": {"project": "T", "serial": "two", "label": "b"}})
        + "\n"
        + json.dumps({"data": {"time": T0, "dtemp": 20.0}})
        + "\n"
    )
    config = v2_config(tmp_path, stub.url)
    done = sensorkit("publish", "-c", str(config), str(TESTDATA), str(other))
    assert done.returncode == 0, done.stderr
    [warning] = [ln for ln in done.stderr.splitlines() if ln.startswith("WARNING")]
    assert "2 kits (BdP_test_sense, T_two) all go to bucket 'BdP_kit'" in warning


def test_status_of_a_running_agent_shows_the_v2_server_and_org_but_never_the_token(stub, tmp_path):
    config = v2_config(
        tmp_path, stub.url, "[bme280]\nenabled = yes\nbackend = simulated\ninterval = 1"
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(config), "--duration", "60"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def delivering() -> dict | None:
            shown = sensorkit("status", "-c", str(config), "--json")
            influx = json.loads(shown.stdout).get("outputs", {}).get("influx", {})
            return influx if influx.get("delivered") else None

        assert wait_for(delivering, 40, step=0.5), "the agent never delivered"
        live = delivering()
        text = sensorkit("status", "-c", str(config)).stdout
    finally:
        agent.terminate()
        _, stderr = agent.communicate(timeout=30)
    assert live["url"] == stub.url
    assert live["user"] == f"a token of org {ORG!r} (bucket {BUCKET!r})"
    assert "agent: running" in text
    assert f"server          {stub.url} as a token of org {ORG!r} (bucket {BUCKET!r})" in text
    assert TOKEN not in text + json.dumps(live) + stderr
    measurements = [line.split(" ", 1)[0].split(",", 1)[0] for line in stub.stored]
    assert measurements[0] == "info" and "data" in measurements
    assert any("hpa=" in line for line in stub.stored if line.startswith("data,"))


def test_making_a_bucket_ready_sends_nothing_and_a_v2_sink_may_never_create_one(stub):
    v2 = sink(stub.url)
    assert classify_target(v2.ready("T_kit")) is Verdict.READY
    assert v2.may_create is False and v2.twin().may_create is False
    assert stub.seen == []
