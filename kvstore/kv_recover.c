#define _GNU_SOURCE

/*
 * Recovery: take the directory lock, replay every segment in id order into
 * the index, cut a torn tail off the last segment and open the store.
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
    uint32_t        id;
    int             last;          /* the active segment: a torn tail is ok */
    char            path[PATH_MAX];
    uint8_t        *buf;
    size_t          cap;
    uint64_t        size;          /* of the file when the replay began */
    uint64_t        end;           /* of the last good frame */
} kv_replay_t;


static int
kv_chown(kv_store_t *s, int fd, const char *path)
{
    if (s->conf.owner_uid == (uid_t) -1 && s->conf.owner_gid == (gid_t) -1) {
        return KV_OK;
    }

    if ((fd >= 0 ? fchown(fd, s->conf.owner_uid, s->conf.owner_gid)
                 : chown(path, s->conf.owner_uid, s->conf.owner_gid))
        == -1)
    {
        kv_log(s->host, KV_LOG_ERR, errno, "chown(\"%s\", %ld, %ld) failed",
               path, (long) s->conf.owner_uid, (long) s->conf.owner_gid);
        return KV_EIO;
    }

    return KV_OK;
}


static int
kv_fsync_path(kv_store_t *s, const char *path)
{
    int  fd, rc;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "open(\"%s\") failed", path);
        return KV_EIO;
    }

    rc = KV_OK;

    if (fsync(fd) == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "fsync(\"%s\") failed", path);
        rc = KV_EIO;
    }

    close(fd);

    return rc;
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

    rc = kv_fsync_path(s, s->conf.dir);
    if (rc != KV_OK) {
        return rc;
    }

    return kv_fsync_path(s, parent);
}


/* Opens path read-write, creating it (chowned to the owner) if missing. */
static int
kv_open_file(kv_store_t *s, const char *path)
{
    int  fd;

    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);

    if (fd >= 0) {
        if (kv_chown(s, fd, path) != KV_OK) {
            close(fd);
            return -1;
        }

        return fd;
    }

    if (errno == EEXIST) {
        fd = open(path, O_RDWR | O_CLOEXEC);
    }

    if (fd == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "open(\"%s\") failed", path);
    }

    return fd;
}


/*
 * The lock descriptor is never closed: workers inherit it, which keeps the
 * directory locked while any process of this generation lives.
 */
static int
kv_lock_dir(kv_store_t *s)
{
    int   fd, n;
    char  path[PATH_MAX], pid[32];

    if (s->sh->lock_fd >= 0) {
        return KV_OK;
    }

    snprintf(path, sizeof(path), "%s/" KV_LOCK_FILE, s->conf.dir);

    fd = kv_open_file(s, path);
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


/* Accepts exactly KV_SEGMENT_FMT names; returns the id or 0. */
static uint32_t
kv_segment_id(const char *name)
{
    int            i;
    unsigned long  id;

    for (i = 0; i < 10; i++) {
        if (name[i] < '0' || name[i] > '9') {
            return 0;
        }
    }

    if (strcmp(name + 10, ".kvlog") != 0) {
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


/* Lists the segment ids in ascending order into a malloc()ed array. */
static int
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
        id = kv_segment_id(de->d_name);
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


/* The first segment of an empty directory, made durable before use. */
static int
kv_create_segment(kv_store_t *s, uint32_t id)
{
    int   fd, rc;
    char  path[PATH_MAX];

    kv_segment_path(s, id, path);

    fd = kv_open_file(s, path);
    if (fd == -1) {
        return KV_EIO;
    }

    rc = KV_OK;

    if (fsync(fd) == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "fsync(\"%s\") failed", path);
        rc = KV_EIO;
    }

    close(fd);

    return rc == KV_OK ? kv_fsync_path(s, s->conf.dir) : rc;
}


/* Is there a whole, checksummed frame anywhere after offset from? */
static int
kv_valid_frame_after(kv_replay_t *r, uint64_t from, int *found)
{
    size_t    len, skip, o, flen;
    uint8_t  *map;
    uint64_t  start;

    *found = 0;

    start = from & ~((uint64_t) sysconf(_SC_PAGESIZE) - 1);
    skip = (size_t) (from - start);
    len = (size_t) (r->size - start);

    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, r->fd, (off_t) start);
    if (map == MAP_FAILED) {
        kv_log(r->s->host, KV_LOG_ERR, errno, "mmap(\"%s\") failed", r->path);
        return KV_EIO;
    }

    for (o = skip + 1; o + KV_FRAME_HEADER < len; o++) {
        flen = KV_FRAME_HEADER + (size_t) kv_get_le32(map + o);

        if (flen <= len - o && kv_frame_verify(map + o, flen) == KV_OK) {
            *found = 1;
            break;
        }
    }

    munmap(map, len);

    return KV_OK;
}


/*
 * A bad frame at offset off.  At the end of the active segment it is the
 * torn tail of a write a crash interrupted: cut it.  Anywhere else it is
 * damage to acknowledged data, which must not be dropped silently.
 */
static int
kv_bad_frame(kv_replay_t *r, uint64_t off)
{
    int          rc, found;
    kv_store_t  *s;

    s = r->s;
    found = 0;

    if (r->last) {
        rc = kv_valid_frame_after(r, off, &found);
        if (rc != KV_OK) {
            return rc;
        }
    }

    if (!r->last || found) {
        kv_log(s->host, KV_LOG_ERR, 0, "corrupt record in \"%s\" at offset "
               "%" PRIu64 " followed by %s; refusing to start: move the file "
               "aside or repair it", r->path, off,
               r->last ? "valid records" : "newer segments");
        return KV_ECORRUPT;
    }

    if (ftruncate(r->fd, (off_t) off) == -1 || fdatasync(r->fd) == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "truncating \"%s\" to %" PRIu64
               " failed", r->path, off);
        return KV_EIO;
    }

    kv_log(s->host, KV_LOG_WARN, 0, "truncated torn tail of \"%s\" at offset "
           "%" PRIu64 " (%" PRIu64 " bytes dropped)", r->path, off,
           r->size - off);

    s->host->lock(s->host->ctx);
    s->sh->stats.truncated_bytes = r->size - off;
    s->host->unlock(s->host->ctx);

    r->end = off;

    return KV_OK;
}


