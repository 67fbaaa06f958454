"""DurableQueue on its own: order, crash safety (real SIGKILL), torn segments, cap, quarantine."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent import buffer, ramfiles, segments
from agent.buffer import (
    DurableQueue,
    QueueBusy,
    read_quarantine,
    read_stats,
    release_quarantined,
)
from agent.ramfiles import ram_path
from agent.stage import set_aside_stages
from agent.status import format_status

ROOT = Path(__file__).resolve().parent.parent


def line(i: int, pad: int = 0) -> str:
    return f"data,label=k pm_25={i}.5{'0' * pad} {1_700_000_000 + i}"


def lines_of(entries) -> list[str]:
    return [e.line for e in entries]


def drain(queue: DurableQueue) -> list[tuple[str, str]]:
    """Everything the queue holds, in delivery order, removing it as a sender would."""
    out = []
    while batch := queue.peek(1000, 1 << 30):
        out += [(e.db, e.line) for e in batch]
        queue.remove(batch)
    return out


def segment_files(directory: Path, name: str = "q") -> list[Path]:
    return sorted((directory / f"{name}.log").glob("*.seg"))


def on_disk(directory: Path, name: str = "q") -> list[str]:
    """The lines of every whole frame a restart would find, in order: in the segment files,
    then in the stage in RAM (what a kill -9 leaves there goes to the card at the restart)."""
    out = []
    stage = ram_path(directory, f"{name}.stage")
    staged = stage.read_bytes().partition(b"\n")[2] if stage and stage.exists() else b""
    for data in [p.read_bytes() for p in segment_files(directory, name)] + [staged]:
        for item in segments.walk(data):
            if isinstance(item, segments.Frame):
                out += data[item.body : item.stop].decode().splitlines()
    return out


def onto_the_card(directory: Path) -> None:
    """A restart, killed at once: it writes what a kill -9 left in the RAM stage to the
    segment files, so a test can damage or cut the card's bytes as a power cut would."""
    crash_after(directory, "pass")


def record_size(i: int) -> int:
    return len(segments.pack_frame(0, b"a", [line(i).encode()], 0, 0))


def integrity(directory: Path, name: str) -> str:
    db = sqlite3.connect(directory / f"{name}.sqlite3")
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def crash_after(directory: Path, script: str) -> None:
    """Run ``script`` with ``q`` an open queue in a child, then SIGKILL it at once."""
    code = textwrap.dedent(
        """
        import os, signal, sys
        sys.path.insert(0, {root!r})
        from agent.buffer import DurableQueue
        q = DurableQueue({directory!r}, "q", sync_interval=3600)
        def line(i, pad=0):
            return f"data,label=k pm_25={{i}}.5{{'0' * pad}} {{1_700_000_000 + i}}"
        """
    ).format(root=str(ROOT), directory=str(directory))
    code += textwrap.dedent(script) + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


# -- order -------------------------------------------------------------------------------------


def test_peek_returns_oldest_entries_of_one_database_and_remove_advances(tmp_path):
    q = DurableQueue(tmp_path, "q")
    q.append([("a", line(1)), ("a", line(2))])
    q.append([("b", line(3)), ("a", line(4))])
    first = q.peek(100, 1 << 20)
    assert [(e.db, e.line) for e in first] == [("a", line(1)), ("a", line(2))]
    assert [e.seq for e in first] == sorted(e.seq for e in first)
    assert q.peek(100, 1 << 20) == first  # peeking does not consume
    q.remove(first)
    assert [(e.db, e.line) for e in q.peek(100, 1 << 20)] == [("b", line(3))]
    q.remove(q.peek(100, 1 << 20))
    assert lines_of(q.peek(100, 1 << 20)) == [line(4)]
    q.remove(q.peek(100, 1 << 20))
    assert q.peek(100, 1 << 20) == [] and q.depth == 0
    q.close()


def test_peek_respects_line_and_byte_limits_but_returns_at_least_one(tmp_path):
    q = DurableQueue(tmp_path, "q")
    q.append([("a", line(i)) for i in range(10)])
    assert lines_of(q.peek(3, 1 << 20)) == [line(0), line(1), line(2)]
    one = q.peek(10, 1)  # smaller than any entry: still one, or a sender would stall
    assert lines_of(one) == [line(0)]
    two = q.peek(10, 2 * one[0].size)
    assert lines_of(two) == [line(0), line(1)]
    q.close()


def test_order_is_kept_across_sync_and_reopen(tmp_path):
    q = DurableQueue(tmp_path, "q")
    q.append([("a", line(i)) for i in range(5)])
    q.sync()  # 0..4 now in SQLite
    q.append([("a", line(i)) for i in range(5, 8)])  # 5..7 in the journal
    q.remove(q.peek(2, 1 << 20))  # 0, 1 delivered
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(2, 8)]
    q.append([("a", line(i)) for i in range(8, 12)])
    q.close()
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(8, 12)]
    q.close()


# -- crash safety ------------------------------------------------------------------------------


def test_append_survives_sigkill_the_moment_it_returns(tmp_path):
    crash_after(tmp_path, 'q.append([("db1", line(i)) for i in range(50)])')
    q = DurableQueue(tmp_path, "q")
    assert q.depth == 50
    assert drain(q) == [("db1", line(i)) for i in range(50)]
    q.close()
    assert integrity(tmp_path, "q") == "ok"


