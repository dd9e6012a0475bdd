#define _GNU_SOURCE

/*
 * Verifying one segment, for check and repair: every frame (the engine's
 * scan, resumed after each damaged range), and its hint file, which must
 * load and give the index that replaying the segment alone gives.
 */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kvtool.h"


typedef struct {
    kvtool_segment_t  *seg;
    kvtool_store_t    *index;     /* the caller's, or NULL */
    kvtool_store_t    *alone;     /* the segment alone, or NULL */
} kvtool_verify_t;


typedef struct {
    kvtool_store_t    *alone;
    kvtool_segment_t  *seg;
    uint64_t           keys;
} kvtool_compare_t;


static int
kvtool_apply(kvtool_store_t *t, uint32_t id, const kv_record_t *rec,
    uint64_t off, uint32_t flen)
{
    int  rc;

    t->host.lock(t->host.ctx);
    rc = kv_replay_apply(&t->s, id, rec, off, flen);
    t->host.unlock(t->host.ctx);

    return rc;
}


static int
kvtool_verify_record(void *ctx, const kv_record_t *rec, uint64_t off,
    uint32_t flen)
{
    int               rc;
    kvtool_verify_t  *v;

    v = ctx;
    v->seg->records++;

    if (v->index != NULL) {
        rc = kvtool_apply(v->index, v->seg->id, rec, off, flen);
        if (rc != KV_OK) {
            return rc;
        }
    }

    if (v->alone != NULL) {
        return kvtool_apply(v->alone, v->seg->id, rec, off, flen);
    }

    return KV_OK;
}


static int
kvtool_add_damage(kvtool_segment_t *seg, uint64_t off, uint64_t end,
    unsigned tail)
{
    kvtool_damage_t  *d;

    d = realloc(seg->damage, (seg->ndamage + 1) * sizeof(kvtool_damage_t));
    if (d == NULL) {
        kvtool_error("out of memory");
        return KV_ENOMEM;
    }

    seg->damage = d;
    d += seg->ndamage++;

    d->off = off;
    d->len = end - off;
    d->tail = tail;

    return KV_OK;
}


/* An entry of the hint's index must be the same in the segment's own. */
static int
kvtool_compare_entry(void *ctx, const kv_entry_t *e)
{
    char               kbuf[KV_KEY_STR_LEN];
    kv_entry_t        *f;
    kvtool_store_t    *alone;
    kvtool_compare_t  *c;

    c = ctx;
    alone = c->alone;

    alone->host.lock(alone->host.ctx);
    f = kv_index_find(&alone->host, alone->sh, e->key, e->klen, NULL);

    if (f == NULL || f->loc != e->loc || f->flen != e->flen
        || f->vlen != e->vlen || f->type != e->type)
    {
        snprintf(c->seg->why, sizeof(c->seg->why), "key \"%s\" is %s in the "
                 "segment", kv_key_str(e->key, e->klen, kbuf),
                 f == NULL ? "not live" : "elsewhere");
        f = NULL;
    }

    alone->host.unlock(alone->host.ctx);

    c->keys++;

    return f != NULL ? KV_OK : KV_ECORRUPT;
}


static int
kvtool_verify_hint(kvtool_store_t *t, kvtool_store_t *alone,
    kvtool_segment_t *seg)
{
    int                rc;
    kvtool_store_t     hint;
    kvtool_compare_t   c;

    rc = kvtool_open(&hint, t->s.conf.dir, seg->size, KVTOOL_SCAN,
                     KV_SEGMENT_SIZE_DEFAULT);
    if (rc != KV_OK) {
        return rc;
    }

    rc = kv_load_hint(&hint.s, seg->id);

    if (rc == KV_NOTFOUND) {
        seg->hint = KVTOOL_HINT_BAD;
        strcpy(seg->why, kvtool_last_log());
        rc = KV_OK;
        goto done;
    }

    if (rc != KV_OK) {
        goto done;
    }

    c.alone = alone;
    c.seg = seg;
    c.keys = 0;

    hint.host.lock(hint.host.ctx);
    rc = kv_index_walk(&hint.host, hint.sh, kvtool_compare_entry, &c);
    hint.host.unlock(hint.host.ctx);

    if (rc == KV_OK && c.keys != alone->sh->stats.keys) {
        snprintf(seg->why, sizeof(seg->why), "%" PRIu64 " live keys, the "
                 "segment has %" PRIu64, c.keys, alone->sh->stats.keys);
        rc = KV_ECORRUPT;
    }

    if (rc == KV_OK && hint.sh->seq != alone->sh->seq) {
        snprintf(seg->why, sizeof(seg->why), "last sequence %" PRIu64 ", the "
                 "segment's is %" PRIu64, hint.sh->seq, alone->sh->seq);
        rc = KV_ECORRUPT;
    }

    seg->hint = rc == KV_OK ? KVTOOL_HINT_OK : KVTOOL_HINT_BAD;
    rc = rc == KV_ECORRUPT ? KV_OK : rc;

done:

    kvtool_close(&hint);

    return rc;
}


