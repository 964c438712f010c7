"""The Host header is checked before anything else (rest/hosts.py, ``ALLOWED_HOSTS``).

DNS rebinding: a page on ``rebind.evil.example`` has the browser resolve that name to the
service, so the browser sends ``Host: rebind.evil.example:<port>`` with a matching ``Origin``
and ``Sec-Fetch-Site: same-origin``, which the CSRF guard cannot tell from the service's own
page. Against the real REST service (real Redis and S3 behind it).
"""

from __future__ import annotations

import base64

import pytest
import requests

from common.settings import Settings

TIMEOUT_S = 30
EVIL = "rebind.evil.example"


def rebound(rest, name: str = EVIL) -> dict[str, str]:
    """What a browser sends from a page on ``name`` that resolves to the service."""
    port = rest.url.rsplit(":", 1)[1]
    return {"Host": f"{name}:{port}", "Origin": f"http://{name}:{port}",
            "Sec-Fetch-Site": "same-origin"}


def assert_refused(response: requests.Response) -> None:
    assert response.status_code == 400, (response.request.method, response.request.url,
                                         response.status_code, response.text)
    assert "ALLOWED_HOSTS" in response.json()["reason"]
    assert EVIL not in response.text  # the answer never echoes the client's Host


def test_a_rebound_host_is_refused_before_routes_and_the_csrf_check(stack, api, make_song):
    song = make_song(seconds=1.0).read_bytes()
    sent = api.post(f"{api.url}/apiv1/separate", timeout=TIMEOUT_S,
                         json={"mp3": base64.b64encode(song).decode()})
    assert sent.status_code == 200, sent.text
    job_id, songhash = sent.json()["id"], sent.json()["hash"]
    evil = rebound(api)
    for response in (
            api.get(f"{api.url}/apiv1/status/{job_id}", headers=evil, timeout=TIMEOUT_S),
            api.get(f"{api.url}/apiv1/queue", headers=evil, timeout=TIMEOUT_S),
            api.get(f"{api.url}/apiv1/remove/{songhash}/all", headers=evil,
                         timeout=TIMEOUT_S),
            api.post(f"{api.url}/apiv1/cancel/{job_id}", headers=evil, timeout=TIMEOUT_S),
            api.post(f"{api.url}/apiv1/separate", headers=evil, timeout=TIMEOUT_S,
                          files={"file": ("song.mp3", song, "audio/mpeg")}),
            api.get(f"{api.url}/", headers={**evil, "Accept": "text/html"},
                         timeout=TIMEOUT_S),
            api.get(f"{api.url}/openapi.json", headers=evil, timeout=TIMEOUT_S),
            # refused for its Host before the CSRF guard would refuse it for its Origin
            api.post(f"{api.url}/", json={}, timeout=TIMEOUT_S,
                          headers={**evil, "Origin": "http://elsewhere.example"})):
        assert_refused(response)
    status = api.get(f"{api.url}/apiv1/status/{job_id}", timeout=TIMEOUT_S).json()
    assert status["state"] == "queued"  # neither cancelled nor removed
    assert len(stack.waiting()) == 1  # the refused upload was never queued


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LocalHost",
                                  "demucs.localhost", "rest", "rest.demucs.svc.cluster.local"])
def test_the_default_hosts_are_the_demos_the_tests_and_the_manifests(api, host):
    port = api.url.rsplit(":", 1)[1]
    headers = {"Host": f"{host}:{port}", "Origin": f"http://{host}:{port}",
               "Sec-Fetch-Site": "same-origin"}
    assert api.get(f"{api.url}/apiv1/queue", headers=headers, timeout=TIMEOUT_S).ok
    assert api.get(f"{api.url}/", headers={"Host": host}, timeout=TIMEOUT_S).ok  # port 80
    posted = api.post(f"{api.url}/", json={"id": "x"}, headers=headers, timeout=TIMEOUT_S)
    assert posted.status_code == 200, posted.text


def test_allowed_hosts_names_the_service(start_api):
    rest = start_api(ALLOWED_HOSTS="api.example.com, *.example.org")
    for host in ("api.example.com", "API.example.com:443", "eu.example.org"):
        response = rest.get(f"{rest.url}/apiv1/queue", headers={"Host": host},
                                timeout=TIMEOUT_S)
        assert response.ok, (host, response.text)
    for host in ("localhost", "example.org", "api.example.com.evil.example", EVIL):
        assert_refused(rest.get(f"{rest.url}/apiv1/queue", headers={"Host": host},
                                    timeout=TIMEOUT_S))


@pytest.mark.parametrize("value", ["evil host", "a.*.example", "[::1", ",", "x" * 64])
def test_a_malformed_allowed_hosts_stops_the_service_at_start(value):
    with pytest.raises(ValueError, match="ALLOWED_HOSTS"):
        Settings.from_env({"ALLOWED_HOSTS": value})

