#!/usr/bin/env python3
"""Receive the service's job-outcome webhooks, and trust only those it really sent.

    WEBHOOK_SECRET=<the service's> python sample-requests/webhook-receiver.py [--port 8088]

Then send jobs with ``"callback": {"url": "http://<this host>:8088/"}``. Every delivery is
checked per the Standard Webhooks specification with the ``standardwebhooks`` package: the
signature over ``webhook-id``, ``webhook-timestamp`` and the body must match the secret, the
timestamp be within five minutes of now, and the id not be one already received (a replay
within those five minutes). A delivery that passes is answered 204 and printed as one JSON
line; any other gets 401 (and a line on stderr saying why), so a forged, tampered, old or
replayed delivery never reaches what follows. Needs only the standard library and
``standardwebhooks``: copy it into a project of yours as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from standardwebhooks import Webhook, WebhookVerificationError
except ImportError:
    print("error: the Python module 'standardwebhooks' is missing: run the script in the "
          "project's environment (`make setup`, then `source .venv/bin/activate`), or "
          "`pip install standardwebhooks`", file=sys.stderr)
    sys.exit(2)

TOLERANCE_S = 5 * 60
"""Deliveries older (or newer) than this are refused, by ``standardwebhooks`` itself."""
MAX_BODY_BYTES = 1 << 20
MAX_IDS_KEPT = 100_000
"""Ids remembered to refuse replays: at most this many, each for TOLERANCE_S."""


def signer(secret: str) -> Webhook:
    """The service's ``WEBHOOK_SECRET``: a ``whsec_<base64>`` key, or any other string, whose
    UTF-8 bytes are then the key (as the service reads it)."""
    return Webhook(secret if secret.startswith("whsec_") else secret.encode())


class SeenIds:
    """The ids of the deliveries accepted in the last TOLERANCE_S: a second one is a replay."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()

    def first_time(self, delivery_id: str) -> bool:
        now = time.monotonic()
        with self.lock:
            while self.seen:  # oldest first: stop at the first one kept
                oldest, at = next(iter(self.seen.items()))
                if now - at <= TOLERANCE_S and len(self.seen) < MAX_IDS_KEPT:
                    break
                del self.seen[oldest]
            if delivery_id in self.seen:
                return False
            self.seen[delivery_id] = now
            return True


def verified(webhook: Webhook, seen: SeenIds, body: bytes, headers: dict[str, str]
             ) -> tuple[dict | None, str]:
    """The delivery's JSON if it is the service's, fresh and new; else None and why not."""
    try:
        payload = webhook.verify(body, headers)
    except WebhookVerificationError as error:  # bad signature, missing headers, too old
        return None, str(error)
    except ValueError as error:  # a malformed signature header, a body that is not JSON
        return None, f"malformed delivery: {error}"
    if not isinstance(payload, dict):
        return None, "the body is not a JSON object"
    if not seen.first_time(headers.get("webhook-id", "")):
        return None, "replayed: this webhook-id was received already"
    return payload, "verified"


def make_handler(webhook: Webhook, seen: SeenIds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                self._answer(413 if length.isdigit() else 411)
                return
            body = self.rfile.read(int(length))
            headers = {name.lower(): value for name, value in self.headers.items()}
            payload, why = verified(webhook, seen, body, headers)
            if payload is None:
                print(f"refused a delivery from {self.client_address[0]}: {why}",
                      file=sys.stderr, flush=True)
                self._answer(401)
                return
            print(json.dumps({"webhook-id": headers["webhook-id"], **payload}), flush=True)
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per delivery is printed above

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0: every one)")
    parser.add_argument("--port", type=int, default=8088, help="port (default 8088)")
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET", "")
    if not secret:
        print("error: set WEBHOOK_SECRET to the service's: without it no delivery can be "
              "trusted", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer((args.host, args.port), make_handler(signer(secret), SeenIds()))
    print(f"listening on http://{args.host}:{server.server_address[1]}/", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
