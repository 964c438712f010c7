"""The REST app in the test's own process: ``create_app(settings)`` behind
``httpx.ASGITransport``, driven from synchronous tests through an anyio portal.

Its lifespan runs as uvicorn would run it (buckets made, probes served on ``METRICS_PORT``);
the logging it configures is put back at once, so the test's own capture keeps the app's log.
The calls take what ``requests`` takes for the tests' uses (``json``, ``files``, ``data`` as
bytes, ``headers``, ``params``, ``timeout``) and answer ``httpx.Response``.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from typing import Any

import httpx
from anyio.from_thread import start_blocking_portal

from common.settings import Settings
from rest.app import create_app

BASE_URL = "http://127.0.0.1:9"
"""What the app sees as its own address: a loopback name ``ALLOWED_HOSTS`` allows, on the
discard port, where nothing listens: a test that sent a request there past this client (with
``requests``) would fail at once, never reach another service on this machine."""


class InProcessRest:
    """The REST service in this process; ``url`` prefixes paths as a subprocess' would."""

    url = BASE_URL
    host = BASE_URL.removeprefix("http://")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._exit = ExitStack()
        self.portal = self._exit.enter_context(start_blocking_portal())
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        lifespan: AbstractContextManager[Any] = self.portal.wrap_async_context_manager(
            self.app.router.lifespan_context(self.app))
        try:
            self._exit.enter_context(lifespan)
        finally:  # the app's logging setup would send the test's log to Redis, past its end
            root.handlers[:], root.level = handlers, level
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 40000))
        self.client = httpx.AsyncClient(transport=transport, base_url=BASE_URL)

    @property
    def metrics_port(self) -> int:
        return self.settings.metrics_port

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if isinstance(kwargs.get("data"), bytes | str):
            kwargs["content"] = kwargs.pop("data")
        if "allow_redirects" in kwargs:
            kwargs["follow_redirects"] = kwargs.pop("allow_redirects")
        response = self.portal.call(partial(self.client.request, method, url, **kwargs))
        response.ok = response.is_success  # type: ignore[attr-defined]  # requests' name
        return response

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("HEAD", url, **kwargs)

    def close(self) -> None:
        try:
            self.portal.call(self.client.aclose)
        finally:
            self._exit.close()
