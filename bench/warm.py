"""``make bench`` part ``warm``: the service with its warm Demucs child against the raw CLI.

1. one job at a time (nothing to batch), 7 s and 60 s clips, the real-size model
   (``bench.model``): the raw ``python -m demucs`` CLI (MP3 stems, as a user runs it), the
   service with ``DEMUCS_RUNNER=cli`` and the service with the warm child (its first job,
   which starts the child, and then the steady state), each run ``--reps`` times, taken in
   turn so that the machine's load falls on all alike; medians and ratios to the raw CLI.
2. memory: the resident memory (RSS) of the worker and of its warm child between jobs, with
   the model kept, and the peak of both during the 60 s job.
3. batching with the warm child: songs per minute for 8 short clips, ``BATCH_MAX=1`` vs 4
   (``bench.harness.bench_batch``), on ``demucs_unittest`` and on the real-size model.

Figures go to ``bench/results/warm.json``; the load other processes put on the machine during
each measurement is recorded beside it (``others_cores``).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

import devstack
from bench.harness import TINY, Bench, PeakRss, bench_batch, busy_cpu_s, others_cores, tree_cpu_s

SIDES = ("raw_cli", "service_cli", "service_warm")


def _warm_child(worker: subprocess.Popen) -> psutil.Process | None:
    for child in psutil.Process(worker.pid).children(recursive=True):
        if "worker.demucs.warm_child" in child.cmdline():
            return child
    return None


def _rss_mb(process: psutil.Process | None) -> float:
    return round(process.memory_info().rss / 2**20) if process is not None else 0.0


class Service:
    """A worker of one runner, kept up across the runs of a clip."""

    def __init__(self, bench: Bench, runner: str) -> None:
        self.bench = bench
        self.worker = bench.start_worker(bench.model, bench.repo, BATCH_MAX="1",
                                         CHUNK_OVER_S="0", DEMUCS_RUNNER=runner)

    def job(self, song: Path) -> dict[str, Any]:
        process = psutil.Process(self.worker.pid)
        cpu_before_s, busy_s = tree_cpu_s(process), busy_cpu_s()
        with PeakRss(self.worker.pid) as rss:
            wall_s, (record,) = self.bench.run_jobs([song], self.worker)
        cpu_s = tree_cpu_s(process) - cpu_before_s  # only to subtract from the machine's
        return {"wall_s": wall_s, "peak_rss_mb": rss.peak_mb,
                "others_cores": others_cores(busy_s, cpu_s, wall_s),
                "demucs_s": record["timings"].get("demucs", 0.0), "timings": record["timings"]}

    def resident(self) -> dict[str, float]:
        """RSS of the worker and its warm child now (between jobs)."""
        time.sleep(1.0)  # let the child hand back freed memory after its ``done``
        worker = psutil.Process(self.worker.pid)
        return {"worker_mb": _rss_mb(worker), "warm_child_mb": _rss_mb(_warm_child(self.worker))}

    def stop(self) -> None:
        devstack.stop(self.worker)


def one_at_a_time(bench: Bench, song: Path, reps: int) -> dict[str, Any]:
    """The three sides on ``song``, in turn, ``reps`` times each (plus the warm child's first
    job, which starts it)."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    warm, cli = Service(bench, "warm"), Service(bench, "cli")
    try:
        first = warm.job(song)
        for _ in range(reps):
            raw = bench.raw_cli(song, bench.model, bench.repo)
            runs["raw_cli"].append(raw)
            runs["service_cli"].append(cli.job(song))
            runs["service_warm"].append(warm.job(song))
        resident = warm.resident()
    finally:
        warm.stop()
        cli.stop()
    median = {side: statistics.median(r["wall_s"] for r in rows) for side, rows in runs.items()}
    result: dict[str, Any] = {
        "reps": reps,
        "wall_s": {side: round(v, 2) for side, v in median.items()},
        "ratio_to_raw_cli": {side: round(v / median["raw_cli"], 3) for side, v in median.items()},
        "warm_first_job_s": round(first["wall_s"], 2),
        "breakdown_s": {side: _median_timings(rows) for side, rows in runs.items()
                        if side != "raw_cli"},
        "peak_rss_mb": {side: round(max(r["peak_rss_mb"] for r in rows))
                        for side, rows in runs.items()},
        "resident_between_jobs_mb": resident,
        "others_cores": {side: round(statistics.mean(r["others_cores"] for r in rows), 2)
                         for side, rows in runs.items()},
        "each_wall_s": {side: [round(r["wall_s"], 2) for r in rows] for side, rows in runs.items()},
    }
    print(f"  warm {song.name}: {result['wall_s']} -> {result['ratio_to_raw_cli']}; between "
          f"jobs {resident}; others {result['others_cores']}", flush=True)
    return result


