"""Ident and data telegrams: frozen dataclasses and their JSON forms (docs/design.md section 3).

A file holds either one object ``{"ident": {...}, "data": [...]}`` (its keys in any order) or
JSON Lines, each line ``{"ident": {...}}`` or ``{"data": {...}}`` (or both); a data record
belongs to the ident of its own line, else to the last ident before it. Which form a file is
follows from its first record: one on a single line makes JSON Lines (every record on its own
line), one spread over lines is the one-object form (only whitespace may follow it).

:func:`read_telegrams` reads a file incrementally and yields its telegrams in order, in
memory that does not grow with the file; :func:`check_telegrams` runs the same reader over a
whole file and returns a :class:`FileSummary`, so a caller checks every file before it sends
any (nothing of a malformed file is sent). :func:`parse_telegrams` is the same reader over a
text in memory. Every refusal is a :class:`TelegramError` reading
``<file>: line N: data[3].pm_25: what is wrong``.

What values mean:

* ``null`` is "no value": a data key holding null is left out of its point, an ident key
  holding null is as if absent. It is not counted; it is how a kit says a sensor had nothing.
* ``NaN``, ``Infinity``, ``-Infinity`` (and numbers beyond a 64-bit float, such as ``1e309``,
  which JSON readers turn into infinity) are not numbers InfluxDB can store. They are left
  out of the point like null, because that is what kits write for a failed reading (Python's
  ``json.dumps(float("nan"))``) and one failed reading must not refuse a year of data. But
  they are counted, with the place of the first, in :class:`FileSummary`, as are records left
  with no value at all (which write no point), so nothing disappears without a word.
* Extra ident keys (any key besides project, serial, label, geolocation, description,
  version, fields, units, types and time) become ``info`` string fields: strings as sent,
  numbers as JSON writes them (``7``, ``2.5``), booleans as ``true``/``false`` (JSON's own
  spelling, which is also what line protocol calls them), lists of those joined with ``,``
  (so an item may not hold a comma, and may not be null, a list or an object).
* A key twice in one JSON object is refused: JSON readers keep one of the two (Python the
  last), so such a file means different things to different readers.
* What InfluxDB 1.x cannot store is refused when the file is read, never mangled or
  quarantined later: see :mod:`agent.lineprotocol` for the limits (a series key, so a label,
  of at most 32 KiB; strings of at most 64 KiB; database names) and the rule for names.
  A record nested more than a few hundred levels deep, an integer of more than 4,300 digits
  and a single ident or data record of more than 1 MiB of text are refused too.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from agent.errors import UsageError
from agent.lineprotocol import (
    check_database_name,
    check_key,
    check_point_key,
    check_tag_value,
    check_text,
)

Value = float | int | str | bool

_IDENT_TEXT_KEYS = ("project", "serial", "label", "geolocation", "description", "version")
_IDENT_LIST_KEYS = ("fields", "units", "types")
_TAG_KEYS = ("label", "geolocation")
_DATA_TAGS = ("label", "new")  # tags of ``data``: a field of the same name would be ambiguous
MAX_TIME = 9_223_372_036  # the last second InfluxDB 1.x can store (int64 nanoseconds)
MAX_RECORD_CHARS = 1 << 20  # one ident or data record; a whole file has no limit
_CHUNK = 1 << 16  # characters read at a time
_HOLD = 1000  # data records held while a record's ident may still follow; beyond, re-read
_SHORT_KEY = 64  # field keys shorter than this are checked at once, as one of 256 bytes


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
    extra: tuple[tuple[str, str], ...] = ()  # other keys, as their info field text
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


# -- one ident or data record ---------------------------------------------------------------


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
            value = _number_text(value, where, key)
        if not isinstance(value, str):
            raise TelegramError(f"{where}.{key}: must be a string, got {_short_json(value)}")
        _check(where, key, value, tag=key in _TAG_KEYS)
        text[key] = value
    for key in ("project", "serial"):
        if not text.get(key):
            raise TelegramError(f"{where}.{key}: is required and must not be empty")
        _check_name_part(where, key, text[key])
    database = f"{text['project']}_{text['serial']}"
    problem = check_database_name(database)
    if problem:
        raise TelegramError(f"{where}.serial: the database {_short(database)} {problem}")
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
        counts = ", ".join(f"{n} {key}" for key, n in lengths.items())
        raise TelegramError(
            f"{where}: fields, units and types are parallel lists and must be equally long "
            f"(the unit and the type of each field, in the same order); got {counts}: give "
            "every field its own unit and type"
        )
    stamp = _time(obj, where) if "time" in obj else None
    extra = []
    for key, value in obj.items():
        if key in _IDENT_TEXT_KEYS or key in _IDENT_LIST_KEYS or key == "time" or value is None:
            continue
        _check_key(where, key)
        extra.append((key, _info_text(value, where, key)))
    ident = Ident(**text, **lists, extra=tuple(extra), time=stamp)
    _check_info_key(ident, where)
    return ident


def _info_text(value: object, where: str, key: str) -> str:
    """An extra ident value as its info field text (see the module docstring)."""
    if isinstance(value, list):
        items = []
        for index, item in enumerate(value):
            if isinstance(item, list | dict) or item is None:
                raise TelegramError(
                    f"{where}.{key}[{index}]: a list in an ident may hold strings, numbers and "
                    f"booleans, got {_short_json(item)}"
                )
            text = _scalar_text(item, where, f"{key}[{index}]")
            if "," in text:
                raise TelegramError(
                    f"{where}.{key}[{index}]: {text!r} has a comma; the info series joins the "
                    "list with commas, so an item cannot hold one"
                )
            items.append(text)
        text = ",".join(items)
        _check(where, key, text, tag=False)
        return text
    if isinstance(value, dict):
        raise TelegramError(
            f"{where}.{key}: extra ident keys must be strings, numbers, booleans or lists of "
            f"them, got an object"
        )
    return _scalar_text(value, where, key)


def _scalar_text(value: object, where: str, key: str) -> str:
    """A string, number or boolean as info field text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number_text(value, where, key)
    if not isinstance(value, str):
        raise TelegramError(
            f"{where}.{key}: extra ident keys must be strings, numbers, booleans or lists of "
            f"them, got {type(value).__name__}"
        )
    _check(where, key, value, tag=False)
    return value


