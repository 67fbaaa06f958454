"""Delivery: a running output that owns its durable queue and moves batches to a sink.

:meth:`Delivery.send` encodes a telegram and appends its points to the queue (on disk before
it returns); a sender thread keeps up to ``in_flight`` batches travelling, each on a
connection of its own, and treats each write as a transaction: :func:`agent.classify.classify`
reads the reply, and the batch is settled, split, quarantined or kept. Failures back off:
the whole server for an outage, one database for a problem that is that database's alone
(no grant, not created), so its points do not hold back the others.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.buffer import Batch, DurableQueue
from agent.classify import Reply, Verdict, classify, classify_create, classify_target
from agent.counters import Counters, read_counters
from agent.influx import quote_ident
from agent.recovery import QueueStats, read_stats
from agent.sinks import Sink
from agent.telegram import Telegram

log = logging.getLogger("sensorkit.influx")

# Seconds past ``sync_interval`` the sender flushes with requests still in flight; it
# otherwise flushes right after settling, so points just delivered are never written out.
SYNC_LATE = 5.0

Encode = Callable[[Telegram], list[tuple[str, str]]]


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: base * 2**n seconds, at most ``cap``."""

    base: float = 1.0
    cap: float = 60.0
    slow: float = 300.0  # for problems a person must fix (401/403, no database)

    def delay(self, failures: int, slow: bool = False) -> float:
        ceiling = self.slow if slow else self.cap
        raw = min(ceiling, self.base * 2 ** max(0, failures - 1))
        return raw * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class DeliverySettings:
    batch_size: int = 5000
    batch_bytes: int = 4 * 1024 * 1024
    queue_bytes: int = 64 * 1024 * 1024
    sync_interval: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    in_flight: int = 3  # requests at once while a backlog drains
    close_grace: float = 5.0  # seconds close() gives a healthy sender to deliver what is queued


@dataclass(frozen=True)
class DeliveryStats:
    """A delivery's part of ``sensorkit status``."""

    url: str
    user: str | None
    queue: QueueStats
    last_error: str | None = None
    last_error_time: float | None = None
    retrying: bool = False
    lost: int = 0  # points the disk refused to queue
    held: dict[str, str] = field(default_factory=dict)  # database -> why it waits

    def as_json(self) -> dict[str, object]:
        """The flat form of ``status --json`` and of the agent's status snapshot."""
        out: dict[str, object] = {"kind": "queued", "url": self.url, "user": self.user}
        out.update(asdict(self.queue))
        out.update(
            last_error=self.last_error,
            last_error_time=self.last_error_time,
            retrying=self.retrying,
            lost=self.lost,
            held=dict(self.held),
        )
        return out


@dataclass(frozen=True)
class _Failure:
    """Why a batch was kept: the reply and its verdict."""

    reply: Reply
    verdict: Verdict
    db: str


@dataclass
class _State:
    """What the sender knows of its recent past; changed under :attr:`Delivery._lock`."""

    failures: int = 0
    problem: str = ""  # the current problem's key: a message is logged when it changes
    last_error: str = ""
    last_error_time: float | None = None
    retry_at: float = 0.0  # time.monotonic(): a clock step (NTP on a Pi) cannot stall us
    held: dict[str, tuple[float, str, int]] = field(default_factory=dict)  # db -> until, why, n
    ready: set[str] = field(default_factory=set)  # databases made ready
    warned: set[str] = field(default_factory=set)  # databases a "cannot list" was said for
    refusal: str = ""  # the last kind of refusal quarantined, logged once
    lost: int = 0
    losing: bool = False


