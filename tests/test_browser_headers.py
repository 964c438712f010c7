"""Hostile review: the page and the API's answers as a browser would take them (headers), and the
values of a client that reach the page's DOM.

In-process REST app (``api``/``start_api``); tracks planted straight in S3 and Redis.
"""

from __future__ import annotations

import io
import re

TIMEOUT_S = 30
HTML = {"Accept": "text/html"}


def _csp(response) -> str:
    return response.headers.get("content-security-policy", "")


def test_the_page_cannot_be_framed_by_another_site(api):
    """Clickjacking: a page on another site frames ``/#<job id>`` under a decoy and has the
    visitor click Cancel (or drop a file): the framed page's own request is same-origin, so
    ``rest/csrf.py`` lets it through. Only X-Frame-Options or CSP frame-ancestors stop it."""
    page = api.get(f"{api.url}/", headers=HTML, timeout=TIMEOUT_S)
    assert page.status_code == 200 and "<script>" in page.text
    frame_options = page.headers.get("x-frame-options", "").upper()
    frame_ancestors = re.search(r"frame-ancestors\s+([^;]+)", _csp(page))
    assert frame_options in ("DENY", "SAMEORIGIN") or (
        frame_ancestors and frame_ancestors.group(1).strip() in ("'none'", "'self'")), \
        dict(page.headers)


def test_answers_say_nosniff(api, stack):
    """Every answer (the page, JSON, a track) says ``X-Content-Type-Options: nosniff``, so a
    browser never sniffs a stored object (the uploaded 'original' is the client's own bytes,
    checked only to hold MP3 frames) or a JSON error into something it renders."""
    songhash = "ef" * 32
    if not stack.minio.bucket_exists(stack.output_bucket):
        stack.minio.make_bucket(stack.output_bucket)
    body = b"<html><script>alert(document.domain)</script></html>"
    stack.minio.put_object(stack.output_bucket, f"{songhash}-vocals.mp3", io.BytesIO(body),
                           len(body), content_type="text/html")
    track = api.get(f"{api.url}/apiv1/track/{songhash}/vocals", timeout=TIMEOUT_S)
    assert track.status_code == 200
    assert track.headers["content-type"].startswith("audio/mpeg")  # never the stored type
    page = api.get(f"{api.url}/", headers=HTML, timeout=TIMEOUT_S)
    status = api.get(f"{api.url}/apiv1/status/{'a' * 32}", timeout=TIMEOUT_S)
    missing = [r.request.url.path for r in (page, status, track)
               if r.headers.get("x-content-type-options", "").lower() != "nosniff"]
    assert not missing, missing


def test_the_page_builds_its_dom_as_text_only(api):
    """No sink that parses HTML or runs code in the page's script."""
    page = api.get(f"{api.url}/", headers=HTML, timeout=TIMEOUT_S).text
    script = page.split("<script>", 1)[1]
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setTimeout(\"", "srcdoc", "location.href =",
                 "location.assign", "window.open"):
        assert sink not in script, sink


def test_client_values_in_the_status_the_page_reads_are_data(api, song):
    """A file name carrying markup: the status answers it as JSON data, and the page puts the
    name (and every other status value) into ``textContent`` only."""
    evil = "<img src=x onerror=alert(1)>'<svg onload=alert(2)>.mp3"  # no '/' (a path), no '\"'
    sent = api.post(f"{api.url}/apiv1/separate", timeout=TIMEOUT_S,
                    files={"file": (evil, song.read_bytes(), "audio/mpeg")})
    assert sent.status_code == 200, sent.text
    answer = api.get(f"{api.url}/apiv1/status/{sent.json()['id']}", headers=HTML,
                     timeout=TIMEOUT_S)
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["name"] == evil  # kept as data: the page must not parse it
    script = api.get(f"{api.url}/", headers=HTML, timeout=TIMEOUT_S).text
    assert '$("#song-name").textContent = status.name' in script

