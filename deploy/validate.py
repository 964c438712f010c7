"""Validate rendered Kubernetes manifests offline, strictly, and skip nothing.

Every object is checked against the API schemas kubernetes-validate bundles, in strict mode
(an unknown field is an error). Custom resources are not in those schemas: the ones this
project uses have a schema in ``deploy/schemas/`` (KEDA's ScaledObject); an object of any other
kind fails instead of being skipped with a warning, as ``kubernetes-validate`` itself does.

    python deploy/validate.py [--kubernetes-version 1.37.0] RENDERED.yaml ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
# apiVersion, kind -> schema file in SCHEMA_DIR, for custom resources
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
}


def load_objects(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')}/{where}{meta.get('name')}"


def schema_version(desired: str) -> str:
    """The newest bundled schema version not newer than ``desired`` (as kubernetes-validate)."""
    wanted = tuple(int(part) for part in kv.major_minor(desired).split("."))
    bundled = [v for v in kv.all_versions()
               if tuple(int(part) for part in kv.major_minor(v).split(".")) <= wanted]
    if not bundled:
        raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {desired}")
    return bundled[-1]


def validate_custom(obj: dict[str, Any], schema_file: str, version: str) -> None:
    """Validate a custom resource; its schema may ``$ref`` the Kubernetes definitions."""
    definitions = kv.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    schema = json.loads((SCHEMA_DIR / schema_file).read_text())
    registry = Registry().with_resources([
        ("https://kubernetes.io/api/_definitions.json", Resource.from_contents(definitions)),
        (schema["$id"], Resource.from_contents(schema)),
    ])
    jsonschema.Draft202012Validator(schema, registry=registry).validate(obj)


def validate_object(obj: dict[str, Any], kubernetes_version: str) -> str | None:
    """None if ``obj`` is valid, else why not."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    try:
        if key in CUSTOM_SCHEMAS:
            validate_custom(obj, CUSTOM_SCHEMAS[key], schema_version(kubernetes_version))
        else:
            kv.validate(obj, kubernetes_version, strict=True)
    except jsonschema.ValidationError as error:
        where = ".".join(str(part) for part in error.absolute_path) or "(top)"
        return f"{where}: {error.message}"
    except kv.SchemaNotFoundError as error:
        return (f"{error.message}; add a schema to deploy/schemas/ and CUSTOM_SCHEMAS in "
                f"deploy/validate.py if this is a custom resource")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("-k", "--kubernetes-version", default=kv.latest_version())
    args = parser.parse_args(argv)
    failures = 0
    for path in args.files:
        seen: set[str] = set()
        objects = load_objects(path)
        if not objects:
            print(f"ERROR {path}: no objects")
            failures += 1
        for obj in objects:
            name = describe(obj)
            problem = validate_object(obj, args.kubernetes_version)
            if name in seen:
                problem = "defined twice"
            seen.add(name)
            if problem:
                print(f"ERROR {path}: {name}: {problem}")
                failures += 1
            else:
                print(f"ok    {path}: {name}")
    print(f"{failures} invalid object(s) (Kubernetes {args.kubernetes_version} schemas, strict)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
