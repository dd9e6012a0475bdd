#define _GNU_SOURCE

/*
 * Appends, lookups and reads.  Appends go to the active segment at the
 * shared write offset, with the host lock held from the index check to the
 * index update, so records and index change in the same order everywhere.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kv_internal.h"


#define KV_LOG_LEN  1024


void
kv_log(const kv_host_t *host, int level, int err, const char *fmt, ...)
{
    char     msg[KV_LOG_LEN];
    va_list  args;

    va_start(args, fmt);
    vsnprintf(msg, sizeof(msg), fmt, args);
    va_end(args);

    host->log(host->ctx, level, err, msg);
}


/* Keys are binary: show at most KV_KEY_SHOWN bytes, non-printables as \xNN */
const char *
kv_key_str(const uint8_t *key, size_t klen, char buf[KV_KEY_STR_LEN])
{
    char    *p;
    size_t   i, n;

    p = buf;
    n = klen < KV_KEY_SHOWN ? klen : KV_KEY_SHOWN;

    for (i = 0; i < n; i++) {
        if (key[i] < 0x20 || key[i] >= 0x7f || key[i] == '"'
            || key[i] == '\\')
        {
            p += sprintf(p, "\\x%02x", key[i]);

        } else {
            *p++ = (char) key[i];
        }
    }

    strcpy(p, klen > n ? "..." : "");

    return buf;
}


void
kv_segment_path(const kv_store_t *s, uint32_t segment, char path[PATH_MAX])
{
    snprintf(path, PATH_MAX, "%s/" KV_SEGMENT_FMT, s->conf.dir, segment);
}


/* Reads len bytes unless the file ends first; returns the count or -1. */
ssize_t
kv_pread_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
    size_t   done;
    ssize_t  n;

    done = 0;

    while (done < len) {
        n = pread(fd, buf + done, len - done, (off_t) (off + done));

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            return -1;
        }

        if (n == 0) {
            break;
        }

        done += (size_t) n;
    }

    return (ssize_t) done;
}


/*
 * Segments never change once written, so a cached descriptor stays valid.
 * Returns -1 with errno set; the caller logs with its context.
 */
static int
kv_segment_fd(kv_store_t *s, uint32_t segment)
{
    int   fd;
    char  path[PATH_MAX];

    if (s->fd >= 0 && s->fd_segment == segment) {
        return s->fd;
    }

    kv_store_close(s);
    kv_segment_path(s, segment, path);

    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    s->fd = fd;
    s->fd_segment = segment;

    return fd;
}


static int
kv_write_frame(int fd, const kv_frame_t *f, uint64_t off)
{
    int           i;
    ssize_t       n;
    struct iovec  iov[2];

    memcpy(iov, f->iov, sizeof(iov));
    i = 0;

    while (i < f->niov) {
        n = pwritev(fd, &iov[i], f->niov - i, (off_t) off);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            return -1;
        }

        off += (uint64_t) n;

        /* a short write: skip what was written, retry the rest */
        while (i < f->niov && (size_t) n >= iov[i].iov_len) {
            n -= (ssize_t) iov[i].iov_len;
            i++;
        }

        if (i < f->niov) {
            iov[i].iov_base = (uint8_t *) iov[i].iov_base + n;
            iov[i].iov_len -= (size_t) n;
        }
    }

    return 0;
}


/*
 * Writes rec at the end of the active segment.  On failure the segment is
 * cut back to its previous end, so no partial record survives.
 */
