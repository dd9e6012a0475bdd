#!/usr/bin/env bash
# list.sh: what a listing page costs in index=hash, the only mode so far
# (issue 12).  The hash index keeps no order, so every page is one pass
# over the whole index; this measures that pass and what it does to
# writers running meanwhile.
#
# One nginx, 2 workers, fsync=off, a 64m zone (about 1.5 million keys),
# kv_list on; KEYS (1000000) keys of 16 bytes ("k" and 15 digits) with
# 100-byte values, loaded with kv.lua.  Then:
#   pages   PAGES (20) pages of 1000 keys from the start, by cursor, and
#           PAGES pages of 1000 from a random start=: time per page
#           (curl's time_total), median and max
#   writers 10 s of SET 100 B (wrk, 2 threads, 16 connections) alone,
#           then 10 s with one client paging without pause: SET rate and
#           latency percentiles of both
# Environment: KEYS, PAGES, and those of lib.sh.

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEYS=${KEYS:-1000000}
PAGES=${PAGES:-20}
KV_ZONE=${KV_ZONE_LIST:-64m}
THREADS=2

need wrk curl jq awk

out=$(out_dir list)
trap 'kv_stop; [[ -n ${pager:-} ]] && kill "$pager" 2>/dev/null; true' EXIT

echo "list: $(date -u '+%F %T UTC')"
machine
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

KV_SERVER_EXTRA="kv_list on;" kv_start off compact_ratio=100

t0=$(date +%s.%N)
wrk -t$THREADS -c16 -d3600s -s "$bench_dir/kv.lua" "$kv_url/db/" \
    -- op=post keys="$KEYS" klen=16 vsize=100 nthreads=$THREADS \
    > "$out/wrk-load.txt" &
w=$!
kv_wait ".puts >= $KEYS" 900 || { kill -INT $w; exit 1; }
kill -INT $w
wait $w || true
echo "loaded $(kv_status .keys) keys in $(since "$t0") s"

# page_times FIRST_QUERY: PAGES pages by cursor; prints one time per line
page_times() {
    local q=$1 i cursor body t
    cursor=""
    for ((i = 0; i < PAGES; i++)); do
        body=$(curl -s -w '\n%{time_total}' \
                    "$kv_url/db/?limit=1000$q${cursor:+&cursor=$cursor}")
        t=$(tail -1 <<< "$body")
        cursor=$(head -n -1 <<< "$body" | jq -r '.cursor // empty')
        [[ $(head -n -1 <<< "$body" | jq '.keys | length') == 1000 ]] \
            || die "a page without 1000 keys: $(head -c 200 <<< "$body")"
        echo "$t"
        [[ -n $cursor ]] || break
    done
}

summary() {
    sort -n | awk '{ t[NR] = $1 * 1000 }
        END { printf "median %.1f ms, max %.1f ms (%d pages)",
              t[int((NR + 1) / 2)], t[NR], NR }'
}

echo "pages of 1000 keys, from the start:  $(page_times "" | summary)"
echo "pages of 1000 keys, from start=k5...: $(page_times \
    "&start=k$(printf %015d $((KEYS / 2)))" | summary)"

# writers alone, then with a client paging without pause
set_run() {
    wrk -t$THREADS -c16 -d10s --latency -s "$bench_dir/kv.lua" \
        "$kv_url/db/" -- op=set keys="$KEYS" klen=16 vsize=100 \
        nthreads=$THREADS > "$out/wrk-$1.txt"
    awk -v name="$1" '/Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
        END { printf "  SET %-13s %8.0f req/s, p50 %s, p99 %s\n",
              name, rps, p50, p99 }' "$out/wrk-$1.txt"
}

echo "writers (SET 100 B, 2 threads, 16 connections, 10 s):"
set_run alone
( while :; do
      curl -s -o /dev/null "$kv_url/db/?limit=1000&start=k$RANDOM"
  done ) &
pager=$!
set_run while-paging
kill "$pager"; wait "$pager" 2>/dev/null || true; pager=""
echo "raw output: $out"
