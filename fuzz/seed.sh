#!/bin/sh
# Seed the fuzz corpora from tests/fixtures into fuzz/corpus/<target>/ (not committed;
# libFuzzer adds what it finds there). Safe to run again.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/../tests/fixtures"
for t in config_bytes config_yaml hosts h1_scan path; do mkdir -p "$here/corpus/$t"; done
# the loader targets start from every fixture file (config_yaml decodes any bytes to a
# model; its model also draws whole fixtures, compiled in, and edits them)
cp "$fixtures"/*.yaml "$here/corpus/config_bytes/"
cp "$fixtures"/*.yaml "$here/corpus/config_yaml/"
# hosts: each root and backend service of the fixtures in the forms clients send
grep -ho 'service: *[A-Za-z0-9.-]*' "$fixtures"/*.yaml | sed 's/service: *//' | sort -u |
while read -r s; do
    upper=$(printf '%s' "$s" | tr 'a-z' 'A-Z')
    for form in "$s" "$s.default" "$s.default.svc.cluster.local" "$s:8443" "$upper.default.svc." \
        "prod
$s.prod.svc"; do
        printf '%s' "$form" > "$here/corpus/hosts/$(printf '%s' "$form" | cksum | cut -d' ' -f1)"
    done
done
printf '%s' '[::1]:8443' > "$here/corpus/hosts/ipv6"
# h1_scan: a cut byte, then request streams (the forms tests/it/hostile.rs sends)
n=0
for r in 'GET / HTTP/1.1\r\nHost: a\r\n\r\n' \
    'POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbodyGET / HTTP/1.1\r\nHost: a\r\n\r\n' \
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nwxyz\r\n0\r\nX-T: 1\r\n\r\n' \
    'GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n' \
    'GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nframes' \
    'CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n' \
    'GET / HTTP/1.0\r\n X: folded\r\n\r\n'; do
    n=$((n + 1))
    printf "\\$(printf '%03o' $((n * 13)))$r" > "$here/corpus/h1_scan/seed$n"
done
# path: paths with and without the forms normalisation handles
for p in / /api/items '/api/../admin' '/api/%2e%2E/admin' '/a/./b/../c?q=1' '/%61%2Fb' '/a\\b' '//x' '/..'; do
    printf '%s' "$p" > "$here/corpus/path/$(printf '%s' "$p" | cksum | cut -d' ' -f1)"
done
echo "seeded: $(ls "$here/corpus/config_bytes" | wc -l) config_bytes," \
    "$(ls "$here/corpus/config_yaml" | wc -l) config_yaml, $(ls "$here/corpus/hosts" | wc -l) hosts," \
    "$(ls "$here/corpus/h1_scan" | wc -l) h1_scan, $(ls "$here/corpus/path" | wc -l) path"
