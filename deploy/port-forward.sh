#!/usr/bin/env bash
# Forward the deployed services to this machine: REST :5000, MinIO :9000 and its console
# :9001, Redis :6379. Refuses clearly when there is no kubectl, no cluster or no deployment.
#
#   deploy/port-forward.sh        (`make port-forward`; Ctrl-C stops it)
#
# Environment: KUBECTL  the kubectl to use (default: kubectl on PATH).
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAMESPACE=demucs
KUBECTL="${KUBECTL:-kubectl}"
SCRIPT_NAME=port-forward.sh
# shellcheck source=deploy/lib.sh
. "$DEPLOY_DIR/lib.sh"

require_kubectl
context="$(current_context)"
"$KUBECTL" get namespace "$NAMESPACE" >/dev/null 2>&1 ||
  die "no namespace '$NAMESPACE' in context '$context' (or the cluster does not answer):" \
      "deploy first with 'make deploy'"

echo "REST http://localhost:5000  MinIO console http://localhost:9001  (Ctrl-C stops)"
trap 'kill $(jobs -p) 2>/dev/null' EXIT
"$KUBECTL" -n "$NAMESPACE" port-forward svc/rest 5000:5000 &
"$KUBECTL" -n "$NAMESPACE" port-forward svc/minio 9000:9000 9001:9001 &
"$KUBECTL" -n "$NAMESPACE" port-forward svc/redis 6379:6379 &
# the first forward to end (a pod gone, a port taken) ends them all, with its status
wait -n
status=$?
die "a port-forward stopped (exit $status): is every pod running? kubectl -n $NAMESPACE get pods"
