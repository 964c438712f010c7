"""The harness every bench part shares: a real Redis, S3 and worker (``Bench``), peak RSS of a
process tree, CPU seconds, and the batching figure (run by ``bench.run`` and ``bench.warm``)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import redis
from minio import Minio

import devstack
from common.contract import Keys, input_key, sha256_file
from common.settings import Settings
from common.status import StatusStore

RESULTS = Path(__file__).resolve().parent / "results"
TINY = "demucs_unittest"
KARAOKE = ["vocals", "instrumental"]


class PeakRss:
    """Peak memory of a process and its descendants, sampled every 200 ms.

    Each sample sums the live processes' own high-water marks (``VmHWM``, kept by the kernel),
    so a short peak between two samples is not missed: the figure is the tree's peak or a little
    above it, never below — the safe side for sizing a pod. Sparse enough to cost ~1% of a core.
    """

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak_bytes = 0
        self.root_at_peak_bytes = 0  # the process itself, in the sample that set the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _high_water_bytes(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                tree = [self.process, *self.process.children(recursive=True)]
            except psutil.Error:
                return
            marks = [self._high_water_bytes(proc.pid) for proc in tree]
            if sum(marks) > self.peak_bytes:
                self.peak_bytes, self.root_at_peak_bytes = sum(marks), marks[0]

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def children_at_peak_mb(self) -> float:
        """The descendants' part of the peak (for the worker: its Demucs child)."""
        return (self.peak_bytes - self.root_at_peak_bytes) / 2**20


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's children that have ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_s(process: psutil.Process) -> float:
    """CPU seconds of ``process``, of its children that have ended (Demucs calls) and of those
    alive (a warm Demucs child)."""
    times = process.cpu_times()
    live = 0.0
    for child in process.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:  # ended meanwhile: counted in children_* once reaped
            continue
        live += child_times.user + child_times.system
    return times.user + times.system + times.children_user + times.children_system + live


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (every process, and time stolen by the
    hypervisor for other guests)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + \
        getattr(t, "steal", 0)


def others_cores(busy_before_s: float, own_cpu_s: float, wall_s: float) -> float:
    """How many cores, on average over ``wall_s``, went to everything but the measured side
    (other sessions on a shared machine): the load the figure was taken under."""
    return round(max(0.0, busy_cpu_s() - busy_before_s - own_cpu_s) / wall_s, 2)


class Bench:
    """The services, and helpers to run the raw CLI and the pipeline on them."""

    def __init__(self, root: Path, model: str, repo: str | None, threads: int) -> None:
        self.root = root
        self.model, self.repo, self.threads = model, repo, threads
        self.redis_service = devstack.start_redis(root / "redis")
        self.s3_service = devstack.start_s3(root / "s3")
        self.redis = redis.Redis(port=self.redis_service.port)
        self.minio = Minio(f"127.0.0.1:{self.s3_service.port}", access_key=devstack.LOCAL_DEV_KEY,
                           secret_key=devstack.LOCAL_DEV_KEY, secure=False)
        self.minio.make_bucket("demucs-bucket")
        self.status = StatusStore(self.redis, 3600)

    def close(self) -> None:
        self.redis_service.stop()
        self.s3_service.stop()

    def env(self, model: str, repo: str | None, **overrides: str) -> dict[str, str]:
        settings = {"DEMUCS_MODEL": model, "DEMUCS_THREADS": str(self.threads),
                    "DEMUCS_DEVICE": os.environ.get("BENCH_DEVICE", "cpu"), "METRICS_PORT": "0",
                    "POLL_S": "0.1", "TMPDIR": str(self.root), "MAX_DURATION_S": "7200",
                    "JOB_TIMEOUT_S": "7200", **overrides}
        env = devstack.service_env(self.redis_service.port, self.s3_service.port, **settings)
        if repo:
            env["DEMUCS_REPO"] = repo
        return env

    def raw_cli(self, song: Path | list[Path], model: str, repo: str | None,
                flags: tuple[str, ...] = ("--mp3", "--mp3-bitrate", "320"),
                out: Path | None = None, **env_vars: str) -> dict[str, float]:
        """The baseline: Demucs' own CLI writing MP3 stems (``flags``), as a user would run it
        (in this process's environment, plus ``env_vars``)."""
        out = out or Path(tempfile.mkdtemp(dir=self.root))
        command = [sys.executable, "-m", "demucs", "-n", model, "-d",
                   os.environ.get("BENCH_DEVICE", "cpu"), *flags,
                   "--shifts", str(Settings.from_env().demucs_shifts),  # the worker's
                   "-o", str(out), *map(str, song if isinstance(song, list) else [song])]
        if repo:
            command += ["--repo", repo]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads), **env_vars}
        started, cpu_before_s, busy_s = time.monotonic(), _children_cpu_s(), busy_cpu_s()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        with PeakRss(process.pid) as rss:
            code = process.wait()
        if code != 0:
            raise RuntimeError(f"raw Demucs CLI failed with code {code}: {command}")
        wall_s, cpu_s = time.monotonic() - started, _children_cpu_s() - cpu_before_s
        return {"wall_s": wall_s, "peak_rss_mb": rss.peak_mb, "cpu_s": cpu_s,
                "others_cores": others_cores(busy_s, cpu_s, wall_s)}

    def start_worker(self, model: str, repo: str | None, **overrides: str) -> subprocess.Popen:
        process = devstack.start_worker(self.env(model, repo, **overrides),
                                        self.root / "worker.log")
        deadline = time.monotonic() + 60
        while not list(self.redis.scan_iter(match="worker:*:heartbeat")):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not start: see " + str(self.root / "worker.log"))
            time.sleep(0.1)
        return process

    def upload(self, song: Path) -> str:
        songhash = sha256_file(song)
        self.minio.fput_object("demucs-bucket", input_key(songhash), str(song))
        return songhash

    def run_jobs(self, songs: list[Path], worker: subprocess.Popen,
                 stems: list[str] | None = None) -> tuple[float, list[dict]]:
        """Push one job per song at once (for ``stems``, default all); wait for all; return
        (wall_s, status records)."""
        hashes = [self.upload(song) for song in songs]
        ids = [f"bench-{time.monotonic_ns()}-{i}" for i in range(len(songs))]
        started = time.monotonic()
        pushed_at = time.time()
        for job_id, songhash in zip(ids, hashes, strict=True):
            job = {"id": job_id, "songhash": songhash, **({"stems": stems} if stems else {})}
            self.redis.lpush(Keys.QUEUE, json.dumps(job))
        records: dict[str, dict] = {}
        while len(records) < len(ids):
            for job_id in ids:
                record = self.status.get(job_id)
                if record and record["state"] in ("done", "failed"):
                    if record["state"] == "failed":
                        raise RuntimeError(f"bench job failed: {record['error']}")
                    records[job_id] = record
            if worker.poll() is not None:
                raise RuntimeError("the worker exited during the benchmark")
            time.sleep(0.25)
        wall_s = time.monotonic() - started
        for record in records.values():
            record["queue_wait_s"] = (record["started_at"] or pushed_at) - pushed_at
        return wall_s, [records[i] for i in ids]


