#define _GNU_SOURCE

/*
 * Listing keys in order: pages by cursor against a sorted copy of what was
 * written, prefixes and bounds, expired keys, and a walk while the index
 * changes between the steps of a pass.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"


#define NKEYS     3000
#define NBUCKETS  16384        /* several steps of the pass */
#define ZONE      (16 * 1024 * 1024)


typedef struct {
    uint8_t   key[16];
    size_t    klen;
} key_t_;


static int
cmp_keys(const void *a, const void *b)
{
    const key_t_  *x = a, *y = b;
    int            c;

    c = memcmp(x->key, y->key, x->klen < y->klen ? x->klen : y->klen);

    return c != 0 ? c : (x->klen > y->klen) - (x->klen < y->klen);
}


/* key i: binary, of 1 to 12 bytes, many sharing prefixes */
static void
make_key(uint32_t i, key_t_ *k)
{
    uint32_t  x;
    size_t    j;

    x = i * 2654435761u;
    k->klen = 1 + i % 12;

    for (j = 0; j < k->klen; j++) {
        if (j < 2) {
            k->key[j] = (uint8_t) "ab\0\377"[(x >> (8 * j)) & 3];

        } else {
            k->key[j] = (uint8_t) ((x >> (3 * j % 32)) ^ i);
        }
    }
}


/* walks the whole range with pages of limit keys into out; returns count */
static size_t
walk(kv_test_store_t *t, const uint8_t *prefix, size_t plen,
    uint32_t limit, key_t_ *out, size_t room)
{
    int          more;
    size_t       n, klen;
    kv_loc_t     loc;
    kv_iter_t   *it;
    kv_range_t   r;
    const uint8_t  *key;
    key_t_       last;

    n = 0;
    memset(&r, 0, sizeof(r));
    r.prefix = prefix;
    r.plen = plen;
    r.limit = limit;

    do {
        assert_int_equal(kv_iter_open(&t->s, &r, &it), KV_OK);

        while (kv_iter_next(it, &key, &klen, &loc) == KV_OK) {
            assert_true(n < room);
            assert_true(klen <= sizeof(out[n].key));
            memcpy(out[n].key, key, klen);
            out[n].klen = klen;
            assert_true(loc.vlen > 0);
            n++;
        }

        more = kv_iter_more(it);

        if (more) {
            assert_int_equal(kv_iter_resume(it, &key, &klen), KV_OK);
            assert_true(klen <= sizeof(last.key));
            memcpy(last.key, key, klen);
            last.klen = klen;
            r.from = last.key;
            r.flen = last.klen;
            r.from_excl = 1;

        } else {
            assert_int_equal(kv_iter_resume(it, &key, &klen), KV_NOTFOUND);
        }

        kv_iter_close(it);

    } while (more);

    return n;
}


/* the distinct keys of 0..n-1 not deleted (every third), sorted */
static size_t
expected(key_t_ *ref, const uint8_t *prefix, size_t plen)
{
    size_t   i, n, m;
    key_t_   k;

    n = 0;

    for (i = 0; i < NKEYS; i++) {
        make_key(i, &k);
        if (k.klen >= plen && (plen == 0 || memcmp(k.key, prefix, plen) == 0))
        {
            ref[n++] = k;
        }
    }

    qsort(ref, n, sizeof(key_t_), cmp_keys);

    /* duplicates are one key */
    for (i = 0, m = 0; i < n; i++) {
        if (m == 0 || cmp_keys(&ref[m - 1], &ref[i]) != 0) {
            ref[m++] = ref[i];
        }
    }

    return m;
}


static void
fill(kv_test_store_t *t)
{
    uint32_t  i;
    key_t_    k;

    for (i = 0; i < NKEYS; i++) {
        make_key(i, &k);
        assert_int_equal(kv_put(&t->s, k.key, k.klen, (const uint8_t *) "v",
                                1, KV_TYPE_OCTET), KV_OK);
    }
}


