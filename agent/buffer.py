"""The durable queue an output owns: nothing accepted is lost to a crash, an outage or a reboot.

The queue is a log of append-only segment files, the way an SD card likes to be written:

- ``<name>.log/<number>.seg``: every :meth:`DurableQueue.append` is one ``write()`` of
  CRC-checked records before it returns, so an appended point survives ``kill -9`` at once.
  Every ``sync_interval`` seconds the segment written to is fdatasynced once: a power cut can
  cost at most that many seconds of undelivered points, and the card sees one small flush per
  interval. Segments are read back in order, and deleted once every point in them is settled.
- ``<name>.head``: the first point not yet settled, written when a backlog drains or the cap
  drops points (never per point), so a restart does not re-send much.
- ``<name>.sqlite3`` (WAL): quarantined points with the server's reason, and counters.

Online, points are delivered before the next flush and the segment is simply truncated, so
nothing but a little page cache is ever written. Points leave in order (oldest first); a
point re-sent after a crash is the same point to InfluxDB, so at-least-once delivery stores
no duplicates.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("sensorkit.buffer")

_HEADER = struct.Struct(">IQdHI")  # crc32 of the rest, seq, queued time, len(db), len(line)
_BODY_HEADER = struct.Struct(">QdHI")
SEGMENT_MAX = 1024 * 1024  # bytes; smaller when the cap is small (see _segment_max)
COUNTERS_EVERY = 600.0  # seconds between writes of the delivery counters while running

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER, db TEXT NOT NULL, line TEXT NOT NULL,
    reason TEXT NOT NULL, queued REAL NOT NULL, quarantined REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value);
"""


class Entry(NamedTuple):
    """One queued point: its order, its database, its line of line protocol, its record size.

    A named tuple rather than a dataclass: a backlog drain makes hundreds of thousands.
    """

    seq: int
    db: str
    data: bytes  # the line of line protocol, UTF-8, as sent
    queued: float
    size: int = 0  # bytes of its record on disk: what the cap counts

    @property
    def line(self) -> str:
        return self.data.decode()


@dataclass(frozen=True)
class QuarantinedPoint:
    id: int
    db: str
    line: str
    reason: str
    queued: float
    quarantined: float


@dataclass
class _Segment:
    number: int
    path: Path
    first_seq: int = 0
    last_seq: int = -1
    size: int = 0

    @property
    def empty(self) -> bool:
        return self.size == 0


class QueueBusy(RuntimeError):
    """Another process holds this queue (a second agent, or a publish still running)."""


def _pack(seq: int, db: str, line: str, queued: float) -> bytes:
    db_bytes, line_bytes = db.encode(), line.encode()
    body = _BODY_HEADER.pack(seq, queued, len(db_bytes), len(line_bytes)) + db_bytes + line_bytes
    return struct.pack(">I", zlib.crc32(body)) + body


def _records(
    blob: bytes, check: bool = True, offset: int = 0, first: int = 0
) -> Iterator[tuple[int, Entry]]:
    """(offset after, entry) for each whole record from ``offset`` with seq >= ``first``.

    Stops at a torn or (with ``check``) corrupt record.
    """
    end = len(blob)
    unpack = _HEADER.unpack_from
    header = _HEADER.size
    while offset + header <= end:
        crc, seq, queued, db_len, line_len = unpack(blob, offset)
        start = offset + header
        stop = start + db_len + line_len
        if stop > end or (check and zlib.crc32(blob[offset + 4 : stop]) != crc):
            return
        if seq >= first:
            db = blob[start : start + db_len].decode()
            yield stop, Entry(seq, db, blob[start + db_len : stop], queued, stop - offset)
        offset = stop


@dataclass
class _Log:
    """What a scan of the segment files found (used by the queue and by ``status``)."""

    segments: list[_Segment] = field(default_factory=list)
    head: int = 0
    torn: list[tuple[_Segment, int]] = field(default_factory=list)  # (segment, valid length)
    count: int = 0  # unsettled points: at or above the head and not quarantined
    bytes: int = 0
    oldest: float | None = None


