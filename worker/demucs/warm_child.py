"""The warm Demucs: a long-lived child of the worker that imports torch and Demucs once, keeps
the models it loaded, and separates each batch on request with Demucs' own code.

Run as ``python -m worker.demucs.warm_child --budget-mb N --parent PID`` by
``worker.demucs.warm`` only; it imports nothing of the worker but this module. Protocol, one
JSON object a line:

- requests on stdin: ``{"id", "model", "repo", "device", "shifts", "segment", "int24", "out",
  "tracks"}`` (``out``: the CLI's ``-o``; ``tracks``: input paths);
- events on the stdout it was started with: ``ready`` once imported, then per request
  ``track`` (index), ``progress`` (index, fraction) and one ``done`` (``ok``, ``rss_mb``,
  ``kept_mb``). Anything Demucs prints (to stdout or stderr) goes to stderr, as the CLI's
  output would, so the worker reads the same lines for its failure reasons.

Each request takes ``demucs.separate.main``'s path: ``demucs.api.Separator`` (audio read,
normalisation, ``apply_model`` with the same segment, overlap, shifts and split), the CLI's
checks and messages, and ``save_audio`` with the CLI's default clip mode and bit depth, into
``<out>/<model>/<track>/<stem>.wav``. Only the model comes from a cache: sub-models of a
``--repo`` folder are kept by the file they were read from (resolved path, size, mtime; the
worker's shelf checked the files at start), least recently used first out once the kept
models weigh more than the budget. ``demucs_unittest`` (random weights, drawn anew by each
CLI process: torch seeds itself at random) is drawn once per child and kept.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import resource
import sys
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

SAVE_KWARGS = {"bitrate": 320, "preset": 2, "clip": "rescale", "as_float": False}
"""``demucs.separate``'s defaults for the flags the worker never passes."""
OVERLAP = 0.25  # the CLI's --overlap default
FILENAME = "{track}/{stem}.{ext}"  # the worker's --filename
PROGRESS_EVERY_S = 0.25
OUTPUT_MARK = "@warm-output-of "
"""Ends a request's output on stderr (with its id), before its ``done`` event."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the worker's warm Demucs (worker.demucs.warm)")
    parser.add_argument("--budget-mb", type=float, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    if os.getppid() != args.parent:  # the worker died before PR_SET_PDEATHSIG took hold
        return 1
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Demucs' own prints join its stderr, as in the CLI's merged output
    started = time.monotonic()
    child = WarmChild(args.budget_mb, events)
    child.send("ready", pid=os.getpid(), import_s=round(time.monotonic() - started, 3))
    for line in sys.stdin:
        if line.strip():
            child.handle(json.loads(line))
    return 0


class ModelCache:
    """Models by key, least recently used first out beyond ``budget_mb``."""

    def __init__(self, budget_mb: float) -> None:
        self.budget_bytes = budget_mb * 1024 * 1024
        self.models: OrderedDict[tuple[Any, ...], tuple[Any, int, Any]] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> Any | None:
        entry = self.models.get(key)
        if entry is None:
            return None
        self.models.move_to_end(key)
        model, _, segment = entry
        if segment is not None:  # a bag's yaml may have overridden it, in place
            model.segment = segment
        return model

    def put(self, key: tuple[Any, ...], model: Any) -> None:
        size = sum(t.numel() * t.element_size()
                   for t in (*model.parameters(), *model.buffers()))
        self.models[key] = (model, size, getattr(model, "segment", None))

    @property
    def kept_bytes(self) -> int:
        return sum(size for _, size, _ in self.models.values())

    def trim(self) -> None:
        """Drop the least recently used models until the rest fit the budget."""
        while self.models and self.kept_bytes > self.budget_bytes:
            self.models.popitem(last=False)
        gc.collect()
        _release_free_memory()


class WarmChild:
    def __init__(self, budget_mb: float, events: IO[str]) -> None:
        import demucs.api  # noqa: F401 - imported once, here, for every request after

        self.cache = ModelCache(budget_mb)
        self.events = events
        self.request_id: int | None = None
        self.track = 0  # index of the input being separated

    def send(self, event: str, **fields: Any) -> None:
        self.events.write(json.dumps({"event": event, "id": self.request_id, **fields}) + "\n")

    def handle(self, request: dict[str, Any]) -> None:
        self.request_id = request["id"]
        try:
            self.separate(request)
            ok = True
        except SystemExit:  # demucs.utils.fatal: its message is on stderr already
            ok = False
        except Exception:  # noqa: BLE001 - reported as the CLI would: traceback on stderr
            traceback.print_exc()
            ok = False
        finally:
            self.cache.trim()
            sys.stdout.flush()
            print(f"\n{OUTPUT_MARK}{self.request_id}", file=sys.stderr, flush=True)
        self.send("done", ok=ok, rss_mb=_rss_mb(), peak_rss_mb=_peak_rss_mb(),
                  kept_mb=round(self.cache.kept_bytes / 2**20, 1))

    def separate(self, request: dict[str, Any]) -> None:
        """``demucs.separate.main`` for the worker's flags, with the model from the cache."""
        from demucs.api import save_audio
        from demucs.apply import BagOfModels
        from demucs.htdemucs import HTDemucs
        from demucs.pretrained import ModelLoadingError
        from demucs.utils import fatal

        name = request["model"]
        try:
            model = self.load(name, request.get("repo"))
        except ModelLoadingError as error:
            fatal(error.args[0])
        separator = _separator_class()(model, device=request["device"],
                                       shifts=request["shifts"], split=True, overlap=OVERLAP,
                                       segment=request.get("segment"), jobs=0, progress=False,
                                       callback=self.progress_callback(
                                           model, request.get("segment"), request["shifts"]))
        segment = request.get("segment")
        max_allowed_segment = float("inf")
        if isinstance(model, HTDemucs):
            max_allowed_segment = float(model.segment)
        elif isinstance(model, BagOfModels):
            max_allowed_segment = model.max_allowed_segment
        if segment is not None and segment > max_allowed_segment:
            fatal("Cannot use a Transformer model with a longer segment "
                  f"than it was trained for. Maximum segment is: {max_allowed_segment}")
        if isinstance(model, BagOfModels):
            print(f"Selected model is a bag of {len(model.models)} models. "
                  "You will see that many progress bars per track.")
        out = Path(request["out"]) / name.replace("hf://", "").replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        print(f"Separated tracks will be stored in {out.resolve()}")
        kwargs = {**SAVE_KWARGS, "samplerate": separator.samplerate,
                  "bits_per_sample": 24 if request.get("int24") else 16}
        for index, path in enumerate(request["tracks"]):
            track = Path(path)
            if not track.exists():
                print(f"File {track} does not exist. If the path contains spaces, "
                      'please try again after surrounding the entire path with quotes "".',
                      file=sys.stderr)
                continue
            print(f"Separating track {track}")
            self.track = index
            self.send("track", index=index)
            _, res = separator.separate_audio_file(track)
            for stem_name, source in res.items():
                stem = out / FILENAME.format(track=track.name.rsplit(".", 1)[0],
                                             trackext=track.name.rsplit(".", 1)[-1],
                                             stem=stem_name, ext="wav")
                stem.parent.mkdir(parents=True, exist_ok=True)
                save_audio(source, str(stem), **kwargs)
            self.send("progress", index=index, fraction=1.0)

    def load(self, name: str, repo: str | None) -> Any:
        """``demucs.pretrained.get_model(name, repo)``, the sub-models from the cache."""
        from demucs.pretrained import demucs_unittest, get_model
        from demucs.repo import AnyModelRepo, BagOnlyRepo
        from demucs.utils import fatal

        if name == "demucs_unittest":
            model = self.cache.get(("demucs_unittest",))
            if model is None:  # random weights, drawn once per child (per call in the CLI)
                model = demucs_unittest()
                self.cache.put(("demucs_unittest",), model)
            return model
        if name.startswith("hf://") or repo is None:
            return get_model(name=name, repo=None)  # the hub (offline for the worker)
        folder = Path(repo)
        if not folder.is_dir():
            fatal(f"{folder} must exist and be a directory.")
        model_repo = _cached_repo_class()(folder, self.cache)
        model = AnyModelRepo(model_repo, BagOnlyRepo(folder, model_repo)).get_model(name)
        model.eval()
        return model

    def progress_callback(self, model: Any, segment: int | None, shifts: int) -> Any:
        """``apply_model``'s callback: the fraction of the current track done, from the
        segments done of those ``apply_model`` will run (one pass per model and shift)."""
        first = model.models[0] if hasattr(model, "models") else model
        stride = int((1 - OVERLAP) * int(model.samplerate * float(segment or first.segment)))
        ends = [0, 0.0]  # segments done, time of the last event sent

        def report(info: dict[str, Any]) -> None:
            if info.get("state") != "end":
                return
            if info["model_idx_in_bag"] == 0 and info["shift_idx"] == 0 and \
                    info["segment_offset"] == 0:
                ends[0] = 0  # a new track
            ends[0] += 1
            now = time.monotonic()
            if now - ends[1] < PROGRESS_EVERY_S:
                return
            ends[1] = now
            segments = math.ceil(info["audio_length"] / max(1, stride))
            total = segments * info["models"] * max(1, shifts)
            self.send("progress", index=self.track,
                      fraction=round(min(0.99, ends[0] / max(1, total)), 4))

        return report


