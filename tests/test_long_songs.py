"""Long songs split across workers and joined once (real services; the stand-in Demucs CLI:
the orchestration is the worker's, the seams' quality is tests/test_seams.py's)."""

from __future__ import annotations

import json
import signal
import time

import pytest
import sphn
from mutagen.mp3 import MP3

from common.contract import TRACKS, Keys
from devstack.synth import lying_mp3

# short chunks, plain overlaps: the tiny test model's own segment is 40 s, no grid to follow
CHUNKING = {"CHUNK_OVER_S": "10", "CHUNK_S": "8", "CHUNK_OVERLAP_S": "2", "MODEL_SEGMENT_S": "0",
            "BATCH_MAX": "1"}
# the production default: chunks on the htdemucs segment grid (7.8 s segments every 5.85 s),
# here [0, 19.5 s) and [11.7 s, end), with a crossfade in the middle of their 7.8 s overlap
ON_GRID = {"CHUNK_OVER_S": "20", "CHUNK_S": "20", "CHUNK_OVERLAP_S": "2", "BATCH_MAX": "1"}


def _leftovers(stack, job_id: str) -> list[str]:
    objects = [o.object_name for o in stack.minio.list_objects(
        stack.queue_bucket, prefix=f"chunks/{job_id}/", recursive=True)]
    keys = [k for k in (Keys.chunks(job_id), Keys.chunks_done(job_id)) if stack.redis.exists(k)]
    return objects + keys


def test_a_long_song_is_split_separated_by_two_workers_and_joined(stack, make_song, webhook,
                                                                   tmp_path):
    song = make_song(seconds=25.0, seed=21)
    songhash = stack.upload_song(song)
    stack.start_worker(**ON_GRID)
    stack.start_worker(**ON_GRID)
    stack.push({"songhash": songhash, "id": "long",
                "callback": {"url": webhook.url, "data": {"x": 1}}})
    record = stack.wait_for("long", timeout_s=180)
    assert record["state"] == "done", record
    assert record["chunks_total"] == "2" and record["chunks_done"] == "2"
    assert set(record["tracks"]) == set(TRACKS)
    # the stitched stems have the input's exact length in samples
    assert int(record["samples"]) == sphn.FileReader(str(song)).decode_all().shape[1]
    for track, key in record["tracks"].items():
        assert key == f"{songhash}-{track}.mp3"  # the keys of an unchunked job
        path = tmp_path / key
        stack.minio.fget_object(stack.output_bucket, key, str(path))
        assert abs(MP3(path).info.length - MP3(song).info.length) <= 0.1, track
        assert sphn.read(str(path))[0].shape[1] > 0
    chunk_workers = {stack.status(f"long-c{i}")["worker"] for i in range(2)}
    assert len(chunk_workers) == 2, "both workers took a chunk"
    time.sleep(0.5)
    assert [json.loads(b)["status"] for b, _ in webhook.calls] == ["done"]  # once, after the join
    assert _leftovers(stack, "long") == [] and stack.held_jobs() == 0


def test_a_killed_chunk_holder_is_redone_and_the_join_happens_once(stack, make_song, webhook):
    songhash = stack.upload_song(make_song(seconds=13.0, seed=22))
    victim = stack.start_worker(**CHUNKING)
    stack.push({"songhash": songhash, "id": "long-kill", "callback": {"url": webhook.url}})
    stack.wait_for_stage("long-kill-c0", "separating", timeout_s=90)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    stack.start_worker(**CHUNKING)
    stack.start_worker(**CHUNKING)
    record = stack.wait_for("long-kill", timeout_s=180)
    assert record["state"] == "done", record
    assert stack.status("long-kill-c0")["attempts"] == 2
    time.sleep(1.0)
    assert len(webhook.calls) == 1
    joins = stack.worker_logs().count("job long-kill: done in")
    assert joins == 1, stack.worker_logs()
    assert _leftovers(stack, "long-kill") == [] and stack.held_jobs() == 0


def test_a_chunk_that_keeps_failing_fails_the_song(stack, make_song):
    songhash = stack.upload_song(make_song(seconds=13.0, seed=23))
    stack.start_worker(**CHUNKING, JOB_TIMEOUT_S="0.3", MAX_ATTEMPTS="2",
                       STANDIN_DEMUCS_DELAY_S="2")
    stack.push({"songhash": songhash, "id": "long-fail"})
    record = stack.wait_for("long-fail", timeout_s=120)
    assert record["state"] == "failed", record
    assert record["error"].startswith("chunk ") and "JOB_TIMEOUT_S" in record["error"]
    deadline = time.monotonic() + 30
    while stack.held_jobs() and time.monotonic() < deadline:
        time.sleep(0.1)  # the other chunk is dropped once taken
    assert stack.held_jobs() == 0
    assert _leftovers(stack, "long-fail") == []


def test_a_lying_header_does_not_hide_a_long_song(stack, tmp_path):
    """A Xing header claiming 1.44 s over 13 s of frames: chunked and joined on the real 13 s."""
    song = tmp_path / "lying.mp3"
    song.write_bytes(lying_mp3(claimed_s=1.44, real_s=13.0))
    songhash = stack.upload_song(song)
    stack.start_worker(**CHUNKING)
    stack.push({"songhash": songhash, "id": "lying", "stems": ["vocals"]})
    record = stack.wait_for("lying", timeout_s=180)
    assert record["state"] == "done", record
    assert float(record["duration_s"]) == pytest.approx(13.0, abs=0.1)
    assert record["chunks_total"] == "2"
    decoded, rate = sphn.read(str(song))  # 16 kHz; Demucs' stems are at 44.1 kHz
    assert int(record["samples"]) / 44100 == pytest.approx(decoded.shape[1] / rate, abs=0.01)
