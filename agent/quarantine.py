"""Points the server refused for good, kept with its reason in SQLite until a person acts.

The store is created on the first refusal, so a kit whose points all go through never writes
it. Each refusal is committed durably at once (refusals are rare); readers (``status``,
``sensorkit quarantine``) open it read-only while the agent runs, and cope with a file that
is missing, empty or half made (a full disk).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER, db TEXT NOT NULL, line TEXT NOT NULL,
    reason TEXT NOT NULL, queued REAL NOT NULL, quarantined REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settled (seq INTEGER PRIMARY KEY);
"""
# ``settled``: sequence numbers of points that left the quarantine (dropped when it was full,
# or released after a resend). Their lines may still lie in a segment above the head: the
# queue must keep them settled after a restart, or they would be sent again.


@dataclass(frozen=True)
class QuarantinedPoint:
    id: int
    db: str
    line: str
    reason: str
    queued: float
    quarantined: float


class QuarantineStore:
    """The quarantine of one queue: ``<state_dir>/<name>.sqlite3``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if _has_table(path, "quarantine"):
            self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=DELETE")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    def add(self, rows: Sequence[tuple[int, str, str, str, float, float]]) -> None:
        """Keep ``(seq, db, line, reason, queued, quarantined)`` rows; durable on return."""
        with self._lock:
            db = self._connect()
            db.execute("BEGIN")
            try:
                db.executemany(
                    "INSERT INTO quarantine (seq, db, line, reason, queued, quarantined)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute("COMMIT")
            except sqlite3.Error:
                db.execute("ROLLBACK")
                raise

    def seqs_from(self, first: int) -> list[int]:
        """Sequence numbers of held points at or above ``first``, and of points that left the
        quarantine (all settled in the queue)."""
        with self._lock:
            if self._db is None:
                return []
            return [
                s
                for (s,) in self._db.execute(
                    "SELECT seq FROM quarantine WHERE seq >= ? UNION "
                    "SELECT seq FROM settled WHERE seq >= ? ORDER BY seq",
                    (first, first),
                )
            ]

    def forget_below(self, head: int) -> None:
        """Points below the queue's head need no marking as settled any more."""
        with self._lock:
            if self._db is not None:
                self._db.execute("DELETE FROM settled WHERE seq < ?", (head,))

    def top(self) -> int:
        """One past the highest sequence number held or marked settled (0 when none)."""
        with self._lock:
            if self._db is None:
                return 0
            return self._db.execute(
                "SELECT coalesce(max(seq) + 1, 0) FROM"
                " (SELECT seq FROM quarantine UNION ALL SELECT seq FROM settled)"
            ).fetchone()[0]

    def count(self) -> int:
        with self._lock:
            if self._db is None:
                return 0
            return self._db.execute("SELECT count(*) FROM quarantine").fetchone()[0]

    def size(self) -> int:
        """Bytes of the held lines."""
        with self._lock:
            if self._db is None:
                return 0
            return self._db.execute(
                "SELECT coalesce(sum(length(CAST(line AS BLOB))), 0) FROM quarantine"
            ).fetchone()[0]

    def drop_oldest(self, limit: int) -> int:
        """Delete the oldest held points until their lines take at most ``limit`` bytes * 0.9
        (when they take more than ``limit``); returns how many went."""
        with self._lock:
            if self._db is None:
                return 0
            held = self._db.execute(
                "SELECT coalesce(sum(length(CAST(line AS BLOB))), 0) FROM quarantine"
            ).fetchone()[0]
            if held <= limit:
                return 0
            doomed, freed = [], 0
            for row_id, size in self._db.execute(
                "SELECT id, length(CAST(line AS BLOB)) FROM quarantine ORDER BY id"
            ):
                if held - freed <= limit * 0.9:
                    break
                doomed.append((row_id,))
                freed += size
            self._db.execute("BEGIN")
            try:
                _leave(self._db, doomed)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
            return len(doomed)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _has_table(path: Path, table: str) -> bool:
    """True when ``path`` is an SQLite file that holds ``table`` (not missing, empty or broken)."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return bool(
                db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).fetchone()
            )
        finally:
            db.close()
    except sqlite3.Error:
        return False


def read_quarantine(path: Path) -> list[QuarantinedPoint]:
    """Every held point, read-only (safe while the agent runs); [] when there is none."""
    if not _has_table(path, "quarantine"):
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT id, db, line, reason, queued, quarantined FROM quarantine ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    return [QuarantinedPoint(*row) for row in rows]


def count_quarantined(path: Path) -> int:
    if not _has_table(path, "quarantine"):
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    finally:
        db.close()


def held_from(path: Path, first: int) -> int:
    """How many points settled through the quarantine (held, or left it since) have a
    sequence number at or above ``first`` (read-only)."""
    if not _has_table(path, "quarantine"):
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        query = "SELECT seq FROM quarantine WHERE seq >= ?"
        args: tuple[int, ...] = (first,)
        if _has_table(path, "settled"):
            query += " UNION SELECT seq FROM settled WHERE seq >= ?"
            args = (first, first)
        return db.execute(f"SELECT count(*) FROM ({query})", args).fetchone()[0]
    finally:
        db.close()


def _leave(db: sqlite3.Connection, ids: Sequence[tuple[int]]) -> None:
    """Delete held points by id, keeping their sequence numbers as settled (in a transaction)."""
    db.executemany(
        "INSERT OR IGNORE INTO settled (seq) SELECT seq FROM quarantine WHERE id = ? AND seq >= 0",
        ids,
    )
    db.executemany("DELETE FROM quarantine WHERE id = ?", ids)


def release(path: Path, ids: Iterable[int]) -> None:
    """Delete held points by id (after they were re-sent successfully)."""
    ids = [(i,) for i in ids]
    if not ids or not _has_table(path, "quarantine"):
        return
    db = sqlite3.connect(path, timeout=30)
    try:
        db.executescript(_SCHEMA)
        with db:
            _leave(db, ids)
    finally:
        db.close()


def legacy_counters(path: Path) -> dict[str, object]:
    """Counters an earlier version kept in the same SQLite file (read once, to carry over)."""
    if not _has_table(path, "counters"):
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT key, value FROM counters").fetchall())
    finally:
        db.close()


def settled_from(path: Path, first: int) -> set[int]:
    """Sequence numbers at or above ``first`` settled through the quarantine (held, or left
    it since), read-only: points whose loss to damage costs nothing more."""
    if not _has_table(path, "quarantine"):
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        seqs = {s for (s,) in db.execute("SELECT seq FROM quarantine WHERE seq >= ?", (first,))}
        if _has_table(path, "settled"):
            seqs |= {s for (s,) in db.execute("SELECT seq FROM settled WHERE seq >= ?", (first,))}
        return seqs
    finally:
        db.close()
