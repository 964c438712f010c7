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

    def failure(self, reason: str) -> JobFailure:
        """A failure with this code and ``reason``."""
        return JobFailure(reason, self)


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


# The factories: ``errors.bad_input(reason)`` is ``JobFailure(reason, Code.BAD_INPUT)``.
bad_input = Code.BAD_INPUT.failure
invalid_job = Code.INVALID_JOB.failure
model_unavailable = Code.MODEL_UNAVAILABLE.failure
attempts_exhausted = Code.ATTEMPTS_EXHAUSTED.failure
demucs_failed = Code.DEMUCS_FAILED.failure
cuda_failed = Code.CUDA.failure
demucs_timeout = Code.TIMEOUT.failure
storage_failed = Code.STORAGE.failure
disk_failed = Code.DISK.failure
internal = Code.INTERNAL.failure


def all_of(failures: dict[str, Exception], code: Code) -> bool:
    """Whether every one of ``failures`` is a ``JobFailure`` with ``code``."""
    return bool(failures) and all(isinstance(f, JobFailure) and f.code is code
                                  for f in failures.values())


class ShutdownRequested(Exception):
    """The worker is stopping and the job must go back onto the queue."""


class Cancelled(Exception):
    """A cancel of the job (or of the long song it is part of) was asked."""


class Redelivered(Exception):
    """The worker no longer holds the job: it was redelivered to another worker while this
    one was paused past its heartbeat. Nothing more is written about it here."""


class Interrupted(Exception):
    """Demucs was stopped for another job of the batch (cancelled); this job runs again."""
