"""The names provisioning puts on a server: project, serial, user. One rule, refused early.

InfluxDB 1.x refuses a database name unless ``meta.ValidName`` holds: not empty, not ``.``
or ``..``, every rune printable, no ``/`` or ``\\``. The project adds: no space and no ``"``
(the same rule as ``[kit] project`` in agent/config.py and the ident check in
agent/telegram.py; a shared validator is being written there and should replace this one).
A name that passes can still hold ``;``, ``'`` or an InfluxQL keyword: those are quoted, not
refused (see ``agent.influx.quote_ident``).
"""

from __future__ import annotations

NAME_RULE = "printable text, not empty, not '.' or '..', without '/', '\\', spaces or '\"'"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a kit's database part or user, or None when it can."""
    if name == "":
        return "is empty"
    if name in (".", ".."):
        return f"is {name!r}, which InfluxDB refuses as a name"
    for char in name:
        if char in "/\\":
            return f"holds {char!r}, which InfluxDB refuses in a database name"
        if char == " ":
            return "holds a space, which the project does not allow in names"
        if char == '"':
            return "holds '\"', which the project does not allow in names"
        if not char.isprintable():
            return f"holds the non-printable character U+{ord(char):04X}"
    return None


def user_problem(name: str) -> str | None:
    """Why ``name`` cannot be a kit's InfluxDB user, or None when it can.

    The agent logs in with HTTP Basic auth, whose ``user:password`` form cannot carry a
    ``:`` in the user name.
    """
    if ":" in name:
        return "holds ':', which HTTP Basic auth (how the agent logs in) cannot carry"
    return name_problem(name)
