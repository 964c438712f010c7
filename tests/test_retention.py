"""Retention against the real services: the lifecycle rule read back from the S3 server, the
status' ``expires_at`` and what an expired song answers, and the upload removed with the last
tracks that needed it."""

from __future__ import annotations

import hashlib
import signal
import time

import pytest
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from common.retention import RULE_ID, expires_at
from tests.test_rest_api import TIMEOUT_S, assert_error, b64, wait_done
from tests.waiting import wait_until

DAY_S = 24 * 3600


@pytest.fixture
def rest(api):
    """This module's REST service runs in-process (``tests.inprocess``)."""
    return api


def _rules(stack, bucket: str) -> dict[str, Rule]:
    config = stack.minio.get_bucket_lifecycle(bucket)
    return {rule.rule_id: rule for rule in (config.rules if config else [])}


def _expiry_days(stack, bucket: str) -> int | None:
    rule = _rules(stack, bucket).get(RULE_ID)
    return None if rule is None or rule.expiration is None else rule.expiration.days


def test_the_services_set_the_lifecycle_rule_at_start(stack, start_api):
    # an operator's own rule on the output bucket is kept whatever the service sets
    stack.minio.make_bucket(stack.output_bucket)
    operator = Rule(ENABLED, rule_filter=Filter(prefix="scratch/"), rule_id="operator",
                    expiration=Expiration(days=1))
    stack.minio.set_bucket_lifecycle(stack.output_bucket, LifecycleConfig([operator]))

    stack.start_worker(RETENTION_DAYS="3")
    for bucket in (stack.queue_bucket, stack.output_bucket):
        wait_until(lambda b=bucket: stack.minio.bucket_exists(b) and _expiry_days(stack, b) == 3,
                   timeout_s=60)
        assert _rules(stack, bucket)[RULE_ID].rule_filter.prefix == ""  # every object
    assert _rules(stack, stack.output_bucket)["operator"].expiration.days == 1

    start_api(RETENTION_DAYS="10")  # its start sets the rule too (the last one set wins)
    assert _expiry_days(stack, stack.queue_bucket) == 10
    assert _expiry_days(stack, stack.output_bucket) == 10

    start_api(RETENTION_DAYS="0")  # keep forever: the service's rule goes, the operator's stays
    assert _expiry_days(stack, stack.queue_bucket) is None
    assert stack.minio.get_bucket_lifecycle(stack.queue_bucket) is None
    assert set(_rules(stack, stack.output_bucket)) == {"operator"}


def test_status_says_when_results_expire_and_that_they_did(stack, rest, make_song):
    song = make_song(seconds=2, seed=31)
    songhash = hashlib.sha256(song.read_bytes()).hexdigest()
    stack.start_worker()
    answer = rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S,
                           json={"mp3": b64(song), "stems": ["vocals"]}).json()
    queued = rest.get(f"{rest.url}/apiv1/status/{answer['id']}", timeout=TIMEOUT_S).json()
    assert queued["expires_at"] is None or queued["state"] == "done"
    record = wait_done(rest, answer["id"])
    assert record["state"] == "done"
    # the lifecycle's date: 7 days after the tracks were written, at the next midnight UTC
    assert record["expires_at"] == expires_at(record["finished_at"], 7) or \
        record["expires_at"] == expires_at(record["finished_at"] - 60, 7)
    assert record["expires_at"] % DAY_S == 0
    assert 7 * DAY_S < record["expires_at"] - record["finished_at"] <= 8 * DAY_S
    # the record lives a day longer than its tracks (STATUS_TTL_S from RETENTION_DAYS)
    assert 7 * DAY_S < stack.redis.ttl(f"job:{answer['id']}") <= 8 * DAY_S

    # time passes (the S3 test server does not run lifecycles: the record says it is due)
    stack.redis.hset(f"job:{answer['id']}", "expires_at", time.time() - 60)
    assert_error(rest.get(f"{rest.url}/apiv1/status/{answer['id']}", timeout=TIMEOUT_S),
                 410, "expired at")
    gone = rest.get(f"{rest.url}/apiv1/status/{songhash}", timeout=TIMEOUT_S).json()
    assert "results are kept RETENTION_DAYS=7 days" in gone["error"], gone
    stack.minio.remove_object(stack.output_bucket, f"{songhash}-vocals.mp3")  # as S3 would
    assert_error(rest.get(f"{rest.url}/apiv1/track/{songhash}/vocals", timeout=TIMEOUT_S),
                 404, f"the tracks of song {songhash} expired at")
    # once the record is gone too
    assert_error(rest.get(f"{rest.url}/apiv1/status/{'c' * 64}", timeout=TIMEOUT_S), 404,
                 "results are kept RETENTION_DAYS=7 days, so it expired, or was never sent")


def test_remove_takes_the_upload_once_no_job_needs_it(stack, rest, make_song):
    song = make_song(seconds=2, seed=32)
    songhash = hashlib.sha256(song.read_bytes()).hexdigest()
    upload = f"{songhash}.mp3"

    def upload_stored() -> bool:
        return any(o.object_name == upload for o in stack.minio.list_objects(stack.queue_bucket))

    def remove(track: str) -> dict:
        response = rest.delete(f"{rest.url}/apiv1/remove/{songhash}/{track}",
                                   timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        return response.json()

    def separate(**fields: object) -> dict:
        return rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S,
                             json={"mp3": b64(song), **fields}).json()

    worker = stack.start_worker()
    assert wait_done(rest, separate(stems=["vocals"])["id"])["state"] == "done"
    assert wait_done(rest, separate(stems=["vocals"], format="flac")["id"])["state"] == "done"

    # the FLAC vocals still need the upload
    removed = remove("vocals.mp3")
    assert removed["removed"] == ["vocals"] and removed["upload_removed"] is False, removed
    assert upload_stored()

    # a job of the song waits in the queue: it needs the upload
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    waiting = separate(stems=["drums"])
    assert rest.get(f"{rest.url}/apiv1/status/{waiting['id']}",
                        timeout=TIMEOUT_S).json()["state"] == "queued"
    removed = remove("vocals.flac")
    assert removed["removed"] == ["vocals.flac"] and removed["upload_removed"] is False, removed
    assert upload_stored()

    # once it ran, removing the song's last tracks removes its upload
    stack.start_worker()
    assert wait_done(rest, waiting["id"])["state"] == "done"
    removed = remove("all")
    assert removed == {"hash": songhash, "removed": ["drums"], "upload_removed": True,
                       "reason": "Removed drums and the song's upload"}, removed
    assert not upload_stored()
    assert not list(stack.minio.list_objects(stack.output_bucket))
