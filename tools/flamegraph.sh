#!/usr/bin/env bash
# flamegraph.sh: flame graphs of splitproxy under the bench's keep-alive loads, one worker
# pinned as in ../shared/bench (proxy on CPU 1, load generator and backends on CPU 0):
#   h1  plain HTTP/1.1, `splitload -c 64`
#   h2  HTTP/2 over mTLS, `splitload --h2 -c 8 --streams 8`
# Each: `perf record -F 999 --call-graph dwarf,16384 -p PID` for 3 s in the middle of a 6 s
# load, folded by `inferno-collapse-perf --all` (kernel frames marked _[k]) and drawn by
# `inferno-flamegraph --minwidth 0.5` into OUT/PREFIX-{h1,h2}.svg.
#
#   bash tools/flamegraph.sh [BINARY] [OUT] [PREFIX]
#     defaults: target/release/splitproxy, docs, flamegraph-xeon (the machine of the
#     graphs in docs/; name another machine's otherwise)
#
# needs perf (linux-perf), inferno (`cargo install inferno`), the bench set up (bash
# ../shared/bench/setup.sh). Kernel frames need perf_event_paranoid <= -1: as root it is
# lowered for the recording and restored after. On a VM, check the host's steal time
# first (the `st` column of vmstat): under steal the kernel's share swells with
# paravirtual spin-lock waits (`__pv_queued_spin_lock_slowpath`, `kvm_kick_cpu`).
set -euo pipefail
root=$(pwd)
bench=${BENCH_DIR:-$root/../shared/bench}
source "$bench/lib/env.sh"
bin=$(realpath "${1:-$root/target/release/splitproxy}")
out=${2:-$root/docs}
prefix=${3:-flamegraph-xeon}
for t in perf inferno-collapse-perf inferno-flamegraph taskset; do
  command -v "$t" >/dev/null || { echo "flamegraph.sh: needs $t" >&2; exit 1; }
done
[[ -x $bin ]] || { echo "flamegraph.sh: no binary at $bin (cargo build --release)" >&2; exit 1; }
[[ -x $SPLITLOAD ]] || { echo "flamegraph.sh: run bash $bench/setup.sh first" >&2; exit 1; }
tmp=$(mktemp -d -t flamegraph.XXXXXX)
paranoid_old=$(</proc/sys/kernel/perf_event_paranoid)
cleanup() {
  SPLITPROXY_BIN=$bin bash "$bench/proxies/splitproxy.sh" stop >/dev/null 2>&1 || true
  bash "$bench/backends.sh" stop >/dev/null 2>&1 || true
  echo "$paranoid_old" >/proc/sys/kernel/perf_event_paranoid 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
echo -1 >/proc/sys/kernel/perf_event_paranoid 2>/dev/null || true
bash "$bench/backends.sh" start >/dev/null
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
tls=(--cert "$BENCH_CERTS/client.pem" --key "$BENCH_CERTS/client-key.pem" --cacert "$BENCH_CERTS/ca.pem")
for kind in h1 h2; do
  if [[ $kind == h1 ]]; then mode=plain; load=(-c 64); else mode=mtls; load=(--h2 -c 8 --streams 8 "${tls[@]}"); fi
  SPLITPROXY_BIN=$bin bash "$bench/proxies/splitproxy.sh" start "$mode" 50,50
  pid=$(SPLITPROXY_BIN=$bin bash "$bench/proxies/splitproxy.sh" pid)
  url=$(SPLITPROXY_BIN=$bin bash "$bench/proxies/splitproxy.sh" url "$mode")
  taskset -c "$BENCH_CLIENT_CPU" "$SPLITLOAD" "$url" --host "$BENCH_HOST" "${load[@]}" -d 6 -w 0 >"$tmp/load.json" &
  lg=$!
  sleep 1.5
  perf record -q -F 999 --call-graph dwarf,16384 -p "$pid" -o "$tmp/$kind.data" -- sleep 3 2>/dev/null
  wait "$lg"
  SPLITPROXY_BIN=$bin bash "$bench/proxies/splitproxy.sh" stop
  perf script -i "$tmp/$kind.data" 2>/dev/null | inferno-collapse-perf --all >"$tmp/$kind.folded"
  inferno-flamegraph --minwidth 0.5 --title "splitproxy $kind, git $rev" <"$tmp/$kind.folded" \
    >"$out/$prefix-$kind.svg"
  echo "$kind: $out/$prefix-$kind.svg; kernel share of samples:" \
    "$(awk '{n=$NF; t+=n; if ($0 ~ /_\[k\] [0-9]+$/) k+=n} END {printf "%.0f%%", 100*k/t}' "$tmp/$kind.folded")"
done
