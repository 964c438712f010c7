"""The GPU check: Demucs on CUDA, on a real-size bag shaped like ``htdemucs_ft``, 60 s song.

For a machine with a GPU but no Redis or S3 server (so not the whole pipeline): the raw
``python -m demucs --two-stems vocals`` on the whole bag, and the worker's own ``run_demucs`` on
the bag pruned to its vocals model, with the system's malloc and with tcmalloc preloaded. It
reports time, the host's peak RSS, the GPU memory nvidia-smi shows, and the vocals compared.

usage: python -m bench.gpu_check OUT_DIR       (GPU_CHECK_TCMALLOC: the library, if ldconfig
                                                does not know one; GPU_CHECK_DEVICE=cpu and
                                                GPU_CHECK_SMALL=1 make a quick dry run)
       python -m bench.gpu_check one LABEL ...  (one measured run, in its own process)
"""
import json
import os
import resource
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np

from worker.demucs.cli import DemucsOptions, allocator_library, run_demucs

ROOT = Path(os.environ.get("GPU_CHECK_ROOT", "/tmp/gpucheck"))
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")  # cpu: a dry run here
SECONDS = float(os.environ.get("GPU_CHECK_SECONDS", "60"))
TCMALLOC = os.environ.get("GPU_CHECK_TCMALLOC") or allocator_library("tcmalloc") or ""


def gpu_mem_poller(pid_holder, peak):
    while not pid_holder.get("done"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=used_memory",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=5).stdout
            used = sum(int(x) for x in out.split() if x.strip().isdigit())
            peak["mb"] = max(peak.get("mb", 0), used)
        except Exception as error:
            peak["error"] = str(error)
        time.sleep(0.2)


def one(label, model, repo, preload, flags_two_stems):
    options = DemucsOptions(model=model, device=DEVICE, threads=8, shifts=0, repo=repo,
                            preload=preload)
    out = ROOT / f"out-{label}"
    inputs = [ROOT / "song.wav"]
    state, peak = {}, {}
    poller = threading.Thread(target=gpu_mem_poller, args=(state, peak), daemon=True)
    poller.start()
    if flags_two_stems:  # the raw CLI as users run it: python -m demucs ... --two-stems vocals
        command = [sys.executable, "-m", "demucs", "-n", model, "--repo", repo, "-d", DEVICE,
                   "--shifts", "0", "--two-stems", "vocals", "-o", str(out),
                   "--filename", "{track}/{stem}.{ext}", str(inputs[0])]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True)
        elapsed, code, tail = time.monotonic() - started, done.returncode, done.stderr[-1500:]
    else:
        run = run_demucs(options, out, inputs, 600, threading.Event(), lambda i, f: None)
        elapsed, code, tail = run.elapsed_s, run.returncode, run.output_tail[-1500:]
    state["done"] = True
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"label": label, "rc": code, "wall_s": round(elapsed, 2),
                      "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                      "sys_s": round(usage.ru_stime, 2),
                      "peak_rss_mb": round(usage.ru_maxrss / 1024),
                      "gpu_mem_mb": peak.get("mb"), "gpu_mem_error": peak.get("error"),
                      "tail": tail if code else ""}))


def read(path):
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    return data


def snr(ref, x):
    noise = np.sum((ref - x) ** 2)
    return float("inf") if noise == 0 else round(10 * np.log10(np.sum(ref ** 2) / noise), 1)


def main(out_dir):
    ROOT.mkdir(parents=True, exist_ok=True)
    report = {}
    import torch
    report["torch"] = torch.__version__
    report["gpu"] = torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE
    from bench.model import build_real_size_bag, build_specialist_bag
    t0 = time.monotonic()
    repo = build_specialist_bag(ROOT / "models", "bench_htdemucs_ft", channels=8, t_layers=1) \
        if os.environ.get("GPU_CHECK_SMALL") else build_real_size_bag(ROOT / "models")
    report["build_s"] = round(time.monotonic() - t0, 1)
    pruned = ROOT / "pruned"
    pruned.mkdir(exist_ok=True)
    (pruned / "bench_htdemucs_ft_only_vocals.yaml").write_text(json.dumps(
        {"models": ["bench_htdemucs_ft_vocals"], "weights": [[0.0, 0.0, 0.0, 1.0]]}))
    link = pruned / "bench_htdemucs_ft_vocals.th"
    if not link.exists():
        link.symlink_to(repo / "bench_htdemucs_ft_vocals.th")
    rng = np.random.default_rng(3)
    t = np.arange(int(SECONDS * 44100)) / 44100
    sig = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
    stereo = np.stack([sig + 0.05 * rng.standard_normal(t.size),
                       0.8 * sig + 0.05 * rng.standard_normal(t.size)], axis=1)
    with wave.open(str(ROOT / "song.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes((np.clip(stereo, -1, 1) * 32767).astype("<i2").tobytes())
    runs = [("warmup", "bench_htdemucs_ft_only_vocals", str(pruned), "", "0"),
            ("raw_whole_bag_two_stems", "bench_htdemucs_ft", str(repo), "", "1"),
            ("pruned_tcmalloc", "bench_htdemucs_ft_only_vocals", str(pruned), TCMALLOC, "0"),
            ("pruned_system", "bench_htdemucs_ft_only_vocals", str(pruned), "", "0"),
            ("pruned_system_again", "bench_htdemucs_ft_only_vocals", str(pruned), "", "0")]
    report["runs"] = []
    for label, model, rp, preload, two in runs:
        done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "one", label, model,
                               rp, preload, two],
                              capture_output=True, text=True)
        line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
        print(label, line, flush=True)
        try:
            report["runs"].append(json.loads(line))
        except json.JSONDecodeError:
            report["runs"].append({"label": label, "error": line})
    raw = ROOT / "out-raw_whole_bag_two_stems/bench_htdemucs_ft/song/vocals.wav"
    stems = {label: ROOT / f"out-{label}/bench_htdemucs_ft_only_vocals/song/vocals.wav"
             for label in ("pruned_tcmalloc", "pruned_system", "pruned_system_again")}
    report["vocals_snr_db"] = {
        "pruned_tcmalloc_vs_raw_whole_bag": snr(read(raw), read(stems["pruned_tcmalloc"])),
        "pruned_tcmalloc_vs_pruned_system": snr(read(stems["pruned_system"]),
                                                read(stems["pruned_tcmalloc"])),
        "pruned_system_vs_pruned_system_again": snr(read(stems["pruned_system"]),
                                                    read(stems["pruned_system_again"])),
    }
    report["bytes_identical_tcmalloc_vs_system"] = \
        stems["pruned_tcmalloc"].read_bytes() == stems["pruned_system"].read_bytes()
    Path(out_dir, "gpu-check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "one":
        one(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] or None, sys.argv[6] == "1")
    else:
        main(sys.argv[1])
