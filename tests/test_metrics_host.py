"""``METRICS_HOST``: the probe port's bind address, checked at start and honoured."""

from __future__ import annotations

import socket

import pytest
import requests

import devstack
from common.observability import serve
from common.settings import Settings


def test_metrics_host_is_an_ip_address_or_the_process_does_not_start():
    assert Settings.from_env({}).metrics_host == "0.0.0.0"  # the images' default
    assert Settings.from_env({"METRICS_HOST": "127.0.0.1"}).metrics_host == "127.0.0.1"
    for bad in ("localhost", "0.0.0.0; rm", "256.1.1.1"):
        with pytest.raises(ValueError, match="METRICS_HOST"):
            Settings.from_env({"METRICS_HOST": bad})


def test_the_probe_port_listens_on_metrics_host_only():
    port = devstack.free_port()
    server = serve(port, lambda: (True, "ok"), "127.0.0.1")
    try:
        assert server.server_address == ("127.0.0.1", port)
        answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert answer.status_code == 200 and answer.json() == {"ok": True, "reason": "ok"}
    finally:
        server.shutdown()
        server.server_close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_metrics_host_is_served_on_ipv6():
    """``::1`` passes the check, so it must start: an IPv4 server would fail to bind it (the
    worker would not start)."""
    assert Settings.from_env({"METRICS_HOST": "::1"}).metrics_host == "::1"
    port = devstack.free_port()
    server = serve(port, lambda: (True, "ok"), "::1")
    try:
        assert server.server_address[:2] == ("::1", port)
        answer = requests.get(f"http://[::1]:{port}/healthz", timeout=10)
        assert answer.status_code == 200 and answer.json() == {"ok": True, "reason": "ok"}
    finally:
        server.shutdown()
        server.server_close()
