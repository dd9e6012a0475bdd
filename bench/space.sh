#!/usr/bin/env bash
# space.sh: after deleting or overwriting 90% of 1 GiB of data, does one
# compaction bring the data directory to within 10% of the live data size?
# (issue 3)
#
# Two scenarios, each on a fresh nginx (2 workers, fsync=off, automatic
# compaction switched off so that the measured compaction is the one asked
# for):
#   delete     write 1 GiB of 4 KiB values, delete 9 keys of every 10
#   overwrite  write 1 GiB of 4 KiB values, overwrite 9 keys of every 10
# then POST /kv/compact, wait for it to finish (/kv/status), and compare
# the directory (du, allocated and apparent bytes) with live_bytes.
# The deleted and overwritten keys are interleaved with the kept ones, so
# every segment keeps some live data and compaction has to copy it.
#
# 4 KiB values: 1 GiB is then 262,144 requests, loaded in seconds, and a
# record's framing (about 30 bytes) is under 1% of it, so live_bytes is
# close to the value bytes; small values would mean millions of requests.
#
# PASS when the directory is at most 1.1 x live_bytes in both scenarios.
# Environment: DATA_MIB (1024), VSIZE (4096), SCENARIOS ("delete
# overwrite"), and those of lib.sh.

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATA_MIB=${DATA_MIB:-1024}
VSIZE=${VSIZE:-4096}
SCENARIOS=${SCENARIOS:-delete overwrite}
THREADS=2
KEYS=$((DATA_MIB * 1048576 / VSIZE))
SKIP=10

need wrk curl jq du awk

out=$(out_dir space)
trap kv_stop EXIT

# load OP FILL SKIP COUNTER EXPECTED: runs kv.lua over the keys until the
# status counter (puts or deletes) reaches EXPECTED, then stops wrk.
load() {
    local op=$1 fill=$2 skip=$3 counter=$4 expected=$5 w t0 c0

    t0=$(date +%s.%N)
    c0=$(kv_status ".$counter")

    wrk -t$THREADS -c16 -d3600s -s "$bench_dir/kv.lua" "$kv_url/db/" \
        -- op="$op" keys="$KEYS" vsize="$VSIZE" fill="$fill" skip="$skip" \
        nthreads=$THREADS > "$out/wrk-$scenario-$op-$fill.txt" &
    w=$!

    kv_wait ".$counter >= $expected" 600 || { kill -INT $w; return 1; }
    kill -INT $w
    wait $w || true

    echo "  $op ($fill): $(($(kv_status ".$counter") - c0)) $counter in" \
         "$(since "$t0") s"
}

# dir_bytes: allocated and apparent bytes of the data directory
dir_bytes() {
    echo "$(du -s -B1 "$kv_data" | cut -f1) $(du -s -b "$kv_data" | cut -f1)"
}

echo "space: $(date -u '+%F %T UTC')"
machine
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "data: $KEYS keys k%07d of $VSIZE-byte values = $DATA_MIB MiB;" \
     "then 9 keys of 10 (i % $SKIP != 0) deleted or overwritten"
echo

verdict=PASS
table=""

for scenario in $SCENARIOS; do
    echo "scenario $scenario:"
    kv_start off compact_ratio=100 compact_dead=1048576m

    load post a 0 puts $KEYS
    changed=$((KEYS - (KEYS + SKIP - 1) / SKIP))
    if [[ $scenario == delete ]]; then
        load delete a $SKIP deletes "$changed"
    else
        # thread 0's first request is dropped by wrk: see kv.lua
        load post b $SKIP puts $((KEYS + THREADS - 1 + changed + THREADS - 1))
    fi

    live=$(kv_status .live_bytes)
    dead=$(kv_status .dead_bytes)
    read -r before before_app < <(dir_bytes)
    runs=$(kv_status .compaction.runs)

    t0=$(date +%s.%N)
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST \
               "$kv_url/kv/compact")
    [[ $code == 202 ]] || die "POST /kv/compact answered $code"
    kv_wait ".compaction.running == false and .compaction.runs > $runs" 600
    secs=$(since "$t0")

    live=$(kv_status .live_bytes)
    limit=$((live + live / 10))

    # old segments go once no response can still read them: give it time
    for ((i = 0; i < 50; i++)); do
        read -r after after_app < <(dir_bytes)
        ((after <= limit && after_app <= limit)) && break
        sleep 0.2
    done

    reclaimed=$(kv_status .compaction.reclaimed_bytes)
    keys=$(kv_status .keys)
    segments=$(kv_status .segments)
    ratio=$(awk -v a="$after" -v l="$live" 'BEGIN { printf "%.3f", a / l }')
    ok=PASS
    ((after <= limit && after_app <= limit)) || ok=FAIL
    [[ $ok == PASS ]] || verdict=FAIL

    echo "  before compaction: live $live B, dead $dead B, directory" \
         "$before B allocated ($before_app B apparent)"
    echo "  compaction: ${secs} s, reclaimed $reclaimed B"
    echo "  after: $keys keys, $segments segments, live $live B, directory" \
         "$after B allocated ($after_app B apparent) = ${ratio} x live: $ok"
    ls -l "$kv_data" > "$out/dir-$scenario.txt"
    kv_stop

    table+="| $scenario | $((before / 1048576)) | $((live / 1048576))"
    table+=" | $((after / 1048576)) | $((after_app / 1048576)) | $ratio"
    table+=" | $secs | $ok |"$'\n'
done

echo
echo "| scenario | dir before MiB | live MiB | dir after MiB (du) |" \
     "apparent MiB | dir / live | compaction s | verdict |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
printf '%s' "$table"
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$verdict: data directory <= 1.1 x live_bytes after one compaction" \
     "($SCENARIOS)"

[[ $verdict == PASS ]]
