"""``METRICS_HOST``: the probe port's bind address, checked at start and honoured."""

from __future__ import annotations

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
