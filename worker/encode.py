"""Tracks from Demucs' WAV stems: mixed and encoded to MP3 once each.

Derived tracks are mixed from the lossless WAV stems, block by block, so memory stays flat
with song length, and every track is encoded exactly once (``acapella`` is the vocals file).
``full`` sums the four stems; ``instrumental`` is the mix minus the vocals estimate (the input
decoded as Demucs decodes it, ``write_mix``), so it needs the vocals source alone and a bag
pruned to its vocals model (``worker.bags``) gives the same instrumental as the full bag.
"""

from __future__ import annotations

import wave
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import lameenc
import numpy as np

from separation.contract import DEMUCS_STEMS
from worker.chunking import write_wav

BLOCK_S = 10
MIX = "mix"
"""``<stem_dir>/mix.wav``: the input, frame for frame with the stems (``write_mix``)."""
SOURCES: dict[str, tuple[str, ...]] = {
    "vocals": ("vocals",), "acapella": ("vocals",), "instrumental": ("vocals",),
    "drums": ("drums",), "bass": ("bass",), "other": ("other",), "full": DEMUCS_STEMS,
    "original": (),
}
"""The Demucs sources each track is made from."""


def sources_for(tracks: Iterable[str]) -> tuple[str, ...]:
    """The Demucs sources that ``tracks`` need, in Demucs' order."""
    needed = {source for track in tracks for source in SOURCES[track]}
    return tuple(s for s in DEMUCS_STEMS if s in needed)


def write_mix(input_path: Path, stem_dir: Path) -> Path:
    """Decode the input as Demucs 4.1.0 does (sphn, then its rate and channels) into
    ``<stem_dir>/mix.wav``, as many frames as the vocals stem; return that path."""
    import sphn  # the decoder Demucs itself uses

    with wave.open(str(stem_dir / "vocals.wav"), "rb") as vocals:
        channels, rate, count = vocals.getnchannels(), vocals.getframerate(), vocals.getnframes()
    data, input_rate = sphn.read(str(input_path))
    if int(input_rate) != rate:
        data, _ = sphn.read(str(input_path), sample_rate=rate)
    if data.shape[0] < channels:  # mono: Demucs repeats the channel
        data = np.repeat(data[:1], channels, axis=0)
    samples = np.zeros((count, channels), dtype=np.float32)
    frames = min(count, data.shape[1])
    samples[:frames] = data[:channels, :frames].T
    target = stem_dir / f"{MIX}.wav"
    write_wav(target, samples, rate)
    return target


def _encoder(channels: int, sample_rate: int, bitrate_kbps: int) -> lameenc.Encoder:
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bitrate_kbps)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(channels)
    encoder.set_quality(2)  # Demucs' default MP3 preset
    return encoder


def _mix(track: str, stems: dict[str, np.ndarray]) -> np.ndarray:
    if track == "instrumental":
        total = stems[MIX].astype(np.int32) - stems["vocals"]
    else:  # full
        total = sum(stems[s].astype(np.int32) for s in DEMUCS_STEMS)  # type: ignore[assignment]
    return np.clip(total, -32768, 32767).astype(np.int16)


def mix_and_encode(stem_dir: Path, tracks: Iterable[str], out_dir: Path, bitrate_kbps: int,
                   threads: int) -> dict[str, Path]:
    """Encode the stems and mixes named in ``tracks`` from ``<stem_dir>/<stem>.wav`` (and
    ``mix.wav`` for ``instrumental``), reading only the stems those tracks need.

    Returns ``{track: mp3 path}``; ``original`` is not made here (the input is the original).
    """
    wanted = [t for t in tracks if t != "original"]
    if not wanted:
        return {}
    encoded = [t for t in wanted if t != "acapella"]
    if "acapella" in wanted and "vocals" not in encoded:
        encoded.append("vocals")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {track: out_dir / f"{track}.mp3" for track in encoded}
    with ExitStack() as stack, ThreadPoolExecutor(max(1, threads)) as pool:
        inputs = [*sources_for(wanted), *([MIX] if "instrumental" in wanted else [])]
        readers = {s: stack.enter_context(wave.open(str(stem_dir / f"{s}.wav"), "rb"))
                   for s in inputs}
        channels, rate = _check_same_format(readers)
        encoders = {t: _encoder(channels, rate, bitrate_kbps) for t in encoded}
        files = {t: stack.enter_context(paths[t].open("wb")) for t in encoded}
        block_frames = BLOCK_S * rate
        while True:
            stems = {s: np.frombuffer(r.readframes(block_frames), dtype=np.int16)
                     for s, r in readers.items()}
            if not next(iter(stems.values())).size:
                break
            pcm = {t: stems[t] if t in stems else _mix(t, stems) for t in encoded}
            chunks = pool.map(lambda t, block=pcm: encoders[t].encode(block[t].tobytes()),
                              encoded)
            for track, chunk in zip(encoded, chunks, strict=True):
                files[track].write(chunk)
        for track in encoded:
            files[track].write(encoders[track].flush())
    paths["acapella"] = paths.get("vocals", out_dir / "vocals.mp3")  # the same audio
    return {t: paths[t] for t in wanted}


def _check_same_format(readers: dict[str, wave.Wave_read]) -> tuple[int, int]:
    formats = {(r.getnchannels(), r.getsampwidth(), r.getframerate(), r.getnframes())
               for r in readers.values()}
    if len(formats) != 1:
        raise ValueError(f"Demucs stems differ in format: {sorted(formats)}")
    channels, width, rate, _ = formats.pop()
    if width != 2:
        raise ValueError(f"expected 16-bit WAV stems from Demucs, got {8 * width}-bit")
    return channels, rate
