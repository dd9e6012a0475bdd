#define _GNU_SOURCE

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"


typedef struct {
    kv_test_store_t   t;
    kv_shared_t      *sh;
} index_t;


static void
index_open(index_t *x, size_t zone_size, uint32_t nbuckets)
{
    kv_test_host(&x->t, zone_size);
    x->sh = kv_shared_create(&x->t.host, nbuckets, 1024, 1024);
    assert_non_null(x->sh);
}


/* Sets key to a location derived from n, as a put would. */
static int
index_set(index_t *x, const void *key, size_t klen, uint32_t n)
{
    int        rc;
    kv_slot_t  slot;

    x->t.host.lock(x->t.host.ctx);

    rc = kv_index_reserve(&x->t.host, x->sh, key, klen, 0, &slot);
    if (rc == KV_OK) {
        kv_index_set(&x->t.host, x->sh, &slot, KV_LOC(1, n), 100 + n, n,
                     KV_TYPE_OCTET, 0);
    }

    x->t.host.unlock(x->t.host.ctx);

    return rc;
}


/* Returns n of the key's location, or -1 if absent. */
static long
index_get(index_t *x, const void *key, size_t klen)
{
    long         n;
    kv_entry_t  *e;

    x->t.host.lock(x->t.host.ctx);
    e = kv_index_find(&x->t.host, x->sh, key, klen, NULL);
    n = e != NULL ? (long) e->vlen : -1;

    if (e != NULL) {
        assert_true(e->loc == KV_LOC(1, e->vlen));
        assert_int_equal(e->flen, 100 + e->vlen);
    }

    x->t.host.unlock(x->t.host.ctx);

    return n;
}


static int
index_remove(index_t *x, const void *key, size_t klen)
{
    kv_ref_t    *link;
    kv_entry_t  *e;

    x->t.host.lock(x->t.host.ctx);

    e = kv_index_find(&x->t.host, x->sh, key, klen, &link);
    if (e != NULL) {
        kv_index_remove(&x->t.host, x->sh, link, e, NULL);
    }

    x->t.host.unlock(x->t.host.ctx);

    return e != NULL ? KV_OK : KV_NOTFOUND;
}


static void
test_basic(void **state)
{
    index_t  x;

    (void) state;

    index_open(&x, 64 * 1024, 16);
    assert_int_equal(x.sh->magic, KV_SHARED_MAGIC);
    assert_int_equal(x.sh->nbuckets, 16);
    assert_int_equal(x.sh->lock_fd, -1);
    assert_int_equal(x.sh->open, 0);

    assert_int_equal(index_get(&x, "a", 1), -1);
    assert_int_equal(index_set(&x, "a", 1, 1), KV_OK);
    assert_int_equal(index_set(&x, "b", 1, 2), KV_OK);
    assert_int_equal(index_get(&x, "a", 1), 1);
    assert_int_equal(index_get(&x, "b", 1), 2);
    assert_int_equal(index_get(&x, "ab", 2), -1);
    assert_true(x.sh->stats.keys == 2);
    assert_true(x.sh->stats.live_bytes == 101 + 102);

    /* overwrite: same entry, old frame dead */
    assert_int_equal(index_set(&x, "a", 1, 3), KV_OK);
    assert_int_equal(index_get(&x, "a", 1), 3);
    assert_true(x.sh->stats.keys == 2);
    assert_true(x.sh->stats.live_bytes == 103 + 102);
    assert_true(x.sh->stats.dead_bytes == 101);

    assert_int_equal(index_remove(&x, "a", 1), KV_OK);
    assert_int_equal(index_remove(&x, "a", 1), KV_NOTFOUND);
    assert_int_equal(index_get(&x, "a", 1), -1);
    assert_int_equal(index_get(&x, "b", 1), 2);
    assert_true(x.sh->stats.keys == 1);
    assert_true(x.sh->stats.live_bytes == 102);
    assert_true(x.sh->stats.dead_bytes == 101 + 103);

    kv_test_close(&x.t);
}


