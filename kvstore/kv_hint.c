#define _GNU_SOURCE

/*
 * Hint files: the index of an immutable segment, so that start-up reads a
 * few bytes per key instead of every value.  DIR/KV_HINT_FMT describes
 * segment KV_SEGMENT_FMT of the same id; all integers little-endian:
 *
 *   header   u32 magic "HINT", u32 version (2), u32 segment id, u32 zero,
 *            u64 size of the segment in bytes
 *   entries  one per frame of the segment, in file order:
 *              u8      flags: bit 0 tombstone, bits 1-2 content type,
 *                      bit 3 an expiry time follows the seq
 *              varint  key length
 *              varint  value length
 *              varint  frame length - header - key length - value length
 *                      (the protobuf tags and varints of the record)
 *              varint  zigzag(seq - seq of the previous entry), the first
 *                      entry's relative to 0 (compaction reorders seqs)
 *              varint  the expiry time, Unix ms (with flag bit 3 only)
 *              bytes   the key
 *   trailer  u64 number of entries, u64 XXH3-64 of all the bytes before it
 *
 * A frame's offset is not stored: frames follow each other from offset 0,
 * so it is the sum of the frame lengths before it, and the sum of them all
 * is the segment size.  A 16-byte key costs 21 bytes, 27 with an expiry.
 * Version 1 (written before expiry times existed) is version 2 without
 * bit 3, and is still read.
 *
 * A hint is written to a temporary file as its segment's records become
 * known (a compaction's copies, or a scan of the segment), and is flushed,
 * renamed and its directory flushed only once the segment is flushed: it
 * never describes records that are not durable.  Any doubt at load time
 * (another size, a checksum mismatch, a malformed entry) means scanning the
 * segment instead.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define XXH_STATIC_LINKING_ONLY    /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "kv_internal.h"


#define KV_HINT_MAGIC    0x544e4948u    /* "HINT" */
#define KV_HINT_VERSION  2
#define KV_HINT_EXPIRES  0x08

/* flags, five varints and the key, at most */
#define KV_HINT_ENTRY_MAX  (1 + 5 * 10 + KV_MAX_KEY_LIMIT)

#define KV_HINT_BUF      (1024 * 1024)

/* entries applied per hold of the host lock */
#define KV_HINT_BATCH    4096

/* how far ahead of the entry being applied buckets are prefetched */
#define KV_HINT_AHEAD    16


/* suffix: "" or KV_TMP_SUFFIX */
void
kv_hint_path(const kv_store_t *s, uint32_t id, const char *suffix,
    char path[PATH_MAX])
{
    snprintf(path, PATH_MAX, "%s/" KV_HINT_FMT "%s", s->conf.dir, id, suffix);
}


static uint8_t *
kv_put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t) (v | 0x80);
        v >>= 7;
    }

    *p++ = (uint8_t) v;

    return p;
}


static const uint8_t *
kv_get_varint(const uint8_t *p, const uint8_t *end, uint64_t *v)
{
    int       shift;
    uint64_t  x;

    x = 0;

    for (shift = 0; shift < 64; shift += 7) {
        if (p == end) {
            return NULL;
        }

        x |= (uint64_t) (*p & 0x7f) << shift;

        if ((*p++ & 0x80) == 0) {
            *v = x;
            return p;
        }
    }

    return NULL;
}


/* Writes out the buffered bytes. */
static int
kv_hint_write(kv_hint_writer_t *w)
{
    size_t   done;
    ssize_t  n;

    for (done = 0; done < w->used; done += (size_t) n) {
        n = write(w->fd, w->buf + done, w->used - done);

        if (n == -1) {
            if (errno == EINTR) {
                n = 0;
                continue;
            }

            kv_log(w->s->host, KV_LOG_ERR, errno, "writing \"%s\" failed",
                   w->tmp);
            return KV_EIO;
        }
    }

    w->used = 0;

    return KV_OK;
}


