"""The one switch from ``agent.ini`` to drivers: each enabled sensor opened on its backend."""

from __future__ import annotations

from agent.config import SensorSettings, WeatherSettings
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


def open_sensor(settings: SensorSettings, weather: WeatherSettings) -> Sensor:
    """Open one sensor; drivers import their hardware libraries only for ``hardware``."""
    options = dict(settings.options)
    if settings.name == "dylos":
        from drivers.dylos import open_dylos

        return open_dylos(settings.backend, field_names=settings.fields, **options)
    if settings.name == "dht22":
        from drivers.dht22 import open_dht22

        return open_dht22(
            settings.backend,
            field_names=settings.fields,
            weather=weather_model(weather),
            seed=weather.seed,
            **options,
        )
    if settings.name == "bme280":
        from drivers.bme280 import open_bme280

        interval = options.pop("poll_interval")
        sensor = open_bme280(
            settings.backend,
            field_names=settings.fields,
            weather=weather_model(weather),
            **options,
        )
        sensor.poll_interval = interval
        return sensor
    raise ValueError(f"no driver for [{settings.name}]")
