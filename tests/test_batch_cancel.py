"""Cancel inside a batch: the cancelled job ends within seconds, the others of its Demucs call
finish with one re-run at most, and no Demucs temp dir is left (real Redis and S3; the stand-in
Demucs CLI, slowed to 5 s an input so that the cancels land while it runs).

Two songs are queued before the worker starts, so one Demucs call takes both (``BATCH_MAX``),
and the cancel is the one key a Redis-only client writes (``SET job:<id>:cancel 1``).
"""

from __future__ import annotations

import logging
import time

import pytest

from common.contract import Keys
from tests.test_cancel import _demucs_pids
from tests.waiting import wait_until
from worker.cancel import Interrupt

# The promise: CANCEL_POLL_S (0.5 s) + Demucs' own 0.25 s check + the kill, well within 2 s;
# twice that for a busy 2-core test machine.
CANCEL_DEADLINE_S = 4.0
BATCH = {"BATCH_MAX": "4", "JOB_TIMEOUT_S": "600", "STANDIN_DEMUCS_DELAY_S": "5"}


def _queue_batch(stack, make_song, *ids: str) -> None:
    for seed, job_id in enumerate(ids, start=61):
        songhash = stack.upload_song(make_song(seconds=3, seed=seed, name=f"{job_id}.mp3"))
        stack.push({"songhash": songhash, "id": job_id, "stems": ["vocals"]})


def _demucs_runs(stack) -> int:
    """Demucs CLI calls the worker started (its log says ``running <command>``)."""
    return sum(line.count(" -n ") for line in stack.worker_logs().splitlines()
               if "running " in line)


def _temp_dirs(stack) -> list[str]:
    return sorted(p.name for p in stack.work_dir.rglob("demucs-cpu-*"))


def _both_separating(stack, *ids: str) -> None:
    for job_id in ids:
        stack.wait_for_stage(job_id, "separating", timeout_s=120)
    wait_until(lambda: _demucs_pids(str(stack.work_dir)), timeout_s=60,
               message=lambda: f"Demucs never started: {stack.worker_logs()}")
    assert _demucs_runs(stack) == 1, stack.worker_logs()  # one call holds both jobs


def _cancel_and_time(stack, job_id: str) -> float:
    asked = time.monotonic()
    stack.redis.set(Keys.cancel(job_id), 1, ex=3600)
    wait_until(lambda: (stack.status(job_id) or {}).get("state") == "cancelled",
               timeout_s=60, message=lambda: f"{stack.status(job_id)}\n{stack.worker_logs()}")
    return time.monotonic() - asked


def test_cancelling_one_job_of_a_batch_lets_the_other_finish_with_one_rerun(stack, make_song):
    _queue_batch(stack, make_song, "batch-a", "batch-b")
    stack.start_worker(**BATCH)
    _both_separating(stack, "batch-a", "batch-b")
    cancelled_s = _cancel_and_time(stack, "batch-a")
    print(f"FIGURE batch cancel: job cancelled {cancelled_s:.2f} s after its key was set")
    assert cancelled_s < CANCEL_DEADLINE_S
    assert len(_temp_dirs(stack)) <= 1  # the stopped call's output went at once
    assert stack.wait_for("batch-b")["state"] == "done"
    wait_until(lambda: stack.held_jobs() == 0, timeout_s=30,
               message=lambda: f"jobs still held: {stack.worker_logs()}")
    assert _demucs_runs(stack) == 2, stack.worker_logs()  # the first call, and one re-run
    assert stack.status("batch-a")["state"] == "cancelled"
    wait_until(lambda: _temp_dirs(stack) == [], timeout_s=30,
               message=lambda: f"temp dirs left: {_temp_dirs(stack)}")


def test_cancelling_every_job_of_a_batch_runs_demucs_no_more(stack, make_song):
    _queue_batch(stack, make_song, "all-a", "all-b")
    stack.start_worker(**BATCH)
    _both_separating(stack, "all-a", "all-b")
    asked = time.monotonic()
    for job_id in ("all-a", "all-b"):
        stack.redis.set(Keys.cancel(job_id), 1, ex=3600)
    for job_id in ("all-a", "all-b"):
        assert stack.wait_for(job_id, states=("cancelled", "done", "failed"),
                              timeout_s=60)["state"] == "cancelled"
    assert time.monotonic() - asked < CANCEL_DEADLINE_S
    wait_until(lambda: stack.held_jobs() == 0 and _temp_dirs(stack) == [], timeout_s=30,
               message=lambda: f"held {stack.held_jobs()}, dirs {_temp_dirs(stack)}")
    assert _demucs_runs(stack) == 1, stack.worker_logs()


def test_a_cancel_during_the_rerun_ends_that_job_too(stack, make_song):
    _queue_batch(stack, make_song, "rerun-a", "rerun-b")
    stack.start_worker(**BATCH)
    _both_separating(stack, "rerun-a", "rerun-b")
    first = set(_demucs_pids(str(stack.work_dir)))
    assert _cancel_and_time(stack, "rerun-a") < CANCEL_DEADLINE_S
    wait_until(lambda: set(_demucs_pids(str(stack.work_dir))) - first, timeout_s=60,
               message=lambda: f"no re-run started: {stack.worker_logs()}")
    assert _demucs_runs(stack) == 2
    assert _cancel_and_time(stack, "rerun-b") < CANCEL_DEADLINE_S
    wait_until(lambda: stack.held_jobs() == 0 and _temp_dirs(stack) == [], timeout_s=30,
               message=lambda: f"held {stack.held_jobs()}, dirs {_temp_dirs(stack)}")
    wait_until(lambda: not _demucs_pids(str(stack.work_dir)), timeout_s=30,
               message=lambda: "Demucs still runs")
    assert _demucs_runs(stack) == 2, stack.worker_logs()


@pytest.mark.timeout(180)
def test_a_run_stopped_with_no_job_cancelled_is_not_run_again(stack, make_song, monkeypatch,
                                                               caplog):
    """The one fake here: what stops a Demucs run says "stop" with no job cancelled and the
    worker not stopping (as a watch reset while Demucs runs would): the bound on re-runs, not
    a loop, ends the job, with the reason."""
    monkeypatch.setattr(Interrupt, "is_set", lambda self: True)
    songhash = stack.upload_song(make_song(seconds=1.5))
    stack.push({"songhash": songhash, "id": "phantom", "stems": ["vocals"]})
    with caplog.at_level(logging.INFO, logger="worker"):
        stack.worker_in_process(MAX_ATTEMPTS="1").run(burst=True)
    record = stack.status("phantom")
    assert record["state"] == "failed" and "not run again" in record["error"], record
    assert caplog.text.count(" -n ") == 1  # one Demucs command line
    assert stack.held_jobs() == 0
