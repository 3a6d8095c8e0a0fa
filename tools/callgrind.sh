#!/usr/bin/env bash
# callgrind.sh: where each proxy's CPU goes per proxied request, for splitproxy, nginx and
# HAProxy under the same load (`splitload -c 64`, keep-alive, Host my-website, split 50/50
# over the bench's backends v1/v2), each proxy with the config ../shared/bench generates
# for it (proxies/*.sh), one worker:
#   nginx       one process: `-g 'daemon off; master_process off;'` (worker_processes 1)
#   HAProxy     `-db` (foreground, no master), nbthread 1 (from the bench config)
#   splitproxy  `--workers 1` (and SPLITPROXY_WORKERS=1)
# Three figures per proxy and mode:
#   instr/req     user-space instructions per request, counted by valgrind's callgrind
#                 (deterministic, unlike CPU time on a shared VM): the proxy runs under
#                 callgrind twice, for SMALL (2 000) and LARGE (22 000) requests, and the
#                 figure is (total(LARGE) - total(SMALL)) / (LARGE - SMALL), so start-up and
#                 shutdown cancel out.
#   syscalls/req  system calls per request of the native process (no valgrind): perf stat
#                 -e raw_syscalls:sys_enter attached to the running proxy (all its threads),
#                 counting exactly over one load of SYSCALL_N requests (perf's control fifo,
#                 enable/disable acknowledged), after a warm-up load. The main calls are
#                 counted too (the second table).
#   CPU µs/req    the native proxy's utime and stime (/proc/PID/stat) before and after a
#                 load of CPU_N requests (a separate window, perf detached): user and kernel
#                 µs per request and the user share. The kernel part is mostly the loopback
#                 TCP path of both hops: the floor the kernel sets.
#
#   bash tools/callgrind.sh [BINARY] [MODES] [--peers nginx,haproxy,splitproxy]
#                           [--top N] [--native-only]
#     MODES    comma-separated, default plain: plain (HTTP/1.1), mtls (HTTP/1.1 over mTLS),
#              h2 (the bench's mtls-h2: HTTP/2 over mTLS, `--h2 -c 8 --streams 8`)
#     --native-only  skip callgrind: only the native figures (system calls, CPU split), e.g.
#              to repeat them when the machine is quieter
#     --top N  also list each proxy's N costliest functions (callgrind self cost per request,
#              the difference of the two runs, from callgrind_annotate)
#     BINARY   splitproxy release binary (default target/release/splitproxy); only needed
#              when splitproxy is among the peers
#     needs    valgrind, perf (linux-perf), taskset, nginx, haproxy, and the bench set up
#              (bash ../shared/bench/setup.sh: certificates, splitload)
# h2 runs for a time, not a count (splitload's --h2 ignores -n): CG_H2_SMALL_SECS /
# CG_H2_LARGE_SECS (callgrind, default 5 / 25), CG_H2_SYSCALL_SECS (1), CG_H2_CPU_SECS (3);
# every figure is divided by the requests answered in that load (requests still in flight
# at its end move it by well under 1%).
# Environment: CG_SMALL / CG_LARGE (callgrind loads, default 2000 / 22000; CG_MTLS_SMALL /
# CG_MTLS_LARGE for nginx and HAProxy in mTLS, default 1000 / 11000: OpenSSL under
# valgrind is slow, and both runs shrink alike so start-up still cancels), CG_SYSCALL_N
# (default 20000), CG_CPU_N (default 100000), CG_VALGRIND_TIMEOUT (s, default 120), and the
# bench's BENCH_* settings (ports, CPUs: lib/env.sh). Before each proxy it waits while other
# programs keep more than CG_MAX_FOREIGN cores busy (default 0.15), CG_QUIET_BUDGET seconds
# in the whole run at most (default 60), and reports what was left ("other load").
# Generated configs, logs and callgrind files go under a mktemp folder (removed on exit;
# CG_KEEP=1 keeps it and says where). The backends are the bench's (backends.sh): reused
# when already running under $BENCH_STATE, else started under the temporary folder and
# stopped on exit. Every process this script starts is stopped on exit (also on Ctrl-C),
# by PID.
set -euo pipefail

