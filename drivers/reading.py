"""What every driver hands upward: the fields it measures and timestamped readings of them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class SensorError(Exception):
    """A sensor could not be opened or read; the message says what, where and what to do."""


class OptionError(SensorError, ValueError):
    """A driver was given an option it cannot use (backend, field names, timings, a file).

    Also a ValueError: it is a bad value, refused before any hardware is touched.
    """


class DataError(SensorError, ValueError):
    """Bytes from a device that are not a measurement (a garbled or foreign line)."""


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
    """What the agent needs of an opened driver (see :mod:`drivers.driver` for opening one).

    ``read()`` returns the readings taken now (an empty list when nothing new arrived) and
    raises :class:`SensorError` once its own bounded retries of transient faults are used up.
    ``poll_interval`` is the seconds between ``read()`` calls; 0 means ``read()`` itself waits
    for the device (a streaming sensor such as the Dylos).

    Optional counters the agent reports in ``sensorkit status`` when a driver has them:
    ``implausible`` (values refused as outside what the sensor can produce), ``garbage_lines``
    (device output that is not a measurement), ``connected`` and ``last_error`` (a port that
    is away).
    """

    name: str
    fields: tuple[Field, ...]
    poll_interval: float

    def read(self) -> list[Reading]: ...

    def close(self) -> None: ...
