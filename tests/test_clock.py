"""Time without a clock: windows on the monotonic clock, dated only by a synchronised clock,
never a stamp used twice, whatever the wall clock does (a Pi without an RTC, NTP steps)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from conftest import write_config

from agent import clock as clock_module
from agent.buffer import read_quarantine
from agent.clock import Clock, Stamps, kernel_synced
from agent.config import load
from agent.console import ConsoleOutput
from agent.delivery import Delivery
from agent.outputs import open_outputs
from agent.runner import Agent
from drivers.reading import Reading


class SteppedClock(Clock):
    """The real monotonic clock; a wall clock the test steps, synchronised when it says."""

    def __init__(self, offset: float = 0.0, synced: bool = True) -> None:
        self.offset = offset
        self.is_synced = synced
        super().__init__(
            "synced", wall=lambda: time.time() + self.offset, probe=lambda: self.is_synced
        )


def kit(tmp_path: Path, influx_url: str = "http://127.0.0.1:9") -> Path:
    return write_config(
        tmp_path / "agent.ini",
        f"[kit]\nproject = C\nserial = k\ninterval = 1\nclock = synced\n"
        f"state_dir = {tmp_path / 'state'}\n"
        f"[influx]\nenabled = no\nurl = {influx_url}\n"
        f"[console]\nenabled = yes\nfile = {tmp_path / 'out.jsonl'}\n",
    )


def start(agent: Agent) -> threading.Thread:
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return thread


def feed(agent: Agent, stop: threading.Event) -> threading.Thread:
    """A reading every 0.1 s, as a sensor thread would give them."""

    def run() -> None:
        i = 0
        while not stop.is_set():
            agent.accept([Reading("x", float(i), time.time())])
            i += 1
            stop.wait(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def printed(tmp_path: Path) -> list[dict]:
    path = tmp_path / "out.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def data_times(tmp_path: Path) -> list[int]:
    return [t["data"]["time"] for t in printed(tmp_path) if "data" in t]


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def agent_with(tmp_path: Path, clock: Clock) -> Agent:
    settings = load(kit(tmp_path))
    agent = Agent(settings, [ConsoleOutput(str(tmp_path / "out.jsonl"))], clock=clock)
    from agent.aggregator import SensorFields
    from drivers.reading import Field

    agent.aggregator.register(SensorFields("test", (Field("x", "1", "test"),), {}))
    return agent


def test_windows_before_the_clock_syncs_are_held_then_dated_by_it_and_none_sent_before(tmp_path):
    wrong = -30 * 86400.0  # the Pi booted with last month's shutdown time
    clock = SteppedClock(offset=wrong, synced=False)
    agent = agent_with(tmp_path, clock)
    readings = threading.Event()
    runner, feeder = start(agent), feed(agent, readings)
    try:
        assert wait_for(lambda: len(agent._held) >= 3, 15), agent._held
        assert printed(tmp_path) == []  # no ident, no data: their time would be wrong
        assert agent.status()["clock"] == {
            "mode": "synced",
            "synced": False,
            "held": len(agent._held),
        }
        held_ends = [h.mono for h in agent._held[:3]]
        clock.offset, clock.is_synced = 0.0, True  # NTP has set the clock
        assert wait_for(lambda: len(data_times(tmp_path)) >= 5, 15)
    finally:
        readings.set()
        agent.stop.set()
        runner.join(10)
        feeder.join(5)
    telegrams = printed(tmp_path)
    assert "ident" in telegrams[0] and telegrams[0]["ident"]["time"] == telegrams[1]["data"]["time"]
    times = data_times(tmp_path)
    now_offset = time.time() - time.monotonic()
    for mono, stamp in zip(held_ends, times, strict=False):
        assert abs(stamp - (mono + now_offset)) <= 1.0  # dated by the right clock
    assert all(abs(t - time.time()) < 60 for t in times)  # none a month off
    assert times == sorted(times) and len(set(times)) == len(times)
    assert not (tmp_path / "state" / "undated.jsonl").exists()


@pytest.mark.parametrize("step", [-3600.0, 86400.0], ids=["back-1h", "ahead-1d"])
def test_a_step_of_the_wall_clock_loses_no_window_and_reuses_no_stamp(tmp_path, step):
    clock = SteppedClock()
    agent = agent_with(tmp_path, clock)
    readings = threading.Event()
    runner, feeder = start(agent), feed(agent, readings)
    try:
        assert wait_for(lambda: len(data_times(tmp_path)) >= 3, 15)
        before = len(data_times(tmp_path))
        stepped_at = time.monotonic()
        clock.offset += step
        assert wait_for(lambda: len(data_times(tmp_path)) >= before + 4, 15), "windows stalled"
        elapsed = time.monotonic() - stepped_at
        stopping = time.monotonic()
        agent.stop.set()
        runner.join(10)
        assert time.monotonic() - stopping < 8  # a stop does not wait for the old clock
    finally:
        readings.set()
        agent.stop.set()
        feeder.join(5)
    times = data_times(tmp_path)
    assert len(set(times)) == len(times), "a stamp was used twice"
    after = times[before:]
    assert all(abs(t - (time.time() + step)) < elapsed + 10 for t in after)  # the new time
    assert len(after) >= int(elapsed) - 1  # a window a second: none lost, none merged


def test_a_restart_with_the_clock_behind_reuses_no_stamp_of_the_run_before(tmp_path):
    first = agent_with(tmp_path, SteppedClock())
    readings = threading.Event()
    runner, feeder = start(first), feed(first, readings)
    assert wait_for(lambda: len(data_times(tmp_path)) >= 4, 15)
    first.stop.set()
    runner.join(10)
    readings.set()
    feeder.join(5)
    earlier = data_times(tmp_path)
    second = agent_with(tmp_path, SteppedClock(offset=-25.0))  # restarted 25 s behind
    readings = threading.Event()
    runner, feeder = start(second), feed(second, readings)
    try:
        assert wait_for(lambda: len(data_times(tmp_path)) >= len(earlier) + 3, 15)
    finally:
        second.stop.set()
        runner.join(10)
        readings.set()
        feeder.join(5)
    later = data_times(tmp_path)[len(earlier) :]
    assert not set(later) & set(earlier), "a stored point would have been overwritten"


def test_windows_held_over_a_reboot_can_never_be_dated_and_are_quarantined(tmp_path, monkeypatch):
    agent = agent_with(tmp_path, SteppedClock(synced=False))
    from agent.undated import Held

    agent.undated.add(Held("another-boot", 123.0, 1_600_000_000.0, (("x", 1.5),)))
    settings = load(
        write_config(
            tmp_path / "queued.ini",
            (tmp_path / "agent.ini").read_text().replace("[influx]\nenabled = no", "[influx]"),
        )
    )
    outputs = open_outputs(settings, "influx")
    rebooted = Agent(settings, outputs, clock=SteppedClock(synced=False))
    rebooted.stop.set()  # start, look at what was left, stop
    rebooted.run()
    assert any(isinstance(o, Delivery) for o in outputs)
    held = read_quarantine(tmp_path / "state", "influx")
    assert [p.line.split(" ")[-1] for p in held] == ["1600000000", "1600000000"]  # info, data
    assert all("cannot be known" in p.reason for p in held)
    assert not (tmp_path / "state" / "undated.jsonl").exists()
    assert printed(tmp_path) == []


def test_stamps_are_never_given_twice_and_never_at_or_below_the_floor():
    stamps = Stamps(floor=100)
    assert [stamps.take(t) for t in (90, 95, 101, 101, 150, 150)] == [101, 102, 103, 104, 150, 151]
    assert stamps.last == 151 and stamps.used(103) and not stamps.used(140)


def test_the_kernel_is_asked_whether_the_clock_is_synchronised():
    assert kernel_synced() in (True, False, None)  # adjtimex answered (or cannot be asked)


def test_auto_waits_for_sync_only_where_an_ntp_client_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(clock_module, "NTP_CLIENTS", (tmp_path / "timesync",))
    assert Clock("auto").mode == "trust"
    (tmp_path / "timesync").mkdir()
    assert Clock("auto").mode == "synced"
    assert Clock("trust").synced() is True
    assert Clock("synced", probe=lambda: False).synced() is False
