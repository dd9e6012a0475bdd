#!/usr/bin/env bash
# putcpu.sh SRC KEYS: where the CPU of a SET goes, index=sorted against
# index=hash (issue 12).  For each of ROUNDS rounds, each mode in turn
# serves a fresh copy of the store in SRC (bench/sorted.c leaves one:
# build/bench/sorted KEYS SRC) and takes SET_SECONDS (20) of SET 100 B
# (fsync=off, wrk 2 threads, 16 connections) over its KEYS keys; the CPU
# seconds of the workers' main threads, of their other threads (the
# thread pool, where merges run) and of wrk, from /proc, per put.  And the
# machine's busy and idle seconds, since a put's CPU and the puts per
# second part ways when something idles.
#
# index=sorted runs in a 64m zone; index=hash in HASH_ZONE (4070m: every
# one of 50 million keys) and with its compaction kept from starting, as
# in bench/sorted.sh.  KV_WORKERS=1 takes the spread of the connections
# over the workers out of the figures (bench/README.md, session 31).
# MODES="sorted" with MODULE set, in turns with another build, compares
# builds.  Environment: SET_SECONDS, ROUNDS (2), MODES ("sorted hash"),
# HASH_ZONE, and those of lib.sh.

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# == 2)) || die "usage: putcpu.sh SRC KEYS"

src=$1
keys=$2
SET_SECONDS=${SET_SECONDS:-20}
ROUNDS=${ROUNDS:-2}
MODES=${MODES:-sorted hash}
HASH_ZONE=${HASH_ZONE:-4070m}
THREADS=2
tick=$(getconf CLK_TCK)

need wrk curl jq awk pgrep
[[ -d $src ]] || die "no store at $src"

copy=$KV_TMP/kv-putcpu-$$
trap 'kv_stop; rm -rf "$copy"' EXIT

echo "putcpu: $(date -u '+%F %T UTC'), $src, $keys keys," \
     "${KV_WORKERS:-2} workers"
machine

# ticks: "MAIN POOL", the CPU ticks of the workers' main threads and of
# their other threads
ticks() {
    local w t main=0 pool=0 v

    for w in $(pgrep -P "$kv_pid"); do
        for t in /proc/"$w"/task/*; do
            v=$(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null || echo 0)
            if [[ ${t##*/} == "$w" ]]; then
                main=$((main + v))
            else
                pool=$((pool + v))
            fi
        done
    done

    echo "$main $pool"
}

# machine: "BUSY IDLE", ticks of all CPUs from /proc/stat
machine_ticks() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat
}

round() {
    local mode=$1 p0 p1 m0 q0 m1 q1 b0 i0 b1 i1 wt

    rm -rf "$copy"
    cp -a "$src" "$copy"

    if [[ $mode == sorted ]]; then
        KV_ZONE=64m KV_DATA=$copy kv_start off index=sorted
    else
        KV_ZONE=$HASH_ZONE KV_DATA=$copy kv_start off index=hash \
            compact_dead=1048576m compact_ratio=100
    fi

    p0=$(kv_status .puts)
    read -r m0 q0 < <(ticks)
    read -r b0 i0 < <(machine_ticks)

    # wrk's ticks: those of the waited children of the shell that ran it
    wt=$(bash -c 'wrk "$@" > "$0"; awk "{ print \$16 + \$17 }" /proc/$$/stat' \
         "$copy.wrk" -t$THREADS -c16 -d"${SET_SECONDS}"s \
         -s "$bench_dir/kv.lua" "$kv_url/db/" -- op=set keys="$keys" \
         klen=16 vsize=100 nthreads=$THREADS)

    read -r m1 q1 < <(ticks)
    read -r b1 i1 < <(machine_ticks)
    p1=$(kv_status .puts)

    awk -v mode="$mode" -v n=$((p1 - p0)) -v m=$((m1 - m0)) \
        -v q=$((q1 - q0)) -v w="$wt" -v t="$tick" -v s="$SET_SECONDS" \
        -v b=$((b1 - b0)) -v i=$((i1 - i0)) \
        -v merges="$(kv_status .compaction.runs)" \
        -v bytes="$(kv_status .compaction.written_bytes)" 'BEGIN {
        printf "  %-6s %7.0f puts/s; us a put: workers %5.2f, pool %4.2f, " \
               "wrk %4.2f, all %5.2f; machine busy %.0f s, idle %.0f s; " \
               "%d merges, %.0f MB\n", mode, n / s, m / t / n * 1e6,
               q / t / n * 1e6, w / t / n * 1e6, (m + q + w) / t / n * 1e6,
               b / t, i / t, merges, bytes / 1e6 }'

    kv_stop
}

for ((r = 1; r <= ROUNDS; r++)); do
    echo "round $r:"
    for mode in $MODES; do
        round "$mode"
    done
done
