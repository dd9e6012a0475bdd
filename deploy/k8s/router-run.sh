#!/bin/sh
# The router container's command: nginx resolves the shard names of
# kv-shards.conf only when it loads its configuration, and refuses to start
# while one does not resolve.  So this waits until every name resolves,
# starts nginx, and reloads it whenever a shard pod's address changes (a
# restarted pod gets a new IP).  SIGTERM and SIGQUIT stop nginx gracefully.

set -u

dir=${KV_ROUTER_DIR:-/etc/nginx/kv}
conf=$dir/router.conf
interval=${KV_ROUTER_RESOLVE_INTERVAL:-5}

# One line per shard: its name and addresses, or its name and "-" if it
# does not resolve.
addresses() {
    sed -n 's/^[[:space:]]*server[[:space:]][[:space:]]*\([^[:space:];]*\).*/\1/p' \
        "$dir/kv-shards.conf" |
    while read -r name; do
        addrs=$(getent ahostsv4 "${name%:*}" | awk '{ print $1 }' |
                sort -u | tr '\n' ' ')
        echo "$name ${addrs:--}"
    done
}

complete() {
    ! printf '%s\n' "$1" | grep -q ' -$'
}

known=$(addresses)
until complete "$known"; do
    echo "kv-router: waiting for every shard name of kv-shards.conf to resolve"
    sleep 2
    known=$(addresses)
done

nginx -e stderr -c "$conf" -g 'daemon off;' &
pid=$!

trap 'kill -QUIT "$pid"; wait "$pid"; exit 0' TERM QUIT INT

while kill -0 "$pid" 2>/dev/null; do
    sleep "$interval" &
    wait $!
    now=$(addresses)
    if [ "$now" != "$known" ] && complete "$now"; then
        echo "kv-router: a shard's address changed, reloading nginx"
        nginx -e stderr -c "$conf" -s reload && known=$now
    fi
done

wait "$pid"
