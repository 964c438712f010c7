"""The model registry: the models this deployment runs, as the operator installed them.

A client names a model; the registry decides whether it exists. Nothing else does: a name the
registry does not hold is refused by REST (400) and by the worker at ``start`` (failed, dead
letter), and never reaches Demucs, which would otherwise look it up on the model hub and run
the code its files name. REST, the worker and the page read the same registry:

- ``MODELS_FILE``: a JSON file (a ConfigMap in ``deploy/``, ``models.json`` in the demo)::

    {"models": [
      {"name": "htdemucs", "stems": ["drums", "bass", "other", "vocals"], "licence": "MIT",
       "source": "https://github.com/adefossez/demucs",
       "files": [{"name": "955717e8-8726e21a.th", "sha256": "<64 hex>",
                  "url": "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/..."}]},
      {"name": "demucs_unittest", "builtin": true, "stems": [...], "licence": "MIT",
       "source": "built-in"}]}

  ``folder`` (absolute) is where a model's files lie, as ``DEMUCS_REPO`` is a folder; without
  it they lie in torch hub's cache (``$TORCH_HOME/hub/checkpoints``), where a pretrained
  Demucs model's files go. ``url`` is where ``make models`` fetches a missing file from; the
  worker never fetches. ``demucs_unittest`` is Demucs' built-in test model: no files.
- no ``MODELS_FILE``: one model, ``DEMUCS_MODEL`` (with ``DEMUCS_REPO``, as before); its files
  are found and hashed when a worker starts (``worker.demucs.weights``), with nothing to compare to.

``DEMUCS_MODEL`` is the default model and must be listed. ``API_KEYS`` may limit a client to
some models (``common.clients``); to it, the others do not exist.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from common.contract import DEMUCS_STEMS, ModelName, first_error
from common.settings import Settings

BUILTIN_MODEL = "demucs_unittest"
"""Demucs' built-in test model: code, no weight file."""
BUILTIN_SOURCE = "built-in"
FILE_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,64}(?:-[0-9a-f]{1,64})?\.th|[A-Za-z0-9_]{1,64}\.yaml")
"""A weight file Demucs' ``--repo`` reads: ``<sig>[-<checksum>].th`` or a bag ``<name>.yaml``."""
SHA256_RE = re.compile(r"[0-9a-f]{64}")
STEM_RE = re.compile(r"[a-z_]{1,32}")
MAX_REGISTRY_BYTES = 1 << 20


class WeightFileSpec(BaseModel):
    """One file of a model, as ``MODELS_FILE`` lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sha256: str
    url: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not FILE_NAME_RE.fullmatch(value):
            raise ValueError("a file name must be <sig>.th, <sig>-<checksum>.th or <name>.yaml "
                             "(letters, digits, '_')")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str) -> str:
        if not SHA256_RE.fullmatch(value):
            raise ValueError("sha256 must be 64 lowercase hex characters")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s@]{1,2000}", value):
            raise ValueError("url must be http(s), without spaces or credentials")
        return value


class ModelSpec(BaseModel):
    """One model, as ``MODELS_FILE`` lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName
    stems: tuple[str, ...]
    licence: str
    source: str
    folder: str | None = None
    files: tuple[WeightFileSpec, ...] = ()
    builtin: bool = False

    @field_validator("stems")
    @classmethod
    def _stems(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not all(STEM_RE.fullmatch(stem) for stem in value) or \
                not set(DEMUCS_STEMS) <= set(value):
            raise ValueError(f"stems must include {', '.join(DEMUCS_STEMS)} (the service's "
                             "tracks are made of them)")
        return value

    @field_validator("licence", "source")
    @classmethod
    def _text(cls, value: str) -> str:
        if not 1 <= len(value) <= 500 or not value.isprintable():
            raise ValueError("licence and source must be 1-500 printable characters")
        return value

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or ".." in value.split("/")
                                  or not value.isprintable()):
            raise ValueError("folder must be an absolute path without '..'")
        return value

    @model_validator(mode="after")
    def _weights(self) -> ModelSpec:
        if self.builtin != (self.name == BUILTIN_MODEL):
            raise ValueError(f"only {BUILTIN_MODEL}, and it always, is 'builtin': true")
        if self.builtin and (self.files or self.folder):
            raise ValueError(f"{BUILTIN_MODEL} is built into Demucs: it has no files or folder")
        if not self.builtin and not self.files:
            raise ValueError("a model lists its weight files, each with its sha256")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("a file is listed twice")
        return self


class RegistrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[ModelSpec, ...]


@dataclass(frozen=True)
class WeightFile:
    name: str
    sha256: str | None  # None: not known before a worker hashes it (no MODELS_FILE)
    url: str | None = None


@dataclass(frozen=True)
class Model:
    """A model the operator installed."""

    name: ModelName
    stems: tuple[str, ...]
    licence: str
    source: str
    folder: str | None  # None: torch hub's cache (a pretrained model's files)
    files: tuple[WeightFile, ...] | None  # None: found by the worker (no MODELS_FILE)
    builtin: bool = False

    @property
    def weights_sha256(self) -> str | None:
        """One hash for all its files (``weights_digest``); None while one is not known."""
        if self.builtin:
            return BUILTIN_SOURCE
        if self.files is None or any(f.sha256 is None for f in self.files):
            return None
        return weights_digest((f.name, f.sha256 or "") for f in self.files)

    def shown(self, default: str) -> dict[str, Any]:
        """What ``GET /apiv1/models`` says of it."""
        return {"name": self.name, "stems": list(self.stems), "licence": self.licence,
                "source": self.source, "default": self.name == default,
                "weights_sha256": self.weights_sha256}

    def entry(self) -> dict[str, Any]:
        """Its ``MODELS_FILE`` entry (files with their hashes)."""
        entry: dict[str, Any] = {"name": self.name, "stems": list(self.stems),
                                 "licence": self.licence, "source": self.source}
        if self.builtin:
            return {**entry, "builtin": True}
        if self.folder is not None:
            entry["folder"] = self.folder
        entry["files"] = [{k: v for k, v in (("name", f.name), ("sha256", f.sha256),
                                              ("url", f.url)) if v is not None}
                          for f in self.files or ()]
        return entry


