"""Hostile requests to the REST API: each gets a 4xx with a specific reason, no traceback,
nothing stored or queued, and the service still serves the next good request.

With ``tests/test_worker_bad_input.py`` (29 hostile jobs at the worker) this makes the
reliability suite's hostile-input table.
"""

from __future__ import annotations

import base64
import json
import os

import requests

from devstack.synth import encode_mp3, synth_song, wav_bytes
from separation.contract import Keys

TOKEN = "test-token-123"



MP3 = encode_mp3(synth_song(1.0, seed=2))
B64 = base64.b64encode(MP3).decode()
JSON = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# (case, method, path, request kwargs, expected status, phrase in the error)
CASES = [
    ("bad base64", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": "%%%not base64%%%"}), "headers": JSON}, 400, "base64"),
    ("empty mp3", "post", "/apiv1/separate", {"data": json.dumps({"mp3": ""}), "headers": JSON},
     400, ""),
    ("missing mp3", "post", "/apiv1/separate",
     {"data": json.dumps({"callback": {"url": "http://x/"}}), "headers": JSON}, 400, "mp3"),
    ("malformed json", "post", "/apiv1/separate", {"data": "{nope", "headers": JSON}, 400, ""),
    ("json array", "post", "/apiv1/separate", {"data": "[1, 2]", "headers": JSON}, 400, ""),
    ("unknown field", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": B64, "evil": 1}), "headers": JSON}, 400, "evil"),
    ("wrong content type", "post", "/apiv1/separate",
     {"data": B64, "headers": {**AUTH, "Content-Type": "text/plain"}}, 400, ""),
    ("random bytes", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": base64.b64encode(os.urandom(5000)).decode()}),
      "headers": JSON}, 400, "MP3"),
    ("wav upload", "post", "/apiv1/separate",
     {"files": {"file": ("a.mp3", wav_bytes(8000, 1, 8000), "audio/mpeg")}, "headers": AUTH},
     400, "MP3"),
    ("multipart without file", "post", "/apiv1/separate",
     {"files": {"model": (None, "htdemucs")}, "headers": AUTH}, 400, ""),
    ("file:// callback", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": B64, "callback": {"url": "file:///etc/passwd"}}),
      "headers": JSON}, 400, "http"),
    ("gopher callback", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": B64, "callback": {"url": "gopher://h:70/"}}),
      "headers": JSON}, 400, "http"),
    ("callback data not an object", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": B64, "callback": {"url": "http://h/", "data": [1]}}),
      "headers": JSON}, 400, "data"),
    ("shell in model", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": B64, "model": "x; rm -rf /"}), "headers": JSON}, 400, "model"),
    ("unknown stem", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": B64, "stems": ["kazoo"]}), "headers": JSON}, 400, "kazoo"),
    ("oversized body", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": base64.b64encode(b"\xff" * 300_000).decode()}),
      "headers": JSON}, 413, "MAX_INPUT_MB"),
    ("no token", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": B64}), "headers": {"Content-Type": "application/json"}},
     401, ""),
    ("wrong token", "get", "/apiv1/queue", {"headers": {"Authorization": "Bearer nope"}}, 401, ""),
    ("traversal in songhash", "get", "/apiv1/track/..%2F..%2Fetc/vocals.mp3",
     {"headers": AUTH}, 404, ""),
    ("bad songhash", "get", "/apiv1/track/abc/vocals.mp3", {"headers": AUTH}, 404, "songhash"),
    ("traversal in track", "get", f"/apiv1/track/{'a' * 64}/..%2F..%2Fx", {"headers": AUTH},
     404, ""),
    ("unknown track", "get", f"/apiv1/track/{'a' * 64}/kazoo.mp3", {"headers": AUTH}, 404,
     "unknown track"),
    ("remove traversal", "delete", f"/apiv1/remove/{'a' * 64}/..%2Fall", {"headers": AUTH},
     404, ""),
    ("status of nothing", "get", "/apiv1/status/..%2F..%2Fx", {"headers": AUTH}, 404, ""),
    ("deeply nested json", "post", "/apiv1/separate",
     {"data": '{"mp3": ' + "[" * 100_000 + "]" * 100_000 + "}", "headers": JSON}, 400,
     "nested"),
    ("callback data nested deep", "post", "/apiv1/separate",
     {"data": json.dumps({"mp3": B64, "callback": {"url": "http://h/", "data": {
         "k": json.loads("[" * 900 + "]" * 900)}}}), "headers": JSON}, 400, "nested deeper"),
    ("songhash with a trailing newline", "get", f"/apiv1/status/{'a' * 64}%0A",
     {"headers": AUTH}, 404, ""),
]


def test_hostile_requests_get_clear_4xx_and_change_nothing(stack, start_rest):
    rest = start_rest(API_TOKEN=TOKEN, MAX_INPUT_MB="0.2")
    problems = []
    for case, method, path, kwargs, expected, phrase in CASES:
        response = getattr(requests, method)(rest.url + path, timeout=30, **kwargs)
        body = response.text
        if response.status_code != expected:
            problems.append(f"{case}: HTTP {response.status_code}, expected {expected}: {body}")
            continue
        try:
            error = response.json().get("error", "")
        except ValueError:
            problems.append(f"{case}: not JSON: {body[:200]}")
            continue
        if not error or phrase.lower() not in error.lower() or "Traceback" in body:
            problems.append(f"{case}: unclear error {error!r}")
    assert not problems, "\n".join(problems)
    # nothing stored, nothing queued, and the service still serves a good request
    assert stack.redis.llen(Keys.QUEUE) == 0
    stored = list(stack.minio.list_objects(stack.queue_bucket)) \
        if stack.minio.bucket_exists(stack.queue_bucket) else []
    assert stored == []
    good = requests.post(rest.url + "/apiv1/separate", data=json.dumps({"mp3": B64}),
                         headers=JSON, timeout=30)
    assert good.status_code == 200, good.text
    assert stack.redis.llen(Keys.QUEUE) == 1
    assert "internal error" not in rest.logs()  # every refusal was deliberate, none a crash
