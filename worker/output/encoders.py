"""Track writers, one per output format, each fed 24-bit-scale PCM blocks (``worker.pcm``).

MP3 with lameenc (as Demucs itself does), FLAC with soundfile (libsndfile, bundled in its
wheel), WAV with the standard library. Each track is encoded once, straight from the stems.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import BinaryIO, Protocol

import lameenc
import numpy as np

from common.formats import Encoding
from worker.pcm import clip24, pack, to_int16

MP3_QUALITY = 2  # Demucs' default MP3 preset


class TrackWriter(Protocol):
    def write(self, samples: np.ndarray) -> None: ...

    def close(self) -> None: ...


class Mp3Writer:
    def __init__(self, path: Path, channels: int, rate: int, bitrate_kbps: int) -> None:
        self.encoder = lameenc.Encoder()
        self.encoder.set_bit_rate(bitrate_kbps)
        self.encoder.set_in_sample_rate(rate)
        self.encoder.set_channels(channels)
        self.encoder.set_quality(MP3_QUALITY)
        self.file: BinaryIO = path.open("wb")

    def write(self, samples: np.ndarray) -> None:
        self.file.write(self.encoder.encode(to_int16(samples).tobytes()))

    def close(self) -> None:
        try:
            self.file.write(self.encoder.flush())
        finally:
            self.file.close()


class WavWriter:
    def __init__(self, path: Path, channels: int, rate: int, bit_depth: int) -> None:
        self.width = bit_depth // 8
        self.file = wave.open(str(path), "wb")  # noqa: SIM115 - closed by close()
        self.file.setnchannels(channels)
        self.file.setsampwidth(self.width)
        self.file.setframerate(rate)

    def write(self, samples: np.ndarray) -> None:
        self.file.writeframes(pack(samples, self.width))

    def close(self) -> None:
        self.file.close()


class FlacWriter:
    def __init__(self, path: Path, channels: int, rate: int, bit_depth: int) -> None:
        import soundfile  # the worker's only user of libsndfile

        self.bit_depth = bit_depth
        self.file = soundfile.SoundFile(str(path), "w", samplerate=rate, channels=channels,
                                        format="FLAC", subtype=f"PCM_{bit_depth}")

    def write(self, samples: np.ndarray) -> None:
        if self.bit_depth == 16:
            self.file.write(to_int16(samples))
        else:  # libsndfile takes int32 at full scale and keeps the top 24 bits
            self.file.write(clip24(samples).astype(np.int32) << 8)

    def close(self) -> None:
        self.file.close()


def open_writer(path: Path, encoding: Encoding, channels: int, rate: int) -> TrackWriter:
    """A writer of ``encoding`` into ``path``."""
    if encoding.format == "mp3":
        return Mp3Writer(path, channels, rate, encoding.bitrate_kbps)
    if encoding.format == "flac":
        return FlacWriter(path, channels, rate, encoding.bit_depth)
    if encoding.format == "wav":
        return WavWriter(path, channels, rate, encoding.bit_depth)
    raise ValueError(f"unknown format {encoding.format!r}")
