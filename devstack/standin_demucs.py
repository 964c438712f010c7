"""A stand-in for the Demucs CLI in tests: numpy and sphn, no torch, no model.

Run as ``python -m devstack.standin_demucs`` (the tests set ``DEMUCS_COMMAND`` to that). It
takes the flags the worker passes (``worker.demucs.cli.build_command``) and writes what a real
run writes: ``<out>/<model>/<input name without extension>/<source>.wav``, 16-bit (24-bit with
``--int24``) stereo WAV at 44.1 kHz, as many frames as the decoded input. Each source is the
input scaled by a weight (the weights sum to 1, so the stems add up to the input). It prints
Demucs' lines: ``Separated tracks will be stored in ...`` and ``Separating track <path>`` on
stdout, tqdm bars (``x/y [...]``, ``\\r``-separated) on stderr.

Told by the environment to misbehave (each a test's fault, never set in production):

- ``STANDIN_DEMUCS_FAIL``: exit 1 with a traceback-like line on the first input whose path
  contains this text (``*``: every input), after the inputs before it were written.
- ``STANDIN_DEMUCS_HANG``: on an input whose path contains this text (``*``: any), report
  some progress and then sleep until killed.
- ``STANDIN_DEMUCS_DELAY_S``: spread each input's progress over this many seconds.
- ``STANDIN_DEMUCS_SPEED``: seconds of audio separated per second (a CPU run's is about 0.7):
  each input takes its duration divided by this, on top of ``STANDIN_DEMUCS_DELAY_S``.
- ``STANDIN_DEMUCS_CUDA_FAIL``: on any device but ``cpu``, fail as CUDA out of memory does.
- ``STANDIN_DEMUCS_SOURCES``: comma-separated sources (default Demucs' four).
- ``STANDIN_DEMUCS_CALLS``: a file to which each call appends one line, its inputs' names.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SOURCES = ("drums", "bass", "other", "vocals")
SAMPLE_RATE = 44100
CHANNELS = 2
FULL_SCALE = {2: 32768, 3: 1 << 23}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="standin_demucs", description=__doc__.splitlines()[0])
    parser.add_argument("tracks", nargs="+", type=Path)
    parser.add_argument("-n", "--name", default="htdemucs")
    parser.add_argument("--repo", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=Path("separated"))
    parser.add_argument("--filename", default="{track}/{stem}.{ext}")
    parser.add_argument("-d", "--device", default="cpu")
    parser.add_argument("--shifts", type=int, default=1)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--segment", type=int)
    parser.add_argument("--two-stems", dest="stem")
    parser.add_argument("--other-method", default="add", choices=["none", "add", "minus"])
    parser.add_argument("--int24", action="store_true")
    parser.add_argument("--float32", action="store_true")
    parser.add_argument("--mp3", action="store_true")
    parser.add_argument("--flac", action="store_true")
    parser.add_argument("-j", "--jobs", type=int, default=0)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def sources() -> tuple[str, ...]:
    named = os.environ.get("STANDIN_DEMUCS_SOURCES", "")
    return tuple(s.strip() for s in named.split(",") if s.strip()) or SOURCES


def matches(setting: str, track: Path) -> bool:
    value = os.environ.get(setting, "")
    return bool(value) and (value == "*" or value in str(track))


def decode(track: Path) -> np.ndarray:
    """The track as float32 samples, shape (channels, frames), stereo at 44.1 kHz, as many
    frames as Demucs 4.1.0 makes of it (sphn at the file's rate, mono repeated, then
    resampled: ``int(44100 * frames / rate)``; here by linear interpolation)."""
    import sphn

    data, rate = sphn.read(str(track))
    if data.shape[0] < CHANNELS:
        data = np.repeat(data[:1], CHANNELS, axis=0)
    data = np.asarray(data[:CHANNELS], dtype=np.float32)
    if int(rate) == SAMPLE_RATE:
        return data
    frames = int(SAMPLE_RATE * data.shape[1] / int(rate))
    at = np.arange(frames) * (int(rate) / SAMPLE_RATE)
    source = np.arange(data.shape[1])
    return np.stack([np.interp(at, source, channel) for channel in data]).astype(np.float32)


def write_stem(path: Path, samples: np.ndarray, width: int) -> None:
    scale = FULL_SCALE[width]
    ints = np.ascontiguousarray(np.clip(np.round(samples.T * scale), -scale, scale - 1),
                                dtype="<i4")
    data = ints.astype("<i2").tobytes() if width == 2 else \
        ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[0])
        out.setsampwidth(width)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(data)


def progress(total_s: float, delay_s: float, hang: bool) -> None:
    """tqdm's bar as Demucs prints it: unit seconds, ``\\r`` between updates, on stderr."""
    steps = 4
    for step in range(steps + 1):
        done = total_s * step / steps
        percent = round(100 * step / steps)
        sys.stderr.write(f"\r{percent:3d}%|{'█' * (percent // 10):<10}| {done:.1f}/{total_s:.1f} "
                         f"[00:00<00:00, 10.00seconds/s]")
        sys.stderr.flush()
        if hang and step == 1:
            while True:
                time.sleep(60)
        if step < steps and delay_s > 0:
            time.sleep(delay_s / steps)
    sys.stderr.write("\n")
    sys.stderr.flush()


