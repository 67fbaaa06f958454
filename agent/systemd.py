"""Running under systemd, in standard library only: sd_notify, the watchdog, journald logging.

- :func:`ready`, :func:`status`, :func:`watchdog`, :func:`stopping` send sd_notify(3) messages
  as datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace). Without
  that variable (not run by systemd, or ``Type=simple``) they do nothing and return False.
- :func:`watchdog_interval` reads ``$WATCHDOG_USEC`` (for this process only, when
  ``$WATCHDOG_PID`` names another one it is not ours); :class:`Watchdog` pings only while
  every part of the agent that must stay alive (the window loop, each sender) has shown life.
- :func:`setup_logging` writes ``<N>`` syslog priority prefixes when stderr is the journal
  (``$JOURNAL_STREAM`` names its device and inode), so ``journalctl -p err`` works; otherwise
  the plain ``LEVEL name: message`` lines.
- :class:`ChangeLog` logs a repeating failure once per change (and when it clears), not once
  per attempt.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TextIO

log = logging.getLogger("sensorkit.systemd")


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``KEY=value`` fields in one datagram to ``$NOTIFY_SOCKET``; True when sent.

    Never raises: a missing or broken socket must not stop the agent (systemd then simply
    hears nothing, and its own timeouts say so).
    """
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    elif not address.startswith("/"):
        log.debug("NOTIFY_SOCKET %r is neither a path nor @abstract; not notifying", address)
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as err:
        log.debug("sd_notify to %s failed: %s", environ.get("NOTIFY_SOCKET"), err)
        return False
    return True


def one_line(text: str, limit: int = 400) -> str:
    """``text`` fit for a ``STATUS=`` field: one line, at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def ready(status_text: str | None = None) -> bool:
    """The agent is up (``Type=notify``: systemd considers the start done)."""
    fields = ["READY=1"]
    if status_text is not None:
        fields.append("STATUS=" + one_line(status_text))
    return notify(*fields)


def status(text: str) -> bool:
    """The line ``systemctl status sensorkit`` shows under ``Status:``."""
    return notify("STATUS=" + one_line(text))


def watchdog() -> bool:
    """Tell systemd the agent is alive (``WatchdogSec=``)."""
    return notify("WATCHDOG=1")


def stopping(status_text: str | None = None) -> bool:
    """The agent is shutting down (it may take a while to finish its window)."""
    fields = ["STOPPING=1"]
    if status_text is not None:
        fields.append("STATUS=" + one_line(status_text))
    return notify(*fields)


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more before the start (or stop) times out, e.g. for a long scan."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """``WatchdogSec=`` in seconds when it applies to this process, else None."""
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we are a child of the service's main one)
    return usec / 1_000_000


class Watchdog:
    """Pings systemd's watchdog only while every expected part of the agent shows life.

    A part (``"window"``, ``"influx"`` ...) is registered with :meth:`expect` and the longest
    it may stay silent; it calls :meth:`beat` whenever it makes progress. The window loop calls
    :meth:`check` often (every few seconds): it sends ``WATCHDOG=1`` at most every quarter
    interval (so a loop that passes every few seconds pings well within ``WatchdogSec``), and
    none while a part is overdue, so a hung part gets the agent restarted within its
    ``within`` plus ``WatchdogSec``; a hung loop stops the pings itself. Disabled (all no-ops)
    when the service has no watchdog.
    """

    def __init__(
        self,
        interval: float | None = None,
        *,
        send: Callable[[], bool] = watchdog,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.interval = watchdog_interval() if interval is None else interval
        self._send = send
        self._clock = clock
        self._lock = threading.Lock()
        self._parts: dict[str, tuple[float, float]] = {}  # name -> (within, last beat)
        self._last_ping: float | None = None
        self._overdue = ChangeLog(logger, "watchdog")

    @property
    def enabled(self) -> bool:
        return bool(self.interval)

    def expect(self, name: str, within: float) -> None:
        """``name`` must :meth:`beat` at least every ``within`` seconds from now on."""
        with self._lock:
            self._parts[name] = (within, self._clock())

    def forget(self, name: str) -> None:
        """``name`` is done (stopped on purpose): no longer expected."""
        with self._lock:
            self._parts.pop(name, None)

    def beat(self, name: str) -> None:
        with self._lock:
            if name in self._parts:
                self._parts[name] = (self._parts[name][0], self._clock())

    def overdue(self) -> list[str]:
        """Parts silent for longer than they may be."""
        now = self._clock()
        with self._lock:
            return sorted(n for n, (within, last) in self._parts.items() if now - last > within)

    def check(self) -> bool:
        """Ping if every part is alive and a quarter interval has passed; True when pinged."""
        if not self.enabled:
            return False
        late = self.overdue()
        if late:
            self._overdue.failed(
                f"{', '.join(late)} silent too long; not pinging, so systemd restarts the "
                f"agent within {self.interval:g} s unless it recovers",
                level=logging.ERROR,
            )
            return False
        self._overdue.ok()
        now = self._clock()
        assert self.interval is not None
        if self._last_ping is not None and now - self._last_ping < self.interval / 4:
            return False
        self._last_ping = now
        return self._send()


class ChangeLog:
    """Log a condition that repeats (a sensor failing every read, a server down) only when it
    starts, when its message changes and when it clears; plus a reminder every
    ``remind_every`` seconds while it lasts, so a year-long journal still shows it.

    ``failed(message, key=...)``: ``key`` says what counts as "the same failure" when the
    message holds changing details (a count, a delay); by default the message itself.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        remind_every: float | None = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.remind_every = remind_every
        self._clock = clock
        self._key: object = None
        self._repeats = 0
        self._since = 0.0
        self._logged_at = 0.0

    @property
    def failing(self) -> bool:
        return self._key is not None

    def failed(self, message: str, *, key: object = None, level: int = logging.WARNING) -> bool:
        """A failure happened (again); True when it was logged."""
        key = message if key is None else key
        now = self._clock()
        if key != self._key:
            self._key, self._repeats, self._since, self._logged_at = key, 0, now, now
            self.logger.log(level, "%s: %s", self.what, message)
            return True
        self._repeats += 1
        if self.remind_every is not None and now - self._logged_at >= self.remind_every:
            self._logged_at = now
            self.logger.log(
                level,
                "%s: still: %s (%d times more over %.0f s)",
                self.what,
                message,
                self._repeats,
                now - self._since,
            )
            return True
        return False

    def ok(self, message: str = "") -> bool:
        """The condition cleared; logs it once (True) if it was failing."""
        if self._key is None:
            return False
        lasted = self._clock() - self._since
        self._key, self._repeats = None, 0
        self.logger.info(
            "%s: recovered after %.0f s%s", self.what, lasted, f": {message}" if message else ""
        )
        return True


