"""The durable queue an output owns: nothing accepted is lost to a crash, an outage or a reboot.

Two files under ``state_dir``:

- ``<name>.journal``: every append is one ``write()`` of CRC-checked records to this file
  before :meth:`DurableQueue.append` returns, so it survives ``kill -9`` at once. It is not
  fsynced: it only bridges the time until the next group commit.
- ``<name>.sqlite3`` (WAL): every ``sync_interval`` seconds, what is still undelivered moves
  from the journal into SQLite in one transaction with one fsync, and the journal is emptied.
  A power cut can therefore cost at most ``sync_interval`` seconds of undelivered data
  (``sync_interval = 0``: every append is committed with an fsync before it returns).

An append either reaches the journal whole or not at all (a failed write, e.g. a full disk, is
cut back off and raised). Points quarantined or dropped by the cap leave the journal at once
(the rest moves to SQLite), so a crash never brings them back; points delivered from the
journal may be re-sent after a crash, which stores no duplicate. The WAL is checkpointed when
it grows past a few MB, so it stays small during a long outage too.

Online, points are usually delivered before the next group commit, so they never touch
SQLite: an SD card sees the journal's small sequential writes and almost no fsyncs. Entries
leave in order (oldest first); a point re-sent after a crash is the same point to InfluxDB,
so at-least-once delivery stores no duplicates.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sensorkit.buffer")

_HEADER = struct.Struct(">IQdHI")  # crc32, seq, queued time, len(db), len(line)
_ROW_OVERHEAD = 48  # bytes a queued row costs beyond its text, for the size cap

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY, db TEXT NOT NULL, line TEXT NOT NULL, queued REAL NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, db TEXT NOT NULL, line TEXT NOT NULL,
    reason TEXT NOT NULL, queued REAL NOT NULL, quarantined REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value);
"""


@dataclass(frozen=True)
class Entry:
    """One queued point: its order, its database and its line of line protocol."""

    seq: int
    db: str
    line: str
    queued: float

    @property
    def size(self) -> int:
        return len(self.line.encode()) + len(self.db) + _ROW_OVERHEAD


@dataclass(frozen=True)
class QuarantinedPoint:
    id: int
    db: str
    line: str
    reason: str
    queued: float
    quarantined: float


class QueueBusy(RuntimeError):
    """Another process holds this queue (a second agent, or a publish still running)."""


