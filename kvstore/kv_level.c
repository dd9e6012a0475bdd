#define _GNU_SOURCE

/*
 * index=sorted: which sorted segments exist, and finding a key in them.
 *
 * A merge (kv_compact() in sorted mode) rewrites every older segment into
 * sorted segments with consecutive ids, each holding a range of keys that
 * the next one's follows: one level of non-overlapping tables, as
 * LevelDB's level 1.  The shared state names them [table_first,
 * table_last] with a generation; each handle opens them (kv_table_t) when
 * the generation changes, and a lookup that misses the index picks the
 * one table whose range may hold the key.  Every key written since the
 * last merge is in the index, which therefore always wins; a deleted or
 * expired key stays in it as a mask until a merge drops both.
 *
 * DIR/KV_TABLES_FILE records what the last merge made: "tables FIRST LAST
 * floor F\n" (FIRST and LAST 0: no table), F being the first id that is
 * not an input of that merge; it is replaced (tmp, flush, rename, flush)
 * before the merge's MERGE file goes, so a store that has it has its
 * tables, and recovery in sorted mode deletes the inputs left below F.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kv_internal.h"


int
kv_level_save(kv_store_t *s, uint32_t first, uint32_t last, uint32_t floor)
{
    int   len;
    char  text[96];

    len = snprintf(text, sizeof(text), "tables %u %u floor %u\n", first, last,
                   floor);

    return kv_replace_file(s, KV_TABLES_FILE, text, (size_t) len);
}


int
kv_level_load(kv_store_t *s, uint32_t *first, uint32_t *last,
    uint32_t *floor)
{
    int       rc, fd;
    char      path[PATH_MAX], text[97], end;
    ssize_t   n;
    uint64_t  size;

    snprintf(path, sizeof(path), "%s/" KV_TABLES_FILE, s->conf.dir);

    rc = kv_open_read(s, path, &fd, &size);
    if (rc != KV_OK) {
        return rc;
    }

    n = kv_pread_full(fd, (uint8_t *) text, sizeof(text) - 1, 0);
    close(fd);

    if (n < 0) {
        kv_log(s->host, KV_LOG_ERR, errno, "reading \"%s\" failed", path);
        return KV_EIO;
    }

    text[n] = '\0';

    if (sscanf(text, "tables %u %u floor %u%c", first, last, floor, &end)
        != 4 || end != '\n' || *first > *last || (*first == 0) != (*last == 0)
        || (*first != 0 && *floor > *first))
    {
        kv_log(s->host, KV_LOG_ERR, 0, "\"%s\" is damaged: \"%.40s\"", path,
               text);
        return KV_ECORRUPT;
    }

    return KV_OK;
}


void
kv_level_close(kv_store_t *s)
{
    uint32_t  i;

    for (i = 0; i < s->ntables; i++) {
        kv_table_close(&s->tables[i]);
    }

    free(s->tables);
    s->tables = NULL;
    s->ntables = 0;
    s->tables_gen = 0;
}


int
kv_level_open(kv_store_t *s, uint32_t first, uint32_t last, uint32_t gen)
{
    int          rc;
    uint32_t     id, n;
    kv_table_t  *t;

    if (s->tables_gen == gen && s->tables != NULL) {
        return KV_OK;
    }

    kv_level_close(s);

    n = first ? last - first + 1 : 0;

    if (n != 0) {
        s->tables = calloc(n, sizeof(kv_table_t));
        if (s->tables == NULL) {
            kv_log(s->host, KV_LOG_ERR, errno, "no memory to open %u sorted "
                   "segments of \"%s\"", n, s->conf.dir);
            return KV_ENOMEM;
        }
    }

    for (id = first; n != 0 && id <= last; id++) {
        t = &s->tables[s->ntables];

        rc = kv_table_open(s, id, t);

        if (rc != KV_OK) {
            kv_level_close(s);

            /* a newer merge deleted it: the caller looks again */
            return rc == KV_NOTFOUND ? KV_ESTALE : rc;
        }

        s->ntables++;
    }

    s->tables_gen = gen;

    if (s->tables == NULL) {
        /* an empty set is opened too: remember it */
        s->tables = calloc(1, sizeof(kv_table_t));
        if (s->tables == NULL) {
            return KV_ENOMEM;
        }
    }

    return KV_OK;
}


/* the one table whose range may hold key, or NULL */
static kv_table_t *
kv_level_pick(kv_store_t *s, const uint8_t *key, size_t klen)
{
    size_t           flen;
    int64_t          lo, hi, mid;
    kv_table_t      *t;
    const uint8_t   *first;

    lo = 0;
    hi = (int64_t) s->ntables - 1;

    while (lo <= hi) {
        mid = lo + (hi - lo) / 2;
        t = &s->tables[mid];

        if (t->nblocks == 0) {
            /* an empty table: look to the right */
            lo = mid + 1;
            continue;
        }

        first = t->keys;
        flen = (size_t) t->blocks[12] | (size_t) t->blocks[13] << 8;

        if (kv_key_cmp(first, flen, key, klen) <= 0) {
            lo = mid + 1;

        } else {
            hi = mid - 1;
        }
    }

    return hi >= 0 ? &s->tables[hi] : NULL;
}


int
kv_level_get(kv_store_t *s, const uint8_t *key, size_t klen, kv_loc_t *loc)
{
    int          rc;
    kv_peek_t    pk;
    kv_table_t  *t;

    t = kv_level_pick(s, key, klen);
    if (t == NULL) {
        return KV_NOTFOUND;
    }

    rc = kv_table_get(t, key, klen, loc, &pk);
    if (rc != KV_OK) {
        return rc;
    }

    if (pk.tombstone
        || (pk.expires_at_ms != 0 && pk.expires_at_ms <= kv_now_ms(s->host)))
    {
        return KV_NOTFOUND;
    }

    return KV_OK;
}


int
kv_level_lookup(kv_store_t *s, const uint8_t *key, size_t klen,
    uint32_t first, uint32_t last, uint32_t gen, kv_loc_t *loc)
{
    int  rc;

    rc = kv_level_open(s, first, last, gen);
    if (rc != KV_OK) {
        return rc;
    }

    return kv_level_get(s, key, klen, loc);
}

