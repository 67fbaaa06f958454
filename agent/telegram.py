"""Ident and data telegrams: frozen dataclasses and their JSON forms (design.md section 3).

A file holds either one object ``{"ident": {...}, "data": [...]}`` or JSON Lines, each line
``{"ident": {...}}`` or ``{"data": {...}}``; a data line belongs to the last ident before it.
Parsing checks everything before returning, so a malformed file is refused whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

from agent.lineprotocol import check_tag_value, check_text

Value = float | int | str | bool

_IDENT_TEXT_KEYS = ("project", "serial", "label", "geolocation", "description", "version")
_IDENT_LIST_KEYS = ("fields", "units", "types")
_TAG_KEYS = ("label", "geolocation")


class TelegramError(ValueError):
    """A telegram that cannot be accepted; the message says where and why."""


@dataclass(frozen=True)
class Ident:
    """Who is measuring: the kit's identity, place and the meaning of its data fields."""

    project: str
    serial: str
    label: str = ""
    geolocation: str = ""
    description: str = ""
    fields: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    version: str = ""
    extra: tuple[tuple[str, str], ...] = ()  # other string keys, kept as sent

    @property
    def database(self) -> str:
        """The kit's own database, ``<project>_<serial>``."""
        return f"{self.project}_{self.serial}"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"project": self.project, "serial": self.serial}
        for key in ("label", "geolocation", "description"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        for key in _IDENT_LIST_KEYS:
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        if self.version:
            out["version"] = self.version
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Data:
    """What was measured at ``time`` (integer UNIX seconds); ``geolocation`` overrides the kit's."""

    time: int
    values: tuple[tuple[str, Value], ...]
    geolocation: str = ""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"time": self.time}
        out.update(self.values)
        if self.geolocation:
            out["geolocation"] = self.geolocation
        return out


Telegram = Ident | Data


def ident_from_json(obj: object, where: str = "ident") -> Ident:
    """An :class:`Ident` from a decoded JSON object; TelegramError naming ``where`` if bad."""
    if not isinstance(obj, dict):
        raise TelegramError(f"{where}: must be a JSON object, got {type(obj).__name__}")
    text: dict[str, str] = {}
    for key in _IDENT_TEXT_KEYS:
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and key == "version":
            value = str(value)
        if not isinstance(value, str):
            raise TelegramError(f"{where}.{key}: must be a string, got {json.dumps(value)}")
        _check(where, key, value, tag=key in _TAG_KEYS)
        text[key] = value
    for key in ("project", "serial"):
        if not text.get(key):
            raise TelegramError(f"{where}.{key}: is required and must not be empty")
        if "/" in text[key] or "\\" in text[key] or '"' in text[key]:
            raise TelegramError(
                f"{where}.{key}: {text[key]!r} names the database; use no '/', '\\' or '\"' in it"
            )
    lists: dict[str, tuple[str, ...]] = {}
    for key in _IDENT_LIST_KEYS:
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TelegramError(f"{where}.{key}: must be a list of strings")
        for item in value:
            _check(where, key, item, tag=False)
        lists[key] = tuple(value)
    lengths = {key: len(v) for key, v in lists.items() if v}
    if len(set(lengths.values())) > 1:
        raise TelegramError(
            f"{where}: fields, units and types are parallel lists and must be equally long; "
            f"got {lengths}"
        )
    extra = []
    for key, value in obj.items():
        if key in _IDENT_TEXT_KEYS or key in _IDENT_LIST_KEYS:
            continue
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise TelegramError(f"{where}.{key}: extra ident keys must be strings or numbers")
        _check(where, key, key, tag=True)
        _check(where, key, str(value), tag=False)
        extra.append((key, str(value)))
    return Ident(**text, **lists, extra=tuple(extra))


