"""How a taken job ends: its ``Outcome``, what the queue does with it, and the observers that
``Worker.settle`` calls around that (status, webhooks, long songs, metrics, log).

A new concern that reacts to job outcomes is one more observer in ``Worker.settle``'s lists,
not an edit in each place a job can end.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

from minio.error import S3Error
from urllib3.exceptions import HTTPError

from common.contract import Job, Keys, Status
from common.joins import Joins
from common.settings import Settings
from common.status import StatusStore
from common.webhook import send_outcome
from worker import errors
from worker.long_songs.chunk_jobs import LongSongs
from worker.metrics import JOB_SECONDS, JOBS
from worker.task import JobKind, Outcome, State, Task, timed

log = logging.getLogger("worker")


OUTAGE_CODES = frozenset({"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout",
                          "XMinioServerNotInitialized"})
"""S3 error codes of a storage that is down or overloaded, not of a request it refused."""


Observer = Callable[[Task, Outcome], None]
CANCELLED = "cancelled by the client"


def outcome_of_error(error: Exception, task: Task, max_attempts: int) -> Outcome:
    """The one place an exception raised by a job's step becomes the job's outcome."""
    if isinstance(error, errors.ShutdownRequested):
        return Outcome.of(State.RETURNED)
    if isinstance(error, errors.Redelivered):
        return Outcome.of(State.REDELIVERED)
    if isinstance(error, errors.Cancelled):
        return Outcome.of(State.CANCELLED, CANCELLED)
    if is_outage(error):  # nobody's fault: the job waits for the storage, its attempts kept
        return Outcome(State.DEFERRED, failure=errors.storage_failed(
            _without_work_dir(f"storage unreachable: {error}", task)))
    if isinstance(error, errors.JobFailure):
        failure = error
    elif isinstance(error, (S3Error, HTTPError, OSError)):
        failure = errors.storage_failed(_without_work_dir(f"storage or disk error: {error}", task))
    else:
        log.exception("job %s: unexpected error", task.id, exc_info=error)
        failure = errors.internal(_without_work_dir(f"internal error: {error!r}", task))
    return Outcome.of_failure(failure, task.attempt, max_attempts)


def is_outage(error: Exception) -> bool:
    """Whether ``error`` says the storage is unreachable or overloaded (a connection refused,
    reset or timed out; a 503), rather than that this job's request was wrong."""
    if isinstance(error, S3Error):
        return error.code in OUTAGE_CODES
    return isinstance(error, (HTTPError, ConnectionError, TimeoutError))


def _without_work_dir(reason: str, task: Task) -> str:
    """A failure reason goes to clients: the job's temp dirs are named, not spelled."""
    return reason.replace(f"{task.work_dir.parent}/", "<work dir>/")


class StatusRecorder:
    """The job's status hash: what a client polling it reads."""

    def __init__(self, status: StatusStore) -> None:
        self.status = status

    def before_settle(self, task: Task, outcome: Outcome) -> None:
        """Write the outcome; ``task.ended_here`` says whether the job's final state is this
        outcome's (not another, written first by a worker that held it later)."""
        state = outcome.state
        if state is State.DONE:
            task.ended_here = self.status.done(task.subject_id, dict(outcome.tracks),
                                               task.elapsed_s())
        elif state is State.CHUNK_STORED:
            self.status.done(task.id, {}, task.elapsed_s())
        elif state in (State.FAILED, State.SKIPPED):
            elapsed_s = task.elapsed_s() if state is State.FAILED else None
            task.ended_here = self.status.failed(task.subject_id, outcome.reason, elapsed_s)
        elif state is State.RETRY:
            self.status.requeued(task.subject_id, outcome.reason)
        elif state is State.CANCELLED:
            task.ended_here = self.status.cancelled(task.subject_id, outcome.reason)
        elif state in (State.RETURNED, State.DEFERRED):
            self.status.uncount_attempt(task.id)
            self.status.requeued(task.subject_id, f"{outcome.reason}; requeued (the attempt "
                                 "does not count)" if outcome.reason else
                                 "the worker stopped during the job; requeued")
        if task.ended_here:  # the requests that follow this work read its result too
            final = {State.DONE: Status.DONE, State.CANCELLED: Status.CANCELLED}.get(
                state, Status.FAILED)
            self.status.mirror(task.subject_id, state=final.value, stage=final.value,
                               progress=100 if final is Status.DONE else 0,
                               tracks=dict(outcome.tracks))

    def after_settle(self, task: Task, outcome: Outcome) -> None:
        if outcome.state is State.DONE:  # the webhook's time included; the REST hides it
            self.status.update(task.subject_id,
                               timings={k: round(v, 3) for k, v in task.timings.items()})


