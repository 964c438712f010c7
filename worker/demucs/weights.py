"""The registry's weights on this worker: checked at start, and the only files Demucs may load.

When a worker starts, every model of the registry (``common.models``) is put on its
*shelf*: each listed file is found (in the model's ``folder``, else torch hub's cache) and its
SHA-256 compared with the registry's. A batch then gets, in its temp dir, a folder per model
holding a symlink to each checked file and the bag's yaml (the registry's, or Demucs' own for
a pretrained bag), and Demucs always runs with ``--repo <that folder>``: it loads what was
checked and nothing else, and
never asks the model hub (which it would for a name without ``--repo``, running the code the
hub's files name). A missing file or one whose hash differs stops the worker at start, with
the reason; nothing is ever downloaded while a job runs.

Downloading is one explicit step, apart from any worker: ``make models`` (``python -m
worker.demucs.weights fetch``) fetches each listed file that is missing from its ``url``, once, and
keeps it only if its SHA-256 is the registry's. ``python -m worker.demucs.weights entry NAME
--folder DIR`` prints the registry entry of a model of one's own, with its files' hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common.contract import DEMUCS_STEMS, MODEL_RE, sha256_file
from common.egress import EgressPolicy, RefusedTarget, check_target
from common.models import (
    BUILTIN_SOURCE,
    FILE_NAME_RE,
    Model,
    Registry,
    WeightFile,
    registry_json,
    weights_digest,
)
from common.settings import Settings
from worker.demucs.bags import MODEL_FILE_RE, bag_signatures, model_signature

log = logging.getLogger(__name__)
DOWNLOAD_TIMEOUT_S = 60.0
MAX_WEIGHT_BYTES = 1 << 30
"""A weight file's most bytes (the pretrained ones are 80-170 MB): a host that keeps sending
is cut off before it fills the disk, whatever the hash says at the end."""
PUBLIC_ONLY = EgressPolicy.parse(False, None)


class WeightsError(ValueError):
    """A model's weights are missing or not the registry's: the worker does not start."""


@dataclass(frozen=True)
class Checked:
    """A model whose files were checked: what its ``--repo`` folder links to."""

    name: str
    links: tuple[tuple[str, Path], ...]  # (file name, the checked file)
    bag_yaml: Path | None  # Demucs' own yaml of a pretrained bag, copied beside the links
    weights_sha256: str

    def lay_out(self, folder: Path) -> Path:
        """The model's ``--repo`` folder: the checked files and nothing else."""
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for name, target in self.links:
                (folder / name).symlink_to(target)
            if self.bag_yaml is not None:
                shutil.copyfile(self.bag_yaml, folder / f"{self.name}.yaml")
        return folder


class Shelf:
    """The registry's models on this worker, each checked when it starts (WeightsError: the
    worker does not start); ``repo`` lays out a model's ``--repo`` folder for a batch."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.checked = {model.name: check(model) for model in registry.models}
        for model in registry.models:
            log.info("model %s: %s, weights SHA-256 %s", model.name,
                     "built into Demucs" if model.builtin else "files checked",
                     self.weights_sha256(model.name))

    def refusal(self, name: str | None) -> str | None:
        """Why a job naming model ``name`` cannot run here; None when it can."""
        try:
            self.registry.resolve(name)
        except ValueError as error:
            return str(error).replace("this service runs", "this worker has installed")
        return None

    def repo(self, name: str, parent: Path) -> str | None:
        """The ``--repo`` folder of a model under ``parent`` (a batch's temp dir, which goes
        with the batch); None for Demucs' built-in test model."""
        checked = self.checked[name]
        return None if checked is None else str(checked.lay_out(parent / "models" / name))

    def weights_sha256(self, name: str) -> str:
        checked = self.checked[name]
        return BUILTIN_SOURCE if checked is None else checked.weights_sha256


