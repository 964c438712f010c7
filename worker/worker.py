"""The worker daemon: a job from Redis in, Demucs in the middle, tracks out to MinIO.

Run as ``python -m worker`` or ``python worker/worker.py`` (``--burst``: return once the queue
is empty; ``worker.__main__`` builds the worker's parts); every setting comes from the
environment (``common.settings``). The queue protocol is written down in
``common.queue``; every Redis command of it is a ``JobQueue`` method.

A job's lifecycle, one method each, in the order ``run_batch`` calls them:

1. ``take_jobs``   the next job by priority (``JobQueue.take``: chunks of songs under way
                   first, then high before normal) into this worker's processing list, plus
                   up to ``BATCH_MAX - 1`` jobs already waiting (a batch never waits for more).
2. ``start``       parse the payload and decide its kind (``worker.task.JobKind``: a song, a
                   chunk of a long song, or a join); count the attempt; mark it running.
3. ``fetch``       a song or chunk: stat and ``fget_object`` its input into the batch's temp
                   dir and check what it really is (too big, too long, not audio); a song
                   longer than ``CHUNK_OVER_S`` is ``split`` into chunk jobs here. A join:
                   ``join`` stitches its long song's chunk stems.
4. ``separate``    one Demucs CLI call for all of a batch's jobs of one model, with its
                   fallbacks (``worker.demucs.separator``).
5. ``deliver``     a chunk's stems are stored for its join (``LongSongs.store_chunk``); a
                   song's or join's tracks are mixed from the WAV stems, encoded once each in
                   the job's format (MP3, FLAC, WAV), and ``fput_object``-ed
                   (``upload_tracks``).
   A cancel (``worker.cancel``) is checked when a job is taken, before each step, and by a
   thread while Demucs runs (which it stops).
6. ``settle``      the one place a taken job ends: its ``Outcome`` (``worker.outcomes``) goes
                   to the observers (status, webhooks, long songs, metrics, log) and the queue
                   acknowledges, dead-letters or gives back the payload. A job this worker no
                   longer holds (redelivered to another while this one was paused past its
                   heartbeat) is left to the other: nothing is written about it here.

``outcome_of`` is the one place where exceptions become outcomes. A failed attempt's back-off,
and the growing back-off of a storage outage, are waited once after the batch, never while the
worker holds other jobs. SIGTERM stops taking jobs; the current batch finishes within
``SHUTDOWN_GRACE_S`` or goes back onto the queue.
"""

from __future__ import annotations

import logging
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable,
    # and only them: the script's own folder would make worker/demucs/ shadow Demucs itself
    _here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import redis
from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError

from common.contract import (
    InvalidJob,
    Job,
    Status,
    claimed_job_id,
    input_key,
    parse_job,
    sha256_file,
)
from common.joins import Joins
from common.observability import serve
from common.queue import JobQueue
from common.retention import expires_at, prepare_buckets
from common.settings import Settings
from common.status import StatusStore
from worker import errors
from worker.cancel import CancelWatch
from worker.demucs.bags import PrunedBag, pruned_bag, sources_for
from worker.demucs.separator import Separator
from worker.demucs.weights import Shelf
from worker.inputs import Inputs
from worker.long_songs.chunk_jobs import LongSongs
from worker.metrics import IN_FLIGHT
from worker.outcomes import (
    CANCELLED,
    LongSongUpkeep,
    Observer,
    StatusRecorder,
    Webhooks,
    count,
    log_outcome,
    outcome_of_error,
    remove_work_dir,
)
from worker.output.tracks import Tracks
from worker.pcm import wav_duration_s
from worker.task import JobKind, Outcome, Settlement, State, Task, live, timed
from worker.upkeep import Heartbeat, StopSignal, until_up
from worker.work_dirs import make_batch_dir

log = logging.getLogger("worker")


@dataclass(frozen=True)
class Parts:
    """What a worker works with, each built once by ``worker.__main__.build_worker``."""

    worker_id: str
    models: Shelf
    queue: JobQueue
    status: StatusStore
    storage: Minio
    inputs: Inputs
    tracks: Tracks
    long_songs: LongSongs
    joins: Joins
    stop: StopSignal
    heartbeat: Heartbeat
    cancels: CancelWatch
    separator: Separator
    device: str


