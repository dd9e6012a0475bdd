#define _GNU_SOURCE

/*
 * Recovery: take the directory lock, rebuild the index from each segment in
 * id order (from its hint file when a usable one exists, else by scanning
 * it), cut torn tails, refuse mid-segment damage and open the store.  The
 * segment scanner and listing here serve hint writing, compaction and
 * kvtool too.
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
#include <sys/mman.h>
#include <sys/stat.h>

#include "kv_internal.h"


#define KV_READ_BUF  (1024 * 1024)


typedef struct {
    kv_store_t     *s;
    int             fd;
    const char     *path;
    uint8_t        *buf;
    size_t          cap;
    uint64_t        size;          /* of the file when the scan began */
} kv_scan_t;


typedef struct {
    kv_store_t     *s;
    uint32_t        id;
} kv_replay_t;


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

    rc = kv_flush(s, -1, s->conf.dir);
    if (rc != KV_OK) {
        return rc;
    }

    return kv_flush(s, -1, parent);
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


/* Accepts exactly ten digits followed by suffix; returns the id or 0. */
static uint32_t
kv_file_id(const char *name, const char *suffix)
{
    int            i;
    unsigned long  id;

    for (i = 0; i < 10; i++) {
        if (name[i] < '0' || name[i] > '9') {
            return 0;
        }
    }

    if (strcmp(name + 10, suffix) != 0) {
        return 0;
    }

    id = strtoul(name, NULL, 10);

    return id <= KV_SEGMENT_MAX ? (uint32_t) id : 0;
}


static int
kv_cmp_id(const void *a, const void *b)
{
    uint32_t  x, y;

    x = *(const uint32_t *) a;
    y = *(const uint32_t *) b;

    return (x > y) - (x < y);
}


int
kv_list_segments(kv_store_t *s, uint32_t **ids, size_t *n)
{
    DIR            *d;
    size_t          cap;
    uint32_t        id, *p;
    struct dirent  *de;

    d = opendir(s->conf.dir);
    if (d == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "opendir(\"%s\") failed",
               s->conf.dir);
        return KV_EIO;
    }

    *ids = NULL;
    *n = 0;
    cap = 0;

    while ((de = readdir(d)) != NULL) {
        id = kv_file_id(de->d_name, ".kvlog");
        if (id == 0) {
            continue;
        }

        if (*n == cap) {
            cap = cap ? cap * 2 : 16;

            p = realloc(*ids, cap * sizeof(uint32_t));
            if (p == NULL) {
                kv_log(s->host, KV_LOG_ERR, errno, "listing \"%s\": out of "
                       "memory", s->conf.dir);
                closedir(d);
                free(*ids);
                *ids = NULL;
                *n = 0;
                return KV_EIO;
            }

            *ids = p;
        }

        (*ids)[(*n)++] = id;
    }

    closedir(d);

    if (*n > 1) {
        qsort(*ids, *n, sizeof(uint32_t), kv_cmp_id);
    }

    return KV_OK;
}


/*
 * Makes buf[*pos ...] hold at least need bytes unless the file (as long as
 * it was when the scan began) ends first: moves the unread bytes to the
 * front, grows the buffer, reads.  *got is the number of bytes read.
 */
static int
kv_scan_fill(kv_scan_t *sc, uint64_t *base, size_t *pos, size_t *have,
    size_t need, size_t *got)
{
    size_t    want;
    uint8_t  *p;
    ssize_t   n;

    memmove(sc->buf, sc->buf + *pos, *have - *pos);
    *base += *pos;
    *have -= *pos;
    *pos = 0;

    if (need > sc->cap) {
        p = realloc(sc->buf, need);
        if (p == NULL) {
            kv_log(sc->s->host, KV_LOG_ERR, errno, "no memory for a frame of "
                   "%zu bytes in \"%s\"", need, sc->path);
            return KV_EIO;
        }

        sc->buf = p;
        sc->cap = need;
    }

    want = sc->cap - *have;

    if (want > sc->size - (*base + *have)) {
        want = (size_t) (sc->size - (*base + *have));
    }

    n = kv_pread_full(sc->fd, sc->buf + *have, want, *base + *have);
    if (n == -1) {
        kv_log(sc->s->host, KV_LOG_ERR, errno, "reading \"%s\" at offset %"
               PRIu64 " failed", sc->path, *base + *have);
        return KV_EIO;
    }

    *have += (size_t) n;
    *got = (size_t) n;

    return KV_OK;
}