def _number_text(value: float, where: str, key: str) -> str:
    """A number as JSON writes it; NaN and infinity are refused (an ident has no readings)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise TelegramError(
            f"{where}.{key}: {value!r} is not a number an ident can hold; write the value or "
            "leave the key out"
        )
    return json.dumps(value)


def _time(obj: dict, where: str) -> int:
    stamp = obj.get("time")
    if isinstance(stamp, float) and stamp.is_integer():
        stamp = int(stamp)
    if not isinstance(stamp, int) or isinstance(stamp, bool) or not 0 <= stamp <= MAX_TIME:
        raise TelegramError(
            f"{where}.time: is required as integer UNIX seconds (0 to {MAX_TIME}), "
            f"got {_short_json(obj.get('time'))}"
        )
    return stamp


def data_from_json(obj: object, where: str = "data") -> Data:
    """A :class:`Data` from a decoded JSON object; TelegramError naming ``where`` if bad.

    NaN and infinite values are left out (see the module docstring); :func:`check_telegrams`
    counts them.
    """
    return _data(obj, where)[0]


def _data(obj: object, where: str) -> tuple[Data, tuple[str, ...], str]:
    """The record, the keys left out of it as NaN or infinite, and its longest long key.

    Keys of fewer than 64 characters are not reported as long: every key that short fits
    the series key check of :meth:`_Stream._check_key`.
    """
    if type(obj) is not dict:
        raise TelegramError(f"{where}: must be a JSON object, got {type(obj).__name__}")
    stamp = obj.get("time")
    if type(stamp) is not int or not 0 <= stamp <= MAX_TIME:
        stamp = _time(obj, where)
    geolocation = obj.get("geolocation")
    if geolocation is None:
        geolocation = ""
    elif type(geolocation) is not str:
        raise TelegramError(f"{where}.geolocation: must be a string")
    elif geolocation:
        problem = _tag_problem(geolocation)
        if problem:
            raise TelegramError(f"{where}.geolocation: {geolocation!r} {problem}")
    bad, long_key = _keys(tuple(obj))
    values: list[tuple[str, Value]] = []
    dropped: list[str] = []
    for key, value in obj.items():
        if value is None or key == "time" or key == "geolocation":
            continue
        if bad and key in bad:
            raise TelegramError(where + _field_problem(key))
        kind = type(value)
        if kind is float:
            if value - value != 0.0:  # NaN or infinite: never sent; check_telegrams counts it
                dropped.append(key)
                continue
        elif kind is str:
            _check(where, key, value, tag=False)
        elif kind is int:
            if not -(2**53) <= value <= 2**53 and not _fits_float(value):
                raise TelegramError(f"{where}.{key}: {_digits(value)} is too large for a float")
        elif kind is not bool:
            raise TelegramError(
                f"{where}.{key}: must be a number, string or boolean, got {_short_json(value)}"
            )
        values.append((key, value))
    data = Data(time=stamp, values=tuple(values), geolocation=geolocation)
    return data, tuple(dropped), long_key


@functools.lru_cache(maxsize=256)
def _keys(keys: tuple[str, ...]) -> tuple[frozenset[str], str]:
    """The keys of a data record that cannot name a field, and its longest long key.

    Records of a file mostly have the same keys, so this is worked out once per key set.
    """
    bad = frozenset(k for k in keys if k not in ("time", "geolocation") and _field_problem(k))
    long = max((k for k in keys if len(k) >= _SHORT_KEY), key=len, default="")
    return bad, long


@functools.lru_cache(maxsize=4096)
def _field_problem(key: str) -> str:
    """What follows ``where`` in the refusal of ``key`` as a data field name, or ''."""
    problem = check_key(key)
    if problem:
        return f": field name {key!r} {problem}"
    if key.startswith("_"):
        return f".{key}: InfluxDB reserves field names starting with '_'; rename it"
    if key in _DATA_TAGS:
        return (
            f".{key}: is a tag of the data series; a field of the same name would be "
            "ambiguous when read back; rename it"
        )
    return ""


@functools.lru_cache(maxsize=1024)
def _tag_problem(value: str) -> str | None:
    return check_tag_value(value)


def _check(where: str, key: str, value: str, *, tag: bool) -> None:
    problem = _tag_problem(value) if tag else check_text(value)
    if problem:
        raise TelegramError(f"{where}.{key}: {_short(value)} {problem}")


def _check_key(where: str, key: str) -> None:
    problem = check_key(key)
    if problem:
        raise TelegramError(f"{where}: field name {_short(key)} {problem}")


def _check_name_part(where: str, key: str, value: str) -> None:
    problem = check_database_name(value)
    if problem:
        raise TelegramError(
            f"{where}.{key}: {_short(value)} names the database <project>_<serial> and {problem}"
            "; allowed: printable text without spaces, '/', '\\' or '\"'"
        )


def _check_info_key(ident: Ident, where: str) -> None:
    """Refuse an ident whose info point, or data points, InfluxDB could not store."""
    keys = ["project", "serial", *(k for k in _IDENT_TEXT_KEYS if getattr(ident, k))]
    keys += [k for k in _IDENT_LIST_KEYS if getattr(ident, k)] + [k for k, _ in ident.extra]
    longest = max(keys, key=lambda k: len(k.encode()))
    problem = check_point_key("info", {"label": ident.label}, longest)
    if problem:
        if len(ident.label) >= len(longest):
            raise TelegramError(f"{where}.label: {_short(ident.label)} {problem}")
        raise TelegramError(f"{where}: field name {_short(longest)} {problem}")
    tags = {"label": ident.label, "geolocation": ident.geolocation, "new": "1"}
    problem = check_point_key("data", tags, "x")
    if problem:
        what = "label" if len(ident.label) >= len(ident.geolocation) else "geolocation"
        raise TelegramError(f"{where}.{what}: {_short(getattr(ident, what))} {problem}")


def _fits_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _short(value: str, limit: int = 60) -> str:
    """``repr(value)``, cut in the middle when long: messages stay one readable line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...{text[-limit // 4 :]} ({len(value):,} characters)"


def _short_json(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text):,} characters)"


