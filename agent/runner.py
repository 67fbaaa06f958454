"""``sensorkit run``: sensors poll on their own threads, windows close every ``interval``.

Each enabled sensor gets a thread that opens it (retrying with backoff if it is missing),
then reads it on its own cadence and hands readings to the aggregator. The main thread closes
a window every ``interval`` seconds (on the monotonic clock, ending at whole multiples of it on
the wall clock once that is synchronised, see agent/clock.py), sends the ident when it
changed and the window's data telegram to every output, and keeps a status snapshot fresh.
A sensor that keeps failing is reported while the others carry on; its fields are simply
absent from the data telegrams.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from agent import __version__, systemd
from agent.aggregator import Aggregator, SensorFields, build_ident
from agent.clock import Clock, Stamps, boot_id
from agent.config import ConfigError, SensorSettings, Settings
from agent.errors import SensorkitError
from agent.outputs import Output, Queued
from agent.ramfiles import runtime_path
from agent.sensors import open_sensor
from agent.status import snapshot_path, write_snapshot
from agent.telegram import Data, Ident, Telegram
from agent.undated import Held, Undated
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
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or Clock(settings.kit.clock)
        self.boot = boot_id()
        self.undated = Undated(settings.kit.state_dir / "undated.jsonl")
        self.watchdog = systemd.Watchdog()
        self._status_sent = ("", 0.0)
        self.outputs = outputs
        self.transports = dict(transports or {})
        enabled = [s for s in settings.sensors if s.enabled]
        self.aggregator = Aggregator(order=[s.name for s in enabled])
        self.stop = threading.Event()
        self.loops = [SensorLoop(settings, s, self) for s in enabled]
        self._ident: Ident | None = None
        self._output_errors: dict[str, str] = {}
        self._snapshot = snapshot_path(settings.kit.state_dir)
        self.stamps = Stamps()
        self._held: list[Held] = []  # windows closed before the clock could date them
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

    def _recover(self) -> None:
        """What an earlier run left: the readings of its last window (sent now, stamped
        with that window's end), its last stamp (never reused), and windows it could not
        date (dated later if this is still the same boot, else quarantined)."""
        readings = self._window_log.recover()
        self.stamps = Stamps(floor=self._window_log.last_stamp)
        held = self.undated.load()
        self._held = [h for h in held if h.boot == self.boot]
        self._keep_aside([h for h in held if h.boot != self.boot])
        if not readings:
            return
        self.aggregator.add(readings)
        if not self.clock.synced():
            return  # they join the first window, which is dated once the clock is
        interval = self.settings.kit.interval
        end = (int(min(r.time for r in readings)) // interval + 1) * interval
        log.info("recovered %d readings of the window ending %d", len(readings), end)
        if end <= self.clock.wall():
            self.close_window(self.clock.mono() - (self.clock.wall() - end))

    def _keep_aside(self, held: list[Held]) -> None:
        """Windows of an earlier boot taken before the clock was set: never datable."""
        if not held:
            return
        reason = (
            "measured before the clock was synchronised, and the kit restarted before it was: "
            "its time cannot be known (the clock showed the time stamped here)"
        )
        ident = build_ident(self.settings.kit, self.aggregator.sensors, version=__version__)
        telegrams: list[Telegram] = [dataclasses.replace(ident, time=int(held[0].wall))]
        telegrams += [Data(time=int(h.wall), values=h.values) for h in held]
        for output in self.outputs:
            if isinstance(output, Queued):
                output.keep_aside(telegrams, reason, held[0].wall)
        log.warning("%d windows could never be dated; quarantined (%s)", len(held), reason)
        self.undated.clear()

    def run(self) -> int:
        """Run until :attr:`stop` is set; returns the exit code."""
        if not self.loops:
            log.warning("no sensor is enabled in %s; only idents will be sent", self.settings.path)
        for loop in self.loops:
            loop.open()  # open synchronously first, so the first ident lists what is there
        queued = [o for o in self.outputs if isinstance(o, Queued)]
        for output in queued:
            output.start()
        self._recover()
        self._send_ident_if_changed()
        for loop in self.loops:
            loop.start()
        self.watchdog.expect("window", within=30.0)
        for output in queued:
            self.watchdog.expect(output.name, within=90.0)
        if not self.clock.synced():
            log.warning(
                "the clock is not synchronised yet ([kit] clock = %s): windows are kept and "
                "dated once it is; nothing is sent with a time that may be wrong",
                self.settings.kit.clock,
            )
        systemd.ready(systemd.status_line(self.status()))
        try:
            end = self._next_end(None)
            while not self.stop.is_set():
                while not self.stop.is_set() and self.clock.mono() < end:
                    self._tick()
                    self.stop.wait(min(SNAPSHOT_EVERY, max(0.0, end - self.clock.mono())))
                if self.stop.is_set():
                    break
                self.close_window(end)
                end = self._next_end(end)
        finally:
            systemd.stopping("finishing the current window and stopping")
            self.stop.set()
            for loop in self.loops:  # a read in progress still lands in the last window
                loop.join(timeout=5)
            self.close_window(self.clock.mono())
            for loop in self.loops:
                loop.close()
            for output in self.outputs:
                output.close()
            self._window_log.close()
            self._snapshot.unlink(missing_ok=True)  # `status` now reads the queues on disk
        return 0

    def _next_end(self, after: float | None) -> float:
        """When the next window ends, on the monotonic clock: at the next whole multiple of
        ``interval`` on the wall clock once that can be trusted, so a step of the wall clock
        neither stalls the windows nor merges two."""
        interval = self.settings.kit.interval
        now = self.clock.mono()
        start = now if after is None else max(now, after)
        if not self.clock.synced():
            return start + interval
        wall = self.clock.date(start)
        end = start + ((int(wall) // interval + 1) * interval - wall)
        if after is not None and end - after < interval / 2:
            end += interval
        return end

    def _tick(self) -> None:
        """Between window ends: status snapshot, watchdog, STATUS line, a clock that synced."""
        self.write_snapshot()
        self.watchdog.beat("window")
        for output in self.outputs:
            if isinstance(output, Queued) and output.alive():
                self.watchdog.beat(output.name)
        self.watchdog.check()
        line = systemd.status_line(self.status())
        text, sent = self._status_sent
        if line != text or time.monotonic() - sent > 30:
            systemd.status(line)
            self._status_sent = (line, time.monotonic())
        if self._held and self.clock.synced():
            with self._window_lock:
                self._send_held()

    def close_window(self, end: float) -> None:
        """Close the window ending at monotonic ``end``: dated and sent, or held."""
        with self._window_lock:
            data = self.aggregator.close_window(0)
            synced = self.clock.synced()
            if synced and self._held:
                self._send_held()
            if synced:
                self._send_ident_if_changed()
            if data is not None:
                if synced:
                    stamp = self.stamps.take(round(self.clock.date(end)))
                    self._send(dataclasses.replace(data, time=stamp))
                else:
                    held = Held(self.boot, end, self.clock.wall(), data.values)
                    self._held.append(held)
                    try:
                        self.undated.add(held)
                    except OSError as err:
                        log.warning(
                            "%s: %s; this window is held in memory only", self.undated.path, err
                        )
            self._window_log.clear(self.stamps.last)  # the outputs (or the held list) have it

    def _send_held(self) -> None:
        """The clock is synchronised: date the held windows by it and send them, in order."""
        held, self._held = self._held, []
        stamps = [self.stamps.take(round(self.clock.date(h.mono))) for h in held]
        ident = build_ident(self.settings.kit, self.aggregator.sensors, version=__version__)
        if ident != self._ident:
            self._ident = ident
            self._send(dataclasses.replace(ident, time=stamps[0]))
        for h, stamp in zip(held, stamps, strict=True):
            self._send(Data(time=stamp, values=h.values))
        log.info("the clock is synchronised: %d held windows dated and sent", len(held))
        self.undated.clear()

    def _send_ident_if_changed(self) -> None:
        if not self.clock.synced():
            return  # sent with the first window that can be dated
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
            "clock": {
                "mode": self.clock.mode,
                "synced": self.clock.synced(),
                "held": len(self._held),
            },
            "unsent_means": dict(self.aggregator.unsent_means),
        }

    def write_snapshot(self) -> None:
        try:
            write_snapshot(self._snapshot, self.status())
        except OSError as err:
            log.debug("status snapshot %s not written: %s", Path(self._snapshot), err)