static void
test_bucket_rounding(void **state)
{
    index_t  x;

    (void) state;

    index_open(&x, 64 * 1024, 1000);
    assert_int_equal(x.sh->nbuckets, 1024);
    kv_test_close(&x.t);

    index_open(&x, 64 * 1024, 0);
    assert_int_equal(x.sh->nbuckets, 1);
    kv_test_close(&x.t);
}


/* one bucket: every operation walks a long chain */
static void
test_one_bucket(void **state)
{
    int       i, n;
    char      key[32];
    index_t   x;
    uint8_t   present[200];

    (void) state;

    index_open(&x, 256 * 1024, 1);
    n = (int) sizeof(present);

    for (i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        assert_int_equal(index_set(&x, key, strlen(key), (uint32_t) i), KV_OK);
        present[i] = 1;
    }

    /* remove the head, the tail and scattered middles of the chain */
    for (i = 0; i < n; i++) {
        if (i == 0 || i == n - 1 || i % 3 == 1) {
            snprintf(key, sizeof(key), "key-%d", i);
            assert_int_equal(index_remove(&x, key, strlen(key)), KV_OK);
            present[i] = 0;
        }
    }

    for (i = 0; i < n; i += 2) {
        snprintf(key, sizeof(key), "key-%d", i);
        assert_int_equal(index_set(&x, key, strlen(key), (uint32_t) (i + 1000)),
                         KV_OK);
        present[i] = 1;
    }

    for (i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        assert_int_equal(index_get(&x, key, strlen(key)),
                         !present[i] ? -1 : i % 2 == 0 ? i + 1000 : i);
    }

    kv_test_close(&x.t);
}


static void
test_binary_keys(void **state)
{
    index_t  x;

    (void) state;

    index_open(&x, 64 * 1024, 2);

    assert_int_equal(index_set(&x, "a\0b", 3, 1), KV_OK);
    assert_int_equal(index_set(&x, "a\0c", 3, 2), KV_OK);
    assert_int_equal(index_set(&x, "a", 1, 3), KV_OK);
    assert_int_equal(index_set(&x, "a/b", 3, 4), KV_OK);
    assert_int_equal(index_set(&x, "\0", 1, 5), KV_OK);

    assert_int_equal(index_get(&x, "a\0b", 3), 1);
    assert_int_equal(index_get(&x, "a\0c", 3), 2);
    assert_int_equal(index_get(&x, "a", 1), 3);
    assert_int_equal(index_get(&x, "a/b", 3), 4);
    assert_int_equal(index_get(&x, "\0", 1), 5);
    assert_int_equal(index_get(&x, "a\0", 2), -1);
    assert_int_equal(index_get(&x, "\0\0", 2), -1);

    assert_int_equal(index_remove(&x, "a\0b", 3), KV_OK);
    assert_int_equal(index_get(&x, "a\0c", 3), 2);
    assert_int_equal(index_get(&x, "a\0b", 3), -1);

    kv_test_close(&x.t);
}


static void
test_create_too_small(void **state)
{
    kv_test_store_t  t;

    (void) state;

    kv_test_log_reset();
    kv_test_host(&t, 4096);
    assert_null(kv_shared_create(&t.host, 4096, 1024, 1024));
    assert_int_equal(kv_test_log_count[KV_LOG_ERR], 1);
    kv_test_close(&t);
}


/*
 * A full index refuses new keys but still overwrites and deletes, which
 * need no memory, and a delete makes room again.
 */
