"""The worker's side of the warm Demucs (``worker.demucs.warm_child``): one long-lived child process
that separates each batch on request, so a job pays no Python, torch or model start-up.

``WarmDemucs.run`` has ``worker.demucs.cli.run_demucs``'s signature and returns the same
``DemucsRun``, so the separator, its fallbacks and ``failure_of`` read a warm run as a CLI
call: the child's stderr is the output tail, a failed request is exit code 1, a dead child is
its signal. The child is what the CLI is to the worker: its own process group, killed with
the worker (PR_SET_PDEATHSIG), the same environment (threads, hub offline, the allocator
preloaded on the CPU). A cancel, the worker's abort or a timeout kills its whole group, as it
would the CLI's; so do a child's death and a failure on a GPU (its CUDA state is not trusted
after). Whatever ended a child, the next batch starts a fresh one.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import subprocess  # argument lists only, never a shell  # nosec B404
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from worker.demucs.cli import (
    DemucsOptions,
    DemucsRun,
    Stop,
    build_command,
    child_env,
    die_with_parent,
    kill_group,
)
from worker.demucs.warm_child import OUTPUT_MARK

log = logging.getLogger(__name__)
_ROOT = str(Path(__file__).resolve().parents[2])  # where ``worker`` imports from
_ENDED = {"event": "ended"}  # the child's stdout closed: it is gone
_CHECK_S = 0.25  # how often a run checks its abort and timeout (the CLI's too)


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    environment: tuple[str, str]  # (LD_PRELOAD, threads): a request needing other starts anew
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    output: threading.Condition = field(default_factory=threading.Condition)
    output_mark: int = 0  # the last request whose output is all in ``tail``
    output_closed: bool = False

    def take_tail(self, request: int) -> str:
        """The output tail once the child's output of ``request`` is all read (2 s at most)."""
        with self.output:
            self.output.wait_for(lambda: self.output_mark >= request or self.output_closed,
                                 timeout=2.0)
            return "\n".join(self.tail)

    def clear_tail(self) -> None:
        with self.output:
            self.tail.clear()


class WarmDemucs:
    """One warm Demucs child, started on the first run and after any that ended it."""

    def __init__(self, budget_mb: float) -> None:
        self.budget_mb = budget_mb
        self.child: _Child | None = None
        self.requests = 0
        self.last_done: dict[str, Any] = {}  # the child's last ``done``: its memory figures
        self.lock = threading.Lock()  # one request at a time

    @property
    def pid(self) -> int | None:
        child = self.child
        return child.process.pid if child is not None and child.process.poll() is None else None

    def run(self, options: DemucsOptions, out_dir: Path, inputs: Sequence[Path],
            timeout_s: float, abort: Stop, on_progress: Callable[[int, float], None]
            ) -> DemucsRun:
        """Separate ``inputs`` into ``out_dir`` as ``python -m demucs`` would; kill the child on
        timeout or once ``abort`` is set (checked every 0.25 s)."""
        with self.lock:
            started = time.monotonic()
            log.info("running in the warm Demucs the equivalent of %s",
                     " ".join(build_command(options, out_dir, inputs)))
            try:
                child = self._child_for(options)
            except OSError as error:
                return DemucsRun(None, f"cannot start the warm Demucs: {error}", 0.0)
            self.requests += 1
            request = {"id": self.requests, "model": options.model, "repo": options.repo,
                       "device": options.device, "shifts": options.shifts,
                       "segment": options.segment, "int24": options.int24,
                       "out": str(out_dir), "tracks": [str(p) for p in inputs]}
            child.clear_tail()
            try:
                _send(child.process.stdin, request)
            except OSError:  # it died: its returncode says how, below
                pass
            run = self._follow(child, started, timeout_s, abort, on_progress)
            if run.returncode != 0 and (run.returncode is None or run.returncode < 0
                                        or options.device != "cpu"):
                self._stop(child)
            return run

    def close(self) -> None:
        """Stop the child: SIGKILL to its group (it holds nothing to save)."""
        with self.lock:
            if self.child is not None:
                self._stop(self.child)

    def _follow(self, child: _Child, started: float, timeout_s: float, abort: Stop,
                on_progress: Callable[[int, float], None]) -> DemucsRun:
        timed_out = aborted = False
        inputs_started = 0
        returncode: int | None = None
        while True:
            if time.monotonic() - started > timeout_s:
                timed_out = True
            elif abort.is_set():
                aborted = True
            if timed_out or aborted:
                kill_group(child.process)
                returncode = child.process.returncode
                break
            try:
                event = child.events.get(timeout=_CHECK_S)
            except queue.Empty:
                continue
            kind = event.get("event")
            if kind == "ended":
                child.process.wait()
                returncode = child.process.returncode
                break
            if event.get("id") != self.requests:  # ``ready``, or of a request before
                if kind == "ready":
                    log.info("warm Demucs (pid %d) imported torch and Demucs in %.1f s",
                             child.process.pid, event.get("import_s", 0.0))
                continue
            if kind == "track":
                inputs_started += 1
            elif kind == "progress":
                _report(on_progress, int(event["index"]), float(event["fraction"]))
            elif kind == "done":
                self.last_done = event
                returncode = 0 if event.get("ok") else 1
                log.info("warm Demucs (pid %d) %s in %.1f s; its RSS %s MB, models kept %s MB",
                         child.process.pid, "done" if returncode == 0 else "failed",
                         time.monotonic() - started, event.get("rss_mb"), event.get("kept_mb"))
                break
        return DemucsRun(returncode, child.take_tail(self.requests), time.monotonic() - started,
                         inputs_started=inputs_started, timed_out=timed_out, aborted=aborted)

    def _child_for(self, options: DemucsOptions) -> _Child:
        env = child_env(options)
        environment = (env.get("LD_PRELOAD", ""), env["OMP_NUM_THREADS"])
        child = self.child
        if child is not None and (child.process.poll() is not None
                                  or child.environment != environment):
            self._stop(child)
            child = None
        if child is None:
            child = self.child = _start(env, environment, self.budget_mb)
        return child

    def _stop(self, child: _Child) -> None:
        if child.process.poll() is None:
            kill_group(child.process)
        for stream in (child.process.stdin, child.process.stdout, child.process.stderr):
            if stream is not None:
                stream.close()
        if self.child is child:
            self.child = None