static void
test_iter_pages(void **state)
{
    char              dir[PATH_MAX];
    size_t            n, m, p;
    key_t_           *ref, *got;
    kv_test_store_t   t;
    static const uint32_t   limits[] = { 1, 7, 1000, KV_ITER_MAX };
    static const uint8_t    prefixes[][2] = { "", "a", "b\377" };
    static const size_t     plens[] = { 0, 1, 2 };

    (void) state;

    kv_test_mkdtemp(dir);
    assert_int_equal(kv_test_open(&t, dir, ZONE, NBUCKETS), KV_OK);
    fill(&t);

    ref = calloc(NKEYS + 1, sizeof(key_t_));
    got = calloc(NKEYS + 1, sizeof(key_t_));
    assert_non_null(ref);
    assert_non_null(got);

    for (p = 0; p < 3; p++) {
        m = expected(ref, prefixes[p], plens[p]);
        assert_true(m > 0);

        for (size_t l = 0; l < 4; l++) {
            memset(got, 0, (NKEYS + 1) * sizeof(key_t_));
            n = walk(&t, prefixes[p], plens[p], limits[l], got, NKEYS + 1);
            assert_int_equal(n, m);

            for (size_t i = 0; i < m; i++) {
                assert_int_equal(cmp_keys(&got[i], &ref[i]), 0);
            }
        }
    }

    free(ref);
    free(got);
    kv_test_close(&t);
    kv_test_rmdir(dir);
}