static void
test_full_index(void **state)
{
    int              i, rc;
    char             dir[PATH_MAX], key[32];
    kv_test_store_t  t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_log_reset();
    /* room for the shared state and a few slot pages */
    assert_int_equal(kv_test_open(&t, dir, 4 * KV_ENTRY_PAGE, 4), KV_OK);

    for (i = 0; ; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        rc = kv_put(&t.s, (uint8_t *) key, strlen(key), (uint8_t *) "v", 1,
                    KV_TYPE_OCTET);
        if (rc != KV_OK) {
            break;
        }
    }

    assert_int_equal(rc, KV_ENOMEM);
    assert_true(i > 10);
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 1);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN], key));
    assert_true(t.sh->stats.keys == (uint64_t) i);

    assert_int_equal(kv_put(&t.s, (uint8_t *) "key-0", 5, (uint8_t *) "new", 3,
                            KV_TYPE_JSON), KV_OK);
    kv_test_expect(&t, "key-0", 5, "new", 3);

    assert_int_equal(kv_delete(&t.s, (uint8_t *) "key-1", 5), KV_OK);
    assert_int_equal(kv_delete(&t.s, (uint8_t *) "key-1", 5), KV_NOTFOUND);

    assert_int_equal(kv_put(&t.s, (uint8_t *) key, strlen(key), (uint8_t *) "v",
                            1, KV_TYPE_OCTET), KV_OK);
    kv_test_expect(&t, key, strlen(key), "v", 1);
    assert_true(t.sh->stats.keys == (uint64_t) i);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * The memory of keys gone serves keys of another size: a zone filled with
 * short keys and emptied takes as many long ones as fit, not none (each
 * slot size used to keep its pages for good).
 */
static void
test_slot_pages_return(void **state)
{
    int       i, n, shorts;
    char      key[300];
    index_t   x;

    (void) state;

    index_open(&x, 64 * KV_ENTRY_PAGE, 16);

    for (shorts = 0; ; shorts++) {
        n = snprintf(key, sizeof(key), "s%d", shorts);
        if (index_set(&x, key, (size_t) n, 1) != KV_OK) {
            break;
        }
    }

    assert_true(shorts > 1000);

    for (i = 0; i < shorts; i++) {
        n = snprintf(key, sizeof(key), "s%d", i);
        assert_int_equal(index_remove(&x, key, (size_t) n), KV_OK);
    }

    /* 200-byte keys: entries of 224 bytes, 18 a page */

    memset(key, 'L', sizeof(key));

    for (i = 0; ; i++) {
        n = snprintf(key, 12, "%010d", i);
        key[n] = 'L';
        if (index_set(&x, key, 200, 2) != KV_OK) {
            break;
        }
    }

    assert_true(i > 18 * 40);

    kv_test_close(&x.t);
}


/* the index pages the host gave and took back */
static int     page_allocs, page_frees;
static void  *(*page_host_alloc)(void *ctx, size_t size);
static void   (*page_host_free)(void *ctx, void *p);


static void *
counting_alloc(void *ctx, size_t size)
{
    page_allocs += (size == KV_ENTRY_PAGE);

    return page_host_alloc(ctx, size);
}


static void
counting_free(void *ctx, void *p)
{
    page_frees++;
    page_host_free(ctx, p);
}


/*
 * An emptied page stays if it is its size's only page with room, so that
 * a key removed and added again does not take and return a page each
 * time; beside another page with room it goes back to the host.
 */
static void
test_slot_page_kept(void **state)
{
    int       i, per_page;
    char      key[32];
    uint8_t  *full;
    index_t   x;

    (void) state;

    index_open(&x, 64 * KV_ENTRY_PAGE, 64);
    page_host_alloc = x.t.host.alloc;
    page_host_free = x.t.host.free;
    x.t.host.alloc = counting_alloc;
    x.t.host.free = counting_free;
    page_allocs = 0;
    page_frees = 0;

    /* 16-byte keys: 40-byte slots after the page's header */
    per_page = (KV_ENTRY_PAGE - 16) / 40;

    for (i = 0; i <= per_page; i++) {
        snprintf(key, sizeof(key), "key-%012d", i);
        assert_int_equal(index_set(&x, key, 16, 1), KV_OK);
    }

    assert_int_equal(page_allocs, 2);
    snprintf(key, sizeof(key), "key-%012d", per_page);

    for (i = 0; i < 100; i++) {
        assert_int_equal(index_remove(&x, key, 16), KV_OK);
        assert_int_equal(index_set(&x, key, 16, 1), KV_OK);
    }

    assert_int_equal(page_allocs, 2);
    assert_int_equal(page_frees, 0);

    /* the first page has room again: the second, emptied, goes back */
    snprintf(key, sizeof(key), "key-%012d", 0);
    assert_int_equal(index_remove(&x, key, 16), KV_OK);
    snprintf(key, sizeof(key), "key-%012d", per_page);
    assert_int_equal(index_remove(&x, key, 16), KV_OK);
    assert_int_equal(page_frees, 1);

    /*
     * A worker killed as it took a page's last slot, before it took the
     * full page off the list: the next allocation skips it.
     */
    for (i = per_page + 1; i < per_page + 2; i++) {
        snprintf(key, sizeof(key), "key-%012d", i);
        assert_int_equal(index_set(&x, key, 16, 1), KV_OK);
    }

    assert_int_equal(x.sh->slot_pages[40 / 8 - 1], 0);
    full = (uint8_t *) kv_index_find(&x.t.host, x.sh, (uint8_t *) key, 16,
                                     NULL);
    full = x.t.host.base
           + ((size_t) (full - x.t.host.base) & ~(size_t) (KV_ENTRY_PAGE - 1));
    x.sh->slot_pages[40 / 8 - 1] = kv_ref(&x.t.host, full);

    snprintf(key, sizeof(key), "key-%012d", 9999);
    assert_int_equal(index_set(&x, key, 16, 7), KV_OK);
    assert_int_equal(page_allocs, 3);

    for (i = 1; i < per_page + 2; i++) {
        snprintf(key, sizeof(key), "key-%012d", i);
        assert_int_equal(index_get(&x, key, 16), i == per_page ? -1 : 1);
    }

    x.t.host.alloc = page_host_alloc;
    x.t.host.free = page_host_free;
    kv_test_close(&x.t);
}


