"""Chunked separation matches whole-song separation on Demucs' segment grid (real Demucs CLI).

A small htdemucs (the pretrained one's 7.8 s segments and sources, random weights, built by
``bench.model``) separates a 22 s song whole and as two chunks, cut and stitched by the
worker's own functions. On the segment grid (the default plan) the stitched stems must equal
the whole-song stems up to rounding; off the grid they must not, which shows the comparison
can fail (a random model's output depends on where its segments fall).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bench.measures import snr_db
from bench.model import build_htdemucs
from common.contract import DEMUCS_STEMS
from devstack.synth import write_song
from worker.long_songs.chunking import cut_chunks, plan_chunks, stitch
from worker.pcm import read_wav

pytestmark = pytest.mark.usefixtures("demucs_cli")  # the real CLI separates the chunks

SONG_S = 22.0


def test_chunks_on_the_segment_grid_match_the_whole_song(tmp_path):
    repo = build_htdemucs(tmp_path / "models", "small_ht", channels=8, t_layers=1)
    song = write_song(tmp_path / "song.mp3", seconds=SONG_S, seed=5)
    plans = {"grid": plan_chunks(SONG_S, 20, 2, segment_s=7.8),  # [0, 19.5 s), [11.7 s, end)
             "plain": plan_chunks(SONG_S, 20, 8, segment_s=0.0)}  # [0, 20 s), [12 s, end)
    assert all(len(plan.chunks) == 2 for plan in plans.values())
    parts = {name: [path.rename(path.with_name(f"{name}-{path.name}"))  # distinct tracks
                    for path in cut_chunks(song, plan.chunks, tmp_path / name, SONG_S)]
             for name, plan in plans.items()}
    inputs = [song, *(path for paths in parts.values() for path in paths)]
    result = subprocess.run(
        [sys.executable, "-m", "demucs", "-n", "small_ht", "--repo", str(repo), "-d", "cpu",
         "--shifts", "0", "-o", str(tmp_path / "out"), *(str(p) for p in inputs)],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "out" / "small_ht"

    snr: dict[str, list[float]] = {}
    for name, plan in plans.items():
        for stem in DEMUCS_STEMS:
            joined = tmp_path / f"{name}-{stem}.wav"
            stitch([out / p.stem / f"{stem}.wav" for p in parts[name]], plan.overlap_ms, joined,
                   plan.fade_margin_ms)
            whole = read_wav(out / "song" / f"{stem}.wav").astype(np.float64)
            estimate = read_wav(joined).astype(np.float64)
            assert estimate.shape == whole.shape  # the input's exact length
            snr.setdefault(name, []).append(snr_db(whole, estimate))
    assert min(snr["grid"]) >= 48, snr  # measured 52-65 dB (44 dB if the fade ignored margins)
    assert max(snr["plain"]) < 30, snr  # measured 7-17 dB