static int
kv_replay_record(kv_replay_t *r, const kv_record_t *rec, uint64_t off,
    uint32_t flen)
{
    int               fresh;
    char              kbuf[KV_KEY_STR_LEN];
    kv_ref_t         *link;
    kv_entry_t       *e;
    kv_shared_t      *sh;
    const kv_host_t  *host;

    sh = r->s->sh;
    host = r->s->host;

    host->lock(host->ctx);

    if (rec->tombstone) {
        e = kv_index_find(host, sh, rec->key, rec->klen, &link);
        if (e != NULL) {
            kv_index_remove(host, sh, link, e);
        }

        sh->stats.dead_bytes += flen;

    } else {
        e = kv_index_reserve(host, sh, rec->key, rec->klen, &fresh);
        if (e == NULL) {
            host->unlock(host->ctx);
            kv_log(host, KV_LOG_ERR, 0, "index memory too small for the keys "
                   "in \"%s\" (full at key \"%s\" in \"%s\" at offset %"
                   PRIu64 ")", r->s->conf.dir,
                   kv_key_str(rec->key, rec->klen, kbuf), r->path, off);
            return KV_ENOMEM;
        }

        kv_index_set(host, sh, e, fresh, KV_LOC(r->id, off), flen,
                     (uint32_t) rec->vlen, rec->type);
    }

    if (rec->seq > sh->seq) {
        sh->seq = rec->seq;
    }

    sh->stats.recovered_records++;

    host->unlock(host->ctx);

    return KV_OK;
}


/*
 * Makes buf[*pos ...] hold at least need bytes unless the file ends first:
 * moves the unread bytes to the front, grows the buffer, reads.
 */
static int
kv_replay_fill(kv_replay_t *r, uint64_t *base, size_t *pos, size_t *have,
    size_t need)
{
    uint8_t  *p;
    ssize_t   n;

    memmove(r->buf, r->buf + *pos, *have - *pos);
    *base += *pos;
    *have -= *pos;
    *pos = 0;

    if (need > r->cap) {
        p = realloc(r->buf, need);
        if (p == NULL) {
            kv_log(r->s->host, KV_LOG_ERR, errno, "no memory for a frame of "
                   "%zu bytes in \"%s\"", need, r->path);
            return KV_EIO;
        }

        r->buf = p;
        r->cap = need;
    }

    n = kv_pread_full(r->fd, r->buf + *have, r->cap - *have, *base + *have);
    if (n == -1) {
        kv_log(r->s->host, KV_LOG_ERR, errno, "reading \"%s\" at offset %"
               PRIu64 " failed", r->path, *base + *have);
        return KV_EIO;
    }

    *have += (size_t) n;

    return KV_OK;
}