def test_sigkill_keeps_everything_undelivered_and_resends_only_since_the_last_sync(tmp_path):
    crash_after(
        tmp_path,
        """
        q.append([("a", line(i)) for i in range(10)])
        q.remove(q.peek(4, 1 << 20))          # 0..3 delivered
        q.sync()                              # ... and recorded as such
        q.append([("a", line(i)) for i in range(10, 20)])
        q.remove(q.peek(6, 1 << 20))          # 4..9 delivered, not yet recorded
        """,
    )
    q = DurableQueue(tmp_path, "q")
    got = [ln for _, ln in drain(q)]
    q.close()
    # Every undelivered point came back in order; of the delivered ones only those after the
    # last sync are sent again (the same point to InfluxDB: no duplicate is stored).
    assert got == [line(i) for i in range(4, 20)]
    assert integrity(tmp_path, "q") == "ok"


def test_quarantined_points_do_not_come_back_after_a_crash(tmp_path):
    crash_after(
        tmp_path,
        """
        q.append([("a", line(i)) for i in range(3)])
        bad = [e for e in q.peek(10, 1 << 20) if e.line == line(1)]
        q.quarantine(bad, "400: field type conflict")
        """,
    )
    q = DurableQueue(tmp_path, "q")
    got = [ln for _, ln in drain(q)]
    q.close()
    held = read_quarantine(tmp_path, "q")
    assert [p.line for p in held] == [line(1)]  # held once, not twice
    assert line(1) not in got, "a quarantined point was queued again after a crash"
    assert line(0) in got and line(2) in got


