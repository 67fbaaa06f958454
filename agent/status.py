"""``sensorkit status``: what the running agent last reported, else what its queues hold on disk.

The running agent writes a small JSON snapshot every few seconds to a RAM-backed runtime
directory (``/run/sensorkit`` under systemd, else ``/dev/shm``), so reporting status costs the
SD card nothing. Without a fresh snapshot each queue under ``state_dir`` is read from disk,
read-only (two lines per sealed segment, whatever the backlog).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from agent.cursor import Cursor
from agent.cursor import load_all as load_cursors
from agent.delivery import offline_stats
from agent.ramfiles import existing_path, runtime_path
from agent.recovery import DROP_REASONS

STALE_AFTER = 30.0


def queue_names(state_dir: Path) -> list[str]:
    """Every queue kept under ``state_dir`` (the agent's, publish's, a relay's ...)."""
    names = set()
    for pattern, suffix in (("*.log", ".log"), ("*.stats", ".stats"), ("*.sqlite3", ".sqlite3")):
        for path in state_dir.glob(pattern):
            names.add(path.name.removesuffix(suffix))
    return sorted(names)


def snapshot_path(state_dir: Path) -> Path:
    """Where the agent with this ``state_dir`` writes its status snapshot."""
    return runtime_path(state_dir, "status.json")


def write_snapshot(path: Path, status: dict[str, object]) -> None:
    """Atomically replace the snapshot (readers never see half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(status, default=str))
    os.replace(tmp, path)


def collect(state_dir: Path) -> dict[str, object]:
    """The status of the agent using ``state_dir``: live if it runs, else from disk."""
    path = existing_path(state_dir, "status.json")
    try:
        live = json.loads(path.read_text())
    except (OSError, ValueError):
        live = None
    if live and _alive(live.get("pid")) and time.time() - live.get("time", 0) < STALE_AFTER:
        live["running"] = True
    else:
        live = {"running": False, "outputs": {}, "sensors": {}}
    outputs = live.setdefault("outputs", {})
    reported = {out.get("queue") for out in outputs.values() if isinstance(out, dict)}
    for name in queue_names(state_dir):
        if name not in reported and (stats := offline_stats(state_dir, name)) is not None:
            outputs[name] = stats.as_json() | {"queue": name}
    live["subscribed"] = [_cursor_json(c) for c in load_cursors(state_dir)]
    live["state_dir"] = str(state_dir)
    return live


def _cursor_json(cursor: Cursor) -> dict[str, object]:
    """A subscribed database's place, for ``status``: cursor, newest on the server, lag."""
    return {
        "database": cursor.database,
        "cursor": cursor.time,
        "newest": cursor.newest,
        "behind_s": cursor.behind(),
        "checked": cursor.checked,
    }


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _when(stamp: object) -> str:
    if not isinstance(stamp, int | float):
        return "never"
    moment = datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ago = time.time() - stamp
    return f"{moment} ({_duration(ago)} ago)"


def _stamp(stamp: object) -> str:
    """A data time (UNIX seconds) as UTC, without the age (old data is not news)."""
    if not isinstance(stamp, int | float):
        return "none"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def format_status(status: dict) -> str:
    """The human-readable form of :func:`collect`."""
    running = f"running (pid {status.get('pid')})" if status.get("running") else "not running"
    lines = [
        f"agent: {running}",
        f"state: {status.get('state_dir')}",
    ]
    for name, out in sorted(status.get("outputs", {}).items()):
        lines.append(f"output {name}:")
        if out.get("url"):
            user = out.get("user") or "(no auth)"
            lines.append(f"  server          {out['url']} as {user}")
        if out.get("kind") == "queued":
            lines.append(
                f"  queued          {out['queued']} points, {out['queued_bytes'] / 1e6:.2f} MB"
            )
            if out.get("in_ram"):
                lines.append(
                    f"  in RAM only     {out['in_ram']} of the queued points (not yet on the card:"
                    " a reboot loses them; the next flush or start writes them, if the card"
                    " has room)"
                )
            lines.append(f"  oldest queued   {_when(out.get('oldest_queued'))}")
            lines.append(f"  last delivery   {_when(out.get('last_delivery'))}")
            lines.append(f"  delivered       {out.get('delivered', 0)}")
            lines.append(f"  quarantined     {out.get('quarantined', 0)}")
            lines.append(f"  dropped         {out.get('dropped', 0)}")
            for reason, count in sorted((out.get("dropped_by") or {}).items()):
                lines.append(f"    {count} {DROP_REASONS.get(reason, reason)}")
            if out.get("lost"):
                lines.append(f"  lost (disk)     {out['lost']} (the disk refused to queue them)")
            for db, why in sorted((out.get("held") or {}).items()):
                lines.append(f"  held back       {db}: {why}")
        if out.get("last_error"):
            lines.append(
                f"  last error      {_when(out.get('last_error_time'))}: {out['last_error']}"
            )
        if out.get("kind") == "console":
            lines.append(f"  sent            {out['sent']} telegrams to {out.get('file')}")
    for sub in status.get("subscribed", []):
        behind = sub.get("behind_s")
        lag = (
            "nothing read yet"
            if sub.get("cursor") is None
            else ("up to date" if not behind else f"{_duration(behind)} behind the newest point")
        )
        lines.append(f"subscribed {sub['database']}: {lag}")
        lines.append(f"  cursor          {_stamp(sub.get('cursor'))}")
        lines.append(f"  newest there    {_stamp(sub.get('newest'))}")
        lines.append(f"  last read       {_when(sub.get('checked'))}")
    for name, health in sorted(status.get("sensors", {}).items()):
        state = health.get("state", "?")
        count = health.get("readings", 0)
        lines.append(
            f"sensor {name}: {state}, {count} readings, last {_when(health.get('last_reading'))}"
        )
        if health.get("last_error"):
            lines.append(f"  last error      {health['last_error']}")
        if health.get("implausible"):
            lines.append(f"  implausible     {health['implausible']} readings dropped")
    return "\n".join(lines)
