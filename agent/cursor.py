"""Where the subscriber is in each kit database: one small JSON file per database.

A cursor holds the newest data time handed on (``time``) and the points handed on within the
``lateness`` window before it (``seen``: their time and series). A read asks for ``time >=
cursor.time - lateness`` and skips what ``seen`` holds, so nothing is repeated when several
series share a second, when a chunk ends inside a second, or when a point arrives late
(older than the cursor, within ``lateness``); a point in InfluxDB is unique per measurement,
tag set and time, so the keys are exact. A point that arrives more than ``lateness`` late is
not seen.

Files live in ``state_dir/subscriber/`` and are replaced atomically (temp file, fsync,
rename, fsync of the folder): after a crash or power cut a cursor is the old or the new one.
"""

from __future__ import annotations

import bisect
import json
import os
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from operator import itemgetter
from pathlib import Path

from agent.readback import Key

FOLDER = "subscriber"


@dataclass(frozen=True)
class Cursor:
    """One database's place (see the module docstring)."""

    database: str
    time: int | None = None  # newest data time handed on; None: nothing yet
    info_time: int | None = None  # newest info (ident) time handed on
    seen: frozenset[Key] = field(default_factory=frozenset)
    newest: int | None = None  # the server's newest data time when last looked at
    checked: float | None = None  # when the database was last read (UNIX time)
    offset: int | None = None  # size of the console file after this database's last write
    output: str | None = None  # that console file (an offset means nothing for another)

    def start(self, lateness: int, since: int | None = None) -> int:
        """The first second to ask for: ``since`` when given, else the cursor less
        ``lateness``, else the beginning (0)."""
        if since is not None:
            return since
        return 0 if self.time is None else max(0, self.time - lateness)

    def advance(self, keys: Iterable[Key], lateness: int, info_time: int | None) -> Cursor:
        """The cursor after handing on the points ``keys`` (and idents up to ``info_time``)."""
        keys = sorted(keys, key=_time)  # read in time order already: a quick pass
        times = [t for t in (self.time, keys[-1][0] if keys else None) if t is not None]
        newest = max(times, default=None)
        if newest is None:
            return replace(self, info_time=_later(self.info_time, info_time))
        floor = newest - lateness
        recent = keys[bisect.bisect_left(keys, floor, key=_time) :]
        kept = frozenset(k for k in self.seen if k[0] >= floor).union(recent)
        return replace(self, time=newest, seen=kept, info_time=_later(self.info_time, info_time))

    def behind(self) -> int | None:
        """Seconds of data on the server not yet handed on, as of the last look."""
        if self.newest is None:
            return None
        return max(0, self.newest - (self.time if self.time is not None else self.newest))


_time = itemgetter(0)


def _later(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def folder(state_dir: Path) -> Path:
    return Path(state_dir) / FOLDER


def cursor_path(state_dir: Path, database: str) -> Path:
    """The file of ``database``'s cursor (its name quoted; a very long one hashed)."""
    name = urllib.parse.quote(database, safe="")
    if len(name) > 200:
        import hashlib  # here only: it loads OpenSSL (some 3.7 MB of RSS)

        name = hashlib.sha256(database.encode()).hexdigest()
    return folder(state_dir) / f"{name}.cursor.json"


def to_json(cursor: Cursor) -> dict[str, object]:
    series = list(dict.fromkeys(key[1:] for key in cursor.seen))
    index = {tags: i for i, tags in enumerate(series)}
    return {
        "database": cursor.database,
        "time": cursor.time,
        "info_time": cursor.info_time,
        "newest": cursor.newest,
        "checked": cursor.checked,
        "offset": cursor.offset,
        "output": cursor.output,
        "series": [list(key) for key in series],
        "seen": sorted([key[0], index[key[1:]]] for key in cursor.seen),
    }


def from_json(data: dict) -> Cursor:
    series = [tuple(tags) for tags in data.get("series", [])]
    return Cursor(
        database=data["database"],
        time=data.get("time"),
        info_time=data.get("info_time"),
        seen=frozenset((int(t), *series[i]) for t, i in data.get("seen", [])),
        newest=data.get("newest"),
        checked=data.get("checked"),
        offset=data.get("offset"),
        output=data.get("output"),
    )


def load(state_dir: Path, database: str) -> Cursor:
    """The saved cursor of ``database``, or a fresh one; ValueError naming a damaged file."""
    path = cursor_path(state_dir, database)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Cursor(database)
    try:
        return from_json(json.loads(text))
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError(
            f"{path}: the cursor of database {database!r} is damaged; delete it to read that "
            "database from the start again (or run with --since)"
        ) from None


def load_all(state_dir: Path) -> list[Cursor]:
    """Every saved cursor under ``state_dir`` (damaged ones left out), for ``status``."""
    out = []
    for path in sorted(folder(state_dir).glob("*.cursor.json")):
        try:
            out.append(from_json(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue
    return out


def save(state_dir: Path, cursor: Cursor) -> None:
    """Replace the cursor's file atomically and durably."""
    path = cursor_path(state_dir, cursor.database)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(to_json(replace(cursor, checked=cursor.checked or time.time())))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
