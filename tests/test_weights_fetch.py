"""Hostile review: ``make models`` (worker.demucs.weights.download/fetch) and the registry's names.

A loopback HTTP server in a thread stands for the weights' host.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from common.models import Registry, WeightFileSpec
from worker.demucs.weights import WeightsError, download

BODY = b"weights" * 1000


class _Handler(http.server.BaseHTTPRequestHandler):
    target = ""
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path == "/weights.th":
            self.send_response(302)
            self.send_header("Location", self.target)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.hits = []
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_download_does_not_follow_a_redirect_elsewhere(server, tmp_path: Path):
    """The registry names an https URL; its host answers 302 to another host (here loopback:
    inside the operator's network) or to plain http. ``download`` checks the scheme of the
    first URL only, and urllib follows redirects (http, https, ftp) wherever they go."""
    port = server.server_address[1]
    _Handler.target = f"http://localhost:{port}/internal-only"
    sha = hashlib.sha256(BODY).hexdigest()
    try:
        download(f"http://127.0.0.1:{port}/weights.th", tmp_path / "abc.th", sha)
    except WeightsError:
        pass
    assert "/internal-only" not in _Handler.hits, _Handler.hits


@pytest.mark.parametrize("name", ["../x.th", "/etc/x.th", "a/b.th", "x.th\n", "x.TH", ".th",
                                  "x.th/", "x.yaml.th.partial", "a" * 65 + ".th"])
def test_registry_file_names_never_become_paths(name):
    with pytest.raises(ValueError):
        WeightFileSpec(name=name, sha256="0" * 64)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y.th", "https://u:p@x/y.th",
                                 "https://x/y.th\r\nHost: z", "gopher://x/"])
def test_registry_urls_are_http_only(url):
    with pytest.raises(ValueError):
        WeightFileSpec(name="x.th", sha256="0" * 64, url=url)


@pytest.mark.parametrize("folder", ["relative/dir", "/a/../etc", "/a/..", "/a/\x00b"])
def test_registry_folders_are_absolute_without_dotdot(folder):
    text = ('{"models": [{"name": "m", "stems": ["drums", "bass", "other", "vocals"], '
            '"licence": "MIT", "source": "s", "folder": %s, '
            '"files": [{"name": "m.th", "sha256": "%s"}]}]}')
    import json
    with pytest.raises(ValueError):
        Registry.parse(text % (json.dumps(folder), "0" * 64), "m")
