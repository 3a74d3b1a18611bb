#!/usr/bin/env bash
# make bench: the benchmark suite (see BENCHMARKS.md). Results go to stdout
# and to ${CARGO_TARGET_DIR:-target}/bench-results.md.
#
#   hack/bench.sh           the full suite (about 20 minutes on 2 cores)
#   hack/bench.sh --smoke   every part with tiny sizes, for CI: it proves the
#                           suite still runs; its numbers mean nothing
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${SNAPBACK_CACHE_DIR:-$HOME/.cache/snapback}
target=${CARGO_TARGET_DIR:-$root/target}
smoke=
[ "${1:-}" = "--smoke" ] && smoke=--smoke
out=$target/bench-results${smoke:+-smoke}.md
mkdir -p "$(dirname "$out")"

# Corpus: the real-world manifests of Kubernetes v1.20.2 cluster/addons, from
# Debian's kubernetes source package (the same one the control plane is built
# from). The smoke run uses this repository's own manifests instead.
corpus=$cache/corpus/addons
if [ -n "$smoke" ]; then
  corpus=$root/manifests
elif [ ! -d "$corpus" ]; then
  mkdir -p "$cache/corpus" && cd "$cache/corpus"
  ls kubernetes_*.orig.tar.gz >/dev/null 2>&1 || apt-get source --download-only kubernetes >/dev/null
  tarball=$(ls kubernetes_*.orig.tar.gz | head -1)
  top=$(tar -tzf "$tarball" | awk -F/ 'NR == 1 {print $1}')
  tar -xzf "$tarball" "$top/cluster/addons"
  rm -rf addons && mv "$top/cluster/addons" addons && rm -rf "$top"
  cd "$root"
fi

# The benchmarks measure the release build, like a deployment runs it.
cargo build --release --locked --quiet
cargo bench --locked --no-run --quiet --bench snapback 2>/dev/null

dir=$(mktemp -d "${TMPDIR:-/tmp}/snapback-bench.XXXXXX")
trap '"$root/hack/cluster.sh" down "$dir/cp" >/dev/null 2>&1; rm -rf "$dir"' EXIT
{
  echo "# Benchmark run $(date -u +%Y-%m-%dT%H:%MZ)${smoke:+ (smoke: tiny sizes, numbers meaningless)}"
  echo
  echo "Command: hack/bench.sh $smoke (make bench${smoke:+-smoke}). Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(uname -sr); kube-apiserver v1.20.2 and etcd on loopback, sharing the cores with snapback and the load generator."
  echo
  cargo bench --locked --quiet --bench snapback -- inprocess $smoke
  echo
  OWNER_PID=$$ "$root/hack/cluster.sh" up "$dir/cp" >/dev/null 2>&1
  "$root/hack/local-install.sh" "$dir/cp/kubeconfig"
  cargo bench --locked --quiet --bench snapback -- storage "$corpus" "$dir/cp/kubeconfig"
  echo
  cargo bench --locked --quiet --bench snapback -- live "$dir/cp/kubeconfig" "$target/release/snapback" "$dir/live" $smoke
} | tee "$out"
