"""``sensorkit provision``: a kit's database, user, grant, retention and means on InfluxDB 1.x.

For each kit, what should exist is compared with what the server shows (``SHOW ...``) and
only the difference is run, so a second run changes nothing and says so item by item:

- ``<project>_<serial>``: the raw data; its default retention policy keeps ``--keep``
  (``raw`` when created here; an existing database's default policy is altered in place, so
  data already there stays visible).
- ``<project>_<serial>_means``: hourly and daily means of every ``data`` field in a policy
  that keeps ``--keep-means``, written by two continuous queries on the raw database. A
  database of its own, so the kit's credentials (on an SD card, in a garden) cannot rewrite
  its long-term record, and analysts can be given the means without the raw data.
- the kit user (``<project>_<serial>`` unless ``--user``) with a generated password and WRITE
  on the raw database only. An existing user's password is left alone unless
  ``--rotate-password``.

Every name is checked (agent/names.py: the rule of agent/lineprotocol.py) and quoted;
passwords travel as InfluxQL literals in a POST body, are masked in ``--dry-run`` and never
appear in a message.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

from agent.config import ConfigError, Settings, load
from agent.influx import InfluxClient, InfluxError, quote_ident, quote_literal, run_statement
from agent.influxql import Duration, go_duration, parse_duration, same_statement
from agent.kitini import SHIPPED, KitCredentials, render, with_password
from agent.kitsfile import Kit, KitsError, kit_problems, read_kits
from agent.names import NAME_RULE, user_problem

RAW_RP = "raw"
MEANS_RP = "means"
LATE = Duration(7 * 86400)  # RESAMPLE FOR: points up to a week late (a drained queue) count
MEANS_SHARD = Duration(52 * 7 * 86400)  # a year of hourly means per shard, not 7 days
MASK = "********"
ENV_PASSWORD = "SENSORKIT_ADMIN_PASSWORD"
q = quote_ident
T = TypeVar("T")


class ProvisionError(Exception):
    """Provisioning cannot go on. ``code``: 2 bad usage or input, 1 the server or the disk."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class KitProblem(Exception):
    """This kit cannot be provisioned as asked; nothing is run for it, the others go on."""


@dataclass(frozen=True)
class Means:
    """One continuous query: means over ``interval`` into the means measurement."""

    name: str
    measurement: str
    interval: str
    seconds: int


MEANS = (Means("means_1h", "data_1h", "1h", 3600), Means("means_1d", "data_1d", "1d", 86400))


@dataclass(frozen=True)
class Request:
    """What the coordinator asked for, checked."""

    url: str
    admin_user: str
    keep: Duration
    keep_means: Duration
    user: str = ""  # "" = each kit's database name
    rotate_password: bool = False
    dry_run: bool = False
    password_file: Path | None = None  # one kit: where its password goes
    out_dir: Path | None = None  # --kits: one <database>/agent.ini each
    template: str = field(default="", repr=False)  # the agent.ini text to start from
    timeout: float = 30.0
    ca_file: str = ""  # for provision's own HTTPS connection

    def user_of(self, kit: Kit) -> str:
        return self.user or kit.database


@dataclass(frozen=True)
class Action:
    """One step: InfluxQL to run (``shown`` masked), or a private file to write."""

    shown: str
    statement: str = field(default="", repr=False)
    doing: str = ""
    path: Path | None = None
    content: str = field(default="", repr=False)


@dataclass(frozen=True)
class Item:
    """One thing on the server (or disk) and how it stands; ``actions`` make it so."""

    what: str
    state: str
    changed: bool = False
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True)
class KitPlan:
    kit: Kit
    user: str
    items: tuple[Item, ...]
    warnings: tuple[str, ...] = ()
    shown_password: str | None = field(default=None, repr=False)  # new and kept nowhere

    @property
    def changes(self) -> int:
        return sum(item.changed for item in self.items)


@dataclass(frozen=True)
class Policy:
    """A retention policy as SHOW RETENTION POLICIES gives it."""

    duration: Duration
    shard: Duration
    default: bool


# -- the server --------------------------------------------------------------------------