static int
kv_scan_frames(kv_scan_t *sc, uint64_t from, kv_scan_pt fn, void *ctx,
    uint64_t *end)
{
    int          rc;
    size_t       pos, have, need, got;
    uint64_t     base, plen;
    kv_record_t  rec;

    base = from;
    pos = 0;
    have = 0;

    for ( ;; ) {
        need = KV_FRAME_HEADER;

        if (have - pos >= KV_FRAME_HEADER) {
            plen = kv_get_le32(sc->buf + pos);

            if (plen == 0 || plen > KV_FRAME_MAX - KV_FRAME_HEADER) {
                return KV_OK;
            }

            need += (size_t) plen;
        }

        if (have - pos < need) {
            rc = kv_scan_fill(sc, &base, &pos, &have, need, &got);
            if (rc != KV_OK) {
                return rc;
            }

            /* the end of the file, or a frame cut short */
            if (got == 0) {
                return KV_OK;
            }

            continue;
        }

        if (kv_frame_verify(sc->buf + pos, need) != KV_OK
            || kv_record_decode(&rec, sc->buf + pos + KV_FRAME_HEADER,
                                need - KV_FRAME_HEADER)
               != KV_OK)
        {
            return KV_OK;
        }

        rc = fn(ctx, &rec, base + pos, (uint32_t) need);
        kv_record_free(&rec);

        if (rc != KV_OK) {
            return rc;
        }

        pos += need;
        *end = base + pos;
    }
}


int
kv_scan_segment(kv_store_t *s, uint32_t id, uint64_t from, kv_scan_pt fn,
    void *ctx, uint64_t *end, uint64_t *size)
{
    int          rc;
    char         path[PATH_MAX];
    kv_scan_t    sc;
    struct stat  st;

    *end = from;
    *size = 0;

    kv_segment_path(s, id, path);

    sc.s = s;
    sc.path = path;

    sc.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (sc.fd == -1) {
        if (errno == ENOENT) {
            return KV_NOTFOUND;
        }

        kv_log(s->host, KV_LOG_ERR, errno, "open(\"%s\") failed", path);
        return KV_EIO;
    }

    if (fstat(sc.fd, &st) == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "fstat(\"%s\") failed", path);
        close(sc.fd);
        return KV_EIO;
    }

    sc.size = (uint64_t) st.st_size;
    *size = sc.size;

    (void) posix_fadvise(sc.fd, 0, 0, POSIX_FADV_SEQUENTIAL);

    sc.cap = KV_READ_BUF;
    sc.buf = malloc(sc.cap);

    if (sc.buf == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "no memory to scan \"%s\"", path);
        rc = KV_EIO;

    } else {
        rc = from < sc.size ? kv_scan_frames(&sc, from, fn, ctx, end)
                            : KV_OK;
    }

    free(sc.buf);
    close(sc.fd);

    return rc;
}


int
kv_valid_frame_after(kv_store_t *s, uint32_t id, uint64_t from,
    uint64_t *next)
{
    int          fd;
    char         path[PATH_MAX];
    size_t       len, skip, o, flen;
    uint8_t     *map;
    uint64_t     start;
    struct stat  st;

    *next = 0;

    kv_segment_path(s, id, path);

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        if (errno == ENOENT) {
            return KV_NOTFOUND;
        }

        kv_log(s->host, KV_LOG_ERR, errno, "open(\"%s\") failed", path);
        return KV_EIO;
    }

    if (fstat(fd, &st) == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "fstat(\"%s\") failed", path);
        close(fd);
        return KV_EIO;
    }

    if (from + 1 + KV_FRAME_HEADER >= (uint64_t) st.st_size) {
        close(fd);
        return KV_OK;
    }

    start = from & ~((uint64_t) sysconf(_SC_PAGESIZE) - 1);
    skip = (size_t) (from - start);
    len = (size_t) ((uint64_t) st.st_size - start);

    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, (off_t) start);
    close(fd);

    if (map == MAP_FAILED) {
        kv_log(s->host, KV_LOG_ERR, errno, "mmap(\"%s\") failed", path);
        return KV_EIO;
    }

    for (o = skip + 1; o + KV_FRAME_HEADER < len; o++) {
        flen = KV_FRAME_HEADER + (size_t) kv_get_le32(map + o);

        if (flen <= len - o && kv_frame_verify(map + o, flen) == KV_OK) {
            *next = start + o;
            break;
        }
    }

    munmap(map, len);

    return KV_OK;
}


