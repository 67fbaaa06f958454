"""Telegrams to the InfluxDB series of docs/design.md section 3: ``info`` and ``data``.

``info`` has tag ``label`` and the other ident keys as string fields (lists joined with ``,``).
``data`` has tags ``label``, ``geolocation`` and ``new`` (``1`` on the first data point after
each ``info``), one field per measured value, and the telegram's own time. ``info`` is stamped
with the ident's own ``time`` when it has one (a published file's ident takes its first data
record's time), else with the moment it is encoded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent.lineprotocol import encode_point
from agent.telegram import Data, Ident, Telegram


def info_point(ident: Ident, timestamp: int) -> str:
    """The ``info`` line for an ident, stamped ``timestamp`` (the moment it was sent)."""
    fields: dict[str, str] = {"project": ident.project, "serial": ident.serial}
    for key in ("geolocation", "description", "version"):
        if getattr(ident, key):
            fields[key] = getattr(ident, key)
    for key in ("fields", "units", "types"):
        if getattr(ident, key):
            fields[key] = ",".join(getattr(ident, key))
    fields.update(ident.extra)
    line = encode_point("info", {"label": ident.label}, fields, timestamp)
    assert line is not None  # project and serial are always there
    return line


def data_point(ident: Ident, data: Data, new: bool) -> str | None:
    """The ``data`` line for a record, or None when it holds no sendable value."""
    tags = {
        "label": ident.label,
        "geolocation": data.geolocation or ident.geolocation,
        "new": "1" if new else "0",
    }
    return encode_point("data", tags, dict(data.values), data.time)


@dataclass
class SeriesEncoder:
    """Turns a telegram stream into ``(database, line)`` pairs, tracking the ``new`` tag.

    ``database`` overrides ``<project>_<serial>`` when set (``[influx] database``).
    """

    database: str = ""
    clock: object = field(default=time.time)
    _ident: Ident | None = None
    _new: bool = False

    def encode(self, telegram: Telegram) -> list[tuple[str, str]]:
        if isinstance(telegram, Ident):
            self._ident = telegram
            self._new = True
            stamp = telegram.time if telegram.time is not None else int(self.clock())  # type: ignore[operator]
            return [(self._db(), info_point(telegram, stamp))]
        if self._ident is None:
            raise ValueError("a data telegram came before any ident")
        line = data_point(self._ident, telegram, self._new)
        if line is None:
            return []
        self._new = False
        return [(self._db(), line)]

    def _db(self) -> str:
        assert self._ident is not None
        return self.database or self._ident.database
