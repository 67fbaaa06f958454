"""Ident and data telegrams: frozen dataclasses and their JSON forms (design.md section 3).

A file holds either one object ``{"ident": {...}, "data": [...]}`` or JSON Lines, each line
``{"ident": {...}}`` or ``{"data": {...}}``; a data line belongs to the last ident before it.
Parsing checks everything before returning, so a malformed file is refused whole.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

from agent.errors import UsageError
from agent.lineprotocol import check_key, check_tag_value, check_text

Value = float | int | str | bool

_IDENT_TEXT_KEYS = ("project", "serial", "label", "geolocation", "description", "version")
_IDENT_LIST_KEYS = ("fields", "units", "types")
_TAG_KEYS = ("label", "geolocation")
_DATA_TAGS = ("label", "new")  # tags of ``data``: a field of the same name would be ambiguous
MAX_TIME = 9_223_372_036  # the last second InfluxDB 1.x can store (int64 nanoseconds)


class TelegramError(UsageError):
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
    # When this ident took effect (UNIX seconds): the ``info`` point's timestamp. A file's
    # ident without one takes its first data record's time, so publishing a file twice
    # writes the same ``info`` point; None means "when it is sent" (the running agent).
    time: int | None = None

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
        if self.time is not None:
            out["time"] = self.time
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
            if "," in item:
                raise TelegramError(
                    f"{where}.{key}: {item!r} has a comma; the info series joins the list "
                    "with commas, so an item cannot hold one"
                )
        lists[key] = tuple(value)
    lengths = {key: len(v) for key, v in lists.items() if v}
    if len(set(lengths.values())) > 1:
        raise TelegramError(
            f"{where}: fields, units and types are parallel lists and must be equally long; "
            f"got {lengths}"
        )
    stamp = _time(obj, where) if "time" in obj else None
    extra = []
    for key, value in obj.items():
        if key in _IDENT_TEXT_KEYS or key in _IDENT_LIST_KEYS or key == "time":
            continue
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise TelegramError(f"{where}.{key}: extra ident keys must be strings or numbers")
        _check_key(where, key)
        _check(where, key, str(value), tag=False)
        extra.append((key, str(value)))
    return Ident(**text, **lists, extra=tuple(extra), time=stamp)


def _time(obj: dict, where: str) -> int:
    stamp = obj.get("time")
    if isinstance(stamp, float) and stamp.is_integer():
        stamp = int(stamp)
    if not isinstance(stamp, int) or isinstance(stamp, bool) or not 0 <= stamp <= MAX_TIME:
        raise TelegramError(
            f"{where}.time: is required as integer UNIX seconds (0 to {MAX_TIME}), "
            f"got {json.dumps(obj.get('time'))}"
        )
    return stamp


def data_from_json(obj: object, where: str = "data") -> Data:
    """A :class:`Data` from a decoded JSON object; TelegramError naming ``where`` if bad."""
    if not isinstance(obj, dict):
        raise TelegramError(f"{where}: must be a JSON object, got {type(obj).__name__}")
    stamp = _time(obj, where)
    geolocation = obj.get("geolocation") or ""
    if not isinstance(geolocation, str):
        raise TelegramError(f"{where}.geolocation: must be a string")
    _check(where, "geolocation", geolocation, tag=True)
    values: list[tuple[str, Value]] = []
    for key, value in obj.items():
        if key in ("time", "geolocation") or value is None:
            continue
        _check_key(where, key)
        if key.startswith("_"):
            raise TelegramError(
                f"{where}.{key}: InfluxDB reserves field names starting with '_'; rename it"
            )
        if key in _DATA_TAGS:
            raise TelegramError(
                f"{where}.{key}: is a tag of the data series; a field of the same name would "
                "be ambiguous when read back; rename it"
            )
        if isinstance(value, str):
            _check(where, key, value, tag=False)
        elif isinstance(value, float) and not math.isfinite(value):
            continue  # NaN and infinity are never sent; the field is absent from this point
        elif not isinstance(value, int | float | bool):
            raise TelegramError(
                f"{where}.{key}: must be a number, string or boolean, got {json.dumps(value)}"
            )
        elif isinstance(value, int) and not isinstance(value, bool) and not _fits_float(value):
            raise TelegramError(f"{where}.{key}: {value} is too large for a float")
        values.append((key, value))
    return Data(time=stamp, values=tuple(values), geolocation=geolocation)


def _check(where: str, key: str, value: str, *, tag: bool) -> None:
    problem = check_tag_value(value) if tag else check_text(value)
    if problem:
        raise TelegramError(f"{where}.{key}: {value!r} {problem}")


def _check_key(where: str, key: str) -> None:
    problem = check_key(key)
    if problem:
        raise TelegramError(f"{where}: field name {key!r} {problem}")


def _fits_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def parse_telegrams(text: str, source: str) -> list[Telegram]:
    """Every telegram in ``text`` (either JSON form), in order; refuses the whole text if bad.

    The first telegram must be an ident. ``source`` names the file in messages, with the line
    of the record at fault. An ident without a ``time`` of its own takes the time of the first
    data record after it, so that publishing the same file twice writes the same points.
    """
    text = text.removeprefix("\ufeff")  # a byte order mark some editors write
    stripped = text.strip()
    if not stripped:
        raise TelegramError(f"{source}: is empty; expected an ident and data telegrams")
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":
            first = stripped.split("\n", 1)[0]
            if not _is_object(first) or first == stripped:
                lineno = err.lineno + text[: len(text) - len(text.lstrip())].count("\n")
                raise TelegramError(
                    f"{source}: line {lineno} column {err.colno}: not valid JSON ({err.msg})"
                ) from None
        return _stamp_idents(list(_from_lines(text, source)))
    lines = _record_lines(text)
    return _stamp_idents(list(_from_record(whole, source, "", lines=lines)))


def _stamp_idents(telegrams: list[Telegram]) -> list[Telegram]:
    """Give each ident without a time the time of the first data record after it."""
    out: list[Telegram] = []
    pending: int | None = None  # index in ``out`` of an ident waiting for a time
    for telegram in telegrams:
        if isinstance(telegram, Ident):
            pending = len(out) if telegram.time is None else None
        elif pending is not None:
            out[pending] = replace(out[pending], time=telegram.time)  # type: ignore[type-var]
            pending = None
        out.append(telegram)
    return out


_SPACE = re.compile(r"[ \t\n\r]*")


def _record_lines(text: str) -> dict[str, object]:
    """Where the records of the one-object form start: ``{"ident": line, "data": [line, ...]}``.

    Only called on text that is valid JSON, so the walk needs no error handling.
    """
    decoder = json.JSONDecoder()
    out: dict[str, object] = {}

    def skip(i: int) -> int:
        return _SPACE.match(text, i).end()  # type: ignore[union-attr]

    def line(i: int) -> int:
        return text.count("\n", 0, i) + 1

    i = skip(0)
    if text[i : i + 1] != "{":
        return out
    i = skip(i + 1)
    while text[i] != "}":
        key, i = decoder.raw_decode(text, i)
        i = skip(skip(i) + 1)  # the colon
        if key == "data" and text[i] == "[":
            items, start = [], line(i)
            i = skip(i + 1)
            while text[i] != "]":
                items.append(line(i))
                _, i = decoder.raw_decode(text, i)
                i = skip(i)
                if text[i] == ",":
                    i = skip(i + 1)
            out[key] = (start, items)
            i += 1
        else:
            out[key] = line(i)
            _, i = decoder.raw_decode(text, i)
        i = skip(i)
        if text[i] == ",":
            i = skip(i + 1)
    return out


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _from_lines(text: str, source: str) -> Iterator[Telegram]:
    seen_ident = False
    # Only "\n" ends a line: str.splitlines() would also split inside a JSON string holding
    # U+2028, U+0085 and the like, which JSON (and to_json_line) write unescaped.
    for number, line in enumerate(text.split("\n"), start=1):
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
    record: object,
    source: str,
    where: str,
    seen_ident: bool = False,
    lines: dict[str, object] | None = None,
) -> Iterator[Telegram]:
    """The telegrams of one record; ``lines`` (one-object form) says where each part starts."""
    prefix = f"{source}: {where}: " if where else f"{source}: "
    if not isinstance(record, dict) or not ({"ident", "data"} & record.keys()):
        raise TelegramError(f'{prefix}expected an object with "ident" and/or "data"')
    unknown = sorted(set(record) - {"ident", "data"})
    if unknown:
        at = f"line {lines[unknown[0]]}: " if lines and unknown[0] in lines else ""
        raise TelegramError(f"{prefix}{at}unknown keys {unknown}; use ident and data")
    at = ""
    try:
        if "ident" in record:
            seen_ident = True
            at = f"line {lines['ident']}: " if lines and "ident" in lines else ""
            yield ident_from_json(record["ident"], "ident")
        if "data" in record:
            data_lines = lines.get("data") if lines else None
            if isinstance(data_lines, int):
                at = f"line {data_lines}: "
            elif isinstance(data_lines, tuple):
                at = f"line {data_lines[0]}: "
            if not seen_ident:
                raise TelegramError("data: comes before any ident; put the kit's ident first")
            records = record["data"]
            if isinstance(records, list):
                for index, item in enumerate(records):
                    if isinstance(data_lines, tuple) and index < len(data_lines[1]):
                        at = f"line {data_lines[1][index]}: "
                    yield data_from_json(item, f"data[{index}]")
            else:
                yield data_from_json(records, "data")
    except TelegramError as err:
        raise TelegramError(f"{prefix}{at}{err}") from None


def to_json_line(telegram: Telegram) -> str:
    """One JSON Lines record, ``{"ident": ...}`` or ``{"data": ...}``."""
    key = "ident" if isinstance(telegram, Ident) else "data"
    return json.dumps({key: telegram.to_json()}, ensure_ascii=False, separators=(",", ":"))
