"""A long song's chunk and join jobs are made by workers only; a Redis producer (anyone who
may LPUSH onto ``toWorkers``) cannot forge them, nor take their ids.

Found by a hostile review: a chunk job naming no split song crashed every worker that took
it (a state-less record, then a KeyError outside the outcome handling); one naming a queued
song wrote stems under its chunks and counted them; one with an index past the song's chunks
made the join run early and fail the song; a producer's own job ``mix-c0`` ended the song
``mix``'s chunk 0 before it ran. Real redis-server and S3 server, the worker in-process on the
stand-in Demucs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from common.contract import Job, Keys, claimed_job_id
from common.status import StatusStore

CHUNKING = {"CHUNK_OVER_S": "10", "CHUNK_S": "8", "CHUNK_OVERLAP_S": "2", "MODEL_SEGMENT_S": "0",
            "BATCH_MAX": "1", "MAX_ATTEMPTS": "2"}


@pytest.fixture
def evil_wav(stack, tmp_path) -> dict:
    """An attacker's audio in the queue bucket, as a forged chunk would name it."""
    wav = tmp_path / "evil.wav"
    sf.write(wav, np.zeros((44100 * 2, 2), dtype="float32"), 44100, subtype="PCM_16")
    if not stack.minio.bucket_exists(stack.queue_bucket):
        stack.minio.make_bucket(stack.queue_bucket)
    stack.minio.fput_object(stack.queue_bucket, "uploads/evil.wav", str(wav))
    return {"bucket": stack.queue_bucket, "object": "uploads/evil.wav", "stems": ["vocals"]}


def _queued(stack, job_id: str, songhash: str) -> None:
    StatusStore(stack.redis, 3600).queued(job_id, songhash, "htdemucs")


def test_a_chunk_of_no_split_song_fails_alone_and_the_worker_goes_on(stack, make_song,
                                                                     evil_wav):
    stack.push({"id": "evil", "chunk_of": "nobody", "chunk": 0, **evil_wav})
    good = stack.upload_song(make_song(seconds=3.0, seed=6, name="good.mp3"))
    stack.push({"id": "good", "songhash": good, "stems": ["vocals"]})
    assert stack.worker_in_process(**CHUNKING).run(burst=True) == 0
    evil = stack.status("evil")
    assert evil["state"] == "failed" and "no long song split into chunks" in evil["error"]
    assert stack.status("good")["state"] == "done"
    assert stack.status("nobody") is None  # no record made for a song that is not
    assert stack.held_jobs() == 0


def test_a_chunk_of_a_queued_song_never_split_writes_and_counts_nothing(stack, evil_wav):
    _queued(stack, "victim", "0" * 64)
    stack.push({"id": "evil", "chunk_of": "victim", "chunk": 5, **evil_wav})
    stack.worker_in_process(**CHUNKING).run(burst=True)
    assert list(stack.minio.list_objects(stack.queue_bucket, prefix="chunks/victim/",
                                         recursive=True)) == []
    assert not stack.redis.exists(Keys.chunks_done("victim"))
    assert stack.status("evil")["state"] == "failed"
    assert stack.status("victim")["state"] == "queued"  # nothing of it moved


def test_a_chunk_past_the_songs_chunks_does_not_break_it(stack, make_song, evil_wav):
    long = stack.upload_song(make_song(seconds=13.0, seed=5, name="long.mp3"))
    _queued(stack, "L", long)
    stack.push({"id": "evil", "chunk_of": "L", "chunk": 7, **evil_wav})
    stack.push({"id": "L", "songhash": long, "stems": ["vocals"]})
    stack.worker_in_process(**CHUNKING).run(burst=True)
    assert stack.status("L")["state"] == "done", stack.status("L")
    assert stack.status("evil")["state"] == "failed"


def test_only_the_chunks_and_join_a_split_made_are_run(stack):
    """The check itself, against a split song's record (2 chunks): the id, bucket and object
    its split gave each chunk, and its join's id; anything else is refused with a reason."""
    worker = stack.worker_in_process(**CHUNKING)
    stack.redis.hset(Keys.chunks("L"), mapping={"total": 2})
    bucket = stack.queue_bucket

    def refusal(**fields) -> str | None:
        return worker.long_songs.refusal(Job.model_validate(fields))

    real = {"id": "L-c1", "chunk_of": "L", "chunk": 1, "bucket": bucket,
            "object": "chunks/L/c1.wav"}
    assert refusal(**real) is None
    assert refusal(id="L-join", join_of="L") is None
    for forged in ({**real, "object": "uploads/evil.wav"}, {**real, "bucket": "other"},
                   {**real, "id": "evil"}, {**real, "chunk": 2, "id": "L-c2",
                                            "object": "chunks/L/c2.wav"}):
        assert refusal(**forged), forged
    assert "named 'L-join'" in refusal(id="evil", join_of="L")
    assert "no long song" in refusal(id="M-join", join_of="M")


def test_a_producers_id_spelled_like_a_chunk_is_refused_and_ends_no_chunk(stack, make_song):
    short = stack.upload_song(make_song(seconds=3.0, seed=3, name="short.mp3"))
    payload = {"id": "mix-c0", "songhash": short, "stems": ["vocals"]}
    stack.push(payload)
    stack.worker_in_process(**CHUNKING).run(burst=True)
    assert stack.status("mix-c0") is None  # its failure is recorded under its derived id

    refused = stack.status(claimed_job_id(json.dumps(payload)))
    assert refused["state"] == "failed" and "choose another" in refused["error"]
    long = stack.upload_song(make_song(seconds=13.0, seed=4, name="long.mp3"))
    stack.push({"id": "mix", "songhash": long, "stems": ["vocals"]})
    stack.worker_in_process(**CHUNKING).run(burst=True)
    assert stack.status("mix")["state"] == "done"
    assert stack.status("mix-c0")["state"] == "done"  # the song's own chunk
    assert stack.held_jobs() == 0 and not stack.waiting()
