"""Why a job did not succeed: one exception type with a code from one enum, and a reason a
person can act on. Nothing outside this module spells a failure code."""

from __future__ import annotations

from enum import Enum


class Code(str, Enum):
    """What kind of failure; the label of ``demucs_jobs_total{reason=...}``."""

    BAD_INPUT = "bad_input"
    INVALID_JOB = "invalid_job"
    MODEL_UNAVAILABLE = "model_unavailable"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    DEMUCS_FAILED = "demucs_failed"
    CUDA = "cuda"
    TIMEOUT = "timeout"
    STORAGE = "storage"
    DISK = "disk"
    INTERNAL = "internal"


# Codes of failures that no retry can mend.
PERMANENT = frozenset({Code.BAD_INPUT, Code.INVALID_JOB, Code.MODEL_UNAVAILABLE,
                       Code.ATTEMPTS_EXHAUSTED})


class JobFailure(Exception):
    """A job's failure. Failures with a code in ``PERMANENT`` are not retried."""

    def __init__(self, reason: str, code: Code) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code

    @property
    def permanent(self) -> bool:
        return self.code in PERMANENT


def bad_input(reason: str) -> JobFailure:
    return JobFailure(reason, Code.BAD_INPUT)


def invalid_job(reason: str) -> JobFailure:
    return JobFailure(reason, Code.INVALID_JOB)


def model_unavailable(reason: str) -> JobFailure:
    return JobFailure(reason, Code.MODEL_UNAVAILABLE)


def attempts_exhausted(reason: str) -> JobFailure:
    return JobFailure(reason, Code.ATTEMPTS_EXHAUSTED)


def demucs_failed(reason: str) -> JobFailure:
    return JobFailure(reason, Code.DEMUCS_FAILED)


def cuda_failed(reason: str) -> JobFailure:
    return JobFailure(reason, Code.CUDA)


def demucs_timeout(reason: str) -> JobFailure:
    return JobFailure(reason, Code.TIMEOUT)


def storage_failed(reason: str) -> JobFailure:
    return JobFailure(reason, Code.STORAGE)


def disk_failed(reason: str) -> JobFailure:
    return JobFailure(reason, Code.DISK)


def internal(reason: str) -> JobFailure:
    return JobFailure(reason, Code.INTERNAL)


def all_of(failures: dict[str, Exception], code: Code) -> bool:
    """Whether every one of ``failures`` is a ``JobFailure`` with ``code``."""
    return bool(failures) and all(isinstance(f, JobFailure) and f.code is code
                                  for f in failures.values())


class ShutdownRequested(Exception):
    """The worker is stopping and the job must go back onto the queue."""


class Cancelled(Exception):
    """A cancel of the job (or of the long song it is part of) was asked."""


class Interrupted(Exception):
    """Demucs was stopped for another job of the batch (cancelled); this job runs again."""
