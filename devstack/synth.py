"""A short synthetic song (bass line, drum hits, a voiced tone) for demos, tests and benchmarks.

The project ships no third-party music; this makes a few seconds of something song-like.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import lameenc
import numpy as np

from common.mp3_frames import Frame, parse_header
from worker.pcm import write_wav

SAMPLE_RATE = 44100


def synth_song(seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Stereo int16 samples, shape (frames, 2): 120 bpm kick/hat, a bass line, a sung vowel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    beat = 0.5
    phase = t % beat
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-phase * 30)) * phase) * np.exp(-phase * 12)
    hat_phase = (t + beat / 2) % beat
    hat = rng.standard_normal(t.size) * np.exp(-hat_phase * 60) * 0.3
    notes = np.array([55.0, 55.0, 65.4, 49.0])  # A1 A1 C2 G1, one per bar
    bass_freq = notes[(t // (4 * beat)).astype(int) % notes.size]
    bass = np.sign(np.sin(2 * np.pi * bass_freq * t)) * 0.25
    vibrato = 1 + 0.01 * np.sin(2 * np.pi * 5 * t)
    voice_freq = 220 * vibrato * np.where((t // 2) % 2 == 0, 1.0, 1.25)
    voice = sum(np.sin(2 * np.pi * k * voice_freq * t) / k for k in range(1, 6)) * 0.15
    voice *= 0.5 + 0.5 * np.sin(2 * np.pi * 0.25 * t) ** 2
    left = 0.5 * kick + hat + bass + voice
    right = 0.5 * kick + 0.7 * hat + bass + 0.8 * voice
    stereo = np.stack([left, right], axis=1)
    stereo /= max(1e-9, float(np.abs(stereo).max())) / 0.8
    return (stereo * 32767).astype(np.int16)


def encode_mp3(samples: np.ndarray, bitrate_kbps: int = 192,
               sample_rate: int = SAMPLE_RATE) -> bytes:
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bitrate_kbps)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(samples.shape[1])
    encoder.set_quality(5)
    return bytes(encoder.encode(np.ascontiguousarray(samples).tobytes()) + encoder.flush())


def wav_bytes(frames: int, channels: int = 2, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A silent 16-bit WAV file: audio that is not an MP3, whatever a name or header says."""
    buffer = io.BytesIO()
    write_wav(buffer, np.zeros((frames, channels)), sample_rate)
    return buffer.getvalue()


def undecodable_mp3(path: Path) -> Path:
    """Valid MP3 headers (the probe accepts it) followed by garbage Demucs cannot decode."""
    good = encode_mp3(synth_song(3.0, seed=5))
    path.write_bytes(good[:2000] + bytes(range(256)) * 400)
    return path


def write_song(path: Path, seconds: float = 6.0, seed: int = 0) -> Path:
    """Write a synthetic MP3 song to ``path``."""
    path.write_bytes(encode_mp3(synth_song(seconds, seed)))
    return path


def lying_mp3(claimed_s: float, real_s: float, bitrate_kbps: int = 32, seed: int = 0) -> bytes:
    """An MP3 whose Xing header claims ``claimed_s`` seconds over frames lasting ``real_s``.

    The attack on duration limits: tools that trust the header (mutagen's ``length``) see a
    short song; decoders play every frame. The frames are a short synthetic clip's, repeated.
    """
    frames = split_frames(encode_mp3(synth_song(4.0, seed), bitrate_kbps))
    first, first_bytes = frames[0]
    header = bytes([*first_bytes[:2], first_bytes[2] & ~0x02, first_bytes[3]])  # no padding
    tag_length = first.length_bytes - (first_bytes[2] >> 1 & 1)
    claimed_frames = round(claimed_s * first.sample_rate / first.samples)
    body = b"Xing" + (1).to_bytes(4, "big") + claimed_frames.to_bytes(4, "big")
    xing = header + bytes(first.side_info_bytes) + body
    xing += bytes(tag_length - len(xing))
    wanted = math.ceil(real_s * first.sample_rate / first.samples)
    return xing + b"".join(frames[i % len(frames)][1] for i in range(wanted))


def split_frames(mp3: bytes) -> list[tuple[Frame, bytes]]:
    """The frames of an MP3 that starts with one and holds nothing else (lameenc's output)."""
    frames, position = [], 0
    while (frame := parse_header(mp3[position:position + 4])) is not None:
        frames.append((frame, mp3[position:position + frame.length_bytes]))
        position += frame.length_bytes
    return frames
