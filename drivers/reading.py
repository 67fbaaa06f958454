"""What every driver hands upward: the fields it measures and timestamped readings of them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class SensorError(Exception):
    """A sensor could not be read; the message says what, where and what to do."""


@dataclass(frozen=True)
class Field:
    """One measured quantity: its telegram name, unit, sensor type and physical range."""

    name: str
    unit: str
    type: str
    low: float = -math.inf
    high: float = math.inf

    def plausible(self, value: float) -> bool:
        """True when the sensor can physically produce ``value``."""
        return math.isfinite(value) and self.low <= value <= self.high


@dataclass(frozen=True)
class Reading:
    """One value of one field, taken at ``time`` (UNIX seconds, float)."""

    field: str
    value: float
    time: float


class Sensor(Protocol):
    """What the agent needs of a driver; each driver module has an ``open_<name>()`` factory.

    ``read()`` returns the readings taken now (an empty list when nothing new arrived) and
    raises :class:`SensorError` once its own bounded retries of transient faults are used up.
    ``poll_interval`` is the seconds between ``read()`` calls; 0 means ``read()`` itself waits
    for the device (a streaming sensor such as the Dylos).
    """

    name: str
    fields: tuple[Field, ...]
    poll_interval: float

    def read(self) -> list[Reading]: ...

    def close(self) -> None: ...
