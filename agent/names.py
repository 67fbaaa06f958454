"""The names provisioning puts on a server: project, serial, user. One rule, refused early.

Project and serial follow the rule every part of sensorkit uses for a database name,
:func:`agent.lineprotocol.check_database_name` (InfluxDB's own, plus no space and no ``"``).
A name that passes can still hold ``;``, ``'`` or an InfluxQL keyword: those are quoted, not
refused (see ``agent.influx.quote_ident``).
"""

from __future__ import annotations

from agent.lineprotocol import check_database_name

NAME_RULE = (
    "printable text of at most 255 bytes, not empty, not '.' or '..', without '/', '\\', "
    "spaces or '\"'"
)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a kit's database part or user, or None when it can."""
    return check_database_name(name)


def user_problem(name: str) -> str | None:
    """Why ``name`` cannot be a kit's InfluxDB user, or None when it can.

    The agent logs in with HTTP Basic auth, whose ``user:password`` form cannot carry a
    ``:`` in the user name.
    """
    if ":" in name:
        return "holds ':', which HTTP Basic auth (how the agent logs in) cannot carry"
    return name_problem(name)
