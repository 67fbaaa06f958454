"""``agent.ini`` into typed, frozen settings; every bad value is refused with file, section and key.

Lookup order: ``-c``, else ``$SENSORKIT_CONFIG``, else ``/etc/sensorkit/agent.ini``, else
``./agent.ini``. The shipped ``agent.ini`` documents every key read here.

Every refusal reads ``<file> [section] key: what is wrong; allowed: ...``. Text values
(names, label, description, paths, URL, password) are taken whole, so a ``#`` or ``;`` in a
password or a description is kept; numbers, yes/no flags and choices may carry a trailing
``# comment``.
"""

from __future__ import annotations

import configparser
import logging
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from agent.lineprotocol import (
    MAX_NAME_BYTES,
    check_database_name,
    check_key,
    check_point_key,
    check_tag_value,
    check_text,
)

log = logging.getLogger("sensorkit.config")

SYSTEM_CONFIG = Path("/etc/sensorkit/agent.ini")
BACKENDS = ("hardware", "simulated")
_INLINE_COMMENT = re.compile(r"\s+[#;].*$")
_TEXT_ALLOWED = "text on one line"
_TAG_ALLOWED = (
    "printable text on one line (TAB allowed), with no backslash at its end or just before a "
    "space, comma or '='"
)
T = TypeVar("T")


class ConfigError(ValueError):
    """A bad or missing setting; the CLI prints it and exits 2."""


@dataclass(frozen=True)
class KitSettings:
    project: str
    serial: str
    label: str
    geolocation: str
    description: str
    interval: int
    state_dir: Path


@dataclass(frozen=True)
class SensorSettings:
    """What every sensor section has, plus the driver's own keyword options."""

    name: str
    enabled: bool
    backend: str
    fields: tuple[str, ...]
    calibration: dict[str, tuple[float, ...]] = field(default_factory=dict)
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class WeatherSettings:
    """The simulated sensors' weather model ([simulated] section)."""

    temperature: float = 15.0
    temperature_swing: float = 6.0
    humidity: float = 70.0
    humidity_swing: float = 15.0
    pressure: float = 1013.25
    seed: int = 1


@dataclass(frozen=True)
class InfluxSettings:
    enabled: bool
    url: str
    database: str
    username: str
    password: str = field(repr=False)
    timeout: float
    tls_verify: bool
    ca_file: str
    create_database: bool
    batch_size: int
    batch_kb: int
    gzip: bool
    sync_interval: float
    queue_max_mb: float
    retry_max: float


@dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool
    file: str


@dataclass(frozen=True)
class Settings:
    path: Path
    kit: KitSettings
    sensors: tuple[SensorSettings, ...]
    weather: WeatherSettings
    influx: InfluxSettings
    console: ConsoleSettings


def find_config(explicit: str | None) -> Path:
    """The config file to use, by design.md's lookup order."""
    if explicit:
        return Path(explicit)
    if os.environ.get("SENSORKIT_CONFIG"):
        return Path(os.environ["SENSORKIT_CONFIG"])
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    return Path("agent.ini")


