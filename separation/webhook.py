"""Job-outcome webhooks: a JSON POST, signed with HMAC-SHA256 when a secret is set.

The receiver checks ``X-Signature-SHA256: sha256=<hex>`` against the raw request body with
``verify_signature``. Webhooks are sent once: a failure is logged, never retried, and never
changes the job's outcome.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

import requests

from separation.contract import Job, check_callback_url
from separation.settings import Settings

SIGNATURE_HEADER = "X-Signature-SHA256"
log = logging.getLogger(__name__)


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    return header is not None and hmac.compare_digest(sign(body, secret), header)


def send_outcome(job: Job, songhash: str | None, state: str, tracks: dict[str, str],
                 error: str | None, settings: Settings) -> bool:
    """POST a job's outcome to its callback, if it has one: the one payload of the service."""
    if job.callback is None:
        return False
    payload = {"id": job.id, "songhash": songhash, "status": state, "tracks": tracks,
               "bucket": settings.output_bucket, "error": error, "data": job.callback.data}
    return post_webhook(job.callback.url, payload, settings.webhook_secret,
                        settings.webhook_timeout_s)


def post_webhook(url: str, payload: dict[str, Any], secret: str | None, timeout_s: float) -> bool:
    """POST ``payload``; return whether the receiver answered 2xx. Never raises."""
    try:
        check_callback_url(url)
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "demucs-service-worker"}
        if secret:
            headers[SIGNATURE_HEADER] = sign(body, secret)
        response = requests.post(url, data=body, headers=headers, timeout=timeout_s,
                                 allow_redirects=False)
    except (requests.RequestException, ValueError) as error:
        log.warning("webhook to %s failed: %s", url, error)
        return False
    if not response.ok:
        log.warning("webhook to %s answered HTTP %s", url, response.status_code)
    return response.ok
