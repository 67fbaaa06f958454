"""InfluxDB 1.x line protocol: escaping, and the ``info``/``data`` points of design.md section 3.

Escaping follows the 1.x spec exactly, so what the ``influx`` CLI reads back equals what the
kit sent: tag keys, tag values and field keys escape comma, ``=`` and space; measurement
names escape comma and space; string field values are double-quoted with ``"`` and ``\\``
escaped. What 1.x cannot carry at all is refused by :func:`check_tag_value`,
:func:`check_key` and :func:`check_text` with a message, never mangled.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})


def check_text(value: str) -> str | None:
    """Why ``value`` cannot travel in any position of a line, or None when it can."""
    if "\n" in value or "\r" in value:
        return "contains a line break, which InfluxDB 1.x line protocol cannot carry"
    return None


def check_tag_value(value: str) -> str | None:
    """Why ``value`` cannot be a 1.x tag value (or key), or None when it can.

    1.x line protocol has no escape for a backslash, so a backslash just before a space,
    comma, ``=`` or the end of the value is read as escaping what follows. At the end of a
    tag value, and anywhere in a key, that breaks the line (400). In the middle of a tag value
    influxd 1.6 happens to read it back unchanged, but only by a quirk of its unescaping, so
    it is refused everywhere, as the contract says.
    """
    problem = check_text(value)
    if problem:
        return problem
    if value.endswith("\\"):
        return "ends with a backslash, which InfluxDB 1.x reads as an escape"
    for i, char in enumerate(value[:-1]):
        if char == "\\" and value[i + 1] in " ,=":
            return f"has a backslash before {value[i + 1]!r}, which InfluxDB 1.x reads as an escape"
    return None


def check_key(name: str) -> str | None:
    """Why ``name`` cannot be a 1.x field key, or None when it can.

    Field keys follow the tag rules, and more: the server refuses an empty key and ``time``
    (400), and shows a key holding a control character (such as NUL) under another name.
    """
    if name == "":
        return "is empty; InfluxDB needs a name for every field"
    if name == "time":
        return "is reserved by InfluxDB for the timestamp and cannot name a field"
    problem = check_tag_value(name)
    if problem:
        return problem
    if '\\"' in name:  # field keys alone unescape \" (influxd 1.6 reads a\"b back as a"b)
        return "has a backslash before '\"', which InfluxDB 1.x reads as an escape"
    if any(unicodedata.category(char) == "Cc" for char in name):
        return "contains a control character, which InfluxDB does not keep in a field name"
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


def join_lines(lines: Iterable[str]) -> bytes:
    """A request body: lines joined by newlines, UTF-8."""
    return "\n".join(lines).encode("utf-8")
