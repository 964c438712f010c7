"""``owners:<songhash>:<model>`` (who owns a song's tracks, with API_KEYS) expires as the tracks
do: it used to live forever, one key per distinct song a client ever sent, refused requests
included. In-process REST, real redis-server and S3 server."""

from __future__ import annotations

import base64

import pytest

ALICE = "a" * 32
AUTH = {"Authorization": f"Bearer {ALICE}"}
DAY_S = 86400


def _post(api, path) -> int:
    body = {"mp3": base64.b64encode(path.read_bytes()).decode(), "stems": ["vocals"]}
    return api.post(f"{api.url}/apiv1/separate", json=body, headers=AUTH,
                    timeout=30).status_code


def _ttls(stack) -> list[int]:
    return [stack.redis.ttl(key) for key in stack.redis.keys("owners:*")]


@pytest.mark.parametrize("days", [7, 30])
def test_an_owners_key_outlives_the_tracks_and_then_expires(start_api, stack, make_song, days):
    api = start_api(API_KEYS=f"alice:{ALICE}", RETENTION_DAYS=str(days))
    assert _post(api, make_song(seconds=1.0)) == 200
    status_ttl_s = (days + 1) * DAY_S  # the default STATUS_TTL_S
    [ttl] = _ttls(stack)
    assert status_ttl_s + (days + 1) * DAY_S - 60 <= ttl <= status_ttl_s + (days + 1) * DAY_S


def test_a_request_refused_by_its_quota_leaves_no_key_forever(start_api, stack, make_song):
    api = start_api(API_KEYS=f"alice:{ALICE}", QUOTA_AUDIO_S_PER_DAY="2")
    codes = [_post(api, make_song(seconds=3.0, seed=seed, name=f"s{seed}.mp3"))
             for seed in range(1, 4)]
    assert codes == [429] * 3
    ttls = _ttls(stack)
    assert len(ttls) == 3 and all(ttl > 0 for ttl in ttls), ttls


def test_with_retention_off_the_key_stays_as_the_tracks_do(start_api, stack, make_song):
    api = start_api(API_KEYS=f"alice:{ALICE}", RETENTION_DAYS="0")
    assert _post(api, make_song(seconds=1.0)) == 200
    assert _ttls(stack) == [-1]
