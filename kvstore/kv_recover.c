#define _GNU_SOURCE

/*
 * Recovery: take the directory lock, rebuild the index from each segment in
 * id order (from its hint file when a usable one exists, else by scanning
 * it), cut torn tails, refuse mid-segment damage and open the store.  The
 * segments are listed and scanned by kv_segment.c; each record found goes
 * into the index through kv_replay_apply() of kv_index.c.  In index=sorted,
 * a log with more keys than the index holds is first moved into sorted
 * segments (kv_convert()).
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "kv_arena.h"
#include "kv_internal.h"


typedef struct {
    kv_store_t     *s;
    uint32_t        id;
} kv_replay_t;


/* milliseconds since t0, on the monotonic clock */
static uint64_t
kv_ms_since(const struct timespec *t0)
{
    struct timespec  t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);

    return (uint64_t) ((t1.tv_sec - t0->tv_sec) * 1000
                       + (t1.tv_nsec - t0->tv_nsec) / 1000000);
}


/* Creates the directory if missing and makes its entry durable. */
static int
kv_make_dir(kv_store_t *s)
{
    int    rc;
    char   parent[PATH_MAX], *slash;

    if (mkdir(s->conf.dir, 0750) == -1) {
        if (errno == EEXIST) {
            return KV_OK;
        }

        kv_log(s->host, KV_LOG_ERR, errno, "mkdir(\"%s\") failed",
               s->conf.dir);
        return KV_EIO;
    }

    rc = kv_chown(s, -1, s->conf.dir);
    if (rc != KV_OK) {
        return rc;
    }

    strcpy(parent, s->conf.dir);

    for (slash = parent + strlen(parent) - 1; slash > parent; slash--) {
        if (*slash != '/') {
            break;
        }

        *slash = '\0';
    }

    slash = strrchr(parent, '/');

    if (slash == NULL) {
        strcpy(parent, ".");

    } else if (slash == parent) {
        parent[1] = '\0';

    } else {
        *slash = '\0';
    }

    rc = kv_flush_dir(s, s->conf.dir);
    if (rc != KV_OK) {
        return rc;
    }

    return kv_flush_dir(s, parent);
}


/*
 * The lock descriptor is never closed: workers inherit it, which keeps the
 * directory locked while any process of this generation lives.
 */
int
kv_lock_dir(kv_store_t *s)
{
    int   fd, n;
    char  path[PATH_MAX], pid[32];

    if (s->sh->lock_fd >= 0) {
        return KV_OK;
    }

    snprintf(path, sizeof(path), "%s/" KV_LOCK_FILE, s->conf.dir);

    fd = kv_create_file(s, path, O_RDWR);

    if (fd == -1 && errno == EEXIST) {
        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd == -1) {
            kv_log(s->host, KV_LOG_ERR, errno, "open(\"%s\") failed", path);
        }
    }

    if (fd == -1) {
        return KV_EIO;
    }

    if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
        if (errno == EWOULDBLOCK) {
            kv_log(s->host, KV_LOG_ERR, 0, "data directory \"%s\" is in use "
                   "by another process (%s/" KV_LOCK_FILE " is locked)",
                   s->conf.dir, s->conf.dir);
            close(fd);
            return KV_ELOCKED;
        }

        kv_log(s->host, KV_LOG_ERR, errno, "flock(\"%s\") failed", path);
        close(fd);
        return KV_EIO;
    }

    /* the pid only informs people looking at the directory */
    n = snprintf(pid, sizeof(pid), "%ld\n", (long) getpid());

    if (ftruncate(fd, 0) == -1 || pwrite(fd, pid, (size_t) n, 0) != n) {
        kv_log(s->host, KV_LOG_WARN, errno, "writing the pid to \"%s\" "
               "failed", path);
    }

    s->sh->lock_fd = fd;

    return KV_OK;
}


static int
kv_replay_frame(void *ctx, const kv_record_t *rec, uint64_t off,
    uint32_t flen)
{
    int           rc;
    kv_replay_t  *r;

    r = ctx;

    r->s->host->lock(r->s->host->ctx);
    rc = kv_replay_apply(r->s, r->id, rec, off, flen);
    r->s->host->unlock(r->s->host->ctx);

    return rc;
}


