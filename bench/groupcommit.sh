#!/usr/bin/env bash
# groupcommit.sh: durable SET throughput with 64 clients against what one
# fdatasync per request would give (issue 3: at least 10x).
#
#  1. Baseline, on the filesystem that holds the data directory: for
#     DURATION seconds, like a round, so that both meet the disk's stalls
#     alike, sequential appends of a 150-byte record (a SET of a 100-byte
#     value is about that size framed), each made durable before the next
#     (dd oflag=dsync: O_DSYNC, the same flush as fdatasync after each
#     write).
#  2. nginx (2 workers) on a fresh data directory, wrk -t2 -c64 SETs of
#     100-byte values to random keys of [0, 1000000) for DURATION seconds;
#     req/s, latency, the fsyncs counted by /kv/status and the writes each
#     of them covered.
#
# The disk's speed here drifts by 2x within minutes, so fsync=always runs
# ROUNDS times, each right after a baseline of its own, and the verdict
# takes the median of the rounds' ratios.  interval:1s and off run once,
# against the last baseline, to show the ceiling of the HTTP path.
#
# PASS when the median ratio of fsync=always is 10x or more, no errors.
# Environment: DURATION (10), THREADS (2), CONNS (64),
# ROUNDS (3), and those of lib.sh.  Raw wrk output goes to
# bench/out/groupcommit-*/.

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
TARGET=10

need wrk curl jq dd awk

out=$(out_dir groupcommit)
trap kv_stop EXIT

echo "groupcommit: $(date -u '+%F %T UTC')"
machine
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# one fdatasync per write: durable appends per second, into $base; dd
# reports its progress on SIGUSR1
baseline() {
    local f pid

    f=$(mktemp "$KV_TMP/kv-bench-dsync.XXXXXX")
    LC_ALL=C dd if=/dev/zero of="$f" bs=150 count=1000000000 oflag=dsync \
        2> "$f.log" &
    pid=$!
    sleep "$DURATION"
    kill -USR1 "$pid"
    sleep 0.5
    kill "$pid"
    wait "$pid" || true
    base=$(awk -F', ' '/copied/ && !done { split($1, b, " ");
                                           printf "%.0f", b[1] / 150 / $3;
                                           done = 1 }' "$f.log")
    rm -f -- "$f" "$f.log"
    [[ -n $base ]] || die "dd reported no progress"
}

echo "baseline: ${DURATION}s of appends of 150 B, fdatasync each" \
     "(dd oflag=dsync) on $KV_TMP, before each fsync=always round"
echo "workload: wrk -t$THREADS -c$CONNS -d${DURATION}s, POST of 100 B to" \
     "random keys of [0, 1000000), nginx worker_processes 2"
echo
echo "| fsync | baseline/s | req/s | p50 ms | p99 ms | errors | fsyncs" \
     "| writes/fsync | vs baseline |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"

errors=0
ratios=()
modes=()
for ((i = 1; i <= ROUNDS; i++)); do
    modes+=(always)
done
modes+=(interval:1s off)

for mode in "${modes[@]}"; do
    [[ $mode == always ]] && baseline

    kv_start "$mode"

    f0=$(kv_status .fsync.count)
    p0=$(kv_status .puts)

    log=$out/wrk-${mode%%:*}-$((${#ratios[@]} + 1)).txt
    timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" \
        --latency -s "$bench_dir/kv.lua" "$kv_url/db/" \
        -- op=set nthreads="$THREADS" > "$log"

    f1=$(kv_status .fsync.count)
    p1=$(kv_status .puts)
    werr=$(kv_status .write_errors)
    kv_stop

    read -r rps p50 p99 errs < <(awk -v werr="$werr" '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /s$/) return v * 1000
            return v
        }
        /^Requests\/sec/          { rps = $2 }
        /^ +50%/                  { p50 = ms($2) }
        /^ +99%/                  { p99 = ms($2) }
        /Non-2xx/                 { errs += $NF }
        /Socket errors/           { gsub(/[^0-9 ]/, " ")
                                    errs += $1 + $2 + $3 + $4 }
        END { printf "%.0f %.2f %.2f %d\n", rps, p50, p99, errs + werr }
        ' "$log")

    fsyncs=$((f1 - f0))
    if ((fsyncs > 0)); then
        wpf=$(awk -v p=$((p1 - p0)) -v f=$fsyncs \
                  'BEGIN { printf "%.1f", p / f }')
    else
        wpf=n/a
    fi
    ratio=$(awk -v r="$rps" -v b="$base" 'BEGIN { printf "%.1f", r / b }')

    echo "| $mode | $base | $rps | $p50 | $p99 | $errs | $fsyncs | $wpf" \
         "| ${ratio}x |"

    if [[ $mode == always ]]; then
        ratios+=("$ratio")
        errors=$((errors + errs))
    fi
done

median=$(printf '%s\n' "${ratios[@]}" | sort -n \
         | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }')

if ((errors == 0)) \
   && awk -v r="$median" -v t=$TARGET 'BEGIN { exit !(r >= t) }'
then
    verdict=PASS
else
    verdict=FAIL
fi

echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$verdict: fsync=always group commit: median ${median}x the" \
     "one-fdatasync-per-write baseline over $ROUNDS rounds" \
     "(${ratios[*]}; target >= ${TARGET}x, no errors)"

[[ $verdict == PASS ]]
