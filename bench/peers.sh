#!/usr/bin/env bash
# peers.sh: the module side by side with its peers, in one run, from a
# clone (make bench-peers; bench/README.md).  Installs what is missing
# from Debian without letting the packages start their services, builds
# the module, starts every server itself on 127.0.0.1, preloads and checks
# them, runs the same wrk workloads against each, RUNS rounds interleaved
# across the targets, stops exactly the processes it started and prints a
# Markdown table of medians with the ratios issue 15 sets targets in.  The
# table also gives the CPU time each target's own processes spent per
# request (wrk's not counted): on two vCPUs that wrk shares, it says how
# lean a server is where its throughput says who got the CPU.
#
# Targets (TARGETS, any subset, in this order):
#   kv-off, kv-always  our module, fsync=off and fsync=always (lib.sh)
#   nginx-return       nginx, return 200 of 100 bytes: its ceiling
#   nginx-static       nginx, static files of 100 B and 1 MiB, sendfile on
#   nginx-static-nosendfile                            ... sendfile off
#   lua-shdict         nginx + lua_shared_dict: memory only
#   redis-always       Redis, appendfsync always, behind webdis
#   redis-everysec     Redis, appendfsync everysec, behind webdis (SET and
#                      mix only: its GETs are those of redis-always)
# Workloads (WORKLOADS): get (GET 100 B, random keys of the NKEYS
# preloaded), set (SET 100 B, random keys of [0, 1000000)), mix (GETPCT%
# GET and the rest SET of 100 B, random keys of the NKEYS preloaded),
# get1m (GET of one 1 MiB value).
#
# Environment:
#   DURATION   seconds per wrk run                                    (8)
#   RUNS       rounds; the table shows medians                        (3)
#   TARGETS    the targets above                                    (all)
#   WORKLOADS  get set mix get1m                                    (all)
#   GETPCT     mix: the share of GETs in percent                     (90)
#   THREADS, CONNS  wrk -t, -c                                    (2, 64)
#   NKEYS      preloaded keys of 100 bytes                       (100000)
#   PEERS_PORT the first of 8 ports on 127.0.0.1                  (18300)
#   BUILD_PKGS the build's Debian packages, installed with the peers'
#              (the Makefile passes its list)
#   and lib.sh's NGINX, MODULE, KV_TMP, KV_ZONE.
# Raw output: bench/out/peers-<UTC stamp>/ (wrk logs, results.csv, the
# table as results.md, the servers' logs).  Exits 1 if a run gave no
# result or our module answered a request with an error (the peers' errors
# are in the table); the targets of issue 15 are printed, not enforced.

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-8}
RUNS=${RUNS:-3}
WORKLOADS=${WORKLOADS:-get set mix get1m}
GETPCT=${GETPCT:-90}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
NKEYS=${NKEYS:-100000}
PEERS_PORT=${PEERS_PORT:-18300}

SET_KEYS=1000000
BIG=1048576
PKGS=(nginx libnginx-mod-http-ndk libnginx-mod-http-lua redis-server
      redis-tools webdis wrk curl jq procps ${BUILD_PKGS:-})
POLICY=/usr/sbin/policy-rc.d

all_targets="kv-off kv-always nginx-return nginx-static
nginx-static-nosendfile lua-shdict redis-always redis-everysec"
TARGETS=${TARGETS:-$all_targets}

p_kv_off=$PEERS_PORT
p_kv_always=$((PEERS_PORT + 1))
p_nginx=$((PEERS_PORT + 2))
p_lua=$((PEERS_PORT + 3))
p_webdis_always=$((PEERS_PORT + 4))
p_webdis_everysec=$((PEERS_PORT + 5))
p_redis_always=$((PEERS_PORT + 6))
p_redis_everysec=$((PEERS_PORT + 7))

value=$(printf 'x%.0s' $(seq 100))
work=""            # servers' directories, removed at exit
out=""             # bench/out/peers-*, kept
policy_ours=""     # the policy-rc.d this run wrote
started=()         # "name pid" of every server started here, in order
declare -A kv_pids kv_runs
wrk_pid=""         # a preload's wrk, while it runs
failed=0

say() {
    echo "[$(date -u +%H:%M:%S)] $*" >&2
}

# has WORD LIST: WORD is one of the words of LIST
has() {
    [[ " $(echo $2) " == *" $1 "* ]]
}

