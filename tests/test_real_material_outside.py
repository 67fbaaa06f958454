"""Real material recorded by others is used where it lies and is never committed here."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import pytest
from realdata import ABSENT, FIXTURES, ROOT


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_no_file_in_the_repository_is_a_copy_of_a_fixture():
    if not FIXTURES.is_dir():
        pytest.skip(ABSENT)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    fixtures = {sha256(p.read_bytes()): p for p in FIXTURES.rglob("*") if p.is_file()}
    assert len(fixtures) >= 10
    copies = []
    for name in filter(None, listed.stdout.split(b"\0")):
        path = ROOT / name.decode()
        if path.is_file() and (original := fixtures.get(sha256(path.read_bytes()))):
            copies.append(f"{name.decode()} = {original}")
    assert copies == []


def test_without_the_fixtures_folder_the_real_material_tests_skip_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/test_dylos.py", "tests/test_bme280.py", "tests/test_dht22.py",
         "tests/test_real_material_outside.py::test_no_file_in_the_repository_is_a_copy_of_a_fixture",
         "-k", "real or capture"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SENSORKIT_FIXTURES": str(tmp_path / "absent")},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and "error" not in summary, summary
    assert int(re.search(r"(\d+) skipped", summary)[1]) >= 12, summary
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all(s.endswith("is absent (a user's clone; CI has it)") for s in skips)
