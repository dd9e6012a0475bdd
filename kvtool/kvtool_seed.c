#define _GNU_SOURCE

/*
 * kvtool import-seed [--segment-size=SIZE] FILE DIR: replays the original
 * Go server's data file (proto/seed.proto) into a store through kv_put()
 * and kv_delete(), in file order, so the last record of a key wins; the
 * log rolls over at SIZE.  The Go server had no content types: every value
 * is application/octet-stream.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "seed.pb-c.h"
#include "kvtool.h"


/* the largest Entity a store can take: key, value and their tags */
#define KVTOOL_SEED_MAX  ((uint64_t) KV_MAX_KEY_LIMIT + KV_MAX_VALUE_LIMIT   \
                          + 32)


typedef struct {
    FILE            *f;
    const char      *file;
    uint64_t         size;       /* of the file, UINT64_MAX if unknown */
    uint64_t         off;        /* of the current record */
    uint8_t         *buf;
    size_t           cap;
    uint64_t         records;
    uint64_t         puts;
    uint64_t         deletes;
    uint64_t         absent;     /* tombstones of keys not in the store */
} kvtool_seed_t;


static int
kvtool_seed_apply(kvtool_store_t *t, kvtool_seed_t *sd, const Seed__Entity *e)
{
    int   rc;
    char  kbuf[KV_KEY_STR_LEN];

    if (e->tombstone) {
        rc = kv_delete(&t->s, e->key.data, e->key.len);

        if (rc == KV_NOTFOUND) {
            sd->absent++;
            return KV_OK;
        }

        sd->deletes += rc == KV_OK;

    } else {
        rc = kv_put(&t->s, e->key.data, e->key.len, e->value.data,
                    e->value.len, KV_TYPE_OCTET);
        sd->puts += rc == KV_OK;
    }

    if (rc != KV_OK) {
        kvtool_error("\"%s\": the record at offset %" PRIu64 " (key \"%s\", "
                     "%zu bytes, value %zu bytes) cannot be stored: %s",
                     sd->file, sd->off, kv_key_str(e->key.data, e->key.len,
                                                   kbuf),
                     e->key.len, e->value.len, kv_strerror(rc));
    }

    return rc;
}


/*
 * Reads the record at sd->off into sd->buf: KV_OK; KV_NOTFOUND at the end
 * of the file, or at a torn last record (warned: the Go server was killed
 * while writing it); KV_EIO for a bad or unreadable one.
 */
static int
kvtool_seed_read(kvtool_seed_t *sd, size_t *len)
{
    size_t    n;
    uint8_t   hdr[8], *p;
    uint64_t  plen;

    n = fread(hdr, 1, sizeof(hdr), sd->f);

    if (n == sizeof(hdr)) {
        plen = kv_get_le64(hdr);

        if (plen > sd->size - sd->off - sizeof(hdr)) {
            goto torn;
        }

        if (plen > KVTOOL_SEED_MAX) {
            kvtool_error("\"%s\": the record at offset %" PRIu64 " claims %"
                         PRIu64 " bytes, more than a store can take",
                         sd->file, sd->off, plen);
            return KV_EIO;
        }

        if (plen > sd->cap) {
            p = realloc(sd->buf, plen);
            if (p == NULL) {
                kvtool_error("no memory for a record of %" PRIu64 " bytes",
                             plen);
                return KV_EIO;
            }

            sd->buf = p;
            sd->cap = plen;
        }

        *len = fread(sd->buf, 1, plen, sd->f);

        if (*len == plen) {
            return KV_OK;
        }

        n += *len;
    }

    if (ferror(sd->f)) {
        kvtool_error("reading \"%s\" at offset %" PRIu64 " failed: %s",
                     sd->file, sd->off + n, strerror(errno));
        return KV_EIO;
    }

    if (n == 0) {
        return KV_NOTFOUND;
    }

torn:

    kvtool_error("warning: \"%s\": the last record, at offset %" PRIu64
                 ", is truncated: ignored", sd->file, sd->off);

    return KV_NOTFOUND;
}


static int
kvtool_seed_import(kvtool_store_t *t, kvtool_seed_t *sd)
{
    int            rc;
    size_t         len;
    Seed__Entity  *e;

    for ( ;; ) {
        rc = kvtool_seed_read(sd, &len);

        if (rc == KV_NOTFOUND) {
            return KV_OK;
        }

        if (rc != KV_OK) {
            return rc;
        }

        e = seed__entity__unpack(NULL, len, sd->buf);

        if (e == NULL) {
            kvtool_error("\"%s\": the record at offset %" PRIu64 " (%zu "
                         "bytes) is not a valid Entity", sd->file, sd->off,
                         len);
            return KV_ECORRUPT;
        }

        rc = kvtool_seed_apply(t, sd, e);
        seed__entity__free_unpacked(e, NULL);

        if (rc != KV_OK) {
            return rc;
        }

        sd->records++;
        sd->off += 8 + len;
    }
}


int
kvtool_import_seed(const char *file, const char *dir, uint64_t segment_size)
{
    int             rc;
    uint64_t        durable;
    kv_stats_t      st;
    struct stat     fst;
    kvtool_seed_t   sd;
    kvtool_store_t  t;

    memset(&sd, 0, sizeof(kvtool_seed_t));
    sd.file = file;

    sd.f = fopen(file, "rb");
    if (sd.f == NULL) {
        kvtool_error("cannot open \"%s\": %s", file, strerror(errno));
        return KVTOOL_FAIL;
    }

    sd.size = fstat(fileno(sd.f), &fst) == 0 && S_ISREG(fst.st_mode)
              ? (uint64_t) fst.st_size : UINT64_MAX;

    if (kvtool_open(&t, dir, (sd.size != UINT64_MAX ? sd.size : 0)
                             + kv_dir_bytes(dir),
                    KVTOOL_WRITE, segment_size)
        != KV_OK)
    {
        fclose(sd.f);
        return KVTOOL_FAIL;
    }

    rc = kvtool_seed_import(&t, &sd);

    /* what was imported is durable, and the next start reads hints */
    if (rc == KV_OK) {
        rc = kv_sync(&t.s, &durable);
    }

    if (rc == KV_OK) {
        rc = kv_write_hints(&t.s);
    }

    kv_stats(&t.s, &st);
    kvtool_close(&t);
    fclose(sd.f);
    free(sd.buf);

    printf("%s \"%s\": %" PRIu64 " records: %" PRIu64 " puts, %" PRIu64
           " deletes, %" PRIu64 " deletes of absent keys\n",
           rc == KV_OK ? "imported" : "FAILED importing", file, sd.records,
           sd.puts, sd.deletes, sd.absent);

    printf("\"%s\": %" PRIu64 " live keys in %" PRIu64 " bytes, %" PRIu64
           " dead bytes%s\n", dir, st.keys, st.live_bytes, st.dead_bytes,
           st.dead_bytes ? " (\"kvtool compact\" reclaims them)" : "");

    return rc == KV_OK ? KVTOOL_OK : KVTOOL_FAIL;
}
