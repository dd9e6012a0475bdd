#define _GNU_SOURCE

/*
 * kvtool check DIR: read-only, lock-free, so it also runs beside nginx.
 * Each segment is scanned past every damaged range, its hint verified, and
 * its records replayed into an index for the live and dead figures.
 */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "kvtool.h"


typedef struct {
    uint64_t  records;
    uint64_t  bad;
    uint64_t  torn;
    uint64_t  hints[4];      /* by KVTOOL_HINT_* */
} kvtool_check_t;


/*
 * Damage followed by valid records stops recovery; a bad end of a segment
 * is the torn tail of a write that was never acknowledged as durable, and
 * recovery cuts it, as it does after every crash.  So it does with the
 * trace of a flush that a power cut interrupted (kv_unfinished_flush()).
 */
static void
kvtool_check_damage(const kvtool_segment_t *seg, int last, long holder,
    kvtool_check_t *c)
{
    size_t                  i;
    const kvtool_damage_t  *d;

    for (i = 0; i < seg->ndamage; i++) {
        d = &seg->damage[i];

        if (d->tail) {
            printf("warning: %s in " KV_SEGMENT_FMT " at offset %" PRIu64
                   " (%" PRIu64 " bytes%s): %s\n",
                   d->tail == KVTOOL_TAIL_FLUSH
                       ? "a flush cut short by a power cut" : "torn tail",
                   seg->id, d->off, d->len,
                   d->tail == KVTOOL_TAIL_FLUSH
                       ? ", a sector never written, then records never "
                         "acknowledged" : "",
                   last && holder > 0 ? "may be a write in progress"
                                      : "the next start cuts it");
            c->torn++;
            continue;
        }

        printf("bad record in " KV_SEGMENT_FMT " at offset %" PRIu64 ": %"
               PRIu64 " bytes unreadable, valid records follow at offset %"
               PRIu64 "\n", seg->id, d->off, d->len, d->off + d->len);

        c->bad++;
    }
}


static void
kvtool_check_segment(const kvtool_segment_t *seg, int last,
    kvtool_check_t *c)
{
    const char  *hint;

    switch (seg->hint) {
    case KVTOOL_HINT_OK:
        hint = "hint ok";
        break;
    case KVTOOL_HINT_BAD:
        hint = "hint BAD: ";
        break;
    case KVTOOL_HINT_UNCHECKED:
        hint = "hint not verified (damaged segment)";
        break;
    default:
        hint = last ? "no hint (active segment)" : "hint missing";
    }

    printf(KV_SEGMENT_FMT ": %" PRIu64 " records, %" PRIu64 " bytes, %s%s",
           seg->id, seg->records, seg->size - seg->preallocated, hint,
           seg->hint == KVTOOL_HINT_BAD ? seg->why : "");

    if (seg->preallocated != 0) {
        printf(", %" PRIu64 " bytes preallocated", seg->preallocated);
    }

    printf("\n");

    c->records += seg->records;

    /* the active segment has no hint by design */
    if (seg->hint != KVTOOL_HINT_NONE || !last) {
        c->hints[seg->hint]++;
    }
}


/*
 * index=sorted: the table file of every sorted segment TABLES names, as
 * the store opens it (checksum, bounds, the segment's size).  A run whose
 * segments are gone was compacted in index=hash (which leaves TABLES
 * behind, and recovery then replays every segment) or merged while this
 * ran: not damage.  Prints a line per run; returns how many table files
 * are damaged or missing beside their segment.
 */
static uint32_t
kvtool_check_tables(kvtool_store_t *t)
{
    int          rc;
    char         path[PATH_MAX];
    uint32_t     r, id, bad, floor, nbad, gone;
    uint64_t     keys, bytes;
    kv_runs_t    runs, now;
    kv_table_t   tb;

    rc = kv_level_load(&t->s, &runs, &floor);

    if (rc == KV_NOTFOUND) {
        return 0;
    }

    if (rc != KV_OK) {
        printf("TABLES: damaged\n");
        return 1;
    }

    nbad = 0;

    for (r = 0; r < runs.n; r++) {
        bad = 0;
        gone = 0;
        keys = 0;
        bytes = 0;

        for (id = runs.run[r].first; id <= runs.run[r].last; id++) {
            if (kv_table_open(&t->s, id, &tb, 1) == KV_OK) {
                keys += tb.nkeys;
                bytes += tb.map_len;
                kv_table_close(&tb);
                continue;
            }

            kv_segment_path(&t->s, id, path);

            /* a merge may have replaced TABLES and deleted it meanwhile */
            if (access(path, F_OK) != 0
                || (kv_level_load(&t->s, &now, &floor) == KV_OK
                    && !kv_level_has(&now, id)))
            {
                gone++;
                continue;
            }

            bad++;
        }

        if (gone) {
            printf("sorted run %u: segments %u to %u: %u gone (compacted "
                   "in index=hash, or merged during the check)\n", r + 1,
                   runs.run[r].first, runs.run[r].last, gone);
        }

        if (gone <= runs.run[r].last - runs.run[r].first) {
            printf("sorted run %u: segments %u to %u, %" PRIu64 " records, "
                   "table files %" PRIu64 " bytes, %u damaged or missing\n",
                   r + 1, runs.run[r].first, runs.run[r].last, keys, bytes,
                   bad);
        }

        nbad += bad;
    }

    return nbad;
}


