"""``sensorkit subscribe``: kit databases on an InfluxDB server read back as telegrams, each
data point handed on exactly once, in time order, to the relays (console, influx).

For each kit database (listed with ``SHOW DATABASES`` and matched by ``[subscriber] projects``
and ``serials``, or named in ``databases``): every ``info`` record becomes an ident, every
``data`` point after the cursor a data telegram under the ident in force at its time (the
newest ``info`` at or before it). Points are read with ``chunked=true``, ``batch`` rows at a
time; at least once a second while reading, and at the end, the relays commit (make what
they were handed durable) and then the cursor is saved (:mod:`agent.cursor`).

Server replies follow :func:`agent.classify.classify_read`: an outage backs off and keeps the
cursor; 401 is one clear message (``--once`` fails with it); 403 holds that database (no READ
grant), the others go on; a database that is gone is skipped, saying so.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from pathlib import Path

from agent import cursor as cursors
from agent.classify import Reply, Verdict, classify_read
from agent.config import SubscriberSettings
from agent.cursor import Cursor
from agent.delivery import Backoff
from agent.errors import SensorkitError
from agent.influx import InfluxClient, InfluxError, quote_ident
from agent.readback import DataColumns, Key, ident_of
from agent.relay import Relay
from agent.telegram import Ident

log = logging.getLogger("sensorkit.subscribe")
_time = itemgetter(0)
NANOSECONDS = 1_000_000_000
COMMIT_EVERY = 1.0  # seconds of reading between commits (relays durable, then the cursor)
OUTAGE_BACKOFF = Backoff(cap=300, slow=300)  # seconds between tries while the server is away


class SubscribeError(SensorkitError):
    """A failure the subscriber cannot get past by waiting (exit code 1)."""

    exit_code = 1


@dataclass(frozen=True)
class Outcome:
    """What one pass over the databases did."""

    points: int = 0  # data points handed on
    failed: tuple[str, ...] = ()  # databases that could not be read (fully), and why


class _Idents:
    """A database's idents in time order: which one is in force at a given second."""

    def __init__(self, idents: Sequence[Ident]) -> None:
        self.idents = sorted(idents, key=lambda i: i.time or 0)
        self.times = [i.time or 0 for i in self.idents]

    def at(self, second: int) -> Ident | None:
        """The newest ident at or before ``second`` (the oldest one for earlier points)."""
        return self.span(second)[0]

    def span(self, second: int) -> tuple[Ident | None, float, float]:
        """The ident in force at ``second`` and the seconds ``[low, high)`` it is in force."""
        if not self.idents:
            return None, -math.inf, math.inf
        index = max(bisect.bisect_right(self.times, second) - 1, 0)
        low = self.times[index] if index else -math.inf
        high = self.times[index + 1] if index + 1 < len(self.times) else math.inf
        return self.idents[index], low, high

    def after(self, floor: int | None) -> list[Ident]:
        """The idents newer than ``floor`` (all of them when None)."""
        return [i for i in self.idents if floor is None or (i.time or 0) > floor]


