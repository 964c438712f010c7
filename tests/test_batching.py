"""Batching: several jobs in one Demucs call, each with its own outcome (real CLI and services)."""

from __future__ import annotations

import signal

import pytest

from devstack.synth import undecodable_mp3

pytestmark = pytest.mark.usefixtures("demucs_cli")  # one real CLI call, one model load


def _demucs_calls(stack) -> list[str]:
    return [line for line in stack.worker_logs().splitlines() if "-m demucs" in line]


def test_one_demucs_call_serves_the_whole_batch(stack, make_song):
    hashes = [stack.upload_song(make_song(seconds=1.5, seed=i, name=f"b{i}.mp3"))
              for i in range(3)]
    for i, songhash in enumerate(hashes):
        stack.push({"songhash": songhash, "id": f"batch-{i}", "stems": ["vocals", "full"]})
    stack.start_worker(BATCH_MAX="4")
    records = [stack.wait_for(f"batch-{i}") for i in range(3)]
    assert [r["state"] for r in records] == ["done"] * 3, records
    for songhash, record in zip(hashes, records, strict=True):
        assert record["tracks"] == {"vocals": f"{songhash}-vocals.mp3",
                                    "full": f"{songhash}-full.mp3"}
    calls = _demucs_calls(stack)
    assert len(calls) == 1 and all(f"j{i}.mp3" in calls[0] for i in range(3)), calls


def test_a_bad_file_in_a_batch_fails_alone(stack, make_song, tmp_path):
    good = [stack.upload_song(make_song(seconds=1.5, seed=i, name=f"g{i}.mp3")) for i in range(2)]
    bad = stack.upload_song(undecodable_mp3(tmp_path / "bad.mp3"))
    stack.push({"songhash": good[0], "id": "good-0", "stems": ["drums"]})
    stack.push({"songhash": bad, "id": "bad", "stems": ["drums"]})
    stack.push({"songhash": good[1], "id": "good-1", "stems": ["drums"]})
    stack.start_worker(BATCH_MAX="4")
    assert stack.wait_for("good-0")["state"] == "done"
    assert stack.wait_for("good-1")["state"] == "done"
    record = stack.wait_for("bad")
    assert record["state"] == "failed" and record["attempts"] == 1, record
    assert "not audio Demucs can decode" in record["error"]
    calls = _demucs_calls(stack)
    # the batch call, then the jobs it did not finish, each alone
    assert len(calls) == 3 and "j2.mp3" in calls[0], calls
    keys = {o.object_name for o in stack.minio.list_objects(stack.output_bucket)}
    assert keys == {f"{good[0]}-drums.mp3", f"{good[1]}-drums.mp3"}


def test_a_killed_batch_is_redelivered_whole(stack, make_song):
    hashes = [stack.upload_song(make_song(seconds=4, seed=i, name=f"k{i}.mp3")) for i in range(3)]
    for i, songhash in enumerate(hashes):
        stack.push({"songhash": songhash, "id": f"kill-{i}", "stems": ["bass"]})
    first = stack.start_worker(BATCH_MAX="4")
    stack.wait_for_stage("kill-0", "separating")
    first.send_signal(signal.SIGKILL)
    first.wait()
    stack.start_worker(BATCH_MAX="4")
    records = [stack.wait_for(f"kill-{i}") for i in range(3)]
    assert [(r["state"], r["attempts"]) for r in records] == [("done", 2)] * 3, records
    assert stack.held_jobs() == 0
