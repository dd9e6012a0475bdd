#define _GNU_SOURCE

/*
 * Listing keys in order.  The hash index keeps no order, so in index=hash
 * a page is the range's limit + 1 smallest keys, found in one pass over
 * every bucket with a bounded max-heap: O(n log limit) per page, with the
 * lock taken per step of KV_ITER_CHUNK buckets.  The extra key only says
 * whether there is more.
 *
 * A key that exists for a whole pass sits in its bucket for all of it
 * (buckets never move), so it is seen; paging by the last key returned
 * (exclusive) then lists every key that exists for a whole walk exactly
 * once.
 *
 * index=sorted: the index keeps its keys in order too (kv_order.c), so
 * the page's entries are read from the range's start, KV_ITER_CHUNK per
 * hold of the lock, each step seeking past the last key taken; masks and
 * expired entries are kept, as keys that hide the sorted segments'
 * records.  Then the page is a merge of those entries with every run read
 * from the range's start (newest first wins), up to limit + 1 keys or the
 * largest entry kept, past which the index was not looked at: the next
 * page resumes there.  A merge publishes its tables before it drops the
 * entries they took over, so a key that exists for the whole walk is in
 * the index or in the runs read after it.
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kv_internal.h"


/*
 * buckets (index=hash) or entries (index=sorted) walked per hold of the
 * lock: with 4096 buckets, writers running beside a client that pages
 * without pause had a p99 of 46 ms, with 512, 9.5 ms (bench/list.sh,
 * 1 million keys)
 */
#define KV_ITER_CHUNK  512
/* how many buckets ahead the pass prefetches the first entry */
#define KV_ITER_AHEAD  16


typedef struct {
    uint8_t          *key;
    size_t            klen;
    size_t            cap;
    kv_loc_t          loc;
    unsigned          dead;     /* index=sorted: a mask or expired */
} kv_iter_item_t;


struct kv_iter_s {
    kv_iter_item_t   *items;
    uint32_t          n;        /* items held */
    uint32_t          max;      /* limit + 1 */
    uint32_t          next;     /* kv_iter_next()'s position */
    unsigned          more;
    kv_iter_item_t    resume;   /* with more: the next page starts after
                                   its key */
};


static int kv_iter_walk(kv_store_t *s, const kv_range_t *range,
    kv_iter_t *it);
static int kv_iter_walk_ordered(kv_store_t *s, const kv_range_t *range,
    kv_iter_t *it);
static void kv_iter_start(const kv_range_t *range, const uint8_t **key,
    size_t *klen, int *excl);
static int kv_iter_keep(kv_iter_item_t *item, const kv_entry_t *e,
    unsigned dead);
static int kv_iter_in_range(const kv_range_t *range, const uint8_t *key,
    size_t klen);
static int kv_iter_take(kv_iter_t *it, const kv_entry_t *e);
static int kv_iter_copy(kv_iter_item_t *item, const uint8_t *key,
    size_t klen);
static int kv_iter_sorted(kv_store_t *s, const kv_range_t *range,
    kv_iter_t *it, const kv_runs_t *runs);
static kv_store_t *kv_iter_handle(kv_store_t *s);
static void kv_iter_handle_done(kv_store_t *s, kv_store_t *h);
static void kv_iter_sift_down(kv_iter_t *it, uint32_t i);
static int kv_iter_cmp_items(const void *a, const void *b);