def _digits(value: int) -> str:
    text = str(value)
    return text if len(text) <= 500 else f"{text[:20]}... ({len(text):,} digits)"


def to_json_line(telegram: Telegram) -> str:
    """One JSON Lines record, ``{"ident": ...}`` or ``{"data": ...}``."""
    key = "ident" if isinstance(telegram, Ident) else "data"
    return json.dumps({key: telegram.to_json()}, ensure_ascii=False, separators=(",", ":"))


# -- files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSummary:
    """What a whole telegram file holds, from the checking pass (:func:`check_telegrams`)."""

    source: str
    idents: int
    data: int
    databases: tuple[str, ...]
    non_finite: int = 0  # NaN or infinite values left out
    first_non_finite: str = ""  # where the first one was, e.g. "line 4: data[1].pm_25"
    empty: int = 0  # data records left with no value: they write no point
    first_empty: str = ""

    def describe(self) -> str:
        """The one line ``publish`` prints for the file."""
        return (
            f"{self.source}: {self.idents} ident, {self.data} data -> database "
            f"{', '.join(self.databases)}"
        )

    def notes(self) -> list[str]:
        """What was left out, in lines to show the user (none when nothing was)."""
        out = []
        if self.non_finite:
            out.append(
                f"{self.source}: {self.non_finite} values were NaN or infinite and are not "
                f"sent (InfluxDB stores only finite numbers; first at {self.first_non_finite})"
            )
        if self.empty:
            out.append(
                f"{self.source}: {self.empty} data records hold no value to send and write no "
                f"point (first at {self.first_empty})"
            )
        return out


