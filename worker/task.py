"""A taken job while a worker holds it, the kind of work it is, and how it ends: its
``Outcome`` (a value; ``worker.outcomes`` turns errors into outcomes and reacts to them)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from common.contract import Job
from common.formats import Encoding
from worker import errors
from worker.metrics import STAGE_SECONDS


class JobKind(Enum):
    """Decided once, when a job is taken; every step reads it."""

    SONG = "song"        # a song: separated whole, or split into chunk jobs when long
    CHUNK = "chunk"      # a WAV piece of a long song: its stems are stored for the join
    JOIN = "join"        # stitches a long song's chunk stems, then delivers the song's tracks
    INVALID = "invalid"  # a payload that is not a valid job: refused, never run

    @classmethod
    def of(cls, job: Job) -> JobKind:
        if job.chunk_of is not None:
            return cls.CHUNK
        if job.join_of is not None:
            return cls.JOIN
        return cls.SONG


class Settlement(Enum):
    """What the queue does with a settled job's payload (``JobQueue``, steps 6 and 8)."""

    ACK = "ack"                  # LREM from the processing list: the job is over
    DEAD_LETTER = "dead_letter"  # to toWorkers:dead with its reason: failed for good
    GIVE_BACK = "give_back"      # back to the taking end of the queue: it runs again


class State(Enum):
    DONE = "done"                  # every track stored
    CHUNK_STORED = "chunk_stored"  # a chunk's stems stored and counted
    SPLIT = "split"                # a long song handed over to its chunk jobs
    SKIPPED = "skipped"            # a chunk of a song that already failed: not run
    FAILED = "failed"              # failed for good
    RETRY = "retry"                # failed; runs again (the attempt counts)
    RETURNED = "returned"          # the worker stopped: runs again (the attempt does not count)
    DEFERRED = "deferred"          # storage unreachable: runs again (the attempt does not count)
    CANCELLED = "cancelled"        # a client cancelled it: ends without tracks
    ENDED = "ended"                # taken again after it ended (done, failed, cancelled): not run
    REDELIVERED = "redelivered"    # another worker holds it now: nothing is written here


_SETTLEMENT = {State.DONE: Settlement.ACK, State.CHUNK_STORED: Settlement.ACK,
               State.SPLIT: Settlement.ACK, State.SKIPPED: Settlement.ACK,
               State.FAILED: Settlement.DEAD_LETTER, State.RETRY: Settlement.GIVE_BACK,
               State.RETURNED: Settlement.GIVE_BACK, State.DEFERRED: Settlement.GIVE_BACK,
               State.CANCELLED: Settlement.ACK, State.ENDED: Settlement.ACK,
               State.REDELIVERED: Settlement.GIVE_BACK}
@dataclass(frozen=True)
class Outcome:
    state: State
    tracks: Mapping[str, str] = field(default_factory=dict)
    failure: errors.JobFailure | None = None
    note: str = ""  # why a job was skipped

    @property
    def settlement(self) -> Settlement:
        return _SETTLEMENT[self.state]

    @property
    def reason(self) -> str:
        return self.failure.reason if self.failure is not None else self.note

    @classmethod
    def done(cls, tracks: Mapping[str, str]) -> Outcome:
        return cls(State.DONE, tracks)

    @classmethod
    def of(cls, state: State, note: str = "") -> Outcome:
        """An outcome without tracks or failure (a ``SKIPPED`` one says why)."""
        return cls(state, note=note)

    @classmethod
    def of_failure(cls, failure: errors.JobFailure, attempt: int, max_attempts: int
                   ) -> Outcome:
        """Failed for good when no retry can mend it or the attempts are used up."""
        final = failure.permanent or attempt >= max_attempts
        return cls(State.FAILED if final else State.RETRY, failure=failure)


@dataclass
class Task:
    """One taken job. ``raw`` is the payload exactly as taken (what the queue removes)."""

    raw: bytes
    id: str
    job: Job | None  # None only for JobKind.INVALID
    kind: JobKind
    attempt: int
    work_dir: Path
    taken_at: float = field(default_factory=time.monotonic)
    songhash: str | None = None
    model: str = ""  # the subject's model and encoding: decided once (``Worker.decide``)
    encoding: Encoding = field(default_factory=Encoding)
    parent: Job | None = None  # a join's long song, read when the join starts
    input_path: Path | None = None
    stem_dir: Path | None = None
    outcome: Outcome | None = None  # set once, by Worker.settle
    ended_here: bool = False  # this worker's write ended the job (``StatusRecorder``)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def subject(self) -> Job:
        """The job whose tracks, status and callback this task serves: a join's long song,
        otherwise the job itself."""
        job = self.parent or self.job
        if job is None:
            raise RuntimeError(f"job {self.id} is not a valid job")
        return job

    @property
    def subject_id(self) -> str:
        return (self.parent.id if self.parent is not None else None) or self.id

    @property
    def settled(self) -> bool:
        return self.outcome is not None

    def elapsed_s(self) -> float:
        return time.monotonic() - self.taken_at


def live(tasks: list[Task]) -> list[Task]:
    """The tasks of a batch that have no outcome yet."""
    return [task for task in tasks if not task.settled]


@contextmanager
def timed(task: Task, stage: str) -> Iterator[None]:
    """Time a stage of ``task`` into its timings and the stage histogram."""
    started = time.monotonic()
    try:
        yield
    finally:
        task.timings[stage] = time.monotonic() - started
        STAGE_SECONDS.labels(stage).observe(task.timings[stage])
