"""Who a client is, for the rate limit, behind the ingress (``FORWARDED_ALLOW_IPS``).

uvicorn believes ``X-Forwarded-For`` only from the peers ``FORWARDED_ALLOW_IPS`` names. The
manifests set it to the ingress controller's network (``deploy/base/rest.env``, overridden in
the overlays): a peer outside it (here, loopback) forging the header is counted as itself; a
request through the trusted proxy is counted as the client the proxy names, so two clients
behind it get two buckets. The proxy is a small HTTP proxy on loopback that, like
ingress-nginx, sets ``X-Forwarded-For`` to the address it was reached from; it connects to the
real REST service from 127.0.0.2, the address the test trusts. Redis is real.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

import devstack
from devstack.loopback import LoopbackServer, QuietHandler

LIMIT = 3
PROXY_ADDRESS = "127.0.0.2"  # the "ingress controller": the peer REST trusts
BODY = json.dumps({"mp3": "AAAA"}).encode()  # refused as not audio (400) when let in


def manifest_trusted() -> str:
    """FORWARDED_ALLOW_IPS as the manifests set it (deploy/base/rest.env)."""
    lines = (devstack.ROOT / "deploy" / "base" / "rest.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and
                not line.startswith("#"))["FORWARDED_ALLOW_IPS"]


def separate(port: int, source: str, forwarded_for: str | None = None, body: bytes = BODY
             ) -> int:
    """POST ``body`` (a song refused as not audio) to ``/apiv1/separate`` from ``source``;
    the answer's status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                            source_address=(source, 0))
    headers = {"Content-Type": "application/json"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    try:
        connection.request("POST", "/apiv1/separate", body, headers)
        return connection.getresponse().status
    finally:
        connection.close()


class ForwardingProxy:
    """Forwards each POST to REST from ``PROXY_ADDRESS``, with ``X-Forwarded-For`` set to the
    address the request came from (whatever the client sent in it)."""

    def __init__(self, rest_port: int) -> None:
        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(separate(rest_port, PROXY_ADDRESS, self.client_address[0],
                                            body))
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = LoopbackServer(Handler)
        self.port = self.server.port

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def limited(start_rest):
    def start(trusted: str):
        return start_rest(RATE_LIMIT_PER_MIN=str(LIMIT), FORWARDED_ALLOW_IPS=trusted)
    return start


@pytest.fixture
def proxy(limited) -> Iterator[ForwardingProxy]:
    rest = limited(f"{PROXY_ADDRESS},{manifest_trusted()}")
    forwarding = ForwardingProxy(int(rest.url.rsplit(":", 1)[1]))
    yield forwarding
    forwarding.close()


def test_a_forged_x_forwarded_for_from_an_untrusted_peer_is_ignored(limited):
    rest = limited(manifest_trusted())  # the manifests' value: loopback is not the ingress
    port = int(rest.url.rsplit(":", 1)[1])
    answers = [separate(port, "127.0.0.1", f"203.0.113.{n}") for n in range(2 * LIMIT)]
    assert answers == [400] * LIMIT + [429] * LIMIT, answers  # one client, one bucket


def test_behind_the_trusted_proxy_two_clients_get_two_buckets(proxy):
    first = [separate(proxy.port, "127.0.0.3", f"203.0.113.{n}") for n in range(LIMIT + 1)]
    second = [separate(proxy.port, "127.0.0.4") for _ in range(LIMIT + 1)]
    assert first == second == [400] * LIMIT + [429], (first, second)
