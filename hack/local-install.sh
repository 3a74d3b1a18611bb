#!/usr/bin/env bash
# snapback's namespace and RBAC on a local control plane (hack/cluster.sh),
# bound to the token user "snapback" that a local `snapback serve
# --kube-context snapback` runs as. Used by the demo and the benchmarks.
#
#   hack/local-install.sh KUBECONFIG
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export KUBECONFIG=${1:?usage: $0 KUBECONFIG}
kubectl create namespace snapback-system >/dev/null
kubectl label namespace snapback-system snapback.io/exclude=true >/dev/null
kubectl apply -f "$root/manifests/rbac.yaml" >/dev/null
kubectl create clusterrolebinding snapback-local --clusterrole=snapback --user=snapback >/dev/null
kubectl -n snapback-system create rolebinding snapback-local --role=snapback --user=snapback >/dev/null
