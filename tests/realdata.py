"""Real material recorded by others, used where it lies: ``../shared/fixtures`` (never copied).

A user's clone has no ``../shared``; tests that need the material skip there with one line
saying why. CI has it, so they run there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("SENSORKIT_FIXTURES") or ROOT.parent / "shared" / "fixtures")
"""Where the material lies; $SENSORKIT_FIXTURES points elsewhere (a test checks the skips)."""
EXTERNAL = FIXTURES / "external"
ABSENT = f"real material not here: {FIXTURES} is absent (a user's clone; CI has it)"


def fixture(relative: str) -> Path:
    """The fixture file at ``relative`` (to ../shared/fixtures); skips the test when absent."""
    path = FIXTURES / relative
    if not path.is_file():
        pytest.skip(ABSENT if not FIXTURES.is_dir() else f"real material not here: {path}")
    return path


def fixture_params(*patterns: str) -> list:
    """One pytest param per fixture file matching ``patterns`` (id: its name), sorted.

    When the folder is absent: one param that skips with the reason. When it is there but
    nothing matches, collection fails (a renamed file must not silently skip the tests).
    """
    if not FIXTURES.is_dir():
        return [pytest.param(None, id="absent", marks=pytest.mark.skip(reason=ABSENT))]
    found = sorted({p for pattern in patterns for p in FIXTURES.glob(pattern) if p.is_file()})
    if not found:
        raise FileNotFoundError(f"no file in {FIXTURES} matches {patterns}")
    return [pytest.param(p, id=p.name) for p in found]
