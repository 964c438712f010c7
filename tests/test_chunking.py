"""Unit tests of chunk planning, lossless cutting and crossfade stitching (real files)."""

from __future__ import annotations

import math
import wave

import numpy as np
import pytest
import sphn

from devstack.synth import write_song
from separation.chunking import cut_chunks, plan_chunks, stitch, write_wav

RATE = 44100


def _read(path) -> np.ndarray:
    with wave.open(str(path), "rb") as reader:
        data = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
        return data.reshape(-1, reader.getnchannels())


def test_plan_covers_the_song_with_overlaps():
    chunks = plan_chunks(301.0, chunk_s=60, overlap_s=10)
    assert [c.start_s for c in chunks] == [0, 50, 100, 150, 200, 250]
    assert all(c.duration_s == 60 for c in chunks[:-1]) and math.isinf(chunks[-1].duration_s)
    assert 301.0 - chunks[-1].start_s > 10  # the last chunk outlasts the overlap
    assert len(plan_chunks(59.0, 60, 10)) == 1
    assert len(plan_chunks(60.5, 60, 10)) == 2
    with pytest.raises(ValueError):
        plan_chunks(100, chunk_s=20, overlap_s=10)


def test_a_pure_tone_cut_and_stitched_is_reconstructed(tmp_path):
    seconds, chunk_s, overlap_s = 23.5, 8, 2
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.5 * np.sin(2 * np.pi * 441.3 * t)
    stereo = np.stack([tone, -tone], axis=1)
    parts = []
    for chunk in plan_chunks(seconds, chunk_s, overlap_s):
        start = chunk.start_s * RATE
        end = len(t) if math.isinf(chunk.duration_s) else start + chunk_s * RATE
        parts.append(tmp_path / f"c{chunk.index}.wav")
        write_wav(parts[-1], stereo[start:end], RATE)
    frames = stitch(parts, overlap_s, tmp_path / "joined.wav")
    joined = _read(tmp_path / "joined.wav") / 32768
    assert frames == len(t) == joined.shape[0]
    assert np.abs(joined - stereo).max() < 1e-4


def test_crossfade_blends_two_different_estimates(tmp_path):
    ones = np.full((3 * RATE, 2), 0.25)
    write_wav(tmp_path / "a.wav", ones, RATE)
    write_wav(tmp_path / "b.wav", -ones, RATE)
    stitch([tmp_path / "a.wav", tmp_path / "b.wav"], 1, tmp_path / "ab.wav")
    joined = _read(tmp_path / "ab.wav")[:, 0] / 32768
    assert joined.shape[0] == 5 * RATE
    fade = joined[2 * RATE:3 * RATE]
    assert fade[0] > 0.24 and fade[-1] < -0.24 and abs(fade[RATE // 2]) < 1e-3
    assert np.all(np.diff(fade) <= 1e-9)  # a monotonic ramp, no seam


def test_cutting_an_mp3_is_sample_exact(tmp_path):
    song = write_song(tmp_path / "song.mp3", seconds=25.0, seed=3)
    chunks = plan_chunks(25.0, chunk_s=8, overlap_s=2)
    parts = cut_chunks(song, chunks, tmp_path / "chunks")
    whole = sphn.FileReader(str(song)).decode_all().T
    whole16 = np.clip(np.round(whole * 32768), -32768, 32767).astype("<i2")
    for chunk, part in zip(chunks, parts, strict=True):
        data = _read(part)
        start = chunk.start_s * RATE
        assert np.array_equal(data, whole16[start:start + data.shape[0]]), chunk
    stitch(parts, 2, tmp_path / "joined.wav")
    joined = _read(tmp_path / "joined.wav")
    assert joined.shape == whole16.shape
    assert np.abs(joined.astype(int) - whole16).max() <= 1
