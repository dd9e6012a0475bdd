#define _GNU_SOURCE

/*
 * Sorted segments (SSTables).  A sorted segment is a segment like any
 * other (KV_SEGMENT_FMT: frames back to back, so recovery, kvtool, hints
 * and kv_read() need nothing new), whose records are in strictly
 * ascending key order, one per key.  Beside it, DIR/KV_TABLE_FMT holds
 * what finds a key in it without an index entry per key (all integers
 * little-endian):
 *
 *   header   u32 magic "KSST", u32 version (2), u32 segment id,
 *            u32 number of blocks, u64 number of keys, u64 segment size,
 *            u32 filter bytes, u32 key bytes, u32 block size, u32 zero
 *   blocks   per block: u64 offset of its first frame, u32 offset of its
 *            first key in the keys part, u16 that key's length, u16 zero
 *   keys     the blocks' first keys, back to back
 *   filter   a blocked Bloom filter of every key (kv_filter.c)
 *   trailer  u64 XXH3-64 of all the bytes before it
 *
 * A block is the run of frames from one block offset to the next (or to
 * the end): a new block begins at the first frame that starts
 * the block size (KV_TABLE_BLOCK when written, recorded so that a reader
 * built with another still reads it) or more after the block's first, so
 * every frame of a block starts within its first block-size bytes, and
 * one read of that and KV_FRAME_PEEK(key) bytes finds any key in it.  A lookup
 * is: the filter (one cache line), a binary search of the blocks, one
 * pread.
 *
 * The merge that writes a segment builds the file from the records it
 * copies (kv_table_begin(), kv_table_add(), kv_table_end()); the same
 * builder rebuilds a missing or damaged file by scanning the segment
 * (kv_table_build()).  It is written as hints are: a temporary file,
 * flushed, renamed, the directory flushed, once the segment is flushed.
 * kv_table_open() maps it and trusts nothing it has not checked: the
 * header, the parts' sizes, the segment's size, and, when recovery or
 * kvtool opens it, the checksum and every block.  Workers and listings,
 * which open every table again after each merge, do not sum it (about 90
 * MB at 50 million keys): a table file never changes, and each one was
 * summed when recovery opened it or was written from memory since by the
 * merge that made it; what they read of a block is bounds-checked where
 * it is read (kv_table_block()), and a frame is verified when it is read,
 * so a table damaged since costs a lookup, never memory safety.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include <xxhash.h>

#include "kv_internal.h"


#define KV_TABLE_MAGIC    0x5453534bu    /* "KSST" */
#define KV_TABLE_VERSION  2
#define KV_TABLE_HEADER   48
#define KV_TABLE_ENTRY    16
#define KV_TABLE_TRAILER  8


static int kv_table_scan(void *ctx, const kv_record_t *rec, uint64_t off,
    uint32_t flen);
static int kv_table_grow(void **p, size_t *cap, size_t need, size_t size);


void
kv_table_path(const kv_store_t *s, uint32_t id, char path[PATH_MAX])
{
    snprintf(path, PATH_MAX, "%s/" KV_TABLE_FMT, s->conf.dir, id);
}


void
kv_table_begin(kv_table_builder_t *b, kv_store_t *s, uint32_t id)
{
    memset(b, 0, sizeof(kv_table_builder_t));
    b->s = s;
    b->id = id;
}


