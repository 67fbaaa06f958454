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
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import drivers
from agent.errors import UsageError
from agent.lineprotocol import (
    MAX_NAME_BYTES,
    check_database_name,
    check_key,
    check_point_key,
    check_tag_value,
    check_text,
)
from drivers.driver import Driver

log = logging.getLogger("sensorkit.config")

SYSTEM_CONFIG = Path("/etc/sensorkit/agent.ini")
_INLINE_COMMENT = re.compile(r"\s+[#;].*$")
_TEXT_ALLOWED = "text on one line"
_TAG_ALLOWED = (
    "printable text on one line (TAB allowed), with no backslash at its end or just before a "
    "space, comma or '='"
)
T = TypeVar("T")


class ConfigError(UsageError):
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
    clock: str = "auto"  # which wall clock dates windows (agent/clock.py)


@dataclass(frozen=True)
class SensorSettings:
    """What every sensor section has, plus the options its driver's own parser read.

    ``config_file`` is the file they came from, for the driver's messages.
    """

    name: str
    enabled: bool
    backend: str
    fields: tuple[str, ...]
    calibration: dict[str, tuple[float, ...]] = field(default_factory=dict)
    options: dict[str, object] = field(default_factory=dict)
    config_file: str = "agent.ini"


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
    api: str = "v1"  # v1: /write to a database per telegram; v2: /api/v2/write to one bucket
    org: str = ""  # v2 only, as are bucket and token
    bucket: str = ""
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool
    file: str


@dataclass(frozen=True)
class SubscriberSettings:
    """``[subscriber]``: which kit databases ``sensorkit subscribe`` reads, and to where."""

    url: str = "http://localhost:8086"
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)  # InfluxDB 2.x/3.x: their InfluxQL /query
    projects: str = ".+"  # regular expression for the <project> part of a kit database name
    serials: str = ".+"  # regular expression for the <serial> part
    databases: tuple[str, ...] = ()  # an explicit list: no SHOW DATABASES (non-admin users)
    poll: float = 60.0  # seconds between looks at the server when following
    batch: int = 5000  # rows per chunk read (and per cursor step)
    lateness: int = 3600  # seconds a point may arrive after newer ones and still be read
    outputs: tuple[str, ...] = ("console",)  # console, influx

    def matches(self, database: str) -> bool:
        """True when ``database`` is ``<project>_<serial>`` with both parts matching."""
        project, serial = re.compile(self.projects), re.compile(self.serials)
        parts = database.split("_")
        for i in range(1, len(parts)):
            head, tail = "_".join(parts[:i]), "_".join(parts[i:])
            if project.fullmatch(head) and serial.fullmatch(tail):
                return True
        return False


@dataclass(frozen=True)
class Settings:
    path: Path
    kit: KitSettings
    sensors: tuple[SensorSettings, ...]
    weather: WeatherSettings
    influx: InfluxSettings
    console: ConsoleSettings
    subscriber: SubscriberSettings = field(default_factory=SubscriberSettings)


def find_config(explicit: str | None) -> Path:
    """The config file to use, by the lookup order of docs/design.md."""
    if explicit:
        return Path(explicit)
    if os.environ.get("SENSORKIT_CONFIG"):
        return Path(os.environ["SENSORKIT_CONFIG"])
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    return Path("agent.ini")


class _Section:
    """Typed access to one INI section; remembers which keys were read, to flag typos.

    It is the :class:`drivers.driver.SectionReader` a driver's option parser gets.
    """

    def __init__(
        self, path: Path, parser: configparser.ConfigParser, name: str, sensor: bool = False
    ) -> None:
        self.path = path
        self.name = name
        self.sensor = sensor
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

    def relative_path(self, key: str) -> Path | None:
        """A path relative to the config file's folder; None when unset."""
        text = self.text(key)
        return self.path.resolve().parent / text if text else None

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
            if self.sensor:
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
        clock=section.choice("clock", "auto", ("auto", "trust", "synced")),
        state_dir=state_dir,
    )


def _sensor(section: _Section, driver: Driver) -> SensorSettings:
    """A sensor section: the driver's own keys, then what every sensor section has."""
    options = driver.parse_options(section)
    names = section.names("fields", driver.field_names)
    return SensorSettings(
        name=driver.section,
        enabled=section.flag("enabled", False),
        backend=section.choice("backend", "hardware", driver.backends),
        fields=names,
        calibration=section.calibrations(names),
        options=options,
        config_file=str(section.path),
    )