int
kv_hint_add(kv_hint_writer_t *w, const kv_record_t *rec, uint32_t flen)
{
    int        rc;
    uint8_t   *p;
    uint64_t   d;

    if (KV_HINT_BUF - w->used < KV_HINT_ENTRY_MAX) {
        rc = kv_hint_write(w);
        if (rc != KV_OK) {
            return rc;
        }
    }

    d = rec->seq - w->seq;

    p = w->buf + w->used;
    *p++ = (uint8_t) ((rec->tombstone ? 1 : 0) | rec->type << 1
                      | (rec->expires_at_ms ? KV_HINT_EXPIRES : 0));
    p = kv_put_varint(p, rec->klen);
    p = kv_put_varint(p, rec->vlen);
    p = kv_put_varint(p, flen - KV_FRAME_HEADER - rec->klen - rec->vlen);
    p = kv_put_varint(p, d << 1 ^ (0 - (d >> 63)));

    if (rec->expires_at_ms) {
        p = kv_put_varint(p, rec->expires_at_ms);
    }

    memcpy(p, rec->key, rec->klen);

    w->used = (size_t) (p + rec->klen - w->buf);
    w->seq = rec->seq;
    w->count++;

    return KV_OK;
}


static int
kv_hint_scan(void *ctx, const kv_record_t *rec, uint64_t off, uint32_t flen)
{
    (void) off;

    return kv_hint_add(ctx, rec, flen);
}


const uint8_t *
kv_hint_entry(const uint8_t *p, const uint8_t *end, kv_record_t *rec,
    uint32_t *flen)
{
    unsigned   flags;
    uint64_t   klen, vlen, extra, z, len, expires;

    if (p == end) {
        return NULL;
    }

    flags = *p++;
    expires = 0;

    p = kv_get_varint(p, end, &klen);
    p = p ? kv_get_varint(p, end, &vlen) : NULL;
    p = p ? kv_get_varint(p, end, &extra) : NULL;
    p = p ? kv_get_varint(p, end, &z) : NULL;

    if (p != NULL && (flags & KV_HINT_EXPIRES)) {
        p = kv_get_varint(p, end, &expires);
    }

    if (p == NULL || (flags & ~(3u | KV_HINT_EXPIRES)) != 0
        || ((flags & KV_HINT_EXPIRES) && (expires == 0 || (flags & 1)))
        || klen == 0
        || klen > KV_MAX_KEY_LIMIT || klen > (uint64_t) (end - p)
        || vlen > KV_MAX_VALUE_LIMIT || ((flags & 1) && vlen > 0)
        || extra > KV_FRAME_MAX)
    {
        return NULL;
    }

    len = KV_FRAME_HEADER + klen + vlen + extra;
    if (len > KV_FRAME_MAX) {
        return NULL;
    }

    rec->seq += (z >> 1) ^ (0 - (z & 1));
    rec->key = p;
    rec->klen = (size_t) klen;
    rec->vlen = (size_t) vlen;
    rec->type = (flags >> 1) & 3;     /* bits 1-2, not the expiry bit */
    rec->tombstone = flags & 1;
    rec->expires_at_ms = expires;
    *flen = (uint32_t) len;

    return p + klen;
}


int
kv_hint_begin(kv_store_t *s, uint32_t id, kv_hint_writer_t *w)
{
    int  err;

    memset(w, 0, sizeof(kv_hint_writer_t));
    w->s = s;
    w->id = id;
    kv_hint_path(s, id, KV_TMP_SUFFIX, w->tmp);

    w->fd = kv_create_file(s, w->tmp, O_RDWR);
    if (w->fd == -1) {
        if (errno != EEXIST) {
            return KV_EIO;
        }

        kv_log(s->host, KV_LOG_INFO, 0, "\"%s\" exists: another process is "
               "writing the hint, or one that died left it", w->tmp);
        return KV_EBUSY;
    }

    w->buf = malloc(KV_HINT_BUF);
    if (w->buf == NULL) {
        err = errno;
        close(w->fd);
        unlink(w->tmp);
        kv_log(s->host, KV_LOG_ERR, err, "no memory to write \"%s\"",
               w->tmp);
        return KV_ENOMEM;
    }

    /* the header needs the segment's size: kv_hint_seal() writes it */
    memset(w->buf, 0, KV_HINT_HEADER);
    w->used = KV_HINT_HEADER;

    return KV_OK;
}


/*
 * The header, then the checksum of everything before it, read back from
 * the file: the entries went out before the header was known, and the
 * file (about a sixth of its segment) is in the page cache.
 */