class Server:
    """The admin's view of one server: SHOW results read once (again after any change),
    statements run, and every message cleaned of the passwords it must never show."""

    def __init__(self, client: InfluxClient, hidden: list[str], ca_file: str = "") -> None:
        self.client = client
        self.ca_file = ca_file
        self.hidden = hidden
        self._cache: dict[str, object] = {}

    def run(self, statement: str, doing: str) -> list[dict]:
        """Run a statement that changes something; forget what was read."""
        self._cache.clear()
        return self._query(statement, doing)

    def rows(self, statement: str, doing: str) -> list[dict]:
        """The rows of a SHOW or SELECT as dicts, ``_series`` naming the series of each."""
        rows = []
        for result in self._query(statement, doing):
            for series in result.get("series", []):
                for values in series.get("values", []):
                    row = dict(zip(series["columns"], values, strict=True))
                    row["_series"] = series.get("name", "")
                    rows.append(row)
        return rows

    def databases(self) -> set[str]:
        return self._cached(
            "dbs", lambda: {r["name"] for r in self.rows("SHOW DATABASES", "listing databases")}
        )

    def users(self) -> dict[str, bool]:
        """User name -> is an admin."""
        return self._cached(
            "users",
            lambda: {r["user"]: bool(r["admin"]) for r in self.rows("SHOW USERS", "listing users")},
        )

    def policies(self, database: str) -> dict[str, Policy]:
        def read() -> dict[str, Policy]:
            rows = self.rows(
                f"SHOW RETENTION POLICIES ON {q(database)}",
                f"listing the retention policies of {database!r}",
            )
            return {
                r["name"]: Policy(
                    go_duration(r["duration"]),
                    go_duration(r["shardGroupDuration"]),
                    bool(r["default"]),
                )
                for r in rows
            }

        return self._cached(f"rp {database}", read)

    def grants(self, user: str) -> dict[str, str]:
        """Database -> privilege (``WRITE``, ``READ``, ``ALL PRIVILEGES``, ``NO PRIVILEGES``)."""
        return self._cached(
            f"grants {user}",
            lambda: {
                r["database"]: r["privilege"]
                for r in self.rows(
                    f"SHOW GRANTS FOR {q(user)}", f"listing the grants of user {user!r}"
                )
            },
        )

    def continuous_queries(self, database: str) -> dict[str, str]:
        """CQ name -> its text as the server shows it, for the CQs on ``database``."""
        rows = self._cached(
            "cqs", lambda: self.rows("SHOW CONTINUOUS QUERIES", "listing continuous queries")
        )
        return {r["name"]: r["query"] for r in rows if r["_series"] == database}

    def first_point(self, database: str, policy: str) -> int | None:
        """The time of the oldest ``data`` point in ``database``, or None when there is none."""
        rows = self.rows(
            f'SELECT * FROM {q(database)}.{q(policy)}."data" ORDER BY time ASC LIMIT 1',
            f"finding the oldest point in {database!r}",
        )
        return int(rows[0]["time"]) if rows else None

    def login_works(self, user: str, password: str) -> bool:
        """Whether the server takes ``password`` for ``user`` (a read-only query as them)."""
        client = InfluxClient(
            self.client.url, user, password, self.client.timeout, ca_file=self.ca_file
        )
        try:
            run_statement(client, "SHOW DATABASES", f"logging in as {user!r}")
        except InfluxError as err:
            if err.status == 401:
                return False
            raise ProvisionError(self._clean(str(err))) from None
        finally:
            client.close()
        return True

    def close(self) -> None:
        self.client.close()

    def _query(self, statement: str, doing: str) -> list[dict]:
        try:
            return run_statement(self.client, statement, doing)
        except InfluxError as err:
            raise ProvisionError(self._clean(str(err))) from None

    def _cached(self, key: str, read: Callable[[], T]) -> T:
        if key not in self._cache:
            self._cache[key] = read()
        return self._cache[key]

    def _clean(self, message: str) -> str:
        for secret in self.hidden:
            if secret:
                message = message.replace(secret, MASK)
        return message


