"""Where the agent's RAM files are read: where they are, not where the reader could write."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent import ramfiles
from agent.buffer import DurableQueue, read_stats
from agent.status import collect, write_snapshot


def folders(base: Path, *names: str) -> list[Path]:
    """Empty folders under ``base``: RAM directories and a state_dir."""
    made = [base / name for name in names]
    for folder in made:
        folder.mkdir()
    return made


def test_status_reads_the_snapshot_where_the_service_wrote_it_not_where_the_user_could(
    tmp_path, monkeypatch
):
    mine, services, state = folders(tmp_path, "mine", "run-sensorkit", "state")
    monkeypatch.setattr(ramfiles, "ram_dirs", lambda: [services])
    written = ramfiles.runtime_path(state, "status.json")
    write_snapshot(written, {"pid": os.getpid(), "time": time.time(), "outputs": {}, "sensors": {}})
    # the user who runs `sensorkit status` may write elsewhere first (or not in /run/sensorkit)
    monkeypatch.setattr(ramfiles, "ram_dirs", lambda: [mine, services])
    assert ramfiles.runtime_path(state, "status.json").parent == mine
    assert ramfiles.existing_path(state, "status.json") == written
    assert collect(state)["running"] is True


def test_a_stale_snapshot_left_in_another_ram_directory_does_not_hide_the_live_one(
    tmp_path, monkeypatch
):
    kept, manual, state = folders(tmp_path, "run-sensorkit", "shm", "state")
    monkeypatch.setattr(ramfiles, "ram_dirs", lambda: [kept, manual])
    stale = ramfiles.ram_candidates(state, "status.json")[0]
    write_snapshot(stale, {"pid": 2**22 + 1, "time": time.time() - 3600})  # a kill -9 left it
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    live = ramfiles.ram_candidates(state, "status.json")[1]
    write_snapshot(live, {"pid": os.getpid(), "time": time.time(), "outputs": {}, "sensors": {}})
    assert ramfiles.existing_path(state, "status.json") == live
    assert collect(state)["running"] is True


def test_an_offline_status_counts_points_set_aside_in_any_ram_directory(tmp_path, monkeypatch):
    services, mine, state = folders(tmp_path, "run-sensorkit", "shm", "state")
    monkeypatch.setattr(ramfiles, "ram_dirs", lambda: [services])
    queue = DurableQueue(state, "influx", sync_interval=3600)
    queue.append([("a", f"data v={i}i {1_700_000_000 + i}") for i in range(3)])
    stage = queue._stage.path
    aside = stage.with_name(stage.name + ".old")
    aside.write_bytes(stage.read_bytes())  # as a start leaves one it could not queue again
    queue.sync()
    queue.close()
    monkeypatch.setattr(ramfiles, "ram_dirs", lambda: [mine, services])  # the user's view
    stats = read_stats(state, "influx")
    assert stats is not None and (stats.queued, stats.in_ram) == (6, 3)
