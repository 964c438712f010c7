"""Long songs in overlapping chunks: plan them, cut the input, and stitch the stems back.

Chunk ``i`` starts at ``i * (chunk_s - overlap_s)`` seconds and lasts ``chunk_s`` (the last one
runs to the end, and always lasts more than ``overlap_s``). Starts fall on whole seconds, so
decoding each chunk after one second of pre-roll gives exactly the samples of a whole-file
decode: cutting is lossless and sample-exact. Stitching crossfades linearly over each overlap
(both sides estimate the same signal, so a linear fade keeps its level), streaming block by
block so memory does not grow with the song.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREROLL_S = 1  # the decoder settles within this after a seek
BLOCK_FRAMES = 10 * 44100


@dataclass(frozen=True)
class Chunk:
    index: int
    start_s: int
    duration_s: float  # math.inf for the last chunk: to the end


def plan_chunks(duration_s: float, chunk_s: int, overlap_s: int) -> list[Chunk]:
    """The chunks covering ``duration_s``; one chunk when the song is not longer than one."""
    hop_s = chunk_s - overlap_s
    if hop_s <= overlap_s:
        raise ValueError("a chunk must be longer than twice the overlap")
    count = max(1, math.ceil((duration_s - overlap_s) / hop_s))
    return [Chunk(i, i * hop_s, chunk_s if i < count - 1 else math.inf) for i in range(count)]


def cut_chunks(mp3_path: Path, chunks: list[Chunk], out_dir: Path) -> list[Path]:
    """Decode each chunk of ``mp3_path`` into ``<out_dir>/c<i>.wav`` (16-bit, lossless)."""
    import sphn  # only chunking needs a decoder in the worker

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for chunk in chunks:
        reader = sphn.FileReader(str(mp3_path))
        rate = int(reader.sample_rate)
        preroll_s = min(PREROLL_S, chunk.start_s)
        length_s = reader.duration_sec + 1 if math.isinf(chunk.duration_s) else chunk.duration_s
        pcm = reader.decode(float(chunk.start_s - preroll_s), float(length_s + preroll_s))
        pcm = pcm[:, preroll_s * rate:]
        path = out_dir / f"c{chunk.index}.wav"
        write_wav(path, pcm.T, rate)
        paths.append(path)
    return paths


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """Write float samples in [-1, 1], shape (frames, channels), as 16-bit PCM."""
    pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(pcm.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def _blocks(reader: wave.Wave_read, frames: int) -> Iterator[np.ndarray]:
    channels = reader.getnchannels()
    while frames > 0:
        data = np.frombuffer(reader.readframes(min(frames, BLOCK_FRAMES)), dtype="<i2")
        if not data.size:
            return
        frames -= data.size // channels
        yield data.reshape(-1, channels)


def stitch(parts: list[Path], overlap_s: int, out_path: Path) -> int:
    """Join chunk WAVs that overlap by ``overlap_s``, crossfading linearly; return frames.

    Holds one overlap in memory, whatever the song's length.
    """
    held: np.ndarray | None = None  # the previous part's last overlap, not yet written
    total = 0
    with wave.open(str(out_path), "wb") as out:
        for index, part in enumerate(parts):
            with wave.open(str(part), "rb") as reader:
                rate, channels = reader.getframerate(), reader.getnchannels()
                if index == 0:
                    out.setnchannels(channels)
                    out.setsampwidth(2)
                    out.setframerate(rate)
                overlap = overlap_s * rate
                frames = reader.getnframes()
                if held is not None:
                    head = np.frombuffer(reader.readframes(overlap), dtype="<i2")
                    head = head.reshape(-1, channels)
                    if head.shape != held.shape:
                        raise ValueError(f"chunk {index} is shorter than the overlap")
                    fade = (np.arange(overlap) + 0.5)[:, None] / overlap
                    mixed = held * (1 - fade) + head * fade
                    out.writeframes(np.round(mixed).astype("<i2").tobytes())
                    total += overlap
                    frames -= overlap
                last = index == len(parts) - 1
                keep = 0 if last else overlap
                if frames < keep:
                    raise ValueError(f"chunk {index} is shorter than the overlap")
                for block in _blocks(reader, frames - keep):
                    out.writeframes(block.tobytes())
                    total += block.shape[0]
                held = None if last else np.frombuffer(
                    reader.readframes(keep), dtype="<i2").reshape(-1, channels).astype(np.float64)
    return total
