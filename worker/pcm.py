"""PCM samples of Demucs' WAV stems, 16- or 24-bit, held as int32 at the 24-bit scale; WAV
files written from float samples, read whole as 16-bit ones, and their duration.

Demucs writes 16-bit stems, or 24-bit ones with ``--int24`` (a job asking for 24-bit FLAC or
WAV). Mixing and encoding work on int32 samples at the 24-bit scale whatever the stems' width:
a 16-bit sample ``s`` is ``s << 8``, and back to 16 bits it is ``s`` again exactly, so 16-bit
stems give the very bytes they gave before 24-bit stems existed.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np

FULL_SCALE_24 = 1 << 23
BLOCK_FRAMES = 10 * 44100


def unpack(data: bytes, width: int, channels: int) -> np.ndarray:
    """Little-endian PCM bytes of ``width`` (2 or 3) bytes a sample → int32 at the 24-bit
    scale, shape (frames, channels)."""
    if width == 2:
        samples = np.frombuffer(data, dtype="<i2").astype(np.int32) << 8
    elif width == 3:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        samples = (raw[:, 0].astype(np.int32) | (raw[:, 1].astype(np.int32) << 8)
                   | (raw[:, 2].astype(np.int8).astype(np.int32) << 16))
    else:
        raise ValueError(f"expected 16- or 24-bit PCM, got {8 * width}-bit")
    return samples.reshape(-1, channels)


def clip24(samples: np.ndarray) -> np.ndarray:
    return np.clip(samples, -FULL_SCALE_24, FULL_SCALE_24 - 1)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """24-bit-scale samples rounded to 16 bits (exact for samples that came from 16 bits)."""
    return np.clip((samples.astype(np.int64) + 128) >> 8, -32768, 32767).astype("<i2")


def pack(samples: np.ndarray, width: int) -> bytes:
    """24-bit-scale samples as little-endian PCM bytes of ``width`` (2 or 3) bytes a sample."""
    if width == 2:
        return to_int16(samples).tobytes()
    if width == 3:
        return clip24(samples).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    raise ValueError(f"expected 16- or 24-bit PCM, got {8 * width}-bit")


def read_block(reader: wave.Wave_read, frames: int) -> np.ndarray:
    """Up to ``frames`` frames of ``reader`` at the 24-bit scale (empty at its end)."""
    return unpack(reader.readframes(frames), reader.getsampwidth(), reader.getnchannels())


def convert_width(path: Path, width: int) -> None:
    """Rewrite the WAV file ``path`` with samples of ``width`` bytes (2 or 3), in place,
    block by block; nothing happens if it has that width already."""
    with wave.open(str(path), "rb") as reader:
        if reader.getsampwidth() == width:
            return
        target = path.with_name(path.name + ".part")
        with wave.open(str(target), "wb") as out:
            out.setnchannels(reader.getnchannels())
            out.setsampwidth(width)
            out.setframerate(reader.getframerate())
            while (block := read_block(reader, BLOCK_FRAMES)).size:
                out.writeframes(pack(block, width))
    target.replace(path)


def write_wav(target: Path | BinaryIO, samples: np.ndarray, rate: int, width: int = 2) -> None:
    """Write float samples in [-1, 1], shape (frames, channels), as 16-bit PCM (or 24-bit:
    ``width`` 3)."""
    if width == 2:
        data = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes()
    else:
        data = pack(np.round(samples * FULL_SCALE_24).astype(np.int64), width)
    with wave.open(str(target) if isinstance(target, Path) else target, "wb") as out:
        out.setnchannels(samples.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)


def read_wav(path: Path) -> np.ndarray:
    """A whole 16-bit WAV file as int16 samples, shape (frames, channels)."""
    with wave.open(str(path), "rb") as reader:
        data = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
        return data.reshape(-1, reader.getnchannels())


def wav_duration_s(path: Path) -> float:
    """How long a WAV file plays, from its header."""
    with wave.open(str(path), "rb") as reader:
        return reader.getnframes() / reader.getframerate()