/* entries of one size share pages without rounding; a freed slot is reused */
static void
test_entry_slots(void **state)
{
    int               i, n;
    char              dir[PATH_MAX], key[32];
    uint8_t          *lo, *hi, *p;
    kv_entry_t       *e, *freed;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 1024), KV_OK);

    /* 16-byte keys: 40-byte slots, 102 to a page */
    n = KV_ENTRY_PAGE / 40;
    lo = NULL;
    hi = NULL;

    for (i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "key-%012d", i);
        assert_int_equal(kv_put(&t.s, (uint8_t *) key, 16, (uint8_t *) "v",
                                1, KV_TYPE_OCTET), KV_OK);

        t.host.lock(t.host.ctx);
        p = (uint8_t *) kv_index_find(&t.host, t.sh, (uint8_t *) key, 16,
                                      NULL);
        t.host.unlock(t.host.ctx);

        lo = (lo == NULL || p < lo) ? p : lo;
        hi = (hi == NULL || p > hi) ? p : hi;
    }

    assert_true(hi - lo == (n - 1) * 40);

    t.host.lock(t.host.ctx);
    freed = kv_index_find(&t.host, t.sh, (uint8_t *) "key-000000000007",
                          16, NULL);
    t.host.unlock(t.host.ctx);

    assert_int_equal(kv_delete(&t.s, (uint8_t *) "key-000000000007", 16),
                     KV_OK);
    assert_int_equal(kv_put(&t.s, (uint8_t *) "another-key-0016", 16,
                            (uint8_t *) "w", 1, KV_TYPE_OCTET), KV_OK);

    t.host.lock(t.host.ctx);
    e = kv_index_find(&t.host, t.sh, (uint8_t *) "another-key-0016", 16,
                      NULL);
    t.host.unlock(t.host.ctx);

    assert_ptr_equal(e, freed);
    kv_test_expect(&t, "another-key-0016", 16, "w", 1);
    kv_test_expect(&t, "key-000000000008", 16, "v", 1);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


#define ORDER_KEYS  2000

typedef struct {
    uint8_t   key[24];
    size_t    klen;
    unsigned  in;        /* the index holds it */
} order_key_t;


static int
order_cmp(const void *a, const void *b)
{
    const order_key_t  *x = a, *y = b;

    return kv_key_cmp(x->key, x->klen, y->key, y->klen);
}


/*
 * The ordered index's invariants against the keys it holds: level 0 walks
 * them all in order, every upper level is an ordered part of the one
 * below, each entry is on the levels of its height only.
 */