root=$(pwd)
bench=${BENCH_DIR:-$root/../shared/bench}
[[ -f $bench/lib/env.sh ]] || { echo "callgrind.sh: no bench at $bench (set BENCH_DIR)" >&2; exit 1; }
caller_state=${BENCH_STATE:-}
tmp=$(mktemp -d -t callgrind.XXXXXX)
# the adapters write their configs under $BENCH_STATE/<peer>: point them at the temporary folder
export BENCH_STATE=$tmp/state
source "$bench/lib/env.sh"

# --- everything started here is stopped on exit, by PID ---------------------------------
started=()          # PIDs of proxies, perf and load generators still running
own_backends=0
paranoid_old=""
cleanup() {
  local p
  for p in "${started[@]}"; do
    if alive "$p"; then kill -TERM "$p" 2>/dev/null || true; fi
  done
  for p in "${started[@]}"; do
    local i
    for ((i = 0; i < 100; i++)); do alive "$p" || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
  done
  ((own_backends)) && bash "$bench/backends.sh" stop >/dev/null 2>&1 || true
  [[ -n $paranoid_old ]] && echo "$paranoid_old" >/proc/sys/kernel/perf_event_paranoid 2>/dev/null || true
  if [[ ${CG_KEEP:-0} == 1 ]]; then echo "callgrind.sh: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget() { # PID: no longer ours to stop
  local p keep=()
  for p in "${started[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  started=("${keep[@]}")
}
die() { echo "callgrind.sh: $*" >&2; exit 1; }

bin=$root/target/release/splitproxy
modes=plain
peers=nginx,haproxy,splitproxy
top=0
native_only=0
positional=()
while (($#)); do
  case $1 in
    --peers) peers=${2:?--peers needs a list}; shift 2 ;;
    --peers=*) peers=${1#--peers=}; shift ;;
    --native-only) native_only=1; shift ;;
    --top) top=${2:?--top needs a number}; shift 2 ;;
    --top=*) top=${1#--top=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "callgrind.sh: unknown option $1" >&2; exit 2 ;;
    *) positional+=("$1"); shift ;;
  esac
done
for a in "${positional[@]}"; do
  case $a in
    plain|mtls|h2|*,*) modes=$a ;;
    *) bin=$a ;;
  esac
done
IFS=, read -r -a modes <<<"$modes"
IFS=, read -r -a peers <<<"$peers"
small=${CG_SMALL:-2000}
large=${CG_LARGE:-22000}
syscall_n=${CG_SYSCALL_N:-20000}
cpu_n=${CG_CPU_N:-100000}
vg_timeout=${CG_VALGRIND_TIMEOUT:-120}
mtls_small=${CG_MTLS_SMALL:-1000}
mtls_large=${CG_MTLS_LARGE:-11000}
h2_small_secs=${CG_H2_SMALL_SECS:-5}
h2_large_secs=${CG_H2_LARGE_SECS:-25}
h2_syscall_secs=${CG_H2_SYSCALL_SECS:-1}
h2_cpu_secs=${CG_H2_CPU_SECS:-3}
h2_note=""
[[ $top =~ ^[0-9]+$ ]] || { echo "callgrind.sh: --top needs a number" >&2; exit 2; }
((large > small && mtls_large > mtls_small)) || { echo "callgrind.sh: CG_LARGE must exceed CG_SMALL" >&2; exit 2; }

# --- tools -------------------------------------------------------------------------------
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
HAPROXY=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}
need=(perf taskset awk)
((native_only)) || need+=(valgrind)
for t in "${need[@]}"; do
  command -v "$t" >/dev/null || die "needs $t (apt-get install $(case $t in perf) echo linux-perf ;; taskset) echo util-linux ;; *) echo "$t" ;; esac))"