def check(model: Model) -> Checked | None:
    """Check every file of ``model`` (None: the built-in model, which has none)."""
    if model.builtin:
        return None
    home = home_of(model)
    links, hashed = [], []
    for weight in _files(model):
        path = home / weight.name
        hashed.append((weight.name, check_file(model.name, path, weight.sha256)))
        links.append((weight.name, path.resolve()))
    names = [name for name, _ in hashed]
    bag_yaml = home / f"{model.name}.yaml" if f"{model.name}.yaml" in names else None
    demucs_bag = None
    if bag_yaml is None and not any(n.endswith(".th") and model_signature(n) == model.name
                                    for n in names):
        demucs_bag = bag_yaml = demucs_remote() / f"{model.name}.yaml"  # a pretrained bag
        if not bag_yaml.is_file():
            raise WeightsError(f"model {model.name}: its files hold neither {model.name}.th "
                               f"nor the bag {model.name}.yaml, and Demucs has no such bag")
    if bag_yaml is not None:
        signatures = {model_signature(n) for n in names if n.endswith(".th")}
        missing = [sig for sig in bag_signatures(bag_yaml) if sig not in signatures]
        if missing:
            raise WeightsError(f"model {model.name}: its bag needs {', '.join(missing)}, "
                               "which its files do not hold")
    return Checked(model.name, tuple(links), demucs_bag, weights_digest(hashed))


def check_file(model: str, path: Path, expected: str | None) -> str:
    """The SHA-256 of a model's file; WeightsError when it is missing or not ``expected``."""
    if not path.is_file():
        raise WeightsError(f"model {model}: weight file {path} is missing: fetch it first "
                           "(make models, or the models init container; docs/models.md)")
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise WeightsError(f"model {model}: {path} has SHA-256 {actual}, but the registry "
                           f"says {expected}: it is not the file the registry names; fetch "
                           "it again (make models) or correct MODELS_FILE")
    return actual


def home_of(model: Model) -> Path:
    """Where a model's files lie: its folder, else torch hub's cache (pretrained models)."""
    return Path(model.folder) if model.folder else torch_hub_dir() / "checkpoints"


def _files(model: Model) -> tuple[WeightFile, ...]:
    return model.files if model.files is not None else discover(model)


def discover(model: Model) -> tuple[WeightFile, ...]:
    """The files of a model the registry lists without them (``DEMUCS_MODEL`` alone, or
    ``entry``): in its folder, ``<name>.th`` or the bag ``<name>.yaml`` and its models' files;
    else, for one of Demucs' pretrained bags, the files of its signatures (named by Demucs'
    ``remote/files.txt``, or as they lie in the folder)."""
    home = home_of(model)
    if model.folder is None:
        by_sig = remote_files(demucs_remote() / "files.txt")
    else:
        by_sig = {model_signature(p.name): p.name for p in sorted(home.glob("*.th"))
                  if MODEL_FILE_RE.fullmatch(p.name)}
        bag = home / f"{model.name}.yaml"
        if bag.is_file():
            return (WeightFile(bag.name, None), *(WeightFile(by_sig.get(sig, f"{sig}.th"), None)
                                                  for sig in bag_signatures(bag)))
        if model.name in by_sig:
            return (WeightFile(by_sig[model.name], None),)
    remote = demucs_remote() / f"{model.name}.yaml"
    if not remote.is_file():
        raise WeightsError(f"model {model.name}: {home} holds neither {model.name}.th nor "
                           f"{model.name}.yaml, and it is not one of Demucs' pretrained "
                           "models: list it in MODELS_FILE with its files (docs/models.md)")
    return tuple(WeightFile(by_sig.get(sig, f"{sig}.th"), None) for sig in bag_signatures(remote))


def describe(model: Model) -> Model:
    """``model`` with each of its files and its SHA-256: the registry entry that pins it."""
    if model.builtin:
        return model
    home = home_of(model)
    files = tuple(replace(f, sha256=check_file(model.name, home / f.name, f.sha256))
                  for f in _files(model))
    return replace(model, files=files)


def remote_files(files_txt: Path) -> dict[str, str]:
    """``{signature: file name}`` from Demucs' ``remote/files.txt`` (as its
    ``pretrained._parse_remote_files`` reads it; the file name is the cached file's)."""
    names: dict[str, str] = {}
    for line in files_txt.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "root:")):
            continue
        name = line.rsplit("/", 1)[-1]
        if MODEL_FILE_RE.fullmatch(name):
            names[model_signature(name)] = name
    return names