class _Section:
    """Typed access to one INI section; remembers which keys were read, to flag typos."""

    def __init__(self, path: Path, parser: configparser.ConfigParser, name: str) -> None:
        self.path = path
        self.name = name
        self.values = dict(parser[name]) if parser.has_section(name) else {}
        self.read: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path} [{self.name}] {key}: {problem}")

    def raw(self, key: str) -> str | None:
        """The value as written (text is taken whole, comment characters and all)."""
        self.read.add(key)
        value = self.values.get(key)
        return None if value is None else value.strip()

    def typed(self, key: str) -> str | None:
        """The value of a number, flag or choice, without a trailing ``# comment``."""
        value = self.raw(key)
        return None if value is None else _INLINE_COMMENT.sub("", value)

    def text(self, key: str, default: str = "", *, tag: bool = False) -> str:
        value = self.raw(key)
        value = default if value is None or value == "" else value
        problem = check_tag_value(value) if tag else check_text(value)
        if problem:
            allowed = _TAG_ALLOWED if tag else _TEXT_ALLOWED
            raise self.fail(key, f"{value!r} {problem}; allowed: {allowed}")
        return value

    def number(
        self,
        key: str,
        default: T,
        kind: Callable[[str], T],
        low: float | None = None,
        high: float | None = None,
        unit: str = "",
    ) -> T:
        value = self.typed(key)
        if value is None or value == "":
            return default
        allowed = _range_text(low, high, unit, kind)
        try:
            number = kind(value)
            if not math.isfinite(number):  # type: ignore[arg-type]
                raise ValueError(value)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise self.fail(key, f"{value!r} is not {noun}; allowed: {allowed}") from None
        if (low is not None and number < low) or (high is not None and number > high):  # type: ignore[operator]
            raise self.fail(key, f"{value!r} is out of range; allowed: {allowed}")
        return number

    def flag(self, key: str, default: bool) -> bool:
        value = self.typed(key)
        if value is None or value == "":
            return default
        lowered = value.lower()
        if lowered in configparser.ConfigParser.BOOLEAN_STATES:
            return configparser.ConfigParser.BOOLEAN_STATES[lowered]
        raise self.fail(key, f"{value!r} is not a yes/no value; allowed: yes, no, true, false")

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = (self.typed(key) or default).lower()
        if value not in allowed:
            raise self.fail(key, f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
        return value

    def names(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.typed(key)
        if not value:
            return default
        names = tuple(value.replace(",", " ").split())
        if len(names) != len(default):
            raise self.fail(
                key,
                f"{value!r} names {len(names)} fields; allowed: {len(default)} names, like "
                f"{' '.join(default)!r}",
            )
        if len(set(names)) != len(names):
            raise self.fail(key, f"{value!r} names a field twice; allowed: different names")
        for name in names:
            if check_key(name) or name.startswith("_"):
                raise self.fail(
                    key,
                    f"{name!r} cannot be an InfluxDB field name; allowed: names without "
                    "backslashes, not 'time', not starting with '_'",
                )
        return names

    def calibrations(self, fields: tuple[str, ...]) -> dict[str, tuple[float, ...]]:
        """``calibration.<field> = a0 a1 ...``: value = a0 + a1*x + a2*x**2 + ..."""
        out = {}
        for key in self.values:
            if not key.startswith("calibration."):
                continue
            name = key.removeprefix("calibration.")
            if name not in fields:
                raise self.fail(
                    key,
                    f"{name!r} is not a field of [{self.name}]; allowed: "
                    + ", ".join(f"calibration.{f}" for f in fields),
                )
            text = self.typed(key) or ""
            try:
                coefficients = tuple(float(c) for c in text.replace(",", " ").split())
            except ValueError:
                coefficients = ()
            if not all(math.isfinite(c) for c in coefficients):
                coefficients = ()
            if not coefficients:
                raise self.fail(
                    key, f"{text!r} is not a list of numbers; allowed: a0 a1 ... (a0 + a1*x + ...)"
                )
            out[name] = coefficients
        return out

    def check_unknown(self) -> None:
        unknown = sorted(set(self.values) - self.read)
        if unknown:
            known = ", ".join(sorted(k for k in self.read if not k.startswith("calibration.")))
            if self.name in ("dylos", "dht22", "bme280"):
                known += ", calibration.<field>"
            raise self.fail(unknown[0], f"unknown key; allowed: {known or 'none'}")


def _range_text(low: float | None, high: float | None, unit: str, kind: Callable) -> str:
    what = "whole numbers" if kind is int else "numbers"
    suffix = f" {unit}" if unit else ""
    if low is not None and high is not None:
        return f"{what} from {low:g} to {high:g}{suffix}"
    if low is not None:
        return f"{what} {low:g} or more{suffix}"
    return what


def _address(text: str) -> int:
    if text.lower() == "auto":
        return 0
    return int(text, 0)


def cpu_serial(
    cpuinfo: Path = Path("/proc/cpuinfo"), machine_id: Path = Path("/etc/machine-id")
) -> str:
    """The Raspberry Pi's CPU serial; off a Pi, the first 16 digits of the machine id."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("Serial") and ":" in line:
                return line.split(":", 1)[1].strip().lstrip("0") or "0"
    except OSError:
        pass
    try:
        return machine_id.read_text().strip()[:16] or "unknown"
    except OSError:
        return "unknown"


def default_state_dir() -> Path:
    if os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/sensorkit")
    return Path.home() / ".local" / "state" / "sensorkit"


_GEO = re.compile(r"^\s*(-?\d+(\.\d+)?)\s*,\s*(-?\d+(\.\d+)?)\s*(,\s*(-?\d+(\.\d+)?)\s*)?$")


def _kit(section: _Section, base: Path) -> KitSettings:
    project = section.text("project")
    names_db = (
        "printable text without spaces, '/', '\\' or '\"', not '.' or '..' (it names the "
        f"database <project>_<serial>, at most {MAX_NAME_BYTES} bytes)"
    )
    if not project:
        raise section.fail(
            "project", f"is missing; allowed: the network's project code, e.g. BdP: {names_db}"
        )
    serial = section.text("serial") or cpu_serial()
    for key, value in (("project", project), ("serial", serial)):
        problem = check_database_name(value)
        if problem:
            raise section.fail(key, f"{value!r} is not allowed: it {problem}; allowed: {names_db}")
    problem = check_database_name(f"{project}_{serial}")
    if problem:
        raise section.fail(
            "serial", f"the database {project}_{serial} {problem}; allowed: {names_db}"
        )
    geolocation = section.text("geolocation", tag=True)
    if geolocation:
        match = _GEO.match(geolocation)
        if not match or abs(float(match[1])) > 90 or abs(float(match[3])) > 180:
            raise section.fail(
                "geolocation",
                f"{geolocation!r} is not lat,lon[,alt]; allowed: decimal degrees, latitude "
                "-90..90, longitude -180..180, altitude in metres, e.g. 51.420635,6.1356117,22.9",
            )
        geolocation = ",".join(part.strip() for part in geolocation.split(","))
    # The label goes into the series key of every point: one too long for InfluxDB would
    # have each point refused. Checked before the text, so the message need not echo it.
    # 256 bytes: room for a field name (the shipped ones are a few characters).
    label = section.raw("label") or ""
    tags = {"label": label, "geolocation": geolocation, "new": "1"}
    problem = check_point_key("data", tags, "x" * 256)
    if problem:
        raise section.fail(
            "label", f"{len(label):,} characters: it {problem}; allowed: a label of a few words"
        )
    label = section.text("label", tag=True)
    state_dir_text = section.text("state_dir")
    state_dir = base / state_dir_text if state_dir_text else default_state_dir()
    return KitSettings(
        project=project,
        serial=serial,
        label=label,
        geolocation=geolocation,
        description=section.text("description"),
        interval=section.number("interval", 60, int, 1, None, "seconds"),
        state_dir=state_dir,
    )


def _sensor(
    section: _Section, fields: tuple[str, ...], options: dict[str, object]
) -> SensorSettings:
    names = section.names("fields", fields)
    return SensorSettings(
        name=section.name,
        enabled=section.flag("enabled", False),
        backend=section.choice("backend", "hardware", BACKENDS),
        fields=names,
        calibration=section.calibrations(names),
        options=options,
    )


def _dylos(s: _Section, base: Path) -> SensorSettings:
    replay = s.text("replay")
    if replay:
        replay = str(base / replay)
        if not Path(replay).is_file():
            raise s.fail(
                "replay",
                f"{replay} is not a file; allowed: a file of Dylos lines 'small,large' "
                "(relative to this config), or nothing for the shipped capture",
            )
    return _sensor(
        s,
        ("pm_25", "pm_10"),
        {
            "port": s.text("port", "/dev/ttyUSB0"),
            "replay": replay or None,
            "speedup": s.number("speedup", 60.0, float, 0.001, None),
            "mass": s.flag("mass", False),
        },
    )


def _dht22(s: _Section) -> SensorSettings:
    return _sensor(
        s,
        ("dtemp", "drh"),
        {
            "pin": s.number("pin", 4, int, 0, 27, "(BCM GPIO number)"),
            "poll_interval": s.number("interval", 5.0, float, 2.0, None, "seconds"),
            "checksum_error_rate": s.number("sim_checksum_error_rate", 0.0, float, 0, 1),
            "short_train_rate": s.number("sim_short_train_rate", 0.0, float, 0, 1),
            "absent": s.flag("sim_absent", False),
        },
    )


def _bme280(s: _Section) -> SensorSettings:
    address_text = s.typed("address") or "auto"
    try:
        address = _address(address_text)
    except ValueError:
        address = -1
    if address not in (0, 0x76, 0x77):
        raise s.fail("address", f"{address_text!r} is not allowed; allowed: 0x76, 0x77, auto")
    oversampling = s.number("oversampling", 1, int, 1, 16)
    if oversampling not in (1, 2, 4, 8, 16):
        raise s.fail("oversampling", f"{oversampling} is not allowed; allowed: 1, 2, 4, 8, 16")
    return _sensor(
        s,
        ("temp", "rh", "hpa"),
        {
            "bus": s.number("bus", 1, int, 0, 99),
            "address": address or None,
            "oversampling": oversampling,
            "poll_interval": s.number("interval", 10.0, float, 1.0, None, "seconds"),
        },
    )


def _influx(s: _Section, path: Path) -> InfluxSettings:
    url = s.text("url", "http://localhost:8086")
    if "@" in url.split("://", 1)[-1].split("/", 1)[0] or "?" in url:
        # Not echoed: it holds a password, which must never reach a log.
        raise s.fail(
            "url",
            "holds a user name or password (or a query); allowed: http://host:port or "
            "https://..., "
            "with the credentials in username and password (or password_file)",
        )
    if not re.match(r"^https?://[^/\s]+\S*$", url):
        raise s.fail("url", f"{url!r} is not allowed; allowed: http://host:port or https://...")
    password = s.raw("password") or ""
    password_file = s.text("password_file")
    if password and password_file:
        raise s.fail(
            "password_file", "is set and so is password; allowed: one of password, password_file"
        )
    if password_file:
        pw_path = path.parent / password_file
        try:
            password = pw_path.read_text().strip()
        except OSError as err:
            raise s.fail(
                "password_file",
                f"cannot read {pw_path}: {err.strerror}; allowed: a file the agent can read, "
                "holding the password",
            ) from None
        _warn_if_readable(pw_path, "password_file")
    elif password:
        _warn_if_readable(path, "password")
    username = s.text("username")
    if password and not username:
        raise s.fail(
            "username", "is missing but a password is set; allowed: the InfluxDB user name"
        )
    return InfluxSettings(
        enabled=s.flag("enabled", True),
        url=url,
        database=s.text("database"),
        username=username,
        password=password,
        timeout=s.number("timeout", 10.0, float, 0.1, 600, "seconds"),
        tls_verify=s.flag("tls_verify", True),
        ca_file=s.text("ca_file"),
        create_database=s.flag("create_database", True),
        batch_size=s.number("batch_size", 5000, int, 1, 100000, "points"),
        batch_kb=s.number("batch_kb", 4096, int, 1, 1_000_000, "KiB"),
        gzip=s.flag("gzip", True),
        sync_interval=s.number("sync_interval", 30.0, float, 0.0, 3600, "seconds"),
        queue_max_mb=s.number("queue_max_mb", 64.0, float, 0.01, 1_000_000, "MB"),
        retry_max=s.number("retry_max", 60.0, float, 1, 86400, "seconds"),
    )


def _warn_if_readable(path: Path, key: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & stat.S_IROTH:
        log.warning(
            "%s holds the InfluxDB password ([influx] %s) and every user can read it; "
            "run: chmod o-r %s",
            path,
            key,
            path,
        )


def _check_field_names_unique(path: Path, sensors: tuple[SensorSettings, ...]) -> None:
    """Two enabled sensors may not send the same field name (their readings would mix)."""
    owner: dict[str, str] = {}
    for sensor in sensors:
        if not sensor.enabled:
            continue
        for name in sensor.fields:
            if name in owner:
                raise ConfigError(
                    f"{path} [{sensor.name}] fields: {name!r} is also a field of "
                    f"[{owner[name]}]; allowed: names no other enabled sensor uses"
                )
            owner[name] = sensor.name


def load(path: Path) -> Settings:
    """Read and check ``path``; raises ConfigError naming file, section and key."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: a BOM some editors write
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; pass -c FILE, set SENSORKIT_CONFIG, or copy the shipped "
            "agent.ini there"
        ) from None
    except configparser.MissingSectionHeaderError as err:
        raise ConfigError(
            f"{path}: line {err.lineno}: a setting before any [section]; allowed: [kit], "
            "[influx], ... first"
        ) from None
    except configparser.ParsingError as err:
        # Never echo the line itself: it may hold the password.
        lines = ", ".join(str(lineno) for lineno, _ in err.errors)
        raise ConfigError(
            f"{path}: line {lines}: not a setting; allowed: key = value, [section], # comment"
        ) from None
    except configparser.DuplicateOptionError as err:
        raise ConfigError(
            f"{path} [{err.section}] {err.option}: set twice (line {err.lineno}); "
            "allowed: each key once"
        ) from None
    except (configparser.Error, UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{path}: cannot read it: {err}") from None
    known = {"kit", "dylos", "dht22", "bme280", "simulated", "influx", "console", "subscriber"}
    for name in parser.sections():
        if name not in known:
            raise ConfigError(
                f"{path} [{name}]: unknown section; allowed: {', '.join(sorted(known))}"
            )
    sections = {name: _Section(path, parser, name) for name in known}
    base = path.resolve().parent
    kit = _kit(sections["kit"], base)
    sensors = (
        _dylos(sections["dylos"], base),
        _dht22(sections["dht22"]),
        _bme280(sections["bme280"]),
    )
    _check_field_names_unique(path, sensors)
    sim = sections["simulated"]
    weather = WeatherSettings(
        temperature=sim.number("temperature", 15.0, float, -40, 80, "C"),
        temperature_swing=sim.number("temperature_swing", 6.0, float, 0, 40, "C"),
        humidity=sim.number("humidity", 70.0, float, 0, 100, "%"),
        humidity_swing=sim.number("humidity_swing", 15.0, float, 0, 50, "%"),
        pressure=sim.number("pressure", 1013.25, float, 300, 1100, "hPa"),
        seed=sim.number("seed", 1, int),
    )
    influx = _influx(sections["influx"], path)
    console = sections["console"]
    console_file = console.text("file", "-")
    console_settings = ConsoleSettings(
        enabled=console.flag("enabled", False),
        file=console_file if console_file == "-" else str(base / console_file),
    )
    for name, section in sections.items():
        if name != "subscriber":
            section.check_unknown()
    return Settings(path, kit, sensors, WeatherSettings(**vars(weather)), influx, console_settings)