int
kvtool_check(const char *dir)
{
    int               rc;
    long              holder;
    char              path[PATH_MAX];
    size_t            i, n;
    uint32_t         *ids;
    struct stat       st;
    kvtool_check_t    c;
    kvtool_store_t    t;
    kvtool_segment_t  seg;
    uint32_t          tables_bad;

    if (stat(dir, &st) == -1 || !S_ISDIR(st.st_mode)) {
        kvtool_error("\"%s\" is not a directory", dir);
        return KVTOOL_FAIL;
    }

    if (kvtool_open(&t, dir, kv_dir_bytes(dir), KVTOOL_SCAN,
                    KV_SEGMENT_SIZE_DEFAULT)
        != KV_OK)
    {
        return KVTOOL_FAIL;
    }

    rc = kv_list_segments(&t.s, &ids, &n);
    if (rc != KV_OK) {
        kvtool_close(&t);
        return KVTOOL_FAIL;
    }

    holder = kvtool_lock_holder(dir);
    memset(&c, 0, sizeof(kvtool_check_t));

    if (holder > 0) {
        printf("checking \"%s\": in use by a running process (pid %ld)\n",
               dir, holder);

    } else {
        printf("checking \"%s\": %s\n", dir,
               holder == 0 ? "not in use" : "in use or not: /proc/locks is "
               "unreadable");
    }

    snprintf(path, sizeof(path), "%s/" KV_MERGE_FILE, dir);

    if (stat(path, &st) == 0) {
        printf("note: %s exists: a compaction is running or was "
               "interrupted; the next start removes its output\n", path);
    }

    for (i = 0; i < n; i++) {
        rc = kvtool_verify_segment(&t, ids[i], i == n - 1, &t, &seg);

        /* a compaction of the running store may delete it meanwhile */
        kv_segment_path(&t.s, ids[i], path);

        if (rc == KV_NOTFOUND || (rc == KV_OK && access(path, F_OK) == -1)) {
            printf(KV_SEGMENT_FMT ": removed during the check (by a "
                   "compaction)\n", ids[i]);
            rc = KV_OK;

        } else if (rc == KV_OK) {
            kvtool_check_segment(&seg, i == n - 1, &c);
            kvtool_check_damage(&seg, i == n - 1, holder, &c);
        }

        kvtool_segment_free(&seg);

        if (rc != KV_OK) {
            break;
        }
    }

    free(ids);

    if (rc != KV_OK) {
        kvtool_error("checking \"%s\" failed: %s", dir, kv_strerror(rc));
        kvtool_close(&t);
        return KVTOOL_FAIL;
    }

    printf("segments: %zu\n"
           "records: %" PRIu64 "\n"
           "live keys: %" PRIu64 "\n"
           "live bytes: %" PRIu64 "\n"
           "dead bytes: %" PRIu64 "\n"
           "hints: %" PRIu64 " ok, %" PRIu64 " missing, %" PRIu64 " bad, %"
           PRIu64 " not verified\n"
           "bad records: %" PRIu64 "\n",
           n, c.records, t.sh->stats.keys, t.sh->stats.live_bytes,
           t.sh->stats.dead_bytes, c.hints[KVTOOL_HINT_OK],
           c.hints[KVTOOL_HINT_NONE], c.hints[KVTOOL_HINT_BAD],
           c.hints[KVTOOL_HINT_UNCHECKED], c.bad);

    tables_bad = kvtool_check_tables(&t);

    kvtool_close(&t);

    if (tables_bad) {
        printf("result: DAMAGED table files: the next start builds them "
               "again from their sorted segments\n");
        return KVTOOL_FAIL;
    }

    if (c.bad) {
        printf("result: DAMAGED: the store does not start; stop nginx and "
               "run \"kvtool repair %s\"\n", dir);
        return KVTOOL_FAIL;
    }

    if (c.hints[KVTOOL_HINT_BAD]) {
        printf("result: DAMAGED hint files: starts scan their segments; "
               "\"kvtool repair %s\" rewrites them\n", dir);
        return KVTOOL_FAIL;
    }

    printf("result: ok%s\n", c.torn ? " (with a torn tail)" : "");

    return KVTOOL_OK;
}