class Worker:
    """Takes batches of jobs until told to stop. See the module docstring for the steps."""

    def __init__(self, settings: Settings, parts: Parts) -> None:
        self.settings = settings
        self.worker_id, self.models = parts.worker_id, parts.models
        self.queue, self.status, self.storage = parts.queue, parts.status, parts.storage
        self.inputs, self.tracks, self.long_songs = parts.inputs, parts.tracks, parts.long_songs
        self.separator, self.device = parts.separator, parts.device
        self.stop = parts.stop  # the SIGTERM and SIGINT handler
        self.stopping, self.abort = self.stop.stopping, self.stop.abort
        self.heartbeat, self.cancels = parts.heartbeat, parts.cancels
        self.holds_stale_jobs = False
        self.backoff = Backoff(settings.outage_backoff_max_s)
        status = StatusRecorder(self.status)
        webhooks = Webhooks(settings, self.status, parts.joins)
        long_songs = LongSongUpkeep(self.long_songs, self.status, webhooks)
        # What an outcome touches, in order: before the queue lets go of the job (a crash
        # there runs the job again), and after.
        self.before_settle: list[Observer] = [remove_work_dir, status.before_settle,
                                              webhooks.before_settle]
        self.after_settle: list[Observer] = [status.after_settle, long_songs.after_settle,
                                             count, log_outcome]

    # -- main loop -------------------------------------------------------------------------
    def run(self, burst: bool = False) -> int:
        """Take and run batches until stopped (or, with ``burst``, until the queue is empty)."""
        until_up(self.stopping, "MinIO", lambda: prepare_buckets(self.storage, self.settings),
                 (S3Error, HTTPError, OSError))
        until_up(self.stopping, "Redis", self.queue.ping, (redis.RedisError,))
        if self.stopping.is_set():  # told to stop before Redis or MinIO ever answered
            log.info("worker %s stopped before it started", self.worker_id)
            return 0
        self.heartbeat.start()
        self.cancels.start()
        if self.settings.metrics_port:
            serve(self.settings.metrics_port, self.heartbeat.health, self.settings.metrics_host)
        log.info("worker %s ready: device=%s threads=%d models=%s (default %s) batch_max=%d%s",
                 self.worker_id, self.device, self.settings.threads,
                 ",".join(self.models.registry.names()), self.settings.demucs_model,
                 self.settings.batch_max, " burst" if burst else "")
        backoff_s = 0.5
        while not self.stopping.is_set():
            try:
                if self.holds_stale_jobs:
                    self.return_held_jobs()
                raws = self.take_jobs(block=not burst)
                if not raws and burst:
                    break
                if raws:
                    self.run_batch(raws)
                    self.stopping.wait(self.backoff.after_batch())
                backoff_s = 0.5
            except redis.RedisError as error:
                self.holds_stale_jobs = True  # what this worker holds goes back once Redis is up
                log.warning("Redis unreachable (%s); retrying in %.1f s", error, backoff_s)
                self.stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 30)
        self.leave()
        return 0

    def run_batch(self, raws: list[bytes]) -> None:
        try:
            batch_dir = make_batch_dir(self.settings.work_dir, self.worker_id)
        except OSError as error:
            failure = errors.disk_failed(f"cannot create a temp dir for the job: {error}")
            for task in filter(None, (self.start(raw, Path(tempfile.gettempdir()))
                                      for raw in raws)):
                self.settle(task, self.failure_outcome(task, failure))
            return
        with batch_dir as tmp:
            tasks = [t for i, raw in enumerate(raws) if (t := self.start(raw, Path(tmp) / f"j{i}"))]
            IN_FLIGHT.set(len(tasks))
            self.cancels.watch(tasks)
            for task in live(tasks):
                with self.outcome_of(task):
                    self.fetch(task)
            self.separate(live(tasks))
            for task in live(tasks):
                with self.outcome_of(task):
                    self.deliver(task)
            self.cancels.watch([])
            IN_FLIGHT.set(0)

    # -- 1. take ---------------------------------------------------------------------------
    def take_jobs(self, block: bool = True) -> list[bytes]:
        first = self.queue.take(self.worker_id, self.settings.poll_s) if block else \
            self.queue.take_waiting(self.worker_id)
        if first is None:
            return []
        raws = [first]
        while len(raws) < self.settings.batch_max and not self.stopping.is_set():
            more = self.queue.take_waiting(self.worker_id)
            if more is None:
                break
            raws.append(more)
        return raws

    # -- 2. start --------------------------------------------------------------------------
    def start(self, raw: bytes, work_dir: Path) -> Task | None:
        """The task of a taken payload, or None when it ended here (refused or skipped)."""
        try:
            job = parse_job(raw)
        except InvalidJob as error:
            task = Task(raw, claimed_job_id(raw), None, JobKind.INVALID, 1, work_dir)
            self.settle(task, Outcome(State.FAILED, failure=errors.invalid_job(str(error))))
            return None
        if self.cancels.requested(job):  # cancelled while it waited: it never starts
            task = Task(raw, job.id or "", job, JobKind.of(job), 0, work_dir)
            self.settle(task, Outcome.of(State.CANCELLED, CANCELLED))
            return None
        task = Task(raw, job.id or "", job, JobKind.of(job),
                    self.status.start_attempt(job.id or "", self.worker_id), work_dir,
                    songhash=job.songhash)
        if task.attempt == 0:  # its record says it ended: a job id ends once
            self.settle(task, Outcome.of(State.ENDED))
            return None
        if forged := self.long_songs.refusal(job):  # a chunk or join no worker made: it
            task.kind = JobKind.INVALID  # fails alone, never the song it names
            self.settle(task, Outcome(State.FAILED, failure=errors.invalid_job(forged)))
            return None
        if refused := self.models.refusal(job.model):  # never reaches Demucs, nor a song key
            self.settle(task, Outcome(State.FAILED, failure=errors.model_unavailable(refused)))
            return None
        self.decide(task, job)
        self.status.update(task.id, model=task.model,
                           weights_sha256=self.models.weights_sha256(task.model),
                           songhash=job.songhash or "", stage="starting")
        self.status.mirror(task.id, state=Status.RUNNING.value, stage="running")
        log.info("job %s: attempt %d/%d started", task.id, task.attempt,
                 self.settings.max_attempts)
        if task.kind is JobKind.CHUNK and self.long_songs.parent_failed(job.chunk_of or ""):
            self.settle(task, Outcome.of(State.SKIPPED,
                                         f"job {job.chunk_of}, whose chunk this is, failed"))
        elif task.attempt > self.settings.max_attempts:
            last = (self.status.get(task.id) or {}).get("error") or \
                "the worker running it stopped or died"
            self.settle(task, self.failure_outcome(task, errors.attempts_exhausted(
                f"gave up after {self.settings.max_attempts} attempts; last error: {last}")))
        return None if task.settled else task

    # -- 3. fetch --------------------------------------------------------------------------
    def fetch(self, task: Task) -> None:
        """Download and check a song's or chunk's input (splitting a long song); a join
        stitches its chunks."""
        self.cancels.check(task)
        if task.kind is JobKind.JOIN:
            return self.join(task)
        job = task.subject
        bucket = job.bucket or self.settings.queue_bucket
        key = job.object or input_key(task.songhash or "")
        self.status.update(task.id, stage="downloading", progress=1)
        task.work_dir.mkdir(parents=True)
        suffix = ".wav" if task.kind is JobKind.CHUNK else ".mp3"
        task.input_path = task.work_dir / f"{task.work_dir.name}{suffix}"
        with timed(task, "download"):
            self.inputs.download(bucket, key, task.input_path)
        with timed(task, "probe"):
            if task.kind is JobKind.CHUNK:  # a WAV this service cut
                duration_s = wav_duration_s(task.input_path)
            else:
                duration_s = self.inputs.probe(task.input_path, f"s3://{bucket}/{key}")
                if task.songhash is None:
                    task.songhash = sha256_file(task.input_path)
                self.status.link_song(task.id, task.songhash, task.model,
                                      task.encoding.variant)
        self.status.update(task.id, songhash=task.songhash or "", duration_s=round(duration_s, 3))
        if task.kind is JobKind.SONG and self.long_songs.should_split(duration_s):
            self.still_held(task)
            self.split(task, duration_s)
        return None

    def split(self, task: Task, duration_s: float) -> None:
        """Hand a long song over to chunk jobs; they carry the work from here."""
        if task.input_path is None or task.songhash is None:
            raise RuntimeError("a song is split only after its input was fetched")
        self.status.update(task.id, stage="splitting", progress=2)
        with timed(task, "split"):
            self.long_songs.split(task.subject, task.songhash, task.model, task.input_path,
                                  duration_s, task.work_dir)
        self.settle(task, Outcome.of(State.SPLIT))

    def join(self, task: Task) -> None:
        """Stitch a long song's chunk stems; the task then delivers that song's tracks."""
        task.parent, task.songhash = self.long_songs.parent(task.subject.join_of or "")
        self.decide(task, task.parent)  # a join delivers its song: the song's model and encoding
        task.work_dir.mkdir(parents=True)
        self.status.update(task.subject_id, stage="joining", progress=90)
        with timed(task, "join"):
            task.stem_dir, task.input_path = self.long_songs.prepare_join(task.subject_id,
                                                                          task.work_dir)

    # -- 4. separate ----------------------------------------------------------------------
    def separate(self, tasks: list[Task]) -> None:
        """One Demucs run (``worker.demucs.separator``) for each model the jobs without stems
        need."""
        runs = {task.id: self.run_of(task) for task in tasks if task.stem_dir is None}
        for model, pruned in dict.fromkeys(runs.values()):
            group = [t for t in tasks if runs.get(t.id) == (model, pruned)]
            try:
                failures = self.separator.separate(group, model, pruned, self.end_with)
            except Exception as error:  # noqa: BLE001 - outcome_of below gives each its outcome
                failures = {task.id: error for task in group}
            for task in live(group):
                if task.id in failures:
                    self.end_with(task, failures[task.id])

    def end_with(self, task: Task, error: Exception) -> None:
        """Settle ``task`` with the outcome of ``error`` (a cancelled job ends while the
        others of its batch run again)."""
        with self.outcome_of(task):
            raise error

    def run_of(self, task: Task) -> tuple[str, PrunedBag | None]:
        """The model a job runs, and the pruned bag its sources need (None: all of it)."""
        repo = self.models.repo(task.model, task.work_dir.parent)
        return task.model, None if repo is None else pruned_bag(
            task.model, repo, sources_for(task.subject.tracks()))

    # -- 5. deliver ------------------------------------------------------------------------
    def deliver(self, task: Task) -> None:
        self.cancels.check(task)
        if task.kind is JobKind.CHUNK:
            if task.stem_dir is None:
                raise RuntimeError(f"chunk {task.id} has no stems")
            self.still_held(task)
            with timed(task, "upload"):
                self.long_songs.store_chunk(task.subject, task.stem_dir)
            self.settle(task, Outcome.of(State.CHUNK_STORED))
        else:
            self.settle(task, Outcome.done(self.upload_tracks(task)))

    def upload_tracks(self, task: Task) -> dict[str, str]:
        if task.stem_dir is None or task.input_path is None or not task.songhash:
            raise RuntimeError(f"job {task.id} reached delivery without stems or input")
        encoding = task.encoding
        self.status.update(task.subject_id, stage="encoding", progress=90)
        with timed(task, "encode"):
            files = self.tracks.encode(task.subject, task.stem_dir, task.input_path,
                                       task.work_dir / "tracks", encoding)
        self.cancels.check(task)  # past this point a cancel comes too late: the job ends done
        self.still_held(task)
        self.status.update(task.subject_id, stage="uploading", progress=95, **encoding.fields(),
                           expires_at=expires_at(time.time(), self.settings.retention_days) or "")
        with timed(task, "upload"):
            return self.tracks.upload(files, task.songhash, task.model,
                                      self.models.weights_sha256(task.model), task.subject_id,
                                      encoding)

    # -- 6. settle -------------------------------------------------------------------------
    def settle(self, task: Task, outcome: Outcome) -> None:
        """The one place a taken job ends: observers, then the queue, then observers. A job
        this worker no longer holds is another worker's: nothing is written about it."""
        task.outcome = outcome
        if not self.queue.holds(self.worker_id, task.raw):
            return self.redelivered(task)
        for observe in self.before_settle:
            observe(task, outcome)
        if not self.release(task, outcome):
            return self.redelivered(task)
        for observe in self.after_settle:
            observe(task, outcome)
        self.backoff.note(outcome.state, task.attempt)
        return None

    def still_held(self, task: Task) -> None:
        """Before a step writes what others read (chunk jobs, stems, tracks): raise
        ``Redelivered`` if another worker holds the job now."""
        if not self.queue.holds(self.worker_id, task.raw):
            raise errors.Redelivered

    def release(self, task: Task, outcome: Outcome) -> bool:
        """The queue's move of a settled job; False when this worker no longer held it."""
        if outcome.settlement is Settlement.ACK:
            return self.queue.ack(self.worker_id, task.raw)
        if outcome.settlement is Settlement.DEAD_LETTER:
            return self.queue.dead_letter(self.worker_id, task.raw, outcome.reason,
                                          task.attempt)
        return self.queue.give_back(self.worker_id, task.raw, task.subject_id)

    def redelivered(self, task: Task) -> None:
        log.warning("job %s: redelivered to another worker while this one held it (paused past "
                    "its heartbeat); left to that worker", task.id)

    def failure_outcome(self, task: Task, failure: errors.JobFailure) -> Outcome:
        return Outcome.of_failure(failure, task.attempt, self.settings.max_attempts)

    @contextmanager
    def outcome_of(self, task: Task) -> Iterator[None]:
        """Run a step of a job; settle the job with the outcome of what it raises."""
        try:
            yield
        except redis.RedisError:
            raise  # the job stays in the processing list and is redelivered
        except Exception as error:  # noqa: BLE001 - every exception becomes an outcome
            self.settle(task, outcome_of_error(error, task, self.settings.max_attempts))

    # -- leave -----------------------------------------------------------------------------
    def return_held_jobs(self) -> None:
        """Put back what this worker's processing list still holds (after a Redis outage,
        which spends none of their attempts)."""
        for raw in self.queue.give_back_held(self.worker_id):
            job_id = claimed_job_id(raw)
            if job_id and self.status.requeued(job_id, "Redis was unreachable during the job; "
                                               "requeued (the attempt does not count)"):
                self.status.uncount_attempt(job_id)
        self.holds_stale_jobs = False

    def leave(self) -> None:
        self.heartbeat.stop()
        self.cancels.stop()
        self.separator.close()
        try:
            self.return_held_jobs()  # nothing should be left; be sure
            self.queue.forget(self.worker_id)
        except redis.RedisError as error:  # the heartbeat expires; another worker redelivers
            log.warning("could not leave cleanly: %s", error)
        log.info("worker %s stopped", self.worker_id)

    def decide(self, task: Task, job: Job) -> None:
        """The model and encoding ``task`` works with, decided once and read by every step
        after: its job's (``DEMUCS_MODEL``, ``MP3_BITRATE`` where it names none)."""
        task.model = job.model or self.settings.demucs_model
        task.encoding = job.encoding(self.settings.mp3_bitrate_kbps)


