"""Sensor drivers: each opens its transport, reads, parses and returns readings.

Drivers know their hardware and nothing of telegrams or InfluxDB. The same driver code runs
against real hardware or against the simulated transports in :mod:`drivers.sim`; one
``backend`` switch (``hardware`` or ``simulated``) chooses which.
"""

from drivers.reading import Field, Reading, Sensor, SensorError

__all__ = ["Field", "Reading", "Sensor", "SensorError"]