INFLUX_PASSWORD_ENV = "SENSORKIT_INFLUX_PASSWORD"
INFLUX_PASSWORD_CREDENTIAL = "influx-password"
SUBSCRIBER_PASSWORD_ENV = "SENSORKIT_SUBSCRIBER_PASSWORD"
SUBSCRIBER_PASSWORD_CREDENTIAL = "subscriber-password"


def resolve_password(
    s: _Section,
    path: Path,
    *,
    env_var: str,
    credential: str,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """A server password and where it came from (for messages), or ``("", "")``.

    The first of these that is set wins:

    1. ``password`` in the section, or ``password_file`` (a file holding just the password,
       relative to the config file). They are this file's two ways to say it: setting both
       is an error.
    2. the environment variable ``env_var`` (unset or empty counts as not set);
    3. the systemd credential ``$CREDENTIALS_DIRECTORY/<credential>`` (``LoadCredential=``).

    A source further down that is present too is ignored with one warning naming both, so a
    password changed in the wrong place is noticed. Neither the value nor any part of it is
    ever put in a message. ``[influx]`` and ``[subscriber]`` use it, each with its own
    variable and credential names.
    """
    environ = os.environ if environ is None else environ
    password = s.raw("password") or ""
    password_file = s.text("password_file")
    if password and password_file:
        raise s.fail(
            "password_file",
            "is set and so is password; allowed: one of password, password_file (or neither, "
            f"with ${env_var} or the systemd credential {credential})",
        )
    sources: list[str] = []
    if password:
        sources.append(f"[{s.name}] password")
    elif password_file:
        sources.append(f"[{s.name}] password_file {path.parent / password_file}")
    if environ.get(env_var):
        sources.append(f"${env_var}")
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    cred_path = Path(directory) / credential if directory else None
    if cred_path is not None and cred_path.exists():
        sources.append(f"systemd credential {cred_path}")
    if not sources:
        return "", ""
    source, *ignored = sources
    if ignored:
        log.warning(
            "%s [%s]: the password comes from %s; %s is set too and ignored (remove one)",
            path,
            s.name,
            source,
            " and ".join(ignored),
        )
    if password:
        _warn_if_readable(path, "password", s.name)
        return password, source
    if password_file:
        return _secret_file(s, path.parent / password_file, "password_file", "password"), source
    if source.startswith("$"):
        value = environ[env_var]
        if "\n" in value.strip():
            raise ConfigError(
                f"${env_var} holds more than one line; allowed: the password on one line"
            )
        return value.strip(), source
    assert cred_path is not None

    def cred_fail(problem: str) -> ConfigError:
        return ConfigError(
            f"{path} [{s.name}]: {problem}; allowed: the password on one line, from "
            f"LoadCredential={credential}:FILE in the unit"
        )

    value = _read_secret(
        cred_path,
        f"cannot read the systemd credential {cred_path}",
        f"the systemd credential {cred_path}",
        cred_fail,
    )
    return value, source


def _read_secret(path: Path, cannot: str, name: str, fail: Callable[[str], ConfigError]) -> str:
    """A password file's password: its text without outer blanks, one line, not empty."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise fail(f"{cannot}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise fail(f"{name} is not UTF-8 text") from None
    if not text:
        raise fail(f"{name} is empty")
    if "\n" in text:
        raise fail(f"{name} holds more than one line")
    return text


def _influx(s: _Section, path: Path) -> InfluxSettings:
    api = _influx_api(s)
    url = _server_url(s)
    username = s.text("username")
    password, source = "", ""
    if api == "v1":  # v2 logs in with a token: a password from the environment is not for it
        password, source = resolve_password(
            s, path, env_var=INFLUX_PASSWORD_ENV, credential=INFLUX_PASSWORD_CREDENTIAL
        )
    if password and not username:
        raise s.fail(
            "username",
            f"is missing but a password is set ({source}); allowed: the InfluxDB user name",
        )
    v2 = _influx_v2(s, path, api)
    return InfluxSettings(
        enabled=s.flag("enabled", True),
        url=url,
        database=s.text("database"),
        username=username,
        password=password,
        timeout=s.number("timeout", 10.0, float, 0.1, 600, "seconds"),
        tls_verify=s.flag("tls_verify", True),
        ca_file=_ca_file(s, path.resolve().parent, url),
        create_database=s.flag("create_database", True),
        batch_size=s.number("batch_size", 5000, int, 1, 100000, "points"),
        batch_kb=s.number("batch_kb", 4096, int, 1, 1_000_000, "KiB"),
        gzip=_gzip(s, url),
        sync_interval=s.number("sync_interval", 30.0, float, 0.0, 3600, "seconds"),
        queue_max_mb=s.number("queue_max_mb", 64.0, float, 0.01, 1_000_000, "MB"),
        retry_max=s.number("retry_max", 60.0, float, 1, 86400, "seconds"),
        api=api,
        org=v2.org,
        bucket=v2.bucket,
        token=v2.token,
    )


LOOPBACK_HOSTS = ("localhost", "ip6-localhost", "::1")


def _gzip(s: _Section, url: str) -> bool:
    """``gzip``: yes, no, or auto (the default): compress unless the server is on this
    machine, where compressing only costs both ends CPU and saves nothing."""
    value = (s.typed("gzip") or "auto").lower()
    if value == "auto":
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        return not (host in LOOPBACK_HOSTS or host.startswith("127."))
    if value in configparser.ConfigParser.BOOLEAN_STATES:
        return configparser.ConfigParser.BOOLEAN_STATES[value]
    raise s.fail("gzip", f"{value!r} is not allowed; allowed: auto, yes, no")


def _server_url(s: _Section) -> str:
    """``url`` of a server section: http(s)://host:port, never with credentials in it."""
    url = s.text("url", "http://localhost:8086")
    if "@" in url.split("://", 1)[-1].split("/", 1)[0] or "?" in url:
        # Not echoed: it holds a password, which must never reach a log.
        raise s.fail(
            "url",
            "holds a user name or password (or a query); allowed: http://host:port or "
            "https://..., with the credentials in username and password (or password_file)",
        )
    if not re.match(r"^https?://[^/\s]+\S*$", url) or _url_problem(url):
        why = f" ({_url_problem(url)})" if _url_problem(url) else ""
        raise s.fail(
            "url", f"{url!r} is not allowed{why}; allowed: http://host:port or https://host:port"
        )
    return url


def _pattern(s: _Section, key: str) -> str:
    """A regular expression setting, compiled once here so a bad one is refused at start."""
    value = s.raw(key) or ".+"
    try:
        re.compile(value)
    except re.error as err:
        raise s.fail(
            key, f"{value!r} is not a regular expression ({err}); allowed: e.g. .+ or BdP|Dev"
        ) from None
    return value


def _subscriber(s: _Section, path: Path) -> SubscriberSettings:
    url = _server_url(s)
    username = s.text("username")
    password, source = resolve_password(
        s, path, env_var=SUBSCRIBER_PASSWORD_ENV, credential=SUBSCRIBER_PASSWORD_CREDENTIAL
    )
    if password and not username:
        raise s.fail(
            "username",
            f"is missing but a password is set ({source}); allowed: the InfluxDB user name",
        )
    token = _token(s, path)  # 2.x/3.x: their InfluxQL /query with an API token
    if token and username:
        raise s.fail(
            "token" if s.raw("token") else "token_file",
            "is set and so is username; allowed: a user (InfluxDB 1.x) or an API token "
            "(2.x/3.x), not both",
        )
    databases = tuple((s.raw("databases") or "").replace(",", " ").split())
    for name in databases:
        problem = check_database_name(name)
        if problem:
            raise s.fail("databases", f"{name!r} {problem}; allowed: kit database names")
    outputs = tuple((s.typed("outputs") or "console").replace(",", " ").lower().split())
    for name in outputs:
        if name not in ("console", "influx"):
            raise s.fail("outputs", f"{name!r} is not an output; allowed: console, influx")
    if len(set(outputs)) != len(outputs):
        raise s.fail("outputs", "names an output twice; allowed: console, influx, each once")
    return SubscriberSettings(
        url=url,
        username=username,
        password=password,
        token=token,
        projects=_pattern(s, "projects"),
        serials=_pattern(s, "serials"),
        databases=databases,
        poll=s.number("poll", 60.0, float, 1, 86400, "seconds"),
        batch=s.number("batch", 5000, int, 1, 100000, "rows"),
        lateness=s.number("lateness", 3600, int, 0, 30 * 86400, "seconds"),
        outputs=outputs,
    )


def _url_problem(url: str) -> str:
    """Why ``url`` cannot be connected to (a bad port, an unclosed IPv6 bracket), or ""."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:
        return str(err)
    if not parts.hostname:
        return "no host"
    if port == 0:
        return "port 0"
    return ""


def _ca_file(s: _Section, base: Path, url: str) -> str:
    """``ca_file`` made absolute and checked: an HTTPS server's CA certificate, in PEM."""
    value = s.text("ca_file")
    if not value:
        return ""
    path = base / value
    if not path.is_file():
        raise s.fail(
            "ca_file",
            f"{path} is not a file; allowed: the PEM certificate of the CA that signed the "
            "server's certificate",
        )
    import ssl  # here only: some 5 MB, and most kits use plain http://

    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as err:
        raise s.fail(
            "ca_file", f"{path} holds no usable certificate ({err}); allowed: a PEM file"
        ) from None
    if not url.startswith("https://"):
        log.warning("%s [influx] ca_file is set but url %s is not https://", s.path, url)
    return str(path)


# Keys one API reads and the other refuses: a v1 database or user means nothing to a bucket.
_V1_ONLY = ("database", "username", "password", "password_file", "create_database")
_V2_ONLY = ("org", "bucket", "token", "token_file")


def _influx_api(s: _Section) -> str:
    """``[influx] api``; refuses a key of the other API (set, not merely present and empty)."""
    api = s.choice("api", "v1", ("v1", "v2"))
    other, theirs = ("v2", _V2_ONLY) if api == "v1" else ("v1", _V1_ONLY)
    ours = ", ".join(_V1_ONLY if api == "v1" else _V2_ONLY)
    for key in theirs:
        if (s.values.get(key) or "").strip():
            raise s.fail(
                key,
                f"is a key of api = {other}, and api = {api}"
                + (" (the default)" if api == "v1" else "")
                + f"; allowed: set api = {other}, or remove {key} (api = {api} reads {ours})",
            )
    return api


@dataclass(frozen=True)
class _V2Target:
    """Where ``api = v2`` writes, and with what token (empty with v1)."""

    org: str = ""
    bucket: str = ""
    token: str = field(default="", repr=False)


def _influx_v2(s: _Section, path: Path, api: str) -> _V2Target:
    """``org``, ``bucket`` and the token (``token`` or ``token_file``) of ``api = v2``.

    All three are required with v2. The token is never echoed: not in a refusal, not in a
    log line, not in ``repr``; a token others can read gets the password's warning.
    """
    org, bucket = s.text("org"), s.text("bucket")
    token = _token(s, path)  # with v1 unset: _influx_api refused it already
    if api != "v2":
        return _V2Target()
    needed = {
        "org": (org, "the organization the bucket belongs to (InfluxDB 3: any name)"),
        "bucket": (bucket, "the bucket every point goes to (InfluxDB 3: the database)"),
        "token": (token, "an API token that may write the bucket, in token or token_file"),
    }
    for key, (value, allowed) in needed.items():
        if not value:
            raise s.fail(key, f"is missing, and api = v2 needs it; allowed: {allowed}")
    return _V2Target(org, bucket, token)


def _token(s: _Section, path: Path) -> str:
    """An API token from ``token`` or ``token_file`` (one of them), or "". Never echoed: not
    in a refusal, a log line or ``repr``; one others can read gets the password's warning."""
    token, token_file = s.raw("token") or "", s.text("token_file")
    if token and token_file:
        raise s.fail("token_file", "is set and so is token; allowed: one of token, token_file")
    if token_file:
        token = _secret_file(s, path.parent / token_file, "token_file", "API token")
    elif token:
        _warn_if_readable(path, "token", s.name, secret="API token")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise s.fail(
            "token_file" if token_file else "token",
            "holds a space or a control character; allowed: the API token as InfluxDB gave it",
        )
    return token


def _secret_file(s: _Section, file: Path, key: str, what: str) -> str:
    """The secret (a password, a token) a ``*_file`` key names, warned about if others may
    read it."""

    def fail(problem: str) -> ConfigError:
        return s.fail(
            key, f"{problem}; allowed: a file the agent can read, holding the {what} on one line"
        )

    value = _read_secret(file, f"cannot read {file}", str(file), fail)
    _warn_if_readable(file, key, s.name, secret=what)
    return value


def _warn_if_readable(
    path: Path, key: str, section: str = "influx", secret: str = "password"
) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & stat.S_IROTH:
        log.warning(
            "%s holds the InfluxDB %s ([%s] %s) and every user can read it; run: chmod o-r %s",
            path,
            secret,
            section,
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
    sensor_drivers = drivers.registered()
    sensor_sections = {d.section for d in sensor_drivers}
    known = {"kit", "simulated", "influx", "console", "subscriber"} | sensor_sections
    for name in parser.sections():
        if name not in known:
            raise ConfigError(
                f"{path} [{name}]: unknown section; allowed: {', '.join(sorted(known))}"
            )
    sections = {name: _Section(path, parser, name, name in sensor_sections) for name in known}
    base = path.resolve().parent
    kit = _kit(sections["kit"], base)
    sensors = tuple(_sensor(sections[d.section], d) for d in sensor_drivers)
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
    subscriber = _subscriber(sections["subscriber"], path)
    for section in sections.values():
        section.check_unknown()
    return Settings(path, kit, sensors, weather, influx, console_settings, subscriber)