def _separator_class() -> type:
    """``demucs.api.Separator`` given a model already loaded (its ``_load_model`` reads one)."""
    from demucs.api import Separator

    class Loaded(Separator):  # type: ignore[misc]
        def __init__(self, model: Any, **params: Any) -> None:
            self._preloaded = model
            super().__init__(model="", **params)

        def _load_model(self) -> None:
            self._model = self._preloaded
            self._audio_channels = self._model.audio_channels
            self._samplerate = self._model.samplerate

    return Loaded


def _cached_repo_class() -> type:
    """Demucs' ``LocalRepo`` whose models come from the cache when their file did before."""
    from demucs.repo import LocalRepo

    class CachedRepo(LocalRepo):  # type: ignore[misc]
        def __init__(self, root: Path, cache: ModelCache) -> None:
            self.cache = cache
            super().__init__(root)

        def get_model(self, sig: str) -> Any:
            file = self._models.get(sig)
            if file is None:
                return super().get_model(sig)  # Demucs' own ModelLoadingError
            stat = file.stat()
            key = ("file", str(file.resolve()), stat.st_size, stat.st_mtime_ns)
            model = self.cache.get(key)
            if model is None:
                model = super().get_model(sig)  # checksum in the name checked, as the CLI does
                self.cache.put(key, model)
            return model

    return CachedRepo


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _release_free_memory() -> None:
    """Hand freed heap back to the kernel between jobs (tcmalloc's or glibc's malloc)."""
    libc = ctypes.CDLL(None)
    for function, args in (("MallocExtension_ReleaseFreeMemory", ()), ("malloc_trim", (0,))):
        if hasattr(libc, function):
            getattr(libc, function)(*args)


if __name__ == "__main__":
    sys.exit(main())
