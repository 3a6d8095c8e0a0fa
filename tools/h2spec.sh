#!/usr/bin/env bash
# h2spec.sh: HTTP/2 conformance of splitproxy, with h2spec (github summerwind/h2spec, Go)
# over TLS with ALPN h2, against the proxy in front of one backend.
#
#   bash tools/h2spec.sh H2SPEC_SOURCE [h2spec flags...]     (from the project root)
#
# H2SPEC_SOURCE: h2spec's source, as a bare git directory (a mirror of the repository) or
# a checked-out tree. It is built with Debian's Go and its packaged libraries, in GOPATH
# mode, without the module proxy; once:
#   apt-get install -y golang-go golang-golang-x-net-dev golang-github-spf13-cobra-dev \
#     golang-github-fatih-color-dev golang-github-mattn-go-colorable-dev \
#     golang-github-mattn-go-isatty-dev golang-golang-x-sys-dev
# The proxy is target/debug/splitproxy (cargo build), or $SPLITPROXY_BIN: TLS from a
# throw-away `certs init`, clientAuth none (h2spec has no client certificate), routing
# host 127.0.0.1 to a python3 http.server. Prints h2spec's report; exits with its status.
set -euo pipefail
src=${1:?usage: bash tools/h2spec.sh H2SPEC_SOURCE [h2spec flags...]}
shift
root=$(pwd)
bin=${SPLITPROXY_BIN:-$root/target/debug/splitproxy}
[[ -x $bin ]] || { echo "no proxy binary at $bin: cargo build first" >&2; exit 1; }
command -v go >/dev/null || { echo "go not found: apt-get install golang-go (see above)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# build h2spec
pkg=$work/gopath/src/github.com/summerwind/h2spec
mkdir -p "$pkg"
if git --git-dir="$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  git --git-dir="$src" archive HEAD | tar -x -C "$pkg"
else
  cp -r "$src"/. "$pkg"
fi
(cd "$pkg" && GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOFLAGS= GOPROXY=off \
  go build -o "$work/h2spec" ./cmd/h2spec)

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# one backend
mkdir -p "$work/www"
echo "h2spec backend" >"$work/www/index.html"
backend=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$backend" >"$work/backend.log" 2>&1 &
pids+=($!)
wait_port "$backend"

# the proxy
"$bin" certs init --dir "$work/certs" >/dev/null
listen=$(free_port)
admin=$(free_port)
cat >"$work/splitproxy.yaml" <<EOF
apiVersion: splitproxy.dev/v1alpha1
kind: Proxy
metadata:
  name: h2spec
spec:
  listen: 127.0.0.1:$listen
  admin: 127.0.0.1:$admin
  tls:
    cert: certs/server.pem
    key: certs/server-key.pem
    clientAuth: none
  services:
    backend: ["127.0.0.1:$backend"]
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: h2spec
  namespace: default
spec:
  service: 127.0.0.1
  backends:
  - service: backend
    weight: 1
EOF
"$bin" --log warn run --config "$work/splitproxy.yaml" --workers 1 >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_port "$listen"

status=0
"$work/h2spec" --tls --insecure --host 127.0.0.1 --port "$listen" --timeout 5 "$@" || status=$?
if [[ -s $work/proxy.log ]]; then
  echo "--- proxy log"
  tail -n 20 "$work/proxy.log"
fi
exit "$status"
