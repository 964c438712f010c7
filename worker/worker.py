"""The worker daemon: a job from Redis in, Demucs in the middle, tracks out to MinIO.

Run as ``python worker/worker.py``; every setting comes from the environment
(``separation.settings``). The queue protocol is written down in ``separation.queue``.

A job's lifecycle, one method each:

1. ``take_jobs``      the next job by priority (``JobQueue.take``: high before normal, chunks of
                      songs under way first) into this worker's processing list, plus up to
                      ``BATCH_MAX - 1`` jobs already waiting (a batch never waits for more).
2. ``start_job``      validate the payload (a malformed one goes straight to the dead-letter
                      list), count the attempt, mark the job running.
3. ``fetch_input``    stat and ``fget_object`` the MP3 into the batch's temp dir; refuse it if it
                      is too big, too long or not audio.
4. ``separate``       one Demucs CLI call for all of a batch's jobs of one model (a bag pruned
                      to the sources they need, ``separation.bags``, is a model of its own); if
                      it fails, each job not yet separated runs alone so one bad file fails
                      only itself.
5. ``deliver_tracks`` mix the derived tracks from the WAV stems, encode each track to MP3 once,
                      ``fput_object`` each one.
6. ``finish_job``     status ``done``, webhooks (``notify``: the job's callback and those of
                      the requests that joined it), acknowledge (LREM).
   ``fail_job``       retry (back onto the queue) or fail for good (dead-letter list), webhook.

Long songs (``separation.long_songs``): ``split_long_song`` replaces steps 4-6 of a song longer
than ``CHUNK_OVER_S`` by chunk jobs; ``finish_chunk`` stores a chunk's stems and counts it; the
last one queues a join job, whose ``prepare_join`` stitches the stems and then runs steps 5-6 as
its parent job.

``job_outcome`` is the one place where exceptions become job outcomes. SIGTERM stops taking
jobs; the current batch finishes within ``SHUTDOWN_GRACE_S`` or goes back onto the queue.
"""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError

from separation import errors
from separation.audio import NotAudio, TooLong, mix_and_encode, probe_mp3, sources_for, write_mix
from separation.bags import PrunedBag, pruned_bag
from separation.connections import connect_minio, connect_redis, ensure_bucket
from separation.contract import (
    InvalidJob,
    Job,
    Keys,
    claimed_job_id,
    input_key,
    output_key,
    parse_job,
    sha256_file,
)
from separation.demucs_cli import DemucsOptions, cuda_present, failure_of, run_demucs
from separation.joins import Joins
from separation.logs import configure_logging
from separation.long_songs import LongSongs, wav_duration_s
from separation.observability import (
    IN_FLIGHT,
    JOB_SECONDS,
    JOBS,
    STAGE_SECONDS,
    record_queue_depths,
    serve,
)
from separation.queue import JobQueue
from separation.settings import Settings
from separation.status import StatusStore
from separation.webhook import send_outcome

log = logging.getLogger("worker")


@dataclass
class Task:
    """One taken job while this worker holds it."""

    raw: bytes
    job: Job
    attempt: int
    work_dir: Path
    taken_at: float = field(default_factory=time.monotonic)
    songhash: str | None = None
    input_path: Path | None = None
    stem_dir: Path | None = None
    join_of: str | None = None  # a join task runs as its parent job once prepared
    finished: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.job.id or ""

    def elapsed_s(self) -> float:
        return time.monotonic() - self.taken_at


