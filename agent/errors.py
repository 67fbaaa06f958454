"""The root of sensorkit's errors: each kind says which exit code the command line gives it.

Drivers keep their own :class:`drivers.reading.SensorError` (they never import the agent);
it is caught where a sensor is read, and never reaches the command line.
"""

from __future__ import annotations


class SensorkitError(Exception):
    """Something the user is told in one line; ``exit_code`` is what ``sensorkit`` exits with."""

    exit_code = 1


class UsageError(SensorkitError):
    """Bad usage, a bad setting or bad input: exit code 2."""

    exit_code = 2
