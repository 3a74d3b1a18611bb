#!/usr/bin/env bash
# Installs what the local control plane needs and builds kube-apiserver (and
# kube-controller-manager, for the tests that need the namespace controller)
# once.
#
# Nothing here downloads a prebuilt binary: etcd comes from Debian, and
# kube-apiserver is built from Debian's `kubernetes` source package (v1.20.2)
# with Debian's Go. The result is cached outside the checkout, keyed by version,
# so only the first run on a machine pays the ~5 minute build.
#
# Honours KUBE_APISERVER, KUBE_CONTROLLER_MANAGER and ETCD: when they point at
# existing binaries (envtest, another Kubernetes version) nothing is built.
set -euo pipefail

K8S_VERSION=1.20.2
CACHE_DIR=${SNAPBACK_CACHE_DIR:-$HOME/.cache/snapback}
OUT_DIR=$CACHE_DIR/kube-$K8S_VERSION
APISERVER_BIN=$OUT_DIR/kube-apiserver
CONTROLLER_MANAGER_BIN=$OUT_DIR/kube-controller-manager

log() { printf '[control-plane] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_etcd() {
  if [ -n "${ETCD:-}" ] && [ -x "$ETCD" ]; then return; fi
  if command -v etcd >/dev/null 2>&1; then return; fi
  log "installing etcd-server"
  apt_install etcd-server
}

ensure_kubectl() {
  if command -v kubectl >/dev/null 2>&1; then return; fi
  # Debian's kubernetes-client conflicts with a kubectl from another
  # repository, so only install it where none exists.
  log "installing kubernetes-client (kubectl)"
  apt_install kubernetes-client
}

ensure_openssl() {
  command -v openssl >/dev/null 2>&1 || apt_install openssl
}

ensure_deb_src() {
  if grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ 2>/dev/null \
    || grep -qs '^deb-src' /etc/apt/sources.list 2>/dev/null; then
    return
  fi
  # Use the same mirror as the existing deb entry.
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/debian.sources | head -1 | awk '{print $2}')
  if [ -z "$uri" ]; then
    uri=$(grep -hs '^deb ' /etc/apt/sources.list | head -1 | awk '{print $2}')
  fi
  uri=${uri:-http://deb.debian.org/debian}
  log "adding deb-src for bookworm main from $uri"
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
    | $SUDO tee /etc/apt/sources.list.d/snapback-src.sources >/dev/null
  apt_updated=0
}

build_control_plane() {
  local what=()
  if { [ -z "${KUBE_APISERVER:-}" ] || [ ! -x "$KUBE_APISERVER" ]; } && [ ! -x "$APISERVER_BIN" ]; then
    what+=(cmd/kube-apiserver)
  fi
  if { [ -z "${KUBE_CONTROLLER_MANAGER:-}" ] || [ ! -x "$KUBE_CONTROLLER_MANAGER" ]; } && [ ! -x "$CONTROLLER_MANAGER_BIN" ]; then
    what+=(cmd/kube-controller-manager)
  fi
  if [ ${#what[@]} = 0 ]; then return; fi
  log "building ${what[*]} $K8S_VERSION from Debian source (one time, ~5 minutes each)"
  ensure_deb_src
  apt_install golang-go rsync dpkg-dev golang-github-modern-go-reflect2-dev make
  local work=$CACHE_DIR/build
  rm -rf "$work"
  mkdir -p "$work/src"
  (cd "$work/src" && apt-get source -qq --download-only kubernetes >/dev/null 2>&1 || apt-get source --download-only kubernetes)
  (cd "$work/src" && dpkg-source --no-check -x ./*.dsc tree >/dev/null)
  local tree=$work/src/tree
  # reflect2 1.0.1 (vendored) crashes under Go >= 1.18; 1.0.2 from Debian works.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r "$r2" "$tree/vendor/github.com/modern-go/reflect2"
  sed -i 's#github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 v1.0.2#' "$tree/vendor/modules.txt" "$tree/go.mod"
  sed -i '/github.com\/modern-go\/reflect2 v1.0.1/d' "$tree/go.sum"
  mkdir -p "$work/gopath/src/k8s.io"
  ln -sfn "$tree" "$work/gopath/src/k8s.io/kubernetes"
  (
    cd "$work/gopath/src/k8s.io/kubernetes"
    export GOPATH=$work/gopath GO111MODULE=off GOFLAGS=-mod=vendor CGO_ENABLED=0
    export KUBE_GIT_VERSION=v$K8S_VERSION KUBE_GIT_TREE_STATE=clean
    make WHAT="${what[*]}" >"$work/build.log" 2>&1 || { tail -50 "$work/build.log" >&2; exit 1; }
  )
  mkdir -p "$OUT_DIR"
  local target bin
  for target in "${what[@]}"; do
    bin=${target#cmd/}
    cp "$tree/_output/local/bin/linux/"*/"$bin" "$OUT_DIR/$bin.tmp" 2>/dev/null \
      || cp "$tree/_output/bin/$bin" "$OUT_DIR/$bin.tmp"
    mv "$OUT_DIR/$bin.tmp" "$OUT_DIR/$bin"
    log "$bin cached at $OUT_DIR/$bin"
  done
  rm -rf "$work"
}

ensure_etcd
ensure_kubectl
ensure_openssl
build_control_plane
# Print where the binaries are, for callers.
echo "KUBE_APISERVER=${KUBE_APISERVER:-$APISERVER_BIN}"
echo "KUBE_CONTROLLER_MANAGER=${KUBE_CONTROLLER_MANAGER:-$CONTROLLER_MANAGER_BIN}"
echo "ETCD=${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}"