static int
kv_append(kv_store_t *s, const kv_record_t *rec, uint64_t *loc,
    uint32_t *flen)
{
    int           fd, err;
    char          path[PATH_MAX], kbuf[KV_KEY_STR_LEN];
    uint64_t      off;
    kv_frame_t    frame;
    kv_shared_t  *sh;

    sh = s->sh;
    off = sh->write_off;

    if (kv_frame_encode(&frame, rec) != KV_OK) {
        kv_log(s->host, KV_LOG_ERR, 0, "encoding the record of key \"%s\" "
               "failed", kv_key_str(rec->key, rec->klen, kbuf));
        return KV_EINVAL;
    }

    fd = kv_segment_fd(s, sh->segment);

    if (fd != -1 && kv_write_frame(fd, &frame, off) == 0) {
        sh->seq = rec->seq;
        sh->write_off = off + frame.flen;

        *loc = KV_LOC(sh->segment, off);
        *flen = (uint32_t) frame.flen;

        return KV_OK;
    }

    err = errno;
    kv_segment_path(s, sh->segment, path);

    kv_log(s->host, KV_LOG_ERR, err, "appending %zu bytes to \"%s\" at "
           "offset %" PRIu64 " for key \"%s\" failed", frame.flen, path, off,
           kv_key_str(rec->key, rec->klen, kbuf));

    if (fd != -1 && ftruncate(fd, (off_t) off) == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "ftruncate(\"%s\", %" PRIu64 ") "
               "after a failed write failed: a partial record may remain",
               path, off);
    }

    sh->stats.write_errors++;

    return (err == ENOSPC || err == EDQUOT || err == EFBIG) ? KV_ENOSPC
                                                            : KV_EIO;
}


static int
kv_check_open(kv_store_t *s)
{
    if (s->sh->open) {
        return KV_OK;
    }

    kv_log(s->host, KV_LOG_ERR, 0, "the store in \"%s\" is not open",
           s->conf.dir);

    return KV_EUNAVAIL;
}


int
kv_put(kv_store_t *s, const uint8_t *key, size_t klen, const uint8_t *value,
    size_t vlen, unsigned type)
{
    int               rc, fresh;
    char              kbuf[KV_KEY_STR_LEN];
    uint32_t          flen;
    uint64_t          loc;
    kv_entry_t       *e;
    kv_record_t       rec;
    kv_shared_t      *sh;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;

    host->lock(host->ctx);

    rc = kv_check_open(s);
    if (rc != KV_OK) {
        goto done;
    }

    if (klen == 0 || klen > sh->max_key || vlen > sh->max_value
        || (type != KV_TYPE_OCTET && type != KV_TYPE_JSON))
    {
        kv_log(host, KV_LOG_INFO, 0, "rejected a put of key \"%s\" (%zu "
               "bytes, max %u) with a value of %zu bytes (max %u), type %u",
               kv_key_str(key, klen, kbuf), klen, sh->max_key, vlen,
               sh->max_value, type);
        rc = KV_EINVAL;
        goto done;
    }

    /* allocate first: on a full index nothing must reach the log */
    e = kv_index_reserve(host, sh, key, klen, &fresh);
    if (e == NULL) {
        kv_log(host, KV_LOG_WARN, 0, "the index is full: cannot add key "
               "\"%s\" to the store in \"%s\"", kv_key_str(key, klen, kbuf),
               s->conf.dir);
        rc = KV_ENOMEM;
        goto done;
    }

    memset(&rec, 0, sizeof(rec));
    rec.seq = sh->seq + 1;
    rec.key = key;
    rec.klen = klen;
    rec.value = value;
    rec.vlen = vlen;
    rec.type = type;

    rc = kv_append(s, &rec, &loc, &flen);
    if (rc != KV_OK) {
        if (fresh) {
            host->free(host->ctx, e);
        }

        goto done;
    }

    kv_index_set(host, sh, e, fresh, loc, flen, (uint32_t) vlen, type);
    sh->stats.puts++;

done:

    host->unlock(host->ctx);

    return rc;
}


int
kv_delete(kv_store_t *s, const uint8_t *key, size_t klen)
{
    int               rc;
    uint32_t          flen;
    uint64_t          loc;
    kv_ref_t         *link;
    kv_entry_t       *e;
    kv_record_t       rec;
    kv_shared_t      *sh;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;

    host->lock(host->ctx);

    rc = kv_check_open(s);
    if (rc != KV_OK) {
        goto done;
    }

    e = kv_index_find(host, sh, key, klen, &link);
    if (e == NULL) {
        rc = KV_NOTFOUND;
        goto done;
    }

    memset(&rec, 0, sizeof(rec));
    rec.seq = sh->seq + 1;
    rec.key = key;
    rec.klen = klen;
    rec.tombstone = 1;

    rc = kv_append(s, &rec, &loc, &flen);
    if (rc != KV_OK) {
        goto done;
    }

    kv_index_remove(host, sh, link, e);
    sh->stats.dead_bytes += flen;
    sh->stats.deletes++;

done:

    host->unlock(host->ctx);

    return rc;
}


