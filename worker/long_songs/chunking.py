"""Long songs in overlapping chunks: plan them, cut the input, and stitch the stems back.

Demucs itself separates a song in segments (7.8 s for the htdemucs models) that start every
``segment * (1 - 0.25)`` seconds (its default ``--overlap``) and blends them with triangular
weights. A chunk that starts on that grid, and whose overlap with the next chunk is one segment
plus whole grid steps (as many as ``CHUNK_OVERLAP_S`` holds), is separated from exactly the
segments the whole song would be, except within ``segment * 0.25`` (1.95 s) of each cut: there
one segment is missing or zero-padded. The crossfade therefore runs over the middle of each
overlap, skipping that margin at both ends, and the stitched stems match an unchunked run
(``bench/long_songs.py`` measures it). ``MODEL_SEGMENT_S`` must be the model's segment for
this to hold; with ``MODEL_SEGMENT_S=0`` the plan is plain ``CHUNK_S``/``CHUNK_OVERLAP_S`` and
the crossfade spans the whole overlap.

Times are integer milliseconds. Cutting decodes from a whole second with at least one second of
pre-roll and drops the pre-roll exactly, so chunks hold the very samples of a whole-file decode
(lossless, sample-exact). Stitching streams block by block: memory does not grow with the song.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.settings import Settings
from worker.pcm import pack, unpack, write_wav

PREROLL_S = 1  # the decoder settles within this after a seek
BLOCK_FRAMES = 10 * 44100
DEMUCS_OVERLAP = 0.25  # Demucs' default --overlap between its segments; the worker keeps it


@dataclass(frozen=True)
class Chunk:
    index: int
    start_ms: int
    duration_ms: int | None  # None for the last chunk: to the end


@dataclass(frozen=True)
class ChunkPlan:
    """Where the chunks lie, how much consecutive ones overlap, and where the crossfade runs."""

    chunks: list[Chunk]
    overlap_ms: int
    fade_margin_ms: int  # the crossfade skips this much at both ends of each overlap


def frames(ms: int, rate: int) -> int:
    return round(ms * rate / 1000)


def geometry(chunk_s: float, overlap_s: float, segment_s: float) -> tuple[int, int, int]:
    """(hop, overlap, fade margin) in ms; chunks (hop + overlap) never exceed ``chunk_s``.

    With ``segment_s`` the hop is whole grid steps and the overlap one segment plus as many
    whole grid steps as ``overlap_s`` holds. Raises ValueError when no chunk fits in ``chunk_s``.
    """
    chunk_ms, overlap_ms = round(chunk_s * 1000), round(overlap_s * 1000)
    if segment_s <= 0:
        hop_ms, margin_ms = chunk_ms - overlap_ms, 0
    else:
        segment_ms = round(segment_s * 1000)
        grid_ms = round(segment_ms * (1 - DEMUCS_OVERLAP))
        margin_ms = segment_ms - grid_ms
        overlap_ms = segment_ms + grid_ms * (max(0, overlap_ms - segment_ms) // grid_ms)
        hop_ms = grid_ms * ((chunk_ms - overlap_ms) // grid_ms)
    if overlap_ms < 1 or hop_ms <= overlap_ms:
        raise ValueError(
            f"CHUNK_S {chunk_s:g} s is too short: a chunk must hold more than twice its overlap "
            f"({overlap_ms / 1000:g} s" + (f" on the {segment_s:g} s segment grid)" if segment_s
                                           > 0 else ")"))
    return hop_ms, overlap_ms, margin_ms


def check_geometry(settings: Settings) -> None:
    """Raise ValueError at start when the chunk settings cannot make a chunk."""
    geometry(settings.chunk_s, settings.chunk_overlap_s, settings.chunk_segment_s)


def plan_chunks(duration_s: float, chunk_s: float, overlap_s: float,
                segment_s: float = 0.0) -> ChunkPlan:
    """The chunks covering ``duration_s``; one chunk when the song is not longer than one."""
    hop_ms, overlap_ms, margin_ms = geometry(chunk_s, overlap_s, segment_s)
    count = max(1, math.ceil((duration_s * 1000 - overlap_ms) / hop_ms))
    chunks = [Chunk(i, i * hop_ms, hop_ms + overlap_ms if i < count - 1 else None)
              for i in range(count)]
    return ChunkPlan(chunks, overlap_ms, margin_ms)


def cut_chunks(mp3_path: Path, chunks: list[Chunk], out_dir: Path, duration_s: float
               ) -> list[Path]:
    """Decode each chunk of ``mp3_path`` into ``<out_dir>/c<i>.wav`` (16-bit, lossless).

    ``duration_s`` is the song's counted duration (``probe_mp3``): the decoder's own figure
    comes from the header, which may lie, and the last chunk runs to the real end.
    """
    import sphn  # the decoder Demucs 4.1.0 uses; imported only where audio is decoded

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for chunk in chunks:
        reader = sphn.FileReader(str(mp3_path))
        rate = int(reader.sample_rate)
        from_s = max(0, chunk.start_ms // 1000 - PREROLL_S)  # a whole second, before a pre-roll
        skip = frames(chunk.start_ms, rate) - from_s * rate
        if chunk.duration_ms is None:
            pcm = reader.decode(float(from_s), duration_s + 1 - from_s)[:, skip:]
        else:
            count = frames(chunk.duration_ms, rate)
            pcm = reader.decode(float(from_s), (skip + count) / rate + 1)[:, skip:skip + count]
        path = out_dir / f"c{chunk.index}.wav"
        write_wav(path, pcm.T, rate)
        paths.append(path)
    return paths


def _blocks(reader: wave.Wave_read, frames: int) -> Iterator[bytes]:
    """Up to ``frames`` frames of ``reader``, as raw PCM bytes, block by block."""
    frame_bytes = reader.getnchannels() * reader.getsampwidth()
    while frames > 0:
        data = reader.readframes(min(frames, BLOCK_FRAMES))
        if not data:
            return
        frames -= len(data) // frame_bytes
        yield data


def stitch(parts: list[Path], overlap_ms: int, out_path: Path, fade_margin_ms: int = 0) -> int:
    """Join chunk WAVs that overlap by ``overlap_ms``; return the frames written.

    Over each overlap the previous chunk holds for ``fade_margin_ms``, a linear crossfade runs
    (both sides estimate the same signal, so a linear fade keeps its level), and the next chunk
    holds for the last ``fade_margin_ms``. Holds one overlap in memory, whatever the length.
    Parts are 16- or 24-bit PCM, all of one width, which the joined file keeps.
    """
    held: np.ndarray | None = None  # the previous part's last overlap, not yet written
    total = 0
    width, scale = 2, 256
    with wave.open(str(out_path), "wb") as out:
        for index, part in enumerate(parts):
            with wave.open(str(part), "rb") as reader:
                rate, channels = reader.getframerate(), reader.getnchannels()
                if index == 0:
                    width = reader.getsampwidth()
                    scale = 256 if width == 2 else 1  # fade at the parts' own scale
                    out.setnchannels(channels)
                    out.setsampwidth(width)
                    out.setframerate(rate)
                elif reader.getsampwidth() != width:
                    raise ValueError(f"chunk {index} is {8 * reader.getsampwidth()}-bit, "
                                     f"chunk 0 {8 * width}-bit")
                overlap = frames(overlap_ms, rate)
                count = reader.getnframes()
                if held is not None:
                    head = unpack(reader.readframes(overlap), width, channels) / scale
                    if head.shape != held.shape:
                        raise ValueError(f"chunk {index} is shorter than the overlap")
                    fade = _fade(overlap, frames(fade_margin_ms, rate))
                    mixed = held * (1 - fade) + head * fade
                    out.writeframes(pack(np.round(mixed).astype(np.int64) * scale, width))
                    total += overlap
                    count -= overlap
                last = index == len(parts) - 1
                keep = 0 if last else overlap
                if count < keep:
                    raise ValueError(f"chunk {index} is shorter than the overlap")
                for block in _blocks(reader, count - keep):
                    out.writeframes(block)
                    total += len(block) // (channels * width)
                held = None if last else unpack(
                    reader.readframes(keep), width, channels) / scale
    return total


def _fade(overlap: int, margin: int) -> np.ndarray:
    """The next chunk's weight over an overlap: 0 for ``margin``, a linear ramp, then 1."""
    if 2 * margin >= overlap:
        raise ValueError("the crossfade margins leave no room for a fade")
    ramp = (np.arange(overlap) + 0.5 - margin) / (overlap - 2 * margin)
    return np.clip(ramp, 0.0, 1.0)[:, None]