/* for kv_scan_segment() calls that only ask where the valid frames end */
static int
kv_skip_frame(void *ctx, const kv_record_t *rec, uint64_t off, uint32_t flen)
{
    (void) ctx;
    (void) rec;
    (void) off;
    (void) flen;

    return KV_OK;
}


/*
 * Whether some 512-byte sector that lies in [from, to) past `from` reads
 * zero from `from` on: a sector the disk never wrote (sectors are written
 * whole or not at all).
 */
static int
kv_unwritten_sector(kv_store_t *s, uint32_t id, uint64_t from, uint64_t to,
    int *yes)
{
    int       fd, rc;
    char      path[PATH_MAX];
    size_t    i, j, want;
    ssize_t   n;
    uint8_t   buf[65536];
    uint64_t  sec, size;

    *yes = 0;
    kv_segment_path(s, id, path);

    rc = kv_open_read(s, path, &fd, &size);
    if (rc != KV_OK) {
        return rc;
    }

    sec = from & ~(uint64_t) 511;

    while (!*yes && sec + 512 <= to) {
        want = (to - sec) & ~(uint64_t) 511;
        want = want < sizeof(buf) ? want : sizeof(buf);

        n = pread(fd, buf, want, (off_t) sec);

        if (n == -1 && errno == EINTR) {
            continue;
        }

        if (n < 512) {
            rc = n == -1 ? KV_EIO : KV_OK;

            if (n == -1) {
                kv_log(s->host, KV_LOG_ERR, errno, "pread(\"%s\") at "
                       "offset %" PRIu64 " failed", path, sec);
            }

            break;
        }

        for (i = 0; !*yes && i + 512 <= (size_t) n; i += 512) {
            j = sec + i < from ? (size_t) (from - sec - i) : 0;

            while (j < 512 && buf[i + j] == 0) {
                j++;
            }

            *yes = (j == 512);
        }

        sec += (uint64_t) n & ~(uint64_t) 511;
    }

    close(fd);

    return rc;
}


/*
 * A flush writes in place over preallocated zeros, in any order, so a
 * later sector may have reached the disk when an earlier one did not.
 * Then the damage holds a sector never written, the segment ends in
 * preallocated zeros, and nothing from `from` on was acknowledged:
 * fsync=always answers a write only once a flush covering every earlier
 * byte of the file has completed.
 */
int
kv_unfinished_flush(kv_store_t *s, uint32_t id, uint64_t from,
    uint64_t next, uint64_t *data_end)
{
    int       rc, yes, zeros;
    uint64_t  end, size;

    *data_end = 0;

    rc = kv_unwritten_sector(s, id, from, next, &yes);
    if (rc != KV_OK || !yes) {
        return rc;
    }

    for ( ;; ) {
        rc = kv_scan_segment(s, id, next, kv_skip_frame, NULL, &end, &size);
        if (rc != KV_OK || end == size) {
            return rc;
        }

        rc = kv_zero_tail(s, id, end, &zeros);
        if (rc != KV_OK || zeros) {
            *data_end = zeros ? end : 0;
            return rc;
        }

        rc = kv_valid_frame_after(s, id, end, &next);
        if (rc != KV_OK || next == 0) {
            return rc;
        }
    }
}


/*
 * Scans segment id into the index and sets *end to the end of its last
 * good frame.  A bad frame with no valid frame after it is the torn tail
 * of a write that was never durable (or that the fsync mode allowed to
 * lose): it is cut off, in any segment.  Zeros to the end of the last
 * segment are the space kv_preallocate() wrote ahead: cut off too, with
 * no warning.  A bad frame followed by valid ones is damage to
 * acknowledged data, unless kv_unfinished_flush() says otherwise: the
 * store refuses to start rather than serve an older value of that
 * record's key.
 */