def test_replay_stops_at_a_torn_tail_and_keeps_what_came_before(tmp_path, caplog):
    crash_after(tmp_path, 'q.append([("a", line(i)) for i in range(3)])')
    onto_the_card(tmp_path)
    journal = segment_files(tmp_path)[-1]
    whole = journal.read_bytes()
    record = segments.pack_frame(99, b"a", [line(99).encode()], 1, 0)
    journal.write_bytes(whole + record[: len(record) // 2])  # a power cut mid-write
    with caplog.at_level(logging.WARNING, logger="sensorkit.buffer"):
        q = DurableQueue(tmp_path, "q")
    assert "torn record" in caplog.text
    q.append([("a", line(3))])
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(4)]
    q.close()


def test_record_with_a_bad_checksum_is_not_replayed(tmp_path):
    crash_after(tmp_path, 'q.append([("a", line(i)) for i in range(3)])')
    onto_the_card(tmp_path)
    journal = segment_files(tmp_path)[-1]
    blob = bytearray(journal.read_bytes())
    blob[-3] ^= 0xFF  # flip bits in the last record's text
    journal.write_bytes(bytes(blob))
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == [line(0), line(1)]
    q.close()


def test_a_failed_write_leaves_no_torn_record_and_has_no_effect(tmp_path, monkeypatch):
    q = DurableQueue(tmp_path, "q")
    q.append([("a", line(0))])
    real_write = os.write

    def short_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(buffer.os, "write", short_then_full)
    with pytest.raises(OSError):
        q.append([("a", line(1)), ("a", line(2))])
    monkeypatch.setattr(buffer.os, "write", real_write)
    assert q.depth == 1
    q.append([("a", line(3))])
    # What a crash now would replay: every record whole, the failed append absent.
    assert on_disk(tmp_path) == [line(0), line(3)]
    assert [ln for _, ln in drain(q)] == [line(0), line(3)]
    q.close()


def test_short_writes_are_completed(tmp_path, monkeypatch):
    q = DurableQueue(tmp_path, "q")
    real_write = os.write
    monkeypatch.setattr(buffer.os, "write", lambda fd, data: real_write(fd, data[:7]))
    q.append([("a", line(i)) for i in range(3)])
    monkeypatch.setattr(buffer.os, "write", real_write)
    assert on_disk(tmp_path) == [line(i) for i in range(3)]
    q.close()


# -- flushing ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_sync_flushes_undelivered_points_once_per_interval(tmp_path, monkeypatch):
    mono = Clock()
    monkeypatch.setattr(buffer.time, "monotonic", mono)
    q = DurableQueue(tmp_path, "q", sync_interval=10)
    q.append([("a", line(i)) for i in range(3)])
    assert on_disk(tmp_path) == [line(i) for i in range(3)]  # written, not yet flushed
    before = q.fsyncs
    mono.now += 9
    q.maybe_sync()
    assert q.fsyncs == before  # not yet due
    mono.now += 1
    q.maybe_sync()
    assert q.fsyncs == before + 1
    mono.now += 10
    q.maybe_sync()
    assert q.fsyncs == before + 1  # nothing new to flush
    assert q.depth == 3
    q.close()


def test_points_delivered_before_the_flush_never_reach_the_card(tmp_path):
    q = DurableQueue(tmp_path, "q")
    q.append([("a", line(i)) for i in range(3)])
    q.remove(q.peek(10, 1 << 20))
    q.sync()
    assert q.fsyncs == 0
    assert [p.stat().st_size for p in segment_files(tmp_path)] == [0]  # truncated, never flushed
    q.close()


def test_drained_segments_are_deleted_and_the_log_stays_bounded(tmp_path):
    q = DurableQueue(tmp_path, "q", max_bytes=1 << 30)
    big = "x" * 2000
    for i in range(400):  # ~8 MB while the server is away
        q.append([("a", f'data,label=k s="{big}" {1_700_000_000 + i * 10 + j}') for j in range(10)])
        q.sync()
    assert q.depth == 4000
    assert len(segment_files(tmp_path)) >= 8  # rotated at about a megabyte each
    assert len(drain(q)) == 4000
    q.sync()
    assert [p.stat().st_size for p in segment_files(tmp_path)] == [0]
    q.close()
    assert integrity(tmp_path, "q") == "ok"


# -- the cap -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sync_each", [False, True], ids=["pending", "stored"])
def test_cap_drops_the_oldest_counts_them_and_logs_once_per_episode(tmp_path, caplog, sync_each):
    size = record_size(0)
    q = DurableQueue(tmp_path, "q", max_bytes=20 * size)
    with caplog.at_level(logging.WARNING, logger="sensorkit.buffer"):
        for i in range(100):
            q.append([("a", line(i))])
            if sync_each:
                q.sync()
            assert q.stats().queued_bytes <= q.max_bytes
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1
    kept = [ln for _, ln in drain(q)]
    assert 10 <= len(kept) <= 20
    assert kept == [line(i) for i in range(100 - len(kept), 100)]  # the newest, in order
    stats = q.stats()
    assert stats.dropped == 100 - len(kept)
    assert stats.queued == 0
    # Drained below half the cap: the episode is over, and a new one is logged again.
    assert any("below half" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sensorkit.buffer"):
        for i in range(100, 150):
            q.append([("a", line(i))])
    assert len([r for r in caplog.records if "is full" in r.getMessage()]) == 1
    dropped = q.stats().dropped
    q.close()
    assert read_stats(tmp_path, "q").dropped == dropped  # persisted for an offline status


def test_points_dropped_by_the_cap_do_not_come_back_after_a_crash(tmp_path):
    size = record_size(0)
    crash_after(
        tmp_path,
        f"""
        q.max_bytes = {20 * size}
        for i in range(100):
            q.append([("a", line(i))])
        """,
    )
    q = DurableQueue(tmp_path, "q", max_bytes=20 * size)
    got = [ln for _, ln in drain(q)]
    q.close()
    assert len(got) <= 20
    assert got == [line(i) for i in range(100 - len(got), 100)]


# -- quarantine --------------------------------------------------------------------------------


def test_quarantine_is_listed_with_its_reason_and_can_be_released(tmp_path):
    q = DurableQueue(tmp_path, "q")
    q.append([("a", line(i)) for i in range(3)])
    q.sync()  # quarantine works on flushed entries ...
    q.append([("a", line(i)) for i in range(3, 6)])  # ... and on fresh ones
    stored = q.peek(3, 1 << 20)
    assert lines_of(stored) == [line(0), line(1), line(2)]
    q.quarantine(
        [e for e in stored if e.line == line(1)], "400: partial write: field type conflict"
    )
    q.remove([e for e in stored if e.line != line(1)])
    pending = q.peek(10, 1 << 20)
    assert lines_of(pending) == [line(3), line(4), line(5)]
    q.quarantine(
        [e for e in pending if e.line == line(4)], "400: partial write: field type conflict"
    )
    assert q.depth == 2
    assert q.stats().quarantined == 2
    held = read_quarantine(tmp_path, "q")  # read-only, while the queue is open
    assert [(p.db, p.line) for p in held] == [("a", line(1)), ("a", line(4))]
    assert all(p.reason == "400: partial write: field type conflict" for p in held)
    assert all(p.quarantined >= p.queued for p in held)
    assert [ln for _, ln in drain(q)] == [line(3), line(5)]
    release_quarantined(tmp_path, "q", [held[0].id])
    assert [p.line for p in read_quarantine(tmp_path, "q")] == [line(4)]
    assert q.stats().quarantined == 1
    q.close()
    assert read_stats(tmp_path, "q").quarantined == 1


# -- locking, status, integrity ----------------------------------------------------------------


def test_a_second_open_of_the_same_queue_is_refused(tmp_path):
    q = DurableQueue(tmp_path, "q")
    with pytest.raises(QueueBusy, match="in use by another sensorkit process"):
        DurableQueue(tmp_path, "q")
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from agent.buffer import DurableQueue, QueueBusy\n"
        f"try:\n    DurableQueue({str(tmp_path)!r}, 'q')\nexcept QueueBusy:\n    sys.exit(7)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 7
    other = DurableQueue(tmp_path, "other")  # another output's queue is another lock
    other.close()
    q.close()
    DurableQueue(tmp_path, "q").close()  # free again once closed


def test_stats_and_read_stats_agree_and_stats_work_after_close(tmp_path):
    clock = Clock()
    q = DurableQueue(tmp_path, "q", clock=clock)
    q.append([("a", line(i)) for i in range(4)])
    clock.now += 5
    q.append([("a", line(4))])
    q.remove(q.peek(1, 1 << 20))
    live = q.stats()
    assert live.queued == 4
    assert live.oldest_queued == 1_000.0
    assert live.delivered == 1 and live.last_delivery == 1_005.0
    assert live.queued_bytes == sum(e.size for e in q.peek(10, 1 << 20))
    q.close()
    offline = read_stats(tmp_path, "q")
    for key in ("queued", "queued_bytes", "oldest_queued", "delivered", "last_delivery"):
        assert getattr(offline, key) == getattr(live, key), key
    assert q.stats().queued == 4  # the agent writes a last status after closing outputs


def test_integrity_check_passes_after_mixed_work(tmp_path):
    q = DurableQueue(tmp_path, "q", max_bytes=50_000)
    for i in range(500):
        q.append([("a", line(i, pad=i % 50))])
        if i % 37 == 0:
            q.sync()
        if i % 11 == 0:
            batch = q.peek(7, 1 << 20)
            q.quarantine(batch[:1], "400: bad")
            q.remove(batch[1:])
    q.close()
    assert integrity(tmp_path, "q") == "ok"
    stats = read_stats(tmp_path, "q")
    assert json.dumps(dataclasses.asdict(stats))  # plain JSON for `status --json`


def test_peek_after_the_log_was_emptied_and_refilled_reads_the_new_points(tmp_path):
    q = DurableQueue(tmp_path, "q")
    q.append([("a", line(i, pad=40)) for i in range(5)])
    q.remove(q.peek(5, 1 << 20))
    q.sync()  # all delivered: the segment is emptied
    q.append([("a", line(i)) for i in range(5, 7)])
    assert lines_of(q.peek(10, 1 << 20)) == [line(5), line(6)]
    q.close()


def test_quarantine_is_capped_at_a_tenth_of_the_queue_and_drops_are_counted(tmp_path, caplog):
    q = DurableQueue(tmp_path, "q", max_bytes=100 * record_size(0))
    q.append([("a", line(i)) for i in range(60)])
    with caplog.at_level(logging.WARNING, logger="sensorkit.buffer"):
        for entry in q.peek(60, 1 << 20):
            q.quarantine([entry], "400: field type conflict")
    held = read_quarantine(tmp_path, "q")
    assert sum(len(p.line) for p in held) <= q.max_bytes // 10
    assert [p.line for p in held] == [line(i) for i in range(60 - len(held), 60)]  # the newest
    assert q.stats().dropped == 60 - len(held) > 0
    assert "quarantine is full" in caplog.text
    q.close()


# -- damage on disk ----------------------------------------------------------------------------


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= mask
    path.write_bytes(bytes(blob))


def fill_sealed_segments(tmp_path: Path, n: int = 3000) -> list[str]:
    """``n`` points, one append each, in several sealed segments; returns their lines."""
    q = DurableQueue(tmp_path, "q", max_bytes=1 << 20)  # segments of 128 KiB
    lines = [line(i, pad=60) for i in range(n)]
    for ln in lines:
        q.append([("a", ln)])
    q.close()
    assert len(segment_files(tmp_path)) >= 3
    return lines


@pytest.mark.parametrize("where", ["line", "frame line"])
def test_one_flipped_bit_mid_segment_costs_only_its_point_counted_and_set_aside(tmp_path, where):
    lines = fill_sealed_segments(tmp_path)
    middle = segment_files(tmp_path)[1]
    data = middle.read_bytes()
    frames = [f for f in segments.walk(data) if isinstance(f, segments.Frame)]
    victim = frames[len(frames) // 2]
    offset = victim.body + 5 if where == "line" else victim.offset + 6  # a digit of its seq
    flip(middle, offset)
    q = DurableQueue(tmp_path, "q")
    got = [ln for _, ln in drain(q)]
    stats = q.stats()
    q.close()
    lost = lines[victim.seq]
    assert got == [ln for ln in lines if ln != lost]  # every other point, in order
    assert stats.dropped == 1 and stats.dropped_by == {"damaged": 1}
    assert read_stats(tmp_path, "q").dropped_by == {"damaged": 1}  # survives the process
    aside = list((tmp_path / "q.corrupt").iterdir())
    assert len(aside) == 1 and aside[0].read_bytes()  # the damaged bytes, kept
    # Found again after another restart: not counted twice.
    q = DurableQueue(tmp_path, "q")
    assert q.stats().dropped == 1
    q.close()


def test_a_garbled_length_of_bytes_resynchronises_on_the_next_frame(tmp_path):
    lines = fill_sealed_segments(tmp_path)
    middle = segment_files(tmp_path)[1]
    data = bytearray(middle.read_bytes())
    frames = [f for f in segments.walk(bytes(data)) if isinstance(f, segments.Frame)]
    first, last = frames[10], frames[14]
    data[first.offset + 3 : last.stop - 2] = b"\x00" * (last.stop - 2 - first.offset - 3)
    middle.write_bytes(bytes(data))  # five frames turned to zeros: a bad block
    q = DurableQueue(tmp_path, "q")
    got = [ln for _, ln in drain(q)]
    assert q.stats().dropped_by == {"damaged": 5}
    q.close()
    assert got == lines[: first.seq] + lines[last.seq + 1 :]


def test_damage_in_the_last_segment_is_found_at_start_and_the_rest_kept(tmp_path):
    crash_after(tmp_path, 'for i in range(20):\n    q.append([("a", line(i))])')
    onto_the_card(tmp_path)
    journal = segment_files(tmp_path)[-1]
    data = journal.read_bytes()
    frames = [f for f in segments.walk(data) if isinstance(f, segments.Frame)]
    flip(journal, frames[7].body + 2, 0x20)
    q = DurableQueue(tmp_path, "q")
    assert q.depth == 19 and q.stats().dropped_by == {"damaged": 1}
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(20) if i != 7]
    q.close()


def test_start_up_reads_two_lines_of_each_sealed_segment_not_the_backlog(tmp_path, monkeypatch):
    fill_sealed_segments(tmp_path)
    sealed = segment_files(tmp_path)[:-1]
    read = []
    real = segments.walk

    def walk(data, offset=0):
        read.append(len(data))
        return real(data, offset)

    monkeypatch.setattr(segments, "walk", walk)
    q = DurableQueue(tmp_path, "q")
    q.close()
    biggest = max(p.stat().st_size for p in sealed)
    assert sum(read) < biggest * 2.5  # the last segment and the head's, not every one


def test_a_drain_cut_by_kill_9_resends_at_most_the_segment_it_was_in(tmp_path):
    fill_sealed_segments(tmp_path, n=3000)
    crash_after(
        tmp_path,
        """
        import time
        delivered = 0
        while delivered < 2000:
            batch = q.peek(100, 1 << 20)
            q.remove(batch)
            delivered += len(batch)
        time.sleep(1.1)  # the head is written at most once a second while draining
        q.remove(q.peek(1, 1 << 20))
        """.replace("\n        ", "\n"),
    )
    q = DurableQueue(tmp_path, "q")
    left = q.depth
    q.close()
    assert 1000 - 1 <= left <= 1000 + 50, left  # not the whole backlog again


def test_a_segment_of_the_old_format_is_converted_and_delivered(tmp_path):
    import struct
    import zlib

    folder = tmp_path / "q.log"
    folder.mkdir()
    records = b""
    for i in range(5):  # sensorkit 0.1: crc32, seq, queued, len(db), len(line), db, line
        body = struct.pack(">QdHI", i, 1000.0 + i, 1, len(line(i))) + b"a" + line(i).encode()
        records += struct.pack(">I", zlib.crc32(body)) + body
    (folder / f"{1:016d}.seg").write_bytes(records + records[:10])  # and a torn record
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(5)]
    q.close()


# -- the calls that make points durable --------------------------------------------------------


def test_sync_fdatasyncs_the_segment_it_appended_to_and_new_segments_fsync_their_folder(
    tmp_path, monkeypatch
):
    calls: list[tuple[str, str]] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fdatasync(fd):
        calls.append(("fdatasync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fdatasync(fd)

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(buffer.os, "fdatasync", fdatasync)
    monkeypatch.setattr(buffer.os, "fsync", fsync)
    q = DurableQueue(tmp_path, "q", sync_interval=3600)
    assert ("fsync", str(tmp_path / "q.log")) in calls  # the new segment's name is durable
    calls.clear()
    q.sync()
    assert calls == []  # nothing appended: nothing to flush
    q.append([("a", line(0))])
    q.sync()
    assert calls == [("fdatasync", str(segment_files(tmp_path)[-1]))]
    q.close()


def test_batches_that_end_exactly_at_a_segments_end_go_on_in_the_next_segment(tmp_path):
    q = DurableQueue(tmp_path, "q", max_bytes=1 << 20)  # 128 KiB segments
    lines = [line(i, pad=60) for i in range(4000)]
    for i in range(0, len(lines), 100):
        q.append([("a", ln) for ln in lines[i : i + 100]])
    per_segment = [s.next - s.first for s in q._segments[:-1]]
    assert len(per_segment) >= 2
    size = per_segment[0]  # a batch exactly one segment long
    got, after = [], None
    while batch := q.peek(size, 1 << 30, after=after):
        got += [e.line for e in batch]
        after = batch
        q.remove(batch)
    assert got == lines and q.depth == 0
    q.close()


# -- found by the model (tests/test_queue_model.py) --------------------------------------------


def sealed_then_active(tmp_path: Path, n: int = 200) -> list[str]:
    """``n`` points of 40-line appends in a 12 KiB queue: sealed segments and an active one."""
    q = DurableQueue(tmp_path, "q", max_bytes=1 << 20)
    lines = [line(i, pad=40) for i in range(n)]
    for i in range(0, n, 40):
        q.append([("a", ln) for ln in lines[i : i + 40]])
    q.close()
    return lines


def small_segments(tmp_path: Path) -> list[str]:
    """120 points in appends of 20 to a 12 KiB queue: 4 KiB segments, several sealed."""
    q = DurableQueue(tmp_path, "q", max_bytes=12 * 1024)
    lines = [line(i, pad=40) for i in range(120)]
    for i in range(0, 120, 20):
        q.append([("a", ln) for ln in lines[i : i + 20]])
    q.close()
    assert len(segment_files(tmp_path)) >= 2
    return lines


def test_a_damaged_point_at_the_head_found_while_reading_is_not_sent(tmp_path):
    # Reading frame by frame, the damaged point was set aside and counted, and then sent
    # anyway (garbled: a wrong value stored in InfluxDB) because the read went on from
    # where the head had been before the damage settled it.
    lines = small_segments(tmp_path)
    data = segment_files(tmp_path)[0].read_bytes()
    first = next(f for f in segments.walk(data) if isinstance(f, segments.Frame))
    flip(segment_files(tmp_path)[0], first.body + 20, 0x1C)  # in point 0, a sealed segment
    q = DurableQueue(tmp_path, "q", max_bytes=12 * 1024)
    got = [ln for _, ln in drain(q)]
    assert got == lines[1:]
    assert q.stats().dropped_by == {"damaged": 1}
    q.close()


def test_a_crc_field_that_is_no_hex_number_costs_its_point_not_the_start_up(tmp_path):
    # int(crc, 16) raised ValueError out of segments.check: the agent could not start.
    lines = sealed_then_active(tmp_path, 80)
    path = segment_files(tmp_path)[-1]
    data = path.read_bytes()
    crcs = data.index(b" ", data.index(b" ", data.index(b" ", 3) + 1) + 1) + 1  # 4th field
    blob = bytearray(data)
    blob[crcs + 9 + 2] = ord("g")  # point 1's CRC
    path.write_bytes(bytes(blob))
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == lines[:1] + lines[2:]
    assert q.stats().dropped_by == {"damaged": 1}
    q.close()


def test_a_segment_whose_first_byte_is_damaged_is_not_taken_for_the_old_format(tmp_path):
    # Any first byte but "#" made it a 0.1 segment: "converted" to nothing and rewritten,
    # every point in it lost without a count.
    lines = sealed_then_active(tmp_path, 80)
    path = segment_files(tmp_path)[0]
    frame = next(f for f in segments.walk(path.read_bytes()) if isinstance(f, segments.Frame))
    flip(path, 0, 0x40)
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == lines[frame.count :]
    assert q.stats().dropped_by == {"damaged": frame.count}  # the first frame, counted
    q.close()


def test_a_damaged_head_file_resends_rather_than_skips(tmp_path):
    # The head file had no check: a flipped digit moved the head forward over undelivered
    # points (lost, uncounted) or back over delivered ones.
    lines = sealed_then_active(tmp_path, 80)
    q = DurableQueue(tmp_path, "q")
    q.remove(q.peek(10, 1 << 20))
    q.close()
    head = tmp_path / "q.head"
    assert head.read_text().split()[0] == "10"
    head.write_text(head.read_text().replace("10", "70", 1))
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == lines[10:]  # from the copy kept with the counters
    assert q.stats().dropped == 0
    q.close()
    head.write_text("garbage")
    (tmp_path / "q.stats").unlink()  # no copy either: all of the segment again
    sealed_then_active(tmp_path / "b", 80)
    q = DurableQueue(tmp_path / "b", "q")
    q.remove(q.peek(10, 1 << 20))
    q.close()
    (tmp_path / "b" / "q.head").write_text("7x")
    (tmp_path / "b" / "q.stats").unlink()
    q = DurableQueue(tmp_path / "b", "q")
    assert [ln for _, ln in drain(q)] == lines
    q.close()


def test_damage_below_the_head_costs_nothing_and_is_not_counted(tmp_path):
    lines = sealed_then_active(tmp_path, 80)
    q = DurableQueue(tmp_path, "q")
    while q.depth > 20:
        q.remove(q.peek(q.depth - 20, 1 << 20))
    q.close()
    path = segment_files(tmp_path)[0]
    frame = next(f for f in segments.walk(path.read_bytes()) if isinstance(f, segments.Frame))
    flip(path, frame.body + 20)  # point 0: delivered already
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == lines[60:]
    assert q.stats().dropped == 0
    q.close()


def test_a_damaged_trailer_costs_no_point(tmp_path):
    # The damaged trailer was counted as a lost point, and the next segment's first point
    # (intact) was skipped as that loss.
    lines = small_segments(tmp_path)
    sealed = segment_files(tmp_path)[0]
    data = sealed.read_bytes()
    flip(sealed, data.rindex(b"\n#z ") + 6)
    q = DurableQueue(tmp_path, "q", max_bytes=12 * 1024)
    assert [ln for _, ln in drain(q)] == lines
    assert q.stats().dropped == 0
    q.close()


def test_points_the_full_quarantine_dropped_or_released_do_not_come_back_after_a_restart(
    tmp_path,
):
    # They were deleted from the quarantine, which was what kept them settled: on the next
    # start they were queued again (sent again, refused again), and counted as dropped too.
    q = DurableQueue(tmp_path, "q", max_bytes=100 * record_size(0))
    q.append([("a", line(i)) for i in range(60)])
    for entry in q.peek(50, 1 << 20)[1:]:  # point 0 still in flight: the head stays
        q.quarantine([entry], "400: field type conflict")
    dropped = q.stats().dropped_by["quarantine_full"]
    held = read_quarantine(tmp_path, "q")
    assert dropped > 0 and len(held) == 49 - dropped
    q.close()
    release_quarantined(tmp_path, "q", [held[0].id])  # resent by hand
    assert read_stats(tmp_path, "q").queued == 11
    q = DurableQueue(tmp_path, "q", max_bytes=100 * record_size(0))
    assert q.depth == 11
    assert [ln for _, ln in drain(q)] == [line(0)] + [line(i) for i in range(50, 60)]
    q.close()
    assert read_stats(tmp_path, "q").queued == 0


def test_damage_in_the_frame_at_the_head_of_a_sealed_segment_is_read_and_counted(tmp_path):
    # Start-up put the head past a damaged frame: its points were lost uncounted and the
    # depth stayed too high.
    lines = small_segments(tmp_path)
    path = segment_files(tmp_path)[0]
    frames = [f for f in segments.walk(path.read_bytes()) if isinstance(f, segments.Frame)]
    flip(path, frames[0].offset + 8)  # the first frame line's queued time
    q = DurableQueue(tmp_path, "q", max_bytes=12 * 1024)
    got = [ln for _, ln in drain(q)]
    assert got == lines[frames[0].count :]
    assert q.stats().dropped_by == {"damaged": frames[0].count} and q.depth == 0
    q.close()


def test_damage_to_the_oldest_frame_after_quarantined_points_left_is_counted(tmp_path):
    # The head on disk was older than points settled through the quarantine since (their
    # segments deleted): start-up measured the damaged frame's points from that old head,
    # took them for the quarantined ones and counted nothing: 40 points lost uncounted.
    q = DurableQueue(tmp_path, "q", max_bytes=12 * 1024, sync_interval=3600)
    lines = [f'm,k=1 v={i}i,s="{"x" * 40}" {1_700_000_000 + i}' for i in range(280)]
    for start in range(0, 280, 40):
        q.append([("a", ln) for ln in lines[start : start + 40]])
    dropped_to_cap = q.stats().dropped_by["cap"]
    q.quarantine(q.peek(80, 1 << 20), "400: bad")
    left = q.depth
    assert left > 0
    q.close()
    oldest = segment_files(tmp_path)[0]
    damaged = bytearray(oldest.read_bytes())
    damaged[0] ^= 1  # the first frame's header
    oldest.write_bytes(bytes(damaged))
    (tmp_path / "q.head").write_text(f"{dropped_to_cap}\n")  # as a crash leaves it: stale
    q = DurableQueue(tmp_path, "q", max_bytes=12 * 1024)
    assert q.stats().dropped_by.get("damaged", 0) == left
    assert drain(q) == []
    q.close()


# -- the stage in RAM (agent/stage.py) ---------------------------------------------------------


def stage_file(directory: Path, name: str = "q") -> Path:
    path = ram_path(directory, f"{name}.stage")
    assert path is not None, "no RAM-backed directory"
    return path


def test_between_flushes_the_card_is_not_written_and_a_flush_puts_every_undelivered_point_there(
    tmp_path,
):
    q = DurableQueue(tmp_path, "q", sync_interval=3600)
    q.append([("a", line(0))])
    q.sync()
    [segment] = segment_files(tmp_path)
    flushed = segment.read_bytes()
    for i in range(1, 30):
        q.append([("a", line(i))])
    q.remove(q.peek(1, 1 << 20))
    assert segment.read_bytes() == flushed  # nothing touched the card's pages
    assert stage_file(tmp_path).stat().st_size > 0
    q.sync()
    assert stage_file(tmp_path).stat().st_size == 0
    assert on_disk(tmp_path)[-29:] == [line(i) for i in range(1, 30)]
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(1, 30)]
    q.close()
    assert not stage_file(tmp_path).exists()  # a clean stop leaves nothing in RAM


def test_a_power_cut_costs_only_what_was_staged_since_the_last_flush(tmp_path):
    crash_after(
        tmp_path,
        'q.append([("a", line(i)) for i in range(5)])\nq.sync()\n'
        'q.append([("a", line(i)) for i in range(5, 8)])',
    )
    stage_file(tmp_path).unlink()  # the power goes: RAM is empty at the next boot
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(5)]
    q.close()


def test_a_flush_cut_off_by_a_crash_is_redone_from_the_stage_without_doubles(tmp_path):
    crash_after(
        tmp_path,
        'q.append([("a", line(i)) for i in range(3)])\nq.sync()\n'
        'q.append([("a", line(i)) for i in range(3, 9)])',
    )
    [segment] = segment_files(tmp_path)
    staged = stage_file(tmp_path).read_bytes().partition(b"\n")[2]
    with segment.open("ab") as card:  # the copy had begun when the crash came
        card.write(staged[: len(staged) // 2])
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(9)]
    assert q.stats().dropped == 0
    q.close()


def test_when_ram_refuses_the_frames_go_to_the_card_in_order(tmp_path, monkeypatch):
    q = DurableQueue(tmp_path, "q", sync_interval=3600)
    q.append([("a", line(0))])
    real_write = os.write
    stage_fd = q._stage._fd

    def ram_full(fd, data):
        if fd == stage_fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(buffer.os, "write", ram_full)
    q.append([("a", line(1))])
    monkeypatch.setattr(buffer.os, "write", real_write)
    assert [p.read_bytes().count(b"\n") > 0 for p in segment_files(tmp_path)] == [True]
    q.append([("a", line(2))])  # RAM takes frames again
    assert on_disk(tmp_path) == [line(i) for i in range(3)]
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(3)]
    q.close()


def test_an_offline_status_after_kill_9_counts_the_points_still_in_ram(tmp_path):
    crash_after(tmp_path, 'q.append([("a", line(i)) for i in range(3)])\nq.sync()\n'
                'q.append([("a", line(i)) for i in range(3, 7)])')  # fmt: skip
    offline = read_stats(tmp_path, "q")
    assert offline.queued == 7
    q = DurableQueue(tmp_path, "q")
    assert offline.queued_bytes == q.stats().queued_bytes
    q.close()


def stage_that_no_longer_fits(directory: Path, fresh: range) -> None:
    """Points 0-2 on the card and 3-5 staged by a crash; then a start that did not see the
    stage (it looked in another RAM directory) queues ``fresh``: the stage no longer fits."""
    crash_after(directory, 'q.append([("a", line(i)) for i in range(3)])\nq.sync()\n'
                'q.append([("a", line(i)) for i in range(3, 6)])')  # fmt: skip
    hidden = stage_file(directory).with_name("hidden.stage")
    stage_file(directory).rename(hidden)
    q = DurableQueue(directory, "q")
    q.append([("a", line(i)) for i in fresh])
    q.close()
    hidden.rename(stage_file(directory))


def test_a_stage_an_earlier_start_did_not_see_is_queued_again_and_overwrites_nothing(tmp_path):
    stage_that_no_longer_fits(tmp_path, range(100, 103))
    q = DurableQueue(tmp_path, "q")
    got = [ln for _, ln in drain(q)]
    assert sorted(got) == sorted(line(i) for i in [*range(6), *range(100, 103)])
    assert q.stats().dropped == 0
    q.close()


def test_a_stage_left_in_another_ram_directory_is_queued_again_and_removed(tmp_path, monkeypatch):
    before, now = tmp_path / "shm", tmp_path / "run"
    before.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(before))  # the crashed run wrote to the first
    crash_after(state, 'q.append([("a", line(i)) for i in range(3)])\nq.sync()\n'
                'q.append([("a", line(i)) for i in range(3, 6)])')  # fmt: skip
    [left] = before.iterdir()
    now.mkdir()  # this start prefers a directory that was not there then
    monkeypatch.setattr(ramfiles, "ram_dirs", lambda: [now, before])
    q = DurableQueue(state, "q")
    assert stage_file(state).parent == now
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(6)]
    assert not left.exists()
    q.close()