static int
kv_hint_seal(kv_hint_writer_t *w, uint64_t size)
{
    int            rc;
    off_t          off;
    ssize_t        n;
    uint8_t        head[KV_HINT_HEADER], *p;
    XXH3_state_t   hash;

    if (KV_HINT_BUF - w->used < 8) {
        rc = kv_hint_write(w);
        if (rc != KV_OK) {
            return rc;
        }
    }

    kv_put_le(w->buf + w->used, w->count, 8);
    w->used += 8;

    rc = kv_hint_write(w);
    if (rc != KV_OK) {
        return rc;
    }

    p = kv_put_le(head, KV_HINT_MAGIC, 4);
    p = kv_put_le(p, KV_HINT_VERSION, 4);
    p = kv_put_le(p, w->id, 4);
    p = kv_put_le(p, 0, 4);
    kv_put_le(p, size, 8);

    if (pwrite(w->fd, head, KV_HINT_HEADER, 0) != KV_HINT_HEADER) {
        kv_log(w->s->host, KV_LOG_ERR, errno, "writing the header of \"%s\" "
               "failed", w->tmp);
        return KV_EIO;
    }

    XXH3_INITSTATE(&hash);
    XXH3_64bits_reset(&hash);

    for (off = 0; /* void */; off += n) {
        n = pread(w->fd, w->buf, KV_HINT_BUF, off);

        if (n == -1 && errno == EINTR) {
            n = 0;
            continue;
        }

        if (n == -1) {
            kv_log(w->s->host, KV_LOG_ERR, errno, "reading \"%s\" back at "
                   "offset %lld failed", w->tmp, (long long) off);
            return KV_EIO;
        }

        if (n == 0) {
            break;
        }

        XXH3_64bits_update(&hash, w->buf, (size_t) n);
    }

    kv_put_le(w->buf, XXH3_64bits_digest(&hash), 8);
    w->used = 8;

    return kv_hint_write(w);
}


int
kv_hint_end(kv_hint_writer_t *w, uint64_t size, int rc)
{
    char  hint[PATH_MAX];

    if (rc == KV_OK) {
        rc = kv_hint_seal(w, size);
    }

    if (rc == KV_OK) {
        rc = kv_flush(w->s, w->fd, w->tmp);
    }

    close(w->fd);
    free(w->buf);

    kv_hint_path(w->s, w->id, "", hint);

    if (rc == KV_OK && rename(w->tmp, hint) == -1) {
        kv_log(w->s->host, KV_LOG_ERR, errno, "rename(\"%s\", \"%s\") "
               "failed", w->tmp, hint);
        rc = KV_EIO;
    }

    if (rc != KV_OK) {
        unlink(w->tmp);
        return rc;
    }

    return kv_flush_dir(w->s, w->s->conf.dir);
}


int
kv_write_hint(kv_store_t *s, uint32_t id)
{
    int               fd, rc;
    char              seg[PATH_MAX];
    uint32_t          active;
    uint64_t          size, end, scanned;
    kv_hint_writer_t  w;

    s->host->lock(s->host->ctx);
    active = s->sh->segment;
    s->host->unlock(s->host->ctx);

    kv_segment_path(s, id, seg);

    if (id >= active || s->conf.read_only) {
        kv_log(s->host, KV_LOG_ERR, 0, "no hint can be written for \"%s\": "
               "it is %s", seg, s->conf.read_only ? "open read-only"
                                                 : "not immutable yet");
        return KV_EINVAL;
    }

    /* a hint must never describe records that are not durable */
    rc = kv_open_read(s, seg, &fd, &size);
    if (rc != KV_OK) {
        return rc;                     /* KV_NOTFOUND: compaction deleted it */
    }

    rc = kv_flush(s, fd, seg);
    close(fd);

    if (rc != KV_OK) {
        s->host->lock(s->host->ctx);
        __atomic_store_n(&s->sh->sync_failed, 1, __ATOMIC_RELEASE);
        s->host->unlock(s->host->ctx);
        return rc;
    }

    rc = kv_hint_begin(s, id, &w);
    if (rc != KV_OK) {
        return rc;
    }

    rc = kv_scan_segment(s, id, 0, kv_hint_scan, &w, &end, &scanned);

    if (rc == KV_OK && (end != size || scanned != size)) {
        kv_log(s->host, KV_LOG_ERR, 0, "no hint for \"%s\": bad record at "
               "offset %" PRIu64 " of %" PRIu64 " bytes", seg, end, size);
        rc = KV_ECORRUPT;
    }

    return kv_hint_end(&w, size, rc);
}