static int
kv_recover_segment(kv_store_t *s, uint32_t id, int last, uint64_t *end)
{
    int           rc, fd, zeros;
    char          path[PATH_MAX];
    uint64_t      size, next, scanned, data_end, dropped;
    kv_replay_t   r;

    r.s = s;
    r.id = id;
    kv_segment_path(s, id, path);

    rc = kv_scan_segment(s, id, 0, kv_replay_frame, &r, end, &size);

    if (rc == KV_NOTFOUND) {
        kv_log(s->host, KV_LOG_ERR, ENOENT, "open(\"%s\") failed", path);
        return KV_EIO;
    }

    if (rc != KV_OK) {
        return rc;
    }

    zeros = 0;
    data_end = 0;

    if (*end < size && s->conf.read_only && last) {
        /* a running store appended since the scan: the snapshot ends here */
        rc = kv_scan_segment(s, id, *end, kv_skip_frame, NULL, &scanned,
                             &next);
        if (rc == KV_OK && scanned > *end) {
            return KV_OK;
        }
    }

    if (*end < size) {
        next = 0;
        rc = kv_zero_tail(s, id, *end, &zeros);

        if (rc == KV_OK && !zeros) {
            rc = kv_valid_frame_after(s, id, *end, &next);
        }

        if (rc == KV_OK && next != 0 && last) {
            rc = kv_unfinished_flush(s, id, *end, next, &data_end);
        }

        if (rc != KV_OK) {
            return rc == KV_NOTFOUND ? KV_EIO : rc;
        }

        if (next != 0 && data_end == 0) {
            kv_log(s->host, KV_LOG_ERR, 0, "corrupt record in \"%s\" at "
                   "offset %" PRIu64 " followed by valid records; refusing "
                   "to start: run `kvtool repair %s` (it moves the damaged "
                   "bytes aside)", path, *end, s->conf.dir);
            return KV_ECORRUPT;
        }

        /* zeros in a sealed segment: lost writes, not preallocated space */
        zeros = zeros && last;
    }

    if (s->conf.read_only) {
        if (*end < size && !zeros) {
            kv_log(s->host, KV_LOG_WARN, 0, "torn tail of \"%s\" at offset "
                   "%" PRIu64 " (%" PRIu64 " bytes) left as is: read-only",
                   path, *end, size - *end);
        }

        return KV_OK;
    }

    /*
     * A kill -9 leaves written pages in the page cache: flushed here, all
     * that recovery found is durable.
     */
    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "open(\"%s\") failed", path);
        return KV_EIO;
    }

    if (*end < size && ftruncate(fd, (off_t) *end) == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "truncating \"%s\" to %" PRIu64
               " failed", path, *end);
        close(fd);
        return KV_EIO;
    }

    rc = kv_flush(s, fd, path);
    close(fd);

    if (rc != KV_OK) {
        return rc;
    }

    if (*end < size && zeros) {
        kv_log(s->host, KV_LOG_NOTICE, 0, "cut %" PRIu64 " bytes of "
               "preallocated space off \"%s\" at offset %" PRIu64,
               size - *end, path, *end);

    } else if (*end < size) {
        /* after a power cut mid-flush, the zeros after it are not lost */
        dropped = (data_end != 0 ? data_end : size) - *end;

        kv_log(s->host, KV_LOG_WARN, 0, "truncated torn tail of \"%s\" at "
               "offset %" PRIu64 " (%" PRIu64 " bytes dropped)%s", path,
               *end, dropped, data_end != 0 ? ": a flush that a power cut "
               "interrupted left records after a gap, none of them "
               "acknowledged" : "");

        s->host->lock(s->host->ctx);
        s->sh->stats.truncated_bytes += dropped;
        s->host->unlock(s->host->ctx);
    }

    return KV_OK;
}


/*
 * Hint files of segments that are gone, or of the newest segment (which
 * has none while it is active), and unfinished hint writes describe
 * nothing: remove them.
 */
static void
kv_remove_orphans(kv_store_t *s, const uint32_t *ids, size_t n)
{
    DIR            *d;
    char            path[PATH_MAX];
    uint32_t        id;
    struct dirent  *de;

    d = opendir(s->conf.dir);
    if (d == NULL) {
        kv_log(s->host, KV_LOG_WARN, errno, "opendir(\"%s\") failed",
               s->conf.dir);
        return;
    }

    while ((de = readdir(d)) != NULL) {
        id = kv_file_id(de->d_name, ".kvhint");

        if (id != 0
            && bsearch(&id, ids, n - 1, sizeof(uint32_t), kv_cmp_id) != NULL)
        {
            continue;
        }

        if (id == 0 && kv_file_id(de->d_name, ".kvhint" KV_TMP_SUFFIX) == 0) {
            continue;
        }

        snprintf(path, sizeof(path), "%s/%s", s->conf.dir, de->d_name);

        if (unlink(path) == -1) {
            kv_log(s->host, KV_LOG_WARN, errno, "unlink(\"%s\") failed",
                   path);

        } else {
            kv_log(s->host, KV_LOG_INFO, 0, "removed \"%s\": its segment is "
                   "gone, active or the write was interrupted", path);
        }
    }

    closedir(d);
}


