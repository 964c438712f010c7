"""The Demucs command line: build it, run it in its own process group, parse its progress.

Only flags that both Demucs 4.1.0 and the production image's Demucs (commit b9ab48c) accept
are used. Several input files go to one call, so the model loads once for a batch.

On the CPU, Demucs runs with tcmalloc preloaded where the system has it (``DEMUCS_ALLOCATOR``):
glibc's malloc hands Demucs' large, short-lived tensors back and forth to the kernel (a fifth
of a CPU run's time in page faults) and keeps fragments of them; tcmalloc reuses them. The
same stems bit for bit in about a fifth less time, at a peak 7 % lower on a 1-minute song and
2 % higher on a 5-minute one (docs/benchmarks.md). On CUDA it saved no time and raised the
host's peak RSS, so GPU runs keep the system's malloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import signal
import subprocess  # argument lists only, never a shell  # nosec B404
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from worker import errors

log = logging.getLogger(__name__)

_TQDM_RE = re.compile(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?) \[")
_TRACK_RE = re.compile(r"Separating track (.+)")
_OFFLINE_HINTS = ("URLError", "Name or service not known", "Temporary failure in name resolution",
                  "Network is unreachable", "Connection refused", "LocalEntryNotFoundError",
                  "Could not find pre-trained model", "is neither a single pre-trained model",
                  "No such file or directory: '", "ModelLoadingError", "HTTP Error 404")
_CUDA_HINTS = ("CUDA", "cuda", "cuDNN", "NVIDIA")

try:  # a Demucs child must not outlive a SIGKILLed worker
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


def die_with_parent() -> None:
    """``preexec_fn`` of a Demucs child: SIGKILL when the worker (the forking thread) dies."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class DemucsOptions:
    """What a CLI call needs besides its files."""

    model: str
    device: str
    threads: int
    shifts: int = 0
    segment: int | None = None
    repo: str | None = None
    int24: bool = False  # 24-bit stems (``--int24``) for jobs that want 24-bit tracks
    preload: str | None = None  # the malloc library Demucs runs with (``allocator_library``)
    command: tuple[str, ...] = (sys.executable, "-u", "-m", "demucs")  # DEMUCS_COMMAND


@dataclass(frozen=True)
class DemucsRun:
    """How a CLI call ended. ``output_tail`` holds its last lines, for error reasons."""

    returncode: int | None
    output_tail: str
    elapsed_s: float
    inputs_started: int = 0
    timed_out: bool = False
    aborted: bool = False


def build_command(options: DemucsOptions, out_dir: Path, inputs: Sequence[Path]) -> list[str]:
    """The argument list of one ``python -m demucs`` call (never a shell string)."""
    command = [*options.command, "-n", options.model, "-d", options.device,
               "--shifts", str(options.shifts), "-o", str(out_dir),
               "--filename", "{track}/{stem}.{ext}"]
    if options.repo:
        command += ["--repo", options.repo]
    if options.segment is not None:
        command += ["--segment", str(options.segment)]
    if options.int24:
        command.append("--int24")
    return [*command, "--", *(str(path) for path in inputs)]


def child_env(options: DemucsOptions) -> dict[str, str]:
    """The worker's environment with CPU threads set (the image pins OMP_NUM_THREADS=1) and,
    on the CPU, ``options.preload`` preloaded, unless the worker's own environment names an
    ``LD_PRELOAD`` already (an operator's choice is kept as it is)."""
    env = dict(os.environ)
    threads = str(max(1, options.threads))
    # the hub offline: Demucs never resolves a name there (and runs the code its files name)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1")
    if options.preload and options.device == "cpu" and not env.get("LD_PRELOAD"):
        env["LD_PRELOAD"] = options.preload
        # tcmalloc reports allocations over 1 GiB on stderr, which would bury Demucs' own last
        # lines (the failure reasons) under a long song's buffers
        env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    return env


TCMALLOC_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
"""gperftools' libraries (Debian/Ubuntu ``libtcmalloc-minimal4``), the lighter first."""


def allocator_library(setting: str) -> str | None:
    """What ``DEMUCS_ALLOCATOR`` preloads into Demucs: for ``tcmalloc``, gperftools' library
    where the dynamic linker knows one (None, the system's malloc, where not); for
    ``system``, None; else the path given, which must exist (ValueError)."""
    if setting == "system":
        return None
    if setting != "tcmalloc":
        if not Path(setting).is_file():
            raise ValueError(f"DEMUCS_ALLOCATOR={setting}: no such file")
        return setting
    for name in TCMALLOC_LIBRARIES:
        found = ctypes.util.find_library(name)  # a soname such as libtcmalloc_minimal.so.4
        if found:
            return found
    return None


def parse_progress(segment: str) -> float | None:
    """The fraction done in one tqdm update such as ``12.0/30.0 [00:01<00:02, ...]``."""
    match = _TQDM_RE.search(segment)
    if not match:
        return None
    done, total = float(match.group(1)), float(match.group(2))
    return min(1.0, done / total) if total > 0 else None