def _scan(directory: Path, name: str, held: frozenset[int] | set[int] = frozenset()) -> _Log:
    """Read the head and every segment once (checking CRCs), counting what is unsettled.

    ``held`` are the sequence numbers of quarantined points, which are settled.
    """
    found = _Log()
    head_path = directory / f"{name}.head"
    try:
        found.head = int(head_path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        found.head = 0
    folder = directory / f"{name}.log"
    for path in sorted(folder.glob("*.seg")) if folder.is_dir() else []:
        segment = _Segment(int(path.stem), path)
        blob = path.read_bytes()
        for stop, entry in _records(blob):
            if segment.empty:
                segment.first_seq = entry.seq
            segment.last_seq, segment.size = entry.seq, stop
            if entry.seq >= found.head and entry.seq not in held:
                found.count += 1
                found.bytes += entry.size
                if found.oldest is None:
                    found.oldest = entry.queued
        if segment.size != len(blob):
            found.torn.append((segment, segment.size))
        found.segments.append(segment)
    return found


class DurableQueue:
    """A size-capped, crash-safe FIFO of ``(database, line)`` entries. Thread-safe."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        name: str,
        max_bytes: int = 64 * 1024 * 1024,
        sync_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.max_bytes = max_bytes
        self.sync_interval = sync_interval
        self.clock = clock
        self.fsyncs = 0  # fdatasyncs and durable commits, for benchmarks
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
        self._db = sqlite3.connect(
            self.directory / f"{name}.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # Quarantine commits are made durable at the next sync(), before any segment holding
        # their points is deleted: one fsync per interval, not one per refused point.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._counters = dict(self._db.execute("SELECT key, value FROM counters").fetchall())
        self._held_bytes = self._db.execute(
            "SELECT coalesce(sum(length(CAST(line AS BLOB))), 0) FROM quarantine"
        ).fetchone()[0]
        self._held_dirty = False
        self._counters_dirty = False
        self._counters_written = time.monotonic()
        self._dropping = False
        self._folder = self.directory / f"{name}.log"
        self._folder.mkdir(exist_ok=True)
        self._head_path = self.directory / f"{name}.head"
        self._open_log()
        self._last_sync = time.monotonic()
        self._closed: dict[str, object] | None = None  # the last stats, once closed

    def _open_log(self) -> None:
        held = {seq for (seq,) in self._db.execute("SELECT seq FROM quarantine")}
        found = _scan(self.directory, self.name, held)
        for segment, valid in found.torn:
            log.warning(
                "queue %s: %s ends in a torn record (power cut?); %d bytes after it dropped",
                self.name,
                segment.path.name,
                segment.path.stat().st_size - valid,
            )
            os.truncate(segment.path, valid)
        self._segments = [s for s in found.segments if not s.empty]
        for segment in found.segments:
            if segment.empty:
                segment.path.unlink()
        # Sequence numbers never repeat: quarantined points keep theirs.
        (quarantined_top,) = self._db.execute(
            "SELECT coalesce(max(seq) + 1, 0) FROM quarantine"
        ).fetchone()
        self._head = found.head
        self._head_written = found.head
        self._next_seq = max(
            [found.head, quarantined_top] + [s.last_seq + 1 for s in self._segments]
        )
        # Settled out of order: above the head, below _next_seq.
        self._settled: set[int] = {seq for seq in held if seq >= self._head}
        self._count, self._bytes, self._oldest = found.count, found.bytes, found.oldest
        self._cursor: tuple[int, int, int] | None = None  # (segment, offset, seq) of the head
        self._advance_head()
        number = self._segments[-1].number + 1 if self._segments else 1
        self._start_segment(number)

    def _start_segment(self, number: int) -> None:
        segment = _Segment(number, self._folder / f"{number:016d}.seg")
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        folder = os.open(self._folder, os.O_RDONLY)
        try:  # the new file's name lasts a power cut too (once per start and per megabyte)
            os.fsync(folder)
        finally:
            os.close(folder)
        self._segments.append(segment)
        self._dirty = False

    @property
    def _active(self) -> _Segment:
        return self._segments[-1]

    def _segment_max(self) -> int:
        return max(4096, min(SEGMENT_MAX, self.max_bytes // 8))

    # -- appending ------------------------------------------------------------------------

    def append(self, items: Sequence[tuple[str, str]]) -> None:
        """Queue ``(database, line)`` pairs; when this returns they survive a crash."""
        if not items:
            return
        with self._lock:
            if self._closed is not None:
                raise RuntimeError(f"queue {self.name} is closed")
            now = self.clock()
            seq = self._next_seq
            blob = b"".join(_pack(seq + i, db, line, now) for i, (db, line) in enumerate(items))
            if not self._active.empty and self._active.size + len(blob) > self._segment_max():
                self._rotate()
            self._write(blob)
            segment = self._active
            if segment.empty:
                segment.first_seq = seq
            segment.last_seq = seq + len(items) - 1
            segment.size += len(blob)
            self._next_seq = seq + len(items)
            self._count += len(items)
            self._bytes += len(blob)
            if self._oldest is None:
                self._oldest = now
            self._dirty = True
            self._enforce_cap()
            if self.sync_interval <= 0:
                self.sync()

    def _write(self, blob: bytes) -> None:
        """Append ``blob`` whole (short writes are completed), or cut it off and raise."""
        view = memoryview(blob)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as err:
            try:  # no torn record may stay: it would hide every later one from a replay
                os.ftruncate(self._fd, self._active.size)
            except OSError:
                log.exception("queue %s: cannot cut a failed write off", self.name)
            raise OSError(
                err.errno,
                f"queue {self.name}: cannot append to {self._active.path}: {err.strerror}; "
                "the point was not queued",
            ) from err

    def _rotate(self) -> None:
        """Flush and close the full segment and start the next one."""
        if self._dirty:
            os.fdatasync(self._fd)
            self.fsyncs += 1
        os.close(self._fd)
        self._start_segment(self._active.number + 1)

    # -- reading and settling -------------------------------------------------------------

    def _scan_unsettled(self, after: int = -1) -> Iterator[Entry]:
        """Unsettled entries in order, with seq > ``after``, read from the segment files.

        Reading starts at the remembered position of the head where it can, so a drain
        does not parse the delivered part of a segment again and again.
        """
        start = max(self._head, after + 1)
        settled = self._settled
        for segment in list(self._segments):
            if segment.empty or segment.last_seq < start:
                continue
            offset = 0
            cursor = self._cursor
            if (
                cursor is not None
                and cursor[0] == segment.number
                and cursor[2] <= start
                and cursor[1] <= segment.size
            ):
                offset = cursor[1]
            try:
                with open(segment.path, "rb") as handle:
                    handle.seek(offset)
                    blob = handle.read(segment.size - offset)
            except FileNotFoundError:
                continue
            for stop, entry in _records(blob, check=False, first=start):
                if entry.seq not in settled:
                    if after < 0 and entry.seq == self._head:
                        self._cursor = (segment.number, offset + stop - entry.size, entry.seq)
                    yield entry

    def peek(self, max_lines: int, max_bytes: int, after: int = -1) -> list[Entry]:
        """The oldest unsettled entries of one database (seq > ``after``), up to the limits.

        At least one entry is returned when any is left; ``after`` lets a sender read past
        a batch that is still in flight.
        """
        with self._lock:
            if self._closed is not None or not self._count:
                return []
            batch: list[Entry] = []
            size = 0
            for entry in self._scan_unsettled(after):
                if batch and (
                    len(batch) >= max_lines
                    or entry.db != batch[0].db
                    or size + entry.size > max_bytes
                ):
                    break
                batch.append(entry)
                size += entry.size
            return batch

    def remove(self, entries: Sequence[Entry]) -> None:
        """Forget entries the server accepted."""
        with self._lock:
            settled = self._settle(entries)
            if settled:
                self._count_up("delivered", settled)
                self._counters["last_delivery"] = self.clock()

    def quarantine(self, entries: Sequence[Entry], reason: str) -> None:
        """Move entries the server refused for good aside, with the server's reason."""
        if not entries:
            return
        with self._lock:
            if self._closed is not None:
                return
            now = self.clock()
            self._settle(entries)
            self._count_up("quarantined", len(entries))
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO quarantine (seq, db, line, reason, queued, quarantined)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(e.seq, e.db, e.line, reason, e.queued, now) for e in entries],
            )
            self._held_bytes += sum(len(e.data) for e in entries)
            self._cap_quarantine()
            self._write_counters()
            self._db.execute("COMMIT")
            self._held_dirty = True

    def _cap_quarantine(self) -> None:
        """Quarantine may hold a tenth of the queue's cap; beyond it the oldest go, counted."""
        limit = self.max_bytes // 10
        if self._held_bytes <= limit:
            return
        doomed, freed = [], 0
        for row_id, size in self._db.execute(
            "SELECT id, length(CAST(line AS BLOB)) FROM quarantine ORDER BY id"
        ):
            if self._held_bytes - freed <= limit * 0.9:
                break
            doomed.append((row_id,))
            freed += size
        self._db.executemany("DELETE FROM quarantine WHERE id = ?", doomed)
        self._held_bytes -= freed
        self._count_up("dropped", len(doomed))
        log.warning(
            "queue %s: quarantine is full (%.2f MB); dropped the %d oldest refused points "
            "(counted in `sensorkit status`)",
            self.name,
            limit / 1e6,
            len(doomed),
        )

    def _settle(self, entries: Sequence[Entry]) -> int:
        """Mark entries settled; returns how many were not settled already."""
        fresh = 0
        for entry in entries:
            if entry.seq < self._head or entry.seq in self._settled:
                continue
            if entry.seq >= self._next_seq:
                continue
            self._settled.add(entry.seq)
            self._count -= 1
            self._bytes -= entry.size
            fresh += 1
        self._advance_head()
        if self._dropping and self._bytes < self.max_bytes // 2:
            self._dropping = False
            log.warning(
                "queue %s: below half its cap again; %d points dropped in all",
                self.name,
                self._counters.get("dropped", 0),
            )
        return fresh

    def _advance_head(self) -> None:
        before = self._head
        while self._head in self._settled:
            self._settled.discard(self._head)
            self._head += 1
        if not self._count:
            self._head = self._next_seq
            self._settled.clear()
        if self._head != before or not self._count:
            self._oldest = None  # recomputed lazily by stats()

    # -- durability -----------------------------------------------------------------------

    def sync(self) -> None:
        """Make what is undelivered durable (one fdatasync) and drop settled segments."""
        with self._lock:
            if self._closed is not None:
                return
            if self._held_dirty:  # quarantined points last before their segment may go
                self._db.execute("PRAGMA synchronous=FULL")
                self.flush_counters(force=True)
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._held_dirty = False
                self.fsyncs += 1
            self._compact()
            if self._dirty and not self._active.empty:
                os.fdatasync(self._fd)
                self.fsyncs += 1
            self._dirty = False
            self._write_head()
            if time.monotonic() - self._counters_written >= COUNTERS_EVERY:
                self.flush_counters()
            self._last_sync = time.monotonic()

    def _compact(self) -> None:
        """Delete segments every point of which is settled; empty the active one if it is."""
        for segment in self._segments[:-1]:
            if segment.last_seq < self._head:
                segment.path.unlink(missing_ok=True)
        self._segments = [s for s in self._segments[:-1] if s.last_seq >= self._head] + [
            self._active
        ]
        active = self._active
        if not active.empty and active.last_seq < self._head:
            os.ftruncate(self._fd, 0)  # all delivered: the page cache never reaches the card
            active.size, active.last_seq = 0, -1
            self._cursor = None
            self._dirty = False

    def _write_head(self, always: bool = False) -> None:
        """Record the head when points remain on disk and it moved (a drain, a drop)."""
        on_disk = any(not s.empty for s in self._segments)
        if self._head == self._head_written or not (on_disk or always):
            return
        tmp = self._head_path.with_suffix(".tmp")
        tmp.write_text(f"{self._head}\n")
        os.replace(tmp, self._head_path)
        self._head_written = self._head

    def maybe_sync(self) -> None:
        """:meth:`sync` when ``sync_interval`` has passed since the last one."""
        if time.monotonic() - self._last_sync >= self.sync_interval:
            self.sync()

    def flush_counters(self, force: bool = False) -> None:
        """Persist delivery counters (done at close, on drops and quarantine, and hourly)."""
        with self._lock:
            if (self._counters_dirty or force) and self._closed is None:
                self._db.execute("BEGIN")
                self._write_counters()
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._closed is not None:
                return
            try:
                self.sync()
                self._write_head(always=True)
                self.flush_counters()
                self._closed = self.stats()
            finally:
                if self._closed is None:
                    self._closed = {}
                os.close(self._fd)
                if self._active.empty:
                    self._active.path.unlink(missing_ok=True)
                self._db.close()
                os.close(self._lockfile)

    # -- status ---------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._count

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, object]:
        """Depth, bytes, oldest queued time, counters: the queue's part of ``status``."""
        with self._lock:
            if self._closed is not None:
                return dict(self._closed)
            if self._oldest is None and self._count:
                first = next(self._scan_unsettled(), None)
                self._oldest = first.queued if first else None
            held = self._db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            return {
                "queued": self._count,
                "queued_bytes": self._bytes,
                "oldest_queued": self._oldest,
                "quarantined": held,
                "dropped": self._counters.get("dropped", 0),
                "delivered": self._counters.get("delivered", 0),
                "last_delivery": self._counters.get("last_delivery"),
            }

    # -- internals ------------------------------------------------------------------------

    def _enforce_cap(self) -> None:
        if self._bytes <= self.max_bytes:
            return
        target = int(self.max_bytes * 0.9)  # drop in chunks: one head write per chunk
        doomed = []
        freed = 0
        for entry in self._scan_unsettled():
            if self._bytes - freed <= target:
                break
            doomed.append(entry)
            freed += entry.size
        self._settle(doomed)
        self._count_up("dropped", len(doomed))
        self._compact()
        self._write_head()
        self.flush_counters()
        if doomed and not self._dropping:
            self._dropping = True
            log.warning(
                "queue %s is full (cap %.2f MB): dropping the oldest points (%d now); "
                "every drop is counted in `sensorkit status`; raise [influx] queue_max_mb "
                "to keep more",
                self.name,
                self.max_bytes / 1e6,
                len(doomed),
            )

    def note(self, key: str, value: object) -> None:
        """Keep a fact about delivery (e.g. the last error) with the counters on disk."""
        with self._lock:
            if self._counters.get(key) != value:
                self._counters[key] = value
                self._counters_dirty = True

    def _count_up(self, key: str, n: int) -> None:
        self._counters[key] = self._counters.get(key, 0) + n
        self._counters_dirty = True

    def _write_counters(self) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO counters (key, value) VALUES (?, ?)", self._counters.items()
        )
        self._counters_dirty = False
        self._counters_written = time.monotonic()