done
[[ -x $SPLITLOAD ]] || die "no load generator at $SPLITLOAD (run bash $bench/setup.sh)"
[[ -s $BENCH_CERTS/ca.pem ]] || die "no bench certificates in $BENCH_CERTS (run bash $bench/setup.sh)"
for p in "${peers[@]}"; do
  case $p in
    nginx) [[ -x $NGINX ]] || die "nginx not installed ($NGINX)" ;;
    haproxy) [[ -x $HAPROXY ]] || die "haproxy not installed ($HAPROXY)" ;;
    splitproxy) [[ -x $bin ]] || die "no splitproxy binary at $bin (cargo build --release, or pass BINARY)" ;;
    *) die "unknown peer $p (nginx, haproxy, splitproxy)" ;;
  esac
done
for m in "${modes[@]}"; do [[ $m == plain || $m == mtls || $m == h2 ]] || die "unknown mode $m (plain | mtls | h2)"; done
# tracepoints need perf_event_paranoid <= -1 for a non-root user, or root with a mounted
# tracefs: try once, lower the setting only if that is what stops perf (restored on exit)
if ! perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>"$tmp/perf-check.log"; then
  if [[ -w /proc/sys/kernel/perf_event_paranoid ]]; then
    paranoid_old=$(</proc/sys/kernel/perf_event_paranoid)
    echo -1 >/proc/sys/kernel/perf_event_paranoid
  fi
  perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>"$tmp/perf-check.log" ||
    die "perf cannot count raw_syscalls:sys_enter: $(tail -n 3 "$tmp/perf-check.log")"
fi
# the per-call breakdown: the calls a proxy's request path makes, those this kernel traces
breakdown=()
# (a fixed list: `syscalls:sys_enter_*` takes perf ~15 s to open; what the list misses shows as "other")
for s in read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait epoll_pwait2 \
  epoll_ctl futex accept accept4 close shutdown socket connect getsockopt setsockopt ioctl fcntl \
  poll ppoll io_uring_enter sched_yield clock_gettime clock_nanosleep nanosleep getpid gettid \
  rt_sigprocmask madvise mmap munmap mprotect brk getrandom timerfd_settime eventfd2; do
  for base in /sys/kernel/tracing /sys/kernel/debug/tracing; do
    if [[ -d $base/events/syscalls/sys_enter_$s ]]; then breakdown+=("$s"); break; fi
  done
done
clk_tck=$(getconf CLK_TCK)

# --- backends ----------------------------------------------------------------------------
if [[ -n $caller_state ]] && [[ -n $(BENCH_STATE=$caller_state bash "$bench/backends.sh" pid) ]]; then
  : # the caller's backends serve these ports: reuse them, leave them running
else
  for port in "$BENCH_V1_PORT" "$BENCH_V2_PORT" "$BENCH_V3_PORT" "$BENCH_V1_TLS_PORT"; do
    port_free "$port" || die "backend port $port is taken by another program (set BENCH_V*_PORT)"
  done
  own_backends=1
  bash "$bench/backends.sh" start >/dev/null
fi

# --- one proxy ---------------------------------------------------------------------------
# proxy_cmd PEER MODE: writes the bench's config for PEER under $tmp and sets CMD (the
# proxy in the foreground, one process, one worker) and STOP_SIG (a signal on which it
# exits through its normal path, so that callgrind writes its counts).
proxy_cmd() {
  local peer=$1 mode=$2 d
  # h2 is the bench's mtls-h2: the mTLS config (ALPN offers h2), the client picks h2
  [[ $mode == h2 ]] && mode=mtls
  case $peer in
    nginx)
      bash "$bench/proxies/nginx.sh" config "$mode" 50,50 >/dev/null
      d=$BENCH_STATE/nginx
      CMD=("$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" -g 'daemon off; master_process off;')
      "${CMD[@]}" -t -q || die "nginx rejects the bench config ($d/nginx.conf)"
      STOP_SIG=TERM ;;
    haproxy)
      bash "$bench/proxies/haproxy.sh" config "$mode" 50,50 >/dev/null
      d=$BENCH_STATE/haproxy
      CMD=("$HAPROXY" -db -f "$d/haproxy.cfg")
      "$HAPROXY" -c -q -f "$d/haproxy.cfg" || die "haproxy rejects the bench config ($d/haproxy.cfg)"
      STOP_SIG=USR1 ;;  # soft stop: HAProxy releases everything and exits
    splitproxy)
      d=$BENCH_STATE/splitproxy
      SPLITPROXY_BIN=$bin bash "$bench/proxies/splitproxy.sh" config "$mode" 50,50 >/dev/null
      CMD=("$bin" run --config "$d/splitproxy.yaml")
      if timeout 5 "$bin" run --help 2>&1 | grep -q -- '--workers'; then CMD+=(--workers 1); fi
      STOP_SIG=INT ;;
  esac
}
export SPLITPROXY_WORKERS=1   # exported, not `env VAR=1 bin`: valgrind must see the proxy itself

