#!/usr/bin/env bash
# sorted.sh: index=sorted through nginx at KEYS keys (default 10,000,000;
# issue 12 sets its targets at 50,000,000), beside index=hash on the same
# data in the same run (issue 12).
#
#   1. build/bench/sorted KEYS DIR: the store, loaded in the engine with a
#      64m zone's index (its own figures: load, write amplification,
#      memory per key, start-up, lookups without HTTP);
#   2. nginx, index=sorted, kv_zone 64m on DIR: start-up (recovery ms),
#      random GET hits and misses (wrk, get.lua), a listing page of 1000;
#   3. nginx, index=hash on the same DIR, a zone big enough for every key:
#      the same GETs; 2 and 3 take turns ROUNDS times;
#   4. SET 100 B (fsync=off) for SET_SECONDS over the KEYS keys, in each
#      mode, in turns ROUNDS times: index=sorted merges meanwhile,
#      index=hash (on a copy of DIR) does not; a listing page again after
#      the last.
# Ratios of the rounds' medians are printed with PASS/FAIL against the
# targets; warm page cache.  Environment: KEYS, DURATION (wrk seconds per
# GET run, 10), SET_SECONDS (30), PAGES (listing pages timed, 21), ROUNDS
# (3), and those of lib.sh.

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEYS=${KEYS:-10000000}
DURATION=${DURATION:-10}
SET_SECONDS=${SET_SECONDS:-30}
PAGES=${PAGES:-21}
ROUNDS=${ROUNDS:-3}
THREADS=2

need wrk curl jq awk ss

out=$(out_dir sorted)
data=$KV_TMP/kv-sorted-bench-$$
trap 'kv_stop; rm -rf "$data" "$data-hash"' EXIT

echo "sorted: $(date -u '+%F %T UTC')"
machine
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# the module and the engine's loader, current (a stale loader measured
# old code once)
make -C "$repo_dir" -s build "$repo_dir/build/bench/sorted" \
    > "$out/build.log" 2>&1 ||
    { tail -20 "$out/build.log" >&2; die "make failed"; }

mkdir -p "$data"
"$repo_dir/build/bench/sorted" "$KEYS" "$data" | tee "$out/engine.txt" \
    || true

