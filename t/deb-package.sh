#!/usr/bin/env bash
# The Debian packages, end to end on this machine (root): lintian, install
# with apt, Debian's nginx loading the module through the installed
# /etc/nginx/modules-enabled snippet with a kv_zone on 127.0.0.1, PUT, GET
# and DELETE, then apt-get purge, after which no file of the packages but
# the data may remain.  Leaves neither the packages installed nor an nginx
# running, and keeps the maintainer scripts from starting the system nginx
# on port 80 (policy-rc.d).
#
#   t/deb-package.sh DEB_DIR      (make deb-test, after make deb)

set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deb_dir=$(realpath "${1:?usage: $0 DEB_DIR}")
mod_pkg=libnginx-mod-http-kv
tool_pkg=kvtool
snippet=/etc/nginx/modules-enabled/50-mod-http-kv.conf
available=/usr/share/nginx/modules-available/mod-http-kv.conf
policy=/usr/sbin/policy-rc.d
abi_file=/usr/share/nginx/src/debian/libnginx-mod.abisubstvars

passed=0
failed=0
start=$SECONDS
tmp=""
nginx_pid=""
installed=""
policy_saved=""
policy_ours=""
completed=""

ok() {
    passed=$((passed + 1))
    echo "ok - $*"
}

not_ok() {
    failed=$((failed + 1))
    echo "not ok - $*"
}

# check DESCRIPTION COMMAND...: one check, passed when COMMAND succeeds
check() {
    local what=$1

    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

finish() {
    local elapsed

    trap - EXIT
    [ -n "$completed" ] || [ "$failed" -gt 0 ] ||
        not_ok "the test stopped before its end"
    cleanup
    elapsed=$((SECONDS - start))
    if [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]; then
        echo "deb-package: PASS in ${elapsed}s"
        echo "deb-package: $passed passed, $failed failed"
        exit 0
    fi
    echo "deb-package: FAIL in ${elapsed}s"
    echo "deb-package: $passed passed, $failed failed"
    exit 1
}

# A failure that makes the following steps meaningless.
bail() {
    not_ok "$*"
    finish
}

apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -q -y \
        -o DPkg::Lock::Timeout=300 "$@"
}