int
kv_write_hints(kv_store_t *s)
{
    int        rc, first;
    char       path[PATH_MAX];
    size_t     i, n;
    int32_t    compactor;
    uint32_t  *ids, active;

    s->host->lock(s->host->ctx);
    active = s->sh->segment;
    compactor = s->sh->compactor;
    s->host->unlock(s->host->ctx);

    /*
     * A compaction writes its outputs below the active segment and their
     * hints itself: a hint of an output being written would be stale.
     */
    if (compactor != 0) {
        kv_log(s->host, KV_LOG_INFO, 0, "hints of \"%s\" wait: process %d "
               "is compacting the store", s->conf.dir, (int) compactor);
        return KV_OK;
    }

    rc = kv_list_segments(s, &ids, &n);
    if (rc != KV_OK) {
        return rc;
    }

    first = KV_OK;

    for (i = 0; i < n && ids[i] < active; i++) {

        /*
         * A stopping nginx kills a worker that takes more than about 1.5 s
         * to exit fast: leave the remaining hints to the next start rather
         * than a half-written one.
         */
        if (s->host->stopping != NULL && s->host->stopping(s->host->ctx)) {
            break;
        }

        kv_hint_path(s, ids[i], "", path);

        if (access(path, F_OK) == 0) {
            continue;
        }

        rc = kv_write_hint(s, ids[i]);

        /* being written elsewhere, or compacted away meanwhile */
        if (rc != KV_OK && rc != KV_EBUSY && rc != KV_NOTFOUND
            && first == KV_OK)
        {
            first = rc;
        }
    }

    free(ids);

    return first;
}


int
kv_hint_check(const uint8_t *map, size_t len, uint32_t id, uint64_t size,
    char *why, size_t n)
{
    uint32_t        flen;
    uint64_t        off, count;
    kv_record_t     rec;
    const uint8_t  *p, *end;

    if (len < KV_HINT_HEADER + KV_HINT_TRAILER) {
        snprintf(why, n, "truncated (%zu bytes)", len);
        return -1;
    }

    if (kv_get_le32(map) != KV_HINT_MAGIC
        || kv_get_le32(map + 4) < 1
        || kv_get_le32(map + 4) > KV_HINT_VERSION)
    {
        snprintf(why, n, "not a version 1 to %d hint file", KV_HINT_VERSION);
        return -1;
    }

    if (kv_get_le32(map + 8) != id) {
        snprintf(why, n, "written for segment %u", kv_get_le32(map + 8));
        return -1;
    }

    if (kv_get_le64(map + 16) != size) {
        snprintf(why, n, "stale: it describes %" PRIu64 " bytes, the segment "
                 "has %" PRIu64, kv_get_le64(map + 16), size);
        return -1;
    }

    if (XXH3_64bits(map, len - 8) != kv_get_le64(map + len - 8)) {
        snprintf(why, n, "corrupt or truncated: checksum mismatch");
        return -1;
    }

    memset(&rec, 0, sizeof(rec));
    p = map + KV_HINT_HEADER;
    end = map + len - KV_HINT_TRAILER;
    off = 0;
    count = 0;

    while (p < end) {
        p = kv_hint_entry(p, end, &rec, &flen);
        if (p == NULL) {
            snprintf(why, n, "malformed entry %" PRIu64, count);
            return -1;
        }

        off += flen;
        count++;
    }

    if (off != size || count != kv_get_le64(end)) {
        snprintf(why, n, "inconsistent: %" PRIu64 " entries of %" PRIu64
                 " bytes", count, off);
        return -1;
    }

    return 0;
}


/*
 * Looks ahead of the entry being applied: decodes the entry KV_HINT_AHEAD
 * places further and starts loading what its insertion will touch.
 */
