"""What the agent does not load: OpenSSL's libcrypto (through hashlib, hmac or ssl, some 3.7 MB
of RSS) comes in only for a command that needs it (provision's new password, https://), never
for ``sensorkit run`` on plain http://."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent import ramfiles

ROOT = Path(__file__).resolve().parent.parent
OPENSSL = ("hashlib", "_hashlib", "hmac", "secrets", "ssl", "_ssl")


def test_the_command_line_the_runner_and_the_state_paths_do_not_load_openssl(tmp_path):
    code = f"""
import json, sys
from pathlib import Path
from agent import cli
cli.parser()  # every command's arguments, provision's too
import agent.runner, agent.status, agent.cursor, agent.ramfiles
agent.ramfiles.runtime_path(Path(sys.argv[1]), "status.json")
agent.cursor.cursor_path(Path(sys.argv[1]), "P_kit")
print(json.dumps(sorted(m for m in sys.modules if m in {OPENSSL!r})))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_ram_file_names_are_stable_and_apart_for_each_state_dir(tmp_path):
    one = ramfiles.ram_path(tmp_path / "a", "status.json")
    assert one == ramfiles.ram_path(tmp_path / "a", "status.json")
    assert one != ramfiles.ram_path(tmp_path / "b", "status.json")
    assert one is not None and one.name.endswith("-status.json")
