"""A kit's ready ``agent.ini``, made from the shipped one so every other key stays documented.

Keys are set line by line (a commented example ``#key =`` becomes the setting), never by
rewriting the file with configparser, which would drop every comment. The result is for a
Raspberry Pi: hardware backends, no console output, a telegram a minute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from agent.kitsfile import Kit

SHIPPED = Path(__file__).resolve().parent.parent / "agent.ini"


@dataclass(frozen=True)
class KitCredentials:
    """Where a kit sends and who it is there."""

    url: str
    database: str
    username: str
    password: str = field(repr=False)


def render(template: str, kit: Kit, credentials: KitCredentials) -> str:
    """The agent.ini text for ``kit``: the template with the kit's and server's keys set."""
    settings: dict[str, dict[str, str]] = {
        "kit": {
            "project": kit.project,
            "serial": kit.serial,
            "label": kit.label,
            "geolocation": kit.geolocation,
            "description": f"air-quality kit {kit.database}",
            "interval": "60",
        },
        "dylos": {"backend": "hardware"},
        "dht22": {"backend": "hardware"},
        "bme280": {"backend": "hardware"},
        "influx": {
            "enabled": "yes",
            "url": credentials.url,
            "database": credentials.database,
            "username": credentials.username,
            "password": credentials.password,
            # the kit user may write its database but not create one
            "create_database": "no",
        },
        "console": {"enabled": "no"},
    }
    lines = template.splitlines()
    for section, keys in settings.items():
        for key, value in keys.items():
            lines = set_key(lines, section, key, value)
    return "\n".join(lines) + "\n"


def with_password(text: str, password: str) -> str:
    """``text`` (an agent.ini) with its ``[influx] password`` replaced, all else kept."""
    return "\n".join(set_key(text.splitlines(), "influx", "password", password)) + "\n"


def set_key(lines: list[str], section: str, key: str, value: str) -> list[str]:
    """``lines`` with ``key = value`` in ``[section]``: replacing the key, else its commented
    example, else added at the section's end. KeyError when the section is missing."""
    start = next((i for i, line in enumerate(lines) if line.strip() == f"[{section}]"), None)
    if start is None:
        raise KeyError(f"the template has no [{section}] section")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
        len(lines),
    )
    setting = f"{key} = {value}".rstrip()
    active = re.compile(rf"^\s*{re.escape(key)}\s*[=:]")
    example = re.compile(rf"^\s*[#;]\s*{re.escape(key)}\s*[=:]")
    for pattern in (active, example):
        for i in range(start + 1, end):
            if pattern.match(lines[i]):
                return lines[:i] + [setting] + lines[i + 1 :]
    last = end
    while last > start + 1 and not lines[last - 1].strip():
        last -= 1
    return lines[:last] + [setting] + lines[last:]