int
kv_iter_open(kv_store_t *s, const kv_range_t *range, kv_iter_t **itp)
{
    int         rc;
    kv_iter_t  *it;
    kv_runs_t   runs;

    if (range->limit == 0 || range->limit > KV_ITER_MAX) {
        return KV_EINVAL;
    }

    it = calloc(1, sizeof(kv_iter_t));
    if (it == NULL) {
        return KV_ENOMEM;
    }

    it->max = range->limit + 1;
    it->items = calloc(it->max, sizeof(kv_iter_item_t));

    if (it->items == NULL) {
        free(it);
        return KV_ENOMEM;
    }

    if (s->conf.sorted) {
        rc = kv_iter_walk_ordered(s, range, it);
        if (rc != KV_OK) {
            kv_iter_close(it);
            return rc;
        }

        kv_lock(s);
        runs = s->sh->runs;
        kv_unlock(s);

        rc = kv_iter_sorted(s, range, it, &runs);
        if (rc != KV_OK) {
            kv_iter_close(it);
            return rc;
        }

        *itp = it;
        return KV_OK;
    }

    rc = kv_iter_walk(s, range, it);
    if (rc != KV_OK) {
        kv_iter_close(it);
        return rc;
    }

    qsort(it->items, it->n, sizeof(kv_iter_item_t), kv_iter_cmp_items);

    if (it->n == it->max) {
        it->more = 1;
        it->n--;
    }

    if (it->more
        && kv_iter_copy(&it->resume, it->items[it->n - 1].key,
                        it->items[it->n - 1].klen) != KV_OK)
    {
        kv_iter_close(it);
        return KV_ENOMEM;
    }

    *itp = it;

    return KV_OK;
}


int
kv_iter_resume(const kv_iter_t *it, const uint8_t **key, size_t *klen)
{
    if (!it->more) {
        return KV_NOTFOUND;
    }

    *key = it->resume.key;
    *klen = it->resume.klen;

    return KV_OK;
}


int
kv_iter_next(kv_iter_t *it, const uint8_t **key, size_t *klen, kv_loc_t *loc)
{
    kv_iter_item_t  *item;

    if (it->next == it->n) {
        return KV_NOTFOUND;
    }

    item = &it->items[it->next++];

    *key = item->key;
    *klen = item->klen;
    *loc = item->loc;

    return KV_OK;
}


int
kv_iter_more(const kv_iter_t *it)
{
    return it->more;
}


void
kv_iter_close(kv_iter_t *it)
{
    uint32_t  i;

    if (it == NULL) {
        return;
    }

    for (i = 0; i < it->max; i++) {
        free(it->items[i].key);
    }

    free(it->resume.key);

    free(it->items);
    free(it);
}


static int
kv_iter_walk(kv_store_t *s, const kv_range_t *range, kv_iter_t *it)
{
    int               rc;
    uint32_t          i, end;
    uint64_t          now;
    kv_ref_t         *buckets, ref;
    kv_entry_t       *e;
    kv_shared_t      *sh;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;
    rc = KV_OK;

    for (i = 0; rc == KV_OK; i = end) {
        kv_lock(s);

        rc = kv_check_open(s);
        if (rc != KV_OK) {
            kv_unlock(s);
            return rc;
        }

        if (i == sh->nbuckets) {
            kv_unlock(s);
            break;
        }

        now = kv_now_ms(host);
        buckets = kv_ptr(host, sh->buckets);
        end = sh->nbuckets - i > KV_ITER_CHUNK ? i + KV_ITER_CHUNK
                                               : sh->nbuckets;

        for ( /* void */ ; i < end && rc == KV_OK; i++) {

            /* the pass is bound by cache misses: start those ahead */

            if (i + KV_ITER_AHEAD < end && buckets[i + KV_ITER_AHEAD] != 0) {
                __builtin_prefetch(kv_ptr(host, buckets[i + KV_ITER_AHEAD]));
            }

            for (ref = buckets[i]; ref != 0; ref = e->next) {
                e = kv_ptr(host, ref);

                if (!kv_iter_in_range(range, e->key, e->klen)) {
                    continue;
                }

                if (kv_entry_expired(e, now)) {
                    continue;
                }

                rc = kv_iter_take(it, e);
                if (rc != KV_OK) {
                    break;
                }
            }
        }

        kv_unlock(s);
    }

    return rc;
}


