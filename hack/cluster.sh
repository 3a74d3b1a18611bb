#!/usr/bin/env bash
# A real control plane on loopback: etcd + kube-apiserver, no containers.
#
#   hack/cluster.sh up DIR     start (installs/builds what is missing), wait until ready
#   hack/cluster.sh down DIR   stop and remove DIR
#
# With CONTROLLERS=1, a kube-controller-manager runs too, with the controllers
# a namespace's life needs (namespace, service accounts and their tokens,
# kube-root-ca.crt, garbage collector, Deployments and ReplicaSets, volume
# binding and the claim/volume protection finalizers), each as
# its own service account as kubeadm sets it up: pods are created but never
# scheduled (no scheduler, no kubelet).
#
# DIR receives: kubeconfig (contexts admin, snapback, alice, bob, carol, user1..12),
# tokens.csv, pki/, logs, pids, and env (KUBECONFIG=..., APISERVER_URL=...).
# With OWNER_PID set, a watchdog stops everything when that process exits, so
# a test binary that dies does not leak servers.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 up|down DIR" >&2; exit 2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

stop() {
  local d=$1
  for f in "$d"/*.pid; do
    [ -f "$f" ] || continue
    local pid
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
  done
  for f in "$d"/*.pid; do
    [ -f "$f" ] || continue
    local pid
    pid=$(cat "$f")
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

case "$cmd" in
down)
  [ -d "$dir" ] || exit 0
  stop "$dir"
  rm -rf "$dir"
  exit 0
  ;;
up) ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac

eval "$("$here/install-control-plane.sh" | grep -E '^(KUBE_APISERVER|KUBE_CONTROLLER_MANAGER|ETCD)=')"
mkdir -p "$dir/pki" "$dir/etcd"
dir=$(cd "$dir" && pwd)
pki=$dir/pki

# PKI: a CA for the API server's serving certificate, and the service account key.
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=snapback-test-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$pki/ext.cnf"
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 3650 -extfile "$pki/ext.cnf" -out "$pki/apiserver.crt" 2>/dev/null
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

token() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
# admin is cluster-admin; snapback is snapback's own identity; the others get
# only the RBAC a test grants them (user1..user12 for per-test sessions).
users="admin snapback alice bob carol user1 user2 user3 user4 user5 user6 user7 user8 user9 user10 user11 user12"
declare -A tokens
for u in $users; do tokens[$u]=$(token); done
{
  for u in $users; do
    case $u in
      admin) group=system:masters ;;
      snapback) group=snapback:system ;;
      *) group=developers ;;
    esac
    echo "${tokens[$u]},$u,$u-uid,$group"
  done
  kcm_token=$(token)
  echo "$kcm_token,system:kube-controller-manager,kcm-uid,system:authenticated"
} >"$dir/tokens.csv"
chmod 600 "$dir/tokens.csv"

etcd_port=$(free_port)
etcd_peer=$(free_port)
api_port=$(free_port)

"$ETCD" --data-dir "$dir/etcd" --name snapback-test \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "snapback-test=http://127.0.0.1:$etcd_peer" \
  --quota-backend-bytes 4294967296 --log-level warn \
  >"$dir/etcd.log" 2>&1 &
echo $! >"$dir/etcd.pid"

"$KUBE_APISERVER" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --secure-port "$api_port" --insecure-port 0 \
  --advertise-address 127.0.0.1 \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --token-auth-file "$dir/tokens.csv" \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 \
  --endpoint-reconciler-type none \
  --enable-admission-plugins NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota \
  --disable-admission-plugins StorageObjectInUseProtection,DefaultStorageClass,PersistentVolumeClaimResize,DefaultTolerationSeconds,Priority,RuntimeClass,CertificateApproval,CertificateSigning,CertificateSubjectRestriction,TaintNodesByCondition \
  --audit-log-path "$dir/audit.log" --audit-policy-file "$here/audit-policy.yaml" \
  --audit-log-maxsize 200 \
  --v 0 \
  >"$dir/apiserver.log" 2>&1 &
echo $! >"$dir/apiserver.pid"

url="https://127.0.0.1:$api_port"
{
  echo "apiVersion: v1"
  echo "kind: Config"
  echo "clusters:"
  echo "- name: local"
  echo "  cluster:"
  echo "    server: $url"
  echo "    certificate-authority: $pki/ca.crt"
  echo "users:"
  for u in $users; do
    echo "- name: $u"
    echo "  user:"
    echo "    token: ${tokens[$u]}"
  done
  echo "contexts:"
  for u in $users; do
    echo "- name: $u"
    echo "  context:"
    echo "    cluster: local"
    echo "    user: $u"
  done
  echo "current-context: admin"
} >"$dir/kubeconfig"
chmod 600 "$dir/kubeconfig"

if [ -n "${OWNER_PID:-}" ]; then
  (
    trap '' HUP
    while kill -0 "$OWNER_PID" 2>/dev/null && [ -d "$dir" ]; do sleep 1; done
    stop "$dir" 2>/dev/null || true
    rm -rf "$dir"

  ) </dev/null >/dev/null 2>&1 &
  echo $! >"$dir/watchdog.pid.keep"
fi

for _ in $(seq 1 600); do
  if ! kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null; then
    echo "kube-apiserver exited; last log lines:" >&2
    tail -30 "$dir/apiserver.log" >&2
    exit 1
  fi
  if curl -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer ${tokens[admin]}" "$url/readyz" >/dev/null 2>&1; then
    break
  fi
  sleep 0.2
done
curl -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer ${tokens[admin]}" "$url/readyz" >/dev/null \
  || { echo "kube-apiserver not ready; log:" >&2; tail -30 "$dir/apiserver.log" >&2; exit 1; }

if [ "${CONTROLLERS:-0}" = 1 ]; then
  printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: %s\n    certificate-authority: %s\nusers:\n- name: kcm\n  user:\n    token: %s\ncontexts:\n- name: kcm\n  context:\n    cluster: local\n    user: kcm\ncurrent-context: kcm\n' \
    "$url" "$pki/ca.crt" "$kcm_token" >"$dir/kcm.kubeconfig"
  chmod 600 "$dir/kcm.kubeconfig"
  "$KUBE_CONTROLLER_MANAGER" \
    --kubeconfig "$dir/kcm.kubeconfig" \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" \
    --controllers namespace,garbagecollector,serviceaccount,serviceaccount-token,root-ca-cert-publisher,deployment,replicaset,persistentvolume-binder,pvc-protection,pv-protection \
    --leader-elect=false --port 0 --secure-port 0 \
    --concurrent-namespace-syncs 2 \
    --v 1 \
    >"$dir/controller-manager.log" 2>&1 &
  echo $! >"$dir/controller-manager.pid"
fi

# The default namespace exists only once a controller creates it; make sure.
KUBECONFIG=$dir/kubeconfig kubectl create namespace default >/dev/null 2>&1 || true

{
  echo "KUBECONFIG=$dir/kubeconfig"
  echo "APISERVER_URL=$url"
  echo "APISERVER_CA=$pki/ca.crt"
  echo "AUDIT_LOG=$dir/audit.log"
} >"$dir/env"
echo "control plane ready at $url (kubeconfig: $dir/kubeconfig)" >&2