# -- journald logging ------------------------------------------------------------------------

_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """A logging level as a syslog priority: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>name: message``, every line of it prefixed (tracebacks keep their priority);
    no time stamp, as journald adds its own."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal's stream systemd connected (``$JOURNAL_STREAM`` is
    its ``device:inode``): not when the agent's stderr was redirected elsewhere."""
    environ = os.environ if environ is None else environ
    expected = environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or no file descriptor
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def setup_logging(
    verbose: bool = False, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> logging.Handler:
    """Log to ``stream`` (stderr): journald priorities under systemd, plain lines elsewhere.
    Replaces the root logger's handlers; returns the handler."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if stream_is_journal(stream, environ):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


# -- the STATUS line -------------------------------------------------------------------------


def _ago(when: object, now: float) -> str:
    if not isinstance(when, int | float):
        return "never"
    seconds = max(0, int(now - when))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def status_line(agent_status: Mapping[str, object], now: float | None = None) -> str:
    """The one-line ``STATUS=`` text from the agent's status dict (``Agent.status()``):
    per output the queue depth and last delivery (and RETRYING with a failing server), then
    the sensors that are not ok. Never the password (the status holds none) nor error texts.
    """
    now = time.time() if now is None else now
    parts = []
    outputs = agent_status.get("outputs") or {}
    for name, out in sorted(outputs.items()) if isinstance(outputs, Mapping) else ():
        if not isinstance(out, Mapping):
            continue
        if "queued" in out:
            text = f"{name}: {out.get('queued')} queued, last delivery "
            text += _ago(out.get("last_delivery"), now)
            if out.get("retrying"):
                text += ", RETRYING"
            if out.get("dropped"):
                text += f", {out['dropped']} dropped"
        elif "sent" in out:
            text = f"{name}: {out['sent']} sent"
        else:
            continue
        parts.append(text)
    sensors = agent_status.get("sensors") or {}
    states: dict[str, list[str]] = {}
    for name, health in sorted(sensors.items()) if isinstance(sensors, Mapping) else ():
        state = health.get("state", "?") if isinstance(health, Mapping) else "?"
        states.setdefault(str(state), []).append(name)
    if states:
        ok = states.pop("ok", [])
        text = "sensors ok: " + (" ".join(ok) or "none")
        for state, names in sorted(states.items()):
            text += f"; {state.upper()}: {' '.join(names)}"
        parts.append(text)
    return one_line("; ".join(parts) or "running")
