"""Which page-cache pages some processes dirty, from the kernel's ``writeback_dirty_folio``
trace event, split into file-system metadata and file pages.

The kernel charges ``/proc/PID/io`` ``write_bytes`` when a process dirties a page. On an
ext4 without a journal, metadata (the inode table block that holds ``i_size`` and ``mtime``,
bitmaps) is dirtied by the writing thread itself and charged to it; with a journal it is
written by jbd2 and not. The trace tells the two apart: metadata pages belong to the block
device's own inode, whose number is the device number. Needs root and tracefs; a private
trace instance leaves other users of ftrace alone.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
EVENT = "events/writeback/writeback_dirty_folio/enable"
_LINE = re.compile(
    r"\(\s*(\d+)\)\s+\[\d+\]\s+\S+\s+(\d+\.\d+): writeback_dirty_folio: bdi \S+ ino=(\d+) "
    r"index=\d+"
)


def device_inode(path: Path) -> int:
    """The kernel's inode number of the block device holding ``path`` (its dev_t)."""
    dev = os.stat(path).st_dev
    return (os.major(dev) << 20) | os.minor(dev)


def journal(path: Path) -> bool | None:
    """Whether the ext4 holding ``path`` has a journal (None: not ext4, or unknown)."""
    dev = os.stat(path).st_dev
    uevent = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/uevent")
    try:
        name = dict(line.split("=", 1) for line in uevent.read_text().splitlines() if "=" in line)[
            "DEVNAME"
        ]
    except (OSError, KeyError):
        return None
    if not Path(f"/proc/fs/ext4/{name}").exists():
        return None
    return Path(f"/proc/fs/jbd2/{name}-8").exists()


class Dirtied:
    """A private trace instance recording the pages that the given processes (and their
    threads and children) dirty; :meth:`pages` after they exit."""

    def __init__(self, name: str) -> None:
        self.mounted = False
        if not (TRACEFS / "instances").is_dir() and os.geteuid() == 0:
            done = subprocess.run(
                ["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True, check=False
            )
            self.mounted = done.returncode == 0  # unmounted again by close()
        self.dir = TRACEFS / "instances" / name
        try:
            self.dir.mkdir()  # OSError where there is no tracefs or no permission
            for setting, value in (
                ("trace_clock", "mono"),  # the timestamps are time.monotonic()'s
                ("buffer_size_kb", "16384"),
                ("options/record-tgid", "1"),
                ("options/event-fork", "1"),
            ):
                (self.dir / setting).write_text(value)
        except OSError:
            self.close()
            raise
        self.enabled = False

    def follow(self, pid: int) -> None:
        """Record what ``pid``, its threads and the children it starts from now on dirty."""
        fd = os.open(self.dir / "set_event_pid", os.O_WRONLY | os.O_APPEND)  # adds to the set
        try:
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)
        if not self.enabled:
            (self.dir / EVENT).write_text("1")
            self.enabled = True

    def pages(self) -> list[tuple[int, float, int]] | None:
        """(process id, monotonic time, inode) of every page dirtied, once they have exited;
        None (and a line saying so) when the trace buffer overflowed."""
        (self.dir / EVENT).write_text("0")
        text = (self.dir / "trace").read_text()
        header = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", text)
        if header and header.group(1) != header.group(2):
            print(f"  {self.dir}: trace buffer overflowed ({header.group(0)}): not used")
            return None
        return [
            (int(m.group(1)), float(m.group(2)), int(m.group(3)))
            for m in map(_LINE.search, text.splitlines())
            if m
        ]

    def close(self) -> None:
        try:
            self.dir.rmdir()
        except OSError:
            pass
        if self.mounted:
            subprocess.run(["umount", str(TRACEFS)], capture_output=True, check=False)


def metadata_pages(
    events: list[tuple[int, float, int]], pids: set[int], device: int, start: float, stop: float
) -> int:
    """Pages of file-system metadata that ``pids`` dirtied between two monotonic times."""
    return sum(
        1 for pid, at, ino in events if pid in pids and ino == device and start <= at <= stop
    )


def pages_by_file(
    events: list[tuple[int, float, int]], pids: set[int], folder: Path, start: float, stop: float
) -> dict[str, int]:
    """Pages that ``pids`` dirtied between two monotonic times in each file now under
    ``folder`` (by inode: a file since replaced or deleted is not found)."""
    names = {}
    for path in folder.rglob("*"):
        try:
            names[path.stat().st_ino] = str(path.relative_to(folder))
        except OSError:
            continue
    counted: dict[str, int] = {}
    for pid, at, ino in events:
        if pid in pids and ino in names and start <= at <= stop:
            counted[names[ino]] = counted.get(names[ino], 0) + 1
    return counted
