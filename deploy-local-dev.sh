#!/usr/bin/env bash
# Deploy Redis and MinIO (deploy/services) to the current kube context for local development,
# wait until both run, and print the port-forward commands to reach them from this machine
# (Redis 6379, MinIO API 9000, MinIO console 9001). The worker and REST then run locally.
#
#   ./deploy-local-dev.sh            apply and wait
#   ./deploy-local-dev.sh --dry-run  print the manifests it would apply; needs no cluster
#
# Credentials come from deploy/secrets/secrets.env (git-ignored); when it is missing, a real
# run writes one with random values and --dry-run renders the example's placeholders.
# Environment: KUBECTL  the kubectl to use (default: kubectl on PATH).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAMESPACE=demucs
KUBECTL="${KUBECTL:-kubectl}"
SECRETS="$ROOT/deploy/secrets/secrets.env"
SCRIPT_NAME=deploy-local-dev.sh
# shellcheck source=deploy/lib.sh
. "$ROOT/deploy/lib.sh"

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

require_kubectl

random_secret() {
  od -An -tx1 -N16 /dev/urandom | tr -d ' \n'
}

write_random_secrets() {
  umask 077
  {
    echo "# Written by deploy-local-dev.sh with random values; git-ignored."
    echo "MINIO_ACCESS_KEY=$(random_secret | cut -c1-12)"
    echo "MINIO_SECRET_KEY=$(random_secret)"
    echo "REDIS_PASSWORD=$(random_secret)"
    echo "WEBHOOK_SECRET="
    echo "API_TOKEN="
    echo "API_KEYS="
  } >"$SECRETS"
  echo "wrote $SECRETS with random credentials"
}

if [ "$dry_run" = 1 ]; then
  if [ -f "$SECRETS" ]; then
    "$KUBECTL" kustomize "$ROOT/deploy/services"
  else
    # Render a copy that holds the example's placeholders; write nothing here.
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    placeholder_copy "$ROOT/deploy" "$tmp"
    "$KUBECTL" kustomize "$tmp/deploy/services"
  fi
else
  context="$(current_context)"
  echo "deploying Redis and MinIO to kube context '$context', namespace $NAMESPACE"
  [ -f "$SECRETS" ] || write_random_secrets
  refuse_placeholders "$SECRETS"
  "$KUBECTL" apply -k "$ROOT/deploy/services"
  "$KUBECTL" -n "$NAMESPACE" rollout status statefulset/redis --timeout=5m
  "$KUBECTL" -n "$NAMESPACE" rollout status statefulset/minio --timeout=5m
fi

cat <<EOF

# Reach them from this machine (each runs in the foreground; one terminal each):
$KUBECTL -n $NAMESPACE port-forward svc/redis 6379:6379
$KUBECTL -n $NAMESPACE port-forward svc/minio 9000:9000
$KUBECTL -n $NAMESPACE port-forward svc/minio 9001:9001   # console: http://localhost:9001

# Then run the worker (and REST) here with the same credentials:
set -a; . deploy/secrets/secrets.env; set +a
python worker/worker.py
EOF
