"""A fair share for every client (issue 30): ``priority: high`` only for the clients allowed it,
quotas of audio seconds a day and of result megabytes kept, and ``GET /apiv1/usage`` for each
client's own figures; per key with API_KEYS, per address without (real REST, Redis and S3).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
from pathlib import Path

import requests

from common.audio import probe_mp3

ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789ab"
KEYS = f"alice:{ALICE},bob:{BOB}"
OTHER_ADDRESS = "127.0.0.2"
"""Another loopback address: another client when clients are told apart by address."""


def upload(rest, song: Path, source: str = "127.0.0.1", key: str | None = None,
           **fields: str) -> tuple[int, dict]:
    """A multipart upload of ``song`` with ``fields``, from ``source``: status and answer."""
    prepared = requests.Request(
        "POST", "http://test/apiv1/separate", data=fields,
        files={"file": (song.name, song.read_bytes(), "audio/mpeg")}).prepare()
    headers = {"Content-Type": prepared.headers["Content-Type"]}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection("127.0.0.1", rest.service.port, timeout=60,
                                            source_address=(source, 0))
    try:
        connection.request("POST", "/apiv1/separate", body=prepared.body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def usage(rest, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = rest.get(f"{rest.url}/apiv1/usage", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def cost_s(song: Path) -> int:
    """The audio seconds a song is charged: its duration counted from its frames, rounded up."""
    return math.ceil(probe_mp3(song, 1200))


def test_priority_high_is_for_the_clients_allowed_it(stack, start_rest, make_song):
    rest = start_rest(API_KEYS=KEYS, PRIORITY_CLIENTS="alice")
    song = make_song(seconds=2, seed=81)
    status, answer = upload(rest, song, key=BOB, priority="high")
    assert status == 403, answer
    assert "PRIORITY_CLIENTS" in answer["reason"] and "priority" in answer["reason"]
    assert stack.waiting() == []  # nothing queued for it
    assert upload(rest, song, key=BOB, priority="normal")[0] == 200
    status, answer = upload(rest, make_song(seconds=2, seed=82, name="a.mp3"), key=ALICE,
                            priority="high")
    assert status == 200, answer
    assert stack.status(answer["id"])["state"] == "queued"


def test_audio_seconds_a_day_are_a_quota_per_address(stack, start_rest, make_song):
    first, second, third = (make_song(seconds=s, seed=83 + i, name=f"s{i}.mp3")
                            for i, s in enumerate((4, 4, 3)))
    quota_s = cost_s(first) + cost_s(third)
    rest = start_rest(QUOTA_AUDIO_S_PER_DAY=str(quota_s))
    assert upload(rest, first)[0] == 200
    again = upload(rest, first)  # joins the same job: no second separation, nothing charged
    assert again[0] == 200 and "joined" in again[1]["reason"], again
    status, answer = upload(rest, second)
    assert status == 429, answer
    assert "QUOTA_AUDIO_S_PER_DAY" in answer["reason"] and f"{quota_s}" in answer["reason"]
    assert upload(rest, third)[0] == 200  # what is left is still usable
    assert upload(rest, second, source=OTHER_ADDRESS)[0] == 200  # another client's own quota
    mine = usage(rest)
    assert mine["audio_s"]["used"] == quota_s and mine["audio_s"]["limit"] == quota_s, mine
    assert mine["audio_s"]["resets_at"] > 0
    assert mine["jobs"] == {"queued": 2}, mine
    assert len(stack.waiting()) == 3


def test_result_megabytes_kept_are_a_quota(stack, start_rest, make_song):
    rest = start_rest(API_KEYS=KEYS, QUOTA_STORED_MB="2")
    song = make_song(seconds=4, seed=86)
    # 7 tracks of 24-bit stereo WAV at 44.1 kHz: 7.4 MB for 4 s
    status, answer = upload(rest, song, key=ALICE, format="wav", bit_depth="24")
    assert status == 429, answer
    assert "QUOTA_STORED_MB" in answer["reason"], answer
    status, answer = upload(rest, song, key=ALICE, stems="vocals")  # 0.3 MB as MP3
    assert status == 200, answer
    figures = usage(rest, ALICE)
    assert figures["client"] == "alice"
    assert figures["stored_mb"] == {"used": 1, "limit": 2,
                                    "resets_at": figures["stored_mb"]["resets_at"]}, figures
    assert figures["jobs"] == {"queued": 1}
    assert usage(rest, BOB)["stored_mb"]["used"] == 0  # each client sees its own


def test_usage_counts_jobs_by_state_and_meters_without_quotas(stack, start_rest, make_song):
    rest = start_rest(API_KEYS=KEYS)
    songs = [make_song(seconds=2, seed=87 + i, name=f"u{i}.mp3") for i in range(2)]
    ids = [upload(rest, song, key=BOB)[1]["id"] for song in songs]
    cancel = rest.post(f"{rest.url}/apiv1/cancel/{ids[0]}", timeout=30,
                           headers={"Authorization": f"Bearer {BOB}"})
    assert cancel.status_code == 200, cancel.text
    figures = usage(rest, BOB)
    assert figures["jobs"] == {"cancelled": 1, "queued": 1}, figures
    assert figures["audio_s"] == {"used": sum(cost_s(s) for s in songs), "limit": None,
                                  "resets_at": figures["audio_s"]["resets_at"]}, figures
    assert figures["stored_mb"]["limit"] is None and figures["stored_mb"]["used"] >= 2
    assert usage(rest, ALICE)["jobs"] == {}


def test_usage_counts_a_request_answered_already_separated_as_done(start_api, stack, make_song):
    """With API_KEYS, bob's request for a song alice had separated is answered "already
    separated" with a view of her job: his status says done, and so must his usage (it read
    the view's own record, queued until it expired)."""
    alice, bob = "a" * 32, "b" * 32
    api = start_api(API_KEYS=f"alice:{alice},bob:{bob}")
    body = {"mp3": base64.b64encode(make_song(seconds=1.0).read_bytes()).decode(),
            "stems": ["vocals"]}

    def send(key: str) -> dict:
        answer = api.post(f"{api.url}/apiv1/separate", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    send(alice)
    stack.worker_in_process().run(burst=True)
    bobs = send(bob)
    assert "already separated" in bobs["reason"]
    headers = {"Authorization": f"Bearer {bob}"}
    assert api.get(f"{api.url}/apiv1/status/{bobs['id']}", headers=headers,
                   timeout=30).json()["state"] == "done"
    usage = api.get(f"{api.url}/apiv1/usage", headers=headers, timeout=30).json()
    assert usage["jobs"] == {"done": 1}, usage