/*
 * Fills seg.  Each record also goes into index, if not NULL.  A failure to
 * read or to allocate is returned (and logged); damage is described in seg.
 * Zeros at the end of the last segment are preallocated space, as in
 * recovery; in another segment, a torn tail.  So is the trace of a flush
 * that a power cut interrupted, in the last segment only.
 */
int
kvtool_verify_segment(kvtool_store_t *t, uint32_t id, int last,
    kvtool_store_t *index, kvtool_segment_t *seg)
{
    int              rc, zeros;
    char             path[PATH_MAX];
    uint64_t         from, end, next, retried, data_end;
    struct stat      st;
    kvtool_store_t   alone;
    kvtool_verify_t  v;

    memset(seg, 0, sizeof(kvtool_segment_t));
    seg->id = id;

    v.seg = seg;
    v.index = index;
    v.alone = NULL;

    kvtool_hint_path(t->s.conf.dir, id, path);

    if (stat(path, &st) == 0) {
        kv_segment_path(&t->s, id, path);

        rc = kvtool_open(&alone, t->s.conf.dir,
                         stat(path, &st) == 0 ? (uint64_t) st.st_size : 0,
                         KVTOOL_SCAN, KV_SEGMENT_SIZE_DEFAULT);
        if (rc != KV_OK) {
            return rc;
        }

        v.alone = &alone;
    }

    from = 0;
    retried = UINT64_MAX;

    for ( ;; ) {
        rc = kv_scan_segment(&t->s, id, from, kvtool_verify_record, &v, &end,
                             &seg->size);
        if (rc != KV_OK || end == seg->size) {
            break;
        }

        rc = kv_zero_tail(&t->s, id, end, &zeros);

        if (rc == KV_OK && zeros && last) {
            seg->preallocated = seg->size - end;
            break;
        }

        /* a running nginx may have appended over the zeros meanwhile */
        if (rc == KV_OK && end != retried) {
            retried = end;
            from = end;
            continue;
        }

        if (rc == KV_OK) {
            rc = kv_valid_frame_after(&t->s, id, end, &next);
        }

        /* as in recovery, which cuts it */
        if (rc == KV_OK && next != 0 && last) {
            rc = kv_unfinished_flush(&t->s, id, end, next, &data_end);

            if (rc == KV_OK && data_end != 0) {
                /* it read the file again: a running store may have grown it */
                if (data_end > seg->size) {
                    seg->size = data_end;
                }

                seg->preallocated = seg->size - data_end;
                rc = kvtool_add_damage(seg, end, data_end, KVTOOL_TAIL_FLUSH);
                break;
            }
        }

        if (rc == KV_OK) {
            rc = kvtool_add_damage(seg, end, next != 0 ? next : seg->size,
                                   next != 0 ? 0 : KVTOOL_TAIL_TORN);
        }

        if (rc != KV_OK || next == 0) {
            break;
        }

        from = next;
    }

    if (v.alone != NULL) {
        if (rc == KV_OK && seg->ndamage == 0) {
            rc = kvtool_verify_hint(t, &alone, seg);

        } else {
            seg->hint = KVTOOL_HINT_UNCHECKED;
        }

        kvtool_close(&alone);
    }

    return rc;
}


void
kvtool_segment_free(kvtool_segment_t *seg)
{
    free(seg->damage);
    seg->damage = NULL;
    seg->ndamage = 0;
}
