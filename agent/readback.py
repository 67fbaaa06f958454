"""InfluxDB rows back into telegrams: the exact inverse of :mod:`agent.series`.

An ``info`` row becomes the :class:`~agent.telegram.Ident` that wrote it (``fields``, ``units``
and ``types`` split back at ``,``; every other text exactly as stored; ``time`` is the row's
time). A ``data`` row becomes its :class:`~agent.telegram.Data` (``time`` in integer seconds;
``geolocation`` only when the point's tag differs from the ident's) and its key: the time and
the tags, which make the point unique in InfluxDB.

Extra ident keys come back as the text they were stored as (a published list ``["a", "b"]`` is
the string ``"a,b"``, a number ``7`` the string ``"7"``): the info series keeps no type for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring
from operator import itemgetter

from agent.telegram import Data, Ident, Value

try:
    from _json import make_encoder as c_make_encoder
except ImportError:  # pragma: no cover - other Pythons
    c_make_encoder = None

DATA_TAGS = ("label", "geolocation", "new")  # the tags of ``data`` (docs/design.md section 3)
_TEXT_KEYS = ("project", "serial", "geolocation", "description", "version")
_LIST_KEYS = ("fields", "units", "types")


Key = tuple  # (time, label, geolocation, new) of a data point: unique in InfluxDB


def _refuse(value: object) -> object:
    raise TypeError(f"not JSON: {type(value).__name__}")


if c_make_encoder is not None:  # CPython's C encoder, made once: json.dumps makes one a call
    _ENCODE = c_make_encoder(None, _refuse, encode_basestring, None, ":", ",", False, False, True)
else:  # pragma: no cover - other Pythons
    _ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).iterencode


def _text(value: object) -> str:
    """An info value as text: strings as stored, anything else as JSON writes it."""
    return value if isinstance(value, str) else json.dumps(value)


def ident_of(columns: Sequence[str], values: Sequence[object]) -> Ident:
    """The ident an ``info`` row (``SELECT * FROM info``) was written from.

    ValueError when the row has no ``project`` or ``serial`` (not written by a kit).
    """
    row = {c: v for c, v in zip(columns, values, strict=True) if v is not None and v != ""}
    time = row.pop("time")
    label = _text(row.pop("label", ""))
    text = {key: _text(row.pop(key)) for key in _TEXT_KEYS if key in row}
    lists = {key: tuple(_text(row.pop(key)).split(",")) for key in _LIST_KEYS if key in row}
    if not text.get("project") or not text.get("serial"):
        raise ValueError("an info record without project or serial (not written by a kit)")
    extra = tuple((key, _text(value)) for key, value in row.items())
    return Ident(label=label, **text, **lists, extra=extra, time=int(time))


class DataColumns:
    """The columns of one ``data`` series chunk (``SELECT * FROM data``), worked out once, so
    each row costs a few C calls: its key, its JSON line, its fields for a relay."""

    def __init__(self, columns: Sequence[str]) -> None:
        if columns[0] != "time":
            raise ValueError(f"a data chunk whose first column is {columns[0]!r}, not time")
        self.columns = tuple(columns)
        self.missing = tuple(tag for tag in DATA_TAGS if tag not in columns)
        self.names = self.columns + self.missing  # rows get a None for each missing tag
        at = {name: i for i, name in enumerate(self.names)}
        self.key: Callable[[Sequence[object]], Key] = itemgetter(0, *(at[tag] for tag in DATA_TAGS))
        self.fields = tuple(
            (name, i) for name, i in at.items() if name != "time" and name not in DATA_TAGS
        )
        self.pad = (None,) * len(self.missing)
        self._geo = itemgetter(at["geolocation"])
        self._columns = tuple(itemgetter(i) for _, i in self.fields)
        self._values = itemgetter(0, *(i for _, i in self.fields))
        names = "".join(
            "," + encode_basestring(name).replace("%", "%%") + ":%r" for name, _ in self.fields
        )
        self._template = '{"data":{"time":%d' + names + "}}"

    def row(self, values: Sequence[object]) -> Sequence[object]:
        """A row with a value for every name (None for a tag no point of the chunk has)."""
        return tuple(values) + self.pad if self.pad else values

    def measured(self, row: Sequence[object]) -> dict[str, Value]:
        """The row's measured values (nulls left out: the point has no such field)."""
        return {name: row[i] for name, i in self.fields if row[i] is not None}  # type: ignore[misc]

    def tags(self, row: Sequence[object]) -> dict[str, str]:
        _, label, geolocation, new = self.key(row)
        return {"label": label or "", "geolocation": geolocation or "", "new": new or ""}

    def data(self, row: Sequence[object], ident: Ident) -> Data:
        """The data telegram of a row under ``ident``: the geolocation only where it differs."""
        geolocation = self.key(row)[2] or ""
        return Data(
            time=int(row[0]),  # type: ignore[call-overload]
            values=tuple(self.measured(row).items()),
            geolocation="" if geolocation == ident.geolocation else geolocation,
        )

    def json_line(self, row: Sequence[object], geolocation: str) -> str:
        """``to_json_line(self.data(row, ident))`` for an ident at ``geolocation``, faster."""
        record = dict(zip(self.names, row, strict=True))
        del record["label"], record["new"]
        geo = record.pop("geolocation")
        if None in record.values():
            record = {k: v for k, v in record.items() if v is not None}
        if geo and geo != geolocation:
            record["geolocation"] = geo
        return '{"data":' + "".join(_ENCODE(record, 0)) + "}"

    def json_lines(self, rows: Sequence[Sequence[object]], geolocation: str) -> list[str]:
        """:meth:`json_line` of every row; rows of numbers only, none with a geolocation of
        its own, are formatted from one template (float and int ``repr`` is JSON's text)."""
        if set(map(self._geo, rows)) <= {None, "", geolocation} and all(
            set(map(type, map(column, rows))) <= _NUMBERS for column in self._columns
        ):
            template, values = self._template, self._values
            return [template % values(row) for row in rows]
        return [self.json_line(row, geolocation) for row in rows]


_NUMBERS = {int, float}  # not bool: JSON writes true/false, repr True/False