class Subscriber:
    """Reads kit databases from one server into relays; one pass per :meth:`run_once`."""

    def __init__(
        self,
        settings: SubscriberSettings,
        state_dir: Path,
        client: InfluxClient,
        relays: Sequence[Relay],
        stop: threading.Event,
        since: int | None = None,
    ) -> None:
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.client = client
        self.relays = list(relays)
        self.stop = stop
        self.since = since  # --since: start every database here once, ignoring its cursor
        self._said: dict[str, str] = {}  # database (or "") -> the last problem logged

    # -- which databases ------------------------------------------------------------------

    def databases(self) -> list[str]:
        """The kit databases to read: ``databases`` as given, else the listed ones that match."""
        if self.settings.databases:
            return list(self.settings.databases)
        try:
            names = self.client.databases()
        except InfluxError as err:
            if err.status in (401, 403) or "admin" in err.server_message:
                raise SubscribeError(self._listing_refused(err)) from None
            raise
        matched = [n for n in names if self.settings.matches(n)]
        if not matched:
            self._say(
                "",
                f"no database at {self.client.url} matches [subscriber] projects "
                f"{self.settings.projects!r} and serials {self.settings.serials!r} (listed "
                f"{len(names)}); a user without admin rights sees only the databases it may "
                "read: grant READ, or name them in [subscriber] databases",
            )
        return matched

    def _listing_refused(self, err: InfluxError) -> str:
        if err.status == 401:
            return str(err)
        return (
            f"{self.client.who()} may not list databases ({err.status} {err.server_message}): "
            "SHOW DATABASES needs admin rights; name the kit databases in [subscriber] "
            "databases (e.g. databases = BdP_test_sense, BdP_1234) or use an admin user"
        )

    # -- one pass ---------------------------------------------------------------------------

    def run_once(self) -> Outcome:
        """Read every database once, up to what the server holds now."""
        points, failed = 0, []
        for db in self.databases():
            if self.stop.is_set():
                break
            try:
                points += self.read(db)
            except InfluxError as err:
                verdict = classify_read(Reply(err.status, err.server_message, str(err)))
                if verdict is Verdict.RETRY_SLOWLY and err.status == 401:
                    raise SubscribeError(str(err)) from None
                if verdict is Verdict.RETRY:
                    raise  # the server is away: the whole pass backs off
                why = str(err)
                if verdict is Verdict.SKIP:
                    why = f"database {db!r} is not at {self.client.url} (any more); skipped it"
                self._say(db, why)
                failed.append(f"{db}: {why}")
            else:
                self._said.pop(db, None)
        self.since = None  # --since applies to the first pass only
        return Outcome(points, tuple(failed))

    def follow(self, backoff: Backoff = OUTAGE_BACKOFF) -> None:
        """Pass after pass, ``poll`` seconds apart, until stopped; outages back off."""
        failures = 0
        while not self.stop.is_set():
            try:
                self.run_once()
                failures = 0
                delay = self.settings.poll
            except (InfluxError, SubscribeError) as err:
                failures += 1
                slow = isinstance(err, SubscribeError)
                delay = backoff.delay(failures, slow=slow)
                self._say("", f"{err}; retrying in {delay:.0f} s (the cursors stay)")
            self.stop.wait(delay)

    def _say(self, key: str, message: str) -> None:
        """Log a problem once per change, not once per retry."""
        if self._said.get(key) != message:
            log.warning("%s", message)
            self._said[key] = message

    # -- one database -----------------------------------------------------------------------

    def read(self, db: str) -> int:
        """Hand on what ``db`` holds past its cursor; returns the data points handed on."""
        try:
            cursor = cursors.load(self.state_dir, db)
        except ValueError as err:
            raise SubscribeError(str(err)) from None
        if self.since is not None:
            cursor = Cursor(db, offset=cursor.offset, output=cursor.output)
        lateness = self.settings.lateness
        start = cursor.start(lateness, self.since)
        idents = _Idents(self._idents(db))
        cursor = replace(cursor, newest=self._newest(db), checked=time.time())
        floor = cursor.info_time
        if floor is None and start > 0 and (first := idents.at(start)) is not None:
            floor = (first.time or 0) - 1  # --since: the ident in force then, not older ones
        pending = idents.after(floor)
        statement = f"SELECT * FROM data WHERE time >= {int(start) * NANOSECONDS}"
        total = 0
        done: list[Key] = []  # handed on since the last commit
        info_done: int | None = None
        committed = time.monotonic()
        for chunk in self.client.stream(statement, db, self.settings.batch):
            keys: list[Key] = []
            info_time = None
            for series in _series(chunk):
                columns = DataColumns(series["columns"])
                key_of, seen = columns.key, cursor.seen
                rows: list = []  # rows under ``ident``, handed on together
                ident, low, high = None, 0.0, -1.0
                next_info = (pending[0].time or 0) if pending else math.inf
                pad = columns.pad
                for values in series.get("values", ()):
                    row = tuple(values) + pad if pad else values
                    key = key_of(row)
                    if key in seen:
                        continue
                    second = key[0]
                    if second >= next_info or not low <= second < high:  # another ident
                        self._hand(db, ident, columns, rows)
                        rows = []
                        while pending and (pending[0].time or 0) <= second:
                            info_time = self._ident(db, pending.pop(0))
                        next_info = (pending[0].time or 0) if pending else math.inf
                        ident, low, high = idents.span(second)
                        if ident is None:
                            self._say(db, f"database {db!r} has data but no info record; skipped")
                            return total
                    rows.append(row)
                    keys.append(key)
                self._hand(db, ident, columns, rows)
            done.extend(keys)
            if done:  # only the keys within lateness of the newest go into the cursor
                del done[: bisect.bisect_left(done, done[-1][0] - lateness, key=_time)]
            if info_time is not None:
                info_done = info_time
            total += len(keys)
            if self.stop.is_set() or time.monotonic() - committed >= COMMIT_EVERY:
                cursor = self._commit(cursor.advance(done, lateness, info_done))
                done, info_done, committed = [], None, time.monotonic()
                if self.stop.is_set():
                    return total
        cursor = cursor.advance(done, lateness, info_done)
        if pending:  # idents newer than every data point: the kit changed, nothing measured yet
            info_time = None
            for ident in pending:
                info_time = self._ident(db, ident)
            cursor = cursor.advance((), lateness, info_time)
        self._commit(cursor)
        return total

    def _hand(self, db: str, ident: Ident | None, columns: DataColumns, rows: list) -> None:
        """Rows that share an ident, to every relay."""
        if rows and ident is not None:
            for relay in self.relays:
                relay.data(db, ident, columns, rows)

    def _ident(self, db: str, ident: Ident) -> int | None:
        for relay in self.relays:
            relay.ident(db, ident)
        return ident.time

    def _commit(self, cursor: Cursor) -> Cursor:
        """Relays first (durable), then the cursor: a crash in between repeats, never skips."""
        for relay in self.relays:
            offset = relay.commit()
            if offset is not None:
                cursor = replace(cursor, offset=offset, output=getattr(relay, "path", None))
        cursors.save(self.state_dir, cursor)
        return cursor

    def _idents(self, db: str) -> list[Ident]:
        out = []
        for chunk in self.client.stream("SELECT * FROM info", db, self.settings.batch):
            for series in _series(chunk):
                for values in series.get("values", ()):
                    try:
                        out.append(ident_of(series["columns"], values))
                    except ValueError as err:
                        self._say(f"{db} info", f"database {db!r}: {err}; left out")
        return out

    def _newest(self, db: str) -> int | None:
        """The newest data time ``db`` holds (for ``status``: how far behind)."""
        statement = "SELECT * FROM data ORDER BY time DESC LIMIT 1"
        for chunk in self.client.stream(statement, db, 1):
            for series in _series(chunk):
                for values in series.get("values", ()):
                    return int(values[series["columns"].index("time")])
        return None


def _series(chunk: dict) -> list[dict]:
    results = chunk.get("results") or [{}]
    return results[0].get("series") or []


def committed_offset(state_dir: Path, path: str) -> int | None:
    """The largest console file size a cursor recorded for ``path`` (what was committed)."""
    offsets = [c.offset for c in cursors.load_all(state_dir) if c.output == path and c.offset]
    return max(offsets, default=None)


__all__ = ["Outcome", "SubscribeError", "Subscriber", "committed_offset", "quote_ident"]
