#!/usr/bin/env bash
# A SPLITPROXY_BIN for ../shared/bench that measures splitproxy with `accessLog: json`:
# it adds the field to the Proxy document the bench starts it with, then execs the real
# binary (same process, so the bench's CPU accounting sees only splitproxy). The log
# lines go to a file of their own, $SPLITPROXY_ACCESS_LOG_FILE (default
# /tmp/splitproxy-access.log), outside the watched configuration folder: the bench sends
# stdout into a log inside it, and every write there would also wake the file watcher.
#   SPLITPROXY_BIN=$PWD/tools/accesslog-bin.sh bash ../shared/bench/run.sh ...
# SPLITPROXY_REAL names the binary (default: target/release/splitproxy of this checkout).
set -euo pipefail
real=${SPLITPROXY_REAL:-"$(cd "$(dirname "$0")/.." && pwd)/target/release/splitproxy"}
if [[ ${1:-} == run ]]; then
  args=("$@")
  for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ ${args[i]} == --config ]]; then
      conf=${args[i + 1]}
      # the first `spec:` is the Proxy document's
      grep -q '^  accessLog:' "$conf" || sed -i '0,/^spec:$/s//spec:\n  accessLog: json/' "$conf"
    fi
  done
fi
if [[ ${1:-} == run ]]; then
  exec "$real" "$@" >>"${SPLITPROXY_ACCESS_LOG_FILE:-/tmp/splitproxy-access.log}"
fi
exec "$real" "$@"
