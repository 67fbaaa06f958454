"""The durable queue an output owns: nothing accepted is lost to a crash, an outage or a reboot.

A log of segment files, ``<state_dir>/<name>.log/<number>.seg``, in the format of
:mod:`agent.segments`: line protocol in frames that check themselves point by point.

- :meth:`DurableQueue.append` is one ``write()`` of whole frames before it returns, so a point
  survives ``kill -9`` at once. The frames go to a stage in RAM (:mod:`agent.stage`); every
  ``sync_interval`` seconds what is staged and still undelivered is copied to the segment on
  the card and fdatasynced: a power cut costs at most that many seconds of undelivered points,
  and the card sees one small flush per interval. The moment everything is delivered the
  stage (and the segment) is cut to nothing, so points delivered online never reach the card.
- A backlog is read back in batches that are byte ranges of the segments, checked with one
  CRC call each (the frames' CRC chain) and sent as they are (InfluxDB skips the ``#`` lines):
  a drain costs little per point. Settled points are kept as ranges; delivered segments are
  deleted at once, and ``<name>.head`` records the first unsettled point (at most once a
  second while a backlog drains), so a restart re-sends little.
- A damaged byte costs the point it falls in: the batch is read again frame by frame, the
  damaged bytes are set aside and the points lost counted (see :mod:`agent.recovery`).
- Start-up and ``status`` read two lines of each sealed segment, whatever the backlog.
- Drops and deliveries are counted in ``<name>.stats`` (:mod:`agent.counters`), refused points
  kept in ``<name>.sqlite3`` (:mod:`agent.quarantine`).

Points leave oldest first; a point re-sent after a crash is the same point to InfluxDB, so
at-least-once delivery stores no duplicates.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from agent import quarantine as _quarantine
from agent import segments
from agent.counters import Counters
from agent.errors import SensorkitError
from agent.intervals import Intervals
from agent.quarantine import QuarantinedPoint, QuarantineStore
from agent.ramfiles import ram_candidates, ram_path
from agent.recovery import (
    DROP_REASONS,
    QueueStats,
    SegmentInfo,
    head_frame,
    legacy_stats,
    make_stats,
    pack_head,
    read_stats,
    retire_marks,
    scan,
    survey,
)
from agent.segments import Damage, Frame, Trailer
from agent.stage import Stage, fits, left_in_ram, set_aside_path, set_aside_stages, staged_frames

log = logging.getLogger("sensorkit.buffer")

__all__ = ["Batch", "DurableQueue", "Entry", "QueueBusy", "QueueStats", "read_stats"]

SEGMENT_MAX = 1024 * 1024  # bytes; smaller when the cap is small (see _segment_max)
FRAME_LINES = 512  # most lines in one frame
FRAME_BYTES = 128 * 1024
COUNTERS_EVERY = 3600.0  # seconds between writes of changed delivery counters while running
HEAD_EVERY = 1.0  # seconds between writes of the head while a backlog drains


class QueueBusy(SensorkitError):
    """Another process holds this queue (a second agent, or a publish still running)."""


class Entry(NamedTuple):
    """One queued point: its order, database, line of line protocol, time queued, bytes on disk.

    Made on demand (tests, splitting a batch); a drain itself works on byte ranges.
    """

    seq: int
    db: str
    data: bytes  # the line of line protocol, UTF-8, without its line end
    queued: float
    size: int = 0

    @property
    def line(self) -> str:
        return self.data.decode()


class Piece(NamedTuple):
    """``count`` points from ``seq`` on, as bytes of line protocol (``#`` lines allowed)."""

    seq: int
    count: int
    data: bytes | memoryview
    queued: float


@dataclass(frozen=True, eq=False)
class Batch(Sequence[Entry]):
    """Points of one database to send in one request; ``body`` is the request body.

    ``stop`` and ``end`` tell :meth:`DurableQueue.peek` where to read on (``after=``).
    """

    db: str = ""
    pieces: tuple[Piece, ...] = ()
    stop: int = 0
    end: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return sum(len(p.data) for p in self.pieces)

    @property
    def body(self) -> bytes:
        return b"".join(p.data for p in self.pieces)

    def ranges(self) -> list[tuple[int, int]]:
        return [(p.seq, p.seq + p.count) for p in self.pieces]

    @cached_property
    def entries(self) -> tuple[Entry, ...]:
        out: list[Entry] = []
        for piece in self.pieces:
            seq, queued, header = piece.seq, piece.queued, 0
            for raw in bytes(piece.data).split(b"\n")[:-1]:
                if raw[:1] == b"#":
                    if raw.startswith(segments.FRAME):
                        queued = float(raw.split(b" ", 3)[2])
                        header = len(raw) + 1
                    continue
                out.append(Entry(seq, self.db, raw, queued, len(raw) + 1 + header))
                seq, header = seq + 1, 0
        return tuple(out)

    def __len__(self) -> int:
        return sum(p.count for p in self.pieces)

    def __getitem__(self, index):  # type: ignore[override]
        return self.entries[index]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return [(e.seq, e.db, e.data) for e in self] == [
                (e.seq, e.db, e.data)
                for e in other  # type: ignore[attr-defined]
            ]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def split(self) -> tuple[Batch, Batch]:
        """The first and the second half of the points."""
        entries = self.entries
        half = len(entries) // 2
        return of_entries(entries[:half]), of_entries(entries[half:])


def of_entries(entries: Sequence[Entry]) -> Batch:
    """A batch of the given entries (one database); each run of sequence numbers a piece."""
    pieces: list[Piece] = []
    run: list[Entry] = []
    for entry in entries:
        if run and entry.seq != run[-1].seq + 1:
            pieces.append(_piece(run))
            run = []
        run.append(entry)
    if run:
        pieces.append(_piece(run))
    db = entries[0].db if entries else ""
    return Batch(db, tuple(pieces), entries[-1].seq + 1 if entries else 0)


def _piece(run: Sequence[Entry]) -> Piece:
    return Piece(run[0].seq, len(run), b"".join(e.data + b"\n" for e in run), run[0].queued)


EMPTY = Batch()


class DurableQueue:
    """A size-capped, crash-safe FIFO of ``(database, line)`` points. Thread-safe."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        name: str,
        max_bytes: int = 64 * 1024 * 1024,
        sync_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
        counters: Counters | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.max_bytes = max_bytes
        self.sync_interval = sync_interval
        self.clock = clock
        self.fsyncs = 0  # fdatasyncs of segments, for tests and benchmarks
        self._lock = threading.RLock()
        self._lockfile = os.open(self.directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lockfile)
            raise QueueBusy(
                f"queue {self.directory / name} is in use by another sensorkit process; "
                "stop it first (systemctl stop sensorkit) or use another [kit] state_dir"
            ) from None
        self._closed: QueueStats | None = None
        try:
            self._open(counters)
        except BaseException:
            os.close(self._lockfile)
            raise

    def _open(self, counters: Counters | None) -> None:
        stats_path = self.directory / f"{self.name}.stats"
        sqlite_path = self.directory / f"{self.name}.sqlite3"
        self._owns_counters = counters is None
        fresh_counters = not stats_path.exists()
        self.counters = counters or Counters(stats_path)
        if fresh_counters:
            for key, value in legacy_stats(sqlite_path).items():
                self.counters.set(key, value)
        self.store = QuarantineStore(sqlite_path)
        self._folder = self.directory / f"{self.name}.log"
        self._folder.mkdir(exist_ok=True)
        self._head_path = self.directory / f"{self.name}.head"
        self._card_refused = False  # a flush failed (a full card): append to it directly
        self._aside = 0  # points of stages set aside that could not be queued again
        self._stage = self._open_stage()
        found = survey(self.directory, self.name, repair=True)
        self._segments: list[SegmentInfo] = found.segments
        self._head = found.head
        self._head_written = found.head
        self._next_seq = max(found.next_seq, self.store.top())
        self._settled = Intervals()  # settled points above the head (and missing ones)
        for a, b in found.missing.ranges():
            self._settled.add(max(a, self._head), b)
        for seq in self.store.seqs_from(self._head):
            self._settled.add(seq, seq + 1)
        self.store.forget_below(self._head)
        self._ends: dict[int, tuple[int, int]] = {}  # seq -> (segment, offset) of its frame
        self._head_pos: tuple[int, int] = (0, 0)  # (segment, offset) of the head's frame
        self._head_skip = 0  # bytes of that frame before the head (settled lines)
        self._head_time = 0.0
        self._oldest: float | None = None
        self._dirty = False
        self._dropping = False
        self._last_sync = self._counters_time = time.monotonic()
        self._fd = -1
        if not self._segments or self._segments[-1].sealed:
            number = self._segments[-1].number + 1 if self._segments else 1
            self._segments.append(self._new_segment(number))
        else:
            self._fd = os.open(self._active.path, os.O_RDWR | os.O_APPEND)
        held = [s for s in self._segments if not s.empty]  # what no segment holds is no point
        if held:
            self._settled.add(self._head, max(self._head, held[0].first))
            self._settled.add(max(self._head, held[-1].next), self._next_seq)
        else:
            self._settled.add(self._head, self._next_seq)
        self._count = self._next_seq - self._head - self._settled.total
        self._durable = self._active.size  # bytes of the active segment on the card (not staged)
        self._disk = sum(segment.size for segment in self._segments)  # bytes of all segments
        self._count_drop("damaged", found.newly_damaged)
        self._head_moved(force=True)
        self._requeue()

    def _open_stage(self) -> Stage | None:
        """The RAM stage of fresh frames (None where there is no RAM-backed directory).

        What a crash left staged goes back where it belongs when it fits there exactly (the
        newest segment, unchanged up to its offset). Anything else (a stage an earlier start
        did not see, a card that refuses the bytes) is set aside as ``.stage.old`` (``.old.1``
        ... while an earlier one is still there) and its points queued again once the queue
        is open: re-sent perhaps, never lost.
        """
        path = ram_path(self.directory, f"{self.name}.stage")
        if path is None:
            return None
        try:
            stage = Stage(path)
        except OSError as err:
            log.warning("queue %s: no stage in RAM (%s); frames go to the card", self.name, err)
            return None
        left = stage.leftover()
        if left is not None:
            try:
                restored = self._restore(*left)
            except OSError as err:
                log.warning("queue %s: frames left in RAM not restored: %s", self.name, err)
                restored = False
            if restored:
                stage.clear()
            else:
                os.replace(path, set_aside_path(path))
                stage.close()
                stage = Stage(path)
        return stage

    def _restore(self, number: int, offset: int, data: bytes) -> bool:
        """Write frames a crash left staged at ``offset`` of segment ``number``, if that is
        the newest segment and holds, after ``offset``, nothing or a first part of ``data`` (a
        flush cut off); False when the stage does not fit there."""
        if not fits(self._folder, number, offset, data):
            return False
        path = self._folder / f"{number:016d}.seg"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            at = offset
            view = memoryview(data)
            try:
                while view:
                    written = os.pwrite(fd, view, at)
                    view, at = view[written:], at + written
                os.fdatasync(fd)
            except OSError:
                os.ftruncate(fd, max(size, offset))  # no torn frame to be counted again
                raise
        finally:
            os.close(fd)
        log.info("queue %s: %d bytes a crash left in RAM written to %s", self.name, len(data), path)
        return True

    def _requeue(self) -> None:
        """Queue again the points of a stage that did not fit where it came from (see
        :meth:`_open_stage`), and of stages an earlier run left in another RAM directory that
        this run can write too (it was preferred then, or this one was not there); then
        forget them."""
        if self._stage is None:
            return
        here = self._stage.path
        for path in ram_candidates(self.directory, f"{self.name}.stage"):
            if path.parent.resolve() == here.parent.resolve():
                continue  # the same directory by another name: that is the live stage
            if not os.access(path.parent, os.W_OK):
                continue  # one this run cannot remove would be queued again at every start
            for left in left_in_ram(path):
                self._requeue_from(left)
        for left in set_aside_stages(here):
            self._requeue_from(left)

    def _requeue_from(self, old: Path) -> None:
        """Queue again the points of the stage file ``old``, then remove it."""
        try:
            data = staged_frames(old) if old.exists() else b""
        except OSError:
            return
        items = [
            (item.db.decode(), line)
            for item in segments.walk(data)
            if isinstance(item, Frame)
            for k, line in enumerate(data[item.body : item.stop].split(b"\n"))
            if k not in item.bad and line
        ]
        if items:
            try:
                self.append(items)
            except OSError as err:  # kept in RAM: the next start tries again
                log.error("queue %s: points left in RAM by an earlier run: %s", self.name, err)
                self._aside += len(items)  # shown as queued, only in RAM
                return
            log.warning(
                "queue %s: %d points left in RAM by an earlier run (%s) queued again",
                self.name,
                len(items),
                old,
            )
        try:
            old.unlink(missing_ok=True)
        except OSError as err:  # queued now: the next start would queue them once more
            log.warning("queue %s: cannot remove %s: %s", self.name, old, err)

    # -- appending ------------------------------------------------------------------------

    def append(self, items: Sequence[tuple[str, str | bytes]]) -> None:
        """Queue ``(database, line)`` pairs; when this returns they survive a crash.

        A line never holds a line break nor starts with ``#`` (the encoder sees to it).
        Raises OSError when neither RAM nor the disk takes them (full, read-only): nothing of
        it is queued then. Points in RAM whose flush the card refused are queued (they are
        counted as such, ``stats().in_ram``), so with ``sync_interval <= 0`` a failed flush
        does not raise.
        """
        if not items:
            return
        groups = _frames(items)
        with self._lock:
            if self._closed is not None:
                raise RuntimeError(f"queue {self.name} is closed")
            now = int(self.clock())
            active = self._active
            blob, chain = _pack(groups, self._next_seq, now, active.chain)
            if not active.empty and active.size + len(blob) > self._segment_max():
                self._rotate()
                active = self._active
                blob, chain = _pack(groups, self._next_seq, now, 0)
            self._put(blob)
            count = sum(len(lines) for _, lines in groups)
            if active.empty:
                active.first = self._next_seq
                active.oldest = float(now)
            active.next = self._next_seq + count
            active.size = active.frames_end = active.size + len(blob)
            self._disk += len(blob)
            active.chain = chain
            active.dbs.update(db for db, _ in groups)
            self._next_seq += count
            self._count += count
            self._dirty = True
            self._enforce_cap()
            if self.sync_interval <= 0:
                refused = self._card_refused
                try:
                    self.sync()
                except OSError as err:  # queued, in RAM: counted there (stats().in_ram)
                    if not refused:
                        log.error("queue %s: %s", self.name, err)

    def _put(self, frames: bytes) -> None:
        """Append frames to the stage in RAM; to the segment where there is none, RAM is
        full or the last flush failed (then what is staged goes first, to keep the order)."""
        if self._stage is not None and not self._card_refused:
            try:
                self._stage.append(self._active.number, self._durable, frames)
                return
            except OSError as err:
                log.warning("queue %s: cannot stage in RAM (%s); to the card", self.name, err)
        try:
            self._flush_stage()
        except OSError as failed:
            raise OSError(failed.errno, f"{failed}; the point was not queued") from None
        self._write(frames, "the point was not queued")

    def _flush_stage(self) -> None:
        """Copy what is staged to the end of the active segment on the card (not yet durable)."""
        stage = self._stage
        if stage is not None and stage.size:
            self._write(stage.everything(), "the points stay in RAM until the next flush")
            stage.clear()

    def _write(self, blob: bytes, otherwise: str) -> None:
        """Append ``blob`` whole to the active segment on the card (short writes are
        completed), or cut it off and raise an OSError that ends with ``otherwise``."""
        view = memoryview(blob)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as err:
            try:  # no torn frame may stay: the next append would follow garbage
                os.ftruncate(self._fd, self._durable)
            except OSError:
                log.exception("queue %s: cannot cut a failed write off", self.name)
            raise OSError(
                err.errno,
                f"queue {self.name}: cannot append to {self._active.path}: {err.strerror}; "
                + otherwise,
            ) from err
        self._durable += len(blob)

    @property
    def _active(self) -> SegmentInfo:
        return self._segments[-1]

    def _segment_max(self) -> int:
        return max(4096, min(SEGMENT_MAX, self.max_bytes // 8))

    def _new_segment(self, number: int) -> SegmentInfo:
        path = self._folder / f"{number:016d}.seg"
        retire_marks(self.directory, self.name, number, int(self.clock()))
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        folder = os.open(self._folder, os.O_RDONLY)
        try:  # the new file's name lasts a power cut too (once per start and per megabyte)
            os.fsync(folder)
        finally:
            os.close(folder)
        return SegmentInfo(number, path, self._next_seq, self._next_seq)

    def _rotate(self) -> None:
        """Seal the full segment with its trailer, flush it, and start the next one."""
        active = self._active
        points = active.next - active.first
        dbs = tuple(active.dbs)
        # A segment with damage in it is sealed with a chain that does not check: after a
        # restart it is read frame by frame again, so its damaged points are never sent (the
        # chain alone, taken over the damaged bytes at start-up, would let them through).
        chain = active.chain ^ 0xFFFFFFFF if active.damaged else active.chain
        self._flush_stage()  # emptied before the trailer: a sealed segment has nothing staged
        self._write(
            segments.pack_trailer(
                active.first, active.next, points, int(active.oldest or 0), chain, dbs
            ),
            "the queue cannot take points",
        )
        os.fdatasync(self._fd)
        self.fsyncs += 1
        os.close(self._fd)
        grown = active.path.stat().st_size - active.size
        active.size += grown
        self._disk += grown
        active.sealed = True
        self._segments.append(self._new_segment(active.number + 1))
        self._durable = 0
        self._dirty = False

    # -- reading --------------------------------------------------------------------------

    def peek(
        self,
        max_lines: int,
        max_bytes: int,
        after: Batch | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> Batch:
        """The oldest unsettled points of one database, up to the limits (at least one).

        ``after`` reads on past a batch still in flight; points of databases in ``exclude``
        (held back for now) are passed over. An empty batch when there is nothing to send.
        """
        with self._lock:
            if self._closed is not None or not self._count:
                return EMPTY
            seq, pos = self._head, self._head_pos
            if after is not None and after.end is not None and after.stop > seq:
                seq, pos = after.stop, after.end
            build = _Builder(max_lines, max_bytes, frozenset(d.encode() for d in exclude))
            pos = self._normal(pos, seq)
            index, offset, finished, inside = self._index(pos[0]), pos[1], False, False
            end: tuple[int, int] | None = None
            while index < len(self._segments) and not build.full:
                segment = self._segments[index]
                if segment.next > seq and not segment.empty:
                    seq, offset, finished, inside = self._take(segment, offset, seq, build)
                    seq = max(seq, self._head)  # damage found on the way may have moved it
                    if finished:
                        end = (segment.number, offset)
                        break
                # by number: damage found on the way may have deleted segments
                index, offset = self._after(segment.number), 0
                if index < len(self._segments):
                    seq = max(seq, self._segments[index].first)
            if not build.pieces:
                return EMPTY
            if end is None and index < len(self._segments):
                end = (self._segments[index].number, offset)
            elif end is None:
                end = (self._active.number, self._active.frames_end)
            if not inside:  # a frame starts there: where the head goes once this is settled
                self._ends[seq] = end
            return Batch(build.db.decode(), tuple(build.pieces), seq, end)  # type: ignore[union-attr]

    def _normal(self, pos: tuple[int, int], seq: int) -> tuple[int, int]:
        """``pos`` as a place to read from: past the end of a segment that ``seq`` is beyond,
        or in a segment deleted since, reading goes on at the start of the next one."""
        number, offset = pos
        for segment in self._segments:
            if segment.number < number:
                continue
            if segment.number > number:
                return segment.number, 0
            if offset >= segment.frames_end and segment.next <= seq and segment is not self._active:
                number, offset = segment.number + 1, 0
                continue
            return number, offset
        return self._active.number, min(offset, self._active.frames_end)

    def _after(self, number: int) -> int:
        """The index of the first segment numbered above ``number`` (or the count)."""
        for i, segment in enumerate(self._segments):
            if segment.number > number:
                return i
        return len(self._segments)

    def _index(self, number: int) -> int:
        for i, segment in enumerate(self._segments):
            if segment.number >= number:
                return i
        return len(self._segments) - 1

    def _read(self, segment: SegmentInfo, offset: int, stop: int) -> bytes:
        """Bytes of a segment. The active one is read through the descriptor it is written
        by: closing a second descriptor of a file once cut to nothing makes ext4 write its
        pages out at once (auto_da_alloc), which would put every point online on the card."""
        if stop <= offset:
            return b""
        if segment is self._active and self._fd >= 0:
            card = self._durable
            data = _pread(self._fd, min(stop, card) - offset, offset) if offset < card else b""
            if stop > card and self._stage is not None:
                data += self._stage.read(max(offset, card) - card, stop - card)
            return data
        fd = os.open(segment.path, os.O_RDONLY | os.O_NOATIME)
        try:
            return _pread(fd, stop - offset, offset)
        finally:
            os.close(fd)

    def _take(
        self, segment: SegmentInfo, offset: int, seq: int, build: _Builder
    ) -> tuple[int, int, bool, bool]:
        """Add what ``segment`` holds from ``offset`` (the frame holding ``seq``) to ``build``.

        Returns (next sequence number, offset of its frame, whether the batch is complete,
        whether that number lies inside its frame).
        """
        data = self._read(segment, offset, segment.frames_end)
        if not data:
            return max(seq, segment.next), offset, False, False
        if not segment.damaged and len(segment.dbs) == 1:
            taken = self._take_range(segment, data, offset, seq, build)
            if taken is not None:
                return taken
        return self._take_frames(segment, data, offset, seq, build)

    def _take_range(
        self, segment: SegmentInfo, data: bytes, offset: int, seq: int, build: _Builder
    ) -> tuple[int, int, bool, bool] | None:
        """The fast path: one byte range of whole frames, checked with one CRC call.

        None when the range cannot be used as it is (the head inside a frame, a settled
        point inside, damage): then the caller reads frame by frame.
        """
        (db,) = segment.dbs
        if db in build.exclude:
            return max(seq, segment.next), offset + len(data), False, False
        if build.db is not None and db != build.db:
            return seq, offset, True, False
        first = segments.header(data, 0)
        if not isinstance(first, Frame) or first.seq != seq:
            return None
        known = {len(data): (segment.next, segment.chain)}

        def at(position: int) -> tuple[int, int] | None:
            """(first sequence number, ``before``) of the frame starting at ``position``."""
            if position not in known:
                found = segments.header(data, position)
                if not isinstance(found, Frame):
                    return None
                known[position] = (found.seq, found.before)
            return known[position]

        end = len(data)
        if end > build.bytes_left:
            end = segments.boundary_before(data, build.bytes_left + 1, 0)
            if end <= 0:
                if build.pieces or first.count > 1:
                    return None if not build.pieces else (seq, offset, True, False)
                end = first.stop
        found = at(end)
        if found is not None and found[0] - seq > build.points_left:
            end = _cut(data, seq, end, found[0], seq + build.points_left, at)
            found = at(end) if end > 0 else None
        if found is None:
            return None if not build.pieces else (seq, offset, True, False)
        stop_seq, before_end = found
        if self._settled.intersects(seq, stop_seq):
            return None
        view = memoryview(data)[:end]
        if zlib.crc32(view, first.before) != before_end:
            self._inspect(segment)
            return None
        build.add(db, Piece(seq, stop_seq - seq, view, float(first.queued)))
        return stop_seq, offset + end, end < len(data) or build.full, False

    def _take_frames(
        self, segment: SegmentInfo, data: bytes, offset: int, seq: int, build: _Builder
    ) -> tuple[int, int, bool, bool]:
        """The careful path: frame by frame, each checked; settled and damaged points skipped."""
        for item in segments.walk(data):
            if isinstance(item, Trailer):
                break
            if isinstance(item, Damage) or item.bad:
                self._inspect(segment)  # the damaged points are settled now
                seq = max(seq, self._head)  # the head may have moved past them
                if isinstance(item, Damage):
                    continue
            if item.seq + item.count <= seq or item.db in build.exclude:
                continue
            if build.db is not None and item.db != build.db:
                return max(seq, item.seq), offset + item.offset, True, seq > item.seq
            runs = self._settled.gaps(max(seq, item.seq), item.seq + item.count)
            size = item.stop - item.offset
            alone = not build.pieces and item.count == 1  # at least one point, whatever its size
            fits = item.count <= build.points_left and (size <= build.bytes_left or alone)
            if runs == [(item.seq, item.seq + item.count)] and fits:
                piece = Piece(item.seq, item.count, data[item.offset : item.stop], item.queued)
                build.add(item.db, piece)
            elif runs:
                stopped = self._take_lines(item, data, runs, build)
                if stopped is not None:
                    return stopped, offset + item.offset, True, stopped > item.seq
            seq = item.seq + item.count
            if build.full:
                return seq, offset + item.stop, True, False
        return max(seq, segment.next), offset + len(data), False, False

    @staticmethod
    def _take_lines(item: Frame, data: bytes, runs, build: _Builder) -> int | None:
        """Add the unsettled lines of a frame (without its frame line), within the limits.

        Returns the sequence number it stopped at when the limits cut the frame, else None.
        """
        ends = [item.body]  # ends[i + 1]: one past line i's line end
        for line in bytes(data[item.body : item.stop]).split(b"\n")[:-1]:
            ends.append(ends[-1] + len(line) + 1)
        for a, b in runs:
            first = a - item.seq
            take = 0
            while first + take < b - item.seq:
                size = ends[first + take + 1] - ends[first]
                if (take or build.pieces) and (
                    take >= build.points_left or size > build.bytes_left
                ):
                    break
                take += 1
            if not take:
                return a
            build.add(item.db, Piece(a, take, data[ends[first] : ends[first + take]], item.queued))
            if a + take < b:
                return a + take
        return None

    # -- settling -------------------------------------------------------------------------

    def remove(self, points: Batch | Sequence[Entry]) -> None:
        """Forget points the server accepted."""
        with self._lock:
            if self._closed is not None:
                return
            fresh = self._settle(_ranges(points))
            if fresh:
                self.counters.add("delivered", fresh)
                self.counters.set("last_delivery", self.clock())

    def quarantine(self, points: Batch | Sequence[Entry], reason: str) -> None:
        """Move points the server refused for good aside, with the server's reason."""
        entries = list(points)
        if not entries:
            return
        with self._lock:
            if self._closed is not None:
                return
            now = self.clock()
            try:
                self.store.add([(e.seq, e.db, e.line, reason, e.queued, now) for e in entries])
            except (sqlite3.Error, OSError) as err:
                log.error(
                    "queue %s: cannot keep %d refused points in quarantine (%s); they are "
                    "dropped and counted",
                    self.name,
                    len(entries),
                    err,
                )
                self._count_drop("unkept", self._settle(_ranges(entries)))
                return
            self._settle(_ranges(entries))
            dropped = self.store.drop_oldest(self.max_bytes // 10)
            if dropped:
                log.warning(
                    "queue %s: quarantine is full (%.2f MB); dropped the %d oldest refused "
                    "points (counted in `sensorkit status`)",
                    self.name,
                    self.max_bytes / 10 / 1e6,
                    dropped,
                )
                self._count_drop("quarantine_full", dropped)

    def keep_aside(self, points: Sequence[tuple[str, str]], reason: str, queued: float) -> None:
        """Put points that were never queued straight into quarantine (they may not be sent:
        e.g. measured when the clock was wrong and can no longer be dated)."""
        with self._lock:
            now = self.clock()
            self.store.add([(-1, db, line, reason, queued, now) for db, line in points])

    def _settle(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Mark points settled; returns how many were not settled already."""
        fresh = 0
        for a, b in ranges:
            fresh += self._settled.add(max(a, self._head), min(b, self._next_seq))
        if fresh:
            self._count -= fresh
            self._head_moved()
        if self._dropping and self._bytes() < self.max_bytes // 2:
            self._dropping = False
            log.warning(
                "queue %s: below half its cap again; %d points dropped in all",
                self.name,
                self.counters.get("dropped_cap", 0),
            )
        return fresh

    def _head_moved(self, force: bool = False) -> None:
        """Move the head past settled points; delete what it passed; find where it is."""
        before = self._head
        self._head = self._settled.pop_from(self._head)
        if self._count <= 0 or self._head >= self._next_seq:
            self._count, self._head = 0, self._next_seq
            self._settled.clear()
        if self._head == before and not force:
            return
        self._oldest = None
        for seq in [s for s in self._ends if s < self._head]:
            del self._ends[seq]
        passed = [s for s in self._segments[:-1] if s.next <= self._head]
        for segment in passed:
            segment.path.unlink(missing_ok=True)
            self._disk -= segment.size
        self._segments = [s for s in self._segments if s not in passed]
        if not self._count:
            self._empty_active()
            self._head_pos, self._head_skip = (self._active.number, 0), 0
            return
        known = self._ends.get(self._head)
        if known is not None:
            self._head_pos, self._head_skip = self._normal(known, self._head), 0
        else:
            number, offset, self._oldest, self._head_skip = head_frame(
                self._segments, self._head, self._read
            )
            self._head_pos = (number, offset)
        if time.monotonic() - self._head_time >= HEAD_EVERY:
            self._write_head()

    def _empty_active(self) -> None:
        """Everything is delivered: empty the stage, and cut the active segment to nothing
        if a flush put any of it on the card."""
        active = self._active
        if not active.empty:
            try:  # the card first: a stage emptied before a failed cut would not match it
                if self._durable:
                    os.ftruncate(self._fd, 0)
                    self._durable = 0  # so even when emptying the stage fails below
                if self._stage is not None:
                    self._stage.clear()
            except OSError as err:
                log.warning("queue %s: cannot empty %s: %s", self.name, active.path, err)
                return
        self._durable = 0
        active.first = active.next = self._next_seq
        self._disk -= active.size
        active.size = active.frames_end = active.chain = 0
        active.dbs.clear()
        active.oldest = None
        active.damaged = False
        self._dirty = False
        self._ends.clear()

    # -- damage ---------------------------------------------------------------------------

    def _inspect(self, segment: SegmentInfo) -> None:
        """Read a segment whose CRCs did not check frame by frame: set damage aside, count
        the points it cost, and read this segment carefully from now on."""
        if segment not in self._segments:  # deleted since: all of it settled
            return
        data = self._read(segment, 0, segment.size)
        index = self._segments.index(segment)
        prior = self._segments[index - 1].next if index else segment.first
        lost, fresh = scan(
            self.directory,
            self.name,
            segment,
            data,
            prior,
            known_next=segment.next,
            head=self._head,
        )
        segment.damaged = True
        settled = 0
        for a, b in lost.ranges():
            settled += self._settled.add(max(a, self._head), min(b, self._next_seq))
        self._count -= settled
        self._count_drop("damaged", fresh)
        if settled:
            self._head_moved()

    def _count_drop(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        self.counters.add(f"dropped_{reason}", n)
        self.counters.flush(durable=True)
        log.warning(
            "queue %s: %d points dropped: %s (counted in `sensorkit status`)",
            self.name,
            n,
            DROP_REASONS[reason],
        )

    # -- durability -----------------------------------------------------------------------

    def sync(self) -> None:
        """Make what is undelivered durable (one fdatasync) and record the head."""
        with self._lock:
            if self._closed is not None:
                return
            self._last_sync = time.monotonic()  # a failed flush is tried again in an interval
            if self._dirty and not self._active.empty:
                try:
                    self._flush_stage()
                except OSError:
                    self._card_refused = True  # what is staged stays; new points try the card
                    self._write_head()  # a few bytes may fit where the frames did not
                    raise
                self._card_refused = False
                os.fdatasync(self._fd)
                self.fsyncs += 1
            self._dirty = False
            self._write_head()
            if time.monotonic() - self._counters_time >= COUNTERS_EVERY:
                self.counters.flush()
                self._counters_time = time.monotonic()
            self._last_sync = time.monotonic()

    def maybe_sync(self, late: float = 0.0) -> bool:
        """:meth:`sync` when ``sync_interval`` (plus ``late`` seconds) has passed since the
        last; True when it did."""
        if time.monotonic() - self._last_sync >= self.sync_interval + late:
            self.sync()
            return True
        return False

    def _write_head(self) -> None:
        """Record the head when points remain on disk and it moved (a drain, a drop)."""
        if self._head == self._head_written or not self._count:
            return
        self.counters.set("head", self._head)  # a second copy, flushed with the drops
        tmp = self._head_path.with_suffix(".tmp")
        try:
            tmp.write_text(pack_head(self._head))
            os.replace(tmp, self._head_path)
        except OSError as err:  # costs only some re-sending after a restart
            log.debug("queue %s: head not recorded: %s", self.name, err)
            return
        self._head_written = self._head
        self._head_time = time.monotonic()

    def close(self) -> None:
        """Flush, record head and counters, release the lock; never raises (a full disk)."""
        with self._lock:
            if self._closed is not None:
                return
            try:
                self.sync()
            except OSError as err:
                log.error("queue %s: final flush failed: %s", self.name, err)
            try:
                self._closed = self.stats()
            finally:
                self._closed = self._closed or QueueStats()
                if self._owns_counters:
                    self.counters.close()
                else:
                    self.counters.flush(durable=True)
                if self._fd >= 0:
                    os.close(self._fd)
                if self._stage is not None:
                    self._stage.close()
                if self._active.empty:
                    self._active.path.unlink(missing_ok=True)
                self.store.close()
                os.close(self._lockfile)

    # -- status ---------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._count

    def stats(self) -> QueueStats:
        """Depth, bytes, oldest queued time, drops and deliveries."""
        with self._lock:
            if self._closed is not None:
                return self._closed
            if self._oldest is None and self._count:
                self._oldest = self._queued_at(self._head_pos)
            return make_stats(
                self.counters.values(),
                self._count + self._aside,
                self._bytes(),
                self._oldest,
                self.store.count(),
                self._in_ram() + self._aside,
            )

    def _in_ram(self) -> int:
        """Undelivered points only in the RAM stage because the card refused the last flush."""
        if not self._card_refused or self._stage is None or not self._stage.size:
            return 0
        undelivered = 0
        for item in segments.walk(self._stage.everything()):
            if isinstance(item, Frame) and item.seq + item.count > self._head:
                runs = self._settled.gaps(max(self._head, item.seq), item.seq + item.count)
                undelivered += sum(b - a for a, b in runs)
        return undelivered

    def queued_bytes(self) -> int:
        """Bytes on disk from the head on: what the cap counts."""
        with self._lock:
            return self._bytes()

    def _bytes(self) -> int:
        if not self._count:
            return 0
        number, offset = self._head_pos
        before = 0
        if self._segments[0].number < number:  # segments the head left (normally deleted)
            before = sum(s.size for s in self._segments if s.number < number)
        return self._disk - before - offset - self._head_skip

    def _queued_at(self, pos: tuple[int, int]) -> float | None:
        segment = self._segments[self._index(pos[0])]
        found = segments.header(self._read(segment, pos[1], pos[1] + segments.MAX_HEADER), 0)
        return float(found.queued) if isinstance(found, Frame) else None

    # -- the cap --------------------------------------------------------------------------

    def _enforce_cap(self) -> None:
        size = self._bytes()
        if size <= self.max_bytes:
            return
        target = int(self.max_bytes * 0.9)  # drop in chunks: one head write per chunk
        doomed: list[tuple[int, int]] = []
        freed = 0
        for segment in list(self._segments):
            if segment.next <= self._head or segment.empty or size - freed <= target:
                continue
            data = self._read(segment, 0, segment.frames_end)
            for item in segments.walk(data):
                if size - freed <= target:
                    break
                if isinstance(item, Frame) and item.seq + item.count > self._head:
                    doomed.append((item.seq, item.seq + item.count))
                    freed += item.stop - item.offset
            if segment.sealed and size - freed > target:
                freed += segment.size - segment.frames_end  # the trailer goes with it
        dropped = self._settle(doomed)
        self._write_head()
        if not dropped:
            return
        if not self._dropping:
            self._dropping = True
            log.warning(
                "queue %s is full (cap %.2f MB): dropping the oldest points (%d now); "
                "every drop is counted in `sensorkit status`; raise [influx] queue_max_mb "
                "to keep more",
                self.name,
                self.max_bytes / 1e6,
                dropped,
            )
        self.counters.add("dropped_cap", dropped)
        self.counters.flush(durable=True)


@dataclass
class _Builder:
    """A batch being put together within its limits."""

    max_lines: int
    max_bytes: int
    exclude: frozenset[bytes]
    db: bytes | None = None
    pieces: list[Piece] = field(default_factory=list)
    points: int = 0
    size: int = 0

    @property
    def points_left(self) -> int:
        return self.max_lines - self.points

    @property
    def bytes_left(self) -> int:
        return self.max_bytes - self.size

    @property
    def full(self) -> bool:
        return self.points >= self.max_lines or self.size >= self.max_bytes

    def add(self, db: bytes, piece: Piece) -> None:
        self.db = db
        self.pieces.append(piece)
        self.points += piece.count
        self.size += len(piece.data)


def _pread(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset`` (fewer at the end of the file)."""
    parts = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            break
        parts.append(part)
        size -= len(part)
        offset += len(part)
    return b"".join(parts)


def _cut(data: bytes, seq: int, hi: int, hi_seq: int, target: int, at) -> int:
    """The last frame start in ``data[:hi]`` whose sequence number is at most ``target``.

    An interpolation search over frame starts: a few header reads, not one per frame. 0 when
    the first frame alone holds more than ``target - seq`` points.
    """
    lo, lo_seq = 0, seq
    while True:
        guess = lo + max(1, int((hi - lo) * (target - lo_seq) / max(1, hi_seq - lo_seq)))
        b = segments.boundary_before(data, min(guess, hi) + 1, lo + 1)
        if b <= lo:
            b = segments.boundary_after(data, lo + 1)
        if b >= hi:
            return lo
        found = at(b)
        if found is None:
            return lo
        if found[0] <= target:
            lo, lo_seq = b, found[0]
            if lo_seq == target:
                return lo
        else:
            hi, hi_seq = b, found[0]


def _ranges(points: Batch | Sequence[Entry]) -> list[tuple[int, int]]:
    if isinstance(points, Batch):
        return points.ranges()
    out: list[tuple[int, int]] = []
    for entry in sorted(points, key=lambda e: e.seq):
        if out and out[-1][1] == entry.seq:
            out[-1] = (out[-1][0], entry.seq + 1)
        else:
            out.append((entry.seq, entry.seq + 1))
    return out


def _frames(items: Sequence[tuple[str, str | bytes]]) -> list[tuple[bytes, list[bytes]]]:
    """``(database, lines)`` per frame: runs of one database, at most FRAME_LINES/BYTES."""
    groups: list[tuple[bytes, list[bytes]]] = []
    db: bytes | None = None
    run: list[bytes] = []
    size = 0
    for name, line in items:
        encoded = name.encode()
        data = line.encode() if isinstance(line, str) else line
        if run and (encoded != db or len(run) >= FRAME_LINES or size + len(data) > FRAME_BYTES):
            groups.append((db, run))  # type: ignore[arg-type]
            run, size = [], 0
        db = encoded
        run.append(data)
        size += len(data) + 1
    if run:
        groups.append((db, run))  # type: ignore[arg-type]
    for db, lines in groups:
        joined = b"\n".join(lines)
        if joined.count(b"\n") != len(lines) - 1 or joined.startswith(b"#") or b"\n#" in joined:
            raise ValueError("a queued line holds a line break or starts with '#'")
        if b"\n" in db or b"/" in db:
            raise ValueError(f"database name {db!r} holds a line break or '/'")
    return groups


def _pack(groups, seq: int, queued: int, chain: int) -> tuple[bytes, int]:
    """The frames of ``groups`` from ``seq`` on, chained from ``chain``; and the chain after."""
    out = []
    for db, lines in groups:
        frame = segments.pack_frame(seq, db, lines, queued, chain)
        chain = zlib.crc32(frame, chain)
        out.append(frame)
        seq += len(lines)
    return b"".join(out), chain


def read_quarantine(directory: str | os.PathLike[str], name: str) -> list[QuarantinedPoint]:
    """The points queue ``name`` holds in quarantine, read-only (safe while it runs)."""
    return _quarantine.read_quarantine(Path(directory) / f"{name}.sqlite3")


def release_quarantined(directory: str | os.PathLike[str], name: str, ids: Sequence[int]) -> None:
    """Delete quarantined points by id (after they were re-sent successfully)."""
    _quarantine.release(Path(directory) / f"{name}.sqlite3", ids)