LOAD_URL=""
LOAD_TLS=()
LOAD_CONNS=(-c 64)
LOADED=0
load() { # N SECS: N requests of `splitload -c 64`, keep-alive, on the client core; h2: 8
  # connections x 8 streams for SECS seconds (splitload's --h2 does not stop at -n: its
  # connections reconnect until -d ends). LOADED = the requests answered.
  local count=(-n "$1" -d 600)
  [[ $mode == h2 ]] && count=(-d "$2")
  taskset -c "$BENCH_CLIENT_CPU" "$SPLITLOAD" "$LOAD_URL" "${LOAD_CONNS[@]}" "${count[@]}" -w 0 \
    --host "$BENCH_HOST" --timeout 60 "${LOAD_TLS[@]}" >"$tmp/load.json" 2>"$tmp/load.err" &
  local pid=$!
  started+=("$pid")
  wait "$pid" || die "splitload failed: $(tail -n 3 "$tmp/load.err")"
  forget "$pid"
  # a proxy answering errors would be measured doing something else: every request must be a 200
  if [[ $mode == h2 ]]; then
    LOADED=$(sed -n 's/.*"responses_incl_warmup":\([0-9]*\).*/\1/p' "$tmp/load.json")
  else
    grep -q "\"ok\":$1," "$tmp/load.json" && LOADED=$1 || LOADED=0
  fi
  [[ $LOADED =~ ^[0-9]+$ ]] && ((LOADED > 0)) && grep -q '"errors_total":0,' "$tmp/load.json" ||
    die "not every request succeeded through $peer ($mode): $(head -c 600 "$tmp/load.json")"
}

PROXY_PID=""
launch() { # LOG PREFIX... : starts the proxy (CMD) behind PREFIX, waits for its port
  local log=$1; shift
  port_free "$BENCH_PROXY_PORT" || die "port $BENCH_PROXY_PORT is taken by another program (set BENCH_PROXY_PORT)"
  taskset -c "$BENCH_PROXY_CPU" "$@" "${CMD[@]}" </dev/null >"$log" 2>&1 &
  PROXY_PID=$!
  started+=("$PROXY_PID")
  if ! wait_port "$BENCH_PROXY_PORT" "$vg_timeout" 2>/dev/null || ! alive "$PROXY_PID"; then
    die "${CMD[0]##*/} did not come up; last lines of its log:"$'\n'"$(tail -n 15 "$log")"
  fi
}

finish() { # stops the proxy with STOP_SIG and waits (bounded) for it to exit
  kill -"$STOP_SIG" "$PROXY_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < vg_timeout * 10; i++)); do alive "$PROXY_PID" || break; sleep 0.1; done
  if alive "$PROXY_PID"; then
    kill -KILL "$PROXY_PID" 2>/dev/null || true
    echo "callgrind.sh: ${CMD[0]##*/} did not exit on SIG$STOP_SIG within ${vg_timeout}s" >&2
  fi
  wait "$PROXY_PID" 2>/dev/null || true
  forget "$PROXY_PID"
}

