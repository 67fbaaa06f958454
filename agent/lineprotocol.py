"""InfluxDB 1.x line protocol: escaping, and what a line can carry (its limits and their source).

Escaping follows the 1.x spec exactly, so what the ``influx`` CLI reads back equals what the
kit sent: tag keys, tag values and field keys escape comma, ``=`` and space; measurement
names escape comma and space; string field values are double-quoted with ``"`` and ``\\``
escaped. What 1.x cannot carry at all is refused by :func:`check_tag_value`,
:func:`check_key`, :func:`check_text`, :func:`check_point_key` and
:func:`check_database_name` with a message, never mangled.

Limits of InfluxDB 1.x, each measured against influxd 1.6.7 (``tests/test_limits.py``):

* A point is refused (400 ``max key length exceeded: N > 65535``) when its series key (the
  escaped measurement and tags, ``data,geolocation=...,label=...,new=1``) plus ``#!~#``
  plus a field key is over :data:`SERVER_KEY_BYTES` UTF-8 bytes: the TSM index stores that
  key with a 16-bit length (influxdb ``models.MaxKeyLength``). Every point of a kit shares
  its series key, so a 70,000-character label is refused here rather than quarantined point
  by point. We keep half the server's room (:data:`MAX_KEY_BYTES`) as margin for other 1.x
  releases and for tags the project may add.
* String field values: the 1.x line protocol reference (Data types: String) gives "Length
  limit 64KB"; influxd 1.6.7 stores more (5 MB read back whole), so the documented limit is
  the one kept (:data:`MAX_STRING_BYTES`), with the server's own room as the margin.
* Database names: ``CREATE DATABASE`` refuses a name that is empty, ``.`` or ``..``, holds
  ``/`` or ``\\`` or a rune Go's ``unicode.IsPrint`` rejects (meta.ValidName: "invalid
  name"), or is over :data:`MAX_NAME_BYTES` UTF-8 bytes ("name too long").
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping

SERVER_KEY_BYTES = 65_535  # series key + "#!~#" + field key, as influxd 1.x counts it
MAX_KEY_BYTES = 32_768  # what sensorkit lets through: half the server's room
MAX_STRING_BYTES = 65_536  # a string field value ("Length limit 64KB", 1.x docs)
MAX_NAME_BYTES = 255  # a database name (influxd 1.6.7: 256 bytes is "name too long")
_FIELD_SEPARATOR = "#!~#"  # what influxd puts between the series key and the field key

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
# Control characters (Unicode Cc: C0, DEL, C1) a tag value may not hold. TAB is kept: it is
# whitespace people paste from spreadsheets, and influxd and the influx CLI show it unchanged.
_TAG_CONTROLS = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09)


def check_text(value: str) -> str | None:
    """Why ``value`` cannot travel in any position of a line, or None when it can."""
    if "\n" in value or "\r" in value:
        return "contains a line break, which InfluxDB 1.x line protocol cannot carry"
    if not value.isascii():
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return "holds a lone UTF-16 surrogate (a broken \\ud800-style escape), not text"
    else:
        size = len(value)
    if size > MAX_STRING_BYTES:
        return (
            f"is {size:,} bytes long; InfluxDB 1.x keeps strings to {MAX_STRING_BYTES:,} "
            "bytes (64 KiB): shorten it"
        )
    return None


def check_tag_value(value: str) -> str | None:
    """Why ``value`` cannot be a 1.x tag value (or key), or None when it can.

    1.x line protocol has no escape for a backslash, so a backslash just before a space,
    comma, ``=`` or the end of the value is read as escaping what follows. At the end of a
    tag value, and anywhere in a key, that breaks the line (400). In the middle of a tag value
    influxd 1.6 happens to read it back unchanged, but only by a quirk of its unescaping, so
    it is refused everywhere, as the contract says. Control characters other than TAB are
    refused too: influxd stores them, but a label is a name people read, type into queries
    and see in legends, where a NUL or an escape sequence silently becomes something else.
    """
    problem = check_text(value)
    if problem:
        return problem
    if value.endswith("\\"):
        return "ends with a backslash, which InfluxDB 1.x reads as an escape"
    if "\\" in value:
        for i, char in enumerate(value[:-1]):
            if char == "\\" and value[i + 1] in " ,=":
                return (
                    f"has a backslash before {value[i + 1]!r}, which InfluxDB 1.x reads as an "
                    "escape"
                )
    if not _TAG_CONTROLS.isdisjoint(value):
        char = next(c for c in value if c in _TAG_CONTROLS)
        return (
            f"contains a control character (U+{ord(char):04X}); use printable text (a TAB "
            "is the one control character a tag value may hold)"
        )
    return None


def check_key(name: str) -> str | None:
    """Why ``name`` cannot be a 1.x field key, or None when it can.

    Field keys follow the tag rules, and more: the server refuses an empty key and ``time``
    (400), and shows a key holding a control character (such as NUL or TAB) under another
    name.
    """
    if name == "":
        return "is empty; InfluxDB needs a name for every field"
    if name == "time":
        return "is reserved by InfluxDB for the timestamp and cannot name a field"
    problem = check_tag_value(name)
    if problem:
        return problem
    if any(unicodedata.category(char) == "Cc" for char in name):
        return "contains a control character, which InfluxDB does not keep in a field name"
    if '\\"' in name:  # field keys alone unescape \" (influxd 1.6 reads a\"b back as a"b)
        return "has a backslash before '\"', which InfluxDB 1.x reads as an escape"
    return None


def check_database_name(name: str) -> str | None:
    """Why ``name`` cannot name a kit's database (or be its project or serial), or None.

    InfluxDB 1.x's own rule (meta.ValidName, and the length check of ``CREATE DATABASE``):
    not empty, not ``.`` or ``..``, no ``/`` or ``\\``, every character printable (Python's
    ``str.isprintable`` is Go's ``unicode.IsPrint``: letters, marks, numbers, punctuation,
    symbols and the ASCII space), at most 255 UTF-8 bytes. The project's own rule on top: no
    space and no ``"``, which every InfluxQL query and shell command would have to quote.
    """
    if name == "":
        return "is empty"
    if name in (".", ".."):
        return "is '.' or '..', which InfluxDB refuses as a name"
    for char in name:
        if char in "/\\":
            return f"holds {char!r}, which InfluxDB refuses in a database name"
        if char in ' "':
            return f"holds {char!r}; sensorkit keeps spaces and '\"' out of database names"
        if not char.isprintable():
            return (
                f"holds the unprintable character U+{ord(char):04X}, which InfluxDB refuses "
                "in a database name"
            )
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long; InfluxDB keeps database names to {MAX_NAME_BYTES} bytes"
    return None


def point_key_bytes(measurement: str, tags: Mapping[str, str], field_key: str) -> int:
    """How long influxd takes the key of ``field_key`` in this series to be, in bytes."""
    key = escape_measurement(measurement) + "".join(
        f",{escape_key(k)}={escape_key(v)}" for k, v in tags.items() if v != ""
    )
    return len(key.encode("utf-8")) + len(_FIELD_SEPARATOR) + len(escape_key(field_key).encode())


def check_point_key(measurement: str, tags: Mapping[str, str], field_key: str) -> str | None:
    """Why a point of this series with this field cannot be stored, or None when it can."""
    size = point_key_bytes(measurement, tags, field_key)
    if size > MAX_KEY_BYTES:
        return (
            f"makes the {measurement} series key and field name {size:,} bytes long; InfluxDB "
            f"1.x refuses every point over {SERVER_KEY_BYTES:,} bytes and sensorkit keeps "
            f"them to {MAX_KEY_BYTES:,}: shorten it"
        )
    return None


def escape_key(name: str) -> str:
    """Escape a tag key, tag value or field key."""
    return name.translate(_TAG_ESCAPES)


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


def quote_string(value: str) -> str:
    """A string field value: double-quoted, with backslash and double quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_field(value: float | int | str | bool) -> str | None:
    """A field value in line protocol; numbers always as floats, None for NaN and infinity."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            return None
        if not math.isfinite(number):
            return None
        return repr(number)
    return quote_string(value)


def encode_point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, float | int | str | bool],
    timestamp: int,
) -> str | None:
    """One line of line protocol at second precision, or None when no field is left to send.

    Empty tag values are left out (1.x drops them); NaN and infinite fields are left out.
    Tags are sorted by key, as the server prefers.
    """
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        if tags[key] != "":
            parts.append(f"{escape_key(key)}={escape_key(tags[key])}")
    encoded = [
        f"{escape_key(key)}={text}"
        for key, value in fields.items()
        if (text := format_field(value)) is not None
    ]
    if not encoded:
        return None
    return f"{','.join(parts)} {','.join(encoded)} {int(timestamp)}"