int
kv_table_add(kv_table_builder_t *b, const uint8_t *key, size_t klen,
    uint64_t off)
{
    int       c;
    char      kbuf[KV_KEY_STR_LEN];
    uint8_t  *e;

    if (b->nkeys != 0) {
        c = memcmp(key, b->prev, klen < b->prev_len ? klen : b->prev_len);

        if (c < 0 || (c == 0 && klen <= b->prev_len)) {
            kv_log(b->s->host, KV_LOG_ERR, 0, "segment %u of \"%s\" is not "
                   "sorted: key \"%s\" at offset %llu", b->id,
                   b->s->conf.dir, kv_key_str(key, klen, kbuf),
                   (unsigned long long) off);
            return KV_ECORRUPT;
        }
    }

    if (kv_table_grow((void **) &b->hashes, &b->cap_hashes, b->nhashes + 1,
                      sizeof(uint64_t)) != KV_OK
        || kv_table_grow((void **) &b->prev, &b->prev_cap, klen, 1)
           != KV_OK)
    {
        goto nomem;
    }

    b->hashes[b->nhashes++] = kv_filter_hash(key, klen);
    memcpy(b->prev, key, klen);
    b->prev_len = klen;

    if (b->nkeys == 0 || off - b->block_start >= KV_TABLE_BLOCK) {
        if (kv_table_grow((void **) &b->blocks, &b->cap_blocks,
                          ((size_t) b->nblocks + 1) * KV_TABLE_ENTRY, 1)
            != KV_OK
            || kv_table_grow((void **) &b->keys, &b->cap_keys,
                             b->keys_len + klen, 1) != KV_OK
            || b->keys_len + klen > UINT32_MAX)
        {
            goto nomem;
        }

        e = b->blocks + (size_t) b->nblocks * KV_TABLE_ENTRY;
        e = kv_put_le(e, off, 8);
        e = kv_put_le(e, b->keys_len, 4);
        e = kv_put_le(e, klen, 2);
        kv_put_le(e, 0, 2);

        memcpy(b->keys + b->keys_len, key, klen);
        b->keys_len += klen;
        b->nblocks++;
        b->block_start = off;
    }

    b->nkeys++;

    return KV_OK;

nomem:

    kv_log(b->s->host, KV_LOG_ERR, errno, "no memory to build the table of "
           "sorted segment %u of \"%s\"", b->id, b->s->conf.dir);

    return KV_ENOMEM;
}


int
kv_table_end(kv_table_builder_t *b, uint64_t size, int rc, uint64_t *len)
{
    char      name[64];
    size_t    n, filter_len;
    uint8_t  *buf, *p;
    uint64_t  i;

    if (rc != KV_OK) {
        goto done;
    }

    filter_len = kv_filter_size(b->nkeys);
    n = KV_TABLE_HEADER + (size_t) b->nblocks * KV_TABLE_ENTRY + b->keys_len
        + filter_len + KV_TABLE_TRAILER;

    buf = calloc(1, n);
    if (buf == NULL) {
        kv_log(b->s->host, KV_LOG_ERR, errno, "no memory for the table of "
               "sorted segment %u of \"%s\"", b->id, b->s->conf.dir);
        rc = KV_ENOMEM;
        goto done;
    }

    p = kv_put_le(buf, KV_TABLE_MAGIC, 4);
    p = kv_put_le(p, KV_TABLE_VERSION, 4);
    p = kv_put_le(p, b->id, 4);
    p = kv_put_le(p, b->nblocks, 4);
    p = kv_put_le(p, b->nkeys, 8);
    p = kv_put_le(p, size, 8);
    p = kv_put_le(p, filter_len, 4);
    p = kv_put_le(p, b->keys_len, 4);
    p = kv_put_le(p, KV_TABLE_BLOCK, 4);
    p = kv_put_le(p, 0, 4);

    if (b->nblocks) {
        memcpy(p, b->blocks, (size_t) b->nblocks * KV_TABLE_ENTRY);
        p += (size_t) b->nblocks * KV_TABLE_ENTRY;
    }

    if (b->keys_len) {
        memcpy(p, b->keys, b->keys_len);
        p += b->keys_len;
    }

    for (i = 0; i < b->nhashes; i++) {
        kv_filter_add(p, filter_len, b->hashes[i]);
    }

    p += filter_len;
    kv_put_le(p, XXH3_64bits(buf, (size_t) (p - buf)), 8);

    snprintf(name, sizeof(name), KV_TABLE_FMT, b->id);
    rc = kv_replace_file(b->s, name, buf, n);

    free(buf);

    if (rc == KV_OK && len != NULL) {
        *len = n;
    }

done:

    free(b->hashes);
    free(b->blocks);
    free(b->keys);
    free(b->prev);

    return rc;
}


int
kv_table_build(kv_store_t *s, uint32_t id)
{
    int                  rc;
    uint64_t             end, size;
    kv_table_builder_t   b;

    kv_table_begin(&b, s, id);

    rc = kv_scan_segment(s, id, 0, kv_table_scan, &b, &end, &size);

    if (rc == KV_OK && end != size) {
        kv_log(s->host, KV_LOG_ERR, 0, "sorted segment %u of \"%s\" has a "
               "bad frame at offset %llu", id, s->conf.dir,
               (unsigned long long) end);
        rc = KV_ECORRUPT;
    }

    return kv_table_end(&b, size, rc, NULL);
}


