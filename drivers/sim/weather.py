"""A small deterministic weather model for the simulated sensors: a daily cycle plus noise."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Weather:
    """Mean values and daily swings; the coldest, most humid hour is 05:00 local solar time."""

    temperature: float = 15.0  # C, daily mean
    temperature_swing: float = 6.0  # C, half of the daily range
    humidity: float = 70.0  # %, daily mean
    humidity_swing: float = 15.0  # %, half of the daily range
    pressure: float = 1013.25  # hPa at the kit
    noise: float = 0.05  # standard deviation of the noise, as a share of each swing
    seed: int = 1

    def at(self, t: float) -> tuple[float, float, float]:
        """Temperature (C), relative humidity (%) and pressure (hPa) at UNIX time ``t``."""
        phase = 2 * math.pi * (((t / 3600.0) - 5.0) % 24.0) / 24.0
        warmth = -math.cos(phase)  # -1 at 05:00, +1 at 17:00
        rng = random.Random(int(t) ^ self.seed)
        temp = self.temperature + self.temperature_swing * (warmth + rng.gauss(0, self.noise))
        rh = self.humidity - self.humidity_swing * (warmth + rng.gauss(0, self.noise))
        hpa = self.pressure + 2.0 * math.sin(phase / 2) + rng.gauss(0, 0.05)
        return temp, min(100.0, max(0.0, rh)), hpa
