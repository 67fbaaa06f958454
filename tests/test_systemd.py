"""agent/systemd.py: sd_notify datagrams on a real NOTIFY_SOCKET (a path and an abstract name),
the watchdog that stops pinging when a part hangs, journald priorities, log-once-per-change."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from agent import systemd

ROOT = Path(__file__).resolve().parent.parent


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket that collects messages."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract:
            name = f"sensorkit-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="sk-", dir="/tmp")  # sun_path: 108 bytes
            path = os.path.join(self.dir, "notify")
            self.sock.bind(path)
            self.env = path
        self.sock.settimeout(5)

    def receive(self) -> tuple[str, int]:
        """One datagram's text and the sender's pid (SCM_CREDENTIALS, as systemd reads it)."""
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        return data.decode(), pid

    def pending(self, wait: float = 0.0) -> list[str]:
        self.sock.settimeout(wait or 0.001)
        out = []
        try:
            while True:
                out.append(self.receive()[0])
                self.sock.settimeout(0.001)
        except (TimeoutError, BlockingIOError):
            pass
        self.sock.settimeout(5)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, monkeypatch):
    listener = NotifySocket(abstract=request.param == "abstract")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.env)
    yield listener
    listener.close()


def test_ready_status_watchdog_and_stopping_arrive_as_sd_notify_datagrams(notify_socket):
    assert systemd.ready("starting: 3 sensors")
    assert notify_socket.receive()[0] == "READY=1\nSTATUS=starting: 3 sensors"
    assert systemd.status("influx: 0 queued\nsecond line")
    assert notify_socket.receive()[0] == "STATUS=influx: 0 queued second line"
    assert systemd.watchdog()
    assert notify_socket.receive()[0] == "WATCHDOG=1"
    assert systemd.extend_timeout(90)
    assert notify_socket.receive()[0] == "EXTEND_TIMEOUT_USEC=90000000"
    assert systemd.stopping()
    assert notify_socket.receive()[0] == "STOPPING=1"


def test_the_agent_process_itself_sends_so_notifyaccess_main_accepts_it(notify_socket):
    """NotifyAccess=main: systemd takes messages only from the main pid; a child process
    sending on the parent's behalf would be ignored."""
    code = "from agent import systemd; import sys; sys.exit(0 if systemd.ready() else 1)"
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.env}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    message, pid = notify_socket.receive()
    assert proc.wait(timeout=30) == 0
    assert message == "READY=1"
    assert pid == proc.pid


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.ready()
    assert not systemd.status("x")
    assert not systemd.watchdog()
    assert not systemd.stopping()


def test_a_socket_nobody_listens_on_is_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", "/tmp/sk-no-such-dir/notify")
    assert systemd.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # not supported: ignored
    assert systemd.watchdog() is False


def test_status_text_is_one_bounded_line():
    assert systemd.one_line("a\n  b\tc") == "a b c"
    long = systemd.one_line("x" * 1000)
    assert len(long) == 400 and long.endswith("...")


# -- the watchdog interval -------------------------------------------------------------------


def test_watchdog_interval_comes_from_watchdog_usec_for_this_process_only():
    pid = str(os.getpid())
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 60.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": pid}) == 60.0
    other = str(os.getpid() + 1)
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": other}) is None
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_pings_every_quarter_interval_or_so_while_every_part_beats():
    clock, sent = FakeClock(), []
    dog = systemd.Watchdog(60, send=lambda: sent.append(clock.now) or True, clock=clock)
    dog.expect("window", within=30)
    dog.expect("influx", within=40)
    for _ in range(12):  # two minutes, the loop checking every 10 s
        dog.beat("window")
        dog.beat("influx")
        dog.check()
        clock.now += 10
    assert sent == [1000.0, 1020.0, 1040.0, 1060.0, 1080.0, 1100.0]
    # a loop passing every 5 s but just missing the quarter: gaps stay far below 60 s
    clock.now, sent[:] = 2000.0, []
    dog = systemd.Watchdog(60, send=lambda: sent.append(clock.now) or True, clock=clock)
    for _ in range(60):
        dog.check()
        clock.now += 4.9
    assert max(b - a for a, b in zip(sent, sent[1:], strict=False)) < 20


def test_watchdog_stops_pinging_while_a_part_is_overdue_and_says_so_once(caplog):
    clock, sent = FakeClock(), []
    dog = systemd.Watchdog(60, send=lambda: sent.append(clock.now) or True, clock=clock)
    dog.expect("window", within=30)
    dog.expect("influx", within=40)
    with caplog.at_level(logging.INFO, logger="sensorkit.systemd"):
        for _ in range(10):  # the sender hangs: only the window loop beats
            dog.beat("window")
            dog.check()
            clock.now += 10
        assert dog.overdue() == ["influx"]
        dog.beat("influx")  # it comes back
        clock.now += 30
        dog.beat("window")
        assert dog.check()
    # pings at 1000, 1020, 1040; none from 1050 (influx silent > 40 s) to 1100
    assert sent == [1000.0, 1020.0, 1040.0, 1130.0]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "influx silent too long" in errors[0].getMessage()
    assert "recovered" in caplog.records[-1].getMessage()


def test_forgotten_parts_no_longer_hold_back_the_ping():
    clock = FakeClock()
    dog = systemd.Watchdog(10, send=lambda: True, clock=clock)
    dog.expect("sensor", within=5)
    clock.now += 6
    assert not dog.check()
    dog.forget("sensor")
    assert dog.check()


