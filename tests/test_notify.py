"""The agent under systemd: READY once its outputs are open, STATUS with the queue, WATCHDOG
while its window loop and sender live, none once the loop hangs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import write_config

from agent.config import load
from agent.outputs import open_outputs
from agent.runner import Agent

ROOT = Path(__file__).resolve().parent.parent


class NotifySocket:
    """A datagram socket standing in for systemd's; records (monotonic time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, prefix: str) -> list[float]:
        return [t for t, m in self.messages if any(f.startswith(prefix) for f in m.split("\n"))]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def kit(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = N\nserial = k\ninterval = 1\nclock = trust\n"
        f"state_dir = {tmp_path / 'state'}\n"
        "[dht22]\nenabled = yes\nbackend = simulated\ninterval = 2\n"
        "[influx]\nurl = http://127.0.0.1:9\ntimeout = 1\n[console]\nenabled = no\n",
    )


def test_run_says_ready_then_status_with_the_queue_and_pings_the_watchdog(tmp_path):
    listener = NotifySocket(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent", "run", "-c", str(kit(tmp_path)), "--duration", "6"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        time.sleep(0.3)
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr
    messages = [m for _, m in listener.messages]
    assert messages[0].startswith("READY=1")
    statuses = [m for m in messages if m.startswith("STATUS=") or "\nSTATUS=" in m]
    assert any("influx" in s and "queued" in s for s in statuses), statuses
    pings = listener.times("WATCHDOG=1")
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert len(pings) >= 6, messages  # a quarter of the 2 s interval at most between pings
    assert max(gaps) < 1.5, gaps
    assert any(m.startswith("STOPPING=1") for m in messages)


def test_a_hung_window_loop_stops_the_watchdog_pings(tmp_path, monkeypatch):
    listener = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    settings = load(kit(tmp_path))
    agent = Agent(settings, open_outputs(settings, "influx"))
    hang, windows = threading.Event(), []
    close = agent.aggregator.close_window

    def close_window(end):
        windows.append(end)
        if len(windows) == 3:
            hang.wait()  # the window loop is stuck (a driver call that never returns...)
        return close(end)

    agent.aggregator.close_window = close_window
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while len(windows) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(windows) == 3
        hung_at = time.monotonic()
        time.sleep(4)
        assert listener.times("WATCHDOG=1"), "no ping before the hang"
        late = [t for t in listener.times("WATCHDOG=1") if t > hung_at + 0.1]
        assert late == [], "pinged while the window loop hung: systemd would never restart it"
    finally:
        hang.set()
        agent.stop.set()
        runner.join(15)
        listener.close()