def test_a_stage_set_aside_while_an_earlier_one_waits_overwrites_it_not_and_both_are_queued(
    tmp_path,
):
    stage_that_no_longer_fits(tmp_path, range(200, 202))
    other = tmp_path / "other"
    other.mkdir()
    crash_after(other, 'q.append([("a", line(i)) for i in range(100, 103)])')
    waiting = stage_file(tmp_path).with_name(stage_file(tmp_path).name + ".old")
    waiting.write_bytes(stage_file(other).read_bytes())  # set aside, not queued yet (card full)
    stats = read_stats(tmp_path, "q")
    assert stats is not None and (stats.queued, stats.in_ram) == (11, 6)  # all that drains
    q = DurableQueue(tmp_path, "q")
    got = [ln for _, ln in drain(q)]
    assert sorted(got) == sorted(line(i) for i in [*range(6), *range(100, 103), 200, 201])
    assert set_aside_stages(stage_file(tmp_path)) == []
    q.close()


def test_a_card_that_refuses_what_ram_kept_does_not_stop_the_queue_opening(tmp_path, monkeypatch):
    crash_after(tmp_path, 'q.append([("a", line(i)) for i in range(3)])\nq.sync()\n'
                'q.append([("a", line(i)) for i in range(3, 6)])')  # fmt: skip

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(buffer.os, "pwrite", full)
    q = DurableQueue(tmp_path, "q")  # opens: the points kept in RAM are queued again
    monkeypatch.undo()
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(6)]
    q.close()