int
kv_replay_apply(kv_store_t *s, uint32_t id, const kv_record_t *rec,
    uint64_t off, uint32_t flen)
{
    int               fresh;
    char              kbuf[KV_KEY_STR_LEN], path[PATH_MAX];
    kv_ref_t         *link;
    kv_entry_t       *e;
    kv_shared_t      *sh;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;

    if (rec->tombstone) {
        e = kv_index_find(host, sh, rec->key, rec->klen, &link);
        if (e != NULL) {
            kv_index_remove(host, sh, link, e);
        }

        sh->stats.dead_bytes += flen;

    } else {
        e = kv_index_reserve(host, sh, rec->key, rec->klen, &fresh);
        if (e == NULL) {
            kv_segment_path(s, id, path);
            kv_log(host, KV_LOG_ERR, 0, "index memory too small for the keys "
                   "in \"%s\" (full at key \"%s\" in \"%s\" at offset %"
                   PRIu64 ")", s->conf.dir,
                   kv_key_str(rec->key, rec->klen, kbuf), path, off);
            return KV_ENOMEM;
        }

        kv_index_set(host, sh, e, fresh, KV_LOC(id, off), flen,
                     (uint32_t) rec->vlen, rec->type);
    }

    if (rec->seq > sh->seq) {
        sh->seq = rec->seq;
    }

    sh->stats.recovered_records++;

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


/*
 * Scans segment id into the index and sets *end to the end of its last
 * good frame.  A bad frame with no valid frame after it is the torn tail
 * of a write that was never durable (or that the fsync mode allowed to
 * lose): it is cut off, in any segment.  A bad frame followed by valid
 * ones is damage to acknowledged data: the store refuses to start rather
 * than serve an older value of that record's key.
 */
static int
kv_recover_segment(kv_store_t *s, uint32_t id, uint64_t *end)
{
    int           rc, fd;
    char          path[PATH_MAX];
    uint64_t      size, next;
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

    if (*end < size) {
        rc = kv_valid_frame_after(s, id, *end, &next);
        if (rc != KV_OK) {
            return rc == KV_NOTFOUND ? KV_EIO : rc;
        }

        if (next != 0) {
            kv_log(s->host, KV_LOG_ERR, 0, "corrupt record in \"%s\" at "
                   "offset %" PRIu64 " followed by valid records; refusing "
                   "to start: run `kvtool repair %s` (it moves the damaged "
                   "bytes aside)", path, *end, s->conf.dir);
            return KV_ECORRUPT;
        }
    }

    if (s->conf.read_only) {
        if (*end < size) {
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

    if (*end < size) {
        kv_log(s->host, KV_LOG_WARN, 0, "truncated torn tail of \"%s\" at "
               "offset %" PRIu64 " (%" PRIu64 " bytes dropped)", path, *end,
               size - *end);

        s->host->lock(s->host->ctx);
        s->sh->stats.truncated_bytes += size - *end;
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


int
kv_recover(kv_store_t *s)
{
    int               rc;
    char              path[PATH_MAX];
    size_t            i, n;
    uint32_t         *ids, hints, scans;
    uint64_t          records, keys, end, ms;
    kv_shared_t      *sh;
    struct timespec   t0, t1;
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

    hints = 0;
    scans = 0;
    end = 0;

    for (i = 0; i < n; i++) {
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

        rc = kv_recover_segment(s, ids[i], &end);
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

    clock_gettime(CLOCK_MONOTONIC, &t1);
    ms = (uint64_t) ((t1.tv_sec - t0.tv_sec) * 1000
                     + (t1.tv_nsec - t0.tv_nsec) / 1000000);

    host->lock(host->ctx);

    if (rc == KV_OK) {
        sh->segment = n ? ids[n - 1] : 0;
        sh->write_off = end;
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
