#!/usr/bin/env bash
# Runs nginx with ngx_http_kv_module in the foreground (what `make run` does).
#
# The config is nginx.conf.example with a few lines replaced: the module
# path, the listen address, the data directory, the pid file and the
# temporary paths.  Ctrl-C stops nginx gracefully (SIGQUIT: in-flight
# requests finish); a second Ctrl-C stops it at once (SIGTERM).
#
# Environment (defaults are what `make run` passes):
#   PORT      port on 127.0.0.1                       (8080)
#   DATA_DIR  the store's data directory              (./data)
#   NGINX     the nginx binary                        (/usr/sbin/nginx)
#   MODULE    the module's .so                        (./build/ngx_http_kv_module.so)
#   RUN_DIR   nginx prefix: config, pid, temp files   (./build/run)

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

PORT=${PORT:-8080}
DATA_DIR=${DATA_DIR:-$here/data}
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${MODULE:-$here/build/ngx_http_kv_module.so}
RUN_DIR=${RUN_DIR:-$here/build/run}
EXAMPLE=${EXAMPLE:-$here/nginx.conf.example}

die() { echo "run-nginx.sh: $*" >&2; exit 1; }

[[ $PORT =~ ^[0-9]+$ ]] && (( PORT > 0 && PORT < 65536 )) \
    || die "PORT must be a port number, not '$PORT'"
[[ -x $NGINX ]] || die "no nginx binary at $NGINX (install Debian's nginx or set NGINX)"
[[ -f $MODULE ]] || die "no module at $MODULE (run 'make build' first)"
[[ -f $EXAMPLE ]] || die "no $EXAMPLE"

# nginx resolves relative paths against its prefix, so make ours absolute.
DATA_DIR=$(realpath -m -- "$DATA_DIR")
RUN_DIR=$(realpath -m -- "$RUN_DIR")
MODULE=$(realpath -- "$MODULE")

mkdir -p -- "$RUN_DIR/tmp" "$(dirname -- "$DATA_DIR")"

# Workers run as www-data when nginx starts as root (the module creates the
# data directory and hands it to that user).  They must be able to reach the
# data directory and the temp files; a checkout under /root usually is out of
# their reach, and then the workers run as root instead.
user_line=""
if (( EUID == 0 )); then
    user_line="user www-data;"
    can() { runuser -u www-data -- test "$@" 2>/dev/null; }
    if ! can -x "$(dirname -- "$DATA_DIR")" || ! can -x "$RUN_DIR/tmp" \
        || { [[ -e $DATA_DIR ]] && ! can -w "$DATA_DIR" -a -x "$DATA_DIR"; }
    then
        user_line="user root;"
        echo "run-nginx.sh: www-data cannot reach $DATA_DIR or $RUN_DIR/tmp;" \
             "workers run as root" >&2
    fi
fi

# Generate the config.  Every replaced line must be found exactly once.
conf=$RUN_DIR/nginx.conf
tmp_dir=$RUN_DIR/tmp
stdout_ok=1
[[ -w /dev/stdout ]] || stdout_ok=0
shopt -u patsub_replacement 2>/dev/null || true   # a literal & in paths
{
    while IFS= read -r line; do
        case $line in
        "load_module modules/ngx_http_kv_module.so;")
            echo "load_module $MODULE;" ;;
        "user www-data;"*)
            if [[ -n $user_line ]]; then echo "$user_line"; fi ;;
        "error_log "*)
            echo "error_log stderr notice;" ;;
        "pid "*)
            echo "pid $RUN_DIR/nginx.pid;" ;;
        "http {")
            echo "$line"
            echo "    client_body_temp_path $tmp_dir/client_body;"
            echo "    proxy_temp_path       $tmp_dir/proxy;"
            echo "    fastcgi_temp_path     $tmp_dir/fastcgi;"
            echo "    uwsgi_temp_path       $tmp_dir/uwsgi;"
            echo "    scgi_temp_path        $tmp_dir/scgi;" ;;
        *"kv_zone zone=store:"*" path=/var/lib/nginx-kv;"*)
            echo "${line/path=\/var\/lib\/nginx-kv;/path=$DATA_DIR;}" ;;
        *"access_log /dev/stdout;"*)
            # nginx reopens /dev/stdout by name, which can fail when stdout
            # belongs to another user (sudo -u, runuser)
            if (( stdout_ok )); then echo "$line"
            else echo "${line/access_log \/dev\/stdout;/access_log off;}"; fi ;;
        *"listen 8080;"*)
            echo "${line/listen 8080;/listen 127.0.0.1:$PORT;}" ;;
        *)
            echo "$line" ;;
        esac
    done < "$EXAMPLE"
} > "$conf.new"

check() {
    [[ $(grep -cxF -- "$1" "$conf.new") == 1 ]] \
        || die "could not make '$1' in $conf.new from $EXAMPLE (has it changed?)"
}
check "load_module $MODULE;"
check "error_log stderr notice;"
check "pid $RUN_DIR/nginx.pid;"
check "    client_body_temp_path $tmp_dir/client_body;"
check "    kv_zone zone=store:64m path=$DATA_DIR;"
check "        listen 127.0.0.1:$PORT;"
[[ -z $user_line ]] || check "$user_line"
mv -- "$conf.new" "$conf"

url=http://127.0.0.1:$PORT
echo "kv: $url/db/{key}, data in $DATA_DIR; try:" \
     "curl -X PUT -H 'Content-Type: application/octet-stream' --data-binary hello $url/db/greeting" \
     "(Ctrl-C stops)"

# nginx gets a session of its own so that the terminal's Ctrl-C (SIGINT,
# which nginx treats as "stop now") reaches only this script, which turns it
# into a graceful SIGQUIT.  This script has no job control, so setsid execs
# nginx in place and $! is the master's pid.
setsid "$NGINX" -p "$RUN_DIR/" -c "$conf" -g 'daemon off;' &
pid=$!

stops=0
stop() {
    stops=$((stops + 1))
    if (( stops == 1 )); then
        echo "kv: stopping gracefully (in-flight requests finish); Ctrl-C again to stop at once" >&2
        kill -QUIT "$pid" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
    fi
}
trap stop INT TERM

# wait returns early when a trapped signal arrives; keep waiting until the
# master has exited, then exit with its status.
while :; do
    rc=0
    wait "$pid" || rc=$?
    kill -0 "$pid" 2>/dev/null || break
done
exit "$rc"
