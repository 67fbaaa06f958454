"""Where a delivery sends its batches: a sink per destination, three operations each.

A sink makes a target database ready (:meth:`ready`, and :meth:`create` when a write says
it is missing), writes a batch of line protocol (:meth:`write`) and closes. It never raises
for what a server or the network says: it returns a :class:`~agent.classify.Reply`, and
:func:`agent.classify.classify` decides what happens next. :meth:`twin` gives the same
destination on a connection of its own, for a second request in flight.

:class:`InfluxV1Sink` writes ``/write`` to one database per telegram (InfluxDB 1.x, and the
v1 API of 2.x and 3.x); :class:`InfluxV2Sink` writes ``/api/v2/write`` to one bucket
(InfluxDB 2.x, and 3.x Core/Enterprise). ``agent.outputs.influx_sink`` picks one from
``[influx] api``.
"""

from __future__ import annotations

import dataclasses
import gzip
import shlex
from typing import Protocol

from agent.classify import Reply
from agent.influx import InfluxClient, InfluxError, Response, quote_ident, seconds


class Sink(Protocol):
    url: str  # where it sends (no credentials), for messages and status
    user: str | None
    timeout: float  # the longest one request may take, in seconds
    may_create: bool  # whether a missing target may be created

    def ready(self, db: str) -> Reply: ...

    def create(self, db: str) -> Reply: ...

    def write(self, db: str, body: bytes) -> Reply: ...

    def twin(self) -> Sink: ...

    def close(self) -> None: ...


class InfluxV1Sink:
    """InfluxDB 1.x ``/write?precision=s`` (2.x and 3.x answer it too, as their v1 API)."""

    def __init__(self, client: InfluxClient, create_database: bool = True) -> None:
        self.client = client
        self.url = client.url
        self.user = client.username or None
        self.timeout = client.timeout
        self.may_create = create_database

    def ready(self, db: str) -> Reply:
        """Create ``db`` when it is missing and this sink may; else nothing to do here.

        A user without admin rights may neither list nor create databases, yet write to one
        an admin made: 403 here means "write anyway", said once.
        """
        if not self.may_create:
            return Reply(200)  # a 404 from the write will say when it is missing
        try:
            if db in self.client.databases():
                return Reply(200)
        except InfluxError as err:
            if err.status != 403:
                return _of(err)
        else:
            reply = self.create(db)
            if reply.status != 403:
                return reply
        return Reply(
            403,
            "forbidden",
            f"{self.client.who()} cannot list or create databases (403); writing to "
            f"{quote_ident(db)} anyway, which works when an admin created it and granted WRITE",
        )

    def create(self, db: str) -> Reply:
        try:
            self.client.create_database(db)
        except InfluxError as err:
            reply = _of(err)
            if err.status in (401, 403):
                return Reply(
                    err.status,
                    reply.message,
                    f"database {db!r} does not exist at {self.url} and {self.client.who()} may "
                    f"not create it; an admin must run CREATE DATABASE {quote_ident(db)} and "
                    "grant WRITE on it",
                )
            if err.status is not None and err.status < 500:
                return Reply(
                    400,
                    reply.message,
                    f"InfluxDB at {self.url} will not create database {db!r}: {reply.message}",
                )
            return reply
        return Reply(200, detail=f"created database {quote_ident(db)} at {self.url}")

    def write(self, db: str, body: bytes) -> Reply:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.client.compress:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            answer = self.client.request(
                "POST", "/write", {"db": db, "precision": "s"}, body, headers
            )
        except InfluxError as err:
            return _of(err)
        if answer.status == 204:
            return Reply(204)
        return Reply(
            answer.status,
            answer.server_message(),
            self._explain(answer, db),
            seconds(answer.headers.get("retry-after", "")),
        )

    def _explain(self, answer: Response, db: str) -> str:
        if answer.status == 404 and not self.may_create:
            return (
                f"database {db!r} does not exist at {self.url} and [influx] create_database "
                "is off; create it on the server"
            )
        return self.client.explain(answer, f"writing to database {db!r}", db)

    def twin(self) -> InfluxV1Sink:
        return InfluxV1Sink(self.client.twin(), self.may_create)

    def close(self) -> None:
        self.client.close()


class InfluxV2Sink:
    """InfluxDB 2.x ``/api/v2/write`` with an API token; 3.x Core and Enterprise answer it too.

    One bucket per output: every batch goes to ``bucket`` of ``org``, whatever database its
    telegrams name (the queue keeps that name, for ``status`` and the quarantine). A bucket
    is never created -- that takes a token with more rights than a kit should hold -- so a
    missing one holds the points with a message that says how to create it. Replies carry
    ``api="v2"`` for :func:`agent.classify.classify`.
    """

    may_create = False

    def __init__(self, client: InfluxClient, org: str, bucket: str) -> None:
        self.client = client
        self.org = org
        self.bucket = bucket
        self.url = client.url
        self.user = f"a token of org {org!r} (bucket {bucket!r})"  # never the token itself
        self.timeout = client.timeout

    def ready(self, db: str) -> Reply:
        """Nothing to make ready: the bucket exists or the write says it does not (404)."""
        return Reply(200, api="v2")

    def create(self, db: str) -> Reply:
        """Never called (``may_create`` is False); says why if it were."""
        return Reply(404, "bucket not found", self._missing(), api="v2")

    def write(self, db: str, body: bytes) -> Reply:
        """POST the batch to ``/api/v2/write?org=&bucket=&precision=s``; ``db`` is not used."""
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.client.compress:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        params = {"org": self.org, "bucket": self.bucket, "precision": "s"}
        try:
            answer = self.client.request("POST", "/api/v2/write", params, body, headers)
        except InfluxError as err:
            return dataclasses.replace(_of(err), api="v2")
        if answer.status == 204:
            return Reply(204, api="v2")
        return Reply(
            answer.status,
            answer.server_message(),
            self._explain(answer),
            seconds(answer.headers.get("retry-after", "")),
            api="v2",
        )

    def _where(self) -> str:
        return f"bucket {self.bucket!r} of org {self.org!r} at {self.url}"

    def _missing(self, said: str = "") -> str:
        """A missing bucket (or org): named, with the command that creates it."""
        answer = f" (404 {said})" if said else ""
        return (
            f"{self._where()} does not exist{answer}; the agent never creates buckets: "
            f"create it, e.g. influx bucket create -n {shlex.quote(self.bucket)} -o "
            f"{shlex.quote(self.org)} -r 90d"
        )

    def _explain(self, answer: Response) -> str:
        """What a refused write means, for a person: where, the server's words, what to do."""
        said = answer.server_message()
        if answer.status == 404:
            return self._missing(said)
        if answer.status == 401:
            return (
                f"InfluxDB refused the API token writing to {self._where()} (401 {said}); "
                "check [influx] token or token_file: a valid, active token of that org"
            )
        if answer.status == 403:
            return (
                f"the API token may not write to {self._where()} (403 {said}); give it write "
                f"permission, e.g. influx auth create -o {shlex.quote(self.org)} "
                "--write-bucket BUCKET_ID (influx bucket list shows the ID)"
            )
        return f"InfluxDB answered {answer.status} writing to {self._where()}: {said}"

    def twin(self) -> InfluxV2Sink:
        return InfluxV2Sink(self.client.twin(), self.org, self.bucket)

    def close(self) -> None:
        self.client.close()


def _of(err: InfluxError) -> Reply:
    """The reply an InfluxError stands for."""
    return Reply(err.status, err.server_message or str(err), str(err), err.retry_after)
