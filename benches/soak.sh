#!/usr/bin/env bash
# Soak benchmark (not a test): the release proxy for 10 minutes (--minutes N) at steady
# mTLS load, with a weight reload every second, a backend SIGKILLed and restarted every
# 30 s and a server certificate rotation every minute; one row per minute: requests,
# errors by kind, p99, the proxy's RSS and open file descriptors. `--help` for the flags.
#
# Needs: target/release/splitproxy (nice -n 15 cargo build --release), nginx, openssl,
# python3 (standard library only); --netns/--netem need root and iproute2.
# The work is in benches/soak/soak.py; it stops every process it started on exit, on
# Ctrl-C/SIGTERM/SIGHUP, and (through the kernel) if it is itself killed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
[[ -x $py ]] || py=$(command -v python3)
exec "$py" "$here/soak/soak.py" "$@"