/* Locks the directory and tidies it up: nothing of this in read-only mode */
static int
kv_prepare_dir(kv_store_t *s)
{
    int  rc;

    rc = kv_make_dir(s);
    if (rc != KV_OK) {
        return rc;
    }

    rc = kv_lock_dir(s);
    if (rc != KV_OK) {
        return rc;
    }

    return kv_compact_cleanup(s);
}


/*
 * A read-only recovery leaves an interrupted compaction alone: its outputs
 * (MERGE names them) are incomplete copies that cleanup would delete, so
 * they are not replayed.
 */
static size_t
kv_skip_merge_outputs(kv_store_t *s, uint32_t *ids, size_t n)
{
    size_t    i, k;
    uint32_t  first, last;

    if (kv_merge_outputs(s, &first, &last) != KV_OK) {
        return n;
    }

    for (i = 0, k = 0; i < n; i++) {
        if (ids[i] < first || ids[i] > last) {
            ids[k++] = ids[i];
        }
    }

    return k;
}


/*
 * index=sorted: the runs of sorted segments TABLES names, their tables
 * opened (a damaged or missing table file is built again, logged) and
 * made the store's before the log segments are replayed: a tombstone then
 * becomes a mask.  If a segment of them is missing, a later compaction in
 * index=hash took them as inputs: every segment is then replayed, as in
 * index=hash, and *runs is empty.
 */
static int
kv_recover_tables(kv_store_t *s, uint32_t *ids, size_t n, kv_runs_t *runs)
{
    int           rc;
    uint32_t      id, floor, r;
    uint64_t      keys, bytes, index_bytes;
    kv_table_t    t;
    kv_shared_t  *sh;

    sh = s->sh;

    rc = kv_level_load(s, runs, &floor);

    if (rc == KV_NOTFOUND) {
        return KV_OK;
    }

    if (rc != KV_OK) {
        return rc;
    }

    id = kv_runs_missing(runs, ids, n);

    if (id != 0) {
        kv_log(s->host, KV_LOG_NOTICE, 0, "sorted segment %u of \"%s\" is "
               "gone (compacted in index=hash): every segment is replayed "
               "into the index", id, s->conf.dir);
        runs->n = 0;

        /* the runs are no more: TABLES says so, the floor stays */
        return s->conf.read_only ? KV_OK : kv_level_save(s, runs, floor);
    }

    /* a damaged or missing table file is built again from its segment */

    for (r = 0; r < runs->n; r++) {
        for (id = runs->run[r].first; id <= runs->run[r].last; id++) {
            rc = kv_table_open(s, id, &t, 1);

            if (rc == KV_OK) {
                kv_table_close(&t);
                continue;
            }

            if ((rc != KV_NOTFOUND && rc != KV_ECORRUPT)
                || s->conf.read_only)
            {
                return rc;
            }

            rc = kv_table_build(s, id);
            if (rc != KV_OK) {
                return rc;
            }

            kv_log(s->host, KV_LOG_NOTICE, 0, "rebuilt the table file of "
                   "sorted segment %u of \"%s\"", id, s->conf.dir);
        }
    }

    runs->gen = 1;

    rc = kv_level_open(s, runs);
    if (rc != KV_OK) {
        return rc;
    }

    keys = 0;
    bytes = 0;
    index_bytes = 0;

    for (r = 0; r < s->nruns; r++) {
        runs->run[r].bytes = 0;

        for (id = r ? s->run_end[r - 1] : 0; id < s->run_end[r]; id++) {
            runs->run[r].bytes += s->tables[id].size;
            keys += s->tables[id].nkeys;
            index_bytes += s->tables[id].map_len;
        }

        bytes += runs->run[r].bytes;
    }

    kv_level_close(s);

    s->host->lock(s->host->ctx);
    sh->runs = *runs;
    sh->stats.table_keys = keys;
    sh->stats.table_bytes = bytes;
    sh->stats.table_index_bytes = index_bytes;
    sh->stats.live_bytes += bytes;
    s->host->unlock(s->host->ctx);

    return KV_OK;
}


