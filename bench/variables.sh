#!/usr/bin/env bash
# variables.sh: what a kv_var costs next to a map (issue 11).  One nginx (2
# workers, fsync=off) answers `return 200 $kv_value` (kv_var of a key with a
# 100-byte value) and `return 200 $map_value` (a map whose default is the
# same 100 bytes); wrk -t2 -c64 takes turns on the two, ROUNDS times, and
# the medians are compared.  Target: kv_var at least 0.8x the map.
#
# Environment: ROUNDS (3), DURATION (5 s), and those of lib.sh.

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
TARGET=0.8

need wrk curl awk

value=$(printf 'v%.0s' $(seq 1 100))
out=$(out_dir variables)
trap kv_stop EXIT

KV_HTTP_EXTRA="kv_var \$kv_value \"bench:value\" zone=store;
    map \$host \$map_value { default \"$value\"; }" \
KV_SERVER_EXTRA='location = /kv-var { return 200 $kv_value; }
        location = /map-var { return 200 $map_value; }' \
    kv_start off

machine
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"

curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
    --data-binary "$value" "$kv_url/db/bench:value"

for path in kv-var map-var; do
    [[ $(curl -sf "$kv_url/$path") == "$value" ]] \
        || die "/$path does not answer the 100-byte value"
done

# rps PATH: requests/s of one wrk run, its output kept in $out
rps() {
    wrk -t2 -c64 -d"${DURATION}s" "$kv_url/$1" > "$out/$1-$round.txt"
    awk '/^Requests\/sec:/ { print $2 }' "$out/$1-$round.txt"
}

kv=() map=()
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then
        kv+=("$(rps kv-var)"); map+=("$(rps map-var)")
    else
        map+=("$(rps map-var)"); kv+=("$(rps kv-var)")
    fi
    printf 'round %d: kv_var %s req/s, map %s req/s\n' "$round" \
        "${kv[-1]}" "${map[-1]}"
done

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 }
    END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

kvm=$(median "${kv[@]}")
mapm=$(median "${map[@]}")

awk -v k="$kvm" -v m="$mapm" -v t="$TARGET" 'BEGIN {
    r = k / m;
    printf "%s: return 200 $kv_value %.0f req/s, return 200 $map_value " \
           "%.0f req/s: %.2fx (target >= %.1fx)\n",
           (r >= t) ? "PASS" : "FAIL", k, m, r, t;
    exit (r >= t) ? 0 : 1
}'