def connect(request: Request, admin_password: str, warn: Callable[[str], None]) -> Server:
    """The server as the admin, after one query that tells apart every way it can fail."""
    client = InfluxClient(
        request.url, request.admin_user, admin_password, request.timeout, ca_file=request.ca_file
    )
    admin = request.admin_user
    try:
        run_statement(client, "SHOW USERS", "listing users")
    except InfluxError as err:
        client.close()
        if err.status is None:
            message = str(err).replace(
                "set [influx] ca_file, or tls_verify = no to turn checking off",
                "pass --ca-file with the certificate of the CA that signed the server's",
            )
            raise ProvisionError(f"{message}; check --url") from None
        if err.status == 401:
            raise ProvisionError(
                f"InfluxDB at {request.url} refused admin user {admin!r} (401 "
                f"{err.server_message}): check --admin-user and the password "
                f"(${ENV_PASSWORD} or the prompt)"
            ) from None
        if err.status == 403:
            raise ProvisionError(
                f"user {admin!r} at {request.url} is not an admin (403 {err.server_message}); "
                "provisioning creates databases and users, which needs one: pass "
                "--admin-user with an admin's name"
            ) from None
        raise ProvisionError(str(err).replace(admin_password, MASK)) from None
    anonymous = InfluxClient(request.url, timeout=request.timeout, ca_file=request.ca_file)
    try:
        run_statement(anonymous, "SHOW DATABASES", "listing databases without a user")
        warn(
            f"InfluxDB at {request.url} does not check passwords ([http] auth-enabled = "
            "false): anyone can read and write every database there. The users and grants "
            "made here take effect once auth is enabled."
        )
    except InfluxError:
        pass  # 401: auth is on, as it should be
    finally:
        anonymous.close()
    return Server(client, [admin_password], request.ca_file)


# -- planning ----------------------------------------------------------------------------


def plan_database(
    server: Server,
    database: str,
    policy: str,
    keep: Duration,
    shard: Duration | None,
    label: str,
) -> tuple[str, list[Item], bool]:
    """Items for ``database`` and its default retention policy: (policy name, items, existed)."""
    shard_text = f" SHARD DURATION {shard.influxql()}" if shard else ""
    if database not in server.databases():
        statement = (
            f"CREATE DATABASE {q(database)} WITH DURATION {keep.influxql()}{shard_text} "
            f"NAME {q(policy)}"
        )
        return (
            policy,
            [
                Item(
                    f"{label} {q(database)}",
                    "created",
                    True,
                    (Action(statement, statement, f"creating database {database!r}"),),
                ),
                Item(
                    f"retention policy {q(policy)} on {q(database)}",
                    f"created with it: keeps {keep}, default",
                    True,
                ),
            ],
            False,
        )
    policies = server.policies(database)
    items = [Item(f"{label} {q(database)}", "exists")]
    default = next((name for name, p in policies.items() if p.default), None)
    if default is None:
        verb = "ALTER" if policy in policies else "CREATE"
        statement = (
            f"{verb} RETENTION POLICY {q(policy)} ON {q(database)} DURATION {keep.influxql()} "
            f"REPLICATION 1{shard_text} DEFAULT"
        )
        items.append(
            Item(
                f"retention policy {q(policy)} on {q(database)}",
                f"{'altered' if verb == 'ALTER' else 'created'}: keeps {keep}, default (the "
                "database had no default policy)",
                True,
                (Action(statement, statement, f"setting the retention of {database!r}"),),
            )
        )
        return policy, items, True
    have = policies[default]
    wrong = []
    if have.duration != keep:
        wrong.append(f"kept {have.duration}, now {keep}")
    if shard and have.shard != shard:
        wrong.append(f"shard groups of {have.shard.influxql()}, now {shard.influxql()}")
    what = f"retention policy {q(default)} on {q(database)} (default)"
    if not wrong:
        items.append(Item(what, f"present: keeps {keep}"))
        return default, items, True
    statement = (
        f"ALTER RETENTION POLICY {q(default)} ON {q(database)} DURATION {keep.influxql()}"
        f"{shard_text}"
    )
    items.append(
        Item(
            what,
            "altered: " + "; ".join(wrong),
            True,
            (Action(statement, statement, f"setting the retention of {database!r}"),),
        )
    )
    return default, items, True


