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
# The webhooks' namespace selector leaves these out by the label the API
# server puts on every namespace from Kubernetes 1.21; on 1.20 it is ours
# to put (docs/API.md, "Namespaces never sent to snapback").
for ns in kube-system kube-node-lease snapback-system; do
  kubectl label namespace "$ns" "kubernetes.io/metadata.name=$ns" --overwrite >/dev/null
done
kubectl apply -f "$root/manifests/rbac.yaml" >/dev/null
kubectl create clusterrolebinding snapback-local --clusterrole=snapback --user=snapback >/dev/null
kubectl -n snapback-system create rolebinding snapback-local --role=snapback --user=snapback >/dev/null