static int
kv_recover_dir(kv_store_t *s)
{
    int               rc;
    char              path[PATH_MAX];
    size_t            i, n;
    uint32_t         *ids, hints, scans;
    kv_runs_t         runs;
    uint64_t          records, keys, end, ms;
    kv_shared_t      *sh;
    struct timespec   t0;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;

    clock_gettime(CLOCK_MONOTONIC, &t0);

    /* room for "/" KV_HINT_FMT KV_TMP_SUFFIX, so no path is ever cut */
    if (strlen(s->conf.dir) + sizeof("/0000000000.kvhint.tmp") > PATH_MAX) {
        kv_log(host, KV_LOG_ERR, 0, "data directory path \"%s\" is too long",
               s->conf.dir);
        return KV_EINVAL;
    }

    if (!s->conf.read_only) {
        rc = kv_prepare_dir(s);
        if (rc != KV_OK) {
            return rc;
        }
    }

    rc = kv_list_segments(s, &ids, &n);
    if (rc != KV_OK) {
        return rc;
    }

    if (s->conf.read_only) {
        n = kv_skip_merge_outputs(s, ids, n);
    }

    if (n == 0 && !s->conf.read_only) {
        host->lock(host->ctx);
        rc = kv_roll(s, 1);
        host->unlock(host->ctx);

        if (rc == KV_OK) {
            rc = kv_list_segments(s, &ids, &n);
        }

        if (rc != KV_OK) {
            return rc;
        }
    }

    if (n > 0 && !s->conf.read_only) {
        kv_remove_orphans(s, ids, n);
    }

    /*
     * before the first key: index=sorted keeps the keys in order and
     * leaves masks while a merge runs
     */
    host->lock(host->ctx);
    sh->sorted = s->conf.sorted;
    host->unlock(host->ctx);

    /* the directory's seed of the keys' hashes, before the first key too */
    rc = kv_seed_load(s);
    if (rc != KV_OK) {
        free(ids);
        return rc;
    }

    hints = 0;
    scans = 0;
    end = 0;
    memset(&runs, 0, sizeof(kv_runs_t));

    if (s->conf.sorted && n > 0) {
        rc = kv_recover_tables(s, ids, n, &runs);
        if (rc != KV_OK) {
            free(ids);
            return rc;
        }
    }

    for (i = 0; i < n; i++) {
        if (kv_level_has(&runs, ids[i])) {
            /* a sorted segment: found through its table file */
            continue;
        }

        if (i < n - 1) {
            rc = kv_load_hint(s, ids[i]);

            if (rc == KV_OK) {
                hints++;
                continue;
            }

            if (rc != KV_NOTFOUND) {
                break;
            }
        }

        rc = kv_recover_segment(s, ids[i], i == n - 1, &end);
        if (rc != KV_OK) {
            break;
        }

        scans++;

        if (i < n - 1) {
            kv_segment_path(s, ids[i], path);
            kv_log(host, KV_LOG_NOTICE, 0, "no usable hint for \"%s\", "
                   "scanned it", path);
        }
    }

    if (rc == KV_OK) {
        rc = kv_seq_load(s);
    }

    ms = kv_ms_since(&t0);

    host->lock(host->ctx);

    if (rc == KV_OK) {
        sh->segment = n ? ids[n - 1] : 0;
        sh->write_off = end;
        sh->prealloc_end = end;
        sh->first_segment = n ? ids[0] : 0;
        sh->synced = KV_LOC(sh->segment, end);
        sh->stats.segments = n;
        sh->open = 1;
    }

    sh->stats.recovery_ms = ms;
    sh->stats.recovery_hints = hints;
    sh->stats.recovery_scans = scans;
    records = sh->stats.recovered_records;
    keys = sh->stats.keys;

    host->unlock(host->ctx);

    free(ids);
    kv_store_close(s);

    if (rc != KV_OK) {
        return rc;
    }

    kv_log(host, KV_LOG_NOTICE, 0, "recovered %" PRIu64 " records, %" PRIu64
           " keys from %zu segments in \"%s\" (%u from hints, %u scanned) in "
           "%" PRIu64 " ms", records, keys, n, s->conf.dir, hints, scans, ms);

    return KV_OK;
}


int
kv_recover_converts(const kv_store_t *s)
{
    return s->conf.sorted && s->conf.convert && !s->conf.read_only;
}