def read_telegrams(path: str | os.PathLike[str], source: str | None = None) -> Iterator[Telegram]:
    """Every telegram in the file at ``path``, in order, read incrementally.

    Memory stays flat whatever the file's size. An ident without a ``time`` of its own takes
    the time of the first data record after it (so publishing a file twice writes the same
    points); that needs one record of lookahead. A fault raises TelegramError naming
    ``source`` (default: the path), the line and the reason, after the telegrams before it
    were yielded: run :func:`check_telegrams` over every file before sending any. The file
    may be opened again (to re-read data records that came before their ident), so it must
    be a regular file: copy standard input to a temporary file first.
    """
    name = os.fspath(path) if source is None else source
    for item in _stamped(_items(functools.partial(_file_chunks, path), name)):
        yield item.telegram


def check_telegrams(path: str | os.PathLike[str], source: str | None = None) -> FileSummary:
    """Read the whole file as :func:`read_telegrams` does; its summary, or TelegramError."""
    name = os.fspath(path) if source is None else source
    return _summarize(_stamped(_items(functools.partial(_file_chunks, path), name)), name)


def parse_telegrams(text: str, source: str) -> list[Telegram]:
    """Every telegram in ``text`` (either form), in order; refuses the whole text if bad.

    The same reader as :func:`read_telegrams`, for texts small enough to hold in memory.
    """
    return [item.telegram for item in _stamped(_items(functools.partial(_slices, text), source))]


def summarize_text(text: str, source: str) -> FileSummary:
    """:func:`check_telegrams` for a text in memory."""
    return _summarize(_stamped(_items(functools.partial(_slices, text), source)), source)


def _summarize(items: Iterable[_Item], source: str) -> FileSummary:
    idents = data = non_finite = empty = 0
    first_non_finite = first_empty = ""
    databases: set[str] = set()
    for telegram, line, where, dropped in items:
        if type(telegram) is Ident:
            idents += 1
            databases.add(telegram.database)
            continue
        data += 1
        if dropped:
            non_finite += len(dropped)
            first_non_finite = first_non_finite or f"line {line}: {where}.{dropped[0]}"
        if not telegram.values:  # type: ignore[union-attr]
            empty += 1
            first_empty = first_empty or f"line {line}: {where}"
    return FileSummary(
        source, idents, data, tuple(sorted(databases)), non_finite, first_non_finite, empty,
        first_empty,
    )  # fmt: skip


class _Item(NamedTuple):
    """A telegram and where it was: its line, its path (``data[3]``), keys left out."""

    telegram: Telegram
    line: int
    where: str
    dropped: tuple[str, ...] = ()


def _stamped(items: Iterable[_Item]) -> Iterator[_Item]:
    """Give each ident without a time the time of the first data record after it."""
    pending: _Item | None = None
    for item in items:
        if type(item.telegram) is Ident:
            if pending is not None:
                yield pending
                pending = None
            if item.telegram.time is None:
                pending = item
                continue
        elif pending is not None:
            stamped = replace(pending.telegram, time=item.telegram.time)
            yield pending._replace(telegram=stamped)
            pending = None
        yield item
    if pending is not None:
        yield pending


# -- reading text incrementally ---------------------------------------------------------------


def _slices(text: str) -> Iterator[str]:
    text = text.removeprefix("\ufeff")  # a byte order mark some editors write
    for start in range(0, len(text), _CHUNK):
        yield text[start : start + _CHUNK]