instructions() { # N SECS: sets TOTAL, the user-space instructions of the proxy serving N
  # requests (h2: SECS seconds of load; COUNT = the requests answered)
  # (a plain call, not $(...): a subshell would hide the PIDs it starts from the cleanup)
  local n=$1 f
  f=$tmp/cg.$peer.$mode.$n
  launch "$tmp/valgrind.$peer.$mode.$n.log" valgrind --tool=callgrind --callgrind-out-file="$f"
  load "$n" "$2"
  COUNT=$LOADED
  finish
  TOTAL=$(awk '/^(summary|totals):/ { print $2; exit }' "$f" 2>/dev/null || true)
  [[ $TOTAL =~ ^[0-9]+$ ]] || die "no callgrind totals for $peer $mode ($n requests); see $tmp/valgrind.$peer.$mode.$n.log (CG_KEEP=1)"
}

top_functions() { # SMALL-FILE LARGE-FILE REQUESTS: the TOP functions by self cost per request
  local a=$1 b=$2 n=$3
  command -v callgrind_annotate >/dev/null || { echo "(no callgrind_annotate: --top skipped)"; return 0; }
  callgrind_annotate --threshold=100 --auto=no "$a" >"$a.txt" 2>/dev/null || return 0
  callgrind_annotate --threshold=100 --auto=no "$b" >"$b.txt" 2>/dev/null || return 0
  "$BENCH_PYTHON" - "$a.txt" "$b.txt" "$n" "$top" <<'PY'
import re, sys
line = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+(.*\S)\s*$")
def costs(path):
    out, objs = {}, {}
    for l in open(path, errors="replace"):
        m = line.match(l)
        if not m or m.group(2) == "PROGRAM TOTALS":
            continue
        key = m.group(2)
        # "file:function [object]" -> "function": callgrind lists code inlined from other
        # files under the same function once per file, with or without the object
        m2 = re.match(r"^(.*?[^:]):(?!:)(.*)$", key)
        if m2:
            key = m2.group(2)
        m3 = re.match(r"^(.*?) \[(.*)\]$", key)
        if m3:
            key = m3.group(1)
            objs[key] = m3.group(2).rsplit("/", 1)[-1]
        out[key] = out.get(key, 0) + int(m.group(1).replace(",", ""))
    return out, objs
(small, o1), (large, o2) = costs(sys.argv[1]), costs(sys.argv[2])
objs = {**o1, **o2}
n, top = int(sys.argv[3]), int(sys.argv[4])
diff = sorted(((large.get(k, 0) - small.get(k, 0)) / n, k) for k in set(small) | set(large))
for per, k in sorted(diff, reverse=True)[:top]:
    obj = f" ({objs[k]})" if k in objs else ""
    print(f"| {per:.0f} | `{k}`{obj} |")
PY
}

busy_cores() { # how many cores the machine kept busy over the next 0.5 s (all programs)
  local l0 l1
  l0=$(head -n 1 /proc/stat); sleep 0.5; l1=$(head -n 1 /proc/stat)
  awk -v a="$l0" -v b="$l1" -v n="$(nproc)" 'BEGIN {
    split(a, x); split(b, y); busy = 0; all = 0
    for (i = 2; i <= 9; i++) { d = y[i] - x[i]; all += d; if (i != 5 && i != 6) busy += d }
    printf "%.2f", (all > 0 ? n * busy / all : 0) }'
}

# quiet: before each proxy, wait (out of CG_QUIET_BUDGET seconds for the whole run) while
# other programs keep more than CG_MAX_FOREIGN cores busy; OTHER = what was left busy
quiet_left=${CG_QUIET_BUDGET:-60}
quiet() {
  local t0=$SECONDS
  OTHER=$(busy_cores)
  while awk -v b="$OTHER" -v m="${CG_MAX_FOREIGN:-0.15}" 'BEGIN { exit !(b > m) }' &&
    ((SECONDS - t0 < quiet_left)); do
    sleep 1
    OTHER=$(busy_cores)
  done
  quiet_left=$((quiet_left - (SECONDS - t0)))
  ((quiet_left > 0)) || quiet_left=0
}

