"""Step 4 of a batch: one Demucs run for the batch's jobs of one model, with fallbacks.

A run is a request to the worker's warm Demucs child (``worker.demucs.warm``;
``DEMUCS_RUNNER=warm``, the default), or one ``python -m demucs`` call (``worker.demucs.cli``;
``DEMUCS_RUNNER=cli``): the same stems, the same ``DemucsRun`` back, so what follows reads
both alike.

Demucs loads only the model's own ``--repo`` folder on the worker's shelf
(``worker.demucs.weights``), with the model hub offline. A cancelled job's run is stopped: the
job ends at once (``ended``), and the others of the batch run again without it, each re-run
over fewer jobs than the run before, so a batch of N jobs runs Demucs at most N times however
its cancels fall; a CUDA failure runs the failed jobs again on the CPU; a failed batch runs
each job not yet separated alone, so one bad file fails only itself. A bag pruned to the
sources the jobs need (``worker.demucs.bags``) is written as a ``--repo`` of its own and run
as a model.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common.settings import Settings
from common.status import StatusStore
from worker import errors
from worker.cancel import CancelWatch, Interrupt
from worker.demucs.bags import PrunedBag
from worker.demucs.cli import DemucsOptions, allocator_library, failure_of, run_demucs
from worker.demucs.warm import WarmDemucs
from worker.demucs.weights import Shelf
from worker.task import Task

log = logging.getLogger("worker")

# Where a job that ended before its batch's Demucs runs did goes: the worker's settle.
Ended = Callable[[Task, Exception], None]


class Separator:
    def __init__(self, settings: Settings, status: StatusStore, device: str,
                 abort: threading.Event, cancels: CancelWatch, models: Shelf) -> None:
        self.settings = settings
        self.models = models  # each model's --repo folder, checked at start
        self.status = status
        self.device = device
        self.abort = abort  # set: kill Demucs now (the worker's grace is over)
        self.cancels = cancels
        self.preload = allocator_library(settings.demucs_allocator)  # ValueError: bad path
        if self.preload:
            log.info("Demucs on the CPU runs with %s preloaded (DEMUCS_ALLOCATOR)", self.preload)
        elif settings.demucs_allocator == "tcmalloc":
            log.info("tcmalloc not found: Demucs runs with the system's malloc (install "
                     "libtcmalloc-minimal4: a fifth less time per job)")
        self.warm = WarmDemucs(settings.warm_model_budget_mb) if uses_warm(settings) else None
        self.run_demucs = self.warm.run if self.warm is not None else run_demucs

    def close(self) -> None:
        """Stop the warm Demucs child, if any (the worker is leaving)."""
        if self.warm is not None:
            self.warm.close()

    def separate(self, tasks: list[Task], model: str, pruned: PrunedBag | None,
                 ended: Ended) -> dict[str, Exception]:
        """Run Demucs over ``tasks``; set each one's ``stem_dir``, and return what each job
        that got no stems must raise. A job cancelled while a run of others goes on is handed
        to ``ended`` at once, and is not returned."""
        failures = self.run(tasks, model, self.device, pruned, ended)
        ended_here = {i: f for i, f in failures.items()
                      if isinstance(f, (errors.Cancelled, errors.ShutdownRequested))}
        if any(isinstance(f, errors.ShutdownRequested) for f in ended_here.values()):
            return failures
        failures = {i: f for i, f in failures.items() if i not in ended_here}
        if self.device != "cpu" and errors.all_of(failures, errors.Code.CUDA):
            log.warning("Demucs failed on %s; retrying once on the CPU", self.device)
            failures = self.run([t for t in tasks if t.id in failures], model, "cpu", pruned,
                                ended)
        if failures and len(tasks) - len(ended_here) > 1 and \
                not errors.all_of(failures, errors.Code.MODEL_UNAVAILABLE):
            log.warning("batch of %d failed for %d jobs; running those alone", len(tasks),
                        len(failures))
            alone = [t for t in tasks if t.id in failures]
            failures = {}
            for task in alone:
                failures.update(self.run([task], model, self.device, pruned, ended))
        return {**failures, **ended_here}

    def run(self, tasks: list[Task], model: str, device: str, pruned: PrunedBag | None,
            ended: Ended) -> dict[str, Exception]:
        """Demucs over ``tasks`` on ``device``. A run stopped for a cancel hands the cancelled
        jobs to ``ended`` and runs again over the others only: each run is over fewer jobs
        than the one before, so this ends after ``len(tasks)`` runs at most."""
        failures: dict[str, Exception] = {}
        pending = tasks
        while pending:
            outcome = self.run_once(pending, model, device, pruned)
            again = [t for t in pending if isinstance(outcome.get(t.id), errors.Interrupted)]
            failures.update({i: f for i, f in outcome.items()
                             if not isinstance(f, errors.Interrupted)})
            if not again:
                break
            if len(again) == len(pending):  # stopped, yet no job of it ended: never loop
                failures.update({t.id: _stopped_for_nothing(len(pending)) for t in again})
                break
            for task in pending:
                if isinstance(outcome.get(task.id), errors.Cancelled):
                    ended(task, failures.pop(task.id))
            log.info("jobs %s: run again without the cancelled ones",
                     ",".join(t.id for t in again))
            pending = again
        return failures

    def run_once(self, tasks: list[Task], model: str, device: str,
                 pruned: PrunedBag | None) -> dict[str, Exception]:
        """One Demucs run (warm request or CLI call) over ``tasks`` on ``device``."""
        for task in tasks:
            self.status.update(task.subject_id, stage="separating", progress=5)
        out_dir = Path(tempfile.mkdtemp(prefix=f"demucs-{device}-", dir=tasks[0].work_dir.parent))
        repo = self.models.repo(model, out_dir.parent)
        if pruned is not None:
            model, repo = pruned.name, str(pruned.write(out_dir.with_name(out_dir.name + "-bag")))
            log.info("jobs %s: running %s", ",".join(t.id for t in tasks), pruned.description())
        options = DemucsOptions(model=model, device=device, threads=self.settings.threads,
                                shifts=self.settings.demucs_shifts,
                                segment=self.settings.demucs_segment, repo=repo,
                                preload=self.preload, command=self.settings.demucs_argv,
                                int24=any(t.subject.encoding(self.settings.mp3_bitrate_kbps)
                                          .bit_depth == 24 for t in tasks))
        inputs = [t.input_path for t in tasks if t.input_path is not None]
        progress = _ProgressWriter(self.status, tasks)
        run = self.run_demucs(options, out_dir, inputs, self.settings.job_timeout_s * len(tasks),
                              Interrupt(self.abort, self.cancels, tasks), progress.report)
        if run.aborted:
            shutil.rmtree(out_dir, ignore_errors=True)
            shutil.rmtree(out_dir.with_name(out_dir.name + "-bag"), ignore_errors=True)
            return {task.id: self._why_stopped(task) for task in tasks}
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

    def _why_stopped(self, task: Task) -> Exception:
        if self.cancels.is_cancelled(task):
            return errors.Cancelled()
        if self.abort.is_set():
            return errors.ShutdownRequested()
        return errors.Interrupted()


def uses_warm(settings: Settings) -> bool:
    """Whether Demucs runs in the warm child: ``DEMUCS_RUNNER=warm`` and no ``DEMUCS_COMMAND``
    (a command of its own, such as the tests' stand-in, is a CLI: it runs once per batch)."""
    return settings.demucs_runner == "warm" and not settings.demucs_command.strip()


def _stopped_for_nothing(jobs: int) -> errors.JobFailure:
    """A run stopped with none of its jobs cancelled and the worker not stopping: it is not
    run again (that could go on for ever); the jobs go back onto the queue."""
    return errors.demucs_failed(f"Demucs was stopped for a cancel, yet none of the {jobs} "
                                "jobs it ran was cancelled; not run again in this batch")


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
            self.status.update(self.tasks[index].subject_id,
                               progress=round(5 + 85 * self.best[index], 1))