class Delivery:
    """Telegrams -> encoded points -> durable queue -> batches -> sink; never loses one."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        directory: Path,
        queue_name: str,
        encode: Encode,
        settings: DeliverySettings = DeliverySettings(),
    ) -> None:
        self.name = name
        self.sink = sink
        self.encode = encode
        self.settings = settings
        self.counters = Counters(Path(directory) / f"{queue_name}.stats")
        self.queue = DurableQueue(
            directory,
            queue_name,
            max_bytes=settings.queue_bytes,
            sync_interval=settings.sync_interval,
            counters=self.counters,
        )
        self._lock = threading.Lock()
        self._state = _State(lost=int(self.counters.get("lost", 0)))  # type: ignore[call-overload]
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._gave_up = False  # wait_drained timed out: close() gives no extra grace
        self._flush_failing = False  # the last flush failed (said once)
        self._beat = time.monotonic()  # the sender's last turn, for the watchdog
        self._local = threading.local()  # each helper thread's own connection
        self._twins: list[Sink] = []

    # -- the output -------------------------------------------------------------------------

    def send(self, telegram: Telegram) -> None:
        """Encode and queue a telegram; the sender delivers it soon after."""
        self.accept(self.encode(telegram))

    def accept(self, points: Sequence[tuple[str, str]]) -> bool:
        """Queue ``(database, line)`` points; True when they are on disk.

        If the disk refuses them (full, read-only, a failing card) they cannot be kept: they
        are counted as ``lost`` in ``status`` (the count survives a restart) and said once
        per episode.
        """
        if not points:
            return True
        try:
            self.queue.append(points)
        except OSError as err:
            with self._lock:
                state = self._state
                state.lost += len(points)
                self.counters.set("lost", state.lost)
                if not state.losing:
                    log.error(
                        "%s; %d points lost (see `sensorkit status`)",
                        err.strerror or err,
                        state.lost,
                    )
                state.losing = True
            self.counters.flush(durable=True)
            return False
        with self._lock:
            if self._state.losing:
                log.warning("the queue accepts points again; %d were lost", self._state.lost)
                self._state.losing = False
        self._idle.clear()
        self._wake.set()
        return True

    def sync(self) -> None:
        """Make every point accepted so far durable now (one fdatasync), not at the next
        ``sync_interval``: the subscriber moves its cursor only after this."""
        self.queue.sync()

    def keep_aside(self, telegrams: Sequence[Telegram], reason: str, queued: float) -> None:
        """Quarantine telegrams that must not be sent, with the reason (``quarantine list``)."""
        points = [point for telegram in telegrams for point in self.encode(telegram)]
        if points:
            self.queue.keep_aside(points, reason, queued)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-sender", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """True while the sender thread takes its turns (at least one a second when well)."""
        running = self._thread is not None and self._thread.is_alive()
        return running and time.monotonic() - self._beat < 30

    def close(self) -> None:
        """Stop the sender; whatever is undelivered stays safely in the queue.

        A sender that is not failing first gets up to ``close_grace`` seconds to deliver
        what is queued (the last telegrams of ``sensorkit run``); a failing one stops at once.
        """
        running = self._thread is not None and self._thread.is_alive() and not self._gave_up
        deadline = time.monotonic() + self.settings.close_grace
        while running and self.queue.depth and not self.failing():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.set()
            self._idle.wait(min(0.02, remaining))
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.sink.timeout + 5)
        with self._lock:
            if self._state.last_error:  # for `sensorkit status` once this process is gone
                self.counters.set("last_error", self._state.last_error)
                self.counters.set("last_error_time", self._state.last_error_time)
        self.queue.close()
        self.counters.close()
        self.sink.close()

    def wait_drained(self, timeout: float, progress: Callable[[int], None] | None = None) -> bool:
        """Block until the queue is empty (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while self.queue.depth:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._gave_up = True
                return False
            self._wake.set()
            self._idle.wait(min(0.5, remaining))
            if progress:
                progress(self.queue.depth)
        return True

    @property
    def capacity(self) -> int:
        """The queue's cap in bytes."""
        return self.queue.max_bytes

    def queued_bytes(self) -> int:
        """Bytes the queue holds now (what the cap counts)."""
        return self.queue.queued_bytes()

    def failing(self) -> bool:
        """True while the server, or a database, does not take points (backing off)."""
        return bool(self._state.failures or self._state.held)

    def stats(self) -> DeliveryStats:
        now = time.monotonic()
        with self._lock:
            state = self._state
            held = {db: why for db, (until, why, _) in state.held.items() if until > now}
            return DeliveryStats(
                url=self.sink.url,
                user=self.sink.user,
                queue=self.queue.stats(),
                last_error=state.last_error or None,
                last_error_time=state.last_error_time,
                retrying=bool(state.failures),
                lost=state.lost,
                held=held,
            )

    def status(self) -> dict[str, object]:
        return self.stats().as_json() | {"queue": self.queue.name}

    # -- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        pool = ThreadPoolExecutor(self.settings.in_flight, f"{self.name}-send")
        flying: set[Future] = set()
        last: Batch | None = None  # the newest batch in flight: the next one follows it
        try:
            while not self._stopping.is_set():
                self._beat = time.monotonic()
                self._wake.clear()  # before looking at the queue: a send() from now on wakes us
                finished = {f for f in flying if f.done()}
                flying -= finished
                for future in finished:
                    self._settled(future)
                if finished:  # flush once what was delivered is settled: it never reaches the card
                    self._sync()
                now = time.monotonic()
                if now < self._state.retry_at:  # backing off: let what flies land, then wait
                    last = None
                    if flying:
                        wait(flying, timeout=1.0, return_when=FIRST_COMPLETED)
                        self._sync(late=SYNC_LATE)
                    else:
                        self._sync()
                        self._wake.wait(min(self._state.retry_at - now, 1.0))
                    continue
                last = self._launch(pool, flying, last)
                if not flying:
                    last = None
                    self._idle.set()
                    self._sync()
                    interval = self.settings.sync_interval
                    self._wake.wait(min(1.0, interval) if interval > 0 else 1.0)
                    continue
                wait(flying, timeout=1.0, return_when=FIRST_COMPLETED)
                self._sync(late=SYNC_LATE)  # a request that hangs does not hold the flush back
            wait(flying, timeout=self.sink.timeout + 1)
            for future in flying:
                if future.done():
                    self._settled(future)
        finally:
            pool.shutdown(wait=True)
            for sink in self._twins:
                sink.close()
            self._sync(now=True)

    def _launch(self, pool: ThreadPoolExecutor, flying: set[Future], last: Batch | None):
        """Put batches in flight up to the limit; returns the newest one launched."""
        now = time.monotonic()
        with self._lock:
            held = frozenset(db for db, (until, _, _) in self._state.held.items() if until > now)
            ready = set(self._state.ready)
        limit = self.settings.in_flight
        while len(flying) < limit:
            batch = self.queue.peek(
                self.settings.batch_size, self.settings.batch_bytes, after=last, exclude=held
            )
            if not batch:
                break
            if flying and batch.db not in ready:
                break  # the first batch for a database goes alone: it may create it
            flying.add(pool.submit(self._deliver, batch))
            last = batch
            if batch.db not in ready or self.queue.depth <= len(batch):
                break  # no backlog: one request is enough
        return last

    def _settled(self, future: Future) -> None:
        try:
            failure = future.result()
        except Exception:  # keep the sender alive whatever happens; the points stay queued
            log.exception("%s sender: unexpected error; retrying in 10 s", self.name)
            with self._lock:
                self._state.retry_at = time.monotonic() + 10.0
            return
        if isinstance(failure, _Failure):
            self._failed(failure)
        else:
            self._succeeded(failure)

    def _sync(self, late: float = 0.0, now: bool = False) -> None:
        """Flush the queue when due (``now``: at once); a failure is said once per episode."""
        try:
            if now:
                self.queue.sync()
            elif not self.queue.maybe_sync(late):
                return
        except OSError as err:
            if not self._flush_failing:
                log.error("%s sender: flush failed: %s", self.name, err)
            self._flush_failing = True
        else:
            self._flush_failing = False

    # -- one batch: a transaction -----------------------------------------------------------

    def _sink(self) -> Sink:
        """This thread's own connection to the destination."""
        sink = getattr(self._local, "sink", None)
        if sink is None:
            sink = self.sink.twin()
            self._local.sink = sink
            with self._lock:
                self._twins.append(sink)
        return sink

    def _deliver(self, batch: Batch) -> _Failure | str:
        """Make the database ready, write the batch, act on the verdict.

        Returns why the batch was kept, or the database when it was settled.
        """
        sink = self._sink()
        db = batch.db
        with self._lock:
            is_ready = db in self._state.ready
        if not is_ready:
            reply = sink.ready(db)
            verdict = classify_target(reply)
            if verdict is Verdict.QUARANTINE:
                self._refused(batch, reply)
                return db
            if verdict is not Verdict.READY:
                return _Failure(reply, verdict, db)
            self._made_ready(db, reply)
        return self._write(sink, batch, may_create=sink.may_create) or db

    def _made_ready(self, db: str, reply: Reply) -> None:
        with self._lock:
            self._state.ready.add(db)
            warn = reply.status == 403 and db not in self._state.warned
            self._state.warned.add(db)
        if reply.detail.startswith("created database"):
            log.info("%s", reply.detail)
        elif warn:
            log.warning("%s", reply.detail)

    def _write(self, sink: Sink, batch: Batch, may_create: bool) -> _Failure | None:
        reply = sink.write(batch.db, batch.body)
        verdict = classify(reply, len(batch), may_create)
        if verdict is Verdict.DELIVERED:
            self.queue.remove(batch)
            return None
        if verdict is Verdict.CREATE:
            with self._lock:
                self._state.ready.discard(batch.db)
            created = sink.create(batch.db)
            after = classify_create(created)
            if after is Verdict.QUARANTINE:
                self._refused(batch, created)
                return None
            if after is not Verdict.READY:
                return _Failure(created, after, batch.db)
            self._made_ready(batch.db, created)
            return self._write(sink, batch, may_create=False)  # 400/413 handled as usual
        if verdict is Verdict.SPLIT:
            for half in batch.split():
                failure = self._write(sink, half, may_create)
                if failure is not None:
                    return failure  # the rest stays queued for the retry
            return None
        if verdict is Verdict.QUARANTINE:
            self._refused(batch, reply)
            return None
        return _Failure(reply, verdict, batch.db)

    def _refused(self, batch: Batch, reply: Reply) -> None:
        """Points the server will never take: quarantined with its words, said once per kind."""
        reason = f"{reply.status}: {reply.message}" if reply.status else reply.message
        self.queue.quarantine(batch, reason)
        kind = reply.message[:60]
        with self._lock:
            first = kind != self._state.refusal
            self._state.refusal = kind
        if first:
            sample = batch[0].line[:200] if len(batch) else ""
            log.error(
                "InfluxDB refused points for good; quarantined them (see `sensorkit "
                "quarantine list`): %s: %s",
                reply.detail or reply.message,
                sample,
            )

    # -- after a batch ----------------------------------------------------------------------

    def _failed(self, failure: _Failure) -> None:
        reply, verdict = failure.reply, failure.verdict
        backoff = self.settings.backoff
        now = time.monotonic()
        with self._lock:
            state = self._state
            if verdict is Verdict.HOLD:  # this database waits; the others go on
                _, _, times = state.held.get(failure.db, (0.0, "", 0))
                delay = backoff.delay(times + 1, slow=True)
                state.held[failure.db] = (now + delay, str(reply), times + 1)
                state.ready.discard(failure.db)
            else:
                state.failures += 1
                delay = backoff.delay(state.failures, slow=verdict is not Verdict.RETRY)
                if reply.retry_after is not None:  # as the server asked, within reason
                    delay = min(max(delay, reply.retry_after), backoff.slow)
                state.retry_at = now + delay
            state.last_error = str(reply)
            state.last_error_time = time.time()
            problem = f"{reply.status}:{reply.message[:60]}" if reply.status else "network"
            changed = problem != state.problem
            state.problem = problem
        if changed:
            level = logging.WARNING if verdict is Verdict.RETRY else logging.ERROR
            log.log(
                level,
                "%s; %d points kept in the queue, retrying (next in %.0f s, backing off)",
                reply,
                self.queue.depth,
                delay,
            )

    def _succeeded(self, db: str) -> None:
        with self._lock:
            state = self._state
            recovered = bool(state.failures) or db in state.held
            state.held.pop(db, None)
            state.failures, state.retry_at = 0, 0.0
            if not state.held:
                state.problem = ""
        if recovered:
            log.info(
                "InfluxDB at %s accepts points again; %d still queued",
                self.sink.url,
                self.queue.depth,
            )


def offline_stats(directory: Path, queue_name: str, url: str = "", user: str | None = None):
    """A delivery's stats read from disk while no process holds its queue; None if absent."""
    queue = read_stats(directory, queue_name)
    if queue is None:
        return None
    counters = read_counters(Path(directory) / f"{queue_name}.stats")
    return DeliveryStats(
        url=url,
        user=user,
        queue=queue,
        last_error=counters.get("last_error"),  # type: ignore[arg-type]
        last_error_time=counters.get("last_error_time"),  # type: ignore[arg-type]
        lost=int(counters.get("lost", 0)),  # type: ignore[call-overload]
    )


__all__ = [
    "Backoff",
    "Delivery",
    "DeliverySettings",
    "DeliveryStats",
    "offline_stats",
    "quote_ident",
]
