"""The rate limit's client is a valid API token or the address, never a token a client made up.

``POST /`` (the callback sink) checks no token. With ``API_KEYS`` or ``API_TOKEN`` set, the
rate limit used to take whatever bearer token a request carried as its client: a new made-up
token each time was a new client each time, and never limited. In-process REST, real
redis-server.
"""

from __future__ import annotations

import json

import pytest

KEY = "k" * 32
BODY = json.dumps({"id": "x", "status": "done"})


def _codes(api, tokens: list[str]) -> list[int]:
    return [api.post(f"{api.url}/", data=BODY, timeout=30,
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {token}"}).status_code
            for token in tokens]


@pytest.mark.parametrize("keys", [{"API_KEYS": f"alice:{KEY}"}, {"API_TOKEN": KEY}])
def test_made_up_tokens_count_as_the_address(start_api, keys):
    api = start_api(RATE_LIMIT_PER_MIN="3", **keys)
    assert _codes(api, [f"made-up-{n}" for n in range(8)]) == [200] * 3 + [429] * 5


def test_a_valid_key_is_a_client_of_its_own(start_api):
    api = start_api(RATE_LIMIT_PER_MIN="3", API_KEYS=f"alice:{KEY}")
    assert _codes(api, ["made-up"] * 4) == [200] * 3 + [429]  # the address is spent
    assert _codes(api, [KEY] * 4) == [200] * 3 + [429]  # alice's own count
