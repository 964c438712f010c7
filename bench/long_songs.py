"""``make bench-long``: long songs split into chunks — memory, latency and seams.

1. memory   peak RSS of one worker's process tree, chunked (CHUNK_S=60, overlap 10) for 1-,
            5- and 20-minute songs, against unchunked runs of the same songs (20 minutes
            unchunked only with ``--unchunked-20``: it takes as long as the song on 2 cores;
            ``--only memory-unchunked --minutes 20 --unchunked-20`` runs just that).
2. latency  a 10-minute song with 1, 2 and 4 worker processes on this machine, and the
            per-chunk times that project the speed-up on a cluster.
3. seams    with ``--shifts 0``, the chunked stems against the unchunked stems of the same
            model and song (Demucs CLI on the whole file vs on the cut chunks, stitched by the
            worker's own ``plan_chunks``/``cut_chunks``/``stitch``): SNR per stem over the whole
            song and over the overlap regions alone, for ``CHUNK_OVERLAP_S`` 10 and 20, with the
            chunks on the model's segment grid (the default) and off it (``MODEL_SEGMENT_S=0``).

The real-size random-weight model (bench/model.py) unless ``BENCH_MODEL`` names another;
``--quick`` shrinks everything to a smoke test. JSON goes to ``bench/results/long-songs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import devstack
from bench.harness import RESULTS, TINY, Bench, PeakRss
from bench.measures import snr_db
from bench.run import bench_model, write_results
from common.contract import DEMUCS_STEMS
from common.settings import Settings, available_cpus
from devstack.synth import write_song
from worker.long_songs.chunking import cut_chunks, frames, plan_chunks, stitch
from worker.pcm import read_wav


def _read(path: Path) -> np.ndarray:
    return read_wav(path).astype(np.float64)


def _demucs(model: str, repo: str | None, inputs: list[Path], out: Path, threads: int) -> Path:
    command = [sys.executable, "-m", "demucs", "-n", model, "-d", "cpu", "--shifts", "0",
               "-o", str(out), *(str(p) for p in inputs)]
    if repo:
        command += ["--repo", repo]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return next(out.iterdir())  # <out>/<model>/


def bench_seams(root: Path, song: Path, model: str, repo: str | None, chunk_s: int,
                configs: list[tuple[int, float]], threads: int) -> dict[str, Any]:
    """SNR of chunked against whole-song stems, for each (CHUNK_OVERLAP_S, segment grid)."""
    whole_dir = _demucs(model, repo, [song], root / "whole", threads) / song.stem
    length = _read(whole_dir / "vocals.wav").shape[0]
    duration_s = length / 44100
    results: dict[str, Any] = {}
    for overlap_s, segment_s in configs:
        plan = plan_chunks(duration_s, chunk_s, overlap_s, segment_s)
        label = f"overlap_{overlap_s}s_" + (f"grid_{segment_s:g}s" if segment_s else "plain")
        parts = cut_chunks(song, plan.chunks, root / f"cut-{label}", duration_s)
        out = _demucs(model, repo, parts, root / f"chunked-{label}", threads)
        mask = np.zeros(length, dtype=bool)
        for chunk in plan.chunks[1:]:
            start = frames(chunk.start_ms, 44100)
            mask[start:start + frames(plan.overlap_ms, 44100)] = True
        per_stem: dict[str, Any] = {}
        for stem in DEMUCS_STEMS:
            joined = root / f"joined-{label}-{stem}.wav"
            stitch([out / p.stem / f"{stem}.wav" for p in parts], plan.overlap_ms, joined,
                   plan.fade_margin_ms)
            reference, estimate = _read(whole_dir / f"{stem}.wav"), _read(joined)
            per_stem[stem] = {"snr_db": round(snr_db(reference, estimate), 1),
                              "overlap_snr_db": round(snr_db(reference[mask], estimate[mask]), 1)}
        results[label] = {"chunks": len(plan.chunks), "overlap_ms": plan.overlap_ms,
                          "fade_margin_ms": plan.fade_margin_ms, "stems": per_stem}
        print(f"  seams {label} ({plan.overlap_ms / 1000:g} s overlap): " + ", ".join(
            f"{s} {v['snr_db']}/{v['overlap_snr_db']} dB" for s, v in per_stem.items()),
            flush=True)
    return {"song_s": round(duration_s, 1), "chunk_s": chunk_s, **results}


def bench_memory(bench: Bench, songs: dict[str, Path], chunked: bool) -> dict[str, Any]:
    settings = {"CHUNK_OVER_S": "30", "CHUNK_S": "60", "CHUNK_OVERLAP_S": "10"} if chunked \
        else {"CHUNK_OVER_S": "0"}
    worker = bench.start_worker(bench.model, bench.repo, **settings)
    results: dict[str, Any] = {}
    try:
        for label, song in songs.items():
            with PeakRss(worker.pid) as rss:
                wall_s, (record,) = bench.run_jobs([song], worker)
            results[label] = {"peak_rss_mb": round(rss.peak_mb), "wall_s": round(wall_s, 1),
                              "chunks": int(record.get("chunks_total") or 0)}
            mode = "chunked" if chunked else "unchunked"
            print(f"  memory {mode} {label}: peak {rss.peak_mb:.0f} MB in {wall_s:.0f} s",
                  flush=True)
    finally:
        devstack.stop(worker)
    return results


def bench_latency(bench: Bench, song: Path, model: str, repo: str | None,
                  worker_counts: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    cpus = available_cpus()
    for count in worker_counts:
        threads = str(max(1, cpus // count))
        workers = [bench.start_worker(model, repo, CHUNK_OVER_S="30", CHUNK_S="60",
                                      CHUNK_OVERLAP_S="10", BATCH_MAX="1",
                                      DEMUCS_THREADS=threads) for _ in range(count)]
        try:
            wall_s, (record,) = bench.run_jobs([song], workers[0])
        finally:
            for worker in workers:
                devstack.stop(worker)
        chunk_times = []
        for i in range(int(record["chunks_total"])):
            chunk = bench.status.get(f"{record['id'][:50]}-c{i}") or {}
            if chunk.get("elapsed_s"):
                chunk_times.append(chunk["elapsed_s"])
        results[f"{count}_workers"] = {
            "wall_s": round(wall_s, 1), "threads_each": int(threads),
            "chunks": int(record["chunks_total"]),
            "chunk_s_mean": round(float(np.mean(chunk_times)), 1) if chunk_times else None,
            "join_s": round(record["timings"].get("join", 0), 1)}
        print(f"  latency {count} workers: {wall_s:.0f} s", flush=True)
    base = results[f"{worker_counts[0]}_workers"]
    if base["chunk_s_mean"]:
        serial_s = base["chunk_s_mean"] * base["chunks"]
        results["projected_cluster_s"] = {
            "note": "one chunk per worker in parallel (each with the threads measured here), "
                    "plus split and join: the critical path of a cluster with >= chunks workers",
            "estimate_s": round(base["wall_s"] - serial_s + base["chunk_s_mean"], 1),
            "speedup": round(base["wall_s"] / (base["wall_s"] - serial_s + base["chunk_s_mean"]),
                             1)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="seams,memory,latency",
                        help="parts to run; memory-chunked and memory-unchunked split memory")
    parser.add_argument("--minutes", default="1,5,20", help="song lengths for memory")
    parser.add_argument("--unchunked-20", action="store_true",
                        help="also run songs over 5 minutes unchunked (slow, ~6 GB)")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    model, repo, threads = bench_model(args.quick)
    report: dict[str, Any] = {"model": model, "cpus": threads, "quick": args.quick,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="demucs-bench-long-") as tmp:
        root = Path(tmp)

        def song(minutes: float, seed: int) -> Path:
            return write_song(root / f"song-{minutes:g}min.mp3", seconds=minutes * 60, seed=seed)

        if "seams" in parts:
            grid = Settings.from_env().chunk_segment_s  # MODEL_SEGMENT_S, 7.8 s by default
            configs = [(o, g) for o in ((2,) if args.quick else (10, 20)) for g in (grid, 0.0)]
            report["seams"] = bench_seams(root, song(0.75 if args.quick else 2, 7), model, repo,
                                          20 if args.quick else 60, configs, threads)
        bench = Bench(root, model, repo, threads)
        try:
            minutes = [0.75, 1.5] if args.quick else [float(m) for m in args.minutes.split(",")]
            if parts & {"memory", "memory-chunked"}:
                songs = {f"{m:g}min": song(m, 8) for m in minutes}
                report["memory_chunked"] = bench_memory(bench, songs, chunked=True)
            if parts & {"memory", "memory-unchunked"}:
                songs = {f"{m:g}min": song(m, 8) for m in minutes
                         if args.quick or args.unchunked_20 or m <= 5}
                report["memory_unchunked"] = bench_memory(bench, songs, chunked=False)
            if "latency" in parts:
                latency_model = TINY if args.quick else os.environ.get("LATENCY_MODEL", model)
                report["latency"] = bench_latency(
                    bench, song(1.5 if args.quick else 10, 9), latency_model,
                    None if latency_model == TINY else repo, [1, 2, 4])
        finally:
            bench.close()
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / ("long-songs-quick.json" if args.quick else "long-songs.json")
    write_results(target, report)
    print(json.dumps(report, indent=2))
    print(f"written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