class DurableQueue:
    """A size-capped, crash-safe FIFO of ``(database, line)`` entries. Thread-safe."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        name: str,
        max_bytes: int = 64 * 1024 * 1024,
        sync_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.max_bytes = max_bytes
        self.sync_interval = sync_interval
        self.clock = clock
        self.fsyncs = 0  # group commits and checkpoints, for benchmarks and status
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
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints are ours: see _checkpoint
        self._db.executescript(_SCHEMA)
        self._pending: dict[int, Entry] = {}
        self._pending_bytes = 0
        self._counters = dict(self._db.execute("SELECT key, value FROM counters").fetchall())
        self._counters_dirty = False
        self._dropping = False
        self._stored_count = self._stored_bytes = 0
        self._recount()
        top = self._db.execute("SELECT coalesce(max(seq), 0) FROM queue").fetchone()[0]
        self._journal_path = self.directory / f"{name}.journal"
        self._next_seq = max(top, self._replay_journal()) + 1
        self._journal = os.open(self._journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._journal_size = os.fstat(self._journal).st_size
        self._last_sync = self.clock()
        self._closed: dict[str, object] | None = None  # the last stats, once closed

    # -- appending ------------------------------------------------------------------------

    def append(self, items: Sequence[tuple[str, str]]) -> None:
        """Queue ``(database, line)`` pairs; when this returns they survive a crash."""
        if not items:
            return
        with self._lock:
            now = self.clock()
            entries = []
            for db, line in items:
                entries.append(Entry(self._next_seq + len(entries), db, line, now))
            blob = b"".join(_pack(entry) for entry in entries)
            self._write_journal(blob)
            self._next_seq += len(entries)
            for entry in entries:
                self._pending[entry.seq] = entry
                self._pending_bytes += entry.size
            self._enforce_cap()
            if self.sync_interval <= 0:
                self.sync()

    def _write_journal(self, blob: bytes) -> None:
        """Append ``blob`` whole (short writes are completed), or cut it off and raise."""
        view = memoryview(blob)
        try:
            while view:
                written = os.write(self._journal, view)
                view = view[written:]
        except OSError as err:
            try:  # no torn record may stay: it would hide every later one from a replay
                os.ftruncate(self._journal, self._journal_size)
            except OSError:
                log.exception("queue %s: cannot cut a failed write off the journal", self.name)
            raise OSError(
                err.errno,
                f"queue {self.name}: cannot append to {self._journal_path}: {err.strerror}; "
                "the point was not queued",
            ) from err
        self._journal_size += len(blob)

    # -- reading and settling -------------------------------------------------------------

    def peek(self, max_lines: int, max_bytes: int) -> list[Entry]:
        """The oldest entries of one database, up to the limits (at least one entry)."""
        with self._lock:
            if self._closed is not None:
                return []
            candidates: Sequence[Entry] = []
            if self._stored_count:
                rows = self._db.execute(
                    "SELECT seq, db, line, queued FROM queue ORDER BY seq LIMIT ?", (max_lines,)
                ).fetchall()
                candidates = [Entry(*row) for row in rows]
                if not candidates:  # a count gone wrong must not hide the journal's entries
                    self._recount()
            if not candidates:
                candidates = list(_first(self._pending.values(), max_lines))
            batch: list[Entry] = []
            size = 0
            for entry in candidates:
                if batch and (entry.db != batch[0].db or size + entry.size > max_bytes):
                    break
                batch.append(entry)
                size += entry.size
            return batch

    def remove(self, entries: Sequence[Entry]) -> None:
        """Forget entries the server accepted."""
        with self._lock:
            if self._closed is not None:  # a sender outliving close(): they are re-sent later
                return
            self._forget(entries)
            self._count("delivered", len(entries))
            self._set("last_delivery", self.clock())

    def quarantine(self, entries: Sequence[Entry], reason: str) -> None:
        """Move entries the server refused for good aside, with the server's reason."""
        if not entries:
            return
        with self._lock:
            if self._closed is not None:
                return
            now = self.clock()
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO quarantine (db, line, reason, queued, quarantined)"
                " VALUES (?, ?, ?, ?, ?)",
                [(e.db, e.line, reason, e.queued, now) for e in entries],
            )
            self._forget(entries, in_transaction=True)
            self._count("quarantined", len(entries))
            # The journal still holds the quarantined points: move what else it holds into
            # SQLite in this same commit and empty it, or a crash would queue them again.
            self._store_pending()
            self._db.execute("COMMIT")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self.fsyncs += 1
            self._truncate_journal()

    def _forget(self, entries: Sequence[Entry], in_transaction: bool = False) -> None:
        stored: list[Entry] = []
        for entry in entries:
            pending = self._pending.pop(entry.seq, None)
            if pending is not None:
                self._pending_bytes -= pending.size
            else:
                stored.append(entry)
        if stored:
            if not in_transaction:
                self._db.execute("BEGIN")
            deleted = self._db.executemany(
                "DELETE FROM queue WHERE seq = ?", [(e.seq,) for e in stored]
            ).rowcount
            if not in_transaction:
                self._db.execute("COMMIT")
                self._checkpoint_if_big()
            if deleted == len(stored):
                self._stored_count -= deleted
                self._stored_bytes -= sum(e.size for e in stored)
            else:  # some were dropped by the cap meanwhile: count afresh
                self._recount()
        if self._dropping and self.total_bytes < self.max_bytes // 2:
            self._dropping = False
            log.warning(
                "queue %s: below half its cap again; %d points dropped in all",
                self.name,
                self._counters.get("dropped", 0),
            )

    # -- durability -----------------------------------------------------------------------

    def sync(self) -> None:
        """Group commit: move what is still undelivered into SQLite with one fsync."""
        with self._lock:
            if self._closed is not None:
                return
            if self._pending:
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("BEGIN")
                self._store_pending()
                self._db.execute("COMMIT")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self.fsyncs += 1
                self._checkpoint_if_big()
            self._truncate_journal()
            self._last_sync = self.clock()

    def _store_pending(self) -> None:
        """Within a transaction: the journal's entries into the queue table, and counters."""
        self._db.executemany(
            "INSERT OR REPLACE INTO queue (seq, db, line, queued) VALUES (?, ?, ?, ?)",
            [(e.seq, e.db, e.line, e.queued) for e in self._pending.values()],
        )
        if self._counters_dirty:  # unchanged while the server is away: no page to rewrite
            self._write_counters()
        self._stored_count += len(self._pending)
        self._stored_bytes += self._pending_bytes
        self._pending.clear()
        self._pending_bytes = 0

    def _truncate_journal(self) -> None:
        """Empty the journal: call only once all it holds is committed or meant to go."""
        if self._journal_size:
            os.ftruncate(self._journal, 0)
            self._journal_size = 0

    def maybe_sync(self) -> None:
        """:meth:`sync` when ``sync_interval`` has passed since the last one."""
        if self.clock() - self._last_sync >= self.sync_interval:
            self.sync()

    def flush_counters(self) -> None:
        """Persist delivery counters (cheap; done at close and now and then)."""
        with self._lock:
            if self._counters_dirty:
                self._write_counters()

    def close(self) -> None:
        with self._lock:
            if self._closed is not None:
                return
            try:
                self.sync()
                self.flush_counters()
                self._closed = self.stats()
            finally:
                if self._closed is None:
                    self._closed = {}
                os.close(self._journal)
                self._db.close()
                os.close(self._lockfile)

    # -- status ---------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._stored_count + len(self._pending)

    @property
    def total_bytes(self) -> int:
        return self._stored_bytes + self._pending_bytes

    def stats(self) -> dict[str, object]:
        """Depth, bytes, oldest queued time, counters: the queue's part of ``status``."""
        with self._lock:
            if self._closed is not None:  # the last figures (status after the outputs closed)
                return dict(self._closed)
            oldest = self._db.execute("SELECT min(queued) FROM queue").fetchone()[0]
            if oldest is None and self._pending:
                oldest = next(iter(self._pending.values())).queued
            held = self._db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            return {
                "queued": self.depth,
                "queued_bytes": self.total_bytes,
                "oldest_queued": oldest,
                "quarantined": held,
                "dropped": self._counters.get("dropped", 0),
                "delivered": self._counters.get("delivered", 0),
                "last_delivery": self._counters.get("last_delivery"),
            }

    # -- internals ------------------------------------------------------------------------

    def _enforce_cap(self) -> None:
        if self.total_bytes <= self.max_bytes:
            return
        target = int(self.max_bytes * 0.95)
        dropped = 0
        if self._stored_count:
            rows = self._db.execute(
                "SELECT seq, length(CAST(line AS BLOB)) + length(db) FROM queue ORDER BY seq"
            )
            doomed, freed = [], 0
            for seq, size in rows:
                if self.total_bytes - freed <= target:
                    break
                doomed.append((seq,))
                freed += size + _ROW_OVERHEAD
            rows.close()
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM queue WHERE seq = ?", doomed)
            self._count("dropped", len(doomed))
            self._write_counters()
            self._db.execute("COMMIT")
            self._stored_count -= len(doomed)
            self._stored_bytes -= freed
            dropped += len(doomed)
            self._checkpoint_if_big()
        dropped_pending = 0
        while self._pending and self.total_bytes > target:
            seq = next(iter(self._pending))
            self._pending_bytes -= self._pending.pop(seq).size
            dropped_pending += 1
        if dropped_pending:
            # The journal still holds the dropped points: commit the rest and empty it, or a
            # crash would bring them back. From now on the oldest are in SQLite, dropped above.
            self._count("dropped", dropped_pending)
            dropped += dropped_pending
            self.sync()
        if dropped and not self._dropping:
            self._dropping = True
            log.warning(
                "queue %s is full (cap %.1f MB): dropping the oldest points (%d now); "
                "every drop is counted in `sensorkit status`; raise [influx] queue_max_mb "
                "to keep more",
                self.name,
                self.max_bytes / 1e6,
                dropped,
            )

    def _recount(self) -> None:
        count, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(CAST(line AS BLOB)) + length(db)), 0) FROM queue"
        ).fetchone()
        self._stored_count = count
        self._stored_bytes = size + count * _ROW_OVERHEAD

    def _count(self, key: str, n: int) -> None:
        self._counters[key] = self._counters.get(key, 0) + n
        self._counters_dirty = True

    def _set(self, key: str, value: object) -> None:
        self._counters[key] = value
        self._counters_dirty = True

    def _write_counters(self) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO counters (key, value) VALUES (?, ?)", self._counters.items()
        )
        self._counters_dirty = False

    def _checkpoint_if_big(self) -> None:
        wal = self.directory / f"{self.name}.sqlite3-wal"
        try:
            if wal.stat().st_size > 4 * 1024 * 1024:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.fsyncs += 2
        except FileNotFoundError:
            pass

    def _replay_journal(self) -> int:
        """Move journal records a crash left behind into SQLite; returns the highest seq."""
        try:
            blob = self._journal_path.read_bytes()
        except FileNotFoundError:
            return 0
        entries = list(_unpack_all(blob))
        if entries:
            self._db.execute("PRAGMA synchronous=FULL")  # durable before the journal goes
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO queue (seq, db, line, queued) VALUES (?, ?, ?, ?)",
                [(e.seq, e.db, e.line, e.queued) for e in entries],
            )
            self._db.execute("COMMIT")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._recount()
            log.info("queue %s: recovered %d points from the journal", self.name, len(entries))
        self._journal_path.unlink()
        return max((e.seq for e in entries), default=0)