static int
kv_replay_frames(kv_replay_t *r)
{
    int          rc;
    size_t       pos, have, need;
    uint64_t     base, plen;
    kv_record_t  rec;

    base = 0;
    pos = 0;
    have = 0;

    for ( ;; ) {
        need = KV_FRAME_HEADER;

        if (have - pos >= KV_FRAME_HEADER) {
            plen = kv_get_le32(r->buf + pos);

            if (plen == 0 || plen > KV_FRAME_MAX - KV_FRAME_HEADER) {
                return kv_bad_frame(r, base + pos);
            }

            need += (size_t) plen;
        }

        if (have - pos < need) {
            rc = kv_replay_fill(r, &base, &pos, &have, need);
            if (rc != KV_OK) {
                return rc;
            }

            if (have == 0) {
                return KV_OK;
            }

            if (have < need) {
                return kv_bad_frame(r, base);
            }

            continue;
        }

        if (kv_frame_verify(r->buf + pos, need) != KV_OK
            || kv_record_decode(&rec, r->buf + pos + KV_FRAME_HEADER,
                                need - KV_FRAME_HEADER)
               != KV_OK)
        {
            return kv_bad_frame(r, base + pos);
        }

        rc = kv_replay_record(r, &rec, base + pos, (uint32_t) need);
        kv_record_free(&rec);

        if (rc != KV_OK) {
            return rc;
        }

        pos += need;
        r->end = base + pos;
    }
}


static int
kv_replay_segment(kv_replay_t *r, uint32_t id, int last)
{
    int          rc;
    struct stat  st;

    r->id = id;
    r->last = last;
    r->end = 0;
    kv_segment_path(r->s, id, r->path);

    r->fd = open(r->path, (last ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (r->fd == -1) {
        kv_log(r->s->host, KV_LOG_ERR, errno, "open(\"%s\") failed", r->path);
        return KV_EIO;
    }

    if (fstat(r->fd, &st) == -1) {
        kv_log(r->s->host, KV_LOG_ERR, errno, "fstat(\"%s\") failed",
               r->path);
        rc = KV_EIO;

    } else {
        r->size = (uint64_t) st.st_size;
        rc = kv_replay_frames(r);
    }

    close(r->fd);

    return rc;
}


int
kv_recover(kv_store_t *s)
{
    int               rc;
    size_t            i, n;
    uint32_t         *ids, first;
    uint64_t          records, keys;
    kv_replay_t       r;
    kv_shared_t      *sh;
    struct timespec   t0, t1;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;

    clock_gettime(CLOCK_MONOTONIC, &t0);

    /* room for "/LOCK" or "/" KV_SEGMENT_FMT, so no path is ever cut */
    if (strlen(s->conf.dir) + sizeof("/0000000000.kvlog") > PATH_MAX) {
        kv_log(host, KV_LOG_ERR, 0, "data directory path \"%s\" is too long",
               s->conf.dir);
        return KV_EINVAL;
    }

    rc = kv_make_dir(s);
    if (rc != KV_OK) {
        return rc;
    }

    rc = kv_lock_dir(s);
    if (rc != KV_OK) {
        return rc;
    }

    rc = kv_list_segments(s, &ids, &n);
    if (rc != KV_OK) {
        return rc;
    }

    if (n == 0) {
        first = 1;
        rc = kv_create_segment(s, first);
        if (rc != KV_OK) {
            return rc;
        }

        ids = &first;
        n = 1;
    }

    memset(&r, 0, sizeof(r));
    r.s = s;
    r.cap = KV_READ_BUF;
    r.buf = malloc(r.cap);

    if (r.buf == NULL) {
        kv_log(host, KV_LOG_ERR, errno, "no memory to recover \"%s\"",
               s->conf.dir);
        rc = KV_EIO;
    }

    for (i = 0; rc == KV_OK && i < n; i++) {
        rc = kv_replay_segment(&r, ids[i], i == n - 1);
    }

    free(r.buf);

    if (ids != &first) {
        free(ids);
    }

    if (rc != KV_OK) {
        return rc;
    }

    host->lock(host->ctx);
    sh->segment = r.id;
    sh->write_off = r.end;
    sh->open = 1;
    records = sh->stats.recovered_records;
    keys = sh->stats.keys;
    host->unlock(host->ctx);

    kv_store_close(s);

    clock_gettime(CLOCK_MONOTONIC, &t1);

    kv_log(host, KV_LOG_NOTICE, 0, "recovered %" PRIu64 " records, %" PRIu64
           " keys from %zu segments in \"%s\" in %ld ms",
           records, keys, n, s->conf.dir,
           (long) ((t1.tv_sec - t0.tv_sec) * 1000
                   + (t1.tv_nsec - t0.tv_nsec) / 1000000));

    return KV_OK;
}