def card_full(card: int):
    """``os.write`` that refuses the segment ``card`` as a full SD card would."""
    real_write = os.write

    def write(fd, data):
        if fd == card:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    return write


def test_points_the_card_refused_to_take_from_ram_are_counted_as_only_in_ram(tmp_path, monkeypatch):
    q = DurableQueue(tmp_path, "q", sync_interval=3600)
    q.append([("a", line(i)) for i in range(2)])
    q.sync()
    q.append([("a", line(i)) for i in range(2, 5)])
    assert q.stats().in_ram == 0  # staged, but nothing has refused them yet
    monkeypatch.setattr(buffer.os, "write", card_full(q._fd))
    with pytest.raises(OSError, match="No space left"):
        q.sync()
    assert (q.stats().queued, q.stats().in_ram) == (5, 3)
    monkeypatch.undo()
    q.sync()  # room again
    assert q.stats().in_ram == 0
    q.close()


def test_with_a_flush_every_append_a_full_card_keeps_the_points_in_ram_once_not_refused(
    tmp_path, monkeypatch
):
    q = DurableQueue(tmp_path, "q", sync_interval=0)
    q.append([("a", line(0))])
    monkeypatch.setattr(buffer.os, "write", card_full(q._fd))
    q.append([("a", line(1))])  # queued in RAM: not an error to the caller
    with pytest.raises(OSError, match="not queued"):  # the next tries the card, which is full
        q.append([("a", line(2))])
    assert (q.stats().queued, q.stats().in_ram) == (2, 1)
    q.close()  # the last flush fails too: the stage stays in RAM
    monkeypatch.undo()
    for _ in range(2):  # restarts queue nothing twice
        q = DurableQueue(tmp_path, "q", sync_interval=0)
        assert q.stats().queued == 2
        q.close()
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(2)]
    q.close()