def read_stats(directory: str | os.PathLike[str], name: str) -> dict[str, object] | None:
    """A queue's stats read without opening it for writing (for ``status``); None if absent."""
    directory = Path(directory)
    path = directory / f"{name}.sqlite3"
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        held = {seq for (seq,) in db.execute("SELECT seq FROM quarantine")}
        counters = dict(db.execute("SELECT key, value FROM counters").fetchall())
    finally:
        db.close()
    found = _scan(directory, name, held)
    return {
        "queued": found.count,
        "queued_bytes": found.bytes,
        "oldest_queued": found.oldest,
        "quarantined": len(held),
        "dropped": counters.get("dropped", 0),
        "delivered": counters.get("delivered", 0),
        "last_delivery": counters.get("last_delivery"),
        "last_error": counters.get("last_error"),
        "last_error_time": counters.get("last_error_time"),
    }


def read_quarantine(directory: str | os.PathLike[str], name: str) -> list[QuarantinedPoint]:
    """Quarantined points, read-only (safe while the agent runs)."""
    path = Path(directory) / f"{name}.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT id, db, line, reason, queued, quarantined FROM quarantine ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    return [QuarantinedPoint(*row) for row in rows]


def release_quarantined(directory: str | os.PathLike[str], name: str, ids: Sequence[int]) -> None:
    """Delete quarantined points by id (after they were re-sent successfully)."""
    db = sqlite3.connect(Path(directory) / f"{name}.sqlite3", timeout=30)
    try:
        with db:
            db.executemany("DELETE FROM quarantine WHERE id = ?", [(i,) for i in ids])
    finally:
        db.close()