def _file_chunks(path: str | os.PathLike[str]) -> Iterator[str]:
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise TelegramError(f"cannot read it: {err}") from None
    with handle:

        def blocks() -> Iterator[bytes]:
            while True:
                try:
                    block = handle.read(_CHUNK)
                except OSError as err:
                    raise TelegramError(f"cannot read it: {err}") from None
                if not block:
                    return
                yield block

        yield from _utf8(blocks())


def _utf8(blocks: Iterator[bytes]) -> Iterator[str]:
    """Decode UTF-8 block by block (a character may span two); refuse other bytes by line."""
    pending = b""
    line, column = 1, 1  # where the next character goes
    first = True
    for block in itertools.chain(blocks, [None]):
        data = pending + (block or b"")
        try:
            text, pending = data.decode("utf-8"), b""
        except UnicodeDecodeError as err:
            if block is not None and err.reason == "unexpected end of data":
                text, pending = data[: err.start].decode("utf-8"), data[err.start :]
            else:
                good = data[: err.start].decode("utf-8")
                if "\n" in good:
                    line, column = line + good.count("\n"), len(good) - good.rfind("\n")
                else:
                    column += len(good)
                raise TelegramError(
                    f"line {line} column {column}: byte 0x{data[err.start]:02x} is not UTF-8 "
                    "text; save the file as UTF-8"
                ) from None
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if "\n" in text:
            line, column = line + text.count("\n"), len(text) - text.rfind("\n")
        else:
            column += len(text)
        if text:
            yield text


class _Text:
    """A window of decoded text sliding over a stream, counting lines as it goes."""

    def __init__(self, chunks: Iterator[str], at: _Mark | None = None) -> None:
        self._chunks = chunks
        self.buf = ""
        self.base = 0  # offset of buf[0] in the whole text
        self.eof = False
        self._line, self._counted, self._line_start = 1, 0, 0  # lines counted up to _counted
        if at is not None:
            self._line, self._counted, self._line_start = at.line, at.offset, at.line_start
            while self.fill() and self.base + len(self.buf) <= at.offset:
                self.base += len(self.buf)
                self.buf = ""
            self.buf = self.buf[at.offset - self.base :]
            self.base = at.offset

    def fill(self, at_least: int = 1) -> bool:
        """Append at least ``at_least`` characters (fewer at the end); False if none came."""
        parts, got = [self.buf], 0
        while got < at_least:
            chunk = next(self._chunks, None)
            if chunk is None:
                self.eof = True
                break
            parts.append(chunk)
            got += len(chunk)
        if got:
            self.buf = "".join(parts)
        return got > 0

    def position(self, i: int) -> tuple[int, int]:
        """Line and column (from 1) of ``buf[i]``."""
        at = self.base + i
        if at >= self._counted:
            start = self._counted - self.base
            lines = self.buf.count("\n", start, i)
            if lines:
                self._line += lines
                self._line_start = self.base + self.buf.rfind("\n", start, i) + 1
            self._counted = at
            return self._line, at - self._line_start + 1
        # behind the count (only when reporting a fault): count back
        back = self.buf.count("\n", i, self._counted - self.base)
        newline = self.buf.rfind("\n", 0, i)
        start = self.base + newline + 1 if newline >= 0 else self._line_start
        return self._line - back, at - start + 1

    def mark(self, i: int) -> _Mark:
        line, column = self.position(i)
        return _Mark(self.base + i, line, self.base + i - column + 1)

    def drop(self, i: int) -> int:
        """Forget the text before ``buf[i]`` once there is much of it; the new index of it."""
        if i < _CHUNK:
            return i
        self.position(i)
        self.buf = self.buf[i:]
        self.base += i
        return 0


class _Mark(NamedTuple):
    """A place in the text to read again from: offset, its line, where that line starts."""

    offset: int
    line: int
    line_start: int


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs)
_SPACE = re.compile(r"[ \t\n\r]*")
_SPACE_IN_LINE = re.compile(r"[ \t\r]*")
_VALUE_START = frozenset('[{"-0123456789tfnNI')