is_installed() {
    dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

stop_nginx() {
    local i

    [ -n "$nginx_pid" ] || return 0
    kill -QUIT "$nginx_pid" 2>/dev/null
    for i in $(seq 100); do
        kill -0 "$nginx_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$nginx_pid" 2>/dev/null; then
        echo "# nginx $nginx_pid did not quit in 10 s, killing it"
        pkill -KILL -P "$nginx_pid"
        kill -KILL "$nginx_pid"
        nginx_pid=""
        return 1
    fi
    nginx_pid=""
}

# Whatever happened: our nginx stopped, our packages purged, policy-rc.d as
# it was, the temporary directory gone.
cleanup() {
    stop_nginx
    if [ -n "$installed" ]; then
        apt_get purge "$mod_pkg" "$tool_pkg" > /dev/null 2>&1 ||
            not_ok "cleanup: apt-get purge $mod_pkg $tool_pkg"
        installed=""
    fi
    if [ -n "$policy_ours" ]; then
        rm -f "$policy"
        [ -z "$policy_saved" ] || mv "$policy_saved" "$policy"
        policy_ours=""
    fi
    [ -z "$tmp" ] || rm -rf "$tmp"
    tmp=""
}

trap finish EXIT
trap 'not_ok "interrupted"; exit 1' INT TERM

# --- before anything is installed ------------------------------------------

[ "$(id -u)" -eq 0 ] || bail "runs as root (it installs packages)"

# Several checkouts on one machine share dpkg and /etc/nginx: one at a time.
exec 9> /run/lock/ngx-http-kv-deb-test.lock
flock -w 600 9 || bail "another deb-package test held the lock for 10 min"

for p in "$mod_pkg" "$tool_pkg"; do
    if is_installed "$p"; then
        bail "$p is already installed here; purge it first (this test" \
             "installs and purges it and does not touch an install of yours)"
    fi
done

version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
arch=$(dpkg --print-architecture)
mod_deb=$deb_dir/${mod_pkg}_${version}_${arch}.deb
tool_deb=$deb_dir/${tool_pkg}_${version}_${arch}.deb

check "the built packages are ${mod_deb##*/} and ${tool_deb##*/}" \
    test -f "$mod_deb" -a -f "$tool_deb"
[ -f "$mod_deb" ] && [ -f "$tool_deb" ] || finish

# debian/changelog holds the version; the README and the man page state it.
check "README's Install on Debian section states version $version" \
    bash -c "sed -n '/^## Install on Debian/,/^## [^I]/p' '$repo/README.md' |
             grep -qwF '$version'"
check "kvtool.1 states version $version" \
    grep -qE "^\.TH .*\"ngx_http_kv_module $version\"" "$repo/kvtool/kvtool.1"

echo "# lintian"
lintian --fail-on error,warning --display-info --pedantic \
    "$deb_dir"/${mod_pkg}_${version}_${arch}.changes 2>&1 |
    grep -v 'running with root privileges' | sed 's/^/#   /'
lintian_rc=${PIPESTATUS[0]}
check "lintian: no error, no warning" test "$lintian_rc" -eq 0

abi=$(sed -n 's/^nginx:abi=//p' "$abi_file")
depends=$(dpkg-deb -f "$mod_deb" Depends)
check "$mod_pkg depends on $abi (the ABI of the nginx it was built for)" \
    grep -qE "(^|, )$abi(,|$)" <<< "$depends"
for lib in libprotobuf-c1 libcjson1 libxxhash0; do
    check "$mod_pkg depends on $lib (shlibs)" \
        grep -qE "(^|, )$lib( |,|$)" <<< "$depends"
done

# --- install ---------------------------------------------------------------

# Installing nginx modules triggers nginx-reload, and their maintainer
# scripts may start nginx: invoke-rc.d must refuse (exit 101) for the whole
# test.  Use the machine's policy-rc.d if it already refuses, else ours.
policy_rc=0
if [ -x "$policy" ]; then
    "$policy" nginx start > /dev/null 2>&1
    policy_rc=$?
fi
if [ "$policy_rc" -eq 101 ]; then
    echo "# $policy already refuses to start services"
else
    if [ -e "$policy" ]; then
        policy_saved=$(mktemp "$policy.kv-saved.XXXXXX")
        mv "$policy" "$policy_saved"
    fi
    policy_ours=1
    printf '#!/bin/sh\n# t/deb-package.sh: no service starts\nexit 101\n' \
        > "$policy"
    chmod 755 "$policy"
fi

port80_before=$(ss -Htln 'sport = :80' | wc -l)

installed=1
if ! apt_get install --no-install-recommends "$mod_deb" "$tool_deb" \
        > "$deb_dir/install.log" 2>&1
then
    sed 's/^/#   /' "$deb_dir/install.log"
    bail "apt-get install $mod_pkg $tool_pkg"
fi
check "apt-get install $mod_pkg $tool_pkg" is_installed "$mod_pkg"
check "$tool_pkg is installed" is_installed "$tool_pkg"

check "the install started no nginx on port 80" \
    test "$(ss -Htln 'sport = :80' | wc -l)" -eq "$port80_before"

dpkg -L "$mod_pkg" "$tool_pkg" | sort -u > "$deb_dir/files.list"
check "the module is /usr/lib/nginx/modules/ngx_http_kv_module.so" \
    grep -qx /usr/lib/nginx/modules/ngx_http_kv_module.so "$deb_dir/files.list"
check "kvtool is /usr/bin/kvtool" grep -qx /usr/bin/kvtool "$deb_dir/files.list"
check "$snippet links to $available" \
    test "$(readlink "$snippet")" = "$available"
check "the snippet loads the module" \
    grep -qx 'load_module modules/ngx_http_kv_module.so;' "$available"

# --- serve -----------------------------------------------------------------

tmp=$(mktemp -d /tmp/kv-deb.XXXXXX)
chmod 755 "$tmp"
data=$tmp/data
install -d -o www-data -g www-data -m 0750 "$data"

for i in $(seq 50); do
    port=$((20000 + RANDOM % 20000))
    [ -z "$(ss -Htln "sport = :$port")" ] && break
done

cat > "$tmp/nginx.conf" <<EOF
include $snippet;

user www-data;
worker_processes 2;
error_log $tmp/error.log notice;
pid $tmp/nginx.pid;

events {
    worker_connections 64;
}

http {
    access_log off;
    client_body_temp_path $tmp/client_body;
    proxy_temp_path $tmp/proxy;
    fastcgi_temp_path $tmp/fastcgi;
    uwsgi_temp_path $tmp/uwsgi;
    scgi_temp_path $tmp/scgi;

    kv_zone zone=debtest:1m path=$data;

    server {
        listen 127.0.0.1:$port;
        location /db/ { kv debtest; }
        location = /readyz { kv_ready debtest; }
    }
}
EOF

check "nginx -t with the installed snippet and a kv_zone" \
    /usr/sbin/nginx -q -t -c "$tmp/nginx.conf"

/usr/sbin/nginx -c "$tmp/nginx.conf" 2> "$tmp/start.log" || {
    sed 's/^/#   /' "$tmp/start.log" "$tmp/error.log"
    bail "Debian's nginx starts with the module on 127.0.0.1:$port"
}
# the master writes its pid file after it has gone to the background
for i in $(seq 50); do
    [ -s "$tmp/nginx.pid" ] && break
    sleep 0.1
done
nginx_pid=$(cat "$tmp/nginx.pid" 2>/dev/null)
[ -n "$nginx_pid" ] || bail "nginx wrote no pid file in 5 s"
ok "Debian's nginx starts with the module on 127.0.0.1:$port"

url=http://127.0.0.1:$port
for i in $(seq 50); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' $url/readyz)" = 200 ] && break
    sleep 0.1
done
check "the store is ready" \
    test "$(curl -s -o /dev/null -w '%{http_code}' $url/readyz)" = 200

# request EXPECTED_STATUS EXPECTED_BODY CURL_ARGS...
request() {
    local status=$1 body=$2 out

    shift 2
    out=$(curl -s -w '\n%{http_code}' "$@")
    check "curl $* -> $status ${body:+$body}" \
        test "$out" = "$body"$'\n'"$status"
}

value="stored by Debian's nginx, $(date +%s%N)"
request 201 "" -X PUT -H 'Content-Type: application/octet-stream' \
    --data-binary "$value" $url/db/deb/key
request 200 "$value" $url/db/deb/key
request 200 "" -X DELETE $url/db/deb/key
request 404 '{"error":"no such key"}' $url/db/deb/key
request 201 "" -X PUT -H 'Content-Type: application/json' \
    --data-binary '{"kept":true}' $url/db/deb/kept

check "the log segment in the data dir is owned by www-data" \
    test "$(stat -c %U "$data/0000000001.kvlog" 2>/dev/null)" = www-data
/usr/bin/kvtool check "$data" > "$tmp/check.log" 2>&1
check "the installed kvtool finds the store undamaged" test $? -eq 0
sed 's/^/#   /' "$tmp/check.log"
dump=$(/usr/bin/kvtool dump "$data")
check "the installed kvtool dumps one key, deb/kept" \
    test "$(wc -l <<< "$dump")" -eq 1 \
         -a -n "$(grep -F '"key":"deb/kept"' <<< "$dump")"

check "nginx quits" stop_nginx

# --- purge -----------------------------------------------------------------

apt_get purge "$mod_pkg" "$tool_pkg" > "$deb_dir/purge.log" 2>&1 ||
    sed 's/^/#   /' "$deb_dir/purge.log"
check "apt-get purge $mod_pkg $tool_pkg" \
    bash -c "! dpkg-query -W -f='\${db:Status-Status}\n' $mod_pkg $tool_pkg \
               2>/dev/null | grep -qv '^not-installed$'"
installed=""

# A file of ours may not remain; a directory only if another package has it.
left=""
while read -r f; do
    [ "$f" != /. ] || continue
    [ -e "$f" ] || [ -L "$f" ] || continue
    if [ -d "$f" ] && [ ! -L "$f" ] && dpkg-query -S "$f" > /dev/null 2>&1
    then
        continue
    fi
    left="$left $f"
done < "$deb_dir/files.list"
check "no file of the packages remains${left:+:$left}" test -z "$left"
check "no modules-enabled link remains" \
    test ! -e "$snippet" -a ! -L "$snippet" -a ! -L "$snippet.removed"
check "the data remains" test -s "$data/0000000001.kvlog"

completed=1
finish
