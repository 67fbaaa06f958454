"""The queue's newest frames wait in RAM until a flush: the SD card sees only what is undelivered.

:class:`agent.buffer.DurableQueue` appends fresh frames to a stage file in RAM
(:mod:`agent.ramfiles`) instead of its active segment on the card. Like the page cache, the
stage survives ``kill -9`` and goes with a power cut, so nothing is promised that was not
before: a power cut costs at most one ``sync_interval``. But the card's pages stay clean
between flushes: a point delivered before the flush is never written to the card, and the
kernel's writeback (which writes an inode's dirty pages every few seconds once the inode has
been dirty for 30 s, as an appended-to file always is) has nothing to write. A flush copies
the stage to the end of the segment and fdatasyncs it.

The stage starts with one line, ``#stage <segment number> <offset>``: where its bytes belong.
After a crash :meth:`Stage.leftover` gives them back and the queue writes them there before it
reads its segments.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("sensorkit.buffer")


class Stage:
    """Bytes that follow ``offset`` in segment ``number``, held in a RAM file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = 0  # bytes staged, after the header line
        self._header = 0

    def leftover(self) -> tuple[int, int, bytes] | None:
        """``(segment number, offset, bytes)`` a crash left staged; None when empty. A first
        line that does not read gives number and offset -1 (the queue then queues the
        frames again)."""
        data = self.path.read_bytes()
        if not data:
            return None
        self._header = len(data)  # something to clear, though nothing is staged by this run
        number, offset, frames = _parse(data)
        if number < 0:
            log.warning("%s: the stage's first line is not readable", self.path)
        return number, offset, frames

    def append(self, number: int, offset: int, blob: bytes) -> None:
        """Stage ``blob``; the first blob after :meth:`clear` says where the stage belongs."""
        if self.size == 0:
            header = f"#stage {number} {offset}\n".encode()
            _write_all(self._fd, header + blob, self._undo)
            self._header = len(header)
        else:
            _write_all(self._fd, blob, self._undo)
        self.size += len(blob)

    def read(self, start: int, stop: int) -> bytes:
        """Staged bytes ``[start, stop)``, counted from the start of the staged bytes."""
        parts = []
        at, stop = self._header + start, self._header + min(stop, self.size)
        while at < stop:
            part = os.pread(self._fd, stop - at, at)
            if not part:
                raise OSError(f"{self.path} is shorter than the {self.size} bytes staged")
            parts.append(part)
            at += len(part)
        return b"".join(parts)

    def everything(self) -> bytes:
        return self.read(0, self.size)

    def clear(self) -> None:
        if self.size or self._header:
            os.ftruncate(self._fd, 0)
        self.size = self._header = 0

    def close(self) -> None:
        """Close; the file goes when nothing is staged (else a restart takes it back)."""
        os.close(self._fd)
        if not self.size:
            self.path.unlink(missing_ok=True)

    def _undo(self) -> None:
        """A failed write must leave no partial frame staged."""
        os.ftruncate(self._fd, self._header + self.size if self.size else 0)


def _write_all(fd: int, blob: bytes, undo) -> None:
    view = memoryview(blob)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        try:
            undo()
        except OSError:
            pass
        raise


def _parse(data: bytes) -> tuple[int, int, bytes]:
    """(segment number, offset, frame bytes) of a stage file's content; -1, -1 when its
    first line is not ``#stage <number> <offset>``."""
    line, _, rest = data.partition(b"\n")
    words = line.split()
    if len(words) == 3 and words[0] == b"#stage" and words[1].isdigit() and words[2].isdigit():
        return int(words[1]), int(words[2]), rest
    return -1, -1, rest if data.startswith(b"#stage") else data


def set_aside_path(stage: Path) -> Path:
    """A free name to set ``stage`` aside under (``.old``, else ``.old.1``, ...): one set aside
    before whose points could not be queued yet (a full card) must not be overwritten."""
    path, n = stage.with_name(stage.name + ".old"), 0
    while path.exists():
        n += 1
        path = stage.with_name(f"{stage.name}.old.{n}")
    return path


def left_in_ram(stage: Path) -> list[Path]:
    """The stage file ``stage``, where it exists, and the stages set aside from it."""
    return [stage, *set_aside_stages(stage)] if stage.exists() else set_aside_stages(stage)


def set_aside_stages(stage: Path) -> list[Path]:
    """The stages set aside from ``stage`` (``.old``, ``.old.1``, ...) to be queued again,
    oldest first."""
    found = {}
    for path in stage.parent.glob(stage.name + ".old*"):
        number = path.name[len(stage.name) + len(".old") :]
        if number == "" or (number[:1] == "." and number[1:].isdigit()):
            found[int(number[1:] or 0)] = path
    return [found[n] for n in sorted(found)]


def staged_frames(path: Path | None) -> bytes:
    """The frame bytes a stage file holds, read only (for an offline ``status``)."""
    return read_stage(path)[2]


def read_stage(path: Path | None) -> tuple[int, int, bytes]:
    """(segment number, offset, frame bytes) of a stage file, read only; -1, -1, b"" where
    there is none."""
    try:
        data = path.read_bytes() if path is not None else b""
    except OSError:
        return -1, -1, b""
    return _parse(data) if data else (-1, -1, b"")


def fits(folder: Path, number: int, offset: int, data: bytes) -> bool:
    """Whether frames staged for ``offset`` of segment ``number`` in ``folder`` go back there
    exactly: it is the newest segment (or there is none) and holds, after ``offset``, nothing
    or a first part of ``data`` (a flush cut off)."""
    newest = max(folder.glob("*.seg"), default=None)
    path = folder / f"{number:016d}.seg"
    if number < 0 or (newest is not None and newest != path):
        return False
    try:
        with open(path, "rb") as segment:
            size = os.fstat(segment.fileno()).st_size
            segment.seek(offset)
            tail = segment.read()
    except FileNotFoundError:
        tail, size = b"", 0
    except OSError:  # unreadable: the frames are queued again instead
        return False
    return size >= offset and data.startswith(tail)