class _Walker:
    """Steps through JSON text token by token; ``one_line`` keeps a record on its line."""

    def __init__(self, text: _Text) -> None:
        self.t = text
        self.i = 0
        self.one_line = False

    def peek(self) -> str:
        """The character at ``i`` after any whitespace, or '' at the end of the text."""
        space = _SPACE_IN_LINE if self.one_line else _SPACE
        t = self.t
        while True:
            self.i = space.match(t.buf, self.i).end()  # type: ignore[union-attr]
            if self.i < len(t.buf):
                return t.buf[self.i]
            self.i = t.drop(self.i)
            if not t.fill(_CHUNK):
                return ""

    def line(self) -> int:
        return self.t.position(self.i)[0]

    def decode(self, where: str) -> object:
        """The JSON value at ``i``, reading more text until it is whole."""
        t, start = self.t, self.i
        while True:
            try:
                value, end = _DECODER.raw_decode(t.buf, start)
            except json.JSONDecodeError as err:
                if not t.eof and (
                    len(t.buf) - err.pos <= 64 or err.msg.startswith("Unterminated string")
                ):
                    self._grow(start, where)  # cut short by the window, not by the file
                    continue
                raise self.not_json(err.msg, err.pos) from None
            except RecursionError:
                raise self.fail(
                    f"{where}: is nested too deeply; a telegram holds flat objects"
                ) from None
            except _Duplicate as dup:
                raise self.fail(
                    f"{where}: the key {_short(dup.key)} appears twice in one object; JSON "
                    "readers keep only one of the two, so the file is ambiguous: remove one"
                ) from None
            except ValueError as err:  # an integer beyond Python's digit limit
                raise self.fail(
                    f"{where}: holds a number too long to read ({str(err).split(':')[0]}); a "
                    "measurement needs no more than 17 significant digits"
                ) from None
            if end >= len(t.buf) and not t.eof:  # a number may go on in the next chunk
                self._grow(start, where)
                continue
            break
        if end - start > MAX_RECORD_CHARS:
            self._grow(start, where)  # refuses it
        if self.one_line:
            newline = t.buf.find("\n", start, end)
            if newline >= 0:  # JSON Lines: the record ends at its line's end
                try:
                    _DECODER.raw_decode(t.buf[:newline], start)
                except json.JSONDecodeError as err:
                    raise self.not_json(err.msg, err.pos) from None
        self.i = end
        return value

    def _grow(self, start: int, where: str) -> None:
        """Read more of a value that the window cut short; refuse one that is too long."""
        if len(self.t.buf) - start > MAX_RECORD_CHARS:
            raise self.fail(
                f"{where}: is longer than {MAX_RECORD_CHARS:,} characters; one ident or data "
                "record is much smaller (split the data into more records)"
            )
        self.t.fill(max(_CHUNK, len(self.t.buf) - start))

    def whole_line_record(self) -> dict | None:
        """The record at ``i`` when it is a small object on one line (the JSON Lines case)."""
        t = self.t
        if t.buf[self.i : self.i + 1] != "{":
            return None
        while (newline := t.buf.find("\n", self.i, self.i + _CHUNK)) < 0 and not t.eof:
            if len(t.buf) - self.i >= _CHUNK or not t.fill(_CHUNK):
                break
        if newline < 0:
            newline = len(t.buf) if t.eof and len(t.buf) - self.i < _CHUNK else -1
        if newline < 0:
            return None
        try:
            value, end = _DECODER.raw_decode(t.buf, self.i)
        except (ValueError, RecursionError):
            return None  # the walk says what is wrong, and where
        if end > newline or not isinstance(value, dict):
            return None
        self.i = end
        return value

    def expect(self, char: str, message: str) -> None:
        if self.peek() != char:
            raise self.not_json(message, self.i)
        self.i += 1

    def not_json(self, message: str, i: int) -> TelegramError:
        line, column = self.t.position(i)
        return TelegramError(f"line {line} column {column}: not valid JSON ({message})")

    def fail(self, message: str) -> TelegramError:
        return TelegramError(f"line {self.line()}: {message}")


@dataclass
class _Record:
    """One top-level object being read: what it held so far."""

    line: int
    ident: Ident | None = None
    has_data: bool = False
    data_line: int = 0
    unknown: list[tuple[str, int]] = field(default_factory=list)
    held: list[tuple[_Item, str]] = field(default_factory=list)  # data before the ident
    replay: _Mark | None = None  # where its data array starts, to read it again
    overflow: bool = False  # more data than _HOLD came before the ident: read it again
    hold: bool = True  # no ident in this record yet: data waits for one


_AFTER_RECORD = re.compile(r"[ \t\r]*(\n[ \t\n\r]*)?")