# the targets are for a warm page cache: whatever the load left there, the
# store's files are read once
cat "$data"/* > /dev/null 2>&1 || true

# rps FILE: wrk's requests per second
rps() { awk '/Requests\/sec/ { print $2 }' "$1"; }

get_run() {
    local name=$1 from=$2
    wrk -t$THREADS -c64 -d${DURATION}s --latency -s "$bench_dir/get.lua" \
        "$kv_url/db/" -- keys="$KEYS" klen=16 from="$from" \
        > "$out/wrk-$name.txt"
    if grep -q "Non-2xx" "$out/wrk-$name.txt" && [[ $from == 0 ]]; then
        die "$name: some GETs of present keys failed"
    fi
    echo "  GET $name: $(rps "$out/wrk-$name.txt") req/s, p99 $(awk \
        '/^ +99%/ { print $2 }' "$out/wrk-$name.txt")"
}

# pages: the median time in ms of PAGES listing pages of 1000 keys, each
# from a random key
pages() {
    local i k t=()
    for ((i = 0; i < PAGES; i++)); do
        k=k$(printf %015d $(( (RANDOM * 32768 + RANDOM) % KEYS )))
        t+=("$(curl -s -o /dev/null -w '%{time_total}' \
               "$kv_url/db/?limit=1000&start=$k")")
    done
    printf '%s\n' "${t[@]}" | sort -n | awk '{ v[NR] = $1 }
        END { printf "%.1f", v[int((NR + 1) / 2)] * 1000 }'
}

# conn_split: how wrk's connections are spread over the workers, e.g. "9 7".
# Nothing spreads them evenly (no reuseport, as in nginx.conf.example):
# which worker accepts first decides, and a run's throughput moves with
# the split as much as with the code (bench/README.md, session 31).
conn_split() {
    local pids w
    pids=$(ss -tnpH state established "( sport = :$KV_PORT )" \
           | grep -o 'pid=[0-9]*')
    for w in $(pgrep -P "$kv_pid"); do
        grep -c "pid=$w\$" <<< "$pids" || true
    done | sort -rn | paste -sd' '
}

set_run() {
    local name=$1 w conns
    wrk -t$THREADS -c16 -d${SET_SECONDS}s --latency -s "$bench_dir/kv.lua" \
        "$kv_url/db/" -- op=set keys="$KEYS" klen=16 vsize=100 \
        nthreads=$THREADS > "$out/wrk-$name.txt" &
    w=$!
    sleep 2
    conns=$(conn_split)
    wait "$w"
    echo "  SET $name: $(rps "$out/wrk-$name.txt") req/s, p99 $(awk \
        '/^ +99%/ { print $2 }' "$out/wrk-$name.txt"), non-2xx: $(awk \
        '/Non-2xx/ { print $4 }' "$out/wrk-$name.txt"), connections per" \
        "worker: $conns"
}

zone=$(( (KEYS * 80 / 1048576) + 256 ))m

# serve MODE [DIR]: nginx on DIR (the data), index=sorted in a 64m zone
# or index=hash in one big enough for every key.  index=hash is the figure
# without merges: its own compaction, which the SETs' dead bytes would
# start (compact_dead, 512m by default) and which rewrites the whole log,
# is kept from starting.
serve() {
    if [[ $1 == sorted ]]; then
        KV_ZONE=64m KV_DATA=${2:-$data} KV_SERVER_EXTRA="kv_list on;" \
            kv_start off index=sorted
    else
        KV_ZONE=$zone KV_DATA=${2:-$data} kv_start off index=hash \
            compact_dead=1048576m compact_ratio=100
    fi
}

# The two modes take turns, ROUNDS times, and each ratio is of medians:
# this machine's figures move by up to 40% from one run to the next.
for ((r = 1; r <= ROUNDS; r++)); do
    echo "round $r of GETs:"
    echo " index=sorted, kv_zone 64m:"
    serve sorted
    if ((r == 1)); then
        echo "  start-up: $(kv_status .recovery.ms) ms; $(kv_status \
            .sorted_segments.count) sorted segments in $(kv_status \
            .sorted_segments.runs) runs, $(kv_status \
            .sorted_segments.keys) keys, table files $(kv_status \
            .sorted_segments.table_file_bytes) bytes"
        start_ms=$(kv_status .recovery.ms)
        page=$(pages)
        echo "  a listing page of 1000 keys: median $page ms of $PAGES" \
            "pages (index: $(kv_status .index.keys) keys, $(kv_status \
            .index.masks) masks)"
    fi
    get_run sorted-hit-$r 0
    get_run sorted-miss-$r "$KEYS"
    kv_stop
    echo " index=hash, kv_zone $zone:"
    serve hash
    ((r > 1)) || echo "  start-up: $(kv_status .recovery.ms) ms"
    get_run hash-hit-$r 0
    get_run hash-miss-$r "$KEYS"
    kv_stop
done

# index=hash's SETs stay in its log (it has no merges), more keys than the
# 64m zone holds: index=sorted would first move them into sorted segments
# (README), a full merge of the store at its next start.  So the SETs'
# rounds of index=hash run on a copy of the store as the GETs left it.
cp -a "$data" "$data-hash"
sync
free=$(df -k --output=avail "$KV_TMP" | tail -1)
echo "a copy of the store for index=hash's SETs; $((free / 1048576)) GB free"

for ((r = 1; r <= ROUNDS; r++)); do
    echo "round $r of SETs:"
    echo " index=sorted, kv_zone 64m:"
    serve sorted
    set_run sorted-$r
    echo "  during it: $(kv_status .compaction.runs) merges, $(kv_status \
        .compaction.written_bytes) bytes written by them"
    if ((r == ROUNDS)); then
        page_after=$(pages)
        echo "  after the SETs, a listing page: median $page_after ms" \
            "(index: $(kv_status .index.keys) keys, $(kv_status \
            .index.masks) masks)"
    fi
    kv_stop
    echo " index=hash, kv_zone $zone, the copy:"
    serve hash "$data-hash"
    set_run hash-$r
    echo "  during it: $(kv_status .compaction.runs) compactions"
    kv_stop
done

# median NAME: the median req/s of NAME's rounds
median() {
    local r
    for ((r = 1; r <= ROUNDS; r++)); do
        rps "$out/wrk-$1-$r.txt"
    done | sort -g | awk '{ v[NR] = $1 }
        END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

ratio() {
    awk -v a="$(median "$1")" -v b="$(median "$2")" -v t="$3" \
        -v name="$4" 'BEGIN { r = a / b;
        printf "target %s >= %.1fx: %.0f / %.0f req/s (medians of the " \
               "rounds) = %.2f %s\n", name, t, a, b, r,
               (r >= t ? "PASS" : "FAIL") }'
}

ratio sorted-hit hash-hit 0.7 "GET hits, sorted/hash"
ratio sorted-miss hash-miss 0.9 "GET misses, sorted/hash"
ratio sorted hash 0.8 "SET with merges, sorted/hash"
awk -v p="$page" -v q="$page_after" 'BEGIN {
    printf "target listing page < 10 ms: %.1f after start-up, %.1f after " \
           "the writes %s\n", p, q, (p < 10 && q < 10 ? "PASS" : "FAIL") }'
awk -v s="$start_ms" 'BEGIN { printf "target start-up < 2000 ms: %d %s\n",
    s, (s < 2000 ? "PASS" : "FAIL") }'
echo "raw output: $out"
