"""CSRF: state-changing requests a browser marks as cross-site get a 403 (rest/csrf.py).

Against the real REST service (real Redis and S3 behind it).
"""

from __future__ import annotations

TIMEOUT_S = 30
SONG = "ab" * 32


def test_cross_site_requests_that_change_state_are_refused(api, song):
    evil = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    attempts = [
        api.get(f"{api.url}/apiv1/remove/{SONG}/all", headers=evil, timeout=TIMEOUT_S),
        api.get(f"{api.url}/apiv1/remove/{SONG}/all",  # an <img>: no Origin at all
                     headers={"Sec-Fetch-Site": "cross-site"}, timeout=TIMEOUT_S),
        api.delete(f"{api.url}/apiv1/remove/{SONG}/vocals",
                        headers={"Origin": "http://evil.example"}, timeout=TIMEOUT_S),
        api.post(f"{api.url}/apiv1/separate", headers=evil, timeout=TIMEOUT_S,
                      files={"file": ("song.mp3", song.read_bytes(), "audio/mpeg")}),
        api.post(f"{api.url}/", headers={"Sec-Fetch-Site": "same-site"},
                      json={"id": "x", "status": "done"}, timeout=TIMEOUT_S),
        api.post(f"{api.url}/apiv1/separate", headers={"Origin": "null"},
                      timeout=TIMEOUT_S, json={"mp3": "AAAA"}),
    ]
    for response in attempts:
        assert response.status_code == 403, (response.request.method, response.request.url,
                                              response.text)
        assert "cross-site request refused" in response.json()["error"]
    queue = api.get(f"{api.url}/apiv1/queue", headers=evil, timeout=TIMEOUT_S)
    assert queue.status_code == 200 and queue.json()["queue"] == []  # reads stay open


def test_same_origin_and_non_browser_clients_pass(api):
    host = api.url.removeprefix("http://")
    same_origin = {"Origin": api.url, "Sec-Fetch-Site": "same-origin", "Host": host}
    for headers in (same_origin, {}, {"Sec-Fetch-Site": "none"}):
        response = api.get(f"{api.url}/apiv1/remove/{SONG}/all", headers=headers,
                                timeout=TIMEOUT_S)
        assert response.status_code == 404, response.text  # reached the route: nothing to remove
        posted = api.post(f"{api.url}/", json={"id": "x", "status": "done"},
                               headers=headers, timeout=TIMEOUT_S)
        assert posted.status_code == 200, posted.text
