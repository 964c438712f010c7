"""Lying audio: an MP3 whose Xing header claims 1.44 s over 30 minutes of frames (7.2 MB).

With default settings (``MAX_DURATION_S=1200``) the REST service refuses it with 400 and the
worker, given it straight on the queue by a Redis-only client, fails it on its first attempt;
both say it lasts more than the limit. Nothing decodes it: its frames are counted.
"""

from __future__ import annotations

import base64
import json

import pytest
import requests

from common.contract import Keys
from devstack.synth import lying_mp3

pytestmark = pytest.mark.usefixtures("demucs_cli")  # lying audio reaches the real decoder

LYING = lying_mp3(claimed_s=1.44, real_s=1800)
REASON = "lasts more than 1200 s (counted from its frames; its header claims 1.4 s)"


def test_rest_refuses_a_lying_mp3(stack, rest):
    response = requests.post(rest.url + "/apiv1/separate", timeout=60,
                             json={"mp3": base64.b64encode(LYING).decode()})
    assert response.status_code == 400, response.text
    assert REASON in response.json()["error"]
    assert "MAX_DURATION_S=1200" in response.json()["error"]
    assert len(stack.waiting()) == 0


def test_the_worker_fails_a_lying_mp3_fast_with_the_reason(stack, tmp_path):
    path = tmp_path / "lying.mp3"
    path.write_bytes(LYING)
    stack.push({"id": "lying", "songhash": stack.upload_song(path)})
    stack.start_worker()
    record = stack.wait_for("lying")
    assert record["state"] == "failed", record
    assert REASON in record["error"] and "MAX_DURATION_S=1200" in record["error"]
    assert record["attempts"] == 1  # permanent: not retried
    dead = [json.loads(entry) for entry in stack.redis.lrange(Keys.DEAD_LETTER, 0, -1)]
    assert [entry["error"] for entry in dead] == [record["error"]]
    assert stack.held_jobs() == 0
