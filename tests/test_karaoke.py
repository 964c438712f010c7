"""Karaoke jobs on a bag of specialists, through the worker (real services, real Demucs CLI).

The bag is small and random but shaped like ``htdemucs_ft`` (``bench.model``). Jobs that need
the vocals only run the vocals model; they share a Demucs call with each other, not with jobs
that need the whole bag; their tracks are the full bag's, byte for byte; long songs are
chunked with the pruned bag too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.model import build_specialist_bag

pytestmark = pytest.mark.usefixtures("demucs_cli")  # the pruned bag runs through the real CLI

KARAOKE = ["vocals", "instrumental"]


@pytest.fixture(scope="module")
def bag_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_specialist_bag(tmp_path_factory.mktemp("models"), "small_ft", channels=8,
                                t_layers=1)


def _demucs_calls(stack) -> list[str]:
    return [line for line in stack.worker_logs().splitlines() if "-m demucs" in line]


def _track_bytes(stack, record: dict, tmp: Path) -> dict[str, bytes]:
    out = {}
    for track, key in record["tracks"].items():
        stack.minio.fget_object(stack.output_bucket, key, str(tmp / key))
        out[track] = (tmp / key).read_bytes()
    return out


def test_karaoke_jobs_run_the_vocals_model_and_match_the_full_bag(stack, make_song, bag_repo,
                                                                  tmp_path):
    songs = [stack.upload_song(make_song(seconds=4, seed=30 + i, name=f"k{i}.mp3"))
             for i in range(3)]
    stack.push({"songhash": songs[0], "id": "kar-0", "stems": KARAOKE})
    stack.push({"songhash": songs[1], "id": "all-1", "stems": ["vocals", "drums"]})
    stack.push({"songhash": songs[2], "id": "kar-2", "stems": KARAOKE})
    stack.start_worker(DEMUCS_MODEL="small_ft", DEMUCS_REPO=str(bag_repo), BATCH_MAX="4")
    records = {job: stack.wait_for(job) for job in ("kar-0", "all-1", "kar-2")}
    assert all(r["state"] == "done" for r in records.values()), records
    assert set(records["kar-0"]["tracks"]) == set(KARAOKE)

    calls = _demucs_calls(stack)
    assert len(calls) == 2, calls  # the karaoke jobs together, the other alone
    pruned = next(c for c in calls if "-n small_ft_only_vocals" in c)
    assert "j0.mp3" in pruned and "j2.mp3" in pruned and "j1.mp3" not in pruned
    assert "1 of 4 models of bag small_ft for vocals" in stack.worker_logs()
    karaoke = _track_bytes(stack, records["kar-0"], tmp_path)

    # the same song with every track, on the whole bag: the same vocals and instrumental
    stack.push({"songhash": songs[0], "id": "all-0"})
    record = stack.wait_for("all-0")
    assert record["state"] == "done", record
    assert "-n small_ft " in _demucs_calls(stack)[-1]
    every = _track_bytes(stack, record, tmp_path)
    assert karaoke == {track: every[track] for track in KARAOKE}


def test_a_long_karaoke_song_is_chunked_on_the_pruned_bag(stack, make_song, bag_repo):
    songhash = stack.upload_song(make_song(seconds=13.0, seed=40))
    stack.start_worker(DEMUCS_MODEL="small_ft", DEMUCS_REPO=str(bag_repo), CHUNK_OVER_S="10",
                       CHUNK_S="8", CHUNK_OVERLAP_S="2", MODEL_SEGMENT_S="0", BATCH_MAX="1")
    stack.push({"songhash": songhash, "id": "long-kar", "stems": KARAOKE})
    record = stack.wait_for("long-kar", timeout_s=240)
    assert record["state"] == "done", record
    assert record["chunks_total"] == "2" and set(record["tracks"]) == set(KARAOKE)
    calls = _demucs_calls(stack)
    assert len(calls) == 2 and all("-n small_ft_only_vocals" in c for c in calls), calls
    assert stack.status("long-kar-c0")["state"] == "done"