static int
kv_iter_walk_ordered(kv_store_t *s, const kv_range_t *range, kv_iter_t *it)
{
    int               rc, excl;
    size_t            klen;
    uint32_t          k;
    uint64_t          now;
    kv_entry_t       *e, *b;
    kv_iter_item_t   *last;
    kv_shared_t      *sh;
    const uint8_t    *key;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;
    rc = KV_OK;

    kv_iter_start(range, &key, &klen, &excl);

    for ( ;; ) {
        kv_lock(s);

        rc = kv_check_open(s);
        if (rc != KV_OK) {
            kv_unlock(s);
            return rc;
        }

        now = kv_now_ms(host);
        e = kv_order_seek(host, sh, key, klen, excl);

        for (k = 0;
             e != NULL && k < KV_ITER_CHUNK && it->n < it->max;
             e = kv_order_next(host, e))
        {
            /* read from the range's start: past the prefix is past all */

            if (range->plen != 0
                && (e->klen < range->plen
                    || memcmp(e->key, range->prefix, range->plen) != 0))
            {
                e = NULL;
                break;
            }

            /*
             * The bucket's entry of the key is the key's: a worker killed
             * between the list and the bucket may have left the list an
             * entry the bucket no longer holds, or one beside it.
             */

            b = kv_index_find(host, sh, e->key, e->klen, NULL);

            if (b == NULL) {
                continue;
            }

            last = it->n != 0 ? &it->items[it->n - 1] : NULL;

            if (last != NULL
                && kv_key_cmp(last->key, last->klen, b->key, b->klen) == 0)
            {
                continue;
            }

            rc = kv_iter_keep(&it->items[it->n], b,
                              (b->flags & KV_ENTRY_MASK)
                              || kv_entry_expired(b, now));
            if (rc != KV_OK) {
                break;
            }

            it->n++;
            k++;
        }

        kv_unlock(s);

        if (rc != KV_OK || e == NULL || it->n == it->max) {
            return rc;
        }

        key = it->items[it->n - 1].key;
        klen = it->items[it->n - 1].klen;
        excl = 1;
    }
}


/* where a range starts: the larger of its prefix and from */
static void
kv_iter_start(const kv_range_t *range, const uint8_t **key, size_t *klen,
    int *excl)
{
    if (range->from != NULL
        && kv_key_cmp(range->from, range->flen, range->prefix, range->plen)
           >= 0)
    {
        *key = range->from;
        *klen = range->flen;
        *excl = range->from_excl;
        return;
    }

    *key = range->plen ? range->prefix : NULL;
    *klen = range->plen;
    *excl = 0;
}


static int
kv_iter_in_range(const kv_range_t *range, const uint8_t *key, size_t klen)
{
    int  c;

    if (range->plen != 0
        && (klen < range->plen
            || memcmp(key, range->prefix, range->plen) != 0))
    {
        return 0;
    }

    if (range->from == NULL) {
        return 1;
    }

    c = kv_key_cmp(key, klen, range->from, range->flen);

    return range->from_excl ? c > 0 : c >= 0;
}


/*
 * Keeps e's key if it is among the smallest seen: items[0] is the largest
 * held, so once the heap is full a key that loses costs one comparison.
 */
static int
kv_iter_take(kv_iter_t *it, const kv_entry_t *e)
{
    uint32_t         i, parent;
    kv_iter_item_t  *slot, item;

    if (it->n == it->max) {
        slot = &it->items[0];

        if (kv_key_cmp(e->key, e->klen, slot->key, slot->klen) >= 0) {
            return KV_OK;
        }

    } else {
        slot = &it->items[it->n];
    }

    if (kv_iter_keep(slot, e, 0) != KV_OK) {
        return KV_ENOMEM;
    }

    if (slot == &it->items[0] && it->n == it->max) {
        kv_iter_sift_down(it, 0);
        return KV_OK;
    }

    /* a new item rises to its place */

    for (i = it->n++; i > 0; i = parent) {
        parent = (i - 1) / 2;

        if (kv_key_cmp(it->items[parent].key, it->items[parent].klen,
                       it->items[i].key, it->items[i].klen) >= 0)
        {
            break;
        }

        item = it->items[parent];
        it->items[parent] = it->items[i];
        it->items[i] = item;
    }

    return KV_OK;
}