def torch_hub_dir() -> Path:
    """Where torch hub (so Demucs' RemoteRepo) caches downloads: ``torch.hub.get_dir()``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser())
    return Path(os.environ.get("TORCH_HOME") or cache / "torch").expanduser() / "hub"


def demucs_remote() -> Path:
    """Demucs' folder of pretrained bags and ``files.txt``."""
    spec = importlib.util.find_spec("demucs")  # finds the package without importing torch
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the demucs package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "remote"


# -- make models ---------------------------------------------------------------------------
def fetch(registry: Registry, say: Callable[[str], None] = print) -> None:
    """Download each listed file that is missing (or differs) from its ``url``, once; keep
    it only when its SHA-256 is the registry's."""
    for model in registry.models:
        if model.builtin:
            continue
        if model.files is None:
            raise WeightsError(f"model {model.name} is not in a MODELS_FILE: list it there "
                               "with its files' sha256 and url to fetch them")
        for weight in model.files:
            path = home_of(model) / weight.name
            if path.is_file() and sha256_file(path) == weight.sha256:
                say(f"{model.name}: {path} present, SHA-256 verified")
                continue
            if weight.url is None:
                raise WeightsError(f"model {model.name}: {path} is missing or differs, and "
                                   "the registry names no url to fetch it from")
            download(weight.url, path, weight.sha256 or "")
            say(f"{model.name}: {path} downloaded from {weight.url}, SHA-256 verified")


def download(url: str, path: Path, sha256: str) -> None:
    """``url`` into ``path`` through a ``.partial`` file, kept only if its SHA-256 matches."""
    if not url.startswith(("https://", "http://")) or not FILE_NAME_RE.fullmatch(path.name):
        raise WeightsError(f"will not fetch {url!r} into {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    digest = hashlib.sha256()
    try:
        # http(s) only, checked above; redirects only as _HttpsRedirects allows
        opener = urllib.request.build_opener(_HttpsRedirects)
        opened = opener.open(url, timeout=DOWNLOAD_TIMEOUT_S)
        written = 0
        with opened as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                written += len(chunk)
                if written > MAX_WEIGHT_BYTES:
                    raise WeightsError(f"{url} sends more than {MAX_WEIGHT_BYTES} bytes: no "
                                       "weight file is that large; not kept")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise WeightsError(f"{url} has SHA-256 {digest.hexdigest()}, but the registry "
                               f"says {sha256}: not kept")
        partial.replace(path)
    except OSError as error:
        raise WeightsError(f"cannot fetch {url}: {error}") from None
    finally:
        partial.unlink(missing_ok=True)


class _HttpsRedirects(urllib.request.HTTPRedirectHandler):
    """A weights host may redirect (Hugging Face's files are on a CDN), but only to https and
    to a public address (``common.egress``): never down to http, nor into the operator's own
    network."""

    max_redirections = 5

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        try:
            if not newurl.startswith("https://"):
                raise RefusedTarget("not https")
            check_target(newurl, PUBLIC_ONLY)
        except RefusedTarget as refused:
            raise WeightsError(f"{req.full_url} redirects to {newurl[:200]!r}, which is not "
                               f"followed ({refused})") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The model registry's weights (MODELS_FILE, "
                                     "else DEMUCS_MODEL): docs/models.md.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download the missing files once, verified (make models)")
    commands.add_parser("verify", help="check every model as a worker does at start")
    entry = commands.add_parser("entry", help="print the MODELS_FILE entry of a model of your "
                                "own: its files in --folder, with their SHA-256")
    entry.add_argument("name")
    entry.add_argument("--folder", required=True, type=Path)
    entry.add_argument("--licence", required=True)
    entry.add_argument("--source", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "entry":
            if not MODEL_RE.fullmatch(args.name):
                raise ValueError("a model name must match [A-Za-z0-9_]{1,64}")
            model = Model(args.name, DEMUCS_STEMS, args.licence, args.source,
                          str(args.folder.resolve()), None)
            print(registry_json([describe(model)]), end="")
            return 0
        registry = Registry.load(Settings.from_env())
        if args.command == "fetch":
            fetch(registry)
        Shelf(registry)
    except ValueError as error:
        print(f"models: {error}", file=sys.stderr)
        return 1
    print(f"models: {', '.join(registry.names())} verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
