#!/usr/bin/env bash
# scaling.sh: requests/s and proxy CPU per request for splitproxy and nginx with 1 and 2
# workers at 1, 64, 256 and 1 024 keep-alive connections (plain HTTP/1.1, split 50/50),
# using ../shared/bench's backends and load generator (run its setup.sh once first).
#
#   bash tools/scaling.sh [SECONDS]      (from the project root, after cargo build --release)
#
# 1 worker: the proxy pinned to CPU 1, load generator and backends to CPU 0 (as run.sh).
# 2 workers: the proxy may use both CPUs, and so do the load generator and backends: on a
# 2-core machine the client then competes with the proxy, so requests/s says little and
# CPU per request is the figure to compare. Peers alternate within each cell (3 rounds);
# medians are printed as a markdown table and written, with every sample, to
# docs/scaling.json (tools/plot_scaling.py draws docs/scaling.png from it).
set -euo pipefail
root=$(pwd)
bench=${BENCH_DIR:-$root/../shared/bench}
source "$bench/lib/env.sh"
secs=${1:-3}
rounds=${ROUNDS:-3}
out=$root/docs/scaling.json
bin=$root/target/release/splitproxy
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 1; }
[[ -x $SPLITLOAD ]] || { echo "run bash $bench/setup.sh first" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bash "$bench/backends.sh" start >/dev/null
pid=""
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  bash "$bench/backends.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

ndir=$BENCH_STATE/nginx-scaling
mkdir -p "$ndir"
start_peer() { # PEER WORKERS CPUS -> sets pid
  local peer=$1 workers=$2 cpus=$3
  case $peer in
    splitproxy)
      bash "$bench/proxies/splitproxy.sh" config plain 50,50 >"$ndir/splitproxy.yaml"
      taskset -c "$cpus" "$bin" run --config "$ndir/splitproxy.yaml" --workers "$workers" \
        2>"$ndir/splitproxy.log" &
      pid=$!
      ;;
    nginx)
      bash "$bench/proxies/nginx.sh" config plain 50,50 |
        sed "s/^worker_processes 1;/worker_processes $workers;/; s|^pid .*|pid $ndir/nginx.pid;|" \
          >"$ndir/nginx.conf"
      taskset -c "$cpus" nginx -p "$ndir" -c "$ndir/nginx.conf" -e "$ndir/error.log" \
        -g 'daemon off;' &
      pid=$!
      ;;
  esac
  wait_port "$BENCH_PROXY_PORT"
}
stop_peer() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
  # the port must be free before the next peer binds it
  local i; for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$BENCH_PROXY_PORT") 2>/dev/null || return 0
    sleep 0.05
  done
}

echo '[' >"$out.new"
first=1
for workers in 1 2; do
  if ((workers == 1)); then pcpu=1 ccpu=0; else pcpu=0,1 ccpu=0,1; fi
  for conns in 1 64 256 1024; do
    for ((r = 1; r <= rounds; r++)); do
      for peer in nginx splitproxy; do
        start_peer "$peer" "$workers" "$pcpu"
        json=$(taskset -c "$ccpu" "$SPLITLOAD" "http://127.0.0.1:$BENCH_PROXY_PORT/" \
          -c "$conns" -d "$secs" -w 1 --host my-website --watch-pids "$pid")
        stop_peer
        ((first)) || echo ',' >>"$out.new"
        first=0
        python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(json.dumps({"peer": sys.argv[2], "workers": int(sys.argv[3]), "conns": int(sys.argv[4]), "rps": d["rps"], "cpu_us": d["watched"]["cpu_us_per_response"], "p99_ms": d["latency_us"]["p99"] / 1000, "errors": d.get("errors")}))' \
          "$json" "$peer" "$workers" "$conns" >>"$out.new"
        echo "workers=$workers conns=$conns round=$r $peer done" >&2
      done
    done
  done
done
echo ']' >>"$out.new"
mv "$out.new" "$out"

python3 - "$out" <<'PY'
import json, statistics, sys
rows = json.load(open(sys.argv[1]))
cells = {}
for r in rows:
    cells.setdefault((r["workers"], r["conns"]), {}).setdefault(r["peer"], []).append(r)
print("| workers | connections | nginx req/s | splitproxy req/s | nginx CPU µs/req | splitproxy CPU µs/req | CPU ratio |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for (w, c), peers in sorted(cells.items()):
    med = lambda p, k: statistics.median(x[k] for x in peers[p])
    n_rps, s_rps = med("nginx", "rps"), med("splitproxy", "rps")
    n_cpu, s_cpu = med("nginx", "cpu_us"), med("splitproxy", "cpu_us")
    print(f"| {w} | {c} | {n_rps:,.0f} | {s_rps:,.0f} | {n_cpu:.1f} | {s_cpu:.1f} | ×{s_cpu / n_cpu:.2f} |")
PY
