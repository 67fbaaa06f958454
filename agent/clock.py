"""Time the agent may write on a point: the wall clock, once it is known to be right.

A Raspberry Pi has no real-time clock: until NTP synchronises it, it runs from the last
shutdown's time, or from 1970. So windows run on the monotonic clock (which never steps),
and a window is dated -- its end turned into UNIX seconds -- only by a clock that is
synchronised. ``[kit] clock`` says which clock that is:

- ``trust``: the wall clock is right as it is (a bench, a server, a kit with an RTC);
- ``synced``: wait until the kernel (``adjtimex``: STA_UNSYNC clear) or systemd-timesyncd
  (``/run/systemd/timesync/synchronized``) says the clock is synchronised;
- ``auto`` (default): ``synced`` where an NTP client runs that will say so (timesyncd,
  chrony, ntpd), else ``trust`` (a machine without one never reports a synchronised clock).

:class:`Stamps` hands out window stamps that are never used twice, whatever the clock does.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import time
from collections.abc import Callable
from pathlib import Path

MODES = ("auto", "trust", "synced")
STA_UNSYNC = 0x0040  # <sys/timex.h>: the kernel's "clock not synchronised" status bit
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
NTP_CLIENTS = (Path("/run/systemd/timesync"), Path("/run/chrony"), Path("/run/ntpd.pid"))
KEEP_STAMPS = 7 * 86400  # seconds of used stamps remembered


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (Linux, glibc), enough of it for ``status``."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("reserved", ctypes.c_int * 11),
    ]


def kernel_synced() -> bool | None:
    """What ``adjtimex`` says (read only: ``modes`` 0); None where it cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = _Timex()
        if libc.adjtimex(ctypes.byref(timex)) < 0:
            return None
    except (OSError, AttributeError):
        return None
    return not timex.status & STA_UNSYNC


def system_synced() -> bool:
    """True once timesyncd or the kernel says the wall clock is synchronised."""
    return TIMESYNCD_FLAG.exists() or bool(kernel_synced())


def ntp_client_present() -> bool:
    return any(path.exists() for path in NTP_CLIENTS)


def boot_id() -> str:
    """This boot's id: the monotonic clock means the same thing only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class Clock:
    """The wall clock the agent may date by, and the monotonic clock it waits by."""

    def __init__(
        self,
        mode: str = "auto",
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        probe: Callable[[], bool] = system_synced,
    ) -> None:
        self.mode = ("synced" if ntp_client_present() else "trust") if mode == "auto" else mode
        self.wall = wall
        self.mono = mono
        self._probe = probe
        self._synced = self.mode == "trust"

    def synced(self) -> bool:
        """Whether the wall clock may be written on points now (once true, it stays so: a
        synchronised clock that later steps is corrected, not wrong)."""
        if not self._synced:
            self._synced = bool(self._probe())
        return self._synced

    def date(self, instant: float) -> float:
        """The wall time of a monotonic ``instant``, by the wall clock as it is now."""
        return instant + (self.wall() - self.mono())


class Stamps:
    """Window stamps (UNIX seconds) never used twice: the same second twice would overwrite
    a stored point (same series, same time).

    ``floor``: the last stamp of an earlier run; no stamp at or below it is given while the
    real time has not passed it (a restart with a clock behind).
    """

    def __init__(self, floor: int = 0) -> None:
        self.floor = floor
        self._used: list[int] = []
        self.last = floor

    def take(self, candidate: int) -> int:
        """``candidate``, or the next free second after it."""
        if candidate <= self.floor:
            candidate = self.floor + 1
        i = bisect.bisect_left(self._used, candidate)
        while i < len(self._used) and self._used[i] == candidate:
            candidate += 1
            i += 1
        bisect.insort(self._used, candidate)
        cutoff = candidate - KEEP_STAMPS
        while self._used and self._used[0] < cutoff:
            del self._used[0]
        self.last = candidate
        return candidate

    def used(self, stamp: int) -> bool:
        i = bisect.bisect_left(self._used, stamp)
        return i < len(self._used) and self._used[i] == stamp
