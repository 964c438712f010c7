"""A taken job while a worker holds it, and the kind of work it is."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from separation.contract import Job
from worker.metrics import STAGE_SECONDS

if TYPE_CHECKING:
    from worker.outcomes import Outcome


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
