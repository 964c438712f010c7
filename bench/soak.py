"""``make soak``: a mixed workload through REST and Redis while faults hit the workers, their
Demucs and their connections, then a checker that reads the whole history.

Starts its own stack on loopback: redis-server, the S3 server, the REST service and
``--workers`` workers (the tiny ``demucs_unittest`` model), the workers reaching Redis and S3
through TCP proxies that can be cut. For ``--minutes`` it submits requests — normal and high
priority (in bursts, so the high lane has normal jobs to overtake), MP3/FLAC/WAV, karaoke,
long songs (chunked), duplicates sent while the first is queued or running (joins), cancels at
every stage, invalid jobs pushed straight onto Redis — each with a callback to a receiver that
verifies its Standard Webhooks signature. Every few seconds a fault: SIGKILL of a worker (a
new one starts), SIGKILL of a Demucs child, a worker and its Demucs frozen (SIGSTOP) past
the heartbeat then thawed, storage cut, Redis cut. Every status is polled each second.

The checker: every request ends (done, failed or cancelled as its kind allows) exactly once
— no status read after a final one differs from it; one final webhook per request, signed,
naming that state; tracks stored for done, none for cancelled; no temp dir and no processing
entry left; no Redis key without an expiry but the documented ones; high jobs overtake the
normal ones they were queued behind. A table to stdout; ``--report`` writes it as JSON; the
exit status is 1 on any violation.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
import requests
from minio import Minio

import devstack
from common.contract import Keys
from common.queue import QUEUE_KEYS
from common.status import StatusStore
from common.webhook import verify_delivery
from devstack.synth import write_song
from devstack.webhooks import WebhookReceiver

FINAL = ("done", "failed", "cancelled")
SECRET = "soak-webhook-secret"
KINDS = ("normal", "high", "flac", "wav", "karaoke", "long", "duplicate", "cancel", "invalid")
PERSISTENT_KEYS = {*QUEUE_KEYS, Keys.WORKERS, Keys.DEAD_LETTER, Keys.LOGGING,
                   Keys.LOGGING_BYTES}
"""The keys docs/reliability.md documents as kept without an expiry (the queue, the registry of
workers, dead letters, the log list)."""
WORKER_ENV = {"DEMUCS_MODEL": "demucs_unittest", "DEMUCS_SHIFTS": "0", "HEARTBEAT_TTL_S": "3",
              "POLL_S": "0.3", "BATCH_MAX": "2", "MAX_ATTEMPTS": "5", "JOB_TIMEOUT_S": "90",
              "SHUTDOWN_GRACE_S": "10", "CHUNK_OVER_S": "10", "CHUNK_S": "8",
              "CHUNK_OVERLAP_S": "2", "MODEL_SEGMENT_S": "0", "OUTAGE_BACKOFF_MAX_S": "4",
              "WEBHOOK_SECRET": SECRET, "HF_HUB_OFFLINE": "1", "RATE_LIMIT_PER_MIN": "0",
              "MAX_UPLOADS_PER_CLIENT": "8", "METRICS_PORT": "0"}


@dataclass
class Request:
    """One request sent: its kind, the job id it was answered with, what it may end as."""

    ref: str
    kind: str
    priority: str
    job_id: str = ""
    sent_at: float = 0.0
    may_end: tuple[str, ...] = ("done",)


@dataclass
class Report:
    minutes: float
    workers: int
    requests: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    ended: dict[str, int] = field(default_factory=dict)
    overtakes: str = ""
    violations: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, tmp: Path, minutes: float, workers: int, seed: int,
                 fault_every_s: float = 12.0) -> None:
        self.tmp, self.minutes, self.rng = tmp, minutes, random.Random(seed)
        self.worker_logs: dict[int, Path] = {}
        self.fault_every_s = fault_every_s
        self.redis_service = devstack.start_redis(tmp / "redis")
        self.s3_service = devstack.start_s3(tmp / "s3")
        self.redis_proxy = devstack.TcpProxy(self.redis_service.port)
        self.s3_proxy = devstack.TcpProxy(self.s3_service.port)
        self.work_dir = tmp / "work"
        self.work_dir.mkdir()
        base = devstack.service_env(self.redis_service.port, self.s3_service.port,
                                    QUEUE_BUCKET="soak-in", OUTPUT_BUCKET="soak-out",
                                    **WORKER_ENV)
        self.worker_env = {**base, "REDIS_PORT": str(self.redis_proxy.port),
                           "MINIO_ENDPOINT": f"127.0.0.1:{self.s3_proxy.port}",
                           "WORK_DIR": str(self.work_dir), "TMPDIR": str(self.work_dir)}
        self.rest = devstack.start_rest(base, devstack.free_port(), tmp / "rest.log")
        self.url = f"http://127.0.0.1:{self.rest.port}"
        self.redis = redis.Redis(port=self.redis_service.port)
        self.status = StatusStore(self.redis, 3600)
        self.minio = Minio(f"127.0.0.1:{self.s3_service.port}", access_key=devstack.LOCAL_DEV_KEY,
                           secret_key=devstack.LOCAL_DEV_KEY, secure=False)
        self.receiver = WebhookReceiver()
        self.workers = [self.start_worker() for _ in range(workers)]
        self.songs = [write_song(tmp / f"song{i}.mp3", seconds=2.0 + i % 3, seed=i)
                      for i in range(12)]
        self.long_song = write_song(tmp / "long.mp3", seconds=14, seed=99)
        self.requests: list[Request] = []
        self.seen: dict[str, list[tuple[float, str]]] = {}  # job id -> (time, state) changes
        self.regressions: list[str] = []
        self.report = Report(minutes, workers)
        self.stopping = threading.Event()

    # -- the stack ----------------------------------------------------------------------------
    def start_worker(self) -> subprocess.Popen:
        self.started = getattr(self, "started", 0) + 1
        log_path = self.tmp / f"worker-{self.started}.log"
        worker = devstack.start_worker(self.worker_env, log_path, cwd=self.tmp)
        self.worker_logs[worker.pid] = log_path
        return worker

    def why_running(self, worker: subprocess.Popen) -> str:
        """What a worker that outlived its SIGTERM was doing: its and its children's states
        (``stopped`` would be a freeze never thawed) and the last lines of its log."""
        try:
            states = [f"{p.pid} {p.status()}" for p in
                      (psutil.Process(worker.pid), *psutil.Process(worker.pid).children(True))]
        except psutil.Error as error:
            states = [str(error)]
        lines = self.worker_logs[worker.pid].read_text(errors="replace").splitlines()[-12:]
        return "; ".join(states) + "\n      " + "\n      ".join(lines)

    def close(self) -> None:
        for worker in self.workers:
            devstack.stop(worker, timeout_s=30)
        self.rest.stop()
        self.receiver.close()
        self.redis_service.stop()
        self.s3_service.stop()

    # -- the workload -------------------------------------------------------------------------
    def submit(self, kind: str) -> None:
        ref = f"r{len(self.requests)}"
        priority = "high" if kind == "high" else "normal"
        request = Request(ref, kind, priority, sent_at=time.monotonic())
        if kind == "invalid":  # straight onto Redis: refused by the worker, recorded
            request.job_id, request.may_end = f"bad-{ref}", ("failed",)
            self.redis.lpush(Keys.QUEUE, json.dumps({"id": request.job_id, "songhash": "zz"}))
            self.requests.append(request)
            return
        song = self.long_song if kind == "long" else self.rng.choice(self.songs)
        if kind in ("cancel", "duplicate"):  # content of its own: no other request joins it
            song = write_song(self.tmp / f"{ref}.mp3", seconds=3, seed=1000 + len(self.requests))
        body: dict[str, Any] = {"mp3": base64.b64encode(song.read_bytes()).decode(),
                                "priority": priority,
                                "callback": {"url": self.receiver.url, "data": {"ref": ref}}}
        if kind in ("flac", "wav"):
            body["format"] = kind
        if kind == "karaoke":
            body["stems"] = ["vocals", "instrumental"]
        if kind == "cancel":
            request.may_end = ("cancelled", "done")  # done: the cancel came too late
        for _ in range(30):
            answer = requests.post(f"{self.url}/apiv1/separate", json=body, timeout=60)
            if answer.status_code not in (429, 503):
                break
            time.sleep(1)
        if answer.status_code != 200:
            self.report.violations.append(f"{ref} ({kind}): HTTP {answer.status_code} "
                                          f"{answer.text[:200]}")
            return
        request.job_id = answer.json()["id"]
        self.requests.append(request)
        if kind == "duplicate":  # the same content again at once: it joins the first
            twin = Request(f"{ref}-twin", "duplicate", priority, sent_at=time.monotonic())
            body["callback"] = {"url": self.receiver.url, "data": {"ref": twin.ref}}
            again = requests.post(f"{self.url}/apiv1/separate", json=body, timeout=60)
            if again.status_code == 200:
                twin.job_id = again.json()["id"]
                self.requests.append(twin)
        if kind == "cancel":
            delay_s = self.rng.uniform(0, 6)
            threading.Timer(delay_s, self.cancel, (request,)).start()

    def cancel(self, request: Request) -> None:
        answer = requests.post(f"{self.url}/apiv1/cancel/{request.job_id}", timeout=30)
        if answer.status_code not in (200, 202, 409):
            self.report.violations.append(f"cancel {request.ref}: HTTP {answer.status_code}")

    def workload(self) -> None:
        deadline = time.monotonic() + self.minutes * 60
        while time.monotonic() < deadline:
            if self.rng.random() < 0.2:  # a burst of normal jobs, then high ones behind them
                for kind in ["normal"] * 3 + ["high"] * 2:
                    self.submit(kind)
            else:
                self.submit(self.rng.choice(KINDS))
            self.stopping.wait(self.rng.uniform(1.0, 4.0))

    # -- faults -------------------------------------------------------------------------------
    def faults(self) -> None:
        kinds = ["kill_worker", "kill_demucs", "freeze_worker", "storage_outage",
                 "redis_outage"]
        n = 0
        while not self.stopping.wait(self.fault_every_s):
            fault = kinds[n % len(kinds)]
            n += 1
            self.report.faults[fault] = self.report.faults.get(fault, 0) + 1
            try:
                getattr(self, fault)()
            except Exception as error:  # the soak goes on, and says so
                self.report.violations.append(f"fault {fault} could not be injected: {error}")

    def kill_worker(self) -> None:
        victim = self.rng.randrange(len(self.workers))
        self.workers[victim].kill()
        self.workers[victim].wait()
        self.workers[victim] = self.start_worker()

    def demucs_children(self, worker: subprocess.Popen) -> list[psutil.Process]:
        try:
            return [c for c in psutil.Process(worker.pid).children(recursive=True)
                    if "demucs" in " ".join(c.cmdline())]
        except psutil.Error:
            return []

    def kill_demucs(self) -> None:
        for child in [c for w in self.workers for c in self.demucs_children(w)][:1]:
            child.kill()

    def freeze_worker(self) -> None:
        worker = self.rng.choice(self.workers)
        frozen = [psutil.Process(worker.pid), *self.demucs_children(worker)]
        for process in frozen:
            process.suspend()
        self.stopping.wait(float(WORKER_ENV["HEARTBEAT_TTL_S"]) + 3)  # past its heartbeat
        for process in frozen:
            try:
                process.resume()
            except psutil.Error:
                pass

    def storage_outage(self) -> None:
        self.s3_proxy.cut()
        time.sleep(8)
        self.s3_proxy.restore()

    def redis_outage(self) -> None:
        self.redis_proxy.cut()
        time.sleep(5)
        self.redis_proxy.restore()

    # -- the observer -------------------------------------------------------------------------
    def poll(self) -> None:
        while not self.stopping.wait(1.0):
            self.poll_once()

    def poll_once(self) -> None:
        ids = sorted({r.job_id for r in self.requests if r.job_id})
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(Keys.job(job_id), "state")
            states = pipe.execute()
        now = time.monotonic()
        for job_id, raw in zip(ids, states, strict=True):
            state = raw.decode() if raw else "absent"
            history = self.seen.setdefault(job_id, [])
            if history and history[-1][1] == state:
                continue
            if history and history[-1][1] in FINAL:
                self.regressions.append(f"{job_id}: {history[-1][1]} then {state}")
            history.append((now, state))

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> Report:
        threads = [threading.Thread(target=f, daemon=True) for f in (self.poll, self.faults)]
        for thread in threads:
            thread.start()
        self.workload()
        self.stopping.set()  # no more faults; what was sent is drained
        for thread in threads:
            thread.join()
        self.drain()
        self.check()
        return self.report

    def drain(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll_once()
            if all(self.seen.get(r.job_id, [(0, "")])[-1][1] in FINAL for r in self.requests):
                break
            time.sleep(1)
        # the temp dirs of the killed workers: removed by the live ones' heartbeats
        while time.monotonic() < deadline and list(self.work_dir.glob("demucs-batch-*")):
            time.sleep(1)
        time.sleep(2)  # webhooks of the last jobs are sent before their status settles
        for worker in self.workers:
            worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.report.violations.append(f"worker {worker.pid} did not stop on SIGTERM: "
                                              f"{self.why_running(worker)}")
        self.poll_once()

    def check(self) -> None:
        report, violations = self.report, self.report.violations
        violations += [f"status regression: {r}" for r in self.regressions]
        webhooks: dict[str, list[tuple[str, bool]]] = {}
        for body, headers in self.receiver.calls:
            payload = json.loads(body)
            ref = str((payload.get("data") or {}).get("ref", ""))
            webhooks.setdefault(ref, []).append((str(payload.get("status")),
                                                 verify_delivery(body, headers, SECRET)))
        for request in self.requests:
            report.requests[request.kind] = report.requests.get(request.kind, 0) + 1
            record = self.status.get(request.job_id) or {}
            state = record.get("state", "absent")
            report.ended[state] = report.ended.get(state, 0) + 1
            if state not in request.may_end:
                violations.append(f"{request.ref} ({request.kind}, job {request.job_id}): "
                                  f"{state}, expected {'/'.join(request.may_end)}: "
                                  f"{str(record.get('error', ''))[:200]}")
            if request.kind != "invalid":
                finals = [(s, v) for s, v in webhooks.get(request.ref, []) if s in FINAL]
                if len(finals) != 1 or finals[0] != (state, True):
                    violations.append(f"{request.ref}: final webhooks {finals}, state {state}")
            tracks = record.get("tracks") or {}
            if state == "done":
                for key in tracks.values():
                    try:
                        self.minio.stat_object("soak-out", key)
                    except Exception:
                        violations.append(f"{request.ref}: done without its track {key}")
            elif state == "cancelled" and tracks:
                violations.append(f"{request.ref}: cancelled with tracks {tracks}")
        left = list(self.work_dir.glob("demucs-*"))
        if left:
            violations.append(f"temp dirs left: {[p.name for p in left]}")
        held = [k.decode() for k in self.redis.scan_iter(Keys.PROCESSING_PREFIX + "*")
                if self.redis.llen(k)]
        if held:
            violations.append(f"processing entries left: {held}")
        forever = sorted({_shape(k.decode()) for k in self.redis.scan_iter("*")
                          if k.decode() not in PERSISTENT_KEYS and self.redis.ttl(k) == -1})
        if forever:
            violations.append(f"keys without an expiry: {forever}")
        self.check_overtakes()

    def check_overtakes(self) -> None:
        """High jobs sent while a normal one (sent before) still waited: how many ran first."""
        def first(job_id: str, state: str) -> float | None:
            return next((t for t, s in self.seen.get(job_id, []) if s == state), None)

        plain = [r for r in self.requests if r.kind in ("normal", "high")]
        pairs = overtook = 0
        for high in (r for r in plain if r.priority == "high"):
            for normal in (r for r in plain if r.priority == "normal"):
                started_n, started_h = first(normal.job_id, "running"), \
                    first(high.job_id, "running")
                if normal.sent_at < high.sent_at and started_n and started_h and \
                        started_n > high.sent_at + 1.0:  # still waiting when the high one came
                    pairs += 1
                    overtook += started_h <= started_n
        self.report.overtakes = f"{overtook}/{pairs}"
        if pairs >= 5 and overtook < pairs / 2:
            self.report.violations.append(f"high jobs overtook the normal ones they were "
                                          f"queued behind {overtook} of {pairs} times")


def _shape(key: str) -> str:
    """A key with its ids and hashes replaced, so a table lists each kind once."""
    return ":".join("<id>" if any(c.isdigit() for c in part) and len(part) > 6 else part
                    for part in key.split(":"))


def print_report(report: Report) -> None:
    print(f"soak: {report.minutes:g} min, {report.workers} workers")
    print(f"  requests  {sum(report.requests.values()):>4}  " +
          ", ".join(f"{k} {v}" for k, v in sorted(report.requests.items())))
    print("  ended     " + ", ".join(f"{k} {v}" for k, v in sorted(report.ended.items())))
    print(f"  faults    {sum(report.faults.values()):>4}  " +
          ", ".join(f"{k} {v}" for k, v in sorted(report.faults.items())))
    print(f"  overtakes {report.overtakes} (high jobs that ran before a normal one queued "
          "ahead of them)")
    print(f"  violations {len(report.violations)}")
    for violation in report.violations[:50]:
        print(f"    - {violation}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "1")))
    parser.add_argument("--fault-every-s", type=float, default=12.0,
                        help="the pause between one fault's end and the next fault")
    parser.add_argument("--report", type=Path, help="write the report as JSON here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the state dir (services' and workers' logs) and say where")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    soak = Soak(tmp, args.minutes, args.workers, args.seed, args.fault_every_s)
    try:
        report = soak.run()
    finally:
        soak.close()
        if args.keep:
            print(f"state kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_report(report)
    if args.report:
        args.report.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