def test_points_delivered_from_ram_are_not_counted_as_only_in_ram(tmp_path, monkeypatch):
    q = DurableQueue(tmp_path, "q", sync_interval=3600)
    q.append([("a", line(0))])
    q.sync()
    q.append([("b", line(i)) for i in range(1, 4)])
    q.append([("a", line(4))])
    monkeypatch.setattr(buffer.os, "write", card_full(q._fd))
    with pytest.raises(OSError, match="No space left"):
        q.sync()
    assert (q.stats().queued, q.stats().in_ram) == (5, 4)
    q.remove(q.peek(10, 1 << 20, exclude=frozenset({"a"})))  # b's points, from RAM
    assert (q.stats().queued, q.stats().in_ram) == (2, 1)
    monkeypatch.undo()
    q.close()


def test_points_set_aside_that_cannot_be_queued_again_are_counted_as_queued_in_ram(
    tmp_path, monkeypatch
):
    other = tmp_path / "other"
    other.mkdir()
    crash_after(other, 'q.append([("a", line(i)) for i in range(100, 103)])')
    DurableQueue(tmp_path, "q").close()
    waiting = stage_file(tmp_path).with_name(stage_file(tmp_path).name + ".old")
    waiting.write_bytes(stage_file(other).read_bytes())

    def full(self, items):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DurableQueue, "append", full)
    q = DurableQueue(tmp_path, "q")
    assert (q.stats().queued, q.stats().in_ram) == (3, 3)
    q.close()
    assert waiting.exists()  # kept for the next start
    monkeypatch.undo()
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(100, 103)]
    q.close()


