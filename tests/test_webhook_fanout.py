"""A job's webhooks to its joined requests: every one delivered, never more than
``MAX_PARALLEL_DELIVERIES`` at once (real HTTP to a loopback receiver that holds each request
until the test lets them go)."""

from __future__ import annotations

import threading

from common.contract import Job
from common.joins import JoinedCallback
from common.settings import Settings
from common.webhook import MAX_PARALLEL_DELIVERIES, send_outcome
from devstack.loopback import LoopbackServer, QuietHandler

JOINED = 3 * MAX_PARALLEL_DELIVERIES - 1
WAIT_S = 60
HELD_S = 1.0


class Receiver:
    """Counts the requests in flight and holds each one until ``release`` is set."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.in_flight = self.most = self.answered = 0
        self.release = threading.Event()
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.in_flight += 1
                    receiver.most = max(receiver.most, receiver.in_flight)
                    receiver.lock.notify_all()
                receiver.release.wait(WAIT_S)
                with receiver.lock:
                    receiver.in_flight -= 1
                    receiver.answered += 1
                self.send_response(204)
                self.end_headers()

        self.server = LoopbackServer(Handler)
        self.url = f"http://127.0.0.1:{self.server.port}/hook"


def test_joined_webhooks_are_all_sent_a_bounded_number_at_a_time():
    receiver = Receiver()
    settings = Settings.from_env({"WEBHOOK_ALLOW_LOCAL": "true", "WEBHOOK_TIMEOUT_S": "120"})
    job = Job.model_validate({"id": "fanout-job", "songhash": "a" * 64, "stems": ["vocals"],
                              "callback": {"url": receiver.url}})
    joined = [JoinedCallback(url=receiver.url, data={"n": i}) for i in range(JOINED)]
    sender = threading.Thread(target=send_outcome, daemon=True, args=(
        job, "a" * 64, "done", {}, None, settings, joined))
    try:
        sender.start()
        with receiver.lock:  # the first deliveries are all held by the receiver
            assert receiver.lock.wait_for(
                lambda: receiver.in_flight >= MAX_PARALLEL_DELIVERIES, WAIT_S)
            # while they are held no other may start: given a moment, none does (a correct
            # sender passes whatever the machine's load; one without the bound sends all 48)
            assert not receiver.lock.wait_for(
                lambda: receiver.in_flight > MAX_PARALLEL_DELIVERIES, HELD_S), receiver.in_flight
        receiver.release.set()
        sender.join(WAIT_S)
        assert not sender.is_alive()
        assert receiver.answered == JOINED + 1  # the job's own callback and every joined one
        assert receiver.most <= MAX_PARALLEL_DELIVERIES, receiver.most
    finally:
        receiver.release.set()
        receiver.server.close()

