"""The worker with its warm Demucs (the default runner), on real Redis, S3 and Demucs.

A warm child SIGKILLed in the middle of a job (as the kernel's OOM killer would) fails that
attempt with the CLI's reason, the job runs again on a fresh child and is done, and the worker
lives on; the child stays between jobs (same pid, models kept); ``DEMUCS_RUNNER=cli`` runs the
CLI again, with no warm child.
"""

from __future__ import annotations

import signal
import subprocess

import psutil

from tests.waiting import wait_until

STEMS = ["vocals"]


def _warm_children(worker: subprocess.Popen) -> list[psutil.Process]:
    return [child for child in psutil.Process(worker.pid).children(recursive=True)
            if "worker.demucs.warm_child" in child.cmdline()]


def test_a_child_killed_mid_job_retries_the_job_on_a_fresh_child(stack, make_song, demucs_cli):
    long_song = stack.upload_song(make_song(seconds=30, seed=41, name="long.mp3"))
    worker = stack.start_worker(BATCH_MAX="1", JOB_TIMEOUT_S="600")
    stack.push({"id": "killed", "songhash": long_song, "stems": STEMS})
    # mid-run: the child has reported progress for the job (Demucs' own callback)
    wait_until(lambda: (stack.status("killed") or {}).get("progress", 0) > 5, timeout_s=180,
               message=stack.worker_logs)
    [child] = _warm_children(worker)
    child.kill()
    record = stack.wait_for("killed", timeout_s=300)
    assert record["state"] == "done" and record["attempts"] == 2, record
    logs = stack.worker_logs()
    assert "Demucs was killed by SIGKILL (out of memory?" in logs
    [fresh] = wait_until(lambda: _warm_children(worker), timeout_s=30)
    assert fresh.pid != child.pid
    # the next job runs on the same warm child: it stays between jobs
    stack.push({"id": "next", "songhash": stack.upload_song(make_song(seconds=2, seed=42)),
                "stems": STEMS})
    assert stack.wait_for("next")["state"] == "done"
    assert [c.pid for c in _warm_children(worker)] == [fresh.pid]
    assert worker.poll() is None and stack.held_jobs() == 0
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    wait_until(lambda: not psutil.pid_exists(fresh.pid) or
               fresh.status() == psutil.STATUS_ZOMBIE, timeout_s=10)


def test_the_cli_runner_starts_no_warm_child(stack, make_song, demucs_cli):
    worker = stack.start_worker(DEMUCS_RUNNER="cli")
    stack.push({"id": "cli", "songhash": stack.upload_song(make_song(seconds=2, seed=43)),
                "stems": STEMS})
    assert stack.wait_for("cli")["state"] == "done"
    assert "running " in stack.worker_logs() and "warm Demucs" not in stack.worker_logs()
    assert _warm_children(worker) == []