static void
order_check(index_t *x, const order_key_t *keys, size_t nkeys)
{
    size_t        i;
    unsigned      l, h;
    kv_ref_t      ref, *tower;
    kv_entry_t   *e, *prev;
    const kv_host_t  *host;

    host = &x->t.host;
    e = kv_order_seek(host, x->sh, NULL, 0, 0);

    for (i = 0; i < nkeys; i++) {
        if (!keys[i].in) {
            continue;
        }

        assert_non_null(e);
        assert_memory_equal(e->key, keys[i].key, keys[i].klen);
        assert_int_equal(e->klen, keys[i].klen);
        e = kv_order_next(host, e);
    }

    assert_null(e);

    for (l = 1; l < KV_ORDER_LEVELS; l++) {
        prev = NULL;

        for (ref = x->sh->order_head[l]; ref != 0; ref = tower[l]) {
            e = kv_ptr(host, ref);
            h = KV_ENTRY_HEIGHT(e->flags);
            assert_true(h > l);
            assert_true(l < x->sh->order_levels);
            assert_ptr_equal(kv_index_find(host, x->sh, e->key, e->klen,
                                           NULL), e);

            if (prev != NULL) {
                assert_true(kv_key_cmp(prev->key, prev->klen, e->key,
                                       e->klen) < 0);
            }

            prev = e;
            tower = (kv_ref_t *) ((uint8_t *) e
                                  + kv_entry_tower_off(e->klen, e->flags));
        }
    }
}


/*
 * index=sorted: every change of the index keeps its keys in order (new
 * keys, overwrites, entries replaced by a change of expiry, masks,
 * removals, moves to sorted segments), and a seek lands on the first key
 * at or past its own.
 */