def bench_batch(bench: Bench, clips: list[Path], model: str, repo: str | None,
                batch_max: int, **overrides: str) -> dict[str, Any]:
    """Songs per minute for ``clips`` pushed at once, one job per Demucs run vs batched; the
    worker's settings ``overrides`` (e.g. ``DEMUCS_RUNNER``) in both."""
    per_mode: dict[str, float] = {}
    cpu_s: dict[str, float] = {}
    others: dict[str, float] = {}
    for mode, size in (("one_cli_per_job", 1), ("batched", batch_max)):
        worker = bench.start_worker(model, repo, BATCH_MAX=str(size), **overrides)
        try:
            cpu_before_s, busy_s = tree_cpu_s(psutil.Process(worker.pid)), busy_cpu_s()
            wall_s, _ = bench.run_jobs(clips, worker)
            cpu_s[mode] = tree_cpu_s(psutil.Process(worker.pid)) - cpu_before_s
            others[mode] = others_cores(busy_s, cpu_s[mode], wall_s)
        finally:
            devstack.stop(worker)
        per_mode[mode] = len(clips) / wall_s * 60
        print(f"  batch {model} {mode}: {per_mode[mode]:.1f} songs/min, CPU {cpu_s[mode]:.1f} s",
              flush=True)
    return {"clips": len(clips), "batch_max": batch_max, "settings": overrides,
            "songs_per_min": {k: round(v, 2) for k, v in per_mode.items()},
            "gain": round(per_mode["batched"] / per_mode["one_cli_per_job"], 2),
            "cpu_s": {k: round(v, 1) for k, v in cpu_s.items()},
            "cpu_gain": round(cpu_s["one_cli_per_job"] / cpu_s["batched"], 2),
            "others_cores": others,
            "raw_cli": raw_cli_batching(bench, clips[:batch_max], model, repo)}


def raw_cli_batching(bench: Bench, clips: list[Path], model: str,
                     repo: str | None) -> dict[str, float]:
    """The most batching can give: the raw CLI on one clip vs ``clips`` in one call, split
    into a start-up (imports, model load) paid once per call and a separation per clip, in
    wall and in CPU seconds (the start-up runs on one core, the separation on all)."""
    one, every = bench.raw_cli(clips[0], model, repo), bench.raw_cli(clips, model, repo)
    result: dict[str, float] = {}
    for unit, key in (("s", "wall_s"), ("cpu_s", "cpu_s")):
        one_s, all_s = one[key], every[key]
        per_clip_s = (all_s - one_s) / (len(clips) - 1)
        cpu = "" if unit == "s" else "cpu_"
        result.update({f"one_clip_{unit}": round(one_s, 2),
                       f"{len(clips)}_clips_one_call_{unit}": round(all_s, 2),
                       f"start_up_{unit}": round(one_s - per_clip_s, 2),
                       f"per_clip_{unit}": round(per_clip_s, 2),
                       f"{cpu}gain": round(len(clips) * one_s / all_s, 2)})
    result["others_cores"] = round((one["others_cores"] * one["wall_s"] + every["others_cores"]
                                    * every["wall_s"]) / (one["wall_s"] + every["wall_s"]), 2)
    print(f"  batch {model} raw CLI: {result}", flush=True)
    return result
