"""The layout says who may touch what, as a table of allowed import arrows read from the code
(``ast``, every import: at the top, inside functions and under ``TYPE_CHECKING``; not what
runs only as a script, under ``if __name__ == "__main__"``).

- Between packages (``PACKAGE_ARROWS``): ``rest/`` and ``common/`` never import the worker's
  own code (``worker/``), so the REST image, which holds no ``worker/``, can always start;
  ``common/`` imports neither process.
- Inside ``rest/`` (``REST_LAYERS``): routes on top, then the work behind them, then who may
  see what, then the clients and parts, then the schemas; an arrow only points down (or stays
  in its layer). Inside ``worker/`` (``WORKER_LAYERS``) likewise: the entry, the daemon, how a
  job ends and one Demucs run, the parts, then the values and helpers.
- No module imports itself through others: no import loop anywhere.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "rest", "worker", "devstack", "bench")

PACKAGE_ARROWS: dict[str, set[str]] = {
    "common": {"common"},  # the shared contract, queue protocol and settings
    "rest": {"rest", "common"},
    "worker": {"worker", "common"},
    "devstack": {"devstack", "common", "worker"},  # the local stack and its test songs
    "bench": {"bench", "devstack", "common", "worker"},
}
"""Which packages each package may import."""

REST_LAYERS: tuple[tuple[str, ...], ...] = (
    ("rest.app",),
    ("rest.routes",),
    ("rest.submission", "rest.read_models", "rest.removal"),
    ("rest.tenancy",),
    ("rest.backend",),
    ("rest.owners", "rest.fair_share", "rest.links", "rest.callbacks", "rest.ratelimit",
     "rest.limits", "rest.observability", "rest.csrf", "rest.browser_headers", "rest.hosts",
     "rest.probes", "rest.tracks", "rest.ingest"),
    ("rest.schemas",),
)
"""``rest/``'s modules (or packages) from top to bottom; a module may import its own layer's
and those below."""

WORKER_LAYERS: tuple[tuple[str, ...], ...] = (
    ("worker.__main__",),  # builds the parts
    ("worker.worker",),  # the daemon: a job's steps
    ("worker.outcomes", "worker.demucs.separator"),  # how a job ends; one Demucs run
    ("worker.demucs.warm", "worker.output", "worker.long_songs", "worker.inputs",
     "worker.upkeep", "worker.cancel"),  # the parts
    ("worker.demucs.cli", "worker.demucs.weights", "worker.demucs.warm_child", "worker.task",
     "worker.work_dirs"),
    ("worker.demucs.bags", "worker.pcm", "worker.errors", "worker.metrics"),  # values, helpers
)
"""``worker/``'s modules (or packages) from top to bottom, as ``REST_LAYERS``: the parts never
reach back into the daemon, and the folders (``demucs/``, ``output/``, ``long_songs/``) only
into the helpers below them."""

LAYERS = {"rest": REST_LAYERS, "worker": WORKER_LAYERS}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))}


def _imported_modules(path: Path, modules: set[str] | None = None) -> set[str]:
    """What a file imports. Given the project's ``modules``, only those: ``from a import b``
    names the module ``a.b`` if there is one, else ``a``."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    tree.body = [node for node in tree.body if not _is_script_entry(node)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if modules is not None and submodule in modules
                          else node.module)
    return names if modules is None else names & modules


def _is_script_entry(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` at a module's top: what runs only as a script (``python
    worker/worker.py`` hands over to ``worker.__main__``) is no arrow of the module."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and \
        isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"


def arrows(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports among ``modules``."""
    return {name: _imported_modules(path, set(modules)) for name, path in modules.items()}


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops of ``graph``: its strongly connected parts of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> int:
    package = module.split(".", 1)[0]
    for depth, layer in enumerate(LAYERS[package]):
        if any(module == name or module.startswith(f"{name}.") for name in layer):
            return depth
    raise AssertionError(f"{module} is in no layer of {package}'s table: place it there")


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The arrows inside ``rest/`` or ``worker/`` that point up their package's layers (a
    package's own ``__init__`` is no layer)."""
    def layered(module: str) -> bool:
        return module.split(".", 1)[0] in LAYERS and "." in module
    return sorted((source, target) for source, targets in graph.items()
                  if layered(source) for target in targets
                  if layered(target) and target.split(".", 1)[0] == source.split(".", 1)[0]
                  and layer_of(target) < layer_of(source))


def strays(graph: dict[str, set[str]], table: dict[str, set[str]]) -> list[tuple[str, str]]:
    def package(module: str) -> str:
        return module.split(".", 1)[0]
    return sorted((source, target) for source, targets in graph.items() for target in targets
                  if package(target) not in table[package(source)])


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return arrows(all_modules())


def test_arrows_between_packages_follow_the_table(graph: dict[str, set[str]]) -> None:
    assert strays(graph, PACKAGE_ARROWS) == []


def test_arrows_inside_rest_and_worker_point_down(graph: dict[str, set[str]]) -> None:
    assert upward(graph) == []


def test_every_module_of_rest_and_worker_has_a_layer(graph: dict[str, set[str]]) -> None:
    packages = {module.rsplit(".", 1)[0] for module in graph}  # their __init__ holds no code
    for module in sorted(set(graph) - packages):
        if module.split(".", 1)[0] in LAYERS:
            layer_of(module)  # raises for a module no layer names


def test_no_import_loop(graph: dict[str, set[str]]) -> None:
    assert loops(graph) == []


def test_the_checks_see_a_stray_arrow_an_upward_one_and_a_loop(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from worker.errors import Code\nimport common.queue\n")
    assert _imported_modules(module) == {"worker.errors", "common.queue"}
    graph = {"rest.schemas": {"rest.routes.jobs"}, "rest.routes.jobs": {"rest.schemas"},
             "common.queue": {"worker.errors"}, "worker.errors": set(),
             "worker.output.tracks": {"worker.worker"}}
    assert strays(graph, PACKAGE_ARROWS) == [("common.queue", "worker.errors")]
    assert upward(graph) == [("rest.schemas", "rest.routes.jobs"),
                             ("worker.output.tracks", "worker.worker")]
    assert loops(graph) == [["rest.routes.jobs", "rest.schemas"]]


def test_the_rest_image_copies_no_worker_code() -> None:
    dockerfile = (ROOT / "rest" / "Dockerfile").read_text()
    assert "COPY common/" in dockerfile and "COPY worker" not in dockerfile


def test_the_worker_run_as_a_script_imports_demucs_not_its_own_folder_of_that_name():
    """``python /app/worker/worker.py`` (the image's command) puts ``worker/`` first on
    ``sys.path``, where ``worker/demucs/`` would shadow Demucs itself: the script takes its own
    folder off the path before it imports anything."""
    check = ("import runpy, sys; sys.path.insert(0, 'worker'); "
             "runpy.run_path('worker/worker.py', run_name='import_check'); "
             "import demucs; print(demucs.__file__)")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=True)
    assert Path(result.stdout.strip()).parent.name == "demucs"
    assert ROOT / "worker" not in Path(result.stdout.strip()).parents  # not worker/demucs/
