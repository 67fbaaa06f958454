"""``sensorkit probe``: look for the kit's sensors where agent.ini says, and say what was found.

For each sensor it uses the configured backend, so on a bench it probes the simulated devices
and on a Pi the real ones, and it ends with the lines to put in the config file for what
really answered, and nothing for what did not.
"""

from __future__ import annotations

import drivers
from agent.config import Settings
from agent.sensors import setup_of

PATIENCE = 65.0
"""Seconds a probe may wait for a device that talks on its own (a DC1100: a line a minute)."""


def probe(settings: Settings, patience: float = PATIENCE) -> str:
    """A report of what was found, then the config lines to use."""
    by_name = {s.name: s for s in settings.sensors}
    report: list[str] = []
    suggested: list[str] = []
    for driver in drivers.registered():
        found = driver.probe(setup_of(by_name[driver.section], settings.weather), patience)
        report += found.lines
        if found.suggest:
            suggested += [f"[{driver.section}]", "enabled = yes", *found.suggest, ""]
    report.append("")
    if suggested:
        report.append(f"put this in {settings.path}:")
        report += suggested
    else:
        report.append("no sensor found; check wiring, and `backend` in each sensor section")
    return "\n".join(report).rstrip()