@dataclass(frozen=True)
class Keeper:
    """Where a kit's password is kept: its agent.ini (--kits), a password file, or nowhere
    (printed once). ``stored`` is the password already there."""

    path: Path | None
    kind: str
    stored: str | None = field(default=None, repr=False)
    settings: Settings | None = None
    text: str = field(default="", repr=False)


def keeper_for(request: Request, kit: Kit) -> Keeper:
    if request.out_dir is not None:
        path = request.out_dir / kit.database / "agent.ini"
        if not path.exists():
            return Keeper(path, "agent.ini")
        try:
            settings = load(path)
            text = path.read_text(encoding="utf-8")
        except (ConfigError, OSError, UnicodeDecodeError) as err:
            raise KitProblem(
                f"{path} exists but cannot be used ({err}); fix or delete it"
            ) from None
        return Keeper(path, "agent.ini", settings.influx.password, settings, text)
    if request.password_file is not None:
        path = request.password_file
        if not path.exists():
            return Keeper(path, "password file")
        try:
            stored = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ProvisionError(f"--password-file {path}: cannot read it: {err}", 2) from None
        return Keeper(path, "password file", stored)
    return Keeper(None, "")


def new_password() -> str:
    """32 random URL-safe characters (192 bits): safe in agent.ini and InfluxQL alike."""
    import secrets  # here only: via hmac it loads OpenSSL (some 3.7 MB of RSS)

    return secrets.token_urlsafe(24)


def plan_user(
    server: Server, request: Request, kit: Kit, keeper: Keeper
) -> tuple[list[Item], str | None]:
    """Items for the kit user and the file keeping its password: (items, new password)."""
    user = request.user_of(kit)
    users = server.users()
    where = str(keeper.path) if keeper.path else ""
    if users.get(user):
        raise KitProblem(
            f"user {user!r} is an admin; a kit's credentials sit on its SD card, so it gets a "
            "user of its own: pass --user with another name"
        )
    if user not in users:
        password = keeper.stored or new_password()
        statement = f"CREATE USER {q(user)} WITH PASSWORD {quote_literal(password)}"
        shown = f"CREATE USER {q(user)} WITH PASSWORD '{MASK}'"
        if keeper.stored:
            state = f"created with the password already in {where}"
        elif keeper.path:
            state = f"created; its password is in {where}"
        else:
            state = "created; its password is printed below, this once"
        items = _password_file_items(request, kit, keeper, password, rotated=False)
        items.append(
            Item(
                f"user {q(user)}",
                state,
                True,
                (Action(shown, statement, f"creating user {user!r}"),),
            )
        )
        return items, password
    if request.rotate_password:
        password = new_password()
        statement = f"SET PASSWORD FOR {q(user)} = {quote_literal(password)}"
        shown = f"SET PASSWORD FOR {q(user)} = '{MASK}'"
        items = _password_file_items(request, kit, keeper, password, rotated=True)
        note = f"written to {where}" if keeper.path else "printed below, this once"
        items.append(
            Item(
                f"user {q(user)}",
                f"password replaced (--rotate-password); {note}",
                True,
                (Action(shown, statement, f"setting the password of {user!r}"),),
            )
        )
        return items, password
    if keeper.stored is not None:
        if not server.login_works(user, keeper.stored):
            raise KitProblem(
                f"user {user!r} exists but refuses the password in {where}: pass "
                "--rotate-password to set a new one there (then copy it to the kit again)"
            )
        return [
            Item(f"{keeper.kind} {where}", "kept"),
            Item(f"user {q(user)}", f"exists; the password in {where} works"),
        ], None
    if keeper.path is not None:
        raise KitProblem(
            f"user {user!r} exists and its password is not known here ({where} does not "
            "exist): pass --rotate-password to set a new one and write it there"
        )
    return [
        Item(f"user {q(user)}", "exists; password unchanged (--rotate-password sets a new one)")
    ], None


