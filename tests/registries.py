"""Model registries (``MODELS_FILE``) for the tests: shared by the tests that need one."""

from __future__ import annotations

from pathlib import Path

from common.models import Model, registry_json


def write_registry(path: Path, *models: Model) -> str:
    """A ``MODELS_FILE`` listing ``models``; returns its path, for the env."""
    path.write_text(registry_json(models))
    return str(path)
