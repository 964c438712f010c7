"""Short-lived signed track links, so that the page never puts an API key in a URL.

A browser's ``<audio src>`` and download links cannot send an ``Authorization`` header. Rather
than the client's key in the query (``?access_token=``, which ends up in browser history and in
proxies' and servers' access logs), a job's status answers ``links``: each track's path with
``client``, ``expires`` (epoch seconds, ``TRACK_LINK_TTL_S`` ahead) and ``sig``, an HMAC-SHA256
over the client, the expiry, the path and the query that picks the object (``model``,
``bitrate``, ``bit_depth``). Its key is the SHA-256 of the client's own API key, which the
service keeps (``Backend.clients``) and only that key's holder can compute. A link serves that
one track, to that client (whose ownership is still checked), until it expires; ``download=1``
may be added to it. Rotating a key voids its links.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import HTTPException, Request

from common.clients import CLIENT_NAME_RE
from common.numbers import ascii_int

SIGNED_QUERY = ("model", "bitrate", "bit_depth")
"""The query parameters that choose which object a track path serves: all signed."""
TRACK_PATH_PREFIX = "/apiv1/track/"
NOT_VALID = ("this track link is not valid or has expired: ask for the job's status again for "
             "fresh links, or send 'Authorization: Bearer <your key>'")
_NOBODY_KEY = hashlib.sha256(b"no such client").digest()
"""Checked against when a link names no known client, so that costs what a known one does."""


def sign(url: str, client: str, key_digest: bytes, ttl_s: int) -> str:
    """``url`` (a track path, as ``rest.read_models.track_url`` makes it) made a signed link."""
    parts = urlsplit(url)
    expires = int(time.time()) + ttl_s
    signature = _signature(key_digest, client, expires, parts.path, dict(parse_qsl(parts.query)))
    return f"{url}{'&' if parts.query else '?'}" + \
        urlencode({"client": client, "expires": expires, "sig": signature})


def link_client(request: Request, clients: Mapping[str, bytes], max_ttl_s: int) -> str | None:
    """The client a request's signed link was made for; None when it carries no link (``sig``).

    401 for a link that is not valid: another path or method, expired, or altered.
    """
    query = request.query_params
    if "sig" not in query:
        return None
    client, expires_text = query.get("client", ""), query.get("expires", "")
    try:
        expires = ascii_int(expires_text)
    except ValueError:
        expires = 0
    now = time.time()
    key = clients.get(client, _NOBODY_KEY) if CLIENT_NAME_RE.fullmatch(client) else _NOBODY_KEY
    expected = _signature(key, client, expires, request.url.path, query)
    given = query.get("sig", "").encode("utf-8", "surrogateescape")  # any text: bytes compare
    valid = hmac.compare_digest(expected.encode(), given) and client in clients and \
        request.method in ("GET", "HEAD") and request.url.path.startswith(TRACK_PATH_PREFIX) \
        and now < expires <= now + max_ttl_s
    if not valid:
        raise HTTPException(401, NOT_VALID, headers={"WWW-Authenticate": "Bearer"})
    return client


def _signature(key: bytes, client: str, expires: int, path: str,
               query: Mapping[str, str]) -> str:
    message = "\n".join([client, str(expires), path, *(query.get(n, "") for n in SIGNED_QUERY)])
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