def _start(env: dict[str, str], environment: tuple[str, str], budget_mb: float) -> _Child:
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (_ROOT, env.get("PYTHONPATH"))))
    command = [sys.executable, "-u", "-m", "worker.demucs.warm_child",
               "--budget-mb", f"{budget_mb:g}", "--parent", str(os.getpid())]
    process = subprocess.Popen(command,  # a fixed list  # nosec B603
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, start_new_session=True,
                               preexec_fn=die_with_parent)
    child = _Child(process, environment)
    threading.Thread(target=_read_events, args=(child,), daemon=True,
                     name=f"warm-events-{process.pid}").start()
    threading.Thread(target=_read_output, args=(child,), daemon=True,
                     name=f"warm-output-{process.pid}").start()
    log.info("warm Demucs started (pid %d, models kept up to %g MB)", process.pid, budget_mb)
    return child


def _send(stream: IO[bytes] | None, request: dict[str, Any]) -> None:
    if stream is None:
        raise OSError("no stdin")
    stream.write(json.dumps(request).encode() + b"\n")
    stream.flush()


def _read_events(child: _Child) -> None:
    stream = child.process.stdout
    if stream is None:  # started with stdout=PIPE: never
        child.events.put(_ENDED)
        return
    try:
        for line in stream:
            try:
                child.events.put(json.loads(line))
            except ValueError:
                log.warning("warm Demucs: not an event: %r", line[:200])
    except (OSError, ValueError):  # closed by _stop
        pass
    child.events.put(_ENDED)


def _read_output(child: _Child) -> None:
    """Keep the tail of Demucs' own output (stderr, with its prints), for failure reasons; the
    child ends each request's output with a mark line."""
    stream = child.process.stderr
    if stream is None:  # started with stderr=PIPE: never
        return
    pending = ""
    try:
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            pending += chunk.decode("utf-8", "replace")
            *lines, pending = re.split(r"[\r\n]", pending)
            _take_lines(child, lines)
    except (OSError, ValueError):
        pass
    _take_lines(child, [pending])
    with child.output:
        child.output_closed = True
        child.output.notify_all()


def _take_lines(child: _Child, lines: list[str]) -> None:
    with child.output:
        for line in lines:
            if line.startswith(OUTPUT_MARK):
                child.output_mark = int(line[len(OUTPUT_MARK):])
                child.output.notify_all()
            elif line.strip():
                child.tail.append(line.rstrip())


def _report(on_progress: Callable[[int, float], None], index: int, fraction: float) -> None:
    try:
        on_progress(index, fraction)
    except Exception:
        log.debug("progress callback failed", exc_info=True)
