"""Files that live in RAM: they survive the process (``kill -9``) but cost the SD card nothing.

``$RUNTIME_DIRECTORY`` (systemd sets it: ``/run/sensorkit``, kept across restarts by
RuntimeDirectoryPreserve), else ``/run/sensorkit``, else ``/dev/shm``. A reboot or a power cut
empties them, so only what may be lost then goes here: the status snapshot, the window being
averaged, the queue's newest frames until a flush. Files are named for the ``state_dir`` they
belong to, so two agents on one machine keep apart.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path


def ram_dirs() -> list[Path]:
    """Where RAM files may go, in order of preference."""
    given = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return [Path(d) for d in (given, "/run/sensorkit", "/dev/shm") if d]


def ram_candidates(state_dir: Path, name: str) -> list[Path]:
    """Every place the RAM file ``name`` of the agent with this ``state_dir`` may be."""
    # crc32, not hashlib: hashlib loads OpenSSL (3.7 MB of RSS on a Pi that never needs it)
    digest = f"{zlib.crc32(str(Path(state_dir).resolve()).encode()):08x}"
    return [directory / f"sensorkit-{digest}-{name}" for directory in ram_dirs()]


def ram_path(state_dir: Path, name: str) -> Path | None:
    """Where the agent with this ``state_dir`` writes its RAM file ``name``: the first
    writable RAM-backed directory; None where there is none."""
    for path in ram_candidates(state_dir, name):
        if path.parent.is_dir() and os.access(path.parent, os.W_OK):
            return path
    return None


def runtime_path(state_dir: Path, name: str) -> Path:
    """:func:`ram_path`, or ``state_dir / name`` where there is no RAM-backed directory."""
    return ram_path(state_dir, name) or Path(state_dir) / name


def existing_path(state_dir: Path, name: str) -> Path:
    """Where a reader finds the file ``name`` of the agent with this ``state_dir``: of the RAM
    candidates and ``state_dir / name``, the one written last (a run killed earlier may have
    left one elsewhere). A user who runs ``status`` cannot always write where the service
    does (``/run/sensorkit``), so the reader does not go by what it could write itself;
    where none exists, :func:`runtime_path`."""
    found = []
    for path in [*ram_candidates(state_dir, name), Path(state_dir) / name]:
        try:
            found.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue
    if found:
        return max(found, key=lambda pair: pair[0])[1]
    return runtime_path(state_dir, name)
