"""``make bench``: the service's figures, each a ratio against a baseline taken in the same run.

1. overhead  end-to-end time (LPUSH → every track in S3 → status done) / the raw
             ``python -m demucs`` CLI on the same file, model and flags; with the stage breakdown.
2. batch     songs per minute for 8 short clips: one CLI per job (BATCH_MAX=1) vs batched.
3. memory    peak RSS of the worker's process tree for 1-, 3- and 5-minute songs.
4. ingest    20 concurrent 10 MB uploads to the REST API: p50/p95 latency, errors.
5. karaoke   a vocals + instrumental job on a bag shaped like ``htdemucs_ft`` (four real-size
             specialists, one-hot weights), LPUSH → tracks stored, vs the raw
             ``python -m demucs -n <bag> --two-stems vocals`` on the same 60 s clip: time, peak
             RSS, and the service's vocals against the raw CLI's (``--only karaoke``).
6. allocator the Demucs CLI on 60 s and 300 s songs with the system's malloc vs the allocator
             the worker preloads on the CPU (``DEMUCS_ALLOCATOR``, tcmalloc): time, CPU, peak
             RSS, stems compared.
7. warm      one job at a time on 7 s and 60 s clips: the service with its warm Demucs child vs
             the raw CLI (and the service running the CLI); the worker's and the child's memory
             between jobs; batching with the warm child (``bench/warm.py``; its own
             ``bench/results/warm.json``).

Models: the real-size random-weight model (bench/model.py) unless ``BENCH_MODEL`` (with
``DEMUCS_REPO``) names real weights, and the tiny ``demucs_unittest`` for the batch figure.
A table goes to stdout, JSON to ``bench/results/``. ``--quick`` runs small sizes only (a smoke
test of this script, not figures to quote).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import requests

import devstack
from bench.harness import (
    KARAOKE,
    RESULTS,
    TINY,
    Bench,
    PeakRss,
    bench_batch,
    busy_cpu_s,
    others_cores,
    tree_cpu_s,
)
from bench.measures import snr_db
from bench.model import (
    NAME,
    build_real_size_bag,
    build_real_size_model,
    build_specialist_bag,
    cache_dir,
)
from common.settings import Settings, available_cpus
from devstack.synth import write_song
from worker.demucs.cli import allocator_library
from worker.output.encode import mix_and_encode


def bench_overhead(bench: Bench, songs: dict[str, Path]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    worker = bench.start_worker(bench.model, bench.repo, BATCH_MAX="1", CHUNK_OVER_S="0")
    try:
        for label, song in songs.items():
            raw = bench.raw_cli(song, bench.model, bench.repo)
            with PeakRss(worker.pid) as rss:
                wall_s, (record,) = bench.run_jobs([song], worker)
            timings = record["timings"]
            results[label] = {
                "raw_cli_s": round(raw["wall_s"], 2), "pipeline_s": round(wall_s, 2),
                "ratio": round(wall_s / raw["wall_s"], 3),
                "raw_cli_peak_rss_mb": round(raw["peak_rss_mb"]),
                "pipeline_peak_rss_mb": round(rss.peak_mb),
                "breakdown_s": {"queue_wait": round(record["queue_wait_s"], 3),
                                **{k: round(v, 2) for k, v in timings.items()}},
            }
            print(f"  overhead {label}: raw {raw['wall_s']:.1f} s, pipeline {wall_s:.1f} s, "
                  f"ratio {wall_s / raw['wall_s']:.3f}", flush=True)
    finally:
        devstack.stop(worker)
    return results


def bench_memory(bench: Bench, songs: dict[str, Path]) -> dict[str, Any]:
    """Whole songs in one Demucs run (chunking off: bench/long_songs.py measures it)."""
    results: dict[str, Any] = {}
    worker = bench.start_worker(bench.model, bench.repo, BATCH_MAX="1", CHUNK_OVER_S="0")
    try:
        for label, song in songs.items():
            with PeakRss(worker.pid) as rss:
                wall_s, _ = bench.run_jobs([song], worker)
            results[label] = {"peak_rss_mb": round(rss.peak_mb), "wall_s": round(wall_s, 1)}
            print(f"  memory {label}: peak {rss.peak_mb:.0f} MB in {wall_s:.0f} s", flush=True)
    finally:
        devstack.stop(worker)
    minutes = sorted((float(k.rstrip("min")), v["peak_rss_mb"]) for k, v in results.items())
    if len(minutes) >= 2:
        (m0, r0), (m1, r1) = minutes[0], minutes[-1]
        results["slope_mb_per_min"] = round((r1 - r0) / (m1 - m0), 1)
    return results


def bench_ingest(bench: Bench, uploads: int, size_mb: float) -> dict[str, Any]:
    """Concurrent uploads to POST /apiv1/separate (songs are stored and queued, no worker).

    Baselines, same run: the same upload alone, and a raw S3 PUT of the same bytes.
    """
    port = devstack.free_port()
    # one bench process stands for many clients: the share per client is lifted
    env = bench.env(bench.model, bench.repo, MAX_INPUT_MB=str(size_mb * 2),
                    MAX_UPLOADS_PER_CLIENT=str(uploads))
    rest = devstack.start_rest(env, port, bench.root / "rest.log")
    song = bench.root / "ingest.mp3"
    seconds = size_mb * 2**20 * 8 / 320_000
    from devstack.synth import encode_mp3, synth_song
    song.write_bytes(encode_mp3(synth_song(seconds, seed=11), bitrate_kbps=320))
    body = song.read_bytes()

    def one(i: int) -> tuple[float, int]:
        data = body + i.to_bytes(4, "big")  # distinct songs: no dedup shortcut
        started = time.monotonic()
        response = requests.post(f"http://127.0.0.1:{port}/apiv1/separate",
                                 files={"file": (f"s{i}.mp3", data, "audio/mpeg")}, timeout=300)
        return time.monotonic() - started, response.status_code

    def raw_put(i: int) -> float:
        started = time.monotonic()
        bench.minio.put_object("demucs-bucket", f"ingest-baseline-{i}", io.BytesIO(body),
                               len(body), content_type="audio/mpeg")
        return time.monotonic() - started

    try:
        alone = statistics.median(one(1000 + i)[0] for i in range(3))
        put = statistics.median(raw_put(i) for i in range(3))
        with ThreadPoolExecutor(uploads) as pool:
            outcomes = list(pool.map(one, range(uploads)))
    finally:
        rest.stop()
    latencies = sorted(t for t, _ in outcomes)
    errors = sum(1 for _, code in outcomes if code != 200)
    p50 = statistics.median(latencies)
    result = {"uploads": uploads, "size_mb": round(song.stat().st_size / 2**20, 1),
              "raw_s3_put_s": round(put, 3), "one_upload_alone_s": round(alone, 3),
              "p50_s": round(p50, 2),
              "p95_s": round(latencies[max(0, math.ceil(0.95 * len(latencies)) - 1)], 2),
              "p50_ratio_to_alone": round(p50 / alone, 1), "errors": errors}
    print(f"  ingest: alone {alone:.2f} s (S3 PUT {put:.2f} s); {uploads} at once p50 "
          f"{result['p50_s']} s, p95 {result['p95_s']} s, errors {errors}", flush=True)
    return result


_RESIDENT = """
import sys
from pathlib import Path

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