# --- processes --------------------------------------------------------------

# stop NAME PID SIGNAL: a server started here, if it still is our child:
# SIGNAL, then KILL after 15 s.
stop() {
    local i

    [[ $(awk '{ print $4 }' "/proc/$2/stat" 2>/dev/null) == "$$" ]] ||
        return 0
    kill "-$3" "$2"
    for ((i = 0; i < 150; i++)); do
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$2" 2>/dev/null; then
        say "$1 (pid $2) still runs 15 s after $3: killing it"
        kill -KILL "$2"
    fi
    wait "$2" 2>/dev/null
}

cleanup() {
    local i name pid f

    set +e
    trap - EXIT INT TERM
    if [[ -n $wrk_pid ]]; then
        kill -KILL "$wrk_pid" 2>/dev/null
        wait "$wrk_pid" 2>/dev/null
    fi
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        read -r name pid <<< "${started[i]}"
        case $name in
        kv-*)     kv_pid=${kv_pids[$name]} kv_run=${kv_runs[$name]}
                  cp "$kv_run/error.log" "$out/logs/$name.error.log"
                  kv_stop ;;
        nginx | lua) stop "$name" "$pid" QUIT ;;
        *)        stop "$name" "$pid" TERM ;;
        esac
    done
    if [[ -n $policy_ours ]]; then
        rm -f "$POLICY"
    fi
    if [[ -n $work ]]; then
        for f in "$work"/*/*.log; do
            f=${f#"$work/"}
            cp "$work/$f" "$out/logs/${f/\//.}" 2>/dev/null
        done
        rm -rf -- "$work"
    fi
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_up NAME PID CHECK...: until the command CHECK succeeds, at most 30 s,
# while the process PID lives.
wait_up() {
    local name=$1 pid=$2 i
    shift 2

    for ((i = 0; i < 300; i++)); do
        "$@" > /dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    tail -5 "$work/$name"/*.log >&2 2>/dev/null
    die "$name did not start (logs above)"
}

# port_free PORT: nothing accepts connections on 127.0.0.1:PORT
port_free() {
    if (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; then
        die "something already listens on 127.0.0.1:$1 (set PEERS_PORT)"
    fi
}

# --- installing -------------------------------------------------------------

# The packages' maintainer scripts start nginx on :80 and Redis on :6379
# unless invoke-rc.d is refused: with no policy-rc.d, one that refuses for
# the time of the install; with one that refuses, that one; with one that
# allows, nothing is installed.
install() {
    local missing=() p rc

    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null |
            grep -qx installed || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0

    ((EUID == 0)) || die "needs root to install: ${missing[*]}"
    if [[ -e $POLICY ]]; then
        rc=0
        "$POLICY" nginx start > /dev/null 2>&1 || rc=$?
        [[ $rc -eq 101 ]] || die "$POLICY lets services start: install" \
            "${missing[*]} yourself"
    else
        policy_ours=1
        printf '#!/bin/sh\n# bench/peers.sh: no service starts\nexit 101\n' \
            > "$POLICY"
        chmod 755 "$POLICY"
    fi

    say "installing ${missing[*]}"
    rc=0
    { apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
          -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}"
    } > "$out/apt.log" 2>&1 || rc=$?
    if [[ -n $policy_ours ]]; then
        rm -f "$POLICY"
        policy_ours=""
    fi
    [[ $rc -eq 0 ]] || { tail -20 "$out/apt.log" >&2; die "apt-get failed"; }
}

# --- servers ----------------------------------------------------------------

# run NAME CMD...: a server in the foreground of a background job
run() {
    local name=$1
    shift

    "$@" > "$work/$name/stdout.log" 2>&1 &
    started+=("$name $!")
    say "started $name (pid $!)"
}

# kv_up NAME FSYNC PORT: lib.sh's nginx with the module, one per fsync
# mode; sendfile and tcp_nopush on as for the static peer (and in Debian's
# nginx.conf): a value of 64 KiB or more is sent from its file
kv_up() {
    KV_PORT=$3
    kv_url=http://127.0.0.1:$3
    kv_pid="" kv_run=""
    KV_HTTP_EXTRA="sendfile on;
    tcp_nopush on;" kv_start "$2"
    kv_pids[$1]=$kv_pid
    kv_runs[$1]=$kv_run
    started+=("$1 $kv_pid")
    say "started $1 (pid $kv_pid)"
}

# nginx_up NAME PORT MAIN HTTP SERVER PATH: an nginx peer, configured as
# lib.sh configures ours; up once PATH answers 2xx
nginx_up() {
    local name=$1 dir=$work/$1 port=$2

    port_free "$port"
    mkdir -p "$dir/tmp"
    nginx_conf "$dir" "$port" "$3" "$4" "$5" > "$dir/nginx.conf"
    run "$name" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        -g "daemon off;"
    wait_up "$name" "${started[-1]#* }" curl -sf --max-time 2 \
        "http://127.0.0.1:$port$6"
}

ceiling_up() {
    mkdir -p "$work/nginx/www/s"
    printf '%s' "$value" > "$work/nginx/www/s/100b"
    cp "$work/big" "$work/nginx/www/s/1m"
    nginx_up nginx "$p_nginx" "" "
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;" "
        root $work/nginx/www;
        location = /ret { return 200 \"$value\"; }
        location /s/ { }
        location /ns/ { alias $work/nginx/www/s/; sendfile off; }" /ret
}

# nginx + lua_shared_dict with our API on /db/: 201 on a write, 404 for a
# missing key.
lua_up() {
    nginx_up lua "$p_lua" "
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;" "
    lua_shared_dict kv 512m;" '
        location = /count {
            content_by_lua_block {
                ngx.print(#ngx.shared.kv:get_keys(0))
            }
        }

        location /db/ {
            content_by_lua_block {
                local key = ngx.var.uri:sub(5)
                local method = ngx.req.get_method()
                local dict = ngx.shared.kv
                local v, ok, err

                if method == "GET" then
                    v = dict:get(key)
                    if v == nil then
                        return ngx.exit(404)
                    end
                    ngx.header.content_length = #v
                    return ngx.print(v)
                end

                if method == "POST" or method == "PUT" then
                    ngx.req.read_body()
                    v = ngx.req.get_body_data() or ""
                    ok, err = dict:set(key, v)
                    if not ok then
                        ngx.log(ngx.ERR, "set ", key, ": ", err)
                        return ngx.exit(507)
                    end
                    return ngx.exit(201)
                end

                if method == "DELETE" then
                    dict:delete(key)
                    return ngx.exit(204)
                end

                return ngx.exit(405)
            }
        }' /count
}

# redis_up MODE REDIS_PORT WEBDIS_PORT: Redis with an append-only file
# (appendfsync MODE, no snapshots) and webdis in front of it
redis_up() {
    local name=redis-$1 dir=$work/redis-$1

    port_free "$2"
    port_free "$3"
    mkdir -p "$dir/data"
    cat > "$dir/redis.conf" <<EOF
bind 127.0.0.1
port $2
daemonize no
dir $dir/data
logfile $dir/redis.log
save ""
appendonly yes
appendfsync $1
EOF
    run "$name" redis-server "$dir/redis.conf"
    wait_up "$name" "${started[-1]#* }" redis-cli -p "$2" ping

    mkdir -p "$work/webdis-$1"
    cat > "$work/webdis-$1/webdis.json" <<EOF
{
    "redis_host": "127.0.0.1", "redis_port": $2, "redis_auth": null,
    "http_host": "127.0.0.1", "http_port": $3,
    "threads": 2, "pool_size": 20, "daemonize": false, "database": 0,
    "http_max_request_size": 4194304,
    "verbosity": 3, "logfile": "$work/webdis-$1/webdis.log"
}
EOF
    run "webdis-$1" webdis "$work/webdis-$1/webdis.json"
    wait_up "webdis-$1" "${started[-1]#* }" curl -sf --max-time 2 \
        "http://127.0.0.1:$3/PING"
}

# --- targets ----------------------------------------------------------------

# cell TARGET WORKLOAD: "API URL [key=NAME]" for the wrk run of the target
# on the workload; fails if the target does not run it.
cell() {
    local db

    case $1 in
    kv-off)         db=http://127.0.0.1:$p_kv_off/db/ ;;
    kv-always)      db=http://127.0.0.1:$p_kv_always/db/ ;;
    lua-shdict)     db=http://127.0.0.1:$p_lua/db/ ;;
    esac

    case $1:$2 in
    kv-*:get | kv-*:set | kv-*:mix | lua-shdict:get | lua-shdict:set |\
    lua-shdict:mix)
        echo "kv $db" ;;
    kv-*:get1m)
        echo "kv $db key=big" ;;
    nginx-return:get)
        echo "fixed http://127.0.0.1:$p_nginx/ret" ;;
    nginx-static:get)
        echo "fixed http://127.0.0.1:$p_nginx/s/100b" ;;
    nginx-static:get1m)
        echo "fixed http://127.0.0.1:$p_nginx/s/1m" ;;
    nginx-static-nosendfile:get)
        echo "fixed http://127.0.0.1:$p_nginx/ns/100b" ;;
    nginx-static-nosendfile:get1m)
        echo "fixed http://127.0.0.1:$p_nginx/ns/1m" ;;
    redis-always:get | redis-always:set | redis-always:mix)
        echo "webdis http://127.0.0.1:$p_webdis_always/" ;;
    redis-always:get1m)
        echo "webdis http://127.0.0.1:$p_webdis_always/ key=big" ;;
    redis-everysec:set | redis-everysec:mix)
        echo "webdis http://127.0.0.1:$p_webdis_everysec/" ;;
    *)
        return 1 ;;
    esac
}

# count TARGET: the keys the target holds
count() {
    case $1 in
    kv-off)         curl -sf --max-time 5 \
                        "http://127.0.0.1:$p_kv_off/kv/status" | jq .keys ;;
    kv-always)      curl -sf --max-time 5 \
                        "http://127.0.0.1:$p_kv_always/kv/status" | jq .keys ;;
    lua-shdict)     curl -sf --max-time 5 "http://127.0.0.1:$p_lua/count" ;;
    redis-always)   redis-cli -p "$p_redis_always" dbsize ;;
    redis-everysec) redis-cli -p "$p_redis_everysec" dbsize ;;
    esac
}

# get_url TARGET KEY: where the target serves KEY
get_url() {
    local api url

    read -r api url _ <<< "$(cell "$1" set)"
    if [[ $api == webdis ]]; then
        echo "${url}GET/$2.bin"
    else
        echo "$url$2"
    fi
}

# preload TARGET: NKEYS keys of 100 bytes written by wrk (op=fill) until
# the target counts them (at most 120 s), then the 1 MiB value "big";
# checks a sample of keys and the big value byte for byte.
preload() {
    local t=$1 api url n i k code

    read -r api url _ <<< "$(cell "$t" set)"
    say "preloading $t: $NKEYS keys of 100 B and one of 1 MiB"
    wrk -t"$THREADS" -c32 -d150s -s "$bench_dir/peers.lua" "$url" -- \
        api="$api" op=fill keys="$NKEYS" nthreads="$THREADS" \
        > "$out/raw/preload-$t.txt" 2>&1 &
    wrk_pid=$!
    for ((i = 0; i < 1200; i++)); do
        n=$(count "$t" || true)
        [[ $n =~ ^[0-9]+$ ]] && ((n >= NKEYS)) && break
        kill -0 "$wrk_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$wrk_pid" 2>/dev/null
    wait "$wrk_pid" 2>/dev/null || true
    wrk_pid=""
    [[ $n =~ ^[0-9]+$ ]] && ((n >= NKEYS)) ||
        die "$t: holds ${n:-?} keys after the preload, not $NKEYS" \
            "($out/raw/preload-$t.txt)"

    if [[ $api == webdis ]]; then
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 \
               -X PUT --data-binary "@$work/big" "${url}SET/big")
    else
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 \
               -H 'Content-Type: application/octet-stream' \
               --data-binary "@$work/big" "${url}big")
    fi
    [[ $code == 2?? ]] || die "$t: writing the 1 MiB value answered $code"

    for ((i = 0; i < 20; i++)); do
        k=$(printf 'k%07d' $(((RANDOM * 32768 + RANDOM) % NKEYS)))
        check "$t" "$(get_url "$t" "$k")" <(printf '%s' "$value")
    done
    check "$t" "$(get_url "$t" big)" "$work/big"
}

# check TARGET URL FILE: GET URL answers 200 with FILE's bytes
check() {
    local code

    code=$(curl -s -o "$work/got" -w '%{http_code}' --max-time 30 "$2")
    [[ $code == 200 ]] && cmp -s "$work/got" "$3" ||
        die "$1: GET $2 answered $code and $(stat -c %s "$work/got") bytes," \
            "not 200 and the $(stat -c %s "$3") expected"
}

# --- measuring --------------------------------------------------------------

# server_pids TARGET: the processes that serve TARGET: an nginx's master and
# its workers; Redis and the webdis in front of it
server_pids() {
    local want name pid entry

    case $1 in
    kv-*)       want=$1 ;;
    nginx-*)    want=nginx ;;
    lua-shdict) want=lua ;;
    redis-*)    want="$1 webdis-${1#redis-}" ;;
    esac
    for entry in "${started[@]}"; do
        read -r name pid <<< "$entry"
        has "$name" "$want" || continue
        echo "$pid"
        pgrep -P "$pid" || true
    done
}

# cpu_ticks PID...: the clock ticks of user and system time the processes
# used so far, all their threads (a thread pool's too)
cpu_ticks() {
    local p sum=0 t

    for p in "$@"; do
        # after the ") " that ends the name: utime and stime are 12th, 13th
        t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null |
            awk '{ print $12 + $13 }')
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}

# measure TARGET WORKLOAD ROUND: one wrk run; appends a line to results.csv
measure() {
    local t=$1 w=$2 r=$3 api url key log line op=$2 keys=$NKEYS
    local requests us p50 p90 p99 errors rps pids ticks cpu

    read -r api url key <<< "$(cell "$t" "$w")"
    [[ $w == get1m ]] && op=get
    [[ $w == set ]] && keys=$SET_KEYS
    log=$out/raw/$w-$t-$r.txt
    pids=$(server_pids "$t")
    ticks=$(cpu_ticks $pids)
    timeout -k 5 $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" \
        -d"${DURATION}s" --timeout 10s --latency -s "$bench_dir/peers.lua" \
        "$url" -- api="$api" op=$op keys=$keys getpct="$GETPCT" \
        nthreads="$THREADS" $key \
        > "$log" 2>&1 || true
    ticks=$(($(cpu_ticks $pids) - ticks))
    line=$(grep '^peers-result ' "$log" || true)
    if [[ -z $line ]]; then
        say "$w $t round $r: no result ($log)"
        failed=1
        return
    fi
    # peers.lua's done(): requests, duration, p50, p90, p99, errors
    read -r requests us p50 p90 p99 errors \
        <<< "$(sed 's/^peers-result //; s/[a-z0-9_]*=//g' <<< "$line")"
    rps=$(awk -v n="$requests" -v us="$us" \
          'BEGIN { printf "%.0f", us ? n * 1e6 / us : 0 }')
    # the servers' CPU time per request, in ns
    cpu=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$requests" \
          'BEGIN { printf "%.0f", n ? t * 1e9 / hz / n : 0 }')
    echo "$w,$t,$r,$rps,$p50,$p90,$p99,$errors,$cpu" >> "$out/results.csv"
    say "$w $t round $r: $rps req/s, p50/p90/p99 $p50/$p90/$p99 us," \
        "$errors errors, $(us "$cpu") us of server CPU a request"
    # a peer's errors are its own (webdis drops a few connections under
    # 1 MiB GETs): they show in the table but fail only our targets
    if ((errors > 0)) && [[ $t == kv-* ]]; then
        failed=1
    fi
}

# --- the table --------------------------------------------------------------

# median WORKLOAD TARGET COLUMN: the median over the rounds of a column of
# results.csv (4 req/s, 5-7 p50/p90/p99 us, 8 errors: the sum, 9 server
# CPU ns a request)
median() {
    awk -F, -v w="$1" -v t="$2" -v c="$3" '
        $1 == w && $2 == t { v[n++] = $c; sum += $c }
        END {
            if (n == 0) { exit }
            if (c == 8) { print sum; exit }
            for (i = 1; i < n; i++)
                for (j = i; j > 0 && v[j - 1] + 0 > v[j] + 0; j--) {
                    x = v[j]; v[j] = v[j - 1]; v[j - 1] = x
                }
            printf "%.0f\n", \
                (n % 2) ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2
        }' "$out/results.csv"
}

# spread WORKLOAD TARGET: (max - min) / median of req/s over the rounds
spread() {
    awk -F, -v w="$1" -v t="$2" -v m="$(median "$1" "$2" 4)" '
        $1 == w && $2 == t {
            if (n++ == 0 || $4 < lo) lo = $4
            if (n == 1 || $4 > hi) hi = $4
        }
        END { if (n && m > 0) printf "%.0f%%", (hi - lo) * 100 / m }' \
        "$out/results.csv"
}

# ratio A B: A / B as "0.85x", or "n/a"
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "" || b == "" || b + 0 == 0) print "n/a"
        else printf "%.2fx\n", a / b }'
}

# thousands N: 192013 as 192,013
thousands() {
    sed ':a; s/\B[0-9]\{3\}\>/,&/; ta' <<< "$1"
}

ms() {
    awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'
}

us() {
    awk -v ns="$1" 'BEGIN { printf "%.1f", ns / 1000 }'
}

table_workload() {
    local w=$1 title=$2 t rps unit

    unit="req/s"
    [[ $w == get1m ]] && unit="MiB/s"
    printf '\n### %s\n\n' "$title"
    printf '| target | %s | p50 ms | p90 ms | p99 ms | spread | errors |' \
        "$unit"
    printf ' server CPU µs/req |\n'
    printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
    for t in $TARGETS; do
        cell "$t" "$w" > /dev/null || continue
        rps=$(median "$w" "$t" 4)
        if [[ -z $rps ]]; then
            printf '| %s | no result | | | | | | |\n' "$t"
            continue
        fi
        [[ $w == get1m ]] && rps=$((rps * BIG / 1048576))
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" \
            "$(thousands "$rps")" \
            "$(ms "$(median "$w" "$t" 5)")" "$(ms "$(median "$w" "$t" 6)")" \
            "$(ms "$(median "$w" "$t" 7)")" "$(spread "$w" "$t")" \
            "$(median "$w" "$t" 8)" "$(us "$(median "$w" "$t" 9)")"
    done
}

# ratio_row TEXT TARGET WORKLOAD COLUMN PEER PEER_WORKLOAD GOAL: our
# fsync=off and fsync=always against PEER
ratio_row() {
    local text=$1 w=$3 c=$4 peer=$5 pw=$6 goal=$7 off always

    has "$w" "$WORKLOADS" && has "$pw" "$WORKLOADS" || return 0
    off=$(ratio "$(median "$w" kv-off "$c")" "$(median "$pw" "$peer" "$c")")
    always=$(ratio "$(median "$w" kv-always "$c")" \
                   "$(median "$pw" "$peer" "$c")")
    [[ $2 == always ]] && off="-"
    printf '| %s | %s | %s | %s |\n' "$text" "$off" "$always" "$goal"
}

report() {
    local on off fast fast_name

    printf '## bench/peers.sh, %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf -- '- %s\n' \
        "started $started_at, load average $load_before before, $(cut -d' ' \
         -f1-3 /proc/loadavg) after" \
        "$(machine | sed 's/^machine: //')" \
        "module $(git -C "$repo_dir" describe --always --dirty 2>/dev/null ||
                  echo '?'); $(dpkg-query -W -f='${Package} ${Version}, ' \
                  nginx libnginx-mod-http-lua redis-server webdis wrk \
                  2>/dev/null | sed 's/, $//')" \
        "wrk -t$THREADS -c$CONNS --latency, $DURATION s per run; RUNS=$RUNS\
 rounds interleaved across the targets, medians; spread: (max - min) / median\
 of the rounds; GETs of $NKEYS preloaded keys, SETs to random keys of\
 [0, $SET_KEYS), the mix over the preloaded keys"

    has get "$WORKLOADS" && table_workload get "GET 100 B"
    has set "$WORKLOADS" && table_workload set "SET 100 B"
    has mix "$WORKLOADS" &&
        table_workload mix "$GETPCT/$((100 - GETPCT)) mix of GET and SET, 100 B"
    has get1m "$WORKLOADS" && table_workload get1m "GET 1 MiB"

    # nginx's faster mode for 1 MiB, measured in this run
    on=$(median get1m nginx-static 4)
    off=$(median get1m nginx-static-nosendfile 4)
    fast=nginx-static
    fast_name="sendfile on"
    if [[ -n $off ]] && ((off > ${on:-0})); then
        fast=nginx-static-nosendfile
        fast_name="sendfile off"
    fi

    printf '\n### Ratios (targets of issue 15)\n\n'
    printf '| ratio | fsync=off | fsync=always | target |\n'
    printf '|---|---:|---:|---|\n'
    ratio_row "GET 100 B req/s / nginx return 200" both get 4 \
        nginx-return get "≥ 0.9x"
    ratio_row "GET 100 B p99 / nginx return 200's" both get 7 \
        nginx-return get "≤ 2x"
    ratio_row "GET 100 B req/s / lua_shared_dict" both get 4 \
        lua-shdict get ""
    ratio_row "GET 100 B p99 / lua_shared_dict's" both get 7 \
        lua-shdict get "≤ 1.5x"
    ratio_row "GET 1 MiB MiB/s / nginx static, $fast_name" \
        both get1m 4 "$fast" get1m "≥ 1.0x"
    ratio_row "SET 100 B req/s / our fsync=off SET" always set 4 \
        kv-off set "≥ 0.6x"
    ratio_row "SET 100 B req/s / Redis appendfsync always" both set 4 \
        redis-always set "fsync=always ≥ 2x"
    ratio_row "SET 100 B p99 / Redis appendfsync always's" both set 7 \
        redis-always set "fsync=always ≤ 1.5x"
    ratio_row "SET 100 B server CPU a request / Redis + webdis's" both \
        set 9 redis-always set "(lower is leaner)"
    ratio_row "mix req/s / lua_shared_dict" both mix 4 lua-shdict mix \
        "no regression"
    ratio_row "mix req/s / Redis appendfsync always" both mix 4 \
        redis-always mix ""
}

# wanted TARGET: the target is in TARGETS and runs one of WORKLOADS
wanted() {
    local w

    has "$1" "$TARGETS" || return 1
    for w in $WORKLOADS; do
        cell "$1" "$w" > /dev/null && return 0
    done
    return 1
}

# --- main -------------------------------------------------------------------

for t in $TARGETS; do
    has "$t" "$all_targets" || die "unknown target \"$t\" (TARGETS)"
done
for w in $WORKLOADS; do
    has "$w" "get set mix get1m" ||
        die "unknown workload \"$w\" (WORKLOADS)"
done

out=$(out_dir peers)
mkdir -p "$out/raw" "$out/logs"

install
say "building the module"
make -C "$repo_dir" -s build > "$out/build.log" 2>&1 ||
    { tail -20 "$out/build.log" >&2; die "make build failed"; }
need wrk curl jq redis-server redis-cli webdis pgrep "$NGINX"

work=$(mktemp -d "$KV_TMP/kv-peers.XXXXXX")
head -c "$BIG" /dev/urandom > "$work/big"
echo "workload,target,round,rps,p50_us,p90_us,p99_us,errors,cpu_ns" \
    > "$out/results.csv"

wanted kv-off && kv_up kv-off off "$p_kv_off"
wanted kv-always && kv_up kv-always always "$p_kv_always"
if wanted nginx-return || wanted nginx-static ||
   wanted nginx-static-nosendfile
then
    ceiling_up
fi
wanted lua-shdict && lua_up
wanted redis-always && redis_up always "$p_redis_always" "$p_webdis_always"
wanted redis-everysec &&
    redis_up everysec "$p_redis_everysec" "$p_webdis_everysec"

for t in $TARGETS; do
    wanted "$t" || continue
    case $t in
    nginx-*)
        if cell "$t" get > /dev/null; then
            check "$t" "$(cell "$t" get | cut -d' ' -f2)" \
                <(printf '%s' "$value")
        fi
        if cell "$t" get1m > /dev/null; then
            check "$t" "$(cell "$t" get1m | cut -d' ' -f2)" "$work/big"
        fi ;;
    *)
        if { has get "$WORKLOADS" && cell "$t" get > /dev/null; } ||
           { has mix "$WORKLOADS" && cell "$t" mix > /dev/null; } ||
           { has get1m "$WORKLOADS" && cell "$t" get1m > /dev/null; }
        then
            preload "$t"
        fi ;;
    esac
done

started_at=$(date -u '+%H:%M:%S UTC')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# Each round runs the targets in another order, so that none is always
# first after a pause or right after the heaviest.
read -r -a order <<< "$(echo $TARGETS)"
for w in $WORKLOADS; do
    for ((r = 1; r <= RUNS; r++)); do
        for ((i = 0; i < ${#order[@]}; i++)); do
            t=${order[(i + r - 1) % ${#order[@]}]}
            cell "$t" "$w" > /dev/null || continue
            measure "$t" "$w" "$r"
            sleep 1
        done
    done
done

cleanup
report | tee "$out/results.md"
say "raw output: $out"
exit "$failed"
