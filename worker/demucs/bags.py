"""The sources a job needs (``sources_for``), and bags of models pruned to them: the same math
on fewer sub-models.

A Demucs bag (``<name>.yaml``: ``models``, a list of signatures; ``weights``, one row of
per-source weights per model; optional ``segment``) runs every sub-model whatever its weights
(``demucs.apply.apply_model``), then divides each source by the sum of its weights. A sub-model
whose weights are zero for every needed source adds exactly zero to those sources and to their
sums, so the bag of the other sub-models gives the needed sources bit for bit (with
``--shifts 0``, the worker's default; with shifts each model draws its own random offsets).
``htdemucs_ft`` is four specialists with one-hot weights: a vocals-only job runs one of them.
Sources that no kept model weighs come out as 0/0 and are never read.

The pruned bag reaches the CLI as a ``--repo`` folder holding ``<name>.yaml`` (written as JSON,
which YAML reads) and one symlink per kept sub-model to the very file Demucs would load: the
model's files on the worker's shelf (``worker.demucs.weights``), checked against their SHA-256
when the worker started (Demucs' ``LocalRepo`` naming; the link keeps the name, so Demucs' own
checksum is checked too).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.contract import DEMUCS_STEMS

log = logging.getLogger(__name__)

BAG_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,100}")
SIGNATURE_RE = re.compile(r"[A-Za-z0-9_]{1,100}")  # Demucs reads '-' as signature-checksum
MODEL_FILE_RE = re.compile(r"[A-Za-z0-9_]{1,100}(?:-[0-9a-f]{1,64})?\.th")


SOURCES: dict[str, tuple[str, ...]] = {
    "vocals": ("vocals",), "acapella": ("vocals",), "instrumental": ("vocals",),
    "drums": ("drums",), "bass": ("bass",), "other": ("other",), "full": DEMUCS_STEMS,
    "original": (),
}
"""The Demucs sources each track is made from."""


def sources_for(tracks: Iterable[str]) -> tuple[str, ...]:
    """The Demucs sources that ``tracks`` need, in Demucs' order."""
    needed = {source for track in tracks for source in SOURCES[track]}
    return tuple(s for s in DEMUCS_STEMS if s in needed)


@dataclass(frozen=True)
class Bag:
    """A bag of models whose sub-model files are all at hand."""

    name: str
    signatures: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...]  # one row per model, in DEMUCS_STEMS order
    segment: float | None
    files: tuple[Path, ...]  # the model file of each signature


@dataclass(frozen=True)
class PrunedBag:
    """The sub-models of ``bag`` that a set of sources needs, under a name of its own."""

    bag: Bag
    sources: tuple[str, ...]
    kept: tuple[int, ...]  # indexes into bag.signatures

    @property
    def name(self) -> str:
        """The pruned bag's ``-n`` name, e.g. ``htdemucs_ft_only_vocals``."""
        return f"{self.bag.name}_only_{'_'.join(self.sources)}"

    def description(self) -> str:
        return (f"{len(self.kept)} of {len(self.bag.signatures)} models of bag {self.bag.name} "
                f"for {'+'.join(self.sources)}")

    def write(self, folder: Path) -> Path:
        """Write the pruned bag as a Demucs ``--repo`` folder; return the folder."""
        folder.mkdir(parents=True, exist_ok=True)
        bag: dict[str, object] = {
            "models": [self.bag.signatures[i] for i in self.kept],
            "weights": [list(self.bag.weights[i]) for i in self.kept],
        }
        if self.bag.segment is not None:
            bag["segment"] = self.bag.segment
        (folder / f"{self.name}.yaml").write_text(json.dumps(bag, indent=1) + "\n")
        for index in self.kept:
            source = self.bag.files[index]
            (folder / source.name).symlink_to(source.resolve())
        return folder


def prune(bag: Bag, sources: Sequence[str]) -> PrunedBag | None:
    """The sub-models weighing any of ``sources``; None when that is all of them."""
    wanted = [DEMUCS_STEMS.index(s) for s in DEMUCS_STEMS if s in sources]
    kept = tuple(i for i, row in enumerate(bag.weights) if any(row[k] != 0 for k in wanted))
    if not wanted or not kept or len(kept) == len(bag.signatures):
        return None
    return PrunedBag(bag, tuple(DEMUCS_STEMS[k] for k in wanted), kept)


def pruned_bag(model: str, repo: str, sources: Sequence[str]) -> PrunedBag | None:
    """The pruned bag to run for ``sources`` of ``model`` (in the ``--repo`` folder ``repo``),
    or None to run ``model`` as named (a single model, or a bag every model of which is
    needed)."""
    try:
        bag = load_bag(model, repo)
    except (OSError, ValueError) as error:
        log.warning("bag %s not pruned: %s", model, error)
        return None
    return prune(bag, sources) if bag is not None else None


def load_bag(model: str, repo: str) -> Bag | None:
    """``model`` as a bag from the ``--repo`` folder ``repo``; None if it is not a bag there
    or a sub-model's file is not at hand."""
    if not BAG_NAME_RE.fullmatch(model):
        return None
    folder = Path(repo)
    files = {model_signature(path.name): path for path in folder.glob("*.th")
             if MODEL_FILE_RE.fullmatch(path.name)}
    yaml_path = folder / f"{model}.yaml"
    if not yaml_path.is_file():
        return None
    spec = read_bag(yaml_path)
    signatures = bag_signatures(yaml_path, spec)
    weights = spec.get("weights") or [[1.0] * len(DEMUCS_STEMS)] * len(signatures)
    rows = tuple(tuple(float(w) for w in row) for row in weights)
    if len(rows) != len(signatures) or any(len(row) != len(DEMUCS_STEMS) for row in rows):
        raise ValueError(f"{yaml_path}: weights are not one row of {len(DEMUCS_STEMS)} "
                         "sources per model")
    missing = [sig for sig in signatures if sig not in files or not files[sig].is_file()]
    if missing:
        log.info("bag %s not pruned: files of %s are not at hand", model, missing)
        return None
    segment = spec.get("segment")
    return Bag(model, signatures, rows, float(segment) if segment is not None else None,
               tuple(files[sig] for sig in signatures))


def read_bag(yaml_path: Path) -> dict[str, Any]:
    """A bag's yaml (``models``, optional ``weights`` and ``segment``)."""
    import yaml  # a Demucs dependency: present wherever the worker runs the CLI

    spec = yaml.safe_load(yaml_path.read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("models"), list):
        raise ValueError(f"{yaml_path}: not a bag of models (no 'models' list)")
    return spec


def bag_signatures(yaml_path: Path, spec: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The signatures of a bag's sub-models; ValueError for one that is not a signature."""
    signatures = tuple(str(sig) for sig in (spec or read_bag(yaml_path))["models"])
    bad = [sig for sig in signatures if not SIGNATURE_RE.fullmatch(sig)]
    if bad:
        raise ValueError(f"{yaml_path}: invalid model signatures {bad}")
    return signatures


def model_signature(file_name: str) -> str:
    """The signature Demucs reads in a model file's name: ``a1b2-c3d4.th`` -> ``a1b2``."""
    return file_name.removesuffix(".th").split("-", 1)[0]
