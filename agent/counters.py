"""Counters that outlive the process: drops, deliveries, the last error, kept in one small file.

The file is allocated once (4 KiB, two 2 KiB slots) and then only overwritten in place, the
newer slot alternating, so an update needs no free space: a full disk still records what it
cost. A slot carries a generation number and a CRC, so a torn write leaves the older slot
valid. Writes happen when asked (:meth:`Counters.flush`), not per change, to spare the SD card.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from pathlib import Path

log = logging.getLogger("sensorkit.counters")

SLOT = 2048
_HEADER = struct.Struct(">4sQII")  # magic, generation, length, crc32 of the JSON
_MAGIC = b"SKc1"
MAX_TEXT = 400  # characters kept of a text value (an error message)


def _decode(blob: bytes) -> tuple[int, dict]:
    """(generation, values) of the newest valid slot in ``blob``; (0, {}) when none is."""
    best: tuple[int, dict] = (0, {})
    for start in (0, SLOT):
        part = blob[start : start + SLOT]
        if len(part) < _HEADER.size:
            continue
        magic, generation, length, crc = _HEADER.unpack_from(part)
        payload = part[_HEADER.size : _HEADER.size + length]
        if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            continue
        try:
            values = json.loads(payload)
        except ValueError:
            continue
        if isinstance(values, dict) and generation > best[0]:
            best = (generation, values)
    return best


def read_counters(path: Path) -> dict[str, object]:
    """The values in a counters file, read-only; {} when it is absent or unreadable."""
    try:
        return _decode(path.read_bytes())[1]
    except OSError:
        return {}


class Counters:
    """Named numbers and facts for ``status``; thread-safe; ``flush`` puts them on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        try:
            self._generation, self._values = _decode(path.read_bytes())
        except OSError:
            self._generation, self._values = 0, {}
        self.dirty = False
        self.failed = ""  # why the last flush failed ("" when it worked)
        try:  # allocated now, while there is room: later writes then need none
            self._open()
        except OSError:
            pass  # tried again at the first flush

    def get(self, key: str, default: object = None) -> object:
        with self._lock:
            return self._values.get(key, default)

    def values(self) -> dict[str, object]:
        with self._lock:
            return dict(self._values)

    def add(self, key: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._values[key] = int(self._values.get(key, 0)) + n  # type: ignore[call-overload]
                self.dirty = True

    def set(self, key: str, value: object) -> None:
        if isinstance(value, str):
            value = value[:MAX_TEXT]
        with self._lock:
            if self._values.get(key) != value:
                self._values[key] = value
                self.dirty = True

    def flush(self, durable: bool = False) -> bool:
        """Write the values if they changed; True when they are on disk (or unchanged)."""
        with self._lock:
            if not self.dirty:
                return True
            payload = json.dumps(self._values, separators=(",", ":")).encode()
            if _HEADER.size + len(payload) > SLOT:
                payload = self._shrunk()
            generation = self._generation + 1
            slot = _HEADER.pack(_MAGIC, generation, len(payload), zlib.crc32(payload)) + payload
            try:
                fd = self._open()
                os.pwrite(fd, slot.ljust(SLOT, b"\0"), (generation % 2) * SLOT)
                if durable:
                    os.fdatasync(fd)
            except OSError as err:
                if not self.failed:
                    log.error("cannot record counters in %s: %s", self.path, err.strerror)
                self.failed = err.strerror or str(err)
                return False
            self._generation = generation
            self.dirty = False
            self.failed = ""
            return True

    def close(self) -> None:
        self.flush(durable=True)
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open(self) -> int:
        """The file, allocated whole on first use so later writes need no new blocks."""
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < 2 * SLOT:
                    os.pwrite(fd, bytes(2 * SLOT), 0)
                    os.fsync(fd)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def _shrunk(self) -> bytes:
        """The values with long texts cut until they fit one slot."""
        values = {k: (v[:80] if isinstance(v, str) else v) for k, v in self._values.items()}
        payload = json.dumps(values, separators=(",", ":")).encode()
        if _HEADER.size + len(payload) > SLOT:  # many keys: keep the numbers only
            numbers = {k: v for k, v in values.items() if isinstance(v, int | float)}
            payload = json.dumps(numbers, separators=(",", ":")).encode()
        return payload
