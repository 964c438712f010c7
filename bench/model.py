"""A Demucs model of the pretrained ``htdemucs``'s architecture and size, with random weights,
and a bag of four of them shaped like ``htdemucs_ft`` (one specialist per source).

No pretrained weights can be downloaded here, so the benchmarks build this model and save it
as a local Demucs repo folder (``<repo>/<name>.th``) that the real CLI loads with ``--repo``.
Its output is noise, but its time and memory are the real model's. It is generated on demand
and cached outside the repository (``BENCH_CACHE``, default ``~/.cache/demucs-service``).
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

NAME = "bench_htdemucs"
"""The model's name for ``-n`` (no '-': Demucs reads ``a-b.th`` as signature-checksum)."""
BAG_NAME = "bench_htdemucs_ft"
SOURCES = ("drums", "bass", "other", "vocals")


def cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "demucs-service")


def build_real_size_model(repo: Path | None = None, name: str = NAME) -> Path:
    """Write ``<repo>/<name>.th`` unless present; return the repo folder."""
    return build_htdemucs(repo or cache_dir() / "models", name, bottom_channels=512)


def build_real_size_bag(repo: Path | None = None, name: str = BAG_NAME) -> Path:
    """Write the bag ``<repo>/<name>.yaml`` of four real-size models unless present."""
    return build_specialist_bag(repo or cache_dir() / "models", name, bottom_channels=512)


def build_specialist_bag(repo: Path, name: str, **size: int) -> Path:
    """Write ``<repo>/<name>.yaml``, a bag like ``htdemucs_ft``: four htdemucs of ``size``
    (``<name>_<source>.th``, each with its own random weights), one-hot weights. Returns repo."""
    for seed, source in enumerate(SOURCES):
        build_htdemucs(repo, f"{name}_{source}", seed=seed, **size)
    weights = [[1.0 if i == j else 0.0 for j in range(len(SOURCES))] for i in range(len(SOURCES))]
    bag = {"models": [f"{name}_{source}" for source in SOURCES], "weights": weights}
    (repo / f"{name}.yaml").write_text(json.dumps(bag) + "\n")  # JSON is YAML
    return repo


def build_htdemucs(repo: Path, name: str, seed: int = 0, **size: int) -> Path:
    """Write ``<repo>/<name>.th``, an htdemucs of ``size`` (HTDemucs' keyword arguments, e.g.
    ``channels``) with random weights drawn from ``seed`` and the pretrained one's sources,
    rate and 7.8 s segment, unless present; return the repo folder. Small sizes make fast
    test models."""
    target = repo / f"{name}.th"
    if target.exists():
        return repo
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], samplerate=44100,
                     segment=Fraction(39, 5), **size)
    args, kwargs = model._init_args_kwargs  # recorded by Demucs' @capture_init
    package = {"klass": HTDemucs, "args": args, "kwargs": kwargs,
               "state": {k: v.half() for k, v in model.state_dict().items()}}
    repo.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    torch.save(package, partial)
    partial.rename(target)  # never leave a half-written model where the CLI finds it
    return repo


def parameter_count(repo: Path, name: str = NAME) -> int:
    from demucs.states import load_model

    model = load_model(repo / f"{name}.th")
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    folder = build_real_size_model()
    print(f"{folder / (NAME + '.th')}: {parameter_count(folder) / 1e6:.1f} M parameters")
