"""Sensor drivers: each opens its transport, reads, parses and returns readings.

Drivers know their hardware and nothing of telegrams or InfluxDB. The same driver code runs
against real hardware or against the simulated transports in :mod:`drivers.sim`; one
``backend`` switch (``hardware`` or ``simulated``) chooses which.

Each module named in :data:`DRIVER_MODULES` exports a :class:`~drivers.driver.Driver` as
``DRIVER``; config, sensor opening and probe read those and list no sensor themselves.
"""

from __future__ import annotations

from importlib import import_module

from drivers.driver import Driver
from drivers.reading import Field, Reading, Sensor, SensorError

__all__ = [
    "DRIVER_MODULES",
    "Driver",
    "Field",
    "Reading",
    "Sensor",
    "SensorError",
    "find",
    "registered",
]

DRIVER_MODULES: tuple[str, ...] = ("drivers.dylos", "drivers.dht22", "drivers.bme280")
"""The modules that export a ``DRIVER``, in the order their fields appear in the ident."""


def registered() -> tuple[Driver, ...]:
    """The description of every driver in :data:`DRIVER_MODULES`, in that order."""
    found = tuple(import_module(name).DRIVER for name in DRIVER_MODULES)
    sections = [d.section for d in found]
    if len(set(sections)) != len(sections):
        raise RuntimeError(f"two drivers claim the same section: {sections}")
    return found


def find(section: str) -> Driver:
    """The driver of ``[section]``; KeyError when no registered driver has that section."""
    for driver in registered():
        if driver.section == section:
            return driver
    raise KeyError(section)