static int
kv_iter_copy(kv_iter_item_t *item, const uint8_t *key, size_t klen)
{
    uint8_t  *p;

    if (item->cap < klen) {
        p = malloc(klen);
        if (p == NULL) {
            return KV_ENOMEM;
        }

        free(item->key);
        item->key = p;
        item->cap = klen;
    }

    memcpy(item->key, key, klen);
    item->klen = klen;

    return KV_OK;
}


/* the item becomes e's key and location */
static int
kv_iter_keep(kv_iter_item_t *item, const kv_entry_t *e, unsigned dead)
{
    if (kv_iter_copy(item, e->key, e->klen) != KV_OK) {
        return KV_ENOMEM;
    }

    kv_entry_loc(e, &item->loc);
    item->dead = dead;

    return KV_OK;
}


static void
kv_iter_sift_down(kv_iter_t *it, uint32_t i)
{
    uint32_t         l, r, big;
    kv_iter_item_t   item;

    for ( ;; ) {
        l = 2 * i + 1;
        r = l + 1;
        big = i;

        if (l < it->n
            && kv_key_cmp(it->items[l].key, it->items[l].klen,
                          it->items[big].key, it->items[big].klen) > 0)
        {
            big = l;
        }

        if (r < it->n
            && kv_key_cmp(it->items[r].key, it->items[r].klen,
                          it->items[big].key, it->items[big].klen) > 0)
        {
            big = r;
        }

        if (big == i) {
            return;
        }

        item = it->items[big];
        it->items[big] = it->items[i];
        it->items[i] = item;
        i = big;
    }
}


static int
kv_iter_cmp_items(const void *a, const void *b)
{
    const kv_iter_item_t  *x = a, *y = b;

    return kv_key_cmp(x->key, x->klen, y->key, y->klen);
}



/*
 * index=sorted: merges the index's page (it->items, sorted, masks
 * included) with the runs into the page proper.
 */
static int
kv_iter_sorted(kv_store_t *s, const kv_range_t *range, kv_iter_t *it,
    const kv_runs_t *runs)
{
    int                     rc, full, c, excl;
    size_t                  klen, slen;
    uint32_t                r, hi, n;
    uint64_t                now;
    kv_store_t             *h;
    kv_iter_item_t         *out, *item, *hmax;
    kv_level_iter_t         li;
    const uint8_t          *key, *start;
    const kv_table_iter_t  *rec;

    li.run = NULL;

    h = kv_iter_handle(s);
    if (h == NULL) {
        return KV_ENOMEM;
    }

    out = calloc(it->max, sizeof(kv_iter_item_t));
    if (out == NULL) {
        kv_iter_handle_done(s, h);
        return KV_ENOMEM;
    }

    rc = kv_level_open(h, runs);
    if (rc != KV_OK) {
        goto done;
    }

    kv_iter_start(range, &start, &slen, &excl);

    rc = kv_level_iter_open(&li, h, h->nruns, slen ? start : NULL, slen);
    if (rc != KV_OK) {
        goto done;
    }

    full = (it->n == it->max);
    hmax = it->n ? &it->items[it->n - 1] : NULL;
    now = kv_now_ms(s->host);
    hi = 0;
    n = 0;

    for ( ;; ) {
        if (li.rc != KV_OK) {
            rc = li.rc;
            goto done;
        }

        rec = li.rec;

        /*
         * the runs are read from the range's start: a key past the prefix
         * is past every key that has it
         */

        if (rec != NULL && range->plen != 0
            && (rec->pk.klen < range->plen
                || memcmp(rec->pk.key, range->prefix, range->plen) != 0))
        {
            rec = NULL;
        }

        if (hi == it->n && rec == NULL) {
            break;
        }

        /* the smallest key of the index's page and the runs' */

        c = hi == it->n ? 1
            : rec == NULL ? -1
            : kv_key_cmp(it->items[hi].key, it->items[hi].klen, rec->pk.key,
                         rec->pk.klen);

        key = c <= 0 ? it->items[hi].key : rec->pk.key;
        klen = c <= 0 ? it->items[hi].klen : rec->pk.klen;

        /* past what the index's page covers: the next page goes on */
        if (full && kv_key_cmp(key, klen, hmax->key, hmax->klen) > 0) {
            it->more = 1;
            rc = kv_iter_copy(&it->resume, hmax->key, hmax->klen);
            goto done;
        }

        item = &out[n];

        if (kv_iter_copy(item, key, klen) != KV_OK) {
            rc = KV_ENOMEM;
            goto done;
        }

        if (c <= 0) {
            /* the index's entry is the newest record of its key */
            item->loc = it->items[hi].loc;
            item->dead = it->items[hi].dead;
            hi++;

        } else if (!kv_iter_in_range(range, key, klen)) {
            /* the key from is, when the range starts after it */
            item->dead = 1;

        } else {
            item->dead = rec->pk.tombstone
                         || (rec->pk.expires_at_ms != 0
                             && rec->pk.expires_at_ms <= now);
            item->loc.segment = rec->t->id;
            item->loc.offset = rec->off;
            item->loc.flen = rec->pk.flen;
            item->loc.vlen = rec->pk.vlen;
            item->loc.type = rec->pk.type;
            item->loc.expires_at_ms = rec->pk.expires_at_ms;
            item->loc.seq = rec->pk.seq;
            item->loc.verified = 0;
        }

        if (c >= 0) {
            kv_level_iter_next(&li);
        }

        if (item->dead) {
            continue;
        }

        if (++n == it->max) {
            it->more = 1;
            n--;
            rc = kv_iter_copy(&it->resume, out[n - 1].key, out[n - 1].klen);
            break;
        }
    }

done:

    if (rc == KV_OK) {
        /* the page replaces the index's */

        for (r = 0; r < it->max; r++) {
            free(it->items[r].key);
        }

        free(it->items);
        it->items = out;
        it->n = n;
        out = NULL;
    }

    if (out != NULL) {
        for (r = 0; r < it->max; r++) {
            free(out[r].key);
        }

        free(out);
    }

    kv_level_iter_close(&li);
    kv_iter_handle_done(s, h);

    return rc;
}