class _Stream:
    """The records of a whole text, as telegram items in order."""

    def __init__(self, opener: Callable[[], Iterator[str]]) -> None:
        self.opener = opener
        self.ident: Ident | None = None  # the ident data records belong to
        self._key_bytes: dict[tuple[str, str], str | None] = {}

    def items(self) -> Iterator[_Item]:
        w = _Walker(_Text(self.opener()))
        if w.peek() == "":
            raise TelegramError("is empty; expected an ident and data telegrams")
        start = w.line()
        yield from self._record(w)
        if w.line() != start:  # a first record over several lines: the one-object form
            if w.peek() != "":
                raise w.fail(
                    "only whitespace may follow the object of a one-object file; for JSON "
                    "Lines, write each record on a line of its own"
                )
            return
        w.one_line = True  # a first record on one line: JSON Lines
        yield from self._lines(w)

    def _lines(self, w: _Walker) -> Iterator[_Item]:
        """The records after the first of a JSON Lines text."""
        while self._next_line(w):
            w.i = w.t.drop(w.i)
            line = w.line()
            obj = w.whole_line_record()
            if obj is None:
                yield from self._record(w)  # long, or wrong: walked, for the exact message
                continue
            data = obj.get("data")
            if len(obj) == 1 and type(data) is dict and self.ident is not None:
                yield self._data_item(data, line, "data")  # the common line, made short
                continue
            record = _Record(line)
            yield from self._members(record, obj)
            yield from self._end(record)

    def _next_line(self, w: _Walker) -> bool:
        """Past the rest of a record's line and any blank lines; False at the end."""
        t, pattern, newline = w.t, _AFTER_RECORD, False
        while True:
            match = pattern.match(t.buf, w.i)
            assert match is not None
            newline = newline or match.group(1) is not None
            w.i = match.end()
            if w.i < len(t.buf):
                break
            w.i = t.drop(w.i)
            if not t.fill(_CHUNK):
                return False
            pattern = _SPACE if newline else _AFTER_RECORD
        if not newline:
            raise w.not_json("Extra data", w.i)
        return True

    def _record(self, w: _Walker) -> Iterator[_Item]:
        char = w.peek()
        line = w.line()
        if char != "{":
            if char in _VALUE_START:
                raise w.fail('expected an object with "ident" and/or "data"')
            raise w.not_json("Expecting value", w.i)
        record = _Record(line)
        whole = w.whole_line_record()
        if whole is not None:
            yield from self._members(record, whole)
        else:
            yield from self._walk(w, record)
        yield from self._end(record)

    def _members(self, record: _Record, obj: dict) -> Iterator[_Item]:
        """A record that was read whole (one line: every part is on the record's line)."""
        for key, value in obj.items():
            if key == "ident":
                yield from self._ident(record, value, record.line)
            elif key == "data":
                record.has_data, record.data_line = True, record.line
                if type(value) is list:
                    for index, item in enumerate(value):
                        yield from self._data(record, item, record.line, f"data[{index}]")
                else:
                    yield from self._data(record, value, record.line, "data")
            else:
                record.unknown.append((key, record.line))

    def _walk(self, w: _Walker, record: _Record) -> Iterator[_Item]:
        """A record read member by member, its data array item by item."""
        w.i += 1
        seen: set[str] = set()
        if w.peek() == "}":
            w.i += 1
            return
        while True:
            if w.peek() != '"':
                raise w.not_json("Expecting property name enclosed in double quotes", w.i)
            key = str(w.decode("key"))
            w.expect(":", "Expecting ':' delimiter")
            char = w.peek()
            line = w.line()
            if key in seen:
                raise w.fail(
                    f"the key {_short(key)} appears twice in one object; JSON readers keep "
                    "only one of the two, so the file is ambiguous: remove one"
                )
            seen.add(key)
            if key == "ident":
                if char == "[":
                    raise w.fail("ident: must be a JSON object, got list")
                yield from self._ident(record, w.decode("ident"), line)
            elif key == "data":
                record.has_data, record.data_line = True, line
                if char == "[":
                    yield from self._array(w, record)
                else:
                    yield from self._data(record, w.decode("data"), line, "data")
            else:
                w.decode(key)
                record.unknown.append((key, line))
            char = w.peek()
            w.i += 1
            if char == "}":
                return
            if char != ",":
                raise w.not_json("Expecting ',' delimiter", w.i - 1)

    def _array(self, w: _Walker, record: _Record) -> Iterator[_Item]:
        """A data array from its ``[``, item by item, sliding the window as it goes."""
        if record.hold:
            record.replay = w.t.mark(w.i)
        w.i += 1
        index = 0
        if w.peek() == "]":
            w.i += 1
            return
        while True:
            w.i = w.t.drop(w.i)
            w.peek()
            line = w.line()
            where = f"data[{index}]"
            yield from self._data(record, w.decode(where), line, where)
            index += 1
            char = w.peek()
            w.i += 1
            if char == "]":
                return
            if char != ",":
                raise w.not_json("Expecting ',' delimiter", w.i - 1)

    def _ident(self, record: _Record, obj: object, line: int) -> Iterator[_Item]:
        try:
            ident = ident_from_json(obj, "ident")
        except TelegramError as err:
            raise TelegramError(f"line {line}: {err}") from None
        record.ident, self.ident = ident, ident
        yield _Item(ident, line, "ident")
        if record.hold:
            record.hold = False
            yield from self._release(record)

    def _data(self, record: _Record, obj: object, line: int, where: str) -> Iterator[_Item]:
        if not record.hold:
            yield self._data_item(obj, line, where)
            return
        try:
            data, dropped, long_key = _data(obj, where)
        except TelegramError as err:
            raise TelegramError(f"line {line}: {err}") from None
        if record.overflow:
            return  # checked; it is read again once the ident is known
        if record.replay is None or len(record.held) < _HOLD:
            record.held.append((_Item(data, line, where, dropped), long_key))
        else:
            record.held, record.overflow = [], True

    def _data_item(self, obj: object, line: int, where: str) -> _Item:
        """A data record of the current ident, checked whole."""
        try:
            data, dropped, long_key = _data(obj, where)
        except TelegramError as err:
            raise TelegramError(f"line {line}: {err}") from None
        item = _Item(data, line, where, dropped)
        self._check_key(item, long_key)
        return item

    def _end(self, record: _Record) -> Iterator[_Item]:
        if record.ident is None and not record.has_data:
            found = f" (it has {sorted(k for k, _ in record.unknown)})" if record.unknown else ""
            raise TelegramError(
                f'line {record.line}: expected an object with "ident" and/or "data"{found}'
            )
        if record.unknown:
            key, line = record.unknown[0]
            raise TelegramError(
                f"line {line}: unknown keys {sorted(k for k, _ in record.unknown)}; use ident "
                "and data"
            )
        if record.hold and record.has_data:
            if self.ident is None:
                raise TelegramError(
                    f"line {record.data_line}: data: comes before any ident; put the kit's "
                    "ident first"
                )
            record.hold = False
            yield from self._release(record)

    def _release(self, record: _Record) -> Iterator[_Item]:
        """The data records read before their ident, now that it is known."""
        if record.overflow:
            assert record.replay is not None
            yield from self._array(_Walker(_Text(self.opener(), at=record.replay)), record)
            return
        for item, long_key in record.held:
            self._check_key(item, long_key)
            yield item
        record.held = []

    def _check_key(self, item: _Item, long_key: str) -> None:
        """Refuse a data record whose point InfluxDB could not store (a too long key)."""
        data, ident = item.telegram, self.ident
        assert type(data) is Data and ident is not None
        tags = (ident.label, data.geolocation or ident.geolocation)
        if long_key:
            problem = self._point_key(tags, long_key)
        elif tags in self._key_bytes:
            problem = self._key_bytes[tags]
        else:
            # 256 bytes: the most a key of fewer than _SHORT_KEY characters can take
            problem = self._point_key(tags, "x" * 256)
            if len(self._key_bytes) > 1000:
                self._key_bytes.clear()
            self._key_bytes[tags] = problem
        if problem:
            raise TelegramError(f"line {item.line}: {item.where}: this record {problem}")

    @staticmethod
    def _point_key(tags: tuple[str, str], key: str) -> str | None:
        label, geolocation = tags
        tag_set = {"label": label, "geolocation": geolocation, "new": "1"}
        return check_point_key("data", tag_set, key)


def _items(opener: Callable[[], Iterator[str]], source: str) -> Iterator[_Item]:
    """The telegram items of a text, each fault prefixed with ``source``."""
    try:
        yield from _Stream(opener).items()
    except TelegramError as err:
        raise TelegramError(f"{source}: {err}") from None
