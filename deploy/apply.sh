#!/usr/bin/env bash
# Apply an overlay of deploy/ to the current kube context, with the images of `make images`
# and optionally the KEDA autoscaler; or render it (--dry-run), or delete it (--delete).
#
#   deploy/apply.sh [--dry-run | --delete] local|gpu
#
# Environment: WORKER_IMAGE, REST_IMAGE  images as name:tag (default: the overlay's
#              demucs-worker:latest, demucs-rest:latest); KEDA=1 adds components/keda;
#              KUBECTL  the kubectl to use (default: kubectl on PATH).
# `make deploy`, `make deploy-gpu` and `make undeploy` call this.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAMESPACE=demucs
KUBECTL="${KUBECTL:-kubectl}"
KEDA="${KEDA:-0}"
WORKER_IMAGE="${WORKER_IMAGE:-}"
REST_IMAGE="${REST_IMAGE:-}"
SCRIPT_NAME=apply.sh
# shellcheck source=deploy/lib.sh
. "$DEPLOY_DIR/lib.sh"

usage() {
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

mode=apply
overlay=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) mode=render ;;
    --delete) mode=delete ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) [ -z "$overlay" ] || die "one overlay only"; overlay="$1" ;;
  esac
  shift
done
[ -n "$overlay" ] || { usage >&2; die "name an overlay: local or gpu"; }
[ -f "$DEPLOY_DIR/overlays/$overlay/kustomization.yaml" ] ||
  die "no overlay deploy/overlays/$overlay: use local or gpu"

require_kubectl
if [ "$mode" != render ]; then
  context="$(current_context)"
  echo "kube context: $context"
fi

work=
trap 'rm -rf "$work"' EXIT
src="$DEPLOY_DIR"
secrets="$DEPLOY_DIR/secrets/secrets.env"
if [ ! -f "$secrets" ]; then
  [ "$mode" = render ] || die "$secrets is missing. Create it from the example and set" \
    "every value: cp deploy/secrets/secrets.env.example deploy/secrets/secrets.env"
  # Render a copy that holds the example's placeholders; write nothing here.
  work="$(mktemp -d)"
  placeholder_copy "$DEPLOY_DIR" "$work"
  src="$work/deploy"
elif [ "$mode" = apply ]; then
  refuse_placeholders "$secrets"
fi

# An image reference name:tag, split for kustomize's `images:` (the tag follows the last ':'
# after the last '/', so a registry port is not taken for a tag).
image_entry() {
  local base="$1" ref="$2" name tag
  [ -n "$ref" ] || return 0
  tag="${ref##*:}"
  case "$tag" in
    "$ref" | */*) die "image '$ref' has no tag: give name:tag" ;;
  esac
  name="${ref%:*}"
  printf '  - name: %s\n    newName: %s\n    newTag: "%s"\n' "$base" "$name" "$tag"
}

# A throw-away kustomization next to the overlays (kustomize wants relative paths).
build="$(mktemp -d "$src/.build.XXXXXX")"
trap 'rm -rf "$build" "$work"' EXIT
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "  - ../overlays/$overlay"
  if [ "$KEDA" = 1 ]; then
    echo "components:"
    echo "  - ../components/keda"
  fi
  if [ -n "$WORKER_IMAGE$REST_IMAGE" ]; then
    echo "images:"
    image_entry demucs-worker "$WORKER_IMAGE"
    image_entry demucs-rest "$REST_IMAGE"
  fi
} >"$build/kustomization.yaml"

case "$mode" in
  render)
    "$KUBECTL" kustomize "$build"
    ;;
  delete)
    # Everything, the namespace and the Redis and MinIO volumes (queued jobs, songs, tracks)
    # included.
    "$KUBECTL" delete -k "$build" --ignore-not-found --wait=false
    ;;
  apply)
    "$KUBECTL" apply -k "$build"
    for workload in statefulset/redis statefulset/minio deployment/rest deployment/worker; do
      "$KUBECTL" -n "$NAMESPACE" rollout status "$workload" --timeout=15m
    done
    echo
    echo "Deployed ($overlay). The API: kubectl -n $NAMESPACE port-forward svc/rest 5000:5000"
    echo "The MinIO console: kubectl -n $NAMESPACE port-forward svc/minio 9001:9001," \
         "then http://localhost:9001 with MINIO_ACCESS_KEY / MINIO_SECRET_KEY of $secrets"
    ;;
esac
