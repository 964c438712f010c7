"""Every bad input ends in a recorded failure with its reason, and the worker keeps serving.

One worker takes the whole table (then one good job), so the cost is one worker start and one
Demucs run. Each row: how the job is made, and a phrase its recorded reason must contain.
"""

from __future__ import annotations

import json
import os

from common.contract import Keys, claimed_job_id
from devstack.synth import encode_mp3, lying_mp3, synth_song, wav_bytes
from tests.waiting import wait_until

GOOD = "f" * 64  # replaced by the real songhash of an uploaded file where needed



# (case, uploaded bytes or None, job (dict, or a str sent verbatim), phrase in the reason)
FILES = {
    "empty": b"",
    "random": os.urandom(30_000),
    "wav": wav_bytes(22050),
    "oversize": encode_mp3(synth_song(8.0, seed=3), bitrate_kbps=192),   # ~190 KB > 100 KB
    "too-long": encode_mp3(synth_song(7.0, seed=4), bitrate_kbps=32),    # 7 s > 5 s
    "lying-header": lying_mp3(claimed_s=1.0, real_s=20.0),  # Xing says 1 s; 20 s > 5 s
}
CASES: list[tuple[str, object, str]] = [
    ("not-json", "{not json", "not valid JSON"),
    ("array", "[1, 2]", "must be a JSON object, not list"),
    ("string", '"hello"', "must be a JSON object, not str"),
    ("null", "null", "must be a JSON object, not NoneType"),
    ("huge", json.dumps({"id": "huge", "pad": "x" * 70_000}), "over the 65536 limit"),
    ("unknown-field", {"id": "unknown-field", "songhash": GOOD, "mp3": "x"},
     "mp3: unknown field"),
    ("no-source", {"id": "no-source"}, "either 'songhash' or 'bucket' and 'object'"),
    ("both-sources", {"id": "both-sources", "songhash": GOOD, "bucket": "abc", "object": "k"},
     "either 'songhash' or"),
    ("short-hash", {"id": "short-hash", "songhash": "abc123"}, "64 lowercase hex"),
    ("traversal-hash", {"id": "traversal-hash", "songhash": "../../../etc/passwd"},
     "64 lowercase hex"),
    ("upper-hash", {"id": "upper-hash", "songhash": "F" * 64}, "64 lowercase hex"),
    ("dotdot-key", {"id": "dotdot-key", "bucket": "songs", "object": "a/../../x.mp3"},
     "'..' path segments"),
    ("absolute-key", {"id": "absolute-key", "bucket": "songs", "object": "/etc/passwd"},
     "must be relative"),
    ("bad-bucket", {"id": "bad-bucket", "bucket": "../x", "object": "a.mp3"},
     "valid S3 bucket name"),
    ("shell-model", {"id": "shell-model", "songhash": GOOD, "model": "htdemucs; rm -rf /"},
     "model must match"),
    ("dotdot-model", {"id": "dotdot-model", "songhash": GOOD, "model": "../../etc"},
     "model must match"),
    ("flag-model", {"id": "flag-model", "songhash": GOOD, "model": "-o/tmp"},
     "model must match"),
    ("file-callback", {"id": "file-callback", "songhash": GOOD,
                       "callback": {"url": "file:///etc/passwd"}}, "http:// or https://"),
    ("gopher-callback", {"id": "gopher-callback", "songhash": GOOD,
                         "callback": {"url": "gopher://x:70/"}}, "http:// or https://"),
    ("hostless-callback", {"id": "hostless-callback", "songhash": GOOD,
                           "callback": {"url": "http:///path"}}, "no valid host"),
    ("list-data", {"id": "list-data", "songhash": GOOD,
                   "callback": {"url": "http://x/", "data": [1]}}, "callback.data"),
    ("deep-data", {"id": "deep-data", "songhash": GOOD,
                   "callback": {"url": "http://x/",
                                "data": {"k": json.loads("[" * 40 + "]" * 40)}}},
     "nest at most 32"),
    ("bad-stem", {"id": "bad-stem", "songhash": GOOD, "stems": ["vocals", "kazoo"]},
     "stems.1"),
    ("bad-id", {"id": "../../x", "songhash": GOOD}, "id must be"),
    ("missing-object", {"id": "missing-object", "songhash": "0" * 64}, "does not exist"),
    ("empty", {"id": "empty"}, "empty (0 bytes)"),
    ("random", {"id": "random"}, "not a decodable MP3"),
    ("wav", {"id": "wav"}, "not a decodable MP3"),
    ("oversize", {"id": "oversize"}, "over MAX_INPUT_MB=0.1"),
    ("too-long", {"id": "too-long"}, "over MAX_DURATION_S=5"),
    ("lying-header", {"id": "lying-header"},
     "lasts more than 5 s (counted from its frames; its header claims 1.0 s), over "
     "MAX_DURATION_S=5"),
]


def test_bad_inputs_fail_with_reasons_and_the_worker_keeps_serving(stack, make_song, tmp_path):
    uploaded: dict[str, str] = {}
    for name, data in FILES.items():
        path = tmp_path / f"{name}.mp3"
        path.write_bytes(data)
        uploaded[name] = stack.upload_song(path)
    good = stack.upload_song(make_song(seconds=1.0, seed=9, name="good.mp3"))

    pushed: list[tuple[str, str, str]] = []
    for case, job, phrase in CASES:
        if isinstance(job, dict):
            job = dict(job)
            if case in uploaded:
                job["songhash"] = uploaded[case]
            elif job.get("songhash") == GOOD:
                job["songhash"] = good
            job = json.dumps(job)
        stack.push(job)
        pushed.append((case, claimed_job_id(job), phrase))
    stack.push({"id": "good-after", "songhash": good, "stems": ["vocals"]})

    worker = stack.start_worker(MAX_INPUT_MB="0.1", MAX_DURATION_S="5")
    assert stack.wait_for("good-after")["state"] == "done", stack.worker_logs()

    dead = [json.loads(e) for e in stack.redis.lrange(Keys.DEAD_LETTER, 0, -1)]
    assert len(dead) == len(CASES)
    problems = []
    for case, job_id, phrase in pushed:
        record = stack.status(job_id)
        if record is None or record["state"] != "failed" or phrase not in record["error"]:
            problems.append(f"{case}: expected failed with {phrase!r}, got {record}")
        elif not any(phrase in entry["error"] for entry in dead):
            problems.append(f"{case}: no dead-letter entry with {phrase!r}")
    assert not problems, "\n".join(problems)

    assert worker.poll() is None, "the worker died"
    # the last batch's temp dir goes right after its job is marked done: wait for that
    wait_until(lambda: not list(stack.work_dir.iterdir()), 10)  # else: left behind
    assert list(stack.cwd.iterdir()) == [], "something was written outside the temp dirs"
    assert "Traceback" not in stack.worker_logs()
