"""The delivery rules, once, as a table: every reply a server or the network gives -> verdict.

The same rules run against the real influxd in test_delivery.py; here each row is pinned on
its own, for v1 and v2.
"""

from __future__ import annotations

import pytest

from agent.classify import Reply, Verdict, classify, classify_create, classify_target

WRITE = [
    # (status, server's words, api, points, may create) -> verdict
    (204, "", "v1", 5, True, Verdict.DELIVERED),
    (None, "connection refused", "v1", 5, True, Verdict.RETRY),
    (500, "internal", "v1", 5, True, Verdict.RETRY),
    (502, "bad gateway", "v1", 5, True, Verdict.RETRY),
    (503, "unavailable", "v2", 5, True, Verdict.RETRY),
    (429, "too many", "v2", 5, True, Verdict.RETRY),
    (404, 'database not found: "x"', "v1", 5, True, Verdict.CREATE),
    (404, 'database not found: "x"', "v1", 5, False, Verdict.HOLD),
    (404, "bucket not found", "v2", 5, True, Verdict.HOLD),
    (401, "authorization failed", "v1", 5, True, Verdict.RETRY_SLOWLY),
    (403, "not authorized", "v1", 5, True, Verdict.HOLD),
    (413, "too large", "v1", 5, True, Verdict.SPLIT),
    (413, "too large", "v1", 1, True, Verdict.QUARANTINE),
    (400, "partial write: field type conflict", "v1", 5, True, Verdict.SPLIT),
    (400, "unable to parse", "v1", 1, True, Verdict.QUARANTINE),
    (422, "unprocessable", "v2", 2, True, Verdict.SPLIT),
    (422, "unprocessable", "v2", 1, True, Verdict.QUARANTINE),
    (405, "method not allowed", "v1", 5, True, Verdict.RETRY_SLOWLY),
    (200, "", "v1", 5, True, Verdict.RETRY_SLOWLY),  # not the 204 a write answers
]


@pytest.mark.parametrize("status, words, api, points, create, verdict", WRITE)
def test_each_reply_to_a_write_gets_the_verdict_of_the_table(
    status, words, api, points, create, verdict
):
    assert classify(Reply(status, words, api=api), points, create) is verdict


@pytest.mark.parametrize(
    "status, words, verdict",
    [
        (200, "", Verdict.READY),
        (401, "authorization failed", Verdict.READY),  # the write says it, once, clearly
        (403, "forbidden", Verdict.READY),  # may not list or create: write anyway
        (None, "timed out", Verdict.RETRY),
        (503, "", Verdict.RETRY),
        (400, "invalid name", Verdict.QUARANTINE),  # nothing can ever make it right
        (400, "name too long", Verdict.QUARANTINE),
        (400, "something else", Verdict.RETRY_SLOWLY),
    ],
)
def test_making_a_target_ready_is_classified_too(status, words, verdict):
    assert classify_target(Reply(status, words)) is verdict


def test_a_missing_database_the_user_may_not_create_holds_only_that_database():
    assert classify_create(Reply(403, "forbidden")) is Verdict.HOLD
    assert classify_create(Reply(200)) is Verdict.READY
    assert classify_create(Reply(400, "invalid name")) is Verdict.QUARANTINE


# The replies InfluxV2Sink gives (api="v2"), one per status the InfluxDB 2.x docs list for
# /api/v2/write: the same rules as v1, except that a missing bucket is never created.
V2_WRITE = [
    # (status, server's words, points, may create, Retry-After) -> verdict
    (204, "", 5, False, None, Verdict.DELIVERED),
    (400, "unable to parse 'data x=': missing field value", 5, False, None, Verdict.SPLIT),
    (400, "unable to parse 'data x=': missing field value", 1, False, None, Verdict.QUARANTINE),
    (422, "partial write: dropped 1 points (retention)", 4, False, None, Verdict.SPLIT),
    (422, "partial write: dropped 1 points (retention)", 1, False, None, Verdict.QUARANTINE),
    (413, "unable to read data: points batch is too large", 5, False, None, Verdict.SPLIT),
    (413, "unable to read data: points batch is too large", 1, False, None, Verdict.QUARANTINE),
    (401, "unauthorized access", 5, False, None, Verdict.RETRY_SLOWLY),
    (403, "insufficient permissions for write", 5, False, None, Verdict.HOLD),
    (404, 'bucket "kits" not found', 5, False, None, Verdict.HOLD),
    (404, 'organization name "acme" not found', 5, False, None, Verdict.HOLD),
    (404, 'database not found: "x"', 5, True, None, Verdict.HOLD),  # v2 never creates
    (429, "too many requests", 5, False, 30.0, Verdict.RETRY),
    (503, "unavailable", 5, False, 30.0, Verdict.RETRY),
    (500, "internal error", 5, False, None, Verdict.RETRY),
    (None, "connection refused", 5, False, None, Verdict.RETRY),
]  # fmt: skip


@pytest.mark.parametrize("status, words, points, create, retry_after, verdict", V2_WRITE)
def test_each_documented_v2_reply_gets_the_verdict_of_the_table(
    status, words, points, create, retry_after, verdict
):
    reply = Reply(status, words, retry_after=retry_after, api="v2")
    assert classify(reply, points, create) is verdict


def test_the_same_404_creates_a_v1_database_but_only_holds_a_v2_bucket():
    words = 'database not found: "x"'
    assert classify(Reply(404, words, api="v1"), 5, True) is Verdict.CREATE
    assert classify(Reply(404, words, api="v2"), 5, True) is Verdict.HOLD
