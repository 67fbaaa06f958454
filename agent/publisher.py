"""The InfluxDB output: telegram -> line protocol -> durable queue -> batched HTTP ``/write``.

``send()`` only encodes and appends to the output's own :class:`~agent.buffer.DurableQueue`;
a sender thread delivers batches and applies the error policy of design.md section 4:

====================================  ===============================================
server or network says                what the sender does
====================================  ===============================================
204                                   remove the batch from the queue
no answer, timeout, 5xx, 429          keep; retry with capped exponential backoff + jitter
404 database not found                create it when allowed, else keep and retry later
401 / 403                             keep; one clear error naming user and URL; retry slowly
413 too large                         split the batch and retry the halves
400 bad line or field type conflict   bisect to the offending points, quarantine them with
                                      the server's message, deliver the rest
====================================  ===============================================
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from agent.buffer import DurableQueue, Entry
from agent.influx import InfluxClient, InfluxError, quote_ident
from agent.series import SeriesEncoder
from agent.telegram import Telegram

log = logging.getLogger("sensorkit.influx")


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


@dataclass
class DeliveryState:
    """What the sender knows about its recent past, for status and for log-once messages."""

    failures: int = 0
    problem: str = ""  # the current problem's key; a message is logged when it changes
    last_error: str = ""
    last_error_time: float | None = None
    retry_at: float = 0.0
    lost: int = 0  # points the disk refused to queue (counted, never silent)
    refusal: str = ""  # the last kind of 400/413 quarantined, logged once
    losing: bool = False  # time.monotonic(): a clock step (NTP on a Pi) cannot stall us
    checked_databases: set[str] = field(default_factory=set)


class InfluxOutput:
    """Publishes telegrams to one InfluxDB server, never losing one it accepted."""

    name = "influx"
    close_grace = 5.0  # seconds close() gives a healthy sender to deliver what is queued
    in_flight = 3  # requests at once while a backlog drains

    def __init__(
        self,
        client: InfluxClient,
        queue: DurableQueue,
        database: str = "",
        batch_size: int = 5000,
        batch_bytes: int = 4 * 1024 * 1024,
        backoff: Backoff | None = None,
        create_database: bool = True,
    ) -> None:
        self.client = client
        self.queue = queue
        self.encoder = SeriesEncoder(database)
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.backoff = backoff or Backoff()
        self.create_database = create_database
        self.state = DeliveryState()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._gave_up = False  # wait_drained timed out: close() gives no extra grace
        self._helpers: list[tuple[ThreadPoolExecutor, InfluxClient]] = []  # for backlogs

    # -- the output interface ---------------------------------------------------------------

    def send(self, telegram: Telegram) -> None:
        """Encode and append to the durable queue; the sender delivers it soon after.

        If the disk refuses the append (full, read-only, failing card) the telegram cannot be
        kept: it is counted as ``lost`` in ``status`` and said once per episode.
        """
        points = self.encoder.encode(telegram)
        try:
            self.queue.append(points)
        except OSError as err:
            self.state.lost += len(points)
            if not self.state.losing:
                log.error("%s; %d points lost (see `sensorkit status`)", err, self.state.lost)
            self.state.losing = True
            return
        if self.state.losing:
            log.warning("the queue accepts points again; %d were lost", self.state.lost)
            self.state.losing = False
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="influx-sender", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the sender; whatever is undelivered stays safely in the queue.

        A sender that is not failing first gets up to :attr:`close_grace` seconds to deliver
        what is queued (the last telegrams of ``sensorkit run``), so a stop while the server
        answers leaves nothing behind; a failing one is stopped at once.
        """
        alive = self._thread is not None and self._thread.is_alive()
        alive = alive and not self._gave_up  # publish --wait ran out: stop as promised
        deadline = time.monotonic() + self.close_grace
        while alive and self.queue.depth and not self.state.failures:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.set()
            time.sleep(min(0.02, remaining))
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.client.timeout + 5)
        for pool, client in self._helpers:
            pool.shutdown(wait=True)
            client.close()
        if self.state.last_error:  # for `sensorkit status` once this process is gone
            self.queue.note("last_error", self.state.last_error)
            self.queue.note("last_error_time", self.state.last_error_time)
        self.queue.close()
        self.client.close()

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

    def status(self) -> dict[str, object]:
        """This output's part of ``sensorkit status`` (no password in it)."""
        out: dict[str, object] = {"url": self.client.url, "user": self.client.username or None}
        out.update(self.queue.stats())
        out["last_error"] = self.state.last_error or None
        out["last_error_time"] = self.state.last_error_time
        out["retrying"] = bool(self.state.failures)
        out["lost"] = self.state.lost
        return out

    # -- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking at the queue: a send() from now on wakes us
            try:
                wait = self._step()
            except Exception:  # keep the sender alive whatever happens; data stays queued
                log.exception("influx sender: unexpected error; retrying in 10 s")
                wait = 10.0
            try:  # after the send: a point delivered at once is never committed to SQLite
                self.queue.maybe_sync()
            except Exception:
                log.exception("influx sender: group commit failed; points stay in the journal")
                wait = max(wait, 10.0)
            if wait > 0:
                self._wake.wait(wait)
        self.queue.sync()

    def _step(self) -> float:
        """Deliver one batch; returns how long to wait before the next step."""
        now = time.monotonic()
        if now < self.state.retry_at:
            return min(self.state.retry_at - now, 1.0)
        batch = self.queue.peek(self.batch_size, self.batch_bytes)
        if not batch:
            self._idle.set()
            interval = self.queue.sync_interval
            return min(1.0, interval) if interval > 0 else 1.0  # 0: appends commit themselves
        others = self._more_batches(batch)
        errors: list[InfluxError] = []
        try:
            self._deliver(batch)
        except InfluxError as err:
            errors.append(err)
        for other in others:
            try:
                other.result()
            except InfluxError as err:
                errors.append(err)
        if errors:
            self._failed(errors[0])
            return 0.0
        self._succeeded()
        return 0.0

    def _more_batches(self, batch: Sequence[Entry]) -> list[Future]:
        """With a backlog, put the next batches in flight too, each on a connection of its own.

        While one request waits for the server, the others are read, joined and compressed,
        so a backlog drains at close to the server's own pace.
        """
        futures: list[Future] = []
        last = batch[-1].seq
        for helper in range(self.in_flight - 1):
            if self.queue.depth <= len(batch) * (helper + 1):
                break
            more = self.queue.peek(self.batch_size, self.batch_bytes, after=last)
            if not more or more[0].db not in self.state.checked_databases:
                break
            if len(self._helpers) <= helper:
                self._helpers.append(
                    (ThreadPoolExecutor(1, f"influx-sender-{helper + 2}"), self.client.twin())
                )
            pool, client = self._helpers[helper]
            futures.append(pool.submit(self._deliver, more, client=client))
            last = more[-1].seq
        return futures

    def _deliver(
        self, batch: Sequence[Entry], created: bool = False, client: InfluxClient | None = None
    ) -> None:
        """Write one batch, splitting it on 413 and 400; raises InfluxError to retry later."""
        client = client or self.client
        db = batch[0].db
        if db not in self.state.checked_databases:
            self._ensure_database(db, client=client)
        try:
            client.write(db, b"\n".join(e.data for e in batch))
        except InfluxError as err:
            if err.status == 404 and "database not found" in err.server_message and not created:
                self.state.checked_databases.discard(db)
                self._ensure_database(db, must_create=True, client=client)
                self._deliver(batch, created=True, client=client)  # 400/413 handled as usual
                return
            elif err.status in (400, 413) and len(batch) > 1:
                half = len(batch) // 2
                self._deliver(batch[:half], client=client)
                self._deliver(batch[half:], client=client)
                return
            elif err.status in (400, 413):
                self.queue.quarantine(batch, f"{err.status}: {err.server_message}")
                refusal = err.server_message[:60]
                if refusal != self.state.refusal:  # once per kind of refusal, not per point
                    self.state.refusal = refusal
                    log.error(
                        "InfluxDB refused a point for good; quarantined it (see `sensorkit "
                        "quarantine list`): %s: %s",
                        err.server_message,
                        batch[0].line[:200],
                    )
                return
            else:
                raise
        self.queue.remove(batch)

    def _ensure_database(
        self, db: str, must_create: bool = False, client: InfluxClient | None = None
    ) -> None:
        """Create ``db`` if missing and allowed; a user without admin rights still writes."""
        client = client or self.client
        if not must_create and not self.create_database:
            # Nothing to do before writing: a 404 from the write says when it is missing.
            self.state.checked_databases.add(db)
            return
        try:
            if must_create or db not in client.databases():
                if not self.create_database:
                    raise InfluxError(
                        f"database {db!r} does not exist at {client.url} and "
                        "[influx] create_database is off; create it on the server",
                        404,
                        "database not found",
                    )
                client.create_database(db)
                log.info("created database %s at %s", quote_ident(db), client.url)
        except InfluxError as err:
            if err.status == 401 and not must_create:
                return  # wrong credentials: the write fails too and says so, once, clearly
            if err.status not in (401, 403) or must_create:
                if must_create and err.status in (401, 403):
                    raise InfluxError(
                        f"database {db!r} does not exist at {client.url} and "
                        f"{client.who()} may not create it; an admin must run "
                        f"CREATE DATABASE {quote_ident(db)} and grant WRITE on it",
                        404,
                        "database not found",
                    ) from None
                raise
            log.warning(
                "%s cannot list or create databases (%s); writing to %s anyway, which works "
                "when an admin created it and granted WRITE",
                client.who(),
                err.status,
                quote_ident(db),
            )
        self.state.checked_databases.add(db)

    def _failed(self, err: InfluxError) -> None:
        state = self.state
        state.failures += 1
        slow = not err.retryable
        delay = self.backoff.delay(state.failures, slow=slow)
        if err.retry_after is not None:  # the server said how long: do as asked, within reason
            delay = min(max(delay, err.retry_after), self.backoff.slow)
        state.retry_at = time.monotonic() + delay
        state.last_error = str(err)
        state.last_error_time = time.time()
        problem = f"{err.status}:{err.server_message[:60]}" if err.status else "network"
        if problem != state.problem:
            state.problem = problem
            level = logging.WARNING if err.retryable else logging.ERROR
            log.log(
                level,
                "%s; %d points kept in the queue, retrying (next in %.0f s, backing off)",
                err,
                self.queue.depth,
                delay,
            )

    def _succeeded(self) -> None:
        state = self.state
        if state.failures:
            log.info(
                "InfluxDB at %s accepts points again; %d still queued",
                self.client.url,
                self.queue.depth,
            )
        state.failures = 0
        state.problem = ""
        state.retry_at = 0.0
