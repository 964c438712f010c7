"""Why a job did not succeed: one exception type, with a reason a person can act on."""

from __future__ import annotations


class JobFailure(Exception):
    """A job's failure. ``permanent`` failures are not retried; ``code`` labels metrics."""

    def __init__(self, reason: str, code: str, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.permanent = permanent


def bad_input(reason: str) -> JobFailure:
    return JobFailure(reason, "bad_input", permanent=True)


def model_unavailable(reason: str) -> JobFailure:
    return JobFailure(reason, "model_unavailable", permanent=True)


def demucs_failed(reason: str) -> JobFailure:
    return JobFailure(reason, "demucs_failed", permanent=False)


def demucs_timeout(reason: str) -> JobFailure:
    return JobFailure(reason, "timeout", permanent=False)


def storage_failed(reason: str) -> JobFailure:
    return JobFailure(reason, "storage", permanent=False)


def attempts_exhausted(reason: str) -> JobFailure:
    return JobFailure(reason, "attempts_exhausted", permanent=True)


class ShutdownRequested(Exception):
    """The worker is stopping and the job must go back onto the queue."""
