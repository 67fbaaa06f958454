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