class Backoff:
    """How long the worker waits after a batch, before it takes more: a failed attempt's
    back-off (2 s, 4 s, ... up to 30 s), or a storage outage's, which grows with each batch
    the outage hits (1 s, 2 s, ... up to ``OUTAGE_BACKOFF_MAX_S``, with jitter, so workers do
    not come back in step); a batch without either resets it."""

    def __init__(self, outage_max_s: float) -> None:
        self.outage_max_s = outage_max_s
        self.outages = 0  # consecutive batches an outage hit
        self.retry_s = 0.0
        self.outage_hit = False

    def note(self, state: State, attempt: int) -> None:
        if state is State.RETRY:
            self.retry_s = max(self.retry_s, min(2.0 ** attempt, 30.0))
        elif state is State.DEFERRED:
            self.outage_hit = True

    def after_batch(self) -> float:
        wait_s, self.retry_s = self.retry_s, 0.0
        if self.outage_hit:
            self.outages += 1
            ceiling_s = min(2.0 ** (self.outages - 1), self.outage_max_s)
            wait_s = max(wait_s, random.uniform(ceiling_s / 2, ceiling_s))  # jitter, not a secret  # nosec B311
        else:
            self.outages = 0
        self.outage_hit = False
        return wait_s


if __name__ == "__main__":  # python worker/worker.py, the image's and the lab's command, is
    import runpy  # python -m worker

    runpy.run_module("worker", run_name="__main__", alter_sys=True)
