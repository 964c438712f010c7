"""With API_KEYS a track is owned in the encoding it was asked for: each encoding is its own
object. Ownership was per song, model and track name: alice, who asked for MP3, could read
bob's FLAC, and bob's removal of his FLAC answered "Removed" and left the object stored,
since alice owned "vocals". In-process REST, real redis-server and S3 server, the worker
in-process on the stand-in Demucs."""

from __future__ import annotations

import base64

import pytest
from minio.error import S3Error

ALICE, BOB = "a" * 32, "b" * 32


def _send(api, key: str, song, **fields) -> dict:
    body = {"mp3": base64.b64encode(song.read_bytes()).decode(), "stems": ["vocals"], **fields}
    answer = api.post(f"{api.url}/apiv1/separate", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _stored(stack, key: str) -> bool:
    try:
        stack.minio.stat_object(stack.output_bucket, key)
        return True
    except S3Error:
        return False


@pytest.fixture
def separated(start_api, stack, make_song):
    """alice's song as MP3, bob's same song as FLAC, both separated."""
    api = start_api(API_KEYS=f"alice:{ALICE},bob:{BOB}")
    song = make_song(seconds=1.0)
    songhash = _send(api, ALICE, song)["hash"]
    _send(api, BOB, song, format="flac")
    stack.worker_in_process().run(burst=True)
    assert _stored(stack, f"{songhash}-vocals.flac") and _stored(stack, f"{songhash}-vocals.mp3")
    return api, songhash


def _get(api, songhash: str, track: str, key: str) -> int:
    return api.get(f"{api.url}/apiv1/track/{songhash}/{track}", timeout=30,
                   headers={"Authorization": f"Bearer {key}"}).status_code


def test_each_client_reads_its_own_encoding_only(separated):
    api, songhash = separated
    assert _get(api, songhash, "vocals.flac", ALICE) == 404  # she asked for MP3
    assert _get(api, songhash, "vocals.mp3", BOB) == 404  # he asked for FLAC
    assert _get(api, songhash, "vocals.mp3", ALICE) == _get(api, songhash, "vocals.flac", BOB) \
        == 200


def test_removing_my_flac_deletes_it_and_keeps_the_others_mp3(separated, stack):
    api, songhash = separated
    removed = api.delete(f"{api.url}/apiv1/remove/{songhash}/vocals.flac", timeout=30,
                         headers={"Authorization": f"Bearer {BOB}"})
    assert removed.status_code == 200 and removed.json()["removed"] == ["vocals.flac"], \
        removed.text
    assert not _stored(stack, f"{songhash}-vocals.flac")
    assert _stored(stack, f"{songhash}-vocals.mp3") and _get(api, songhash, "vocals.mp3",
                                                             ALICE) == 200
    status = api.get(f"{api.url}/apiv1/status/{songhash}", timeout=30,
                     headers={"Authorization": f"Bearer {BOB}"}).json()
    assert "vocals" not in status["tracks"], status


def test_removing_all_keeps_what_another_client_still_owns(separated, stack):
    api, songhash = separated
    removed = api.delete(f"{api.url}/apiv1/remove/{songhash}/all", timeout=30,
                         headers={"Authorization": f"Bearer {ALICE}"})
    assert removed.status_code == 200, removed.text
    assert removed.json()["removed"] == ["vocals"]
    assert not _stored(stack, f"{songhash}-vocals.mp3")
    assert _stored(stack, f"{songhash}-vocals.flac")  # bob's
    assert _get(api, songhash, "vocals.flac", BOB) == 200