def _pack(entry: Entry) -> bytes:
    db, line = entry.db.encode(), entry.line.encode()
    body = struct.pack(">QdHI", entry.seq, entry.queued, len(db), len(line)) + db + line
    return struct.pack(">I", zlib.crc32(body)) + body


def _unpack_all(blob: bytes):
    """Records from a journal; stops at the first torn or corrupt record (a power cut)."""
    offset = 0
    while offset + _HEADER.size <= len(blob):
        crc, seq, queued, db_len, line_len = _HEADER.unpack_from(blob, offset)
        end = offset + _HEADER.size + db_len + line_len
        if end > len(blob) or zlib.crc32(blob[offset + 4 : end]) != crc:
            log.warning("journal: a torn record at byte %d was left out (power cut?)", offset)
            return
        start = offset + _HEADER.size
        db = blob[start : start + db_len].decode()
        line = blob[start + db_len : end].decode()
        yield Entry(seq, db, line, queued)
        offset = end


def _first(entries, n: int):
    for i, entry in enumerate(entries):
        if i >= n:
            return
        yield entry


def read_stats(directory: str | os.PathLike[str], name: str) -> dict[str, object] | None:
    """A queue's stats read without opening it for writing (for ``status``); None if absent."""
    path = Path(directory) / f"{name}.sqlite3"
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        count, size, oldest = db.execute(
            "SELECT count(*), coalesce(sum(length(CAST(line AS BLOB)) + length(db)), 0),"
            " min(queued) FROM queue"
        ).fetchone()
        held = db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        counters = dict(db.execute("SELECT key, value FROM counters").fetchall())
    finally:
        db.close()
    try:
        journal = list(_unpack_all((Path(directory) / f"{name}.journal").read_bytes()))
    except FileNotFoundError:
        journal = []
    times = [e.queued for e in journal] + ([oldest] if oldest is not None else [])
    return {
        "queued": count + len(journal),
        "queued_bytes": size + count * _ROW_OVERHEAD + sum(e.size for e in journal),
        "oldest_queued": min(times, default=None),
        "quarantined": held,
        "dropped": counters.get("dropped", 0),
        "delivered": counters.get("delivered", 0),
        "last_delivery": counters.get("last_delivery"),
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