def data_from_json(obj: object, where: str = "data") -> Data:
    """A :class:`Data` from a decoded JSON object; TelegramError naming ``where`` if bad."""
    if not isinstance(obj, dict):
        raise TelegramError(f"{where}: must be a JSON object, got {type(obj).__name__}")
    stamp = obj.get("time")
    if isinstance(stamp, float) and stamp.is_integer():
        stamp = int(stamp)
    if not isinstance(stamp, int) or isinstance(stamp, bool) or stamp < 0:
        raise TelegramError(
            f"{where}.time: is required as integer UNIX seconds, got {json.dumps(stamp)}"
        )
    geolocation = obj.get("geolocation") or ""
    if not isinstance(geolocation, str):
        raise TelegramError(f"{where}.geolocation: must be a string")
    _check(where, "geolocation", geolocation, tag=True)
    values: list[tuple[str, Value]] = []
    for key, value in obj.items():
        if key in ("time", "geolocation") or value is None:
            continue
        _check(where, key, key, tag=True)
        if key == "time" or key.startswith("_"):
            raise TelegramError(f"{where}.{key}: InfluxDB does not accept this field name")
        if isinstance(value, str):
            _check(where, key, value, tag=False)
        elif isinstance(value, float) and not math.isfinite(value):
            continue  # NaN and infinity are never sent; the field is absent from this point
        elif not isinstance(value, int | float | bool):
            raise TelegramError(
                f"{where}.{key}: must be a number, string or boolean, got {json.dumps(value)}"
            )
        values.append((key, value))
    return Data(time=stamp, values=tuple(values), geolocation=geolocation)


def _check(where: str, key: str, value: str, *, tag: bool) -> None:
    problem = check_tag_value(value) if tag else check_text(value)
    if problem:
        raise TelegramError(f"{where}.{key}: {value!r} {problem}")


def parse_telegrams(text: str, source: str) -> list[Telegram]:
    """Every telegram in ``text`` (either JSON form), in order; refuses the whole text if bad.

    The first telegram must be an ident. ``source`` names the file in messages.
    """
    stripped = text.strip()
    if not stripped:
        raise TelegramError(f"{source}: is empty; expected an ident and data telegrams")
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":
            first = stripped.splitlines()[0]
            if not _is_object(first) or first == stripped:
                raise TelegramError(
                    f"{source}: line {err.lineno} column {err.colno}: not valid JSON ({err.msg})"
                ) from None
        return list(_from_lines(text, source))
    return list(_from_record(whole, source, ""))


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _from_lines(text: str, source: str) -> Iterator[Telegram]:
    seen_ident = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TelegramError(
                f"{source}: line {number} column {err.colno}: not valid JSON ({err.msg})"
            ) from None
        for telegram in _from_record(record, source, f"line {number}", seen_ident):
            seen_ident = seen_ident or isinstance(telegram, Ident)
            yield telegram


def _from_record(
    record: object, source: str, where: str, seen_ident: bool = False
) -> Iterator[Telegram]:
    prefix = f"{source}: {where}: " if where else f"{source}: "
    if not isinstance(record, dict) or not ({"ident", "data"} & record.keys()):
        raise TelegramError(f'{prefix}expected an object with "ident" and/or "data"')
    unknown = sorted(set(record) - {"ident", "data"})
    if unknown:
        raise TelegramError(f"{prefix}unknown keys {unknown}; use ident and data")
    try:
        if "ident" in record:
            seen_ident = True
            yield ident_from_json(record["ident"], "ident")
        if "data" in record:
            if not seen_ident:
                raise TelegramError("data: comes before any ident; put the kit's ident first")
            records = record["data"]
            if isinstance(records, list):
                for index, item in enumerate(records):
                    yield data_from_json(item, f"data[{index}]")
            else:
                yield data_from_json(records, "data")
    except TelegramError as err:
        raise TelegramError(f"{prefix}{err}") from None


def to_json_line(telegram: Telegram) -> str:
    """One JSON Lines record, ``{"ident": ...}`` or ``{"data": ...}``."""
    key = "ident" if isinstance(telegram, Ident) else "data"
    return json.dumps({key: telegram.to_json()}, ensure_ascii=False, separators=(",", ":"))