typedef struct {
    const uint8_t  *p;
    kv_record_t     rec;
    int             stage;
} kv_hint_ahead_t;


static void
kv_hint_ahead(kv_store_t *s, kv_hint_ahead_t *a, const uint8_t *end)
{
    uint32_t  flen;

    if (a->p < end) {
        a->p = kv_hint_entry(a->p, end, &a->rec, &flen);
        kv_index_prefetch(s->host, s->sh, a->rec.key, a->rec.klen,
                          a->stage);
    }
}


/*
 * Applies checked entries, holding the lock for a batch at a time.  The
 * index is a hash table much bigger than the caches: each entry's bucket
 * and then its chain's head are prefetched well before the insertion, so
 * the misses overlap.
 */
static int
kv_hint_apply(kv_store_t *s, uint32_t id, const uint8_t *p,
    const uint8_t *end)
{
    int               rc, k;
    uint32_t          flen;
    uint64_t          off;
    kv_record_t       rec;
    kv_hint_ahead_t   a[2];
    const kv_host_t  *host;

    host = s->host;

    memset(&rec, 0, sizeof(rec));
    memset(a, 0, sizeof(a));
    a[0].p = p;
    a[1].p = p;
    a[1].stage = 1;

    host->lock(host->ctx);

    for (k = 0; k < 2 * KV_HINT_AHEAD; k++) {
        kv_hint_ahead(s, &a[0], end);

        if (k >= KV_HINT_AHEAD) {
            kv_hint_ahead(s, &a[1], end);
        }
    }

    host->unlock(host->ctx);

    off = 0;
    rc = KV_OK;

    while (rc == KV_OK && p < end) {
        host->lock(host->ctx);

        for (k = 0; rc == KV_OK && k < KV_HINT_BATCH && p < end; k++) {
            kv_hint_ahead(s, &a[0], end);
            kv_hint_ahead(s, &a[1], end);

            p = kv_hint_entry(p, end, &rec, &flen);
            rc = kv_replay_apply(s, id, &rec, off, flen);
            off += flen;
        }

        host->unlock(host->ctx);
    }

    return rc;
}


int
kv_load_hint(kv_store_t *s, uint32_t id)
{
    int           fd, rc;
    char          path[PATH_MAX], seg[PATH_MAX], why[160];
    size_t        len;
    uint8_t      *map;
    struct stat   st, sst;

    kv_hint_path(s, id, "", path);
    kv_segment_path(s, id, seg);

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        if (errno != ENOENT) {
            kv_log(s->host, KV_LOG_WARN, errno, "open(\"%s\") failed, "
                   "scanning \"%s\" instead", path, seg);
        }

        return KV_NOTFOUND;
    }

    if (fstat(fd, &st) == -1 || stat(seg, &sst) == -1) {
        kv_log(s->host, KV_LOG_WARN, errno, "stat of \"%s\" or \"%s\" "
               "failed, scanning the segment", path, seg);
        close(fd);
        return KV_NOTFOUND;
    }

    len = (size_t) st.st_size;
    map = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0)
              : NULL;
    close(fd);

    if (map == MAP_FAILED) {
        kv_log(s->host, KV_LOG_WARN, errno, "mmap(\"%s\") failed, scanning "
               "\"%s\" instead", path, seg);
        return KV_NOTFOUND;
    }

    rc = kv_hint_check(map, len, id, (uint64_t) sst.st_size, why,
                       sizeof(why));

    if (rc == 0) {
        rc = kv_hint_apply(s, id, map + KV_HINT_HEADER,
                           map + len - KV_HINT_TRAILER);
    }

    if (map != NULL) {
        munmap(map, len);
    }

    if (rc != -1) {
        return rc;
    }

    /* removed, so that kv_write_hints() writes a good one */
    kv_log(s->host, KV_LOG_WARN, 0, "hint file \"%s\" is %s: %s \"%s\" "
           "instead", path, why, s->conf.read_only ? "scanning"
                                                   : "removed it, scanning",
           seg);

    if (!s->conf.read_only && unlink(path) == -1) {
        kv_log(s->host, KV_LOG_WARN, errno, "unlink(\"%s\") failed", path);
    }

    return KV_NOTFOUND;
}
