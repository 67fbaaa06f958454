"""Readings into telegrams: calibration, plausibility, robust window averages, the kit's ident.

Every ``interval`` seconds the agent closes a window: each field's calibrated readings are
averaged and one :class:`~agent.telegram.Data` is stamped with the window's end. A field with
no reading in the window is absent from that telegram, never sent as zero.

Robust average: with five or more readings, values whose modified z-score
``0.6745 * |x - median| / MAD`` exceeds 3.5 are left out before the arithmetic mean is taken
(Iglewicz and Hoaglin, "How to Detect and Handle Outliers", 1993). When the MAD is zero the
mean absolute deviation stands in for it (z = |x - median| / (1.2533 * meanAD)). With fewer
readings, or when nothing stands out, it is the plain mean.
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.config import KitSettings
from agent.telegram import Data, Ident
from drivers.reading import Field, Reading

log = logging.getLogger("sensorkit.aggregator")

OUTLIER_Z = 3.5
ROBUST_MIN_READINGS = 5


@dataclass(frozen=True)
class SensorFields:
    """One enabled sensor's fields and the calibration the config gives them."""

    sensor: str
    fields: tuple[Field, ...]
    calibration: dict[str, tuple[float, ...]]


def calibrate(value: float, coefficients: Sequence[float]) -> float:
    """a0 + a1*x + a2*x**2 + ... (Horner); no coefficients means the value as read."""
    if not coefficients:
        return value
    result = 0.0
    for coefficient in reversed(coefficients):
        result = result * value + coefficient
    return result


def robust_mean(values: Sequence[float]) -> float:
    """The mean after leaving out outliers by modified z-score (see the module docstring)."""
    if len(values) < ROBUST_MIN_READINGS:
        return statistics.fmean(values)
    median = statistics.median(values)
    deviations = [abs(v - median) for v in values]
    mad = statistics.median(deviations)
    if mad > 0:
        kept = [v for v, d in zip(values, deviations, strict=True) if 0.6745 * d / mad <= OUTLIER_Z]
    else:
        mean_ad = statistics.fmean(deviations)
        if mean_ad == 0:
            return median
        scale = 1.2533 * mean_ad
        kept = [v for v, d in zip(values, deviations, strict=True) if d / scale <= OUTLIER_Z]
    return statistics.fmean(kept)


def build_ident(kit: KitSettings, sensors: Iterable[SensorFields], version: str = "") -> Ident:
    """The kit's ident: ``[kit]`` plus each enabled sensor's fields, units and types, in order."""
    fields, units, types = ["time"], ["s"], ["time"]
    for sensor in sensors:
        for f in sensor.fields:
            fields.append(f.name)
            units.append(f.unit)
            types.append(f.type)
    return Ident(
        project=kit.project,
        serial=kit.serial,
        label=kit.label,
        geolocation=kit.geolocation,
        description=kit.description,
        fields=tuple(fields),
        units=tuple(units),
        types=tuple(types),
        version=version,
    )


class Aggregator:
    """Collects readings from the sensor threads and closes windows into data telegrams."""

    def __init__(self, sensors: Sequence[SensorFields] = (), order: Sequence[str] = ()) -> None:
        self._order_of_sensors = list(order)
        self._sensors: list[SensorFields] = []
        self._fields: dict[str, Field] = {}
        self._calibration: dict[str, tuple[float, ...]] = {}
        self._window: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()
        self.implausible: dict[str, int] = defaultdict(int)
        for sensor in sensors:
            self.register(sensor)

    def register(self, sensor: SensorFields) -> None:
        """Start accepting a sensor's fields (sensors may come up after the agent started)."""
        with self._lock:
            self._sensors = [s for s in self._sensors if s.sensor != sensor.sensor] + [sensor]
            rank = {name: i for i, name in enumerate(self._order_of_sensors)}
            self._sensors.sort(key=lambda s: rank.get(s.sensor, len(rank)))
            self._fields = {f.name: f for s in self._sensors for f in s.fields}
            self._calibration = {n: c for s in self._sensors for n, c in s.calibration.items()}

    @property
    def sensors(self) -> tuple[SensorFields, ...]:
        """The registered sensors in config order: what the ident describes."""
        return tuple(self._sensors)

    def add(self, readings: Iterable[Reading]) -> None:
        """Accept readings: implausible ones are dropped and counted, the rest calibrated."""
        with self._lock:
            for reading in readings:
                spec = self._fields.get(reading.field)
                if spec is None:
                    continue
                if not spec.plausible(reading.value):
                    self.implausible[reading.field] += 1
                    log.warning(
                        "%s: %r is outside what a %s can measure (%g..%g %s); dropped",
                        reading.field,
                        reading.value,
                        spec.type,
                        spec.low,
                        spec.high,
                        spec.unit,
                    )
                    continue
                value = calibrate(reading.value, self._calibration.get(reading.field, ()))
                self._window[reading.field].append(value)

    def close_window(self, end: int, geolocation: str = "") -> Data | None:
        """The window's data telegram stamped ``end``, or None when nothing arrived."""
        with self._lock:
            window, self._window = self._window, defaultdict(list)
        order = [f.name for s in self._sensors for f in s.fields]
        values = tuple(
            (name, round(robust_mean(window[name]), 6)) for name in order if window.get(name)
        )
        if not values:
            return None
        return Data(time=int(end), values=values, geolocation=geolocation)