def test_a_ram_directory_named_twice_does_not_take_the_live_stage_for_a_leftover(
    tmp_path, monkeypatch
):
    real = tmp_path / "run"
    real.mkdir()
    (tmp_path / "var-run").symlink_to(real)
    monkeypatch.setattr(ramfiles, "ram_dirs", lambda: [tmp_path / "var-run", real])
    state = tmp_path / "state"
    state.mkdir()
    q = DurableQueue(state, "q", sync_interval=3600)
    q.append([("a", line(0))])
    assert stage_file(state).exists() and stage_file(state).stat().st_size > 0
    q.close()


def test_an_offline_status_counts_what_a_crash_left_staged_as_only_in_ram(tmp_path):
    crash_after(tmp_path, 'q.append([("a", line(i)) for i in range(4)])\nq.sync()\n'
                'q.append([("a", line(i)) for i in range(4, 7)])')  # fmt: skip
    stats = read_stats(tmp_path, "q")
    assert stats is not None and (stats.queued, stats.in_ram) == (7, 3)
    text = format_status({"outputs": {"influx": {"kind": "queued", **dataclasses.asdict(stats)}}})
    assert "in RAM only     3 of the queued points" in text


def test_a_failed_flush_still_records_the_head_so_a_restart_resends_nothing_delivered(
    tmp_path, monkeypatch
):
    q = DurableQueue(tmp_path, "q", sync_interval=3600)
    q.append([("a", line(i)) for i in range(6)])
    q.sync()
    q.remove(q.peek(3, 1 << 20))
    q.append([("a", line(6))])
    monkeypatch.setattr(buffer.os, "write", card_full(q._fd))
    with pytest.raises(OSError, match="No space left"):
        q.sync()
    q.close()  # the flush fails again; line 6 stays in RAM
    monkeypatch.undo()
    q = DurableQueue(tmp_path, "q")
    assert [ln for _, ln in drain(q)] == [line(i) for i in range(3, 7)]
    q.close()
