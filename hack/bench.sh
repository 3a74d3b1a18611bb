#!/usr/bin/env bash
# make bench: the benchmark suite (see BENCHMARKS.md). Results go to stdout
# and to ${CARGO_TARGET_DIR:-target}/bench-results.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${SNAPBACK_CACHE_DIR:-$HOME/.cache/snapback}
out=${CARGO_TARGET_DIR:-$root/target}/bench-results.md
mkdir -p "$(dirname "$out")"

# Corpus: the real-world manifests of Kubernetes v1.20.2 cluster/addons, from
# Debian's kubernetes source package (the same one the control plane is built from).
corpus=$cache/corpus/addons
if [ ! -d "$corpus" ]; then
  mkdir -p "$cache/corpus" && cd "$cache/corpus"
  ls kubernetes_*.orig.tar.gz >/dev/null 2>&1 || apt-get source --download-only kubernetes >/dev/null
  tarball=$(ls kubernetes_*.orig.tar.gz | head -1)
  top=$(tar -tzf "$tarball" | awk -F/ 'NR == 1 {print $1}')
  tar -xzf "$tarball" "$top/cluster/addons"
  rm -rf addons && mv "$top/cluster/addons" addons && rm -rf "$top"
  cd "$root"
fi

{
  echo "# Benchmark run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(uname -sr); kube-apiserver v1.20.2 on loopback."
  echo
  cargo bench --quiet --bench snapback -- inprocess
  echo
  dir=$(mktemp -d "${TMPDIR:-/tmp}/snapback-bench.XXXXXX")
  trap '"$root/hack/cluster.sh" down "$dir/cp" >/dev/null 2>&1; rm -rf "$dir"' EXIT
  OWNER_PID=$$ "$root/hack/cluster.sh" up "$dir/cp" 2>/dev/null
  cargo bench --quiet --bench snapback -- storage "$corpus" "$dir/cp/kubeconfig"
} | tee "$out"