int
kv_lookup(kv_store_t *s, const uint8_t *key, size_t klen, kv_loc_t *loc)
{
    int               rc;
    kv_entry_t       *e;
    const kv_host_t  *host;

    host = s->host;

    host->lock(host->ctx);

    rc = kv_check_open(s);
    if (rc != KV_OK) {
        goto done;
    }

    e = kv_index_find(host, s->sh, key, klen, NULL);
    if (e == NULL) {
        rc = KV_NOTFOUND;
        goto done;
    }

    loc->segment = (uint32_t) (e->loc >> KV_LOC_OFFSET_BITS);
    loc->offset = e->loc & (((uint64_t) 1 << KV_LOC_OFFSET_BITS) - 1);
    loc->flen = e->flen;
    loc->vlen = e->vlen;
    loc->type = e->type;

done:

    host->unlock(host->ctx);

    return rc;
}


int
kv_read(kv_store_t *s, const kv_loc_t *loc, uint8_t *buf)
{
    int      fd;
    char     path[PATH_MAX];
    ssize_t  n;

    kv_segment_path(s, loc->segment, path);

    if (loc->flen <= KV_FRAME_HEADER || loc->flen > KV_FRAME_MAX
        || loc->vlen > loc->flen - KV_FRAME_HEADER)
    {
        kv_log(s->host, KV_LOG_ERR, 0, "bad location in \"%s\": offset "
               "%" PRIu64 ", frame of %u bytes, value of %u bytes", path,
               loc->offset, loc->flen, loc->vlen);
        return KV_EINVAL;
    }

    fd = kv_segment_fd(s, loc->segment);
    n = fd != -1 ? kv_pread_full(fd, buf, loc->flen, loc->offset) : -1;

    if (n == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "reading %u bytes from \"%s\" at "
               "offset %" PRIu64 " failed", loc->flen, path, loc->offset);
        return KV_EIO;
    }

    if ((size_t) n != loc->flen || kv_frame_verify(buf, loc->flen) != KV_OK) {
        kv_log(s->host, KV_LOG_ERR, 0, "corrupt record in \"%s\" at offset "
               "%" PRIu64 ": %zd of %u bytes read, checksum or length "
               "mismatch", path, loc->offset, n, loc->flen);
        return KV_ECORRUPT;
    }

    return KV_OK;
}


void
kv_stats(kv_store_t *s, kv_stats_t *stats)
{
    s->host->lock(s->host->ctx);
    *stats = s->sh->stats;
    s->host->unlock(s->host->ctx);
}


const char *
kv_strerror(int rc)
{
    switch (rc) {
    case KV_OK:
        return "ok";
    case KV_NOTFOUND:
        return "no such key";
    case KV_ENOMEM:
        return "the index memory is full";
    case KV_EIO:
        return "input/output error";
    case KV_ENOSPC:
        return "no space left on device";
    case KV_ECORRUPT:
        return "corrupt record";
    case KV_ELOCKED:
        return "the data directory is locked by another process";
    case KV_EINVAL:
        return "invalid key or value size";
    case KV_EUNAVAIL:
        return "the store is not open";
    default:
        return "unknown error";
    }
}


void
kv_store_init(kv_store_t *s, kv_shared_t *sh, const kv_host_t *host,
    const kv_conf_t *conf)
{
    s->sh = sh;
    s->host = host;
    s->conf = *conf;
    s->fd = -1;
    s->fd_segment = 0;
}


void
kv_store_close(kv_store_t *s)
{
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}
