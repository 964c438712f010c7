"""A long song's chunks and join are named after it (``<id>-c<n>``, ``<id>-join``), one song
to one set of names, whatever its id: a job id may be 64 characters, and two long songs whose
ids shared their first 50 once shared their chunks' ids, hence their records and cancel keys
(the second song's chunks were taken as already ended: it never finished, with no reason).
Real redis-server and S3 server, the worker in-process on the stand-in Demucs."""

from __future__ import annotations

from common.contract import JOB_ID_RE
from worker.long_songs.chunk_jobs import derived_id

CHUNKING = {"CHUNK_OVER_S": "10", "CHUNK_S": "8", "CHUNK_OVERLAP_S": "2", "MODEL_SEGMENT_S": "0",
            "BATCH_MAX": "1"}


def test_derived_ids_keep_short_ids_and_never_meet():
    assert derived_id("song", 50) == "song"
    long_ids = ["x" * 50 + "01", "x" * 50 + "02", "x" * 49, "x" * 64]
    starts = [derived_id(job_id, 50) for job_id in long_ids]
    assert len(set(starts)) == len(starts) and {len(s) for s in starts} == {49, 50}
    # a short id spelled like a cut one is shorter than every cut one: the two never meet
    assert derived_id(starts[0][:49], 50) != starts[0]
    assert JOB_ID_RE.fullmatch(f"{derived_id('y' * 64, 50)}-c999")
    assert len(f"{derived_id('y' * 64, 59)}-join") == 64


def test_long_songs_whose_ids_share_50_characters_both_finish(stack, make_song):
    prefix = "batch-2026-12-06-night-run-of-the-archive-import-0"
    ids = [prefix + "01", prefix + "02"]
    for n, job_id in enumerate(ids):
        songhash = stack.upload_song(make_song(seconds=13.0, seed=40 + n, name=f"l{n}.mp3"))
        stack.push({"id": job_id, "songhash": songhash, "stems": ["vocals"]})
    stack.worker_in_process(**CHUNKING).run(burst=True)
    records = {job_id: stack.status(job_id) or {} for job_id in ids}
    assert {job_id: r.get("state") for job_id, r in records.items()} == dict.fromkeys(ids, "done")
    assert all(int(r["chunks_total"]) == 2 for r in records.values()), records
    assert stack.held_jobs() == 0
