"""The benchmark's real-size model: built with random weights, loaded by the real Demucs CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.model import NAME, build_real_size_model, parameter_count
from devstack.synth import write_song

pytestmark = pytest.mark.usefixtures("demucs_cli")  # the real-size model through the real CLI


def test_real_size_model_runs_through_the_cli(tmp_path):
    repo = build_real_size_model(tmp_path / "models")
    assert (repo / f"{NAME}.th").exists() and not list(repo.glob("*.partial"))
    assert 41_000_000 < parameter_count(repo) < 42_000_000  # the pretrained htdemucs' size
    song = write_song(tmp_path / "clip.mp3", seconds=2.0)
    result = subprocess.run(
        [sys.executable, "-m", "demucs", "-n", NAME, "--repo", str(repo), "-d", "cpu",
         "--shifts", "0", "-o", str(tmp_path / "out"), str(song)],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    stems = sorted(p.name for p in (tmp_path / "out" / NAME / "clip").iterdir())
    assert stems == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
