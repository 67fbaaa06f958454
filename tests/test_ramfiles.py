"""Where the agent's RAM files are read: where they are, not where the reader could write."""

from __future__ import annotations

import os
import time

from agent import ramfiles
from agent.status import collect, write_snapshot


def test_status_reads_the_snapshot_where_the_service_wrote_it_not_where_the_user_could(
    tmp_path, monkeypatch
):
    mine, services = tmp_path / "mine", tmp_path / "run-sensorkit"
    mine.mkdir()
    services.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setattr(ramfiles, "ram_dirs", lambda: [services])
    written = ramfiles.runtime_path(state, "status.json")
    write_snapshot(written, {"pid": os.getpid(), "time": time.time(), "outputs": {}, "sensors": {}})
    # the user who runs `sensorkit status` may write elsewhere first (or not in /run/sensorkit)
    monkeypatch.setattr(ramfiles, "ram_dirs", lambda: [mine, services])
    assert ramfiles.runtime_path(state, "status.json").parent == mine
    assert ramfiles.existing_path(state, "status.json") == written
    assert collect(state)["running"] is True


def test_with_no_ram_file_anywhere_a_reader_looks_where_the_agent_would_write(tmp_path):
    state = tmp_path / "state"
    assert ramfiles.existing_path(state, "status.json") == ramfiles.runtime_path(
        state, "status.json"
    )