def _password_file_items(
    request: Request, kit: Kit, keeper: Keeper, password: str, rotated: bool
) -> list[Item]:
    """The item that writes ``password`` where the kit keeps it (before the server has it,
    so a failed write changes nothing there and a failed statement can be run again)."""
    if keeper.path is None or (keeper.stored is not None and not rotated):
        return [Item(f"{keeper.kind} {keeper.path}", "kept")] if keeper.path else []
    if keeper.kind == "agent.ini":
        if keeper.stored is not None or keeper.text:
            content = with_password(keeper.text, password)
            state = "password replaced, all else kept"
        else:
            content = kit_ini(request, kit, password)
            state = "written (mode 0600)"
    else:
        content, state = password + "\n", "written (mode 0600)"
    shown = f"write {keeper.path} (mode 0600)"
    return [
        Item(
            f"{keeper.kind} {keeper.path}",
            state,
            True,
            (Action(shown, path=keeper.path, content=content),),
        )
    ]


def kit_ini(request: Request, kit: Kit, password: str) -> str:
    """The kit's agent.ini from the template, loaded once as the agent would to be sure."""
    credentials = KitCredentials(request.url, kit.database, request.user_of(kit), password)
    try:
        content = render(request.template, kit, credentials)
    except KeyError as err:
        raise ProvisionError(f"--template: {err.args[0]}; pass the shipped agent.ini", 2) from None
    check_ini(content, kit)
    return content


def check_ini(content: str, kit: Kit) -> None:
    """Load a rendered agent.ini as the agent would: a refusal is a template problem (exit 2)."""
    with tempfile.TemporaryDirectory(prefix="sensorkit-provision-") as folder:
        path = Path(folder) / "agent.ini"
        write_private(path, content)
        try:
            load(path)
        except ConfigError as err:
            message = str(err).replace(str(path), "the agent.ini made from the template")
            raise ProvisionError(f"{kit.where}: {message}", 2) from None


def plan_grant(server: Server, request: Request, kit: Kit) -> tuple[Item, list[str]]:
    """The WRITE grant on the raw database, and warnings for any other privilege the user has."""
    user, database = request.user_of(kit), kit.database
    grants = server.grants(user) if user in server.users() else {}
    have = grants.get(database, "NO PRIVILEGES")
    what = f"grant WRITE on {q(database)} to {q(user)}"
    warnings = [
        f"user {user!r} also has {privilege} on {name!r}; left as it is (REVOKE {privilege} "
        f"ON {q(name)} FROM {q(user)} if the kit should not)"
        for name, privilege in sorted(grants.items())
        if name != database and privilege != "NO PRIVILEGES"
    ]
    if have == "WRITE":
        return Item(what, "present"), warnings
    statement = f"GRANT WRITE ON {q(database)} TO {q(user)}"
    state = "granted" + ("" if have == "NO PRIVILEGES" else f" (it had {have}: now WRITE only)")
    return Item(
        what,
        state,
        True,
        (Action(statement, statement, f"granting {user!r} WRITE on {database!r}"),),
    ), warnings


def means_select(m: Means, kit: Kit, raw_rp: str, means_rp: str, where: str = "") -> str:
    """The SELECT of a means query; ``where`` bounds it when it is run by hand (backfill)."""
    return (
        f"SELECT mean(*) INTO {q(kit.means_database)}.{q(means_rp)}.{q(m.measurement)} "
        f'FROM {q(kit.database)}.{q(raw_rp)}."data"{where} '
        f'GROUP BY time({m.interval}), "label", "geolocation"'
    )


def means_query(m: Means, kit: Kit, raw_rp: str, means_rp: str) -> str:
    """The continuous query: every interval, the means of the last week's intervals again."""
    return (
        f"CREATE CONTINUOUS QUERY {q(m.name)} ON {q(kit.database)} RESAMPLE EVERY {m.interval} "
        f"FOR {LATE.influxql()} BEGIN {means_select(m, kit, raw_rp, means_rp)} END"
    )