def parse_track(segment: str) -> str | None:
    """The input path of a ``Separating track <path>`` line."""
    match = _TRACK_RE.fullmatch(segment.strip())
    return match.group(1) if match else None


class _OutputReader(threading.Thread):
    """Reads Demucs' merged stdout/stderr, keeps its tail and reports progress per input."""

    def __init__(self, stream: object, inputs: Sequence[Path],
                 on_progress: Callable[[int, float], None]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.index_of = {str(path): i for i, path in enumerate(inputs)}
        self.on_progress = on_progress
        self.tail: deque[str] = deque(maxlen=40)
        self.current = 0
        self.started = 0

    def run(self) -> None:
        pending = ""
        fd = self.stream.fileno()  # type: ignore[attr-defined]
        while chunk := os.read(fd, 65536):
            pending += chunk.decode("utf-8", "replace")
            *segments, pending = re.split(r"[\r\n]", pending)
            for segment in segments:
                self._handle(segment)
        if pending:
            self._handle(pending)

    def _handle(self, segment: str) -> None:
        if not segment.strip():
            return
        track = parse_track(segment)
        if track is not None:
            self.current = self.index_of.get(track, self.current)
            self.started += 1
        fraction = parse_progress(segment)
        if fraction is None:
            self.tail.append(segment.rstrip())
            return
        try:
            self.on_progress(self.current, fraction)
        except Exception:
            log.debug("progress callback failed", exc_info=True)


class Stop(Protocol):
    """What ``run_demucs`` checks to kill Demucs: a ``threading.Event`` or the like."""

    def is_set(self) -> bool: ...


def run_demucs(options: DemucsOptions, out_dir: Path, inputs: Sequence[Path], timeout_s: float,
               abort: Stop, on_progress: Callable[[int, float], None]) -> DemucsRun:
    """Run one CLI call; kill its whole process group on timeout or once ``abort`` is set
    (checked every 0.25 s)."""
    command = build_command(options, out_dir, inputs)
    log.info("running %s", " ".join(command))
    started = time.monotonic()
    process = subprocess.Popen(command,  # a list built by build_command  # nosec B603
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=child_env(options),
                               start_new_session=True, preexec_fn=die_with_parent)
    reader = _OutputReader(process.stdout, inputs, on_progress)
    reader.start()
    timed_out = aborted = False
    while process.poll() is None:
        if time.monotonic() - started > timeout_s:
            timed_out = True
        elif abort.is_set():
            aborted = True
        else:
            try:
                process.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                pass
            continue
        kill_group(process)
    reader.join(timeout=5)
    if process.stdout is not None:
        process.stdout.close()
    return DemucsRun(process.returncode, "\n".join(reader.tail), time.monotonic() - started,
                     inputs_started=reader.started, timed_out=timed_out, aborted=aborted)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child started with ``start_new_session`` and all its group; reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def looks_offline(output_tail: str) -> bool:
    """Demucs could not get the model's weights (no network, unknown name, missing repo file)."""
    return any(hint in output_tail for hint in _OFFLINE_HINTS)


def failure_of(run: DemucsRun, options: DemucsOptions, timeout_s: float,
               private_dirs: Sequence[Path] = ()) -> errors.JobFailure:
    """Why a CLI call gave an input no stems, as a reason a person can act on.

    ``private_dirs`` (the job's temp dirs) are named ``<work dir>`` in the reason: a reason
    goes to clients, a path of this host must not.
    """
    tail = run.output_tail
    for folder in private_dirs:
        tail = tail.replace(str(folder), "<work dir>")
    last = tail.strip().splitlines()[-1:] or ["no output"]
    if run.timed_out:
        return errors.demucs_timeout(
            f"Demucs ran past JOB_TIMEOUT_S={timeout_s:g} s and was killed")
    decode_errors = [line for line in tail.splitlines() if "LoadAudioError" in line]
    if decode_errors:
        detail = decode_errors[-1].split("LoadAudioError:", 1)[-1].strip()
        return errors.bad_input(f"the input is not audio Demucs can decode, whatever its name "
                                f"or header says: {detail}")
    if looks_offline(tail):
        where = f"repo {options.repo}" if options.repo else "the model hub (no network?)"
        return errors.model_unavailable(
            f"weights of model '{options.model}' could not be had from {where}: {last[0]}")
    if options.device != "cpu" and any(hint in tail for hint in _CUDA_HINTS):
        return errors.cuda_failed(f"Demucs failed on {options.device}: {last[0]}")
    if run.returncode is not None and run.returncode < 0:
        name = signal.Signals(-run.returncode).name
        hint = " (out of memory? raise the memory limit or lower MAX_DURATION_S)" \
            if name == "SIGKILL" else ""
        return errors.demucs_failed(f"Demucs was killed by {name}{hint}")
    return errors.demucs_failed(f"Demucs exited with code {run.returncode}: {last[0]}")


def cuda_present() -> bool:
    """Whether an NVIDIA GPU is visible, without importing torch into the worker."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()
