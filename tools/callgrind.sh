#!/usr/bin/env bash
# callgrind.sh: user-space instructions per proxied request, counted by valgrind's
# callgrind (deterministic, unlike CPU time on a shared VM). Runs the proxy (one worker,
# ../shared/bench's config and backends) under callgrind twice, for 2 000 and for 22 000
# requests of `splitload -c 64`, and prints (total(22 000) - total(2 000)) / 20 000, so
# start-up and shutdown cancel out.
#
#   bash tools/callgrind.sh [BINARY] [plain|mtls]   (after cargo build --release and
#                                                    bash ../shared/bench/setup.sh;
#                                                    needs valgrind: apt-get install valgrind)
set -euo pipefail
root=$(pwd)
bench=${BENCH_DIR:-$root/../shared/bench}
source "$bench/lib/env.sh"
bin=${1:-$root/target/release/splitproxy}
mode=${2:-plain}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"; bash "$bench/backends.sh" stop >/dev/null 2>&1 || true' EXIT
bash "$bench/backends.sh" start >/dev/null
bash "$bench/proxies/splitproxy.sh" config "$mode" 50,50 >"$out/config.yaml"
url=http://127.0.0.1:$BENCH_PROXY_PORT/
tls=()
if [[ $mode == mtls ]]; then
  url=https://127.0.0.1:$BENCH_PROXY_PORT/
  tls=(--cert "$BENCH_CERTS/client.pem" --key "$BENCH_CERTS/client-key.pem" --cacert "$BENCH_CERTS/ca.pem" --sni localhost)
fi

instructions() { # REQUESTS -> total instructions of the proxy process
  local n=$1
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$n" "$bin" run --config "$out/config.yaml" \
    --workers 1 2>"$out/valgrind.$n.log" &
  local pid=$!
  wait_port "$BENCH_PROXY_PORT" 60
  "$SPLITLOAD" "$url" -c 64 -n "$n" -d 300 -w 0 --host my-website --timeout 30 "${tls[@]}" >"$out/load.$n.json"
  kill -INT "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ { print $2; exit }' "$out/cg.$n"
}

small=$(instructions 2000)
large=$(instructions 22000)
echo "$(( (large - small) / 20000 )) instructions per request ($mode, $(basename "$bin"))"