def plan_means(
    server: Server, kit: Kit, raw_rp: str, means_rp: str, existed: bool, now: int
) -> list[Item]:
    """Items for the two continuous queries, and a backfill of the data already there."""
    have = server.continuous_queries(kit.database) if existed else {}
    items = []
    made = False
    for m in MEANS:
        text = means_query(m, kit, raw_rp, means_rp)
        what = f"continuous query {q(m.name)} on {q(kit.database)}"
        create = Action(text, text, f"creating continuous query {m.name!r}")
        if m.name not in have:
            items.append(
                Item(
                    what,
                    f"created: {m.interval} means into {q(kit.means_database)}",
                    True,
                    (create,),
                )
            )
            made = True
        elif same_statement(have[m.name], text):
            items.append(Item(what, "present, same text"))
        else:
            drop = f"DROP CONTINUOUS QUERY {q(m.name)} ON {q(kit.database)}"
            items.append(
                Item(
                    what,
                    "replaced: its text differed",
                    True,
                    (Action(drop, drop, f"dropping continuous query {m.name!r}"), create),
                )
            )
            made = True
    first = server.first_point(kit.database, raw_rp) if made and existed else None
    if first is not None:
        actions = []
        for m in MEANS:
            start, end = first - first % m.seconds, now - now % m.seconds
            if end > start:
                text = means_select(
                    m, kit, raw_rp, means_rp, f" WHERE time >= {start}s AND time < {end}s"
                )
                actions.append(
                    Action(text, text, f"averaging the data already in {kit.database!r}")
                )
        if actions:
            day = time.strftime("%Y-%m-%d", time.gmtime(first))
            items.append(
                Item(
                    f"means of the data already in {q(kit.database)}",
                    f"computed from {day} on",
                    True,
                    tuple(actions),
                )
            )
    return items


def plan_kit(server: Server, request: Request, kit: Kit, now: int) -> KitPlan:
    """Everything one kit needs, as items in the order they are made."""
    raw_rp, items, existed = plan_database(
        server, kit.database, RAW_RP, request.keep, None, "database"
    )
    long = request.keep_means.seconds
    shard = MEANS_SHARD if long == 0 or long > MEANS_SHARD.seconds else None
    means_rp, means_items, _ = plan_database(
        server, kit.means_database, MEANS_RP, request.keep_means, shard, "means database"
    )
    items += means_items
    keeper = keeper_for(request, kit)
    user_items, password = plan_user(server, request, kit, keeper)
    items += user_items
    grant, warnings = plan_grant(server, request, kit)
    items.append(grant)
    items += plan_means(server, kit, raw_rp, means_rp, existed, now)
    warnings += _stale_ini_warnings(request, kit, keeper)
    if password:
        server.hidden.append(password)
    shown = password if password and keeper.path is None else None
    return KitPlan(kit, request.user_of(kit), tuple(items), tuple(warnings), shown)


def _stale_ini_warnings(request: Request, kit: Kit, keeper: Keeper) -> list[str]:
    """An agent.ini kept from an earlier run that no longer says what the kits file says."""
    s = keeper.settings
    if s is None:
        return []
    differ = [
        (key, have, want)
        for key, have, want in (
            ("[kit] label", s.kit.label, kit.label),
            (
                "[kit] geolocation",
                s.kit.geolocation,
                ",".join(p.strip() for p in kit.geolocation.split(",")) if kit.geolocation else "",
            ),
            ("[influx] url", s.influx.url, request.url),
            ("[influx] username", s.influx.username, request.user_of(kit)),
        )
        if have != want
    ]
    return [
        f"{keeper.path} is kept as it is, but its {key} is {have!r}, not {want!r}; delete the "
        "file to have it written again"
        for key, have, want in differ
    ]


# -- doing it ----------------------------------------------------------------------------


