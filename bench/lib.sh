# Shared by the benchmark scripts (sourced, not run): start and stop one
# nginx with the module on 127.0.0.1, read /kv/status, print the machine.
#
# Environment:
#   NGINX     the nginx binary                     (/usr/sbin/nginx)
#   MODULE    the module                           (build/ngx_http_kv_module.so)
#   KV_PORT   the port on 127.0.0.1                (18090)
#   KV_TMP    where run and data directories go    ($TMPDIR or /tmp)
#   KV_ZONE   the kv_zone's shared memory size     (256m)
#   KV_DATA   an existing data directory to serve  (a fresh one per start)
#   KV_HTTP_EXTRA, KV_SERVER_EXTRA  more lines for the http and server blocks

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$bench_dir")

NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${MODULE:-$repo_dir/build/ngx_http_kv_module.so}
KV_PORT=${KV_PORT:-18090}
KV_TMP=${KV_TMP:-${TMPDIR:-/tmp}}
KV_ZONE=${KV_ZONE:-256m}

kv_url=http://127.0.0.1:$KV_PORT
kv_run=""          # the run directory of the nginx started last
kv_pid=""          # its master's pid

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || die "needs $c (not found)"
    done
}

machine() {
    echo "machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo \
        | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r)," \
        "$(df -hT "$KV_TMP" | awk 'NR == 2 { print $2 " on " $1 }') ($KV_TMP)"
}

# nginx_conf DIR PORT MAIN HTTP SERVER: the nginx.conf of the benchmarks'
# servers, ours and nginx peers alike: run from DIR (its tmp/ must exist),
# on 127.0.0.1:PORT, KV_WORKERS (2) workers, access_log off, keep-alive
# connections that last, bodies up to 2 MiB kept in memory; MAIN, HTTP
# and SERVER are more lines for those blocks.
nginx_conf() {
    cat <<EOF
$3
$( ((EUID == 0)) && echo "user root;" )
worker_processes ${KV_WORKERS:-2};
error_log $1/error.log notice;
pid $1/nginx.pid;

events {
    worker_connections 4096;
}

http {
    client_body_temp_path $1/tmp/body;
    proxy_temp_path       $1/tmp/proxy;
    fastcgi_temp_path     $1/tmp/fastcgi;
    uwsgi_temp_path       $1/tmp/uwsgi;
    scgi_temp_path        $1/tmp/scgi;

    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_buffer_size 2m;
    client_max_body_size 2m;
$4

    server {
        listen 127.0.0.1:$2;
$5
    }
}
EOF
}

# kv_start FSYNC [ZONE_PARAMS...]: nginx with 2 workers, the store in a
# fresh directory (or KV_DATA), /db/, /kv/status, /kv/compact, /readyz;
# waits until /readyz answers 200.  Sets kv_run, kv_pid, kv_data.
kv_start() {
    local fsync=$1 i
    shift

    [[ -f $MODULE ]] || die "no module at $MODULE (run 'make build' first)"
    if curl -s -o /dev/null --max-time 1 "$kv_url/"; then
        die "something already answers on $kv_url (set KV_PORT)"
    fi

    kv_run=$(mktemp -d "$KV_TMP/kv-bench.XXXXXX")
    kv_data=${KV_DATA:-$kv_run/data}
    mkdir -p "$kv_run/tmp"

    nginx_conf "$kv_run" "$KV_PORT" "load_module $MODULE;" "
    kv_zone zone=store:$KV_ZONE path=$kv_data fsync=$fsync $*;
    ${KV_HTTP_EXTRA:-}" "
        ${KV_SERVER_EXTRA:-}

        location /db/           { kv store; }
        location = /kv/status   { kv_status store; }
        location = /kv/compact  { kv_compact store; }
        location = /readyz      { kv_ready store; }" > "$kv_run/nginx.conf"

    "$NGINX" -p "$kv_run" -c "$kv_run/nginx.conf" -g "daemon off;" \
        2>>"$kv_run/error.log" &
    kv_pid=$!

    for ((i = 0; i < 600; i++)); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
                "$kv_url/readyz") == 200 ]]
        then
            return 0
        fi
        kill -0 "$kv_pid" 2>/dev/null || break
        sleep 0.1
    done

    tail -20 "$kv_run/error.log" >&2
    kv_stop
    die "nginx did not become ready"
}

# kv_stop [keep]: stops the nginx that kv_start started (QUIT, then KILL
# after 15 s) and removes its directory unless asked to keep it.
kv_stop() {
    local i

    if [[ -n $kv_pid ]] && kill -0 "$kv_pid" 2>/dev/null; then
        kill -QUIT "$kv_pid"
        for ((i = 0; i < 150; i++)); do
            kill -0 "$kv_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$kv_pid" 2>/dev/null && kill -KILL "$kv_pid"
        wait "$kv_pid" 2>/dev/null
    fi
    kv_pid=""

    if [[ -n $kv_run && ${1:-} != keep ]]; then
        rm -rf -- "$kv_run"
        kv_run=""
    fi
}

# kv_status JQ_FILTER: one value out of /kv/status
kv_status() {
    curl -sf --max-time 5 "$kv_url/kv/status" | jq -r "$1"
}

# out_dir NAME: bench/out/NAME-<UTC stamp> (git-ignored) for raw output
out_dir() {
    local d=$bench_dir/out/$1-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$d"
    echo "$d"
}

# kv_wait JQ_CONDITION SECONDS: polls /kv/status until the condition holds;
# fails on timeout.
kv_wait() {
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        [[ $(kv_status "$1") == true ]] && return 0
        sleep 0.2
    done
    echo "timed out after $2 s waiting for /kv/status: $1" >&2
    return 1
}

# since T0: seconds since T0 (a date +%s.%N), one decimal
since() {
    awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }'
}