class Webhooks:
    """The outcome to the job's callback and to those of the requests that joined it."""

    def __init__(self, settings: Settings, status: StatusStore, joins: Joins) -> None:
        self.settings = settings
        self.status = status
        self.joins = joins

    def before_settle(self, task: Task, outcome: Outcome) -> None:
        if task.kind in (JobKind.INVALID, JobKind.CHUNK):  # a chunk reports through its song
            return
        if outcome.state in (State.DONE, State.FAILED, State.CANCELLED) and task.ended_here \
                and self.status.announce(task.subject_id):  # once, whoever races to it
            with timed(task, "webhook"):
                self.notify(task.subject, task.songhash, outcome.state.value,
                            dict(outcome.tracks), outcome.reason or None)

    def notify(self, job: Job, songhash: str | None, state: str, tracks: dict[str, str],
               error: str | None) -> None:
        active = None if not songhash else \
            Keys.active(songhash, job.model or self.settings.demucs_model, job.tracks(),
                        job.encoding(self.settings.mp3_bitrate_kbps).variant)
        joined = self.joins.settle(job, active)
        refused = send_outcome(job, songhash, state, tracks, error, self.settings, joined)
        if refused is not None and job.id:
            log.warning("job %s: callback refused: %s", job.id, refused)
            self.status.update(job.id, callback_error=refused)


class LongSongUpkeep:
    """A chunk that failed for good fails its song; a join that ended removes the song's
    intermediates (after the acknowledgement: a rerun join still finds them)."""

    def __init__(self, long_songs: LongSongs, status: StatusStore, webhooks: Webhooks) -> None:
        self.long_songs = long_songs
        self.status = status
        self.webhooks = webhooks

    def after_settle(self, task: Task, outcome: Outcome) -> None:
        if task.job is None:
            return
        if task.kind is JobKind.CHUNK and outcome.state is State.FAILED:
            self.fail_song(task.job, outcome.reason)
        elif task.kind is JobKind.CHUNK and outcome.state is State.CANCELLED:
            self.cancel_song(task.job.chunk_of or "")
        elif task.kind is JobKind.JOIN and outcome.state in (State.DONE, State.FAILED):
            self.long_songs.cleanup(task.job.join_of or "")
        elif task.kind is JobKind.JOIN and outcome.state is State.CANCELLED:
            self.cancel_song(task.job.join_of or "")

    def cancel_song(self, parent_id: str) -> None:
        """The first of a cancelled long song's chunks (or its join) to end says so."""
        if self.status.cancelled(parent_id, CANCELLED) and self.status.announce(parent_id):
            self.announce(parent_id, Status.CANCELLED, CANCELLED)  # once, whoever races to it
        self.long_songs.cleanup(parent_id)

    def fail_song(self, chunk: Job, reason: str) -> None:
        parent_id = chunk.chunk_of or ""
        message = f"chunk {chunk.chunk} failed: {reason}"
        if self.status.failed(parent_id, message) and self.status.announce(parent_id):
            self.announce(parent_id, Status.FAILED, message)  # once, whoever races to it
            log.error("job %s: failed for good: %s", parent_id, message)
        self.long_songs.cleanup(parent_id)

    def announce(self, parent_id: str, state: Status, reason: str) -> None:
        """The long song's webhook, from its chunking record (none once that expired)."""
        try:
            parent, songhash = self.long_songs.parent(parent_id)
        except LookupError:
            return
        self.webhooks.notify(parent, songhash, state.value, {}, reason)


def count(task: Task, outcome: Outcome) -> None:
    """Prometheus: jobs by outcome and failure code, and the time of finished ones."""
    if outcome.state is State.DONE:
        JOBS.labels("done", "").inc()
        JOB_SECONDS.observe(task.elapsed_s())
    elif outcome.state is State.CANCELLED:
        JOBS.labels("cancelled", "").inc()
    elif outcome.state in (State.FAILED, State.RETRY, State.DEFERRED) and \
            outcome.failure is not None:
        label = {State.FAILED: "failed", State.RETRY: "retried"}.get(outcome.state, "deferred")
        JOBS.labels(label, outcome.failure.code.value).inc()


def log_outcome(task: Task, outcome: Outcome) -> None:
    state = outcome.state
    if state is State.DONE:
        log.info("job %s: done in %.1f s, %d tracks of %s", task.subject_id, task.elapsed_s(),
                 len(outcome.tracks), task.songhash)
    elif state is State.CHUNK_STORED and task.job is not None:
        log.info("job %s: chunk %s of %s stored in %.1f s", task.id, task.job.chunk,
                 task.job.chunk_of, task.elapsed_s())
    elif state is State.FAILED and task.kind is JobKind.INVALID:
        log.error("job %s refused: %s; payload %.200r", task.id, outcome.reason, task.raw)
    elif state is State.FAILED:
        log.error("job %s: failed for good after %.1f s (attempt %d): %s", task.subject_id,
                  task.elapsed_s(), task.attempt, outcome.reason)
    elif state is State.RETRY:
        log.warning("job %s: attempt %d failed, requeued: %s", task.subject_id, task.attempt,
                    outcome.reason)
    elif state is State.DEFERRED:
        log.warning("job %s: requeued, the attempt not counted: %s", task.subject_id,
                    outcome.reason)
    elif state is State.ENDED:
        log.info("job %s: taken again after it ended; not run again", task.id)
    elif state is State.RETURNED:
        log.warning("job %s: worker stopping, job put back onto the queue", task.subject_id)
    elif state is State.SKIPPED:
        log.info("job %s: not run: %s", task.id, outcome.reason)
    elif state is State.CANCELLED:
        log.info("job %s: cancelled after %.1f s", task.subject_id, task.elapsed_s())


def remove_work_dir(task: Task, outcome: Outcome) -> None:
    """A cancelled job's temp files go at once, not with its batch."""
    if outcome.state is State.CANCELLED:
        shutil.rmtree(task.work_dir, ignore_errors=True)