def weights_digest(files: Iterable[tuple[str, str]]) -> str:
    """SHA-256 over ``<sha256>  <name>`` lines (``sha256sum``'s), sorted by name: one hash
    that names exactly the files a model ran with."""
    lines = "".join(f"{sha}  {name}\n" for name, sha in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def builtin_model() -> Model:
    return Model(BUILTIN_MODEL, DEMUCS_STEMS, "MIT", BUILTIN_SOURCE, None, (), builtin=True)


@dataclass(frozen=True)
class Registry:
    """The models, in the operator's order, and the default (``DEMUCS_MODEL``)."""

    models: tuple[Model, ...]
    default: str

    @classmethod
    def load(cls, settings: Settings) -> Registry:
        """``MODELS_FILE``'s models, else ``DEMUCS_MODEL`` alone; ValueError saying what is
        wrong (the service does not start)."""
        if settings.models_file is None:
            return cls.derived(settings)
        path = Path(settings.models_file)
        try:
            text = path.read_bytes()[:MAX_REGISTRY_BYTES + 1]
        except OSError as error:
            raise ValueError(f"MODELS_FILE={path} cannot be read: {error.strerror}") from None
        if len(text) > MAX_REGISTRY_BYTES:
            raise ValueError(f"MODELS_FILE={path} is over {MAX_REGISTRY_BYTES} bytes")
        return cls.parse(text, settings.demucs_model, f"MODELS_FILE={path}")

    @classmethod
    def parse(cls, text: str | bytes, default: str, where: str = "MODELS_FILE") -> Registry:
        try:
            spec = RegistrySpec.model_validate(json.loads(text))
        except (ValueError, RecursionError) as error:
            raise ValueError(f"{where}: {_first_error(error)}") from None
        models = tuple(Model(m.name, m.stems, m.licence, m.source, m.folder,
                             tuple(WeightFile(f.name, f.sha256, f.url) for f in m.files),
                             m.builtin) for m in spec.models)
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: a model is listed twice")
        if default not in names:
            raise ValueError(f"{where}: DEMUCS_MODEL={default}, the default model, is not "
                             f"listed (models: {', '.join(names)})")
        return cls(models, default)

    @classmethod
    def derived(cls, settings: Settings) -> Registry:
        """``DEMUCS_MODEL`` (and ``DEMUCS_REPO``) alone: the registry before ``MODELS_FILE``."""
        name = settings.demucs_model
        if name == BUILTIN_MODEL:
            return cls((builtin_model(),), name)
        repo = settings.demucs_repo
        source = f"DEMUCS_REPO={repo}" if repo else "Demucs' pretrained models (torch hub cache)"
        model = Model(name, DEMUCS_STEMS, "not stated (no MODELS_FILE)", source,
                      str(Path(repo).resolve()) if repo else None, None)
        return cls((model,), name)

    def get(self, name: str) -> Model:
        return next(m for m in self.models if m.name == name)

    def names(self, allowed: Collection[str] | None = None) -> list[str]:
        """The models' names (those of ``allowed`` only, for a client limited to them)."""
        return [m.name for m in self.models if allowed is None or m.name in allowed]

    def client_default(self, allowed: Collection[str] | None = None) -> str:
        """The model a request naming none runs: ``DEMUCS_MODEL``, or for a client limited
        to other models, the first of its own."""
        names = self.names(allowed)
        return self.default if self.default in names else names[0]

    def resolve(self, name: object, allowed: Collection[str] | None = None) -> str:
        """The model a request asks for (None: its default); ValueError, listing the names it
        may use, for any other, whatever its spelling."""
        if name is None:
            return self.client_default(allowed)
        names = self.names(allowed)
        if not isinstance(name, str) or name not in names:
            shown = repr(name)[:80] if isinstance(name, str) else "of that type"
            raise ValueError(f"model {shown} is not one this service runs; models: "
                             f"{', '.join(names)} (GET /apiv1/models)")
        return name

    def shown(self, allowed: Collection[str] | None = None) -> list[dict[str, Any]]:
        default = self.client_default(allowed)
        return [m.shown(default) for m in self.models if allowed is None or m.name in allowed]

    def check_clients(self, limits: dict[str, frozenset[str]]) -> None:
        """Every model ``API_KEYS`` names is listed (ValueError, naming no key)."""
        for client, models in limits.items():
            unknown = sorted(models - set(self.names()))
            if unknown:
                raise ValueError(f"API_KEYS: client {client!r} is limited to models the "
                                 f"registry does not list: {', '.join(unknown)}")


def registry_json(models: Iterable[Model]) -> str:
    """A ``MODELS_FILE`` holding ``models``."""
    return json.dumps({"models": [m.entry() for m in models]}, indent=2) + "\n"


def _first_error(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return first_error(error)
    if isinstance(error, RecursionError):
        return "nested too deep"
    return f"not valid JSON: {error}"
