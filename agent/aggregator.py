"""Readings into telegrams: calibration, plausibility, robust window averages, the kit's ident.

Every ``interval`` seconds the agent closes a window: each field's calibrated readings are
averaged and one :class:`~agent.telegram.Data` is stamped with the window's end. A field with
no reading in the window is absent from that telegram, never sent as zero.

Robust average: with five or more readings, values whose modified z-score
``0.6745 * |x - median| / MAD`` exceeds 3.5 are left out before the arithmetic mean is taken
(Iglewicz and Hoaglin, "How to Detect and Handle Outliers", 1993). When the MAD is zero the
mean absolute deviation stands in for it (z = |x - median| / (1.2533 * meanAD)). With fewer
readings, or when nothing stands out, it is the plain mean.

Only finite numbers are sent: a reading that its calibration turns into inf or NaN is
dropped, and a window mean that is not finite (an overflow) is left out of its telegram;
both are counted per field and said once per field.
"""

from __future__ import annotations

import logging
import math
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
    """One enabled sensor's fields and the calibration the config gives them.

    ``where`` names the config file and section the calibration came from, for messages.
    """

    sensor: str
    fields: tuple[Field, ...]
    calibration: dict[str, tuple[float, ...]]
    where: str = ""


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
        self._where: dict[str, str] = {}
        self._window: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()
        self.implausible: dict[str, int] = defaultdict(int)
        self.not_finite: dict[str, int] = defaultdict(int)
        """Readings dropped per field because their calibrated value was inf or NaN."""
        self.unsent_means: dict[str, int] = defaultdict(int)
        """Window means left out per field because they were not finite."""
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
            self._where = {f.name: s.where for s in self._sensors for f in s.fields}

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
                coefficients = self._calibration.get(reading.field, ())
                value = calibrate(reading.value, coefficients)
                if not math.isfinite(value):
                    self._not_finite(reading, coefficients, value)
                    continue
                self._window[reading.field].append(value)

    def _not_finite(self, reading: Reading, coefficients: Sequence[float], value: float) -> None:
        """Count a reading its calibration made inf or NaN; say so the first time per field."""
        self.not_finite[reading.field] += 1
        if self.not_finite[reading.field] == 1:
            where = self._where.get(reading.field) or f"[{reading.field}]"
            log.warning(
                "%s calibration.%s = %s turns the reading %r into %r; such readings are "
                "dropped and counted in `sensorkit status` (not said again); use coefficients "
                "that keep values finite",
                where,
                reading.field,
                " ".join(f"{c:g}" for c in coefficients),
                reading.value,
                value,
            )

    def dropped(self, fields: Iterable[str]) -> tuple[int, int]:
        """Readings of ``fields`` dropped so far: (implausible, made not finite by calibration)."""
        names = list(fields)
        with self._lock:
            return (
                sum(self.implausible.get(n, 0) for n in names),
                sum(self.not_finite.get(n, 0) for n in names),
            )

    def close_window(self, end: int) -> Data | None:
        """The window's data telegram stamped ``end``, or None when nothing arrived."""
        with self._lock:
            window, self._window = self._window, defaultdict(list)
        order = [f.name for s in self._sensors for f in s.fields]
        values = []
        for name in order:
            if window.get(name):
                mean = _finite_mean(window[name])
                if mean is None:
                    self._unsent(name, len(window[name]))
                    continue
                values.append((name, round(mean, 6)))
        if not values:
            return None
        return Data(time=int(end), values=tuple(values))

    def _unsent(self, name: str, readings: int) -> None:
        """Count a window mean left out as not finite; say so the first time per field."""
        with self._lock:
            self.unsent_means[name] += 1
            first = self.unsent_means[name] == 1
        if first:
            log.warning(
                "%s: the mean of %d readings is not a finite number (they overflow); it is left "
                "out of the telegram and counted in `sensorkit status` (not said again); check "
                "calibration.%s in %s",
                name,
                readings,
                name,
                self._where.get(name) or "the config",
            )


def _finite_mean(values: Sequence[float]) -> float | None:
    """The robust mean of finite ``values``, or None when it is not a finite number."""
    try:
        mean = robust_mean(values)
    except (OverflowError, statistics.StatisticsError):  # fsum overflows, or nothing kept
        return None
    return mean if math.isfinite(mean) else None
