"""The kits to provision: one from the command line, or many from a CSV file (``--kits``).

The file has a header row naming the columns project, serial, label, geolocation (any
order), then one kit per row. Every row is checked before anything is provisioned; a bad row
is named by its line with what is wrong and what is allowed, and refuses the whole file.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from agent.lineprotocol import check_tag_value
from agent.names import NAME_RULE, name_problem

COLUMNS = ("project", "serial", "label", "geolocation")
MEANS_SUFFIX = "_means"  # <project>_<serial>_means holds a kit's long-term means
_GEO = re.compile(r"^(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)(?:,(-?\d+(?:\.\d+)?))?$")
GEO_ALLOWED = "lat,lon[,alt] in decimal degrees and metres, e.g. 51.420635,6.1356117,22.9"


class KitsError(ValueError):
    """Bad kits input (a file row or an option); the CLI prints it and exits 2."""


@dataclass(frozen=True)
class Kit:
    """One kit to provision; ``where`` names its source for messages ("kits.csv line 3")."""

    project: str
    serial: str
    label: str = ""
    geolocation: str = ""
    where: str = "the command line"

    @property
    def database(self) -> str:
        """The kit's raw database, ``<project>_<serial>`` (as ``Ident.database``)."""
        return f"{self.project}_{self.serial}"

    @property
    def means_database(self) -> str:
        """Where the kit's hourly and daily means live, out of the kit user's reach."""
        return self.database + MEANS_SUFFIX


def kit_problems(kit: Kit) -> list[str]:
    """What is wrong with ``kit``'s values, each naming the column, or [] when nothing is."""
    problems = []
    for column in ("project", "serial"):
        value = getattr(kit, column)
        problem = name_problem(value)
        if problem:
            problems.append(f"{column} {value!r} {problem}; allowed: {NAME_RULE}")
    if not problems and kit.database.endswith(MEANS_SUFFIX):
        problems.append(
            f"serial {kit.serial!r} makes the database {kit.database!r}, a name that ends like "
            f"another kit's means database ({MEANS_SUFFIX}); allowed: a serial not ending in "
            f"{MEANS_SUFFIX!r}"
        )
    problem = check_tag_value(kit.label)
    if problem:
        problems.append(f"label {kit.label!r} {problem}")
    problem = geolocation_problem(kit.geolocation)
    if problem:
        problems.append(f"geolocation {kit.geolocation!r} {problem}; allowed: {GEO_ALLOWED}")
    return problems


def geolocation_problem(text: str) -> str | None:
    """Why ``text`` is not a kit position as ``[kit] geolocation`` takes it, or None."""
    if text == "":
        return None
    match = _GEO.match(text.replace(" ", ""))
    if not match:
        return "is not lat,lon[,alt]"
    if abs(float(match[1])) > 90 or abs(float(match[2])) > 180:
        return "is out of range (latitude -90..90, longitude -180..180)"
    return None


def read_kits(path: Path) -> list[Kit]:
    """Every kit in the CSV file at ``path``; KitsError listing every bad row by line."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: the BOM spreadsheets write
    except (OSError, UnicodeDecodeError) as err:
        raise KitsError(f"{path}: cannot read it: {err}") from None
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    problems: list[str] = []
    kits: list[Kit] = []
    seen: dict[str, int] = {}
    header: list[str] | None = None
    try:
        for row in rows:
            line = rows.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank lines are allowed anywhere
            if header is None:
                header = [cell.strip().lower() for cell in row]
                if sorted(header) != sorted(COLUMNS):
                    raise KitsError(
                        f"{path} line {line}: the header row must name the columns "
                        f"{', '.join(COLUMNS)} (in any order), got {', '.join(map(repr, row))}"
                    )
                continue
            if len(row) != len(header):
                problems.append(
                    f"{path} line {line}: {len(row)} values, expected {len(header)} "
                    f"({', '.join(header)}); a geolocation holds commas, so put it in double "
                    'quotes: "51.42,6.13,22.9"'
                )
                continue
            values = dict(zip(header, (cell.strip() for cell in row), strict=True))
            kit = Kit(**values, where=f"{path} line {line}")
            bad = kit_problems(kit)
            problems += [f"{path} line {line}: {problem}" for problem in bad]
            if bad:
                continue
            if kit.database in seen:
                problems.append(
                    f"{path} line {line}: kit {kit.database!r} is also on line "
                    f"{seen[kit.database]}; allowed: each project and serial once"
                )
                continue
            seen[kit.database] = line
            kits.append(kit)
    except csv.Error as err:
        problems.append(f"{path} line {rows.line_num}: not CSV ({err})")
    if header is None:
        raise KitsError(
            f"{path}: no header row; the first row names the columns {', '.join(COLUMNS)}"
        )
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise KitsError(f"{path}: {count}, nothing was provisioned:\n  " + "\n  ".join(problems))
    if not kits:
        raise KitsError(f"{path}: no kits after the header row")
    return kits
