#!/usr/bin/env bash
# The README's first command (make demo): a local control plane, snapback in
# front of it, a sample application changed, the captured snapshot shown, the
# change rolled back through the HTTP API, and the metrics printed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${SNAPBACK_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/snapback}
work=$(mktemp -d "${TMPDIR:-/tmp}/snapback-demo.XXXXXX")
cp_dir=$work/cluster
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$root/hack/cluster.sh" down "$cp_dir" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

step "Starting a local control plane (etcd + kube-apiserver + kube-controller-manager on loopback)"
OWNER_PID=$$ CONTROLLERS=1 "$root/hack/cluster.sh" up "$cp_dir"
export KUBECONFIG=$cp_dir/kubeconfig
kubectl version 2>/dev/null | sed 's/^/    /' || true

step "Installing snapback's namespace and RBAC"
"$root/hack/local-install.sh" "$KUBECONFIG"

step "Starting snapback (webhook + snapshotter)"
"$bin" certs --out "$work/certs" --hosts localhost,127.0.0.1
wh=$(free_port); api=$(free_port); met=$(free_port)
"$bin" serve --kubeconfig "$KUBECONFIG" --kube-context snapback --self-user snapback \
  --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" \
  --webhook-addr "127.0.0.1:$wh" --api-addr "127.0.0.1:$api" --metrics-addr "127.0.0.1:$met" \
  >"$work/snapback.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$met/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$met/readyz" >/dev/null || { cat "$work/snapback.log"; exit 1; }
"$bin" webhook-config --url "https://127.0.0.1:$wh" --ca "$work/certs/ca.crt" | kubectl apply -f -
sleep 2

step "Applying a sample application"
kubectl create namespace shop
cat <<'YAML' | kubectl apply -f -
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop-config
  namespace: shop
data:
  theme: light
  checkout: enabled
YAML

step "Changing it as part of action 'release-2' (kubectl apply with the snapback.io/action annotation)"
cat <<'YAML' | kubectl apply -f -
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop-config
  namespace: shop
  annotations:
    snapback.io/action: release-2
data:
  theme: dark
  checkout: disabled
YAML
kubectl -n shop get configmap shop-config -o jsonpath='    now: {.data}{"\n"}'
echo "    (the annotation is stripped before the object is stored:"
kubectl -n shop get configmap shop-config -o jsonpath='     annotations = {.metadata.annotations}{"\n"}' | cut -c1-120
echo "    )"

step "The captured snapshot (ConfigMap in snapback-system)"
kubectl -n snapback-system get configmaps -l snapback.io/action=release-2 \
  -L snapback.io/action,snapback.io/operation,snapback.io/resource
snap=$(kubectl -n snapback-system get configmaps -l snapback.io/action=release-2,snapback.io/operation=update -o name | head -1)
kubectl -n snapback-system get "$snap" -o jsonpath='{.metadata.annotations}' | python3 -c '
import json, sys
for k, v in sorted(json.load(sys.stdin).items()):
    print("    %s: %s" % (k, v))'
echo "    prior state (decoded from binaryData[object.json.gz]):"
kubectl -n snapback-system get "$snap" -o jsonpath='{.binaryData.object\.json\.gz}' | base64 -d | gunzip \
  | python3 -c 'import json,sys; o=json.load(sys.stdin); print("      data =", json.dumps(o["data"]))'

token=$(awk -F, '$2 == "admin" {print $1}' "$cp_dir/tokens.csv")
call() { curl -fsS --cacert "$work/certs/ca.crt" -H "Authorization: Bearer $token" "$@"; }
pretty() { python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), indent=2))' | sed 's/^/    /'; }

step "Dry run: what a rollback of release-2 would do (POST /api/v1/actions/release-2/rollback?dryRun=true)"
call -X POST "https://127.0.0.1:$api/api/v1/actions/release-2/rollback?dryRun=true" | python3 -c '
import json, sys
r = json.load(sys.stdin)
for o in r["results"]:
    print("    %s %s/%s: %s %s" % (o["operation"], o["namespace"], o["name"], o["outcome"], json.dumps(o.get("patch"))))'

step "Rolling release-2 back through the HTTP API (POST /api/v1/actions/release-2/rollback)"
call -X POST "https://127.0.0.1:$api/api/v1/actions/release-2/rollback" | pretty
kubectl -n shop get configmap shop-config -o jsonpath='    restored: {.data}{"\n"}'
restored=$(kubectl -n shop get configmap shop-config -o jsonpath='{.data.theme}/{.data.checkout}')
if [ "$restored" != "light/enabled" ]; then
  echo "demo: the rollback did not restore the prior state (got $restored)" >&2
  exit 1
fi

step "Actions (GET /api/v1/actions): the rollback is an action of its own, so rolling it back is a redo"
call "https://127.0.0.1:$api/api/v1/actions?limit=5" | python3 -c '
import json, sys
for a in json.load(sys.stdin)["actions"]:
    print("    %-40s %-12s %-10s changes=%d" % (a["id"], a["state"], a["origin"], a["changes"]))'

step "The classic mistake: kubectl delete namespace shop, inside an action opened through the API"
call -X POST -H 'Content-Type: application/json' -d '{"id": "oops", "description": "cleaning up"}' \
  "https://127.0.0.1:$api/api/v1/actions" >/dev/null
kubectl delete namespace shop --timeout=120s
call -X POST "https://127.0.0.1:$api/api/v1/actions/oops/complete" >/dev/null
echo "    the namespace controller emptied it; its deletes joined the action:"
call "https://127.0.0.1:$api/api/v1/actions/oops" | python3 -c '
import json, sys
for c in json.load(sys.stdin)["changes"]:
    print("      %s %s %s/%s by %s" % (c["operation"], c["kind"], c["namespace"] or "-", c["name"], c["user"]))'

step "Undo it (POST /api/v1/actions/oops/rollback): the namespace comes back with its contents"
call -X POST "https://127.0.0.1:$api/api/v1/actions/oops/rollback" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("    state:", r["state"])
for o in r["results"]:
    print("      %s %s/%s: %s (%s)" % (o["operation"], o["namespace"] or "-", o["name"], o["outcome"], o["message"]))'
kubectl -n shop get configmap shop-config -o jsonpath='    back: configmap shop-config {.data}{"\n"}'
back=$(kubectl -n shop get configmap shop-config -o jsonpath='{.data.theme}')
if [ "$back" != "light" ]; then
  echo "demo: the namespace's contents did not come back (theme: $back)" >&2
  exit 1
fi

step "snapback metrics (http://127.0.0.1:$met/metrics)"
# Series that have not moved (every main series exists from the start, at 0) are left out.
curl -fsS "http://127.0.0.1:$met/metrics" | grep -E '^snapback_(snapshots_stored|admission_requests|rollbacks_total|objects_restored|rollback_duration_seconds_count)' | grep -vE ' 0$' | sed 's/^/    /'
step "Demo finished"
