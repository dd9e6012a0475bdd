#define _GNU_SOURCE

/*
 * kvtool compact [--segment-size=SIZE] [--index=hash|sorted] DIR: the
 * engine's own compaction, run offline under the directory lock, its
 * outputs rolling over at SIZE, then the hint file of every immutable
 * segment.  --index=sorted writes every key into sorted segments (a
 * directory written in index=hash then opens in index=sorted with a zone
 * too small for all its keys); --index=hash, back into log segments.
 */

#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>

#include "kvtool.h"


/* the handle kv_compact() runs on, for the signal handler */
static kv_store_t  *kvtool_compacting;


/*
 * Ctrl-C or SIGTERM: kv_compact() deletes what it wrote and returns (a
 * second signal kills, as usual).  kv_compact_cancel() only sets a flag.
 */
static void
kvtool_compact_signal(int signo)
{
    (void) signo;

    kv_compact_cancel(kvtool_compacting);
}


static void
kvtool_compact_signals(void (*handler)(int))
{
    struct sigaction  sa;

    memset(&sa, 0, sizeof(struct sigaction));
    sa.sa_handler = handler;
    sa.sa_flags = (handler == SIG_DFL) ? 0 : SA_RESETHAND;
    sigemptyset(&sa.sa_mask);

    (void) sigaction(SIGINT, &sa, NULL);
    (void) sigaction(SIGTERM, &sa, NULL);
}


static void
kvtool_compact_report(const char *when, uint64_t bytes, const kv_stats_t *st)
{
    printf("%s %" PRIu64 " bytes on disk, %" PRIu64 " segments, %" PRIu64
           " live keys in %" PRIu64 " bytes, %" PRIu64 " dead bytes",
           when, bytes, st->segments, st->keys, st->live_bytes,
           st->dead_bytes);

    /* index=sorted: the keys above are the index's, these the tables' */
    if (st->table_keys != 0) {
        printf(", %" PRIu64 " keys in sorted segments", st->table_keys);
    }

    printf("\n");
}


int
kvtool_compact(const char *dir, uint64_t segment_size, unsigned mode)
{
    int             rc;
    uint64_t        before_bytes, after_bytes;
    kv_stats_t      before, after;
    struct stat     st;
    kvtool_store_t  t;

    if (stat(dir, &st) == -1 || !S_ISDIR(st.st_mode)) {
        kvtool_error("\"%s\" is not a directory", dir);
        return KVTOOL_FAIL;
    }

    before_bytes = kv_dir_bytes(dir);

    if (kvtool_open(&t, dir, before_bytes, mode, segment_size)
        != KV_OK)
    {
        return KVTOOL_FAIL;
    }

    kv_stats(&t.s, &before);

    rc = kv_compact_begin(&t.s);

    if (rc == KV_OK) {
        /* index=sorted: every run is merged, so tombstones go too */
        kv_compact_request(&t.s);

        kvtool_compacting = &t.s;
        kvtool_compact_signals(kvtool_compact_signal);

        rc = kv_compact(&t.s);

        kvtool_compact_signals(SIG_DFL);
    }

    if (rc == KV_OK) {
        rc = kv_write_hints(&t.s);
    }

    kv_stats(&t.s, &after);
    kvtool_close(&t);

    if (rc != KV_OK) {
        kvtool_error("compacting \"%s\" failed: %s", dir, kv_strerror(rc));
        return KVTOOL_FAIL;
    }

    after_bytes = kv_dir_bytes(dir);

    kvtool_compact_report("before:", before_bytes, &before);
    kvtool_compact_report("after: ", after_bytes, &after);

    printf("reclaimed: %" PRIu64 " bytes\n",
           before_bytes > after_bytes ? before_bytes - after_bytes : 0);

    return KVTOOL_OK;
}