class Worker:
    """Takes batches of jobs until told to stop. See the module docstring for the steps."""

    def __init__(self, settings: Settings, client: redis.Redis, storage: Minio) -> None:
        self.settings = settings
        self.queue = JobQueue(client, high_burst=settings.high_burst,
                              route_batch=settings.queue_route_batch)
        self.status = StatusStore(client, settings.status_ttl_s)
        self.joins = Joins(client, settings.status_ttl_s)
        self.storage = storage
        self.long_songs = LongSongs(settings, self.queue, self.status, storage)
        self.worker_id = f"{settings.host}-{id(self):x}-{int(time.time() * 1000) % 10**8}"
        self.stopping = threading.Event()
        self.abort = threading.Event()
        self.exited = threading.Event()
        self.holds_stale_jobs = False
        self.last_beat = 0.0
        self.device = self._resolve_device()

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> int:
        """check stop → take jobs → run them → record outcomes; exit 0 after a clean stop."""
        self.ensure_buckets()
        self.wait_for_redis()
        if self.stopping.is_set():  # told to stop before Redis or MinIO ever answered
            log.info("worker %s stopped before it started", self.worker_id)
            return 0
        self.start_heartbeat()
        if self.settings.metrics_port:
            serve(self.settings.metrics_port, self.health)
        log.info("worker %s ready: device=%s threads=%d model=%s batch_max=%d", self.worker_id,
                 self.device, self.settings.threads, self.settings.demucs_model,
                 self.settings.batch_max)
        backoff_s = 0.5
        while not self.stopping.is_set():
            try:
                if self.holds_stale_jobs:
                    self.return_held_jobs()
                raws = self.take_jobs()
                if raws:
                    self.run_batch(raws)
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
            batch_dir = tempfile.TemporaryDirectory(prefix="demucs-batch-",
                                                    dir=self.settings.work_dir)
        except OSError as error:
            self.fail_batch(raws, errors.JobFailure(
                f"cannot create a temp dir for the job: {error}", "disk", permanent=False))
            return
        with batch_dir as tmp:
            tasks = [t for i, raw in enumerate(raws)
                     if (t := self.start_job(raw, Path(tmp) / f"j{i}")) is not None]
            IN_FLIGHT.set(len(tasks))
            for task in _live(tasks):
                with self.job_outcome(task):
                    self.fetch_input(task)
            runs = {task.id: self._run_of(task) for task in tasks}
            for model, pruned in dict.fromkeys(runs.values()):
                group = [t for t in _live(tasks)
                         if t.stem_dir is None and runs[t.id] == (model, pruned)]
                try:
                    failures = self.separate(group, model, pruned) if group else {}
                except Exception as error:  # noqa: BLE001 - job_outcome below gives each its outcome
                    failures = {task.id: error for task in group}
                for task in group:
                    if task.id in failures:
                        with self.job_outcome(task):
                            raise failures[task.id]
            for task in _live(tasks):
                with self.job_outcome(task):
                    self.deliver(task)
            IN_FLIGHT.set(0)

    def fail_batch(self, raws: list[bytes], failure: errors.JobFailure) -> None:
        for raw in raws:
            task = self.start_job(raw, Path(tempfile.gettempdir()))
            if task is not None:
                self.fail_job(task, failure)

    # -- 1. take ---------------------------------------------------------------------------
    def take_jobs(self) -> list[bytes]:
        first = self.queue.take(self.worker_id, self.settings.poll_s)
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
    def start_job(self, raw: bytes, work_dir: Path) -> Task | None:
        try:
            job = parse_job(raw)
        except InvalidJob as error:
            job_id = claimed_job_id(raw)
            log.error("job %s refused: %s; payload %.200r", job_id, error, raw)
            self.status.failed(job_id, str(error))
            self.queue.dead_letter(self.worker_id, raw, str(error), attempts=1)
            JOBS.labels("failed", "invalid_job").inc()
            return None
        task = Task(raw, job, self.status.start_attempt(job.id or "", self.worker_id), work_dir)
        task.songhash = job.songhash
        self.status.update(task.id, model=self._model(task), songhash=job.songhash or "",
                           stage="starting")
        log.info("job %s: attempt %d/%d started", task.id, task.attempt,
                 self.settings.max_attempts)
        if job.chunk_of and self.long_songs.parent_failed(job.chunk_of):
            self.status.failed(task.id, f"job {job.chunk_of}, whose chunk this is, failed")
            self.queue.ack(self.worker_id, raw)
            return None
        if task.attempt > self.settings.max_attempts:
            record = self.status.get(task.id) or {}
            last = record.get("error") or "the worker running it stopped or died"
            self.fail_job(task, errors.attempts_exhausted(
                f"gave up after {self.settings.max_attempts} attempts; last error: {last}"))
            return None
        return task

    # -- 3. fetch --------------------------------------------------------------------------
    def fetch_input(self, task: Task) -> None:
        """Download and check the input; a join stitches its chunks; a long song is split."""
        if task.job.join_of:
            return self.prepare_join(task)
        bucket = task.job.bucket or self.settings.queue_bucket
        key = task.job.object or input_key(task.songhash or "")
        where = f"s3://{bucket}/{key}"
        self._stage(task, "downloading", 1)
        with self._timed(task, "download"):
            size = self._stat_size(bucket, key, where)
            if size > self.settings.max_input_bytes:
                raise errors.bad_input(f"input {where} is {size / 2**20:.1f} MB, over "
                                       f"MAX_INPUT_MB={self.settings.max_input_mb:g}")
            task.work_dir.mkdir(parents=True)
            suffix = ".wav" if task.job.chunk_of else ".mp3"
            task.input_path = task.work_dir / f"{task.work_dir.name}{suffix}"
            self.storage.fget_object(bucket, key, str(task.input_path))
        with self._timed(task, "probe"):
            if task.job.chunk_of:  # a WAV this service cut
                duration_s = wav_duration_s(task.input_path)
            else:
                duration_s = self._probe(task.input_path, where)
                if task.songhash is None:
                    task.songhash = sha256_file(task.input_path)
                    self.status.link_song(task.id, task.songhash, self._model(task))
        self.status.update(task.id, songhash=task.songhash or "", duration_s=round(duration_s, 3))
        if self.long_songs.should_split(task.job, duration_s):
            self.split_long_song(task, duration_s)
        return None

    def split_long_song(self, task: Task, duration_s: float) -> None:
        if task.input_path is None or task.songhash is None:
            raise RuntimeError("a song is split only after its input was fetched")
        self._stage(task, "splitting", 2)
        with self._timed(task, "split"):
            self.long_songs.split(task.job, task.songhash, self._model(task), task.input_path,
                                  duration_s, task.work_dir)
        self.queue.ack(self.worker_id, task.raw)  # its chunk jobs carry the work from here
        task.finished = True

    def prepare_join(self, task: Task) -> None:
        """Stitch a long song's chunk stems; from here the task runs as its parent job."""
        parent_id = task.job.join_of or ""
        task.join_of = parent_id
        task.job, task.songhash = self.long_songs.parent(parent_id)
        task.work_dir.mkdir(parents=True)
        self._stage(task, "joining", 90)
        with self._timed(task, "join"):
            task.stem_dir, task.input_path = self.long_songs.prepare_join(parent_id,
                                                                          task.work_dir)

    def _stat_size(self, bucket: str, key: str, where: str) -> int:
        try:
            return int(self.storage.stat_object(bucket, key).size or 0)
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise errors.bad_input(f"input {where} does not exist ({error.code})") from None
            raise

    def _probe(self, path: Path, where: str) -> float:
        if path.stat().st_size > self.settings.max_input_bytes:
            raise errors.bad_input(f"input {where} is over MAX_INPUT_MB")
        try:
            return probe_mp3(path, self.settings.max_duration_s)
        except NotAudio as error:
            raise errors.bad_input(f"{where}: {error}") from None
        except TooLong as error:
            raise errors.bad_input(f"input {where} {error}, over "
                                   f"MAX_DURATION_S={self.settings.max_duration_s:g}") from None

    # -- 4. separate -----------------------------------------------------------------------
    def separate(self, tasks: list[Task], model: str,
                 pruned: PrunedBag | None) -> dict[str, Exception]:
        """Run Demucs over ``tasks`` (with ``pruned``, only the sub-models of ``model`` that
        their sources need); return what each job that got no stems must raise."""
        failures = self._run_cli(tasks, model, self.device, pruned)
        if any(isinstance(f, errors.ShutdownRequested) for f in failures.values()):
            return failures
        if failures and self.device != "cpu" and all(
                getattr(f, "code", "") == "cuda" for f in failures.values()):
            log.warning("Demucs failed on %s; retrying once on the CPU", self.device)
            failures = self._run_cli([t for t in tasks if t.id in failures], model, "cpu",
                                     pruned)
        if failures and len(tasks) > 1 and not all(
                getattr(f, "code", "") == "model_unavailable" for f in failures.values()):
            log.warning("batch of %d failed for %d jobs; running those alone", len(tasks),
                        len(failures))
            alone = [t for t in tasks if t.id in failures]
            failures = {}
            for task in alone:
                failures.update(self._run_cli([task], model, self.device, pruned))
        return failures

    def _run_cli(self, tasks: list[Task], model: str, device: str,
                 pruned: PrunedBag | None) -> dict[str, Exception]:
        for task in tasks:
            self._stage(task, "separating", 5)
        out_dir = Path(tempfile.mkdtemp(prefix=f"demucs-{device}-", dir=tasks[0].work_dir.parent))
        repo = self.settings.demucs_repo
        if pruned is not None:
            model, repo = pruned.name, str(pruned.write(out_dir.with_name(out_dir.name + "-bag")))
            log.info("jobs %s: running %s", ",".join(t.id for t in tasks), pruned.description())
        options = DemucsOptions(model=model, device=device, threads=self.settings.threads,
                                shifts=self.settings.demucs_shifts,
                                segment=self.settings.demucs_segment, repo=repo)
        inputs = [t.input_path for t in tasks if t.input_path is not None]
        progress = _ProgressWriter(self.status, tasks)
        run = run_demucs(options, out_dir, inputs, self.settings.job_timeout_s * len(tasks),
                         self.abort, progress.report)
        if run.aborted:
            return {task.id: errors.ShutdownRequested() for task in tasks}
        failures: dict[str, Exception] = {}
        for index, task in enumerate(tasks):
            task.timings["demucs"] = run.elapsed_s / len(tasks)
            stems = next(out_dir.glob(f"*/{task.work_dir.name}"), None)
            # after a crash, only inputs Demucs finished before moving on have whole stems
            complete = run.returncode == 0 or index < run.inputs_started - 1
            if stems is not None and complete:
                task.stem_dir = stems
            else:
                failures[task.id] = failure_of(run, options, self.settings.job_timeout_s,
                                               [task.work_dir.parent])
        return failures

    # -- 5. deliver ------------------------------------------------------------------------
    def deliver(self, task: Task) -> None:
        if task.job.chunk_of:
            self.finish_chunk(task)
            return
        self.finish_job(task, self.deliver_tracks(task, self._model(task)))
        if task.join_of:
            self.long_songs.cleanup(task.join_of)

    def finish_chunk(self, task: Task) -> None:
        """Store a chunk's stems for the join, then count it (the last one queues the join)."""
        if task.stem_dir is None:
            raise RuntimeError(f"chunk {task.id} has no stems")
        with self._timed(task, "upload"):
            self.long_songs.store_stems(task.job, task.stem_dir)
        self.status.done(task.id, {}, task.elapsed_s())
        self.long_songs.complete(task.job)
        if self.long_songs.parent_failed(task.job.chunk_of or ""):
            self.long_songs.cleanup(task.job.chunk_of or "")  # stored after the parent failed
        self.queue.ack(self.worker_id, task.raw)
        task.finished = True
        log.info("job %s: chunk %s of %s stored in %.1f s", task.id, task.job.chunk,
                 task.job.chunk_of, task.elapsed_s())

    def deliver_tracks(self, task: Task, model: str) -> dict[str, str]:
        if task.stem_dir is None or task.input_path is None or not task.songhash:
            raise RuntimeError(f"job {task.id} reached delivery without stems or input")
        self._stage(task, "encoding", 90)
        with self._timed(task, "encode"):
            if "instrumental" in task.job.tracks():
                write_mix(task.input_path, task.stem_dir)
            files = mix_and_encode(task.stem_dir, task.job.tracks(), task.work_dir / "tracks",
                                   self.settings.mp3_bitrate_kbps, self.settings.threads)
        if "original" in task.job.tracks():
            files["original"] = task.input_path
        self._stage(task, "uploading", 95)
        keys: dict[str, str] = {}
        metadata = {"model": model, "songhash": task.songhash, "job-id": task.id}
        with self._timed(task, "upload"):
            for track in task.job.tracks():
                key = output_key(self.settings.output_key, task.songhash, track,
                                 self.settings.key_model(model))
                self.storage.fput_object(self.settings.output_bucket, key, str(files[track]),
                                         content_type="audio/mpeg",
                                         metadata={**metadata, "track": track})
                keys[track] = key
        return keys

    # -- 6. finish -------------------------------------------------------------------------
    def finish_job(self, task: Task, tracks: dict[str, str]) -> None:
        self.status.done(task.id, tracks, task.elapsed_s())
        with self._timed(task, "webhook"):
            self.notify(task.job, task.songhash, "done", tracks, None)
        self.status.update(task.id, timings={k: round(v, 3) for k, v in task.timings.items()})
        self.queue.ack(self.worker_id, task.raw)
        task.finished = True
        JOBS.labels("done", "").inc()
        JOB_SECONDS.observe(task.elapsed_s())
        log.info("job %s: done in %.1f s, %d tracks of %s", task.id, task.elapsed_s(),
                 len(tracks), task.songhash)

    def fail_job(self, task: Task, failure: errors.JobFailure) -> None:
        task.finished = True
        if failure.permanent or task.attempt >= self.settings.max_attempts:
            self.status.failed(task.id, failure.reason, task.elapsed_s())
            self.queue.dead_letter(self.worker_id, task.raw, failure.reason, task.attempt)
            self.notify(task.job, task.songhash, "failed", {}, failure.reason)
            JOBS.labels("failed", failure.code).inc()
            log.error("job %s: failed for good after %.1f s (attempt %d): %s", task.id,
                      task.elapsed_s(), task.attempt, failure.reason)
            if task.job.chunk_of:
                self.fail_parent(task.job, failure.reason)
            elif task.join_of:
                self.long_songs.cleanup(task.join_of)
        else:
            self.status.requeued(task.id, failure.reason)
            self.queue.give_back(self.worker_id, task.raw, task.id)
            JOBS.labels("retried", failure.code).inc()
            pause_s = min(2.0 ** task.attempt, 30.0)
            log.warning("job %s: attempt %d failed, requeued; pausing %.0f s: %s", task.id,
                        task.attempt, pause_s, failure.reason)
            self.stopping.wait(pause_s)  # what failed (storage, GPU) gets time to come back

    def fail_parent(self, chunk: Job, reason: str) -> None:
        """A chunk that failed for good fails its long song, whose intermediates go."""
        parent_id = chunk.chunk_of or ""
        try:
            parent, songhash = self.long_songs.parent(parent_id)
        except LookupError:
            parent, songhash = None, None
        message = f"chunk {chunk.chunk} failed: {reason}"
        self.status.failed(parent_id, message)
        if parent is not None:
            self.notify(parent, songhash, "failed", {}, message)
        self.long_songs.cleanup(parent_id)
        log.error("job %s: failed for good: %s", parent_id, message)

    def give_back(self, task: Task) -> None:
        task.finished = True
        self.status.uncount_attempt(task.id)
        self.status.requeued(task.id, "the worker stopped during the job; requeued")
        self.queue.give_back(self.worker_id, task.raw, task.id)
        log.warning("job %s: worker stopping, job put back onto the queue", task.id)

    def notify(self, job: Job, songhash: str | None, state: str, tracks: dict[str, str],
               error: str | None) -> None:
        """Send a job's outcome to its callback and those of the requests that joined it."""
        active = None if job.chunk_of or not songhash else \
            Keys.active(songhash, job.model or self.settings.demucs_model, job.tracks())
        joined = self.joins.settle(job, active)
        refused = send_outcome(job, songhash, state, tracks, error, self.settings, joined)
        if refused is not None and job.id:
            log.warning("job %s: callback refused: %s", job.id, refused)
            self.status.update(job.id, callback_error=refused)

    @contextmanager
    def job_outcome(self, task: Task) -> Iterator[None]:
        """Run a step of a job; turn what it raises into the job's outcome."""
        try:
            yield
        except errors.ShutdownRequested:
            self.give_back(task)
        except errors.JobFailure as failure:
            self.fail_job(task, failure)
        except (S3Error, HTTPError, OSError) as error:
            self.fail_job(task, errors.storage_failed(
                _without_work_dir(f"storage or disk error: {error}", task)))
        except redis.RedisError:
            raise  # the job stays in the processing list and is redelivered
        except Exception as error:
            log.exception("job %s: unexpected error", task.id)
            self.fail_job(task, errors.JobFailure(
                _without_work_dir(f"internal error: {error!r}", task), "internal",
                permanent=False))

    # -- heartbeat, health, stop -----------------------------------------------------------
    def start_heartbeat(self) -> None:
        self._beat()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()

    def _beat(self) -> None:
        self.queue.beat(self.worker_id, self.settings.heartbeat_ttl_s)
        self.last_beat = time.monotonic()

    def _heartbeat_loop(self) -> None:
        interval_s = self.settings.heartbeat_ttl_s / 3
        while not self.exited.wait(interval_s):
            try:
                self._beat()
                for raw in self.queue.redeliver_dead():
                    log.warning("redelivered a job of a dead worker: %.120r", raw)
                record_queue_depths(self.queue.depths())
            except redis.RedisError as error:
                log.warning("heartbeat failed: %s", error)

    def health(self) -> tuple[bool, str]:
        age_s = time.monotonic() - self.last_beat
        if age_s > self.settings.heartbeat_ttl_s:
            return False, f"last heartbeat {age_s:.0f} s ago"
        try:
            self.queue.ping()
        except redis.RedisError as error:
            return False, f"Redis unreachable: {error}"
        return True, "ok"

    def request_stop(self, signum: int, _frame: object) -> None:
        if self.stopping.is_set():
            log.warning("second signal %d: aborting the current job now", signum)
            self.abort.set()
            return
        log.info("signal %d: finishing the current job within %.0f s, taking no more", signum,
                 self.settings.shutdown_grace_s)
        self.stopping.set()
        timer = threading.Timer(self.settings.shutdown_grace_s, self.abort.set)
        timer.daemon = True
        timer.start()

    def return_held_jobs(self) -> None:
        """Put back what this worker's processing list still holds (after a Redis outage)."""
        for raw in self.queue.in_flight(self.worker_id):
            self.queue.give_back(self.worker_id, raw)
        self.holds_stale_jobs = False

    def leave(self) -> None:
        self.exited.set()
        try:
            self.return_held_jobs()  # nothing should be left; be sure
            self.queue.forget(self.worker_id)
        except redis.RedisError as error:  # the heartbeat expires; another worker redelivers
            log.warning("could not leave cleanly: %s", error)
        log.info("worker %s stopped", self.worker_id)

    def ensure_buckets(self) -> None:
        delay_s = 0.5
        while not self.stopping.is_set():
            try:
                for bucket in (self.settings.queue_bucket, self.settings.output_bucket):
                    ensure_bucket(self.storage, bucket)
                return
            except (S3Error, HTTPError, OSError) as error:
                log.warning("MinIO unreachable (%s); retrying in %.1f s", error, delay_s)
                self.stopping.wait(delay_s)
                delay_s = min(delay_s * 2, 30)

    def wait_for_redis(self) -> None:
        delay_s = 0.5
        while not self.stopping.is_set():
            try:
                self.queue.ping()
                return
            except redis.RedisError as error:
                log.warning("Redis unreachable (%s); retrying in %.1f s", error, delay_s)
                self.stopping.wait(delay_s)
                delay_s = min(delay_s * 2, 30)

    # -- helpers ---------------------------------------------------------------------------
    def _resolve_device(self) -> str:
        if self.settings.demucs_device != "auto":
            return self.settings.demucs_device
        return "cuda" if cuda_present() else "cpu"

    def _model(self, task: Task) -> str:
        return task.job.model or self.settings.demucs_model

    def _run_of(self, task: Task) -> tuple[str, PrunedBag | None]:
        """The model a job runs, and the pruned bag its sources need (None: all of it)."""
        model = self._model(task)
        return model, pruned_bag(model, self.settings.demucs_repo,
                                 sources_for(task.job.tracks()))

    def _stage(self, task: Task, stage: str, progress: float) -> None:
        self.status.update(task.id, stage=stage, progress=progress)

    @contextmanager
    def _timed(self, task: Task, stage: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            task.timings[stage] = time.monotonic() - started
            STAGE_SECONDS.labels(stage).observe(task.timings[stage])


class _ProgressWriter:
    """Writes Demucs' progress of each input into its job's status, at most once a second."""

    def __init__(self, status: StatusStore, tasks: list[Task]) -> None:
        self.status = status
        self.tasks = [t for t in tasks if t.input_path is not None]
        self.last_write: dict[int, float] = {}
        self.best: dict[int, float] = {}

    def report(self, index: int, fraction: float) -> None:
        if index >= len(self.tasks):
            return
        self.best[index] = max(self.best.get(index, 0.0), fraction)
        now = time.monotonic()
        if now - self.last_write.get(index, 0.0) >= 1.0 or fraction >= 1.0:
            self.last_write[index] = now
            self.status.update(self.tasks[index].id, progress=round(5 + 85 * self.best[index], 1))


def _without_work_dir(reason: str, task: Task) -> str:
    """A failure reason goes to clients: the job's temp dirs are named, not spelled."""
    return reason.replace(f"{task.work_dir.parent}/", "<work dir>/")


def _live(tasks: list[Task]) -> list[Task]:
    return [task for task in tasks if not task.finished]


def main() -> int:
    settings = Settings.from_env()
    log_client = connect_redis(settings, fail_fast=True)
    configure_logging(log_client, settings.host, "worker", settings.log_list_max,
                      settings.log_list_max_bytes)
    worker = Worker(settings, connect_redis(settings), connect_minio(settings))
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
