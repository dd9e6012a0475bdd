#define _GNU_SOURCE

/*
 * kvtool repair DIR, under the directory lock: each segment with damage
 * that recovery refuses (a bad record followed by valid ones) is rewritten
 * without its damaged byte ranges, a torn tail included, which go to
 * DIR/lost+found first.  Hint files that do not
 * match their segment are removed.  Recovery then runs and the hints are
 * written again.  Order on disk: lost+found files durable, old hint gone,
 * new segment durable as .tmp, renamed over the old one, directory flushed;
 * a crash at any point leaves the old segment or the new one, and recovery
 * removes a leftover .tmp.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "kvtool.h"


#define KVTOOL_COPY_BUF  (1024 * 1024)


typedef struct {
    kvtool_store_t  *t;
    int              fd;             /* the damaged segment */
    char             path[PATH_MAX];
    uint8_t         *buf;
    size_t           rewritten;      /* segments */
} kvtool_repair_t;


/* Copies len bytes at off of the segment to the end of fd (to_path). */
static int
kvtool_copy(kvtool_repair_t *r, uint64_t off, uint64_t len, int fd,
    const char *to_path)
{
    size_t   n;
    ssize_t  got, put, done;

    while (len > 0) {
        n = len < KVTOOL_COPY_BUF ? (size_t) len : KVTOOL_COPY_BUF;

        got = kv_pread_full(r->fd, r->buf, n, off);
        if (got != (ssize_t) n) {
            kvtool_error("reading %zu bytes of \"%s\" at offset %" PRIu64
                         " failed: %s", n, r->path, off,
                         got == -1 ? strerror(errno) : "the file shrank");
            return KV_EIO;
        }

        for (done = 0; done < got; done += put) {
            put = write(fd, r->buf + done, (size_t) (got - done));

            if (put == -1 && errno != EINTR) {
                kvtool_error("writing \"%s\" failed: %s", to_path,
                             strerror(errno));
                return KV_EIO;
            }

            put = put == -1 ? 0 : put;
        }

        off += n;
        len -= n;
    }

    return KV_OK;
}


/* A new file at path (replacing a leftover), filled by the caller. */
static int
kvtool_create(kvtool_repair_t *r, const char *path)
{
    int  fd;

    if (unlink(path) == -1 && errno != ENOENT) {
        kvtool_error("unlink(\"%s\") failed: %s", path, strerror(errno));
        return -1;
    }

    fd = kv_create_file(&r->t->s, path, O_WRONLY);
    if (fd == -1) {
        kvtool_error("creating \"%s\" failed: %s", path, strerror(errno));
    }

    return fd;
}


/* Copies [off, off + len) of the segment into a new durable file. */
static int
kvtool_save(kvtool_repair_t *r, const char *path, uint64_t off,
    uint64_t len)
{
    int  fd, rc;

    fd = kvtool_create(r, path);
    if (fd == -1) {
        return KV_EIO;
    }

    rc = kvtool_copy(r, off, len, fd, path);

    if (rc == KV_OK) {
        rc = kv_flush(&r->t->s, fd, path);
    }

    close(fd);

    return rc;
}


static int
kvtool_lost_found(kvtool_repair_t *r, const kvtool_segment_t *seg)
{
    int                     rc;
    char                    dir[PATH_MAX], path[PATH_MAX];
    size_t                  i;
    const char             *top;
    const kvtool_damage_t  *d;

    top = r->t->s.conf.dir;
    snprintf(dir, sizeof(dir), "%s/lost+found", top);

    if (mkdir(dir, 0750) == 0) {
        rc = kv_chown(&r->t->s, -1, dir);

        if (rc == KV_OK) {
            rc = kv_flush_dir(&r->t->s, top);
        }

        if (rc != KV_OK) {
            return rc;
        }

    } else if (errno != EEXIST) {
        kvtool_error("mkdir(\"%s\") failed: %s", dir, strerror(errno));
        return KV_EIO;
    }

    for (i = 0; i < seg->ndamage; i++) {
        d = &seg->damage[i];

        if (snprintf(path, sizeof(path), "%s/" KV_SEGMENT_FMT "-%" PRIu64
                     ".bin", dir, seg->id, d->off)
            >= (int) sizeof(path))
        {
            kvtool_error("the path \"%s\" is too long", dir);
            return KV_EINVAL;
        }

        rc = kvtool_save(r, path, d->off, d->len);
        if (rc != KV_OK) {
            return rc;
        }

        printf("moved %" PRIu64 " damaged bytes of " KV_SEGMENT_FMT " at "
               "offset %" PRIu64 " to %s\n", d->len, seg->id, d->off, path);
    }

    return kv_flush_dir(&r->t->s, dir);
}


/* Removes a file and makes that durable; a missing file is fine. */
static int
kvtool_remove(kvtool_store_t *t, const char *path)
{
    if (unlink(path) == -1) {
        if (errno == ENOENT) {
            return KV_OK;
        }

        kvtool_error("unlink(\"%s\") failed: %s", path, strerror(errno));
        return KV_EIO;
    }

    return kv_flush_dir(&t->s, t->s.conf.dir);
}