/*
 * A listing runs in a thread, so it reads the tables through a handle of
 * its own: s's spare one if free, with the tables the last listing opened
 * (opening a hundred table files cost a page milliseconds), else a new
 * one.
 */
static kv_store_t *
kv_iter_handle(kv_store_t *s)
{
    kv_store_t  *h;

    h = __atomic_exchange_n(&s->spare, NULL, __ATOMIC_ACQ_REL);

    if (h == NULL) {
        h = malloc(sizeof(kv_store_t));

        if (h == NULL) {
            kv_log(s->host, KV_LOG_ERR, errno, "no memory to list the keys "
                   "of \"%s\"", s->conf.dir);
            return NULL;
        }

        kv_store_init(h, s->sh, s->host, &s->conf);
    }

    return h;
}


/*
 * The spare handle's tables, once a merge replaced them, hold deleted
 * segments' space.  Called from a timer, not from kv_store_sweep(): that
 * one runs under the store lock, where unmapping a hundred tables would
 * hold up every request.
 */
void
kv_iter_sweep(kv_store_t *s)
{
    uint32_t     gen;
    kv_store_t  *spare, *none;

    none = NULL;
    gen = __atomic_load_n(&s->sh->runs.gen, __ATOMIC_RELAXED);

    spare = __atomic_exchange_n(&s->spare, NULL, __ATOMIC_ACQ_REL);

    if (spare != NULL
        && (spare->tables_gen != gen
            || !__atomic_compare_exchange_n(&s->spare, &none, spare, 0,
                                            __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)))
    {
        kv_store_close(spare);
        free(spare);
    }
}


/* the handle becomes s's spare one, unless another listing's did */
static void
kv_iter_handle_done(kv_store_t *s, kv_store_t *h)
{
    kv_store_t  *none;

    none = NULL;

    if (!__atomic_compare_exchange_n(&s->spare, &none, h, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    {
        kv_store_close(h);
        free(h);
    }
}
