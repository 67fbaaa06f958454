"""InfluxDB rows back into telegrams: the exact inverse of :mod:`agent.series`.

An ``info`` row becomes the :class:`~agent.telegram.Ident` that wrote it (``fields``, ``units``
and ``types`` split back at ``,``; every other text exactly as stored; ``time`` is the row's
time). A ``data`` row becomes its :class:`~agent.telegram.Data` (``time`` in integer seconds;
``geolocation`` only when the point's tag differs from the ident's) and its series key, the
tags that with the time make the point unique in InfluxDB.

Extra ident keys come back as the text they were stored as (a published list ``["a", "b"]`` is
the string ``"a,b"``, a number ``7`` the string ``"7"``): the info series keeps no type for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import NamedTuple

from agent.telegram import Data, Ident, Value

DATA_TAGS = ("label", "geolocation", "new")  # the tags of ``data`` (docs/design.md section 3)
_TEXT_KEYS = ("project", "serial", "geolocation", "description", "version")
_LIST_KEYS = ("fields", "units", "types")


class SeriesKey(NamedTuple):
    """A data point's tags: with its time, what makes it one point in InfluxDB."""

    label: str
    geolocation: str
    new: str


class DataRow(NamedTuple):
    """One ``data`` point as read: time, series and measured values (nulls left out)."""

    time: int
    series: SeriesKey
    values: tuple[tuple[str, Value], ...]


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


def data_reader(columns: Sequence[str]) -> Callable[[Sequence[object]], DataRow]:
    """A function turning one ``data`` row (``SELECT * FROM data``) of ``columns`` into a
    :class:`DataRow`; column positions are worked out once per chunk, not per row."""
    at = {name: i for i, name in enumerate(columns)}
    tag_at = tuple(at.get(tag) for tag in DATA_TAGS)
    time_at = at["time"]
    fields = tuple((name, i) for name, i in at.items() if name != "time" and name not in DATA_TAGS)

    def read(values: Sequence[object]) -> DataRow:
        tags = SeriesKey(*(("" if i is None else values[i] or "") for i in tag_at))
        measured = tuple((name, values[i]) for name, i in fields if values[i] is not None)
        return DataRow(int(values[time_at]), tags, measured)  # type: ignore[arg-type]

    return read


def data_of(row: DataRow, ident: Ident) -> Data:
    """The data telegram of a row under ``ident``: the geolocation only where it differs."""
    geolocation = row.series.geolocation
    return Data(
        time=row.time,
        values=row.values,
        geolocation="" if geolocation == ident.geolocation else geolocation,
    )