def _median_timings(rows: list[dict[str, Any]]) -> dict[str, float]:
    stages = rows[0]["timings"]
    return {k: round(statistics.median(r["timings"].get(k, 0.0) for r in rows), 2)
            for k in stages}


def bench_warm(bench: Bench, songs: dict[str, Path], clips: list[Path], reps: dict[str, int],
               batch_real_model: bool) -> dict[str, Any]:
    """The one-at-a-time figure for each of ``songs``, then (unless ``clips`` is empty) the
    batching table with the warm child."""
    report: dict[str, Any] = {"one_at_a_time": {label: one_at_a_time(bench, song, reps[label])
                                                for label, song in songs.items()}}
    if not clips:
        return report
    report["batch_warm"] = {TINY: bench_batch(bench, clips, TINY, None, 4,
                                              DEMUCS_RUNNER="warm")}
    if batch_real_model:
        report["batch_warm"][bench.model] = bench_batch(bench, clips, bench.model, bench.repo,
                                                        4, DEMUCS_RUNNER="warm")
    return report


def demucs_cpu(song: Path, model: str, repo: str | None, reps: int) -> dict[str, Any]:
    """CPU seconds of the Demucs step alone on one thread (no OpenMP threads spinning for a
    busy machine's cores, so the figure hardly depends on the load): a CLI call
    (``run_demucs``, WAV stems) against a request to a warm child that already separated once,
    taken in turn; and the stems compared."""
    import threading

    from worker.demucs.cli import DemucsOptions, allocator_library, run_demucs
    from worker.demucs.warm import WarmDemucs

    options = DemucsOptions(model=model, device="cpu", threads=1, shifts=0, repo=repo,
                            preload=allocator_library("tcmalloc"))
    warm = WarmDemucs(budget_mb=1024)
    root = song.parent
    cli_s: list[float] = []
    warm_s: list[float] = []
    try:
        warm.run(options, root / "cpu-warm-first", [song], 3600, threading.Event(),
                 lambda i, f: None)
        for rep in range(reps):
            before = psutil.Process().cpu_times()
            run = run_demucs(options, root / f"cpu-cli-{rep}", [song], 3600, threading.Event(),
                             lambda i, f: None)
            after = psutil.Process().cpu_times()
            assert run.returncode == 0, run.output_tail
            cli_s.append(after.children_user + after.children_system
                         - before.children_user - before.children_system)
            child = psutil.Process(warm.pid)
            start = child.cpu_times()
            run = warm.run(options, root / f"cpu-warm-{rep}", [song], 3600, threading.Event(),
                           lambda i, f: None)
            end = child.cpu_times()
            assert run.returncode == 0, run.output_tail
            warm_s.append(end.user + end.system - start.user - start.system)
        same = all((root / f"cpu-cli-{r}").joinpath(p.relative_to(root / f"cpu-warm-{r}"))
                   .read_bytes() == p.read_bytes()
                   for r in range(reps) for p in (root / f"cpu-warm-{r}").rglob("*.wav"))
    finally:
        warm.close()
    result = {"reps": reps, "threads": 1, "cli_cpu_s": [round(v, 2) for v in cli_s],
              "warm_cpu_s": [round(v, 2) for v in warm_s],
              "ratio": round(statistics.median(warm_s) / statistics.median(cli_s), 3),
              "stems_identical": same}
    print(f"  warm demucs CPU, 1 thread, {song.name}: {result}", flush=True)
    return result
