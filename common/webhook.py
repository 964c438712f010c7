"""Job-outcome webhooks: a JSON POST, signed per the Standard Webhooks specification.

With ``WEBHOOK_SECRET`` set, every delivery carries ``webhook-id`` (unique per delivery),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">``), so a receiver can check it with the ``standardwebhooks``
package or its equivalent in any language, and refuse a delivery older than five minutes: a
captured delivery cannot be replayed later, nor its body reused under another id. The secret
is a ``whsec_<base64>`` key, or any other string, whose UTF-8 bytes are then the key
(``signing_key``). ``verify_delivery`` is the receiving side. Webhooks are sent once: a
failure is logged, never retried, and never changes the job's outcome.

``WEBHOOK_TIMEOUT_S`` is the deadline of a whole delivery: connecting, sending, and the
receiver's status line and headers. A watchdog cuts the connection when it passes, whatever the
receiver does (one that answers a byte every few seconds included). The answer's body is never
read: only its status counts. HTTPS receivers are verified against the CA bundle ``requests``
ships (certifi), as before. Name resolution is the one step the watchdog cannot cut; it is
bounded by the resolver's own timeouts.

Every delivery goes through the callback guard (``common.egress``): the URL's host is
resolved once, refused unless public (or allowed by ``WEBHOOK_ALLOW_LOCAL`` /
``WEBHOOK_ALLOWLIST``), and the connection goes to that very address, the Host header and
TLS naming the host. No redirect is followed.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any

from requests.certs import where as ca_bundle
from standardwebhooks import Webhook, WebhookVerificationError

from common.contract import Callback, Job
from common.egress import EgressPolicy, RefusedTarget, Target, check_target
from common.joins import JoinedCallback
from common.settings import Settings

log = logging.getLogger(__name__)


MAX_PARALLEL_DELIVERIES = 16
"""A job's webhooks in flight at once: the worker's threads and a receiver's connections."""


class DeadlinePassed(TimeoutError):
    """The receiver did not answer within the delivery's deadline."""


def signing_key(secret: str) -> Webhook:
    """The Standard Webhooks signer of ``WEBHOOK_SECRET``: a ``whsec_`` key, else its bytes."""
    return Webhook(secret if secret.startswith("whsec_") else secret.encode())


