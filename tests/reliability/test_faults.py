"""Fault injection against the real processes: every job's final state is checked.

Each test runs real redis-server, the S3 server, workers as subprocesses and the Demucs CLI,
injects one kind of fault, then accounts for every job: done (every track stored), failed with
a reason, lost, duplicated (more than one ``done`` webhook) or stuck (still queued/held).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time

import psutil
import pytest
import redis as redis_lib

import devstack
from common.contract import Keys
from common.queue import JobQueue
from devstack.webhooks import WebhookReceiver
from tests.reliability.accounting import TRIALS, FaultRow
from tests.waiting import wait_until

pytestmark = pytest.mark.usefixtures("demucs_cli")  # the fault rows hold for the real CLI

STEMS = ["vocals", "drums"]
SEED = int(os.environ.get("RELIABILITY_SEED", str(int(time.time()))))


def account(stack, fault: str, trials: int, ids: list[str], webhook=None) -> FaultRow:
    done = failed = lost = stuck = 0
    for job_id in ids:
        record = stack.status(job_id)
        if record is None:
            lost += 1
        elif record["state"] == "done":
            try:
                for key in record["tracks"].values():
                    stack.minio.stat_object(stack.output_bucket, key)
                done += 1
            except Exception:
                lost += 1  # reported done without its tracks
        elif record["state"] == "failed" and record["error"]:
            failed += 1
        else:
            stuck += 1
    stuck += stack.held_jobs()
    duplicated = 0
    if webhook is not None:
        per_job: dict[str, int] = {}
        for body, _ in webhook.calls:
            payload = json.loads(body)
            if payload["status"] == "done":
                per_job[payload["id"]] = per_job.get(payload["id"], 0) + 1
        duplicated = sum(1 for n in per_job.values() if n > 1)
    return FaultRow(fault, trials, len(ids), done, failed, lost, duplicated, stuck)


def _demucs_child(worker: subprocess.Popen, timeout_s: float = 30) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(worker.pid).children(recursive=True):
            if "demucs" in " ".join(child.cmdline()):
                return child
        time.sleep(0.02)
    raise AssertionError("no Demucs child process appeared")


def test_sigkill_at_a_random_moment(stack, song, webhook, report):
    rng = random.Random(SEED)
    songhash = stack.upload_song(song)
    victim = stack.start_worker()
    ids = []
    for trial in range(TRIALS):
        job_id = f"kill-{trial}"
        ids.append(job_id)
        stack.push({"id": job_id, "songhash": songhash, "stems": STEMS,
                    "callback": {"url": webhook.url, "data": {"trial": trial}}})
        time.sleep(rng.uniform(0.0, 4.0))  # before the take, in download, Demucs or upload
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        victim = stack.start_worker()  # finishes the job; the next trial's victim
        stack.wait_for(job_id, timeout_s=90)
    row = account(stack, "SIGKILL worker mid-job (random)", len(ids), ids, webhook)
    report(row)
    assert (row.done, row.lost, row.stuck) == (len(ids), 0, 0), (SEED, row)
    # the killed workers' temp dirs: removed by the live one once their heartbeats lapse
    wait_until(lambda: not list(stack.work_dir.glob("demucs-batch-*")), timeout_s=30,
               message=lambda: str(list(stack.work_dir.iterdir())))


def test_sigkill_while_holding_a_high_job(stack, make_song, report):
    """The high job a killed worker held goes back to the high lane's taking end (ahead of the
    normal jobs that waited), runs before them, and nothing is lost or run twice."""
    songhash = stack.upload_song(make_song(seconds=2))
    queue = JobQueue(stack.redis)  # redelivers as a live worker's heartbeat thread would
    ids = []
    for trial in range(TRIALS):
        normal, high = [f"hk{trial}-n0", f"hk{trial}-n1"], f"hk{trial}-high"
        ids += [*normal, high]
        for job_id in normal:
            stack.push({"id": job_id, "songhash": songhash, "stems": STEMS})
        stack.push({"id": high, "songhash": songhash, "stems": STEMS, "priority": "high"})
        victim = stack.start_worker(BATCH_MAX="1")
        stack.wait_for_stage(high, "separating")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert json.loads(wait_until(queue.redeliver_dead)[0])["id"] == high
        assert [json.loads(raw)["id"] for raw in stack.redis.lrange(Keys.LANE_HIGH, 0, -1)] \
            == [high]
        assert stack.redis.llen(Keys.LANE_NORMAL) == 2 and stack.processing() == 0
        rescuer = stack.start_worker(BATCH_MAX="1")
        records = {job_id: stack.wait_for(job_id, timeout_s=120) for job_id in (*normal, high)}
        assert min(records, key=lambda j: records[j]["finished_at"] or 0) == high, records
        assert records[high]["attempts"] == 2, records[high]
        rescuer.send_signal(signal.SIGTERM)
        assert rescuer.wait(timeout=60) == 0
    row = account(stack, "SIGKILL worker holding a high job", TRIALS, ids)
    report(row)
    assert (row.done, row.lost, row.stuck) == (len(ids), 0, 0), row


def test_sigterm_mid_job(stack, song, report):
    rng = random.Random(SEED + 1)
    songhash = stack.upload_song(song)
    ids = []
    for trial in range(TRIALS):
        job_id = f"term-{trial}"
        ids.append(job_id)
        worker = stack.start_worker(SHUTDOWN_GRACE_S=str(rng.choice([0.5, 30])))
        stack.push({"id": job_id, "songhash": songhash, "stems": STEMS})
        stack.wait_for_stage(job_id, "downloading", "separating", "encoding", "uploading")
        time.sleep(rng.uniform(0, 1.5))
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, stack.worker_logs()
        state = stack.status(job_id)["state"]
        assert state in ("done", "queued"), state  # finished, or put back
        if state == "queued":
            helper = stack.start_worker()
            stack.wait_for(job_id)
            helper.send_signal(signal.SIGTERM)
            assert helper.wait(timeout=60) == 0
    row = account(stack, "SIGTERM worker mid-job", TRIALS, ids)
    report(row)
    assert (row.done, row.lost, row.stuck) == (TRIALS, 0, 0), row


def test_redis_killed_and_restarted_with_aof(stack, make_song, tmp_path, report):
    own = devstack.start_redis(tmp_path / "redis-aof", aof=True)
    stack.env["REDIS_PORT"] = str(own.port)
    stack.redis = redis_lib.Redis(port=own.port)
    hashes = [stack.upload_song(make_song(seconds=3, seed=i, name=f"r{i}.mp3")) for i in range(3)]
    ids = [f"redis-{i}" for i in range(3)]
    for job_id, songhash in zip(ids, hashes, strict=True):
        stack.push({"id": job_id, "songhash": songhash, "stems": STEMS})
    stack.start_worker(BATCH_MAX="1")
    stack.wait_for_stage(ids[0], "separating")
    own.process.send_signal(signal.SIGKILL)
    own.process.wait()
    time.sleep(3)
    own = devstack.start_redis(tmp_path / "redis-aof", port=own.port, aof=True)
    try:
        for job_id in ids:
            stack.wait_for(job_id, timeout_s=120)
        row = account(stack, "Redis SIGKILLed + restarted (AOF)", 1, ids)
        attempts = [stack.status(job_id)["attempts"] for job_id in ids]
    finally:
        own.stop()
    report(row)
    assert (row.done, row.lost, row.stuck) == (3, 0, 0), row
    assert attempts == [1, 1, 1], attempts  # the outage spent none of their attempts


def test_s3_outage_during_uploads(stack, song, report, services):
    proxy = devstack.TcpProxy(services["s3"].port)
    songhash = stack.upload_song(song)
    stack.start_worker(MINIO_ENDPOINT=f"127.0.0.1:{proxy.port}")
    ids = []
    for trial in range(max(1, TRIALS // 3)):
        job_id = f"s3-{trial}"
        ids.append(job_id)
        stack.push({"id": job_id, "songhash": songhash})
        stack.wait_for_stage(job_id, "encoding", "uploading")
        proxy.cut()
        time.sleep(10)
        proxy.restore()
        record = stack.wait_for(job_id, timeout_s=120)
        if record["state"] == "failed":
            assert "storage" in record["error"], record
        else:  # the outage spent none of the job's attempts
            assert record["attempts"] == 1, record
    row = account(stack, "S3 unreachable 10 s during upload", len(ids), ids)
    report(row)
    assert row.lost == 0 and row.stuck == 0 and row.done + row.failed_with_reason == len(ids)


def test_demucs_crashes_and_hangs(stack, make_song, report):
    songhash = stack.upload_song(make_song(seconds=3))
    worker = stack.start_worker(JOB_TIMEOUT_S="45")  # the 30 s song's run fits on a busy CI
    # an unknown model: permanent, one attempt, the reason says why
    stack.push({"id": "fake-model", "songhash": songhash, "model": "no_such_model_xyz"})
    fake = stack.wait_for("fake-model")
    assert fake["state"] == "failed" and fake["attempts"] == 1
    assert "is not one this worker has installed" in fake["error"]
    # Demucs killed mid-run: retried, then done. Killed once it has reported progress for the
    # job (the warm child lives between jobs: killed idle, the job would just get a fresh one);
    # the song is long enough that the run is still going when the kill lands.
    long_song = stack.upload_song(make_song(seconds=30, seed=7, name="long.mp3"))
    stack.push({"id": "killed-demucs", "songhash": long_song, "stems": STEMS})
    wait_until(lambda: (stack.status("killed-demucs") or {}).get("progress", 0) > 5,
               timeout_s=180, message=stack.worker_logs)
    _demucs_child(worker).kill()
    killed = stack.wait_for("killed-demucs")
    assert killed["state"] == "done" and killed["attempts"] == 2, killed
    assert "Demucs was killed by SIGKILL (out of memory?" in stack.worker_logs()
    # Demucs hanging (stopped): killed at JOB_TIMEOUT_S, retried, then done. On a worker of
    # its own with a deadline that fits the 3 s song (the 30 s one needed more); its Demucs
    # child is stopped as soon as it appears, long before it can have answered
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, stack.worker_logs()
    worker = stack.start_worker(JOB_TIMEOUT_S="20")
    stack.push({"id": "hung-demucs", "songhash": songhash, "stems": STEMS})
    _demucs_child(worker).suspend()
    hung = stack.wait_for("hung-demucs")
    assert hung["state"] == "done" and hung["attempts"] == 2, hung
    assert "JOB_TIMEOUT_S" in stack.worker_logs()
    assert worker.poll() is None
    row = account(stack, "Demucs: fake model, killed, hung", 1,
                  ["fake-model", "killed-demucs", "hung-demucs"])
    report(row)
    assert (row.done, row.failed_with_reason, row.lost, row.stuck) == (2, 1, 0, 0)


def test_webhook_down_slow_or_failing(stack, make_song, report):
    songhash = stack.upload_song(make_song(seconds=1.5))
    slow, failing = WebhookReceiver(delay_s=3), WebhookReceiver(status_code=500)
    down = f"http://127.0.0.1:{devstack.free_port()}/hook"
    stack.start_worker(WEBHOOK_TIMEOUT_S="1")
    ids = {"hook-down": down, "hook-slow": slow.url, "hook-500": failing.url}
    for job_id, url in ids.items():
        stack.push({"id": job_id, "songhash": songhash, "stems": ["vocals"],
                    "callback": {"url": url}})
    try:
        records = [stack.wait_for(job_id) for job_id in ids]
    finally:
        slow.close()
        failing.close()
    assert [r["state"] for r in records] == ["done"] * 3, records
    assert len(failing.calls) == 1 and len(slow.calls) == 1  # sent once, never retried
    logs = stack.worker_logs()
    assert "webhook to" in logs and "HTTP 500" in logs
    row = account(stack, "webhook down / slow / HTTP 500", 1, list(ids))
    report(row)
    assert (row.done, row.lost, row.stuck) == (3, 0, 0)


def test_temp_dir_full(stack, make_song, tmp_path, report):
    full = tmp_path / "tiny"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(full)],
                             capture_output=True, check=False).returncode == 0
    if not mounted:  # no mount rights: a temp dir that cannot be created at all
        full.rmdir()
        full.write_text("not a directory")
    try:
        songhash = stack.upload_song(make_song(seconds=3))
        worker = stack.start_worker(WORK_DIR=str(full), MAX_ATTEMPTS="2")
        stack.push({"id": "disk-full", "songhash": songhash})
        record = stack.wait_for("disk-full", timeout_s=120)
        assert record["state"] == "failed" and record["attempts"] == 2, record
        expected = "No space left on device" if mounted else "cannot create a temp dir"
        assert expected in record["error"], record
        assert worker.poll() is None, "the worker must keep serving"
    finally:
        if mounted:
            subprocess.run(["umount", str(full)], check=False)
    row = account(stack, "temp dir full" if mounted else "temp dir not creatable", 1,
                  ["disk-full"])
    report(row)
    assert (row.failed_with_reason, row.lost, row.stuck) == (1, 0, 0)


def _says_after_start(worker: subprocess.Popen, job_id: str) -> bool:
    """Whether a worker logged something about ``job_id`` besides starting it."""
    lines = worker.log_path.read_text().splitlines()  # type: ignore[attr-defined]
    return any(f"job {job_id}: " in line and "started" not in line for line in lines)


class StatusWatch:
    """Polls a job's status from a thread, as a client would, and counts regressions: a read
    that is not ``done`` after one that was."""

    def __init__(self, stack, job_id: str) -> None:
        self.stack, self.job_id = stack, job_id
        self.seen_done = False
        self.after_done: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(0.02):
            state = (self.stack.status(self.job_id) or {}).get("state")
            if state == "done":
                self.seen_done = True
            elif self.seen_done:
                self.after_done.append(str(state))

    def stop(self) -> list[str]:
        self.stopped.set()
        self.thread.join()
        return self.after_done


def test_worker_frozen_past_its_heartbeat_then_thawed_and_stopped(stack, song, webhook, report):
    """A worker frozen (SIGSTOP, Demucs and all) past its heartbeat: another redelivers and
    finishes the job; the frozen one's Demucs is killed, it is thawed, then SIGTERMed. It must
    write nothing about the job it lost: no second run, no give-back, no status regression,
    one final webhook."""
    songhash = stack.upload_song(song)
    trials = max(5, TRIALS)
    ids, run_twice, regressed, extra_hooks = [], 0, 0, 0
    for trial in range(trials):
        job_id = f"frozen-{trial}"
        ids.append(job_id)
        frozen = stack.start_worker(HEARTBEAT_TTL_S="3", BATCH_MAX="1")
        stack.push({"id": job_id, "songhash": songhash, "stems": STEMS,
                    "callback": {"url": webhook.url, "data": {"trial": trial}}})
        stack.wait_for_stage(job_id, "separating")
        demucs = _demucs_child(frozen)
        paused = psutil.Process(frozen.pid)
        paused.suspend()
        demucs.suspend()
        rescuer = stack.start_worker(HEARTBEAT_TTL_S="3", BATCH_MAX="1")
        watch = StatusWatch(stack, job_id)
        stack.wait_for(job_id, ("done",), timeout_s=120)
        demucs.kill()  # the memory pressure that froze the node
        paused.resume()
        wait_until(lambda held=frozen, j=job_id: _says_after_start(held, j), timeout_s=60,
                   message=stack.worker_logs)  # the thawed worker settled what it held
        frozen.send_signal(signal.SIGTERM)  # as in a rollout
        assert frozen.wait(timeout=60) == 0, stack.worker_logs()
        rescuer.send_signal(signal.SIGTERM)
        assert rescuer.wait(timeout=60) == 0, stack.worker_logs()
        regressed += bool(watch.stop()) or stack.status(job_id)["state"] != "done"
        starts = sum(p.log_path.read_text().count(f"job {job_id}: attempt ")
                     for p in (frozen, rescuer))
        run_twice += starts > 2 or stack.status(job_id)["attempts"] != 2
        finals = [json.loads(body) for body, _ in webhook.calls]
        extra_hooks += sum(1 for f in finals if f["id"] == job_id) != 1
    row = account(stack, "worker frozen past its heartbeat, thawed", trials, ids, webhook)
    row.run_twice, row.regressed = run_twice, regressed
    report(row)
    assert (row.done, row.lost, row.stuck, row.duplicated, run_twice, regressed,
            extra_hooks) == (trials, 0, 0, 0, 0, 0, 0), (row, extra_hooks)
    assert stack.redis.llen(Keys.DEAD_LETTER) == 0
    assert "redelivered to another worker" in stack.worker_logs()
