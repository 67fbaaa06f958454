"""InfluxQL text: retention durations, and statements compared token by token.

A server shows a continuous query not as it was sent but re-printed (``"data"`` becomes
``data``, ``7d`` becomes ``1w``), so "the same query" means the same tokens: identifiers
compared unquoted, durations compared by length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNIT_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_INFLUXQL_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION = re.compile(r"^\s*(\d+)\s*([hdwy])\s*$", re.IGNORECASE)
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_GO_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_NS = {"ns": 1, "u": 1_000, "µ": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9}
_NS |= {"h": 3600 * 10**9, "d": 86400 * 10**9, "w": 7 * 86400 * 10**9}
_NUMBER = re.compile(r"(\d+)(ns|ms|[uµsmhdw])?(?![A-Za-z0-9_])")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DURATION_ALLOWED = "a whole number and a unit h, d, w or y (365 days), e.g. 90d or 10y; or inf"


@dataclass(frozen=True)
class Duration:
    """A retention length in whole seconds; 0 means forever (InfluxQL ``INF``)."""

    seconds: int

    def influxql(self) -> str:
        """The InfluxQL literal: ``INF``, or the largest unit that divides it (``3650d``)."""
        if self.seconds == 0:
            return "INF"
        for unit, size in _INFLUXQL_UNITS:
            if self.seconds % size == 0:
                return f"{self.seconds // size}{unit}"
        raise AssertionError("unreachable: every whole second count has a unit")

    def __str__(self) -> str:
        if self.seconds == 0:
            return "forever"
        if self.seconds % (365 * 86400) == 0:
            return f"{self.seconds // (365 * 86400)}y"
        return self.influxql()


def parse_duration(text: str) -> Duration:
    """``90d``, ``10y``, ``inf`` -> Duration; ValueError saying what is allowed."""
    if text.strip().lower() in ("inf", "forever"):
        return Duration(0)
    match = _DURATION.match(text)
    if not match or int(match[1]) == 0:
        raise ValueError(f"{text!r} is not a duration; allowed: {DURATION_ALLOWED}")
    seconds = int(match[1]) * _UNIT_SECONDS[match[2].lower()]
    if seconds < 3600:
        raise ValueError(f"{text!r} is shorter than InfluxDB's shortest retention (1h)")
    return Duration(seconds)


def go_duration(text: str) -> Duration:
    """A duration as SHOW RETENTION POLICIES prints it (Go: ``2160h0m0s``; ``0s`` = forever)."""
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a Go duration")
    return Duration(round(sum(float(n) * _GO_SECONDS[u] for n, u in parts)))


Token = tuple[str, object]


def tokens(statement: str) -> list[Token]:
    """The tokens of an InfluxQL statement, quoting undone and durations in nanoseconds.

    Enough of influxql's scanner for the statements provisioning writes: identifiers (bare
    or in double quotes), string literals, numbers, durations and single-character symbols.
    """
    out: list[Token] = []
    i = 0
    while i < len(statement):
        char = statement[i]
        if char.isspace():
            i += 1
        elif char in "\"'":
            text, i = _quoted(statement, i)
            out.append(("ident" if char == '"' else "string", text))
        elif char.isdigit():
            match = _NUMBER.match(statement, i)
            if not match:
                out.append(("char", char))
                i += 1
                continue
            number, unit = int(match[1]), match[2]
            out.append(("duration", number * _NS[unit]) if unit else ("number", number))
            i = match.end()
        elif char.isalpha() or char == "_":
            match = _WORD.match(statement, i)
            word = match[0] if match else char
            out.append(("ident", word))
            i += len(word)
        else:
            out.append(("char", char))
            i += 1
    return out


def _quoted(statement: str, start: int) -> tuple[str, int]:
    """The text of the quoted token at ``start`` (escapes undone) and the index after it."""
    quote, text, i = statement[start], [], start + 1
    escapes = {"n": "\n", "\\": "\\", '"': '"', "'": "'"}
    while i < len(statement):
        char = statement[i]
        if char == quote:
            return "".join(text), i + 1
        if char == "\\" and i + 1 < len(statement):
            text.append(escapes.get(statement[i + 1], "\\" + statement[i + 1]))
            i += 2
            continue
        text.append(char)
        i += 1
    return "".join(text), i  # unterminated: what there is (it cannot equal a whole one)


def same_statement(shown: str, sent: str) -> bool:
    """True when a server's re-printed statement is the one sent (quoting and units aside)."""
    return tokens(shown) == tokens(sent)
