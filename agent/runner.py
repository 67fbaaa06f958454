"""``sensorkit run``: sensors poll on their own threads, windows close every ``interval``.

Each enabled sensor gets a thread that opens it (retrying with backoff if it is missing),
then reads it on its own cadence and hands readings to the aggregator. The main thread closes
a window every ``interval`` seconds (aligned to whole multiples of it), sends the ident when it
changed and the window's data telegram to every output, and keeps a status snapshot fresh.
A sensor that keeps failing is reported while the others carry on; its fields are simply
absent from the data telegrams.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from agent import __version__
from agent.aggregator import Aggregator, SensorFields, build_ident
from agent.config import ConfigError, SensorSettings, Settings
from agent.errors import SensorkitError
from agent.outputs import Output, Queued
from agent.sensors import open_sensor
from agent.status import runtime_path, snapshot_path, write_snapshot
from agent.telegram import Ident, Telegram
from agent.windowlog import WindowLog
from drivers.reading import Reading, Sensor, SensorError

log = logging.getLogger("sensorkit.agent")

FAILING_AFTER = 3  # consecutive failed reads before a sensor is reported as failing
REOPEN_MAX = 60.0  # seconds between attempts to open a sensor that is not there
SNAPSHOT_EVERY = 5.0


@dataclass
class SensorHealth:
    """A sensor's recent record, for ``status`` and for log-once messages.

    ``implausible`` counts its readings dropped as outside what it can measure, by the driver
    or the aggregator; ``not_finite`` those its calibration turned into inf or NaN;
    ``garbage_lines`` device output that was no measurement.
    """

    state: str = "starting"  # starting | ok | failing | disconnected
    readings: int = 0
    last_reading: float | None = None
    last_error: str | None = None
    failures: int = 0
    implausible: int = 0
    not_finite: int = 0
    garbage_lines: int = 0

    def succeeded(self, name: str, count: int) -> None:
        if self.state in ("failing", "disconnected"):
            log.info("%s is back: %d readings", name, count)
        self.state, self.failures, self.last_error = "ok", 0, None
        self.readings += count
        self.last_reading = time.time()

    def failed(self, name: str, message: str) -> None:
        self.failures += 1
        self.last_error = message
        if self.failures == FAILING_AFTER:
            self.state = "failing"
            log.error("%s keeps failing (%d times in a row): %s", name, self.failures, message)
        elif self.failures < FAILING_AFTER:
            log.warning("%s: %s", name, message)


class SensorLoop(threading.Thread):
    """Opens one sensor and polls it until ``stop`` is set."""

    def __init__(self, settings: Settings, sensor: SensorSettings, agent: Agent) -> None:
        super().__init__(name=f"sensor-{sensor.name}", daemon=True)
        self.config = settings
        self.settings = sensor
        self.agent = agent
        self.health = SensorHealth()
        self.sensor: Sensor | None = None

    def open(self) -> bool:
        name = self.settings.name
        try:
            self.sensor = open_sensor(
                self.settings, self.config.weather, transport=self.agent.transports.get(name)
            )
        except (SensorError, OSError, ValueError, RuntimeError) as err:
            self.health.failed(name, str(err))
            return False
        where = f"{self.config.path} [{name}]"
        self.agent.aggregator.register(
            SensorFields(name, self.sensor.fields, self.settings.calibration, where)
        )
        if getattr(self.sensor, "connected", True) is False:  # e.g. a serial port not there yet
            self.health.state = "disconnected"
            self.health.last_error = getattr(self.sensor, "last_error", None)
            log.info(
                "%s: waiting for the device (%s backend); readings start when it answers",
                name,
                self.settings.backend,
            )
        else:
            log.info("%s: opened (%s backend)", name, self.settings.backend)
        return True

    def run(self) -> None:
        stop = self.agent.stop
        delay = 1.0
        while self.sensor is None and not stop.is_set():
            if self.open():
                break
            stop.wait(delay)
            delay = min(delay * 2, REOPEN_MAX)
        while not stop.is_set() and self.sensor is not None:
            started = time.monotonic()
            self.poll(self.sensor)
            wait = self.sensor.poll_interval - (time.monotonic() - started)
            if self.health.state == "failing":
                wait = max(wait, min(REOPEN_MAX, 2.0**self.health.failures))
            if wait > 0:
                stop.wait(wait)

    def poll(self, sensor: Sensor) -> None:
        try:
            readings = sensor.read()
        except SensorError as err:
            self.health.failed(self.settings.name, str(err))
            return
        except Exception as err:  # a driver bug must not take the other sensors down
            log.exception("%s: unexpected error while reading", self.settings.name)
            self.health.failed(self.settings.name, f"unexpected {type(err).__name__}: {err}")
            return
        implausible, not_finite = self.agent.aggregator.dropped(f.name for f in sensor.fields)
        self.health.implausible = getattr(sensor, "implausible", 0) + implausible
        self.health.not_finite = not_finite
        self.health.garbage_lines = getattr(sensor, "garbage_lines", 0)
        if readings:
            self.agent.accept(readings)
            self.health.succeeded(self.settings.name, len(readings))
        elif getattr(sensor, "connected", True) is False:
            self.health.state = "disconnected"
            self.health.last_error = getattr(sensor, "last_error", None)

    def close(self) -> None:
        if self.sensor is not None:
            try:
                self.sensor.close()
            except Exception:  # closing is best effort at shutdown
                log.exception("%s: error while closing", self.settings.name)


class Agent:
    """Wires enabled sensors -> aggregator -> outputs and runs the window clock.

    ``transports`` maps a sensor's name to a transport (a simulated port, bus or device) its
    driver uses instead of opening its own.
    """

    def __init__(
        self,
        settings: Settings,
        outputs: list[Output],
        transports: Mapping[str, object] | None = None,
    ) -> None:
        self.settings = settings
        self.outputs = outputs
        self.transports = dict(transports or {})
        enabled = [s for s in settings.sensors if s.enabled]
        self.aggregator = Aggregator(order=[s.name for s in enabled])
        self.stop = threading.Event()
        self.loops = [SensorLoop(settings, s, self) for s in enabled]
        self._ident: Ident | None = None
        self._output_errors: dict[str, str] = {}
        self._snapshot = snapshot_path(settings.kit.state_dir)
        self._last_end = 0
        self._window_lock = threading.Lock()
        try:
            self._window_log = WindowLog(runtime_path(settings.kit.state_dir, "window.log"))
        except OSError as err:
            raise ConfigError(
                f"{settings.path} [kit] state_dir: cannot write {settings.kit.state_dir} "
                f"({err.strerror}); allowed: a folder this user may create and write"
            ) from None

    def accept(self, readings: Sequence[Reading]) -> None:
        """Readings from a sensor thread: kept on disk, then into the current window."""
        with self._window_lock:
            try:
                self._window_log.append(readings)
            except OSError as err:
                log.warning("window log: %s; these readings are held in memory only", err)
            self.aggregator.add(readings)

    def _recover_window(self) -> None:
        """Readings a crash left in the window log: their window's telegram is sent now."""
        readings = self._window_log.recover()
        if not readings:
            return
        interval = self.settings.kit.interval
        end = (int(min(r.time for r in readings)) // interval + 1) * interval
        log.info("recovered %d readings of the window ending %d", len(readings), end)
        self.aggregator.add(readings)
        if end <= time.time():
            self.close_window(end)

    def run(self) -> int:
        """Run until :attr:`stop` is set; returns the exit code."""
        if not self.loops:
            log.warning("no sensor is enabled in %s; only idents will be sent", self.settings.path)
        for loop in self.loops:
            loop.open()  # open synchronously first, so the first ident lists what is there
        for output in self.outputs:
            if isinstance(output, Queued):
                output.start()
        self._send_ident_if_changed()
        self._recover_window()
        for loop in self.loops:
            loop.start()
        interval = self.settings.kit.interval
        try:
            while not self.stop.is_set():
                end = (int(time.time()) // interval + 1) * interval
                while not self.stop.is_set() and time.time() < end:
                    self.write_snapshot()
                    self.stop.wait(min(SNAPSHOT_EVERY, max(0.0, end - time.time())))
                if self.stop.is_set():
                    break
                self.close_window(end)
        finally:
            self.stop.set()
            for loop in self.loops:  # a read in progress still lands in the last window
                loop.join(timeout=5)
            self.close_window(self._partial_window_end())
            for loop in self.loops:
                loop.close()
            for output in self.outputs:
                output.close()
            self._window_log.close()
            self._snapshot.unlink(missing_ok=True)  # `status` now reads the queues on disk
        return 0

    def _partial_window_end(self) -> int:
        """A stamp for the readings of a window cut short: now, but never a second already
        used (which would overwrite that point) nor one in the future (a quick restart could
        build a point for the same second)."""
        while int(time.time()) <= self._last_end:
            time.sleep(0.05)
        return int(time.time())

    def close_window(self, end: int) -> None:
        self._send_ident_if_changed()
        with self._window_lock:
            data = self.aggregator.close_window(end)
            if data is not None:
                self._last_end = end
                self._send(data)
            self._window_log.clear()  # the outputs hold the window now

    def _send_ident_if_changed(self) -> None:
        kit = self.settings.kit
        ident = build_ident(kit, self.aggregator.sensors, version=__version__)
        if ident != self._ident:
            self._ident = ident
            self._send(ident)

    def _send(self, telegram: Telegram) -> None:
        for output in self.outputs:
            try:
                output.send(telegram)
            except SensorkitError as err:  # said once per change; the other outputs go on
                if self._output_errors.get(output.name) != str(err):
                    log.error("output %s could not take a telegram: %s", output.name, err)
                self._output_errors[output.name] = str(err)
                continue
            except Exception:  # a bug in one output must not stop the others
                log.exception("output %s could not take a telegram", output.name)
                continue
            if self._output_errors.pop(output.name, None):
                log.info("output %s takes telegrams again", output.name)

    def status(self) -> dict[str, object]:
        sensors = {}
        for loop in self.loops:
            health = asdict(loop.health)
            health["backend"] = loop.settings.backend
            sensors[loop.settings.name] = health
        return {
            "pid": os.getpid(),
            "time": time.time(),
            "config": str(self.settings.path),
            "outputs": {o.name: o.status() for o in self.outputs},
            "sensors": sensors,
            "implausible": dict(self.aggregator.implausible),
            "not_finite": dict(self.aggregator.not_finite),
            "unsent_means": dict(self.aggregator.unsent_means),
        }

    def write_snapshot(self) -> None:
        try:
            write_snapshot(self._snapshot, self.status())
        except OSError as err:
            log.debug("status snapshot %s not written: %s", Path(self._snapshot), err)
