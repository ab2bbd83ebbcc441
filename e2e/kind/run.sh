#!/usr/bin/env bash
# End-to-end run on a kind cluster (hosts with a Docker engine; CI: .github/workflows/kind.yml).
# Creates the kind cluster (reused if present), builds the project image the way CI builds it
# for the local node (`e2e/cluster image`: the Dockerfile on a Python base made from Debian's
# packages with mmdebstrap, the host's CA bundle as a build secret) and loads it with
# `kind load docker-image`, installs MinIO and PostgreSQL, installs charts/metatide, applies an
# example IncrementalExtraction and waits until its first run succeeded
# (status.lastSuccessfulRun). Needs docker, kind, kubectl, helm, python3 and mmdebstrap on PATH
# (METATIDE_PYTHON_IMAGE=python:3.11-slim builds on the public base instead of mmdebstrap's).
#   e2e/kind/run.sh            run (exit 0 only if the extraction succeeded)
#   e2e/kind/run.sh diagnose   print what a failed run left behind
#   e2e/kind/run.sh delete     delete the kind cluster
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cluster="${KIND_CLUSTER:-metatide}"
image="${METATIDE_IMAGE:-metatide:kind-e2e}"
ns="${METATIDE_NAMESPACE:-metatide-e2e}"
kind_dir=e2e/kind
export KUBECONFIG="${KUBECONFIG:-$HOME/.kube/config}"

diagnose() {
  kubectl -n "$ns" get all,incrementalextractions,jobs -o wide || true
  kubectl -n "$ns" describe incrementalextractions || true
  kubectl -n "$ns" logs -l app.kubernetes.io/name=metatide --all-containers --tail=200 || true
  kubectl -n "$ns" logs -l batch.kubernetes.io/job-name --all-containers --prefix --tail=50 || true
  kubectl -n "$ns" get events --sort-by=.lastTimestamp | tail -50 || true
}

case "${1:-run}" in
  diagnose) diagnose; exit 0 ;;
  delete) kind delete cluster --name "$cluster"; exit 0 ;;
  run) ;;
  *) echo "usage: $0 [run|diagnose|delete]" >&2; exit 2 ;;
esac

tools=(docker kind kubectl helm python3)
[ -n "${METATIDE_PYTHON_IMAGE:-}" ] || tools+=(mmdebstrap)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "$0 needs $tool on PATH" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "$0 needs a running Docker engine ('docker info' failed)" >&2; exit 2; }

kind get clusters 2>/dev/null | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 180s
kubectl config use-context "kind-$cluster"

METATIDE_IMAGE_TOOL=docker e2e/cluster image --tag "$image"
kind load docker-image "$image" --name "$cluster"

kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" apply -f "$kind_dir/services.yaml"
for app in minio postgres; do kubectl -n "$ns" rollout status "deployment/$app" --timeout=300s; done
kubectl -n "$ns" wait --for=condition=Complete job/seed --timeout=300s

helm upgrade --install metatide charts/metatide --namespace "$ns" --wait --timeout 5m \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never

kubectl -n "$ns" apply -f "$kind_dir/example.yaml"
# Success is a recorded lastSuccessfulRun; Stalled=True means the run failed: stop at once.
field() { kubectl -n "$ns" get incrementalextraction example -o jsonpath="$1"; }
deadline=$((SECONDS + 600))
until [ -n "$(field '{.status.lastSuccessfulRun.finishedAt}')" ]; do
  stalled="$(field '{.status.conditions[?(@.type=="Stalled")].status}')"
  if [ "$stalled" = True ] || [ "$SECONDS" -ge "$deadline" ]; then
    echo "kind e2e: the example extraction did not succeed (Stalled=$stalled)" >&2
    diagnose
    exit 1
  fi
  sleep 5
done
kubectl -n "$ns" get incrementalextraction example -o yaml
echo "kind e2e: the example extraction succeeded"
