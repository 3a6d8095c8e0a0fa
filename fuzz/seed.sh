#!/bin/sh
# Seed the fuzz corpora from tests/fixtures into fuzz/corpus/<target>/ (not committed;
# libFuzzer adds what it finds there). Safe to run again.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/../tests/fixtures"
for t in config_bytes config_yaml hosts; do mkdir -p "$here/corpus/$t"; done
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
echo "seeded: $(ls "$here/corpus/config_bytes" | wc -l) config_bytes," \
    "$(ls "$here/corpus/config_yaml" | wc -l) config_yaml, $(ls "$here/corpus/hosts" | wc -l) hosts"