def write_private(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` readable by its owner only (0600), atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def provision(
    request: Request,
    kits: list[Kit],
    admin_password: str,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Provision every kit (or, with ``dry_run``, print what would be run); the exit code."""

    def warn(message: str) -> None:
        print(f"sensorkit provision: warning: {message}", file=err)

    server = connect(request, admin_password, warn)
    now = int(time.time())
    dry = request.dry_run
    failed = changed = 0
    print(
        f"{'dry run, nothing is changed: ' if dry else ''}{len(kits)} kit"
        f"{'s' if len(kits) != 1 else ''} at {request.url}",
        file=out,
    )
    try:
        for kit in kits:
            name = kit.database
            try:
                plan = plan_kit(server, request, kit, now)
            except KitProblem as problem:
                print(f"sensorkit provision: {name} ({kit.where}): {problem}", file=err)
                failed += 1
                continue
            for warning in plan.warnings:
                warn(f"{name}: {warning}")
            for item in plan.items:
                if dry:
                    state = f"would be {item.state}" if item.changed else item.state
                    print(f"{name}: {item.what}: {state}", file=out)
                    for action in item.actions:
                        print(f"    {action.shown}", file=out)
                    continue
                for action in item.actions:
                    _apply(server, action)
                print(f"{name}: {item.what}: {item.state}", file=out)
            changed += bool(plan.changes)
            summary = (
                "nothing to change"
                if not plan.changes
                else f"{plan.changes} change{'s' if plan.changes > 1 else ''}"
                + (" to make" if dry else "")
            )
            print(f"{name}: {summary}", file=out)
            if not dry and request.out_dir is None:
                print(snippet(request, kit, plan.shown_password), file=out)
    finally:
        server.close()
    if len(kits) > 1:
        print(
            f"{len(kits)} kits: {changed} {'to change' if dry else 'changed'}, "
            f"{len(kits) - changed - failed} already as asked, {failed} failed",
            file=out,
        )
    return 1 if failed else 0


def _apply(server: Server, action: Action) -> None:
    if action.path is None:
        server.run(action.statement, action.doing)
        return
    try:
        write_private(action.path, action.content)
    except OSError as error:
        raise ProvisionError(
            f"cannot write {action.path}: {error.strerror}; nothing more was changed on the "
            "server for this kit: fix it and run provision again"
        ) from None


def snippet(request: Request, kit: Kit, password: str | None) -> str:
    """The kit's ``[kit]`` and ``[influx]`` settings to paste into its agent.ini."""
    lines = [
        "",
        "# for the kit's agent.ini:",
        "[kit]",
        f"project = {kit.project}",
        f"serial = {kit.serial}",
    ]
    lines += [
        f"{key} = {value}"
        for key, value in (("label", kit.label), ("geolocation", kit.geolocation))
        if value
    ]
    lines += [
        "[influx]",
        f"url = {request.url}",
        f"database = {kit.database}",
        f"username = {request.user_of(kit)}",
    ]
    if password:
        lines += [f"password = {password}", "# the password is shown only this once"]
    elif request.password_file:
        lines += [
            f"password_file = {request.password_file.resolve()}",
            "# copy that file to the kit and point password_file at it",
        ]
    else:
        lines.append("# password: unchanged, not shown (--rotate-password sets a new one)")
    lines.append("create_database = no")
    return "\n".join(lines)


# -- the command line --------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sensorkit provision`` options."""
    p.add_argument("--url", required=True, help="the InfluxDB 1.x server, http(s)://host:port")
    p.add_argument("--project", help="the kit's project code (with --serial: one kit)")
    p.add_argument("--serial", help="the kit's serial")
    p.add_argument("--label", default="", help="the kit's label (for the printed settings)")
    p.add_argument("--geolocation", default="", help="lat,lon[,alt] (for the printed settings)")
    p.add_argument(
        "--kits",
        metavar="FILE",
        help="CSV with a header row project,serial,label,geolocation: provision every kit "
        "and write OUT/<project>_<serial>/agent.ini for each",
    )
    p.add_argument(
        "--out",
        default="kits",
        metavar="DIR",
        help="where --kits writes the agent.ini files (default ./kits)",
    )
    p.add_argument(
        "--template", metavar="FILE", help="agent.ini to start from (default: the shipped one)"
    )
    p.add_argument("--user", default="", help="the kit user (default <project>_<serial>)")
    p.add_argument(
        "--admin-user",
        default="admin",
        help=f"an admin user (default admin); its password from ${ENV_PASSWORD} "
        "or a prompt, never an option",
    )
    p.add_argument(
        "--keep", default="90d", help="how long raw data is kept (default 90d; h, d, w, y or inf)"
    )
    p.add_argument(
        "--keep-means",
        default="10y",
        help="how long the hourly and daily means are kept (default 10y)",
    )
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="write the kit's password here (mode 0600) instead of printing it",
    )
    p.add_argument(
        "--rotate-password", action="store_true", help="give an existing kit user a new password"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the InfluxQL that would run (passwords masked); change nothing",
    )
    p.add_argument(
        "--ca-file",
        default="",
        metavar="FILE",
        help="CA certificate to check an https:// server with (for this command; a kit's "
        "agent.ini has its own [influx] ca_file)",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each answer (default 30)"
    )


def request_from(args: argparse.Namespace) -> tuple[Request, list[Kit]]:
    """The checked request and kits; ProvisionError(code 2) naming the bad option."""
    try:
        InfluxClient(args.url).close()
    except ValueError as err:
        raise ProvisionError(f"--url {args.url!r}: {err}", 2) from None
    durations = {}
    for option in ("keep", "keep_means"):
        try:
            durations[option] = parse_duration(getattr(args, option))
        except ValueError as err:
            raise ProvisionError(f"--{option.replace('_', '-')}: {err}", 2) from None
    if args.user and user_problem(args.user):
        raise ProvisionError(
            f"--user {args.user!r} {user_problem(args.user)}; allowed: {NAME_RULE}, and no ':'", 2
        )
    if args.kits:
        single = [
            o
            for o in ("project", "serial", "label", "geolocation", "user", "password_file")
            if getattr(args, o)
        ]
        if single:
            raise ProvisionError(
                f"--kits takes every kit from the file; leave out --"
                f"{', --'.join(o.replace('_', '-') for o in single)} (each kit gets its own "
                "user <project>_<serial> and its password in its agent.ini)",
                2,
            )
        try:
            kits = read_kits(Path(args.kits))
        except KitsError as err:
            raise ProvisionError(str(err), 2) from None
        template_path = Path(args.template) if args.template else SHIPPED
        try:
            template = template_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ProvisionError(
                f"--template {template_path}: cannot read it ({err}); pass the agent.ini "
                "of a sensorkit checkout",
                2,
            ) from None
        out_dir, password_file = Path(args.out), None
    else:
        if not args.project or not args.serial:
            raise ProvisionError("give --project and --serial (one kit), or --kits FILE", 2)
        kit = Kit(args.project, args.serial, args.label, args.geolocation, "--project/--serial")
        problems = kit_problems(kit)
        if problems:
            raise ProvisionError("; ".join(f"--{p}" for p in problems), 2)
        kits, template, out_dir = [kit], "", None
        password_file = Path(args.password_file) if args.password_file else None
    for kit in kits:
        problem = user_problem(args.user or kit.database)
        if problem:
            raise ProvisionError(
                f"{kit.where}: the kit user {kit.database!r} {problem}; pass --user", 2
            )
    request = Request(
        url=args.url,
        admin_user=args.admin_user,
        keep=durations["keep"],
        keep_means=durations["keep_means"],
        user=args.user,
        rotate_password=args.rotate_password,
        dry_run=args.dry_run,
        password_file=password_file,
        out_dir=out_dir,
        template=template,
        timeout=args.timeout,
        ca_file=args.ca_file,
    )
    if request.out_dir is not None:  # a template the agent would refuse: say so before anything
        kit_ini(request, kits[0], MASK)
    return request, kits


def admin_password(admin: str, url: str) -> str:
    """From $SENSORKIT_ADMIN_PASSWORD, else asked without echo; never from an option."""
    password = os.environ.get(ENV_PASSWORD)
    if password is None:
        try:
            password = getpass.getpass(f"password of InfluxDB admin {admin!r} at {url}: ")
        except (EOFError, KeyboardInterrupt):
            password = ""
    if not password:
        raise ProvisionError(
            f"no password for admin {admin!r}: type it at the prompt or set ${ENV_PASSWORD}", 2
        )
    return password


def main(args: argparse.Namespace) -> int:
    """``sensorkit provision``: the exit code (0 ok, 2 bad usage or input, 1 failures)."""
    try:
        request, kits = request_from(args)
        password = admin_password(request.admin_user, request.url)
        return provision(request, kits, password)
    except ProvisionError as err:
        print(f"sensorkit provision: {err}", file=sys.stderr)
        return err.code
