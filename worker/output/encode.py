"""Tracks from Demucs' WAV stems: mixed, and encoded once each to MP3, FLAC or WAV
(``worker.output.encoders``).

Derived tracks are mixed from the lossless WAV stems, block by block, so memory stays flat
with song length, and every track is encoded exactly once (``acapella`` is the vocals file).
``full`` sums the four stems; ``instrumental`` is the mix minus the vocals estimate (the input
decoded as Demucs decodes it, ``write_mix``), so it needs the vocals source alone and a bag
pruned to its vocals model (``worker.demucs.bags``) gives the same instrumental as the full bag.
"""

from __future__ import annotations

import wave
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from common.contract import DEMUCS_STEMS
from common.formats import Encoding
from worker.demucs.bags import sources_for
from worker.output.encoders import TrackWriter, open_writer
from worker.pcm import clip24, read_block, write_wav

BLOCK_S = 10
MIX = "mix"
"""``<stem_dir>/mix.wav``: the input, frame for frame with the stems (``write_mix``)."""
def write_mix(input_path: Path, stem_dir: Path) -> Path:
    """Decode the input as Demucs 4.1.0 does (sphn, then its rate and channels) into
    ``<stem_dir>/mix.wav``, as many frames as the vocals stem; return that path."""
    import sphn  # the decoder Demucs itself uses

    with wave.open(str(stem_dir / "vocals.wav"), "rb") as vocals:
        channels, rate, count = vocals.getnchannels(), vocals.getframerate(), vocals.getnframes()
        width = vocals.getsampwidth()
    data, input_rate = sphn.read(str(input_path))
    if int(input_rate) != rate:
        data, _ = sphn.read(str(input_path), sample_rate=rate)
    if data.shape[0] < channels:  # mono: Demucs repeats the channel
        data = np.repeat(data[:1], channels, axis=0)
    samples = np.zeros((count, channels), dtype=np.float32)
    frames = min(count, data.shape[1])
    samples[:frames] = data[:channels, :frames].T
    target = stem_dir / f"{MIX}.wav"
    write_wav(target, samples, rate, width)
    return target


def _mix(track: str, stems: dict[str, np.ndarray]) -> np.ndarray:
    """A derived track's block, from stem blocks at the 24-bit scale (``worker.pcm``)."""
    if track == "instrumental":
        total = stems[MIX] - stems["vocals"]
    else:  # full
        total = sum(stems[s] for s in DEMUCS_STEMS)  # type: ignore[assignment]
    return clip24(total)


def mix_and_encode(stem_dir: Path, tracks: Iterable[str], out_dir: Path,
                   encoding: Encoding | int, threads: int) -> dict[str, Path]:
    """Encode the stems and mixes named in ``tracks`` from ``<stem_dir>/<stem>.wav`` (and
    ``mix.wav`` for ``instrumental``), reading only the stems those tracks need.

    ``encoding``: MP3, FLAC or WAV (an int: MP3 at that bitrate). Stems may be 16- or 24-bit.
    Returns ``{track: file path}``, each ending in the format's extension; ``original`` is not
    made here (the input is the original).
    """
    if isinstance(encoding, int):
        encoding = Encoding("mp3", encoding)
    wanted = [t for t in tracks if t != "original"]
    if not wanted:
        return {}
    encoded = [t for t in wanted if t != "acapella"]
    if "acapella" in wanted and "vocals" not in encoded:
        encoded.append("vocals")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {track: out_dir / f"{track}{encoding.extension}" for track in encoded}
    with ExitStack() as stack, ThreadPoolExecutor(max(1, threads)) as pool:
        inputs = [*sources_for(wanted), *([MIX] if "instrumental" in wanted else [])]
        readers = {s: stack.enter_context(wave.open(str(stem_dir / f"{s}.wav"), "rb"))
                   for s in inputs}
        channels, rate = _check_same_format(readers)
        writers: dict[str, TrackWriter] = {}
        for track in encoded:
            writers[track] = open_writer(paths[track], encoding, channels, rate)
            stack.callback(writers[track].close)
        block_frames = BLOCK_S * rate
        while True:
            stems = {s: read_block(r, block_frames) for s, r in readers.items()}
            if not next(iter(stems.values())).size:
                break
            pcm = {t: stems[t] if t in stems else _mix(t, stems) for t in encoded}
            list(pool.map(lambda t, block=pcm: writers[t].write(block[t]), encoded))
    paths["acapella"] = paths.get("vocals", out_dir / f"vocals{encoding.extension}")
    return {t: paths[t] for t in wanted}


def _check_same_format(readers: dict[str, wave.Wave_read]) -> tuple[int, int]:
    formats = {(r.getnchannels(), r.getsampwidth(), r.getframerate(), r.getnframes())
               for r in readers.values()}
    if len(formats) != 1:
        raise ValueError(f"Demucs stems differ in format: {sorted(formats)}")
    channels, width, rate, _ = formats.pop()
    if width not in (2, 3):
        raise ValueError(f"expected 16- or 24-bit WAV stems from Demucs, got {8 * width}-bit")
    return channels, rate
