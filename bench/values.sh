#!/usr/bin/env bash
# values.sh: GET of values from 4 KiB to 1 MiB, copied into memory or sent
# from the segment file, against nginx sending the same bytes as a static
# file; it chooses NGX_HTTP_KV_FILE_MIN (ngx_http_kv_handler.c), the size
# from which the module sends a value from its file.
#
# Two builds of the module: "mem" never sends from the file, "file"
# always does (-DNGX_HTTP_KV_FILE_MIN=).  Targets, per value size:
#   mem            the value read whole into memory, verified, written
#   file           sent from the segment file with sendfile off (nginx's
#                  default: read into output_buffers and written)
#   file-sendfile  the same with sendfile and tcp_nopush on
#   static         nginx, the same bytes as a static file, sendfile off
#   static-sendfile                  ... sendfile and tcp_nopush on
# wrk -t2 -c64 --latency, DURATION s per run, ROUNDS rounds in a rotating
# order; medians of MiB/s and of p99.
#
# Environment: SIZES ("4096 16384 65536 262144 1048576"), ROUNDS (3),
# DURATION (4), and those of lib.sh.

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES=${SIZES:-4096 16384 65536 262144 1048576}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
TARGETS=(mem file file-sendfile static static-sendfile)

need wrk curl awk head cmp make

out=$(out_dir values)
builds=$repo_dir/build/bench-values

# build NAME FILE_MIN: the module with that threshold into $builds/NAME
build() {
    local dir=$builds/$1

    mkdir -p "$dir"
    if [[ ! -f $dir/Makefile ]]; then
        (cd /usr/share/nginx/src && . ./conf_flags && ./configure \
            "${NGX_CONF_FLAGS[@]}" --with-cc-opt="-DNGX_HTTP_KV_FILE_MIN=$2" \
            --add-dynamic-module="$repo_dir" --builddir="$dir" \
            > "$dir/configure.log" 2>&1) \
            || { tail -20 "$dir/configure.log"; die "configure failed"; }
    fi
    make -s -f "$dir/Makefile" -C /usr/share/nginx/src modules \
        > "$dir/build.log" 2>&1 \
        || { tail -20 "$dir/build.log"; die "build of $1 failed"; }
}

build mem 1099511627776    # 1 TiB: never
build file 1

www=$(mktemp -d "$KV_TMP/kv-values-www.XXXXXX")
trap 'kv_stop; rm -rf -- "$www"' EXIT

for size in $SIZES; do
    head -c "$size" /dev/urandom > "$www/v$size"
done

# serve BUILD: our nginx with that build, the static files beside it
serve() {
    MODULE=$builds/$1/ngx_http_kv_module.so \
    KV_SERVER_EXTRA="location /static/ { alias $www/; sendfile off; }
        location /static-sendfile/ { alias $www/; sendfile on; tcp_nopush on; }
        location /db-sendfile/ { sendfile on; tcp_nopush on; kv store; }" \
        kv_start off max_value=2m

    for size in $SIZES; do
        curl -sf -o /dev/null -X PUT \
            -H 'Content-Type: application/octet-stream' \
            --data-binary "@$www/v$size" "$kv_url/db/v$size"
    done
}

path_of() {
    case $1 in
        mem|file)         echo "/db/v$2" ;;
        file-sendfile)    echo "/db-sendfile/v$2" ;;
        static)           echo "/static/v$2" ;;
        static-sendfile)  echo "/static-sendfile/v$2" ;;
    esac
}

build_of() {
    [[ $1 == mem ]] && echo mem || echo file
}

# run TARGET SIZE ROUND: one wrk run; prints "MiB/s p99_ms"
run() {
    local f=$out/$1-$2-$3.txt url=$kv_url$(path_of "$1" "$2")

    curl -sf "$url" | cmp -s - "$www/v$2" \
        || die "$1: GET $url does not give the $2 bytes stored"

    wrk -t2 -c64 -d"${DURATION}s" --timeout 10s --latency "$url" > "$f"
    awk -v size="$2" '
        /^Requests\/sec:/ { rps = $2 }
        /^ +99%/ { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
                   p99 = (u == "us") ? v / 1000 : (u == "s") ? v * 1000 : v }
        /Non-2xx|Socket errors/ { errors = 1 }
        END { if (errors) { print "errors" > "/dev/stderr"; exit 1 }
              printf "%.0f %.2f\n", rps * size / 1048576, p99 }' "$f"
}

machine
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"

declare -A mibs p99s
current=""
for ((round = 1; round <= ROUNDS; round++)); do
    # rotate the order of the builds' turns
    order=(mem file)
    ((round % 2)) || order=(file mem)
    for b in "${order[@]}"; do
        [[ $current == "$b" ]] || { kv_stop; serve "$b"; current=$b; }
        for t in "${TARGETS[@]}"; do
            [[ $(build_of "$t") == "$b" ]] || continue
            for size in $SIZES; do
                read -r m p < <(run "$t" "$size" "$round")
                mibs[$t,$size]+="$m "
                p99s[$t,$size]+="$p "
                sleep 1
            done
        done
    done
    echo "round $round done (load $(cut -d' ' -f1 /proc/loadavg))"
done

median() { printf '%s\n' $1 | sort -n | awk '{ a[NR] = $1 }
    END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '| MiB/s (p99 ms) |'
for size in $SIZES; do printf ' %s B |' "$size"; done
printf '\n|---|'
for size in $SIZES; do printf -- '---:|'; done
echo
for t in "${TARGETS[@]}"; do
    printf '| %s |' "$t"
    for size in $SIZES; do
        printf ' %s (%s) |' "$(median "${mibs[$t,$size]}")" \
            "$(median "${p99s[$t,$size]}")"
    done
    echo
done
