"""Hostile review: cross-site requests (rest/csrf.py) and the Host allowlist (rest/hosts.py).

In-process REST app without a key (an intranet deployment, ``make demo``: what rest/csrf.py
exists for). Raw ASGI scopes where httpx would not send the headers (duplicate Host).
"""

from __future__ import annotations

import io

import pytest

TIMEOUT_S = 30
SONG = "9a" * 32


def raw(api, method: str, path: str, headers: list[tuple[bytes, bytes]],
        body: bytes = b"") -> tuple[int, bytes]:
    """The app's answer to a request scope built by hand (headers as a server passes them)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 40002), "server": ("127.0.0.1", 9)}
    sent: list[dict] = []
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        await api.app(scope, receive, send)

    api.portal.call(run)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _plant(stack) -> str:
    if not stack.minio.bucket_exists(stack.output_bucket):
        stack.minio.make_bucket(stack.output_bucket)
    key = f"{SONG}-vocals.mp3"
    stack.minio.put_object(stack.output_bucket, key, io.BytesIO(b"v" * 10), 10)
    return key


def _stored(stack, key: str) -> bool:
    return any(o.object_name == key for o in stack.minio.list_objects(stack.output_bucket))


def test_an_img_on_a_plain_http_site_cannot_remove_tracks(stack, start_api):
    """``<img src="http://rest.demucs/apiv1/remove/<hash>/all">`` on a page of another site,
    the service reached over plain HTTP (not localhost): browsers send Sec-Fetch-* only to
    potentially trustworthy URLs (HTTPS, loopback) and no Origin on a no-cors GET. What the
    browser does send is a Referer of the other site (its default policy,
    strict-origin-when-cross-origin, keeps the origin) and an image Accept."""
    key = _plant(stack)
    api = start_api()
    img = [(b"host", b"rest.demucs"),
           (b"accept", b"image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"),
           (b"referer", b"http://evil.example/"),
           (b"user-agent", b"Mozilla/5.0 Chrome/131.0")]
    status, body = raw(api, "GET", f"/apiv1/remove/{SONG}/all", img)
    assert status == 403 and _stored(stack, key), (status, body[:200])


@pytest.mark.parametrize("content_type", [b"text/plain", b"application/x-www-form-urlencoded",
                                          b"multipart/form-data; boundary=x"])
def test_a_cross_site_form_post_is_refused(stack, start_api, content_type):
    """A form on another site POSTs; a browser always sends Origin on a POST."""
    api = start_api()
    for path in (b"/apiv1/separate", b"/", f"/apiv1/cancel/{'a' * 32}".encode()):
        headers = [(b"host", b"127.0.0.1:9"), (b"origin", b"http://evil.example"),
                   (b"content-type", content_type)]
        status, _ = raw(api, "POST", path.decode(), headers, b'{"mp3": "AAAA"}')
        assert status == 403, (path, content_type, status)


def test_forwarded_host_and_scheme_are_not_believed(stack, start_api):
    api = start_api()
    key = _plant(stack)
    tries = [
        # X-Forwarded-Host naming the foreign Origin's host: compared with Host only
        [(b"host", b"127.0.0.1:9"), (b"x-forwarded-host", b"evil.example"),
         (b"origin", b"http://evil.example")],
        # a foreign Host passed behind a forwarded allowed one
        [(b"host", b"evil.example"), (b"x-forwarded-host", b"127.0.0.1:9")],
        # Host with a user part, a port made of names
        [(b"host", b"127.0.0.1@evil.example")],
        [(b"host", b"evil.example#127.0.0.1")],
        [(b"host", b"localhost.")],
    ]
    for headers in tries:
        status, body = raw(api, "DELETE", f"/apiv1/remove/{SONG}/vocals", headers)
        assert status in (400, 403), (headers, status, body[:200])
    assert _stored(stack, key)


def test_a_request_with_two_hosts_is_refused(stack, start_api):
    """RFC 9112 3.2: a server MUST answer 400 to a request with more than one Host. A proxy in
    front may route on one and the app check another."""
    api = start_api()
    key = _plant(stack)
    answers = {}
    for hosts in ([b"evil.example", b"127.0.0.1:9"], [b"127.0.0.1:9", b"evil.example"]):
        headers = [(b"host", h) for h in hosts] + [(b"origin", b"http://evil.example")]
        answers[tuple(hosts)] = raw(api, "DELETE", f"/apiv1/remove/{SONG}/vocals", headers)[0]
        status, _ = raw(api, "GET", "/apiv1/queue", [(b"host", h) for h in hosts])
        answers[("queue", *tuple(hosts))] = status
    assert _stored(stack, key)
    assert all(status == 400 for status in answers.values()), answers
