"""The layout says who may touch what: ``rest/`` and ``separation/`` never import the worker's
own code (``worker/``), so the REST image, which holds no ``worker/``, can always start."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["rest", "separation"])
def test_no_arrow_into_worker_only_code(package: str) -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in _imported_modules(path)
                                                     if n == "worker" or n.startswith("worker."))
                 for path in sorted((ROOT / package).rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_an_import_into_the_worker(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from worker.errors import Code\nimport separation.queue\n")
    assert _imported_modules(module) == {"worker.errors", "separation.queue"}


def test_the_rest_image_copies_no_worker_code() -> None:
    dockerfile = (ROOT / "rest" / "Dockerfile").read_text()
    assert "COPY separation/" in dockerfile and "COPY worker" not in dockerfile
