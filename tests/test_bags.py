"""Pruned bags of models: the requested stems of the full bag, from only the models they need.

The CLI test runs the real Demucs CLI on a small random bag shaped like ``htdemucs_ft`` (four
small htdemucs with their own random weights, one-hot weights, built by ``bench.model``): the
vocals of the bag pruned to its vocals model must equal the full bag's vocals, and Demucs must
report a bag of one model. The other tests read bag files only (no model runs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.measures import snr_db
from bench.model import build_specialist_bag
from common.contract import DEMUCS_STEMS
from common.models import Model
from devstack.synth import write_song
from worker.demucs import bags
from worker.demucs.weights import WeightsError, check, demucs_remote, remote_files
from worker.pcm import read_wav

pytestmark = pytest.mark.usefixtures("demucs_cli")  # pruned bags run through the real CLI

SMALL = {"channels": 8, "t_layers": 1}


def _demucs(name: str, repo: Path, out: Path, song: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "demucs", "-n", name, "--repo", str(repo), "-d", "cpu",
         "--shifts", "0", "-o", str(out), str(song)],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_a_pruned_bag_gives_the_full_bags_vocals_from_one_model(tmp_path):
    repo = build_specialist_bag(tmp_path / "models", "small_ft", **SMALL)
    song = write_song(tmp_path / "song.mp3", seconds=9.0, seed=8)
    pruned = bags.pruned_bag("small_ft", str(repo), ["vocals"])
    assert pruned is not None and pruned.name == "small_ft_only_vocals"
    folder = pruned.write(tmp_path / "pruned")
    spec = json.loads((folder / "small_ft_only_vocals.yaml").read_text())
    assert spec == {"models": ["small_ft_vocals"], "weights": [[0.0, 0.0, 0.0, 1.0]]}
    assert sorted(p.name for p in folder.glob("*.th")) == ["small_ft_vocals.th"]

    full_log = _demucs("small_ft", repo, tmp_path / "full", song)
    pruned_log = _demucs(pruned.name, folder, tmp_path / "pruned-out", song)
    assert "bag of 4 models" in full_log and "bag of 1 models" in pruned_log

    full = read_wav(tmp_path / "full" / "small_ft" / "song" / "vocals.wav").astype(np.float64)
    alone = read_wav(tmp_path / "pruned-out" / pruned.name / "song" / "vocals.wav")
    assert full.shape == alone.shape and np.abs(full).max() > 100  # not silence
    assert snr_db(full, alone.astype(np.float64)) >= 60  # measured: identical (inf)
    # the control: another specialist's output is not the vocals (the comparison can fail)
    drums = read_wav(tmp_path / "full" / "small_ft" / "song" / "drums.wav").astype(np.float64)
    assert snr_db(full, drums) < 10


def test_what_is_kept_follows_the_weights(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("a", "b-0f1e", "c"):
        (repo / f"{name}.th").write_bytes(b"")
    (repo / "bag.yaml").write_text("models: ['a', 'b', 'c']\nweights: [[1, 0, 0, 0], "
                                   "[0, 1, 1, 0], [0, 0, 0.5, 1]]\nsegment: 7\n")
    (repo / "equal.yaml").write_text("models: ['a', 'c']\n")

    def kept(model: str, *sources: str) -> tuple[str, ...] | None:
        pruned = bags.pruned_bag(model, str(repo), sources)
        return None if pruned is None else tuple(pruned.bag.signatures[i] for i in pruned.kept)

    assert kept("bag", "vocals") == ("c",)
    assert kept("bag", "drums", "bass") == ("a", "b")
    assert kept("bag", "other") == ("b", "c")  # both weigh it: both run, as in the full bag
    assert kept("bag", "drums", "other") is None  # every model is needed: the bag as named
    assert kept("equal", "vocals") is None  # no weights: every model weighs every source
    assert kept("a", "vocals") is None  # a single model
    assert kept("../bag", "vocals") is None and kept("nothing", "vocals") is None

    pruned = bags.pruned_bag("bag", str(repo), ["drums", "bass"])
    assert pruned is not None
    folder = pruned.write(tmp_path / "out")
    assert json.loads((folder / f"{pruned.name}.yaml").read_text())["segment"] == 7
    assert sorted(p.name for p in folder.iterdir()) == ["a.th", "b-0f1e.th",
                                                         "bag_only_drums_bass.yaml"]
    assert (folder / "b-0f1e.th").resolve() == (repo / "b-0f1e.th").resolve()


def pretrained(name: str) -> Model:
    """A Demucs pretrained model as ``DEMUCS_MODEL`` alone names it (no MODELS_FILE)."""
    return Model(name, DEMUCS_STEMS, "MIT", "test", None, None)


def checked_repo(model: Model, folder: Path) -> Path:
    """The ``--repo`` folder a worker lays out for ``model`` once its files are checked."""
    checked = check(model)
    assert checked is not None
    return checked.lay_out(folder)


def test_a_remote_bag_is_pruned_once_its_files_are_cached(tmp_path, monkeypatch):
    """htdemucs_ft from Demucs' own remote files; the models must be in torch hub's cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match="is missing"):  # not downloaded yet
        check(pretrained("htdemucs_ft"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("f7e0c4bc-ba3fe64a.th", "d12395a8-e57c48e6.th", "92cfc3b6-ef3bcb9c.th",
                 "04573f0d-f3cf25b2.th"):  # demucs/remote/files.txt
        (checkpoints / name).write_bytes(b"")
    repo = checked_repo(pretrained("htdemucs_ft"), tmp_path / "shelf-1")
    pruned = bags.pruned_bag("htdemucs_ft", str(repo), ["vocals"])
    assert pruned is not None and pruned.description() == \
        "1 of 4 models of bag htdemucs_ft for vocals"
    assert [pruned.bag.files[i].name for i in pruned.kept] == ["04573f0d-f3cf25b2.th"]
    assert pruned.bag.files[pruned.kept[0]].resolve() == checkpoints / "04573f0d-f3cf25b2.th"
    (checkpoints / "955717e8-8726e21a.th").write_bytes(b"")
    repo = checked_repo(pretrained("htdemucs"), tmp_path / "shelf-2")
    assert bags.pruned_bag("htdemucs", str(repo), ["vocals"]) is None  # a bag of one model


@pytest.mark.parametrize("model", ["mdx_extra", "htdemucs_6s"])
def test_bags_that_weigh_every_source_run_whole(tmp_path, monkeypatch, model):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in remote_files(demucs_remote() / "files.txt").values():
        (checkpoints / name).write_bytes(b"")
    repo = checked_repo(pretrained(model), tmp_path / "shelf")
    assert bags.load_bag(model, str(repo)) is not None  # its files are "cached"
    assert bags.pruned_bag(model, str(repo), ["vocals"]) is None