static void
test_iter_bounds(void **state)
{
    char              dir[PATH_MAX];
    size_t            klen;
    kv_loc_t          loc;
    kv_iter_t        *it;
    kv_range_t        r;
    const uint8_t    *key;
    kv_write_t        w;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    assert_int_equal(kv_test_open(&t, dir, ZONE, NBUCKETS), KV_OK);

    assert_int_equal(kv_put(&t.s, (const uint8_t *) "a", 1,
                            (const uint8_t *) "1", 1, 0), KV_OK);
    assert_int_equal(kv_put(&t.s, (const uint8_t *) "ab", 2,
                            (const uint8_t *) "2", 1, 0), KV_OK);
    assert_int_equal(kv_put(&t.s, (const uint8_t *) "b", 1,
                            (const uint8_t *) "3", 1, 0), KV_OK);
    assert_int_equal(kv_put(&t.s, (const uint8_t *) "gone", 4,
                            (const uint8_t *) "4", 1, 0), KV_OK);
    assert_int_equal(kv_delete(&t.s, (const uint8_t *) "gone", 4), KV_OK);

    /* an expired key is not listed */
    kv_test_now = 1700000000000ull;
    memset(&w, 0, sizeof(w));
    w.value = (const uint8_t *) "5";
    w.vlen = 1;
    w.expires_at_ms = kv_test_now + 1000;
    assert_int_equal(kv_write(&t.s, (const uint8_t *) "c", 1, &w), KV_OK);
    kv_test_now += 1000;

    memset(&r, 0, sizeof(r));
    r.limit = 0;
    assert_int_equal(kv_iter_open(&t.s, &r, &it), KV_EINVAL);
    r.limit = KV_ITER_MAX + 1;
    assert_int_equal(kv_iter_open(&t.s, &r, &it), KV_EINVAL);

    /* from "a" inclusive: a, ab, b; exclusive: ab, b */
    r.limit = 10;
    r.from = (const uint8_t *) "a";
    r.flen = 1;
    assert_int_equal(kv_iter_open(&t.s, &r, &it), KV_OK);
    assert_int_equal(kv_iter_next(it, &key, &klen, &loc), KV_OK);
    assert_int_equal(klen, 1);
    assert_memory_equal(key, "a", 1);
    assert_int_equal(kv_iter_next(it, &key, &klen, &loc), KV_OK);
    assert_memory_equal(key, "ab", 2);
    assert_int_equal(kv_iter_next(it, &key, &klen, &loc), KV_OK);
    assert_memory_equal(key, "b", 1);
    assert_int_equal(kv_iter_next(it, &key, &klen, &loc), KV_NOTFOUND);
    assert_int_equal(kv_iter_more(it), 0);
    kv_iter_close(it);

    r.from_excl = 1;
    r.limit = 1;
    assert_int_equal(kv_iter_open(&t.s, &r, &it), KV_OK);
    assert_int_equal(kv_iter_next(it, &key, &klen, &loc), KV_OK);
    assert_int_equal(klen, 2);
    assert_memory_equal(key, "ab", 2);
    assert_int_equal(kv_iter_next(it, &key, &klen, &loc), KV_NOTFOUND);
    assert_int_equal(kv_iter_more(it), 1);
    kv_iter_close(it);

    /* a prefix that nothing has */
    r.from = NULL;
    r.prefix = (const uint8_t *) "zz";
    r.plen = 2;
    assert_int_equal(kv_iter_open(&t.s, &r, &it), KV_OK);
    assert_int_equal(kv_iter_next(it, &key, &klen, &loc), KV_NOTFOUND);
    assert_int_equal(kv_iter_more(it), 0);
    kv_iter_close(it);

    kv_test_now = 0;
    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * Between the steps of every pass, the host's unlock writes: it deletes
 * and puts back keys of the "churn" set, adds new keys and deletes keys
 * that are gone for good.  Keys untouched during the walk must each be
 * listed exactly once; keys deleted before it, never.
 */

static kv_test_store_t  *churn_t;
static void            (*churn_unlock)(void *ctx);
static int               churn_busy;
static uint32_t          churn_n;
static uint32_t          churn_merges;

static void
churn(void *ctx)
{
    char      key[32];
    int       len;

    churn_unlock(ctx);

    if (churn_t == NULL || churn_busy) {
        return;
    }

    churn_busy = 1;

    /* keys c0..c99 come and go; n0.. appear; d0.. are deleted for good */
    len = snprintf(key, sizeof(key), "c%u", churn_n % 100);
    (void) kv_delete(&churn_t->s, (uint8_t *) key, len);
    len = snprintf(key, sizeof(key), "n%u", churn_n);
    assert_int_equal(kv_put(&churn_t->s, (uint8_t *) key, len,
                            (const uint8_t *) "x", 1, 0), KV_OK);
    len = snprintf(key, sizeof(key), "c%u", (churn_n + 50) % 100);
    assert_int_equal(kv_put(&churn_t->s, (uint8_t *) key, len,
                            (const uint8_t *) "x", 1, 0), KV_OK);
    len = snprintf(key, sizeof(key), "d%u", churn_n);
    (void) kv_delete(&churn_t->s, (uint8_t *) key, len);
    churn_n++;

    /* index=sorted: now and then a merge moves keys under the walk */
    if (churn_t->s.conf.sorted && churn_n % 25 == 0) {
        assert_int_equal(kv_compact_begin(&churn_t->s), KV_OK);
        assert_int_equal(kv_compact(&churn_t->s), KV_OK);
        churn_merges++;
    }

    churn_busy = 0;
}


static void
while_writing(unsigned sorted)
{
    char              dir[PATH_MAX], key[32];
    size_t            n, i, seen_k, seen_x;
    uint32_t          j;
    int               len;
    key_t_           *got;
    kv_conf_t         conf;
    kv_test_store_t   t;

    kv_test_mkdtemp(dir);
    kv_test_conf(&conf, dir);
    conf.segment_size = 64 * 1024;
    conf.sorted = sorted;
    assert_int_equal(kv_test_open_conf(&t, &conf, ZONE, NBUCKETS), KV_OK);
    churn_merges = 0;

    for (j = 0; j < 2000; j++) {
        len = snprintf(key, sizeof(key), "k%04u", j);
        assert_int_equal(kv_put(&t.s, (uint8_t *) key, len,
                                (const uint8_t *) "v", 1, 0), KV_OK);
        len = snprintf(key, sizeof(key), "d%u", j);
        assert_int_equal(kv_put(&t.s, (uint8_t *) key, len,
                                (const uint8_t *) "v", 1, 0), KV_OK);
        len = snprintf(key, sizeof(key), "x%u", j);
        assert_int_equal(kv_put(&t.s, (uint8_t *) key, len,
                                (const uint8_t *) "v", 1, 0), KV_OK);
        assert_int_equal(kv_delete(&t.s, (uint8_t *) key, len), KV_OK);
    }

    for (j = 0; j < 100; j++) {
        len = snprintf(key, sizeof(key), "c%u", j);
        assert_int_equal(kv_put(&t.s, (uint8_t *) key, len,
                                (const uint8_t *) "v", 1, 0), KV_OK);
    }

    churn_t = &t;
    churn_unlock = t.host.unlock;
    churn_n = 0;
    t.host.unlock = churn;

    got = calloc(20000, sizeof(key_t_));
    assert_non_null(got);

    n = walk(&t, NULL, 0, 50, got, 20000);

    t.host.unlock = churn_unlock;
    churn_t = NULL;

    assert_true(churn_n > 100);

    seen_k = 0;
    seen_x = 0;

    for (i = 0; i < n; i++) {
        if (i > 0) {
            assert_true(cmp_keys(&got[i - 1], &got[i]) < 0);
        }

        seen_k += (got[i].key[0] == 'k');
        seen_x += (got[i].key[0] == 'x');
    }

    /* strictly ascending, so each k key once; all 2000 of them */
    assert_int_equal(seen_k, 2000);
    assert_int_equal(seen_x, 0);
    assert_true(!sorted || churn_merges > 3);

    free(got);
    kv_test_close(&t);
    kv_test_rmdir(dir);
}


static void
test_iter_while_writing(void **state)
{
    (void) state;

    while_writing(0);
}


/* index=sorted, with merges between the steps of the passes */
static void
test_iter_while_merging(void **state)
{
    (void) state;

    while_writing(1);
}


/*
 * index=sorted: keys in two runs of sorted segments and in the index,
 * some deleted in each place (tombstones in a run, masks in the index).
 */
static void
test_iter_sorted(void **state)
{
    char              dir[PATH_MAX];
    size_t            n, m, i, p, l;
    char             *alive;
    key_t_           *ref, *got, *live;
    kv_conf_t         conf;
    kv_store_t        other;
    kv_test_store_t   t;
    static const uint32_t   limits[] = { 1, 7, 1000 };
    static const uint8_t    prefixes[][2] = { "", "a", "b\377" };
    static const size_t     plens[] = { 0, 1, 2 };

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_conf(&conf, dir);
    conf.segment_size = 64 * 1024;
    conf.sorted = 1;
    assert_int_equal(kv_test_open_conf(&t, &conf, ZONE, NBUCKETS), KV_OK);

    ref = calloc(NKEYS + 1, sizeof(key_t_));
    got = calloc(NKEYS + 1, sizeof(key_t_));
    live = calloc(NKEYS + 1, sizeof(key_t_));
    assert_non_null(ref);
    assert_non_null(got);
    assert_non_null(live);

    fill(&t);
    m = expected(ref, (const uint8_t *) "", 0);

    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    assert_int_equal(kv_compact(&t.s), KV_OK);

    alive = malloc(m);
    assert_non_null(alive);
    memset(alive, 1, m);

    for (i = 0; i < m; i += 5) {
        assert_int_equal(kv_delete(&t.s, ref[i].key, ref[i].klen), KV_OK);
        alive[i] = 0;
    }

    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    assert_int_equal(kv_compact(&t.s), KV_OK);

    for (i = 1; i < m; i += 7) {
        assert_int_equal(kv_put(&t.s, ref[i].key, ref[i].klen,
                                (const uint8_t *) "w", 1, 0), KV_OK);
        alive[i] = 1;
    }

    for (i = 2; i < m; i += 11) {
        assert_int_equal(kv_delete(&t.s, ref[i].key, ref[i].klen),
                         alive[i] ? KV_OK : KV_NOTFOUND);
        alive[i] = 0;
    }

    for (p = 0; p < 3; p++) {
        for (i = 0, n = 0; i < m; i++) {
            if (alive[i] && ref[i].klen >= plens[p]
                && memcmp(ref[i].key, prefixes[p], plens[p]) == 0)
            {
                live[n++] = ref[i];
            }
        }

        assert_true(n > 0);

        for (l = 0; l < 3; l++) {
            assert_int_equal(walk(&t, prefixes[p], plens[p], limits[l], got,
                                  NKEYS + 1), n);

            for (i = 0; i < n; i++) {
                assert_int_equal(cmp_keys(&got[i], &live[i]), 0);
            }
        }
    }

    /*
     * the listings left a handle with the tables open; a sweep keeps it
     * while they are current and drops it once a merge replaced them
     */
    assert_non_null(t.s.spare);
    assert_non_null(t.s.spare->tables);
    kv_iter_sweep(&t.s);
    assert_non_null(t.s.spare);

    /* a merge by another process's handle */
    kv_store_init(&other, t.sh, &t.host, &t.s.conf);
    assert_int_equal(kv_compact_begin(&other), KV_OK);
    assert_int_equal(kv_compact(&other), KV_OK);
    kv_store_close(&other);
    assert_non_null(t.s.spare);
    kv_store_sweep(&t.s);
    assert_non_null(t.s.spare);
    kv_iter_sweep(&t.s);
    assert_null(t.s.spare);

    free(ref);
    free(got);
    free(live);
    free(alive);
    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * A worker killed between linking a new key into the order and into its
 * bucket leaves an entry only the order holds: a listing skips it, and
 * lists the key once when it is written again.  One killed between the
 * order and the bucket of a replacement leaves the order the new entry
 * and the bucket the old: the key is still listed, once, and after later
 * writes of it.
 */
static void
test_iter_orphan(void **state)
{
    char              dir[PATH_MAX];
    size_t            i, n;
    key_t_            got[8];
    kv_conf_t         conf;
    kv_slot_t         slot;
    kv_write_t        w;
    kv_test_store_t   t;
    static const char  *keys[] = { "a", "b", "c" };

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_conf(&conf, dir);
    conf.sorted = 1;
    assert_int_equal(kv_test_open_conf(&t, &conf, ZONE, NBUCKETS), KV_OK);

    for (i = 0; i < 3; i++) {
        assert_int_equal(kv_put(&t.s, (const uint8_t *) keys[i], 1,
                                (const uint8_t *) "v", 1, 0), KV_OK);
    }

    t.host.lock(t.host.ctx);
    assert_int_equal(kv_index_reserve(&t.host, t.sh, (const uint8_t *) "bb",
                                      2, 0, &slot), KV_OK);
    assert_null(slot.old);
    kv_order_insert(&t.host, t.sh, slot.e);
    t.host.unlock(t.host.ctx);

    n = walk(&t, (const uint8_t *) "", 0, 1000, got, 8);
    assert_int_equal(n, 3);

    for (i = 0; i < 3; i++) {
        assert_int_equal(got[i].klen, 1);
        assert_memory_equal(got[i].key, keys[i], 1);
    }

    /* a removal beside the orphan, then the key written for real */
    assert_int_equal(kv_delete(&t.s, (const uint8_t *) "b", 1), KV_OK);
    assert_int_equal(kv_put(&t.s, (const uint8_t *) "bb", 2,
                            (const uint8_t *) "v", 1, 0), KV_OK);

    n = walk(&t, (const uint8_t *) "", 0, 1, got, 8);
    assert_int_equal(n, 3);
    assert_memory_equal(got[0].key, "a", 1);
    assert_int_equal(got[1].klen, 2);
    assert_memory_equal(got[1].key, "bb", 2);
    assert_memory_equal(got[2].key, "c", 1);

    /* "c" gets an expiry: a new entry, killed after the order's step */
    t.host.lock(t.host.ctx);
    assert_int_equal(kv_index_reserve(&t.host, t.sh, (const uint8_t *) "c",
                                      1, 1, &slot), KV_OK);
    assert_non_null(slot.old);
    assert_ptr_not_equal(slot.e, slot.old);
    kv_order_replace(&t.host, t.sh, slot.old, slot.e);
    t.host.unlock(t.host.ctx);

    for (i = 0; i < 2; i++) {
        n = walk(&t, (const uint8_t *) "", 0, 1000, got, 8);
        assert_int_equal(n, 3);
        assert_int_equal(got[2].klen, 1);
        assert_memory_equal(got[2].key, "c", 1);

        n = walk(&t, (const uint8_t *) "", 0, 1, got, 8);
        assert_int_equal(n, 3);
        assert_memory_equal(got[2].key, "c", 1);

        /* written again with an expiry: replaces the bucket's entry only */
        memset(&w, 0, sizeof(w));
        w.value = (const uint8_t *) "w";
        w.vlen = 1;
        w.expires_at_ms = kv_now_ms(&t.host) + 3600 * 1000;
        assert_int_equal(kv_write(&t.s, (const uint8_t *) "c", 1, &w),
                         KV_OK);
    }

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_iter_pages),
        cmocka_unit_test(test_iter_bounds),
        cmocka_unit_test(test_iter_while_writing),
        cmocka_unit_test(test_iter_sorted),
        cmocka_unit_test(test_iter_while_merging),
        cmocka_unit_test(test_iter_orphan),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