static void
test_order(void **state)
{
    int           rc;
    size_t        i, j, k, nkeys;
    unsigned      op, excl;
    uint64_t      expires;
    kv_ref_t     *link;
    kv_slot_t     slot;
    index_t       x;
    size_t        warm_tries, warm_found;
    kv_order_finger_t  f;
    kv_entry_t   *e;
    const kv_entry_t  *w;
    order_key_t  *keys, probe;
    const kv_host_t  *host;

    (void) state;

    index_open(&x, 4 * 1024 * 1024, 512);
    host = &x.t.host;
    x.sh->sorted = 1;
    x.sh->runs.n = 1;      /* sorted segments exist: deletes leave masks */
    warm_tries = 0;
    warm_found = 0;

    keys = calloc(ORDER_KEYS, sizeof(order_key_t));
    assert_non_null(keys);

    /* keys of 1 to 24 random bytes, few distinct first bytes */
    srandom(12);

    for (i = 0, nkeys = 0; i < ORDER_KEYS; i++) {
        keys[nkeys].klen = 1 + (size_t) random() % 24;

        for (j = 0; j < keys[nkeys].klen; j++) {
            keys[nkeys].key[j] = (uint8_t) (j == 0 ? random() % 4
                                                   : random() % 256);
        }

        for (j = 0; j < nkeys; j++) {
            if (order_cmp(&keys[j], &keys[nkeys]) == 0) {
                break;
            }
        }

        nkeys += (j == nkeys);
    }

    qsort(keys, nkeys, sizeof(order_key_t), order_cmp);

    host->lock(host->ctx);

    for (k = 0; k < 40000; k++) {
        i = (size_t) random() % nkeys;
        op = (unsigned) random() % 8;
        e = kv_index_find(host, x.sh, keys[i].key, keys[i].klen, &link);

        if (op < 4) {
            /* a put, half of them with an expiry time */
            expires = (op & 1) ? 4102444800000ull + k : 0;
            rc = kv_index_reserve(host, x.sh, keys[i].key, keys[i].klen,
                                  expires, &slot);
            assert_int_equal(rc, KV_OK);
            kv_index_set(host, x.sh, &slot, KV_LOC(1, k), 100, 1,
                         KV_TYPE_OCTET, expires);
            keys[i].in = 1;

        } else if (op == 4 && e != NULL) {
            kv_index_remove(host, x.sh, link, e, NULL);
            keys[i].in = 0;

        } else if (op == 5 && e != NULL && !(e->flags & KV_ENTRY_MASK)) {
            kv_index_moved(host, x.sh, link, e, NULL);
            keys[i].in = 0;

        } else if (op == 6 && e != NULL) {
            kv_index_drop(host, x.sh, link, e, KV_LOC(1, k), 50);

        } else if (op == 6) {
            assert_int_equal(kv_index_add_mask(host, x.sh, keys[i].key,
                                               keys[i].klen, KV_LOC(1, k),
                                               50), KV_OK);
            keys[i].in = 1;

        } else if (op == 7) {
            /* a seek from a key that may be absent, or from one byte less */
            probe = keys[i];
            probe.klen -= (probe.klen > 1 && (k & 1));
            excl = (k & 2) != 0;

            for (j = 0; j < nkeys; j++) {
                if (keys[j].in
                    && (excl ? order_cmp(&keys[j], &probe) > 0
                             : order_cmp(&keys[j], &probe) >= 0))
                {
                    break;
                }
            }

            e = kv_order_seek(host, x.sh, probe.key, probe.klen, excl);

            /*
             * the walk before the lock takes the search's path; it may
             * give up on a long one (NULL), which the count below bounds
             */
            if (!excl) {
                w = kv_order_warm(host, x.sh, probe.key, probe.klen);
                warm_tries += (e != NULL);
                warm_found += (w != NULL);

                if (w != NULL) {
                    assert_ptr_equal(w, e);
                }
            }

            if (j == nkeys) {
                assert_null(e);

            } else {
                assert_non_null(e);
                assert_int_equal(e->klen, keys[j].klen);
                assert_memory_equal(e->key, keys[j].key, keys[j].klen);
            }
        }

        if (k % 5000 == 0) {
            order_check(&x, keys, nkeys);
        }
    }

    order_check(&x, keys, nkeys);
    assert_true(warm_tries > 1000 && warm_found * 100 >= warm_tries * 99);

    /*
     * removing keys in order through a finger, as a merge's swap does,
     * keeps the order; removing every key empties every level
     */

    memset(&f, 0, sizeof(f));

    for (i = 0; i < nkeys; i++) {
        e = kv_index_find(host, x.sh, keys[i].key, keys[i].klen, &link);

        if (e != NULL && i % 3 != 0) {
            kv_index_remove(host, x.sh, link, e, &f);
            keys[i].in = 0;
        }
    }

    order_check(&x, keys, nkeys);

    /* a key below the finger's place: searched for from the head */

    e = kv_index_find(host, x.sh, keys[0].key, keys[0].klen, &link);
    assert_non_null(e);
    kv_index_remove(host, x.sh, link, e, &f);
    keys[0].in = 0;

    order_check(&x, keys, nkeys);

    for (i = 0; i < nkeys; i++) {
        e = kv_index_find(host, x.sh, keys[i].key, keys[i].klen, &link);

        if (e != NULL) {
            kv_index_moved(host, x.sh, link, e, NULL);
            keys[i].in = 0;
        }
    }

    assert_int_equal(x.sh->order_levels, 0);
    assert_null(kv_order_seek(host, x.sh, NULL, 0, 0));

    host->unlock(host->ctx);

    free(keys);
    kv_test_close(&x.t);
}


/*
 * The walk before the lock reads links that other processes may be
 * changing: one that points out of the zone, an entry whose tower is
 * lower than the level it was reached on, or a cycle ends the walk with
 * NULL instead of a crash, a read past the entry or a loop.
 */
