"""Progress for a person: a live line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import io
import logging

from agent.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_line_is_redrawn_with_count_rate_and_time_left():
    screen = Terminal()
    progress = Progress("delivering", 1000, stream=screen)
    progress.update(250)
    progress.update(1000)
    progress.finish()
    frames = screen.getvalue().split("\r")[1:]
    assert frames[0].startswith("delivering: 250/1,000  ") and "/s  " in frames[0]
    assert " left" in frames[0]
    assert frames[-1].startswith("delivering: 1,000/1,000  ") and frames[-1].endswith("\n")


def test_off_a_terminal_it_logs_plain_lines_not_more_often_than_asked(caplog):
    pipe = io.StringIO()
    progress = Progress("delivering", 200_000, stream=pipe, every=3600)
    with caplog.at_level(logging.INFO, logger="sensorkit.progress"):
        for done in range(0, 200_001, 10_000):
            progress.update(done)
        progress.remaining(0)  # already shown at 200,000: not repeated
    lines = [r.getMessage() for r in caplog.records]
    assert pipe.getvalue() == ""
    assert lines[0].startswith("delivering: 0/200,000")
    assert lines[-1].startswith("delivering: 200,000/200,000")
    assert len(lines) == 2


def test_the_first_line_shows_whatever_the_monotonic_clock_reads(monkeypatch, caplog):
    """time.monotonic() counts from boot: a Pi up for 5 s must see the first line too."""
    for uptime in (0.0, 5.0, 1e9):
        monkeypatch.setattr("agent.progress.time.monotonic", lambda u=uptime: u)
        caplog.clear()
        progress = Progress("delivering", 10, stream=io.StringIO(), every=3600)
        with caplog.at_level(logging.INFO, logger="sensorkit.progress"):
            progress.update(1)
            progress.update(2)  # within `every`: not shown
        assert [r.getMessage()[:16] for r in caplog.records] == ["delivering: 1/10"], uptime
