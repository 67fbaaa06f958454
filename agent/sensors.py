"""The one switch from ``agent.ini`` to drivers: each sensor opened by its driver's description."""

from __future__ import annotations

import drivers
from agent.config import SensorSettings, WeatherSettings
from drivers.driver import Setup
from drivers.reading import Sensor
from drivers.sim.weather import Weather


def weather_model(settings: WeatherSettings) -> Weather:
    return Weather(
        temperature=settings.temperature,
        temperature_swing=settings.temperature_swing,
        humidity=settings.humidity,
        humidity_swing=settings.humidity_swing,
        pressure=settings.pressure,
        seed=settings.seed,
    )


def setup_of(
    settings: SensorSettings, weather: WeatherSettings, transport: object | None = None
) -> Setup:
    """What the sensor's driver needs to open or probe it, from its settings."""
    return Setup(
        backend=settings.backend,
        fields=settings.fields,
        options=settings.options,
        weather=weather_model(weather),
        config_file=settings.config_file,
        transport=transport,
    )


def open_sensor(
    settings: SensorSettings, weather: WeatherSettings, *, transport: object | None = None
) -> Sensor:
    """Open one sensor; drivers import their hardware libraries only for ``hardware``.

    ``transport`` (a simulated port, bus or device) replaces what the backend would open.
    """
    return drivers.find(settings.name).open(setup_of(settings, weather, transport))
