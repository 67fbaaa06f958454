"""Where a delivery sends its batches: a sink per destination, three operations each.

A sink makes a target database ready (:meth:`ready`, and :meth:`create` when a write says
it is missing), writes a batch of line protocol (:meth:`write`) and closes. It never raises
for what a server or the network says: it returns a :class:`~agent.classify.Reply`, and
:func:`agent.classify.classify` decides what happens next. :meth:`twin` gives the same
destination on a connection of its own, for a second request in flight.
"""

from __future__ import annotations

import gzip
from typing import Protocol

from agent.classify import Reply
from agent.influx import InfluxClient, InfluxError, Response, quote_ident, seconds


class Sink(Protocol):
    url: str  # where it sends (no credentials), for messages and status
    user: str | None
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


def _of(err: InfluxError) -> Reply:
    """The reply an InfluxError stands for."""
    return Reply(err.status, err.server_message or str(err), str(err), err.retry_after)
