"""What a driver module declares about itself, so the agent needs no list of sensors.

Each driver module exports one :class:`Driver` named ``DRIVER``: its ``agent.ini`` section,
its fields, how to read its own options from that section, how to open it and how to probe
it. The agent (config, sensor opening, probe) reads these descriptions; drivers never import
the agent. A section is read through :class:`SectionReader`, which the config provides, so a
bad value raises the config's own error naming file, section and key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from drivers.reading import Field, Sensor
from drivers.sim.weather import Weather

BACKENDS = ("hardware", "simulated")
"""``hardware``: the real bus or port; ``simulated``: a simulated transport, same driver code."""

N = TypeVar("N", int, float)


class SectionReader(Protocol):
    """Typed access to one ``agent.ini`` section; every method raises the config's error.

    Numbers, flags and choices may carry a trailing ``# comment``; text is taken whole.
    """

    def fail(self, key: str, problem: str) -> Exception:
        """The error to raise for ``key``: it names the file, the section and the key."""
        ...

    def text(self, key: str, default: str = "") -> str:
        """Text on one line, as written."""
        ...

    def typed(self, key: str) -> str | None:
        """The value without a trailing comment, for a driver's own parsing; None if unset."""
        ...

    def number(
        self,
        key: str,
        default: N,
        kind: Callable[[str], N],
        low: float | None = None,
        high: float | None = None,
        unit: str = "",
    ) -> N:
        """A finite number of ``kind`` within ``low``..``high``."""
        ...

    def flag(self, key: str, default: bool) -> bool:
        """yes/no, true/false, on/off, 1/0."""
        ...

    def relative_path(self, key: str) -> Path | None:
        """A path relative to the config file's folder; None when unset."""
        ...


@dataclass(frozen=True)
class Setup:
    """Everything a driver needs to open one sensor, as the config gave it.

    ``options`` are the keyword arguments its option parser returned. ``transport`` replaces
    the bus, port or device the backend would open (a simulated one in tests); the driver
    then does not own it and leaves it open on close. ``config_file`` names the file the
    settings came from, for messages.
    """

    backend: str
    fields: tuple[str, ...]
    options: Mapping[str, object] = field(default_factory=dict)
    weather: Weather = field(default_factory=Weather)
    config_file: str = "agent.ini"
    transport: object | None = None


@dataclass(frozen=True)
class Probe:
    """What ``sensorkit probe`` found for one sensor.

    ``lines`` describe it for the reader; ``suggest`` holds the ``key = value`` lines for its
    section, and is empty unless the sensor was really found (it answered).
    """

    lines: tuple[str, ...]
    suggest: tuple[str, ...] = ()


@dataclass(frozen=True)
class Driver:
    """One sensor type: its section, fields, options, and how to open and probe it.

    ``fields`` carry the default telegram names (``fields =`` renames them, same count),
    units, types and physical ranges. ``parse_options`` reads the section's own keys (the
    config reads ``enabled``, ``backend``, ``fields`` and ``calibration.*`` itself) and
    returns ``open``'s options. ``probe`` gets the seconds it may wait for a device that
    talks on its own schedule.
    """

    section: str
    summary: str
    fields: tuple[Field, ...]
    parse_options: Callable[[SectionReader], dict[str, object]]
    open: Callable[[Setup], Sensor]
    probe: Callable[[Setup, float], Probe]
    backends: tuple[str, ...] = BACKENDS

    @property
    def field_names(self) -> tuple[str, ...]:
        """The default telegram names of the fields."""
        return tuple(f.name for f in self.fields)
