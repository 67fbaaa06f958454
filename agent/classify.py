"""Server and network replies, classified once: the table of delivery rules as code.

Every caller -- the sender, ``sensorkit publish``, ``sensorkit quarantine resend`` -- asks
:func:`classify` what a reply means and acts on the verdict; none reads status codes itself.

=======================================  ===========================================
reply to a write                          verdict
=======================================  ===========================================
204                                       DELIVERED: settle the batch
no complete answer, timeout, 5xx, 429     RETRY: keep; back off (capped, jittered;
                                          Retry-After honoured)
404 database not found (v1)               CREATE the database when allowed, else HOLD
404 bucket or org not found (v2)          HOLD: keep; never created: a person must
                                          create the bucket
401                                       RETRY_SLOWLY: keep everything; say so once
403                                       HOLD this database (the user lacks a grant);
                                          other databases go on
413 request too large                     SPLIT the batch; one point: QUARANTINE
400 bad line, field type conflict,        SPLIT the batch down to the points refused;
422 unprocessable (v2)                    one point: QUARANTINE with the server's words
any other reply                           RETRY_SLOWLY
=======================================  ===========================================

Making a database ready (listing, creating) is classified too: success is READY; 401 and
403 are READY as well (the write that follows says what is wrong, once, clearly); a name
the server will never accept is QUARANTINE (its points can never be delivered, so they must
not hold back the others); no answer or 5xx is RETRY.

Reading (the subscriber's ``/query``, :func:`classify_read`): 200 is DELIVERED (the rows
came); no complete answer, a timeout, 5xx or 429 is RETRY (back off, the cursor stays); 401
is RETRY_SLOWLY (a person must fix the credentials: said once); 403 is HOLD (no READ grant on
that database: it waits, the others go on); a database that is not there (any more) is SKIP;
any other refusal is RETRY_SLOWLY.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    READY = "ready"  # the target database exists, or writing may go ahead
    RETRY = "retry"  # an outage: back off and try again
    RETRY_SLOWLY = "retry slowly"  # a person must fix something: retry rarely
    HOLD = "hold"  # this target only, slowly; other targets go on
    CREATE = "create"  # create the target, then write again
    SPLIT = "split"  # send the halves
    QUARANTINE = "quarantine"  # refused for good: keep aside with the reason
    SKIP = "skip"  # reading: the database is not there (any more); say so and go on


@dataclass(frozen=True)
class Reply:
    """What one request got: an HTTP status (None: no complete answer) and the words."""

    status: int | None
    message: str = ""  # the server's own words (or the network error)
    detail: str = ""  # what happened and what to do, for logs and status (never a password)
    retry_after: float | None = None  # seconds the server asked to wait (429, 503)
    api: str = "v1"

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def __str__(self) -> str:
        return self.detail or self.message or f"HTTP {self.status}"


def classify(reply: Reply, points: int = 1, may_create: bool = False) -> Verdict:
    """The verdict on a reply to a write of ``points`` points (see the module's table)."""
    status = reply.status
    if status == 204:
        return Verdict.DELIVERED
    if status is None or status >= 500 or status == 429:
        return Verdict.RETRY
    if status == 404:
        missing_db = reply.api == "v1" and "database not found" in reply.message
        return Verdict.CREATE if missing_db and may_create else Verdict.HOLD
    if status == 401:
        return Verdict.RETRY_SLOWLY
    if status == 403:
        return Verdict.HOLD
    if status in (400, 413, 422):
        return Verdict.SPLIT if points > 1 else Verdict.QUARANTINE
    return Verdict.RETRY_SLOWLY


NEVER_VALID = ("invalid name", "name too long")  # influxd 1.x refusing a database name


def classify_target(reply: Reply) -> Verdict:
    """The verdict on listing or creating a target database (see the module docstring)."""
    status = reply.status
    if reply.ok:
        return Verdict.READY
    if status is None or status >= 500 or status == 429:
        return Verdict.RETRY
    if status in (401, 403):
        return Verdict.READY
    if any(words in reply.message.lower() for words in NEVER_VALID):
        return Verdict.QUARANTINE
    return Verdict.RETRY_SLOWLY


def classify_create(reply: Reply) -> Verdict:
    """The verdict on creating a database after a write said it is missing."""
    if reply.status in (401, 403):
        return Verdict.HOLD  # it does not exist and this user may not create it
    return classify_target(reply)


def classify_read(reply: Reply) -> Verdict:
    """The verdict on a ``/query`` read of a database (see the module docstring)."""
    status = reply.status
    if status == 200:
        return Verdict.DELIVERED
    if status is None or status >= 500 or status == 429:
        return Verdict.RETRY
    if status == 401:
        return Verdict.RETRY_SLOWLY
    if status == 403:
        return Verdict.HOLD
    if status == 404 or "database not found" in reply.message:
        return Verdict.SKIP
    return Verdict.RETRY_SLOWLY