cpu_ticks() { # PID -> "utime stime" in clock ticks, all threads of the process
  local line
  line=$(<"/proc/$1/stat")
  line=${line##*) }
  # shellcheck disable=SC2086
  set -- $line
  echo "${12} ${13}"
}

native() { # native run: sets SYS (per request, 2 decimals), BREAK (per call), USER_US, KERN_US
  launch "$tmp/native.$peer.$mode.log"
  load 2000 1   # warm-up: upstream connections opened, caches and allocator warm
  local ctl=$tmp/perf.ctl ack=$tmp/perf.ack out=$tmp/perf.$peer.$mode ev=(-e raw_syscalls:sys_enter) s
  rm -f "$ctl" "$ack"
  mkfifo "$ctl" "$ack"
  exec {ctl_fd}<>"$ctl" {ack_fd}<>"$ack"
  for s in "${breakdown[@]}"; do ev+=(-e "syscalls:sys_enter_$s"); done
  perf stat -x, -o "$out" -D -1 --control "fd:$ctl_fd,$ack_fd" "${ev[@]}" -p "$PROXY_PID" 2>"$out.log" &
  local perf_pid=$! a
  started+=("$perf_pid")
  echo enable >&"$ctl_fd"
  read -r -t 30 -u "$ack_fd" a || die "perf did not start counting"
  load "$syscall_n" "$h2_syscall_secs"
  local calls_n=$LOADED
  echo disable >&"$ctl_fd"
  read -r -t 30 -u "$ack_fd" a || die "perf did not stop counting"
  kill -INT "$perf_pid"
  wait "$perf_pid" 2>/dev/null || true
  forget "$perf_pid"
  exec {ctl_fd}>&- {ack_fd}>&-
  SYS=$(awk -F, -v n="$calls_n" '$3 == "raw_syscalls:sys_enter" { printf "%.2f", $1 / n }' "$out")
  BREAK=$(awk -F, -v n="$calls_n" '$3 ~ /^syscalls:sys_enter_/ && $1 > 0 {
      sub(/^syscalls:sys_enter_/, "", $3); printf "%s %.2f\n", $3, $1 / n }' "$out" |
    sort -k2,2 -rn | awk -v all="$SYS" '$2 >= 0.01 { printf "%s%s %s", sep, $1, $2; sep = ", "; sum += $2 }
      END { if (all - sum >= 0.01) printf "%sother %.2f", sep, all - sum }')
  [[ -n $SYS ]] || die "perf counted nothing for $peer $mode; see $out (CG_KEEP=1)"
  local u0 s0 u1 s1
  read -r u0 s0 < <(cpu_ticks "$PROXY_PID")
  load "$cpu_n" "$h2_cpu_secs"
  local cpu_req=$LOADED
  read -r u1 s1 < <(cpu_ticks "$PROXY_PID")
  RPS=$(sed -n 's/.*"rps":\([0-9.]*\).*/\1/p' "$tmp/load.json" | awk '{ printf "%.0f", $1 }')
  finish
  USER_US=$(awk -v t="$((u1 - u0))" -v hz="$clk_tck" -v n="$cpu_req" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  KERN_US=$(awk -v t="$((s1 - s0))" -v hz="$clk_tck" -v n="$cpu_req" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
}

group() { # 1234567 -> 1 234 567 (as the README writes figures)
  echo "$1" | sed -e :a -e 's/^\([0-9]\+\)\([0-9]\{3\}\)/\1 \2/; ta'
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
rows=()
tops=()
details=()
mtls_note=""
for mode in "${modes[@]}"; do
  LOAD_URL=http://127.0.0.1:$BENCH_PROXY_PORT/
  LOAD_TLS=()
  LOAD_CONNS=(-c 64)
  [[ $mode == h2 ]] && LOAD_CONNS=(--h2 -c 8 --streams 8)
  if [[ $mode == mtls || $mode == h2 ]]; then
    LOAD_URL=https://127.0.0.1:$BENCH_PROXY_PORT/
    LOAD_TLS=(--cert "$BENCH_CERTS/client.pem" --key "$BENCH_CERTS/client-key.pem" --cacert "$BENCH_CERTS/ca.pem" --sni localhost)
  fi
  for peer in "${peers[@]}"; do
    proxy_cmd "$peer" "$mode"
    quiet
    echo "callgrind.sh: $peer $mode (at ${SECONDS}s; other programs busy: $OTHER cores) ..." >&2
    n_lo=$small n_hi=$large
    # OpenSSL's TLS under valgrind is what makes a full run slow: nginx and HAProxy count
    # half as many requests in mTLS (both runs shrink, so start-up still cancels out)
    if [[ $mode != plain && $peer != splitproxy ]] && ((!native_only)); then
      n_lo=$mtls_small n_hi=$mtls_large
      mtls_note=" (nginx and HAProxy over TLS: $n_lo and $n_hi)"
    fi
    ipr=-
    if ((!native_only)); then
      instructions "$n_lo" "$h2_small_secs"; lo=$TOTAL c_lo=$COUNT
      instructions "$n_hi" "$h2_large_secs"; hi=$TOTAL c_hi=$COUNT
      ((c_hi > c_lo)) || die "the larger load answered no more requests ($c_hi) than the smaller ($c_lo)"
      ipr=$(group "$(( (hi - lo) / (c_hi - c_lo) ))")
      if [[ $mode == h2 ]]; then h2_note+=" h2 $peer: $c_lo and $c_hi requests in ${h2_small_secs} s and ${h2_large_secs} s;"; fi
    fi
    if ((top > 0 && !native_only)); then
      tops+=("" "Top $top functions of $peer ($mode) by self cost, instructions per request:" ""
        "| instr/req | function |" "| ---: | --- |"
        "$(top_functions "$tmp/cg.$peer.$mode.$n_lo" "$tmp/cg.$peer.$mode.$n_hi" "$((c_hi - c_lo))")")
    fi
    native
    total_us=$(awk -v u="$USER_US" -v k="$KERN_US" 'BEGIN { printf "%.1f", u + k }')
    share=$(awk -v u="$USER_US" -v k="$KERN_US" 'BEGIN { if (u + k > 0) printf "%.0f%%", 100 * u / (u + k); else print "-" }')
    kshare=$(awk -v u="$USER_US" -v k="$KERN_US" 'BEGIN { if (u + k > 0) printf "%.0f%%", 100 * k / (u + k); else print "-" }')
    rows+=("| $peer | $mode | $ipr | $SYS | $total_us | $USER_US | $KERN_US | $share | $kshare | $(group "$RPS") | $OTHER |")
    details+=("| $peer | $mode | ${BREAK:-(not traced)} |")
  done
done

echo
echo "Per proxied request: splitload -c 64 (h2: --h2 -c 8 --streams 8), keep-alive, split 50/50, one worker each (splitproxy: $bin)."
echo "instr/req: callgrind, (total($large) - total($small)) / $((large - small)) requests$mtls_note;$h2_note syscalls/req: perf stat"
echo "over $syscall_n requests; CPU: utime and stime (/proc/PID/stat) over $cpu_n requests, native, the proxy"
echo "on CPU $BENCH_PROXY_CPU and the load generator and backends on CPU $BENCH_CLIENT_CPU. Load average $load_start at the"
echo "start, $(cut -d' ' -f1-3 /proc/loadavg) at the end ($SECONDS s). Other programs on the machine move the CPU figures"
echo "and splitproxy's instruction count (nginx's and HAProxy's hardly), so compare rows of one run. Other load ="
echo "cores other programs kept busy just before that proxy ran (waited for < ${CG_MAX_FOREIGN:-0.15}, ${CG_QUIET_BUDGET:-60} s in all at most)."
echo
echo "| proxy | mode | user instr/req | syscalls/req | CPU µs/req | user µs | kernel µs | user | kernel | req/s (native) | other load |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${rows[@]}"
if ((${#breakdown[@]})); then
  echo
  echo "| proxy | mode | system calls per request, by call (>= 0.01) |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${details[@]}"
fi
((${#tops[@]})) && printf '%s\n' "${tops[@]}"
exit 0