static void
test_order_warm_damaged(void **state)
{
    int                i;
    char               key[17];
    kv_ref_t           saved, *tower;
    index_t            x;
    const uint8_t     *probe = (const uint8_t *) "key-000000000005";
    kv_entry_t        *first, *last;
    const kv_host_t   *host;

    (void) state;

    index_open(&x, 1024 * 1024, 64);
    host = &x.t.host;
    x.sh->sorted = 1;

    for (i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "key-%012d", i);
        assert_int_equal(index_set(&x, key, 16, (uint32_t) i), KV_OK);
    }

    first = kv_order_seek(host, x.sh, NULL, 0, 0);
    last = kv_order_seek(host, x.sh, (uint8_t *) "key-000000000199", 16, 0);
    assert_non_null(first);
    assert_non_null(last);
    assert_ptr_equal(kv_order_warm(host, x.sh,
                                   (uint8_t *) "key-000000000199", 16),
                     last);
    assert_null(kv_order_warm(host, x.sh, (uint8_t *) "key-1", 5));

    /* a link out of the zone: far past its end, unmapped */
    saved = x.sh->order_head[0];
    x.sh->order_head[0] = 0xfffffff0;
    x.sh->order_levels = 1;
    assert_null(kv_order_warm(host, x.sh, probe, 16));
    x.sh->order_head[0] = saved;
    assert_non_null(kv_order_warm(host, x.sh, probe, 16));

    /* a cycle: the first entry links to itself */
    tower = (kv_ref_t *) ((uint8_t *) first
                          + kv_entry_tower_off(first->klen, first->flags));
    saved = tower[0];
    tower[0] = kv_ref(host, first);
    assert_null(kv_order_warm(host, x.sh, probe, 16));
    tower[0] = saved;

    /*
     * an entry made height 1 and reached on level 1: its tower's second
     * word is no link of level 1, here one that would lead on to a wrong
     * entry
     */
    x.sh->order_levels = 2;
    x.sh->order_head[1] = kv_ref(host, first);
    first->flags = (uint8_t) ((first->flags & 0x0f)
                              | (1 << KV_ENTRY_HEIGHT_SHIFT));
    tower[1] = kv_ref(host, last);
    assert_null(kv_order_warm(host, x.sh, probe, 16));

    kv_test_close(&x.t);
}


/*
 * Keys' hashes are seeded per zone: keys found to share a bucket of one
 * zone (as a client flooding a bucket would find them) spread over the
 * buckets of another, and keys found to stay on the skip list's lowest
 * level rise in another.
 */
static void
test_hash_seed(void **state)
{
    char      keys[64][16];
    size_t    klen[64];
    uint32_t  i, n, bucket, spread;
    index_t   a, b;

    (void) state;

    index_open(&a, 64 * 1024, 1024);
    index_open(&b, 64 * 1024, 1024);
    assert_true(a.sh->hash_seed != b.sh->hash_seed);

    /* eight keys of one bucket of a: all eight in one of b, (1/1024)^7 */

    n = 0;
    bucket = 0;

    for (i = 0; n < 8; i++) {
        klen[n] = (size_t) snprintf(keys[n], sizeof(keys[n]), "k%u", i);

        if (n == 0) {
            bucket = kv_key_hash(a.sh, (uint8_t *) keys[0], klen[0]) & 1023;
        }

        if ((kv_key_hash(a.sh, (uint8_t *) keys[n], klen[n]) & 1023)
            == bucket)
        {
            n++;
        }
    }

    bucket = kv_key_hash(b.sh, (uint8_t *) keys[0], klen[0]) & 1023;
    spread = 0;

    for (i = 1; i < 8; i++) {
        spread += (kv_key_hash(b.sh, (uint8_t *) keys[i], klen[i]) & 1023)
                  != bucket;
    }

    assert_true(spread > 0);

    /* 64 keys of height 1 in a: all 64 of height 1 in b, (3/4)^64 */

    n = 0;

    for (i = 0; n < 64; i++) {
        klen[n] = (size_t) snprintf(keys[n], sizeof(keys[n]), "k%u", i);
        n += kv_order_height(a.sh, (uint8_t *) keys[n], klen[n]) == 1;
    }

    spread = 0;

    for (i = 0; i < 64; i++) {
        spread += kv_order_height(b.sh, (uint8_t *) keys[i], klen[i]) != 1;
    }

    assert_true(spread > 0);

    kv_test_close(&a.t);
    kv_test_close(&b.t);
}

int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_bucket_rounding),
        cmocka_unit_test(test_one_bucket),
        cmocka_unit_test(test_binary_keys),
        cmocka_unit_test(test_create_too_small),
        cmocka_unit_test(test_full_index),
        cmocka_unit_test(test_entry_slots),
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_order_warm_damaged),
        cmocka_unit_test(test_hash_seed),
        cmocka_unit_test(test_slot_pages_return),
        cmocka_unit_test(test_slot_page_kept),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