def signature_headers(body: bytes, secret: str, now_s: float | None = None) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one delivery."""
    delivery_id = f"msg_{uuid.uuid4().hex}"
    sent = datetime.fromtimestamp(int(time.time() if now_s is None else now_s), tz=timezone.utc)
    return {"webhook-id": delivery_id, "webhook-timestamp": str(int(sent.timestamp())),
            "webhook-signature": signing_key(secret).sign(delivery_id, sent, body.decode())}


def verify_delivery(body: bytes, headers: Mapping[str, str], secret: str) -> bool:
    """Whether a delivery is signed with ``secret`` and sent within the last five minutes."""
    try:
        signing_key(secret).verify(body, dict(headers), json_parse=False)
    except (WebhookVerificationError, ValueError, UnicodeDecodeError):
        return False
    return True


def send_outcome(job: Job, songhash: str | None, state: str, tracks: dict[str, str],
                 error: str | None, settings: Settings, joined: Sequence[Callback] = ()
                 ) -> str | None:
    """POST a job's outcome to its callback and to those of the requests that joined it.

    Up to ``MAX_PARALLEL_DELIVERIES`` at once, whatever the number of joined requests (every
    client may join ``MAX_JOINED``), so N callbacks last at most ceil(N / 16) times
    ``WEBHOOK_TIMEOUT_S``. Returns why the callback guard refused the job's own callback, if it
    did.
    """
    callbacks = [c for c in (job.callback, *joined) if c is not None]
    payload = {"id": job.id, "songhash": songhash, "status": state, "tracks": tracks,
               "bucket": settings.output_bucket, "error": error}

    policy = egress_policy(settings)

    def send(callback: Callback) -> tuple[bool, str | None]:
        # a joined request answered with an id of its own (API_KEYS) hears of that id alone,
        # never of the job that did the work (another client's)
        job_id = callback.job_id if isinstance(callback, JoinedCallback) else None
        told = payload if not (job_id and job.id) else \
            {**payload, "id": job_id, "error": error and error.replace(job.id, job_id)}
        return deliver(callback.url, {**told, "data": callback.data},
                       settings.webhook_secret, settings.webhook_timeout_s, policy)

    if len(callbacks) <= 1:
        results = [send(c) for c in callbacks]
    else:
        with ThreadPoolExecutor(min(len(callbacks), MAX_PARALLEL_DELIVERIES),
                                thread_name_prefix="webhook") as pool:
            results = list(pool.map(send, callbacks))
    return results[0][1] if job.callback is not None else None  # its own callback is first


def egress_policy(settings: Settings) -> EgressPolicy:
    return EgressPolicy.parse(settings.webhook_allow_local, settings.webhook_allowlist)


def post_webhook(url: str, payload: dict[str, Any], secret: str | None, timeout_s: float,
                 policy: EgressPolicy) -> bool:
    """POST ``payload``; return whether the receiver answered 2xx in time. Never raises."""
    return deliver(url, payload, secret, timeout_s, policy)[0]


def deliver(url: str, payload: dict[str, Any], secret: str | None, timeout_s: float,
            policy: EgressPolicy) -> tuple[bool, str | None]:
    """POST ``payload``: whether the receiver answered 2xx in time, and why the callback
    guard refused ``url``, if it did (the host is resolved once, here). Never raises."""
    try:
        target = check_target(url, policy)
    except RefusedTarget as refused:
        log.warning("webhook to %s refused: %s", url, refused)
        return False, str(refused)
    try:
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "demucs-service-worker"}
        if secret:
            headers.update(signature_headers(body, secret))
        status = post_within(target, body, headers, timeout_s)
    except (OSError, HTTPException, ValueError, RecursionError) as error:
        log.warning("webhook to %s failed: %s", url, error or type(error).__name__)
        return False, None
    if not 200 <= status < 300:
        log.warning("webhook to %s answered HTTP %s", url, status)
    return 200 <= status < 300, None


def post_within(target: Target, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST ``body`` to the checked ``target`` and return the answer's status, all within
    ``timeout_s``.

    Raises ``DeadlinePassed`` past the deadline, OSError or HTTPException on other failures.
    """
    connection: HTTPConnection = _PinnedHTTPSConnection(target, timeout_s) \
        if target.scheme == "https" else _PinnedHTTPConnection(target, timeout_s)
    deadline = time.monotonic() + timeout_s
    watchdog = threading.Timer(timeout_s, _cut, (connection,))
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.connect()
        if time.monotonic() >= deadline:  # a connect tried over several addresses
            raise DeadlinePassed
        connection.request("POST", target.path, body=body, headers=headers)
        return connection.getresponse().status
    except (OSError, HTTPException):
        if time.monotonic() >= deadline:
            raise DeadlinePassed(f"no answer within WEBHOOK_TIMEOUT_S={timeout_s:g} s") \
                from None
        raise
    finally:
        watchdog.cancel()
        connection.close()


class _PinnedHTTPConnection(HTTPConnection):
    """HTTP to the address the guard checked; the Host header names the URL's host."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout_s)
        self.address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(HTTPSConnection):
    """HTTPS to the address the guard checked; SNI and the certificate name the URL's host."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        self.tls = ssl.create_default_context(cafile=ca_bundle())
        super().__init__(target.host, target.port, timeout=timeout_s, context=self.tls)
        self.address = target.address

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host)


def _cut(connection: HTTPConnection) -> None:
    """Shut the connection's socket down, which wakes the thread blocked on it."""
    sock = connection.sock
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
