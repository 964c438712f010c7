"""The worker run in this process with ``run(burst=True)``: its outcomes and fallbacks, seen from
the queue, the status and the metrics (real Redis and S3, the stand-in Demucs CLI told how to
fail; the one fake of the worker's own code is named in its test)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from prometheus_client import REGISTRY

import devstack
from common.contract import Keys
from devstack.synth import undecodable_mp3
from worker import errors
from worker.worker import Worker


def _jobs_total(outcome: str, reason: str) -> float:
    return REGISTRY.get_sample_value("demucs_jobs_total",
                                     {"outcome": outcome, "reason": reason}) or 0.0


def _dead_letters(stack) -> list[dict]:
    return [json.loads(e) for e in stack.redis.lrange(Keys.DEAD_LETTER, 0, -1)]


def test_burst_runs_what_waits_then_returns(stack, make_song):
    hashes = [stack.upload_song(make_song(seconds=1.5, seed=i, name=f"s{i}.mp3"))
              for i in range(2)]
    for i, songhash in enumerate(hashes):
        stack.push({"songhash": songhash, "id": f"burst-{i}", "stems": ["drums"]})
    worker = stack.worker_in_process(BATCH_MAX="1")
    done_before = _jobs_total("done", "")
    assert worker.run(burst=True) == 0
    for i, songhash in enumerate(hashes):
        record = stack.status(f"burst-{i}")
        assert record["state"] == "done" and record["tracks"] == {"drums": f"{songhash}-drums.mp3"}
    assert _jobs_total("done", "") == done_before + 2
    assert stack.held_jobs() == 0  # acknowledged: nothing waits, nothing is held
    assert stack.redis.zcard(Keys.WORKERS) == 0  # it left the registry


def test_burst_from_the_command_line_exits_once_the_queue_is_empty(stack, make_song):
    songhash = stack.upload_song(make_song(seconds=1.5))
    stack.push({"songhash": songhash, "id": "cli-burst", "stems": ["bass"]})
    env = {**stack.env, "METRICS_PORT": "0"}
    stack.cwd.mkdir(exist_ok=True)
    run = subprocess.run([sys.executable, str(devstack.ROOT / "worker" / "worker.py"), "--burst"],
                         env=env, cwd=stack.cwd, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert stack.status("cli-burst")["state"] == "done"
    assert stack.held_jobs() == 0


def test_an_invalid_payload_is_dead_lettered_and_counted(stack):
    stack.push('{"id": "not-a-job", "songhash": "zz", "stems": ["vocals"]}')
    before = _jobs_total("failed", errors.Code.INVALID_JOB.value)
    stack.worker_in_process().run(burst=True)
    record = stack.status("not-a-job")
    assert record["state"] == "failed" and "songhash" in record["error"]
    assert [d["attempts"] for d in _dead_letters(stack)] == [1]
    assert _jobs_total("failed", errors.Code.INVALID_JOB.value) == before + 1
    assert stack.held_jobs() == 0


def test_a_missing_input_fails_for_good_at_once(stack):
    stack.minio.make_bucket(stack.queue_bucket)
    stack.push({"songhash": "a" * 64, "id": "missing", "stems": ["vocals"]})
    stack.worker_in_process(MAX_ATTEMPTS="3").run(burst=True)
    record = stack.status("missing")
    assert record["state"] == "failed" and record["attempts"] == 1
    assert "does not exist" in record["error"]
    assert [d["error"] for d in _dead_letters(stack)] == [record["error"]]


def test_an_unexpected_error_is_retried_then_fails_for_good(stack, make_song, monkeypatch):
    """The one fake here: the upload step raises a programming error (in-process patch)."""
    songhash = stack.upload_song(make_song(seconds=1.5))
    stack.push({"songhash": songhash, "id": "buggy", "stems": ["vocals"]})

    def broken(self, task):
        raise KeyError("a bug")

    monkeypatch.setattr(Worker, "upload_tracks", broken)
    retried = _jobs_total("retried", errors.Code.INTERNAL.value)
    stack.worker_in_process(MAX_ATTEMPTS="2").run(burst=True)
    record = stack.status("buggy")
    assert record["state"] == "failed" and record["attempts"] == 2, record
    assert record["error"] == "internal error: KeyError('a bug')"
    assert _jobs_total("retried", errors.Code.INTERNAL.value) == retried + 1
    assert len(_dead_letters(stack)) == 1 and stack.held_jobs() == 0


def test_a_bad_file_in_a_batch_runs_the_others_alone(stack, make_song, tmp_path, caplog):
    good = stack.upload_song(make_song(seconds=1.5, seed=3, name="good.mp3"))
    bad = stack.upload_song(undecodable_mp3(tmp_path / "bad.mp3"))
    stack.push({"songhash": bad, "id": "in-bad", "stems": ["drums"]})
    stack.push({"songhash": good, "id": "in-good", "stems": ["drums"]})
    with caplog.at_level(logging.WARNING, logger="worker"):
        stack.worker_in_process(BATCH_MAX="2").run(burst=True)
    assert stack.status("in-good")["state"] == "done"
    bad_record = stack.status("in-bad")
    assert bad_record["state"] == "failed" and bad_record["attempts"] == 1
    assert "not audio Demucs can decode" in bad_record["error"]
    assert "running those alone" in caplog.text


def test_a_cuda_failure_is_retried_on_the_cpu(stack, make_song, caplog, monkeypatch):
    monkeypatch.setenv("STANDIN_DEMUCS_CUDA_FAIL", "1")  # the stand-in fails as CUDA would
    songhash = stack.upload_song(make_song(seconds=1.5))
    stack.push({"songhash": songhash, "id": "gpu-less", "stems": ["other"]})
    with caplog.at_level(logging.WARNING, logger="worker"):
        stack.worker_in_process(DEMUCS_DEVICE="cuda").run(burst=True)
    assert stack.status("gpu-less")["state"] == "done"
    assert "Demucs failed on cuda; retrying once on the CPU" in caplog.text


def test_a_stopping_worker_gives_the_job_back_without_counting_it(stack, make_song):
    songhash = stack.upload_song(make_song(seconds=1.5))
    stack.push({"songhash": songhash, "id": "returned", "stems": ["vocals"]})
    worker = stack.worker_in_process()
    worker.stopping.set()
    worker.abort.set()  # past the grace: Demucs is stopped as soon as it starts
    worker.run_batch(worker.take_jobs(block=False))
    record = stack.status("returned")
    assert record["state"] == "queued" and record["attempts"] == 0, record
    assert "worker stopped" in record["error"]
    assert len(stack.waiting()) == 1 and stack.held_jobs() == 1  # waiting again
    stack.worker_in_process().run(burst=True)
    assert stack.status("returned")["state"] == "done"