/*
 * index=sorted, when the log segments hold more keys than the index
 * memory (a directory written in index=hash, say): every key moves into
 * sorted segments by the full merge "kvtool compact --index=sorted" runs,
 * over an index of all of them in private memory sized from the
 * directory, freed at the end.  It is a compaction like any other, so a
 * crash in it leaves the store as it was or converted, never in between.
 */
static int
kv_convert(kv_store_t *s, uint64_t *truncated)
{
    int               rc;
    size_t            size;
    uint32_t          nbuckets;
    uint64_t          ms;
    kv_conf_t         conf;
    kv_host_t         host;
    kv_store_t        c;
    kv_arena_t       *a;
    kv_shared_t      *sh;
    struct timespec   t0;

    /* recovery took the directory lock before any replay */
    if (s->sh->lock_fd < 0) {
        kv_log(s->host, KV_LOG_ERR, 0, "converting \"%s\" without its lock",
               s->conf.dir);
        return KV_EINVAL;
    }

    clock_gettime(CLOCK_MONOTONIC, &t0);

    size = kv_arena_size_for(kv_dir_bytes(s->conf.dir), &nbuckets);

    a = kv_arena_create(size);
    if (a == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "cannot allocate %zu bytes for "
               "an index of every key of \"%s\", to move them into sorted "
               "segments", size, s->conf.dir);
        return KV_ENOMEM;
    }

    kv_arena_host_over(a, s->host, &host);

    /* the records are copied as they are, whatever the limits now */
    sh = kv_shared_create(&host, nbuckets, KV_MAX_KEY_LIMIT,
                          KV_MAX_VALUE_LIMIT);
    if (sh == NULL) {
        kv_arena_destroy(a);
        return KV_ENOMEM;
    }

    /* the zone's descriptor holds the lock for both */
    sh->lock_fd = s->sh->lock_fd;

    conf = s->conf;
    conf.max_key = KV_MAX_KEY_LIMIT;
    conf.max_value = KV_MAX_VALUE_LIMIT;
    conf.convert = 0;

    kv_store_init(&c, sh, &host, &conf);

    rc = kv_recover_dir(&c);

    if (rc == KV_OK) {
        rc = kv_compact_begin(&c);
    }

    if (rc == KV_OK) {
        /*
         * A full merge: every log segment and every run, so that no mask
         * is left for the zone.  Its outputs get their hint and table
         * files as they are written; no log segment is left but the new
         * active one.
         */
        kv_compact_request(&c);
        rc = kv_compact(&c);
    }

    /* a torn tail its replay cut, the active segment's most likely */
    host.lock(host.ctx);
    *truncated += sh->stats.truncated_bytes;
    host.unlock(host.ctx);

    kv_store_close(&c);
    kv_arena_destroy(a);

    ms = kv_ms_since(&t0);

    if (rc != KV_OK) {
        kv_log(s->host, KV_LOG_ERR, 0, "moving the keys of \"%s\" into "
               "sorted segments (over a private index of %zu bytes) failed: "
               "%s; nothing in the directory is lost", s->conf.dir, size,
               kv_strerror(rc));
        return rc;
    }

    kv_log(s->host, KV_LOG_NOTICE, 0, "moved the keys of \"%s\" into sorted "
           "segments in %" PRIu64 " ms", s->conf.dir, ms);

    return KV_OK;
}


int
kv_recover(kv_store_t *s)
{
    int               rc;
    uint64_t          truncated, ms;
    struct timespec   t0;

    clock_gettime(CLOCK_MONOTONIC, &t0);

    s->replay_full = 0;

    rc = kv_recover_dir(s);

    if (rc == KV_OK || !s->replay_full || !kv_recover_converts(s)) {
        return rc;
    }

    /* the zone's partial index goes first: its memory serves again */
    truncated = s->sh->stats.truncated_bytes;
    kv_index_clear(s);

    rc = kv_convert(s, &truncated);
    if (rc != KV_OK) {
        return rc;
    }

    /* only an empty active segment is left to replay: it cannot fill */
    s->conf.convert = 0;
    rc = kv_recover_dir(s);
    s->conf.convert = 1;

    ms = kv_ms_since(&t0);

    /* status' time and torn bytes cover the whole start */
    s->host->lock(s->host->ctx);
    s->sh->stats.truncated_bytes += truncated;
    s->sh->stats.recovery_ms = ms;
    s->host->unlock(s->host->ctx);

    return rc;
}