def test_without_a_watchdog_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    sent = []
    dog = systemd.Watchdog(send=lambda: sent.append(1) or True)
    dog.expect("window", within=1)
    assert not dog.enabled and not dog.check() and sent == []


def test_a_hung_loop_sends_no_more_watchdog_pings_on_the_socket(notify_socket, monkeypatch):
    """End to end on a real socket: a loop that checks every 20 ms with WatchdogSec=0.2 s
    pings about every 60 ms; once it blocks, nothing more arrives."""
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    dog = systemd.Watchdog()
    assert dog.interval == 0.2
    dog.expect("window", within=0.15)
    hang, stop = threading.Event(), threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if hang.is_set():
                stop.wait()  # stuck, as a hung read or a deadlock would be
                return
            dog.beat("window")
            dog.check()
            time.sleep(0.02)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        time.sleep(0.55)
        alive = notify_socket.pending()
        hang.set()
        time.sleep(0.05)
        notify_socket.pending()  # a ping already on its way when the loop hung
        time.sleep(0.5)
        after = notify_socket.pending()
    finally:
        stop.set()
        thread.join()
    assert set(alive) == {"WATCHDOG=1"} and 3 <= len(alive) <= 12, alive
    assert after == []


# -- log once per change ---------------------------------------------------------------------


def test_a_repeating_failure_is_logged_once_per_change_with_hourly_reminders(caplog):
    clock = FakeClock()
    logger = logging.getLogger("sensorkit.test")
    once = systemd.ChangeLog(logger, "dht22", clock=clock)
    with caplog.at_level(logging.INFO, logger="sensorkit.test"):
        for _ in range(600):  # every second for 10 min: one line
            once.failed("no answer")
            clock.now += 1
        once.failed("checksum did not validate")  # a different failure: logged
        clock.now += 1
        for _ in range(3700):
            once.failed("checksum did not validate")
            clock.now += 1
        once.failed("timeout after 3.1 s", key="timeout")
        once.failed("timeout after 3.4 s", key="timeout")  # same kind: not logged
        clock.now += 5
        assert once.ok()
        assert not once.ok()  # already recovered: nothing more
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "dht22: no answer",
        "dht22: checksum did not validate",
        "dht22: still: checksum did not validate (3600 times more over 3600 s)",
        "dht22: timeout after 3.1 s",
        "dht22: recovered after 5 s",
    ]


# -- journald priorities ---------------------------------------------------------------------

LOG_SOME = """
import logging, sys
from agent import systemd
systemd.setup_logging(verbose=True)
log = logging.getLogger("sensorkit.test")
log.debug("detail"); log.info("started"); log.warning("disk slow"); log.error("server down")
log.critical("cannot go on")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("driver bug")
"""


def run_logging(stderr_path: Path, journal_stream: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with open(stderr_path, "w") as err:
        subprocess.run(
            [sys.executable, "-c", LOG_SOME], cwd=ROOT, env=env, stderr=err, timeout=30, check=True
        )
    return stderr_path.read_text().splitlines()


def test_under_journald_lines_carry_syslog_priorities_and_no_level_names(tmp_path):
    path = tmp_path / "stderr"
    path.touch()
    info = path.stat()
    lines = run_logging(path, f"{info.st_dev}:{info.st_ino}")
    assert lines[:5] == [
        "<7>sensorkit.test: detail",
        "<6>sensorkit.test: started",
        "<4>sensorkit.test: disk slow",
        "<3>sensorkit.test: server down",
        "<2>sensorkit.test: cannot go on",
    ]
    traceback = lines[5:]
    assert traceback[0] == "<3>sensorkit.test: driver bug"
    assert len(traceback) > 3 and all(line.startswith("<3>") for line in traceback)
    assert traceback[-1] == "<3>ZeroDivisionError: division by zero"


def test_stderr_redirected_away_from_the_journal_gets_plain_lines(tmp_path):
    """JOURNAL_STREAM inherited, but stderr is a file now (`sensorkit run 2>log`)."""
    other = tmp_path / "other"
    other.touch()
    info = other.stat()
    lines = run_logging(tmp_path / "stderr", f"{info.st_dev}:{info.st_ino}")
    assert lines[:4] == [
        "DEBUG sensorkit.test: detail",
        "INFO sensorkit.test: started",
        "WARNING sensorkit.test: disk slow",
        "ERROR sensorkit.test: server down",
    ]
    assert not any(line.startswith("<") for line in lines)
    assert run_logging(tmp_path / "stderr2", None)[1] == "INFO sensorkit.test: started"


# -- the STATUS line -------------------------------------------------------------------------


def test_status_line_shows_queue_depth_last_delivery_and_failing_sensors():
    now = 1_700_000_000
    agent_status = {
        "pid": 1,
        "outputs": {
            "influx": {
                "url": "http://h:8086",
                "user": "kit",
                "queued": 1532,
                "last_delivery": now - 7200,
                "retrying": True,
                "dropped": 0,
                "last_error": "401 for user 'kit'",
            },
            "console": {"file": "-", "sent": 14},
        },
        "sensors": {
            "dylos": {"state": "ok"},
            "dht22": {"state": "failing"},
            "bme280": {"state": "ok"},
        },
    }
    assert systemd.status_line(agent_status, now) == (
        "console: 14 sent; influx: 1532 queued, last delivery 2 h ago, RETRYING; "
        "sensors ok: bme280 dylos; FAILING: dht22"
    )
    fresh = {"outputs": {"influx": {"queued": 0, "last_delivery": None}}, "sensors": {}}
    assert systemd.status_line(fresh, now) == "influx: 0 queued, last delivery never"
