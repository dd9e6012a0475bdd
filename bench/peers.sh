#!/usr/bin/env bash
# peers.sh: the module side by side with its peers (nginx return/static,
# lua-shdict, Redis behind webdis, etcd) and nginx's own ceiling, through
# the shared harness run.sh (RUN_SH), which starts the peers itself and
# takes our nginx as its KV_URL target.  Not part of `make bench`: a full
# run takes about 20 minutes per fsync mode.
#
# Our nginx is configured as the harness configures its own: 2 workers,
# access_log off, keepalive_requests 1000000, client_body_buffer_size 2m.
#
# Environment:
#   FSYNC     the fsync modes to run, one run.sh invocation each  (always)
#   RUN_SH    the harness        (/work/shared/bench/run.sh)
#   PEERS, WORKLOADS, DURATION, RUNS, SKIP_INSTALL, ...: passed to run.sh
#             as they are (see its README), e.g. PEERS="ceiling lua
#             redis-everysec redis-always" DURATION=5 RUNS=2
# Tables and CSVs go to bench/out/peers-*/ (run.sh's OUT_DIR).

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FSYNC=${FSYNC:-always}
RUN_SH=${RUN_SH:-/work/shared/bench/run.sh}

[[ -x $RUN_SH ]] || die "no harness at $RUN_SH (set RUN_SH)"
need curl jq

out=$(out_dir peers)
trap kv_stop EXIT

for mode in $FSYNC; do
    case $mode in
    always)     note="group commit: fdatasync (thread pool) before the 201" ;;
    interval:*) note="write(2), fdatasync every ${mode#interval:}" ;;
    off)        note="write(2) only, no fsync" ;;
    *)          die "unknown fsync mode \"$mode\"" ;;
    esac

    kv_start "$mode"
    echo "peers: ngx-kv fsync=$mode at $kv_url/db/ ($kv_run)"

    KV_URL=$kv_url/db/ KV_NAME="ngx-kv-${mode%%:*}" \
    KV_NOTE="ngx_http_kv_module, fsync=$mode: $note" \
    OUT_DIR=$out "$RUN_SH"

    echo "ngx-kv status after the run: $(curl -s --max-time 5 \
        "$kv_url/kv/status" | jq -c '{keys, puts, segments, write_errors,
        fsync: .fsync.count, compactions: .compaction.runs}')"
    kv_stop
done

echo "tables: $out"
