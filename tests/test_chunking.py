"""Unit tests of chunk planning, lossless cutting and crossfade stitching (real files)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import sphn

from devstack.synth import write_song
from worker.long_songs.chunking import (
    cut_chunks,
    frames,
    geometry,
    plan_chunks,
    stitch,
)
from worker.pcm import read_wav, write_wav

RATE = 44100


def test_plan_covers_the_song_with_overlaps():
    plan = plan_chunks(301.0, chunk_s=60, overlap_s=10)
    assert [c.start_ms for c in plan.chunks] == [0, 50_000, 100_000, 150_000, 200_000, 250_000]
    assert all(c.duration_ms == 60_000 for c in plan.chunks[:-1])
    assert plan.chunks[-1].duration_ms is None
    assert (plan.overlap_ms, plan.fade_margin_ms) == (10_000, 0)
    assert 301_000 - plan.chunks[-1].start_ms > 10_000  # the last chunk outlasts the overlap
    assert len(plan_chunks(59.0, 60, 10).chunks) == 1
    assert len(plan_chunks(60.5, 60, 10).chunks) == 2
    with pytest.raises(ValueError):
        plan_chunks(100, chunk_s=20, overlap_s=10)


def test_plan_on_the_demucs_segment_grid():
    # htdemucs: 7.8 s segments every 5.85 s (apply_model's stride, 257985 samples at 44.1 kHz)
    assert geometry(60, 10, 7.8) == (46_800, 7_800, 1_950)  # hop, overlap, fade margin
    assert geometry(60, 15, 7.8) == (40_950, 13_650, 1_950)  # one segment + one step
    assert geometry(60, 1, 7.8) == (46_800, 7_800, 1_950)  # never less than a segment
    plan = plan_chunks(600.0, 60, 10, segment_s=7.8)
    stride = int(0.75 * int(44100 * Fraction(39, 5)))  # what Demucs computes
    for chunk in plan.chunks:
        assert chunk.start_ms * 44100 % (1000 * stride) == 0  # starts on the grid
        if chunk.duration_ms is not None:
            assert chunk.duration_ms <= 60_000
            # its end is one segment after a grid point: no partial segment but the last one
            assert (chunk.duration_ms - 7_800) * 44100 % (1000 * stride) == 0
    assert 600_000 - plan.chunks[-1].start_ms > plan.overlap_ms
    with pytest.raises(ValueError, match="too short"):
        geometry(15, 10, 7.8)


def test_a_pure_tone_cut_and_stitched_is_reconstructed(tmp_path):
    seconds, chunk_s, overlap_s = 23.5, 8, 2
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.5 * np.sin(2 * np.pi * 441.3 * t)
    stereo = np.stack([tone, -tone], axis=1)
    parts = []
    for segment_s in (0.0, 1.6):  # plain, and on a 1.6 s segment grid (fade margin 0.4 s)
        plan = plan_chunks(seconds, chunk_s, overlap_s, segment_s)
        for chunk in plan.chunks:
            start = frames(chunk.start_ms, RATE)
            end = len(t) if chunk.duration_ms is None else start + frames(chunk.duration_ms, RATE)
            parts.append(tmp_path / f"c{segment_s}-{chunk.index}.wav")
            write_wav(parts[-1], stereo[start:end], RATE)
        count = stitch(parts[-len(plan.chunks):], plan.overlap_ms, tmp_path / "joined.wav",
                       plan.fade_margin_ms)
        joined = read_wav(tmp_path / "joined.wav") / 32768
        assert count == len(t) == joined.shape[0]
        assert np.abs(joined - stereo).max() < 1e-4


def test_crossfade_blends_two_different_estimates(tmp_path):
    ones = np.full((3 * RATE, 2), 0.25)
    write_wav(tmp_path / "a.wav", ones, RATE)
    write_wav(tmp_path / "b.wav", -ones, RATE)
    stitch([tmp_path / "a.wav", tmp_path / "b.wav"], 1000, tmp_path / "ab.wav")
    joined = read_wav(tmp_path / "ab.wav")[:, 0] / 32768
    assert joined.shape[0] == 5 * RATE
    fade = joined[2 * RATE:3 * RATE]
    assert fade[0] > 0.24 and fade[-1] < -0.24 and abs(fade[RATE // 2]) < 1e-3
    assert np.all(np.diff(fade) <= 1e-9)  # a monotonic ramp, no seam
    # with margins, each side holds alone at both ends of the overlap, the ramp runs between
    stitch([tmp_path / "a.wav", tmp_path / "b.wav"], 1000, tmp_path / "ab2.wav", 250)
    fade = read_wav(tmp_path / "ab2.wav")[2 * RATE:3 * RATE, 0] / 32768
    quarter = RATE // 4
    assert np.allclose(fade[:quarter], 0.25, atol=1e-4)
    assert np.allclose(fade[-quarter:], -0.25, atol=1e-4)
    assert abs(fade[RATE // 2]) < 1e-3 and np.all(np.diff(fade) <= 1e-9)


def test_cutting_an_mp3_is_sample_exact(tmp_path):
    song = write_song(tmp_path / "song.mp3", seconds=25.0, seed=3)
    plan = plan_chunks(25.0, chunk_s=8, overlap_s=2, segment_s=1.4)  # starts every 6.3 s
    chunks = plan.chunks
    assert any(c.start_ms % 1000 for c in chunks)  # some start within a second
    parts = cut_chunks(song, chunks, tmp_path / "chunks", 25.0)
    whole = sphn.FileReader(str(song)).decode_all().T
    whole16 = np.clip(np.round(whole * 32768), -32768, 32767).astype("<i2")
    for chunk, part in zip(chunks, parts, strict=True):
        data = read_wav(part)
        start = frames(chunk.start_ms, RATE)
        if chunk.duration_ms is not None:
            assert data.shape[0] == frames(chunk.duration_ms, RATE)
        assert np.array_equal(data, whole16[start:start + data.shape[0]]), chunk
    stitch(parts, plan.overlap_ms, tmp_path / "joined.wav", plan.fade_margin_ms)
    joined = read_wav(tmp_path / "joined.wav")
    assert joined.shape == whole16.shape
    assert np.abs(joined.astype(int) - whole16).max() <= 1