def separate(track: Path, args: argparse.Namespace, out: Path, names: tuple[str, ...]) -> None:
    try:
        mix = decode(track)
    except Exception as error:
        raise SystemExit(f"demucs.audio.LoadAudioError: Could not load file {track}: {error}"
                         ) from error
    width = 3 if args.int24 else 2
    duration_s = mix.shape[1] / SAMPLE_RATE
    delay_s = float(os.environ.get("STANDIN_DEMUCS_DELAY_S") or 0)
    if speed := float(os.environ.get("STANDIN_DEMUCS_SPEED") or 0):
        delay_s += duration_s / speed
    progress(duration_s, delay_s, matches("STANDIN_DEMUCS_HANG", track))
    if matches("STANDIN_DEMUCS_FAIL", track):
        raise SystemExit(f"RuntimeError: the stand-in was told to fail on {track.name}")
    weights = np.arange(1, len(names) + 1, dtype=np.float32)
    weights /= weights.sum()
    stems = {name: mix * weight for name, weight in zip(names, weights, strict=True)}
    if args.stem:
        stems = {args.stem: stems[args.stem],
                 f"no_{args.stem}": mix - stems[args.stem]}
    for name, samples in stems.items():
        relative = args.filename.format(track=track.name.rsplit(".", 1)[0],
                                        trackext=track.name.rsplit(".", 1)[-1], stem=name,
                                        ext="wav")
        write_stem(out / relative, samples, width)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = sources()
    if args.stem and args.stem not in names:
        print(f'error: stem "{args.stem}" is not in selected model. STEM must be one of '
              f"{', '.join(names)}", file=sys.stderr)
        return 1
    if args.repo is not None and not args.repo.is_dir():
        print(f"FATAL: {args.repo} must exist and be a directory.", file=sys.stderr)
        return 1
    if args.device != "cpu" and os.environ.get("STANDIN_DEMUCS_CUDA_FAIL"):
        print("RuntimeError: CUDA error: out of memory (the stand-in was told to fail on CUDA)",
              file=sys.stderr)
        return 1
    if calls := os.environ.get("STANDIN_DEMUCS_CALLS"):
        with Path(calls).open("a") as log:
            log.write(" ".join(track.name for track in args.tracks) + "\n")
    out = args.out / args.name.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    print(f"Separated tracks will be stored in {out.resolve()}", flush=True)
    for track in args.tracks:
        if not track.exists():
            print(f"File {track} does not exist.", file=sys.stderr)
            continue
        print(f"Separating track {track}", flush=True)
        separate(track, args, out, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