static int
kv_table_scan(void *ctx, const kv_record_t *rec, uint64_t off, uint32_t flen)
{
    (void) flen;

    return kv_table_add(ctx, rec->key, rec->klen, off);
}


static int
kv_table_grow(void **p, size_t *cap, size_t need, size_t size)
{
    void    *n;
    size_t   c;

    if (need <= *cap) {
        return KV_OK;
    }

    c = *cap ? *cap : 64;

    while (c < need) {
        c *= 2;
    }

    n = realloc(*p, c * size);
    if (n == NULL) {
        return KV_ENOMEM;
    }

    *p = n;
    *cap = c;

    return KV_OK;
}


int
kv_table_open(kv_store_t *s, uint32_t id, kv_table_t *t, int sum)
{
    int          rc, fd;
    char         path[PATH_MAX], why[128];
    uint64_t     len, size;

    memset(t, 0, sizeof(kv_table_t));
    t->fd = -1;
    t->id = id;

    kv_table_path(s, id, path);

    rc = kv_open_read(s, path, &fd, &len);
    if (rc != KV_OK) {
        return rc;
    }

    if (len < KV_TABLE_HEADER + KV_TABLE_TRAILER || len > SIZE_MAX) {
        snprintf(why, sizeof(why), "%llu bytes", (unsigned long long) len);
        goto bad;
    }

    t->map = mmap(NULL, (size_t) len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    fd = -1;

    if (t->map == MAP_FAILED) {
        t->map = NULL;
        kv_log(s->host, KV_LOG_ERR, errno, "mmap(\"%s\") failed", path);
        return KV_EIO;
    }

    t->map_len = (size_t) len;

    if (kv_table_check(t->map, t->map_len, id, sum, why, sizeof(why)) != 0) {
        goto bad;
    }

    size = kv_table_view(t);

    kv_segment_path(s, id, path);

    rc = kv_open_read(s, path, &t->fd, &t->size);
    if (rc != KV_OK) {
        kv_table_close(t);
        return rc == KV_NOTFOUND ? KV_ESTALE : rc;
    }

    if (t->size != size) {
        snprintf(why, sizeof(why), "it describes %llu bytes of a %llu-byte "
                 "segment", (unsigned long long) size,
                 (unsigned long long) t->size);
        goto bad;
    }

    return KV_OK;

bad:

    if (fd != -1) {
        close(fd);
    }

    kv_table_path(s, id, path);
    kv_log(s->host, KV_LOG_WARN, 0, "the table file \"%s\" is damaged (%s)",
           path, why);
    kv_table_close(t);

    return KV_ECORRUPT;
}


uint64_t
kv_table_view(kv_table_t *t)
{
    t->nblocks = kv_get_le32(t->map + 12);
    t->nkeys = kv_get_le64(t->map + 16);
    t->filter_len = kv_get_le32(t->map + 32);
    t->keys_len = kv_get_le32(t->map + 36);
    t->blocks = t->map + KV_TABLE_HEADER;
    t->keys = t->blocks + (size_t) t->nblocks * KV_TABLE_ENTRY;
    t->filter = t->keys + t->keys_len;
    t->block = kv_get_le32(t->map + 40);

    return kv_get_le64(t->map + 24);
}


int
kv_table_check(const uint8_t *map, size_t len, uint32_t id, int full,
    char *why, size_t n)
{
    uint32_t        nblocks, filter_len, keys_len, i, koff, klen;
    uint64_t        off, prev, body;
    const uint8_t  *e;

    if (len < KV_TABLE_HEADER + KV_TABLE_TRAILER) {
        snprintf(why, n, "%zu bytes", len);
        return -1;
    }

    if (full
        && XXH3_64bits(map, len - KV_TABLE_TRAILER)
           != kv_get_le64(map + len - KV_TABLE_TRAILER))
    {
        snprintf(why, n, "checksum mismatch");
        return -1;
    }

    if (kv_get_le32(map) != KV_TABLE_MAGIC
        || kv_get_le32(map + 4) != KV_TABLE_VERSION
        || kv_get_le32(map + 8) != id)
    {
        snprintf(why, n, "not the table of segment %u, version %u", id,
                 KV_TABLE_VERSION);
        return -1;
    }

    nblocks = kv_get_le32(map + 12);
    filter_len = kv_get_le32(map + 32);
    keys_len = kv_get_le32(map + 36);

    if (kv_get_le32(map + 40) < 512
        || kv_get_le32(map + 40) > KV_TABLE_BLOCK_MAX)
    {
        snprintf(why, n, "a block size of %u bytes", kv_get_le32(map + 40));
        return -1;
    }

    body = (uint64_t) nblocks * KV_TABLE_ENTRY + keys_len + filter_len;

    if (body != len - KV_TABLE_HEADER - KV_TABLE_TRAILER
        || filter_len == 0 || filter_len % 64 != 0
        || (nblocks == 0) != (kv_get_le64(map + 16) == 0))
    {
        snprintf(why, n, "its parts do not add up to its size");
        return -1;
    }

    prev = 0;

    for (i = 0; full && i < nblocks; i++) {
        e = map + KV_TABLE_HEADER + (size_t) i * KV_TABLE_ENTRY;
        off = kv_get_le64(e);
        koff = kv_get_le32(e + 8);
        klen = (uint32_t) e[12] | (uint32_t) e[13] << 8;

        if ((i == 0 ? off != 0 : off <= prev)
            || off >= kv_get_le64(map + 24)
            || klen == 0 || klen > KV_MAX_KEY_LIMIT
            || (uint64_t) koff + klen > keys_len)
        {
            snprintf(why, n, "block %u is out of bounds", i);
            return -1;
        }

        prev = off;
    }

    return 0;
}


void
kv_table_close(kv_table_t *t)
{
    if (t->map != NULL) {
        munmap(t->map, t->map_len);
        t->map = NULL;
    }

    if (t->fd != -1) {
        close(t->fd);
        t->fd = -1;
    }
}


uint64_t
kv_table_block(const kv_table_t *t, uint32_t i, const uint8_t **key,
    size_t *klen)
{
    size_t          koff;
    const uint8_t  *e;

    e = t->blocks + (size_t) i * KV_TABLE_ENTRY;

    if (key != NULL) {
        koff = kv_get_le32(e + 8);
        *klen = (size_t) e[12] | (size_t) e[13] << 8;

        /* an unsummed file's key out of bounds reads as empty */
        if (koff > t->keys_len || t->keys_len - koff < *klen) {
            koff = 0;
            *klen = 0;
        }

        *key = t->keys + koff;
    }

    return kv_get_le64(e);
}


/* the last block whose first key is at or before key; -1 if none */
static int64_t
kv_table_find_block(const kv_table_t *t, const uint8_t *key, size_t klen)
{
    size_t          bklen;
    int64_t         lo, hi, mid;
    const uint8_t  *bkey;

    lo = 0;
    hi = (int64_t) t->nblocks - 1;

    while (lo <= hi) {
        mid = lo + (hi - lo) / 2;
        kv_table_block(t, (uint32_t) mid, &bkey, &bklen);

        if (kv_key_cmp(bkey, bklen, key, klen) <= 0) {
            lo = mid + 1;

        } else {
            hi = mid - 1;
        }
    }

    return hi;
}


int
kv_table_get(const kv_table_t *t, const uint8_t *key, size_t klen,
    kv_loc_t *loc, kv_peek_t *pk)
{
    int             c, rc;
    size_t          want, got, pos;
    ssize_t         n;
    int64_t         b;
    uint64_t        start, end, base;
    uint8_t         buf[KV_TABLE_BLOCK_MAX + KV_FRAME_PEEK(KV_MAX_KEY_LIMIT)];

    if (t->nkeys == 0
        || !kv_filter_may_contain(t->filter, t->filter_len,
                                  kv_filter_hash(key, klen)))
    {
        return KV_NOTFOUND;
    }

    b = kv_table_find_block(t, key, klen);
    if (b < 0) {
        return KV_NOTFOUND;
    }

    start = kv_table_block(t, (uint32_t) b, NULL, NULL);
    end = (uint32_t) b + 1 < t->nblocks
          ? kv_table_block(t, (uint32_t) b + 1, NULL, NULL) : t->size;

    /*
     * Every frame of the block starts in its first t->block bytes:
     * read those and the first bytes of a frame with a key like ours; a
     * frame with a longer key is read again from where it starts.
     */

    want = t->block + KV_FRAME_PEEK(klen);
    base = start;
    got = 0;

    for (pos = 0; start + pos < end; pos += pk->flen) {

        if (start + pos == base + got || got == 0) {
            want = end - (start + pos) < want ? (size_t) (end - start - pos)
                                              : want;
            base = start + pos;

            n = kv_pread_full(t->fd, buf, want, base);
            if (n != (ssize_t) want) {
                return n == -1 ? KV_EIO : KV_ECORRUPT;
            }

            got = (size_t) n;
        }

        rc = kv_frame_peek(buf + (start + pos - base),
                           got - (size_t) (start + pos - base), pk);

        if (rc == 1 && base != start + pos) {
            /* read again from this frame, as much as any key needs */
            want = sizeof(buf);
            got = 0;
            pk->flen = 0;
            continue;
        }

        if (rc != 0) {
            return KV_ECORRUPT;
        }

        c = kv_key_cmp(pk->key, pk->klen, key, klen);

        if (c > 0) {
            return KV_NOTFOUND;
        }

        if (c == 0) {
            loc->segment = t->id;
            loc->offset = start + pos;
            loc->flen = pk->flen;
            loc->vlen = pk->vlen;
            loc->type = pk->type;
            loc->expires_at_ms = pk->expires_at_ms;
            loc->seq = pk->seq;
            loc->verified = 0;

            return KV_OK;
        }

        if (pos + pk->flen >= t->block) {
            break;
        }
    }

    return KV_NOTFOUND;
}


/*
 * Makes the buffer hold the frame at it->off and what kv_frame_peek()
 * may need of it (or all that is left of the segment).
 */
static int
kv_table_iter_fill(kv_table_iter_t *it)
{
    size_t    want;
    ssize_t   n;
    uint64_t  left;

    left = it->t->size - it->off;

    if (it->off >= it->base && it->off - it->base <= it->len
        && (it->base + it->len == it->t->size
            || it->base + it->len - it->off
               >= KV_FRAME_PEEK(KV_MAX_KEY_LIMIT)))
    {
        return KV_OK;
    }

    want = left < KV_TABLE_ITER_BUF ? (size_t) left : KV_TABLE_ITER_BUF;

    n = kv_pread_full(it->t->fd, it->buf, want, it->off);
    if (n != (ssize_t) want) {
        return n == -1 ? KV_EIO : KV_ECORRUPT;
    }

    it->base = it->off;
    it->len = want;

    return KV_OK;
}


/* peeks at the frame at it->off: KV_OK, KV_NOTFOUND at the end */
static int
kv_table_iter_peek(kv_table_iter_t *it)
{
    int  rc;

    if (it->off >= it->t->size) {
        return KV_NOTFOUND;
    }

    rc = kv_table_iter_fill(it);
    if (rc != KV_OK) {
        return rc;
    }

    if (kv_frame_peek(it->buf + (it->off - it->base),
                      it->len - (size_t) (it->off - it->base), &it->pk)
        != 0)
    {
        return KV_ECORRUPT;
    }

    return KV_OK;
}


int
kv_table_iter_seek(kv_table_iter_t *it, const kv_table_t *t,
    const uint8_t *key, size_t klen)
{
    int      rc;
    int64_t  b;

    it->t = t;
    it->base = 0;
    it->len = 0;
    it->off = 0;

    if (key != NULL) {
        b = kv_table_find_block(t, key, klen);
        it->off = b < 0 ? 0 : kv_table_block(t, (uint32_t) b, NULL, NULL);

        /* an unsummed file's offset past the segment: damage, not the end */
        if (it->off >= t->size) {
            return KV_ECORRUPT;
        }
    }

    for ( ;; ) {
        rc = kv_table_iter_peek(it);
        if (rc != KV_OK) {
            return rc;
        }

        if (key == NULL || kv_key_cmp(it->pk.key, it->pk.klen, key, klen) >= 0)
        {
            return KV_OK;
        }

        it->off += it->pk.flen;
    }
}


int
kv_table_iter_next(kv_table_iter_t *it)
{
    it->off += it->pk.flen;

    return kv_table_iter_peek(it);
}
