#!/usr/bin/env bash
# shards.sh: scaling out on loopback (README.md, "Scaling out").  Three
# shards and a router, from deploy/k8s's shard.conf and router.conf (the
# router's access log off), and in one run the same wrk load sent to one
# shard directly and through the router to the three:
#
#   set  wrk -t2 -c64 SETs of 100-byte values to random keys of
#        [0, KEYS) for DURATION seconds (fsync=always, shard.conf's)
#   get  GETs of random keys of [0, KEYS), after every key was written
#        both to shard 0 directly and through the router, so that every
#        GET finds its key
#
# On one 2-core machine the router's hop costs CPU that the shards would
# use: these figures show that cost, not the scale-out, which comes from
# shards on machines (and disks) of their own.
#
# Environment: DURATION (10), THREADS (2), CONNS (64), KEYS (100000),
# PORT (18190: shards on PORT+1..3, their admin ports on PORT+11..13, the
# router on PORT), and NGINX, MODULE, KV_TMP of lib.sh.  Raw wrk output
# goes to bench/out/shards-*/.

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
KEYS=${KEYS:-100000}
PORT=${PORT:-18190}

need wrk curl jq sed
[[ -f $MODULE ]] || die "no module at $MODULE (run 'make build' first)"

k8s=$repo_dir/deploy/k8s
out=$(out_dir shards)
run=$(mktemp -d "$KV_TMP/kv-shards.XXXXXX")
pids=()

stop_all() {
    local p
    for p in "${pids[@]}"; do
        kill -QUIT "$p" 2>/dev/null || true
    done
    sleep 1
    rm -rf -- "$run"
}
trap stop_all EXIT

# start NAME CONF: nginx on CONF, its master's pid in pids
start() {
    local i
    "$NGINX" -p "$run" -c "$2" -e "$run/$1.log" ||
        die "$1 did not start: $(tail -5 "$run/$1.log")"
    for ((i = 0; i < 100; i++)); do
        [[ -s $run/$1.pid ]] && break
        sleep 0.1
    done
    pids+=("$(cat "$run/$1.pid")")
}

# the main-context lines of a test nginx, and its temp paths, in $run
local_paths() {
    local user=""
    ((EUID == 0)) && user="user root;"
    sed -e "s|pid /tmp/nginx.pid;|$user pid $run/$1.pid;|" \
        -e "s|error_log stderr notice;|error_log $run/$1.log notice;|" \
        -e "s|_temp_path /tmp/|_temp_path $run/$1-|"
}

servers=""
for i in 0 1 2; do
    sed -e "s|load_module modules/[a-z_]*\.so;|load_module $MODULE;|" \
        -e "s|path=/var/lib/nginx-kv|path=$run/data$i|" \
        -e "s|listen 8080;|listen 127.0.0.1:$((PORT + 1 + i));|" \
        -e "s|listen 8081;|listen 127.0.0.1:$((PORT + 11 + i));|" \
        "$k8s/shard.conf" | local_paths "shard$i" > "$run/shard$i.conf"
    start "shard$i" "$run/shard$i.conf"
    servers+="server 127.0.0.1:$((PORT + 1 + i)) max_fails=0;"$'\n'
done

echo "$servers" > "$run/kv-shards.conf"
sed -e "s|listen 8080;|listen 127.0.0.1:$PORT;|" \
    -e "s|access_log /dev/stdout[^;]*;|access_log off;|" \
    "$k8s/router.conf" | local_paths router > "$run/router.conf"
start router "$run/router.conf"

for p in $((PORT + 1)) $((PORT + 2)) $((PORT + 3)) $PORT; do
    for ((i = 0; i < 100; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' \
                "http://127.0.0.1:$p/readyz") == 200 ]] && break
        sleep 0.1
    done
done

puts() {
    local p n=0
    for p in "$@"; do
        n=$((n + $(curl -sf "http://127.0.0.1:$p/kv/status" | jq .puts)))
    done
    echo "$n"
}

# bench NAME PORT SCRIPT ARGS...: wrk for DURATION, req/s to stdout
bench() {
    local name=$1 port=$2 script=$3
    shift 3
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$script" \
        "http://127.0.0.1:$port/db/" -- "$@" > "$out/$name.txt"
    awk '/Requests\/sec/ { printf "%.0f", $2 }' "$out/$name.txt"
}

# load PORT ADMIN_PORTS...: POSTs every key of [0, KEYS) once
load() {
    local port=$1 p0 wrk_pid
    shift
    p0=$(puts "$@")
    wrk -t"$THREADS" -c"$CONNS" -d600s -s "$bench_dir/kv.lua" \
        "http://127.0.0.1:$port/db/" -- op=post keys="$KEYS" \
        nthreads="$THREADS" > /dev/null &
    wrk_pid=$!
    while (( $(puts "$@") - p0 < KEYS )); do
        sleep 0.5
    done
    kill "$wrk_pid"
    wait "$wrk_pid" 2>/dev/null || true
}

non2xx() {
    awk '/Non-2xx/ { n = $NF } END { print n + 0 }' "$out/$1.txt"
}

echo "shards: $(date -u '+%F %T UTC')"
machine
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$THREADS -c$CONNS -d${DURATION}s, keys of [0, $KEYS)"

set_direct=$(bench set-direct $((PORT + 1)) "$bench_dir/kv.lua" \
             op=set keys="$KEYS")
set_router=$(bench set-router "$PORT" "$bench_dir/kv.lua" op=set keys="$KEYS")

load $((PORT + 1)) $((PORT + 11))
load "$PORT" $((PORT + 11)) $((PORT + 12)) $((PORT + 13))

get_direct=$(bench get-direct $((PORT + 1)) "$bench_dir/get.lua" keys="$KEYS")
get_router=$(bench get-router "$PORT" "$bench_dir/get.lua" keys="$KEYS")

printf '%-5s %14s %14s %8s\n' op "1 shard req/s" "router req/s" ratio
for op in set get; do
    d=${op}_direct r=${op}_router
    printf '%-5s %14s %14s %8s\n' "$op" "${!d}" "${!r}" \
        "$(awk -v a="${!r}" -v b="${!d}" 'BEGIN { printf "%.2f", a / b }')"
done

bad=0
for f in set-direct set-router get-direct get-router; do
    n=$(non2xx "$f")
    if ((n > 0)); then
        echo "$f: $n answers were not 2xx"
        bad=1
    fi
done
echo "raw wrk output: $out"
exit $bad
