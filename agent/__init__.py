"""sensorkit: the Raspberry Pi air-quality kit agent (aggregator, outputs, CLI)."""

__version__ = "0.1.0"