import demucs.separate  # what ``python -m demucs`` imports: torch, Demucs
imported = rss_mb()
from demucs.pretrained import get_model
model = get_model(sys.argv[1], repo=Path(sys.argv[2]))  # held: freed, it would not count
print(imported, rss_mb())
"""


_FORWARD_LIVE = """
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from demucs.pretrained import get_model

model = get_model(sys.argv[1], repo=Path(sys.argv[2])).models[0].eval()
mix = torch.randn(1, model.audio_channels, int(model.samplerate * model.segment))
with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
    model(mix)
events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
live = peak = 0
for event in sorted(events, key=lambda e: e.start_ns()):  # + allocated, - freed
    live += event.nbytes()
    peak = max(peak, live)
print(peak / 2**20)
"""


def forward_live_mb(model: str, repo: Path) -> float:
    """The most bytes of tensors alive at once in one segment's forward pass of the first
    model of ``model`` (torch's profiler counts each allocation and free): what any allocator
    must hold, however well it reuses memory."""
    done = subprocess.run([sys.executable, "-c", _FORWARD_LIVE, model, str(repo)], check=True,
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(available_cpus())})
    return float(done.stdout.split()[-1])


def demucs_resident_mb(model: str, repo: Path) -> dict[str, float]:
    """What a Demucs CLI process holds before it separates anything: the RSS after its
    imports, and what loading ``model`` (every model of a bag) adds."""
    done = subprocess.run([sys.executable, "-c", _RESIDENT, model, str(repo)], check=True,
                          capture_output=True, text=True)
    imported, loaded = map(float, done.stdout.split())
    return {"imports_mb": round(imported), "models_mb": round(loaded - imported)}


def bench_allocator(bench: Bench, songs: dict[str, Path]) -> dict[str, Any]:
    """The same Demucs CLI call (WAV stems) with the system's malloc and with the library the
    worker preloads into Demucs on the CPU: the worker's default, measured on its own, for
    each song of ``songs``."""
    preload = allocator_library(Settings.from_env().demucs_allocator)
    if preload is None:
        return {"skipped": "DEMUCS_ALLOCATOR finds no library to preload here"}
    results: dict[str, Any] = {"library": preload}
    for size, song in songs.items():
        runs, stems = {}, {}
        for label, extra in (("system", {}), ("preloaded", {"LD_PRELOAD": preload})):
            out = bench.root / f"allocator-{size}-{label}"
            runs[label] = bench.raw_cli(song, bench.model, bench.repo, flags=(), out=out,
                                        **extra)
            stems[label] = sorted((out / bench.model / song.stem).glob("*.wav"))
            print(f"  allocator {size} {label}: {runs[label]['wall_s']:.1f} s, CPU "
                  f"{runs[label]['cpu_s']:.1f} s, {runs[label]['peak_rss_mb']:.0f} MB",
                  flush=True)
        system, preloaded = runs["system"], runs["preloaded"]
        results[size] = {
            "system": {k: round(v, 2) for k, v in system.items()},
            "preloaded": {k: round(v, 2) for k, v in preloaded.items()},
            "time_ratio": round(preloaded["wall_s"] / system["wall_s"], 3),
            "cpu_ratio": round(preloaded["cpu_s"] / system["cpu_s"], 3),
            "rss_ratio": round(preloaded["peak_rss_mb"] / system["peak_rss_mb"], 3),
            "stems_identical": len(stems["system"]) == 4 and all(
                a.name == b.name and a.read_bytes() == b.read_bytes()
                for a, b in zip(stems["system"], stems["preloaded"], strict=True)),
        }
    return results


def allocator_env() -> dict[str, str]:
    """The allocator settings of this run (inherited by the raw CLI and the worker alike)."""
    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}


def karaoke_memory(raw_peak_mb: float, rss: PeakRss, bag: str, repo: str,
                   root: Path, song_s: float) -> dict[str, Any]:
    """The peak RSS of both sides split into what neither can shed — the imports (torch,
    Demucs) and the models — and the rest, which the separation itself uses (one segment's
    forward pass, the song-length output buffers, and what the allocator keeps of them).
    ``floor_ratio`` is the ratio if that rest were zero on both sides."""
    from worker.demucs.bags import pruned_bag

    pruned = pruned_bag(bag, repo, ["vocals"])
    if pruned is None:
        raise RuntimeError(f"bag {bag} cannot be pruned to vocals")
    whole = demucs_resident_mb(bag, Path(repo))
    kept = demucs_resident_mb(pruned.name, pruned.write(root / "karaoke-pruned-bag"))
    worker_mb, demucs_mb = rss.peak_mb - rss.children_at_peak_mb, rss.children_at_peak_mb
    raw_fixed = whole["imports_mb"] + whole["models_mb"]
    service_fixed = worker_mb + kept["imports_mb"] + kept["models_mb"]
    forward_mb = forward_live_mb(pruned.name, root / "karaoke-pruned-bag")
    output_mb = 4 * 2 * 44100 * song_s * 4 / 2**20  # Demucs' song-length estimates, float32
    return {
        "worker_at_peak_mb": round(worker_mb), "demucs_at_peak_mb": round(demucs_mb),
        "imports_mb": kept["imports_mb"], "raw_models_mb": whole["models_mb"],
        "service_models_mb": kept["models_mb"],
        "raw_separation_mb": round(raw_peak_mb - raw_fixed),
        "service_separation_mb": round(demucs_mb - kept["imports_mb"] - kept["models_mb"]),
        "floor_ratio": round(service_fixed / raw_fixed, 3),
        "forward_live_mb": round(forward_mb), "output_buffer_mb": round(output_mb),
        # held at once during a forward pass with no allocator slack (the decoded input aside)
        "live_floor_ratio": round((service_fixed + forward_mb + output_mb) / raw_peak_mb, 3),
    }


def bench_karaoke(bench: Bench, song: Path, bag: str, repo: str) -> dict[str, Any]:
    """A karaoke job through the service (the bag pruned to its vocals model) vs the raw CLI
    running the whole bag with ``--two-stems vocals``; their vocals compared. Besides wall
    time, CPU seconds: on a shared machine they do not depend on what else runs.

    The service stores MP3s: the raw CLI's vocals WAV goes through the worker's own encoder
    (``mix_and_encode``), so identical vocals give identical bytes; the SNR compares the
    decoded MP3s."""
    raw_out = bench.root / "karaoke-raw"
    raw = bench.raw_cli(song, bag, repo, flags=("--two-stems", "vocals"), out=raw_out)
    print(f"  karaoke raw CLI, whole bag: {raw['wall_s']:.1f} s, CPU {raw['cpu_s']:.0f} s, "
          f"{raw['peak_rss_mb']:.0f} MB", flush=True)
    worker = bench.start_worker(bag, repo, BATCH_MAX="1", CHUNK_OVER_S="0")
    try:
        cpu_before_s, busy_s = tree_cpu_s(psutil.Process(worker.pid)), busy_cpu_s()
        with PeakRss(worker.pid) as rss:
            wall_s, (record,) = bench.run_jobs([song], worker, stems=KARAOKE)
        cpu_s = tree_cpu_s(psutil.Process(worker.pid)) - cpu_before_s
        service_others = others_cores(busy_s, cpu_s, wall_s)
        worker_job_mb = PeakRss._high_water_bytes(worker.pid) / 2**20
    finally:
        devstack.stop(worker)
    ran = [line for line in (bench.root / "worker.log").read_text().splitlines()
           if "models of bag" in line]
    service_mp3 = bench.root / "karaoke-service-vocals.mp3"
    bench.minio.fget_object("demucs-output", record["tracks"]["vocals"], str(service_mp3))
    raw_mp3 = mix_and_encode(raw_out / bag / song.stem, ["vocals"], bench.root / "karaoke-enc",
                             320, bench.threads)["vocals"]
    import sphn


    ours, theirs = (sphn.read(str(path))[0].astype("float64") for path in (service_mp3, raw_mp3))
    snr = snr_db(theirs, ours)
    song_s = float(sphn.FileReader(str(song)).duration_sec)
    result = {
        "song_s": round(song_s, 1),
        "raw_cli_two_stems_s": round(raw["wall_s"], 2), "service_karaoke_s": round(wall_s, 2),
        "time_ratio": round(wall_s / raw["wall_s"], 3),
        "raw_cli_cpu_s": round(raw["cpu_s"], 1), "service_cpu_s": round(cpu_s, 1),
        "cpu_ratio": round(cpu_s / raw["cpu_s"], 3),
        "others_cores": {"raw_cli": raw["others_cores"], "service": service_others},
        "raw_cli_peak_rss_mb": round(raw["peak_rss_mb"]),
        "service_peak_rss_mb": round(rss.peak_mb),
        "rss_ratio": round(rss.peak_mb / raw["peak_rss_mb"], 3),
        "worker_own_peak_rss_mb": round(worker_job_mb),  # reached encoding, Demucs gone
        "memory": karaoke_memory(raw["peak_rss_mb"], rss, bag, repo, bench.root, song_s),
        "allocator_env": allocator_env(),
        "service_demucs_allocator": allocator_library(Settings.from_env().demucs_allocator)
        or "system",
        "vocals_mp3_identical": service_mp3.read_bytes() == raw_mp3.read_bytes(),
        "vocals_snr_db": snr if math.isfinite(snr) else "inf",
        "ran": ran[-1].split("running ", 1)[-1] if ran else "the whole bag",
        "breakdown_s": {k: round(v, 2) for k, v in record["timings"].items()},
    }
    print(f"  karaoke service: {wall_s:.1f} s ({result['time_ratio']}x), CPU {cpu_s:.0f} s "
          f"({result['cpu_ratio']}x), {rss.peak_mb:.0f} MB ({result['rss_ratio']}x), vocals "
          f"SNR {result['vocals_snr_db']} dB; memory {result['memory']}", flush=True)
    return result


def bench_model(quick: bool) -> tuple[str, str | None, int]:
    """(model, repo, CPU threads): BENCH_MODEL/DEMUCS_REPO, else the real-size random model
    (the tiny one with ``quick``)."""
    model = os.environ.get("BENCH_MODEL") or (TINY if quick else NAME)
    repo = os.environ.get("DEMUCS_REPO") or (
        None if model == TINY else str(build_real_size_model()))
    return model, repo, int(os.environ.get("DEMUCS_THREADS") or available_cpus())


def write_results(path: Path, report: dict[str, Any]) -> None:
    """Merge this run's figures into ``path``: a run of some parts keeps the others'."""
    merged = json.loads(path.read_text()) if path.exists() else {}
    _merge(merged, report)  # a run of some sizes keeps the others
    path.write_text(json.dumps(merged, indent=2) + "\n")


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--only",
                        default="overhead,batch,memory,ingest,karaoke,allocator,warm")
    parser.add_argument("--reps", type=int, default=3,
                        help="runs of each side in --only warm, 7 s clip (60 s: --reps-long)")
    parser.add_argument("--reps-long", type=int, default=1)
    parser.add_argument("--warm-clips", default="7s,60s", help="clips of --only warm")
    parser.add_argument("--no-warm-batch", action="store_true",
                        help="--only warm without its batching table")
    parser.add_argument("--warm-cpu", action="store_true",
                        help="--only warm: instead, the Demucs step's CPU on one thread")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    model, repo, threads = bench_model(args.quick)
    report: dict[str, Any] = {
        "machine": {"cpus": threads, "cpu_model": platform.processor() or platform.machine(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "device": os.environ.get("BENCH_DEVICE", "cpu")},
        "model": model, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory(prefix="demucs-bench-") as tmp:
        root = Path(tmp)
        song: Callable[[float, int], Path] = lambda s, seed: write_song(  # noqa: E731
            root / f"song-{s:g}-{seed}.mp3", seconds=s, seed=seed)
        bench = Bench(root, model, repo, threads)
        try:
            if "overhead" in parts:
                sizes = {"10s": 10.0} if args.quick else {"10s": 10.0, "180s": 180.0}
                report["overhead"] = bench_overhead(
                    bench, {k: song(v, 1) for k, v in sizes.items()})
            if "batch" in parts:
                clip_s = 2.0 if args.quick else 5.0
                clips = [song(clip_s, 100 + i) for i in range(4 if args.quick else 8)]
                report["batch"] = {TINY: bench_batch(bench, clips, TINY, None, 4)}
                if model != TINY and not args.quick:
                    report["batch"][model] = bench_batch(bench, clips, model, repo, 4)
            if "memory" in parts:
                sizes = {"0.25min": 15.0} if args.quick else \
                    {"1min": 60.0, "3min": 180.0, "5min": 300.0}
                report["memory"] = bench_memory(bench, {k: song(v, 2) for k, v in sizes.items()})
            if "karaoke" in parts:
                bag = "bench_small_ft" if args.quick else "bench_htdemucs_ft"
                bag_repo = build_specialist_bag(cache_dir() / "models", bag, channels=8,
                                                t_layers=1) if args.quick else build_real_size_bag()
                label = bag + ("_tuned_allocator" if allocator_env() else "")
                report["karaoke"] = {label: bench_karaoke(
                    bench, song(15.0 if args.quick else 60.0, 3), bag, str(bag_repo))}
            if "allocator" in parts:
                sizes = {"15s": 15.0} if args.quick else {"60s": 60.0, "300s": 300.0}
                report["allocator"] = bench_allocator(
                    bench, {k: song(v, 3) for k, v in sizes.items()})
            if "ingest" in parts:
                report["ingest"] = bench_ingest(bench, 4 if args.quick else 20,
                                                1.0 if args.quick else 10.0)
            if "warm" in parts:
                from bench.warm import bench_warm

                sizes = {k: float(k.rstrip("s")) for k in
                         (["7s"] if args.quick else args.warm_clips.split(","))}
                clips = [] if args.no_warm_batch else [song(2.0 if args.quick else 5.0, 100 + i)
                                                        for i in range(4 if args.quick else 8)]
                reps = {"7s": 1 if args.quick else args.reps, "60s": args.reps_long}
                if args.warm_cpu:
                    from bench.warm import demucs_cpu

                    report["warm"] = {"demucs_cpu_1_thread": {
                        k: demucs_cpu(song(v, 4), model, repo, args.reps)
                        for k, v in sizes.items()}}
                else:
                    report["warm"] = bench_warm(
                        bench, {k: song(v, 4) for k, v in sizes.items()}, clips, reps,
                        batch_real_model=model != TINY and not args.quick)
        finally:
            bench.close()
    RESULTS.mkdir(exist_ok=True)
    name = "quick.json" if args.quick else "latest.json"
    warm = report.pop("warm", None)
    if warm is not None:  # figures of their own (docs/benchmarks.md), with this run's machine
        warm_name = "warm-quick.json" if args.quick else "warm.json"
        write_results(RESULTS / warm_name, {**report, "warm": warm})
        print(json.dumps(warm, indent=2))
        print(f"written to {RESULTS / warm_name}")
    if set(report) - {"machine", "model", "started", "quick"}:
        write_results(RESULTS / name, report)
        print(json.dumps(report, indent=2))
        print(f"written to {RESULTS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