/* Writes the segment without its damaged ranges over the old one. */
static int
kvtool_rewrite(kvtool_repair_t *r, const kvtool_segment_t *seg)
{
    int                     fd, rc;
    char                    tmp[PATH_MAX], hint[PATH_MAX];
    size_t                  i;
    uint64_t                off, end;
    const kvtool_damage_t  *d;

    if (snprintf(tmp, sizeof(tmp), "%s" KV_TMP_SUFFIX, r->path)
        >= (int) sizeof(tmp))
    {
        kvtool_error("the path \"%s\" is too long", r->path);
        return KV_EINVAL;
    }

    fd = kvtool_create(r, tmp);
    if (fd == -1) {
        return KV_EIO;
    }

    off = 0;
    rc = KV_OK;

    for (i = 0; i <= seg->ndamage && rc == KV_OK; i++) {
        d = i < seg->ndamage ? &seg->damage[i] : NULL;

        /* preallocated zeros are not copied: recovery would cut them */
        end = d != NULL ? d->off : seg->size - seg->preallocated;

        rc = kvtool_copy(r, off, end - off, fd, tmp);

        off = d != NULL ? d->off + d->len : end;
    }

    if (rc == KV_OK) {
        rc = kv_flush(&r->t->s, fd, tmp);
    }

    close(fd);

    /* the hint describes the old offsets: gone before the new segment */
    kvtool_hint_path(r->t->s.conf.dir, seg->id, hint);

    if (rc == KV_OK) {
        rc = kvtool_remove(r->t, hint);
    }

    if (rc == KV_OK && rename(tmp, r->path) == -1) {
        kvtool_error("rename(\"%s\", \"%s\") failed: %s", tmp, r->path,
                     strerror(errno));
        rc = KV_EIO;
    }

    if (rc == KV_OK) {
        return kv_flush_dir(&r->t->s, r->t->s.conf.dir);
    }

    unlink(tmp);

    return rc;
}


static int
kvtool_repair_segment(kvtool_repair_t *r, kvtool_segment_t *seg)
{
    int   rc;
    char  hint[PATH_MAX];

    if (seg->hint == KVTOOL_HINT_BAD) {
        kvtool_hint_path(r->t->s.conf.dir, seg->id, hint);

        rc = kvtool_remove(r->t, hint);
        if (rc != KV_OK) {
            return rc;
        }

        printf("removed %s: %s\n", hint, seg->why);
    }

    /* a torn tail alone is for recovery to cut, as after every crash */
    if (seg->ndamage == 0 || (seg->ndamage == 1 && seg->damage->tail)) {
        return KV_OK;
    }

    kv_segment_path(&r->t->s, seg->id, r->path);

    r->fd = open(r->path, O_RDONLY | O_CLOEXEC);
    if (r->fd == -1) {
        kvtool_error("open(\"%s\") failed: %s", r->path, strerror(errno));
        return KV_EIO;
    }

    rc = kvtool_lost_found(r, seg);

    if (rc == KV_OK) {
        rc = kvtool_rewrite(r, seg);
    }

    close(r->fd);

    if (rc == KV_OK) {
        printf("rewrote %s without its %zu damaged ranges\n", r->path,
               seg->ndamage);
        r->rewritten++;
    }

    return rc;
}


int
kvtool_repair(const char *dir)
{
    int               rc;
    size_t            i, n;
    uint32_t         *ids;
    kv_stats_t        st;
    struct stat       dst;
    kvtool_store_t    t;
    kvtool_repair_t   r;
    kvtool_segment_t  seg;

    if (stat(dir, &dst) == -1 || !S_ISDIR(dst.st_mode)) {
        kvtool_error("\"%s\" is not a directory", dir);
        return KVTOOL_FAIL;
    }

    /*
     * Damaged segments are rewritten in place, smaller, and nothing is
     * appended: no segment rolls over, so repair needs no --segment-size.
     */
    if (kvtool_open(&t, dir, kv_dir_bytes(dir), KVTOOL_LOCK,
                    KV_SEGMENT_SIZE_DEFAULT)
        != KV_OK)
    {
        return KVTOOL_FAIL;
    }

    r.t = &t;
    r.buf = malloc(KVTOOL_COPY_BUF);
    r.rewritten = 0;

    rc = r.buf != NULL ? kv_list_segments(&t.s, &ids, &n) : KV_ENOMEM;

    if (rc == KV_OK) {
        for (i = 0; rc == KV_OK && i < n; i++) {
            rc = kvtool_verify_segment(&t, ids[i], i == n - 1, NULL, &seg);

            if (rc == KV_OK) {
                rc = kvtool_repair_segment(&r, &seg);
            }

            kvtool_segment_free(&seg);
        }

        free(ids);
    }

    if (rc == KV_OK) {
        rc = kv_recover(&t.s);
    }

    if (rc == KV_OK) {
        rc = kv_write_hints(&t.s);
    }

    free(r.buf);

    if (rc != KV_OK) {
        kvtool_close(&t);
        kvtool_error("repairing \"%s\" failed: %s", dir, kv_strerror(rc));
        return KVTOOL_FAIL;
    }

    kv_stats(&t.s, &st);
    kvtool_close(&t);

    printf("repaired %zu segments; the store starts with %" PRIu64
           " live keys\n", r.rewritten, st.keys);

    if (r.rewritten) {
        printf("warning: the keys of the damaged records may now show an "
               "older value, be missing, or be back if the damage hid a "
               "delete; the damaged bytes are in %s/lost+found\n", dir);
    }

    return KVTOOL_OK;
}
