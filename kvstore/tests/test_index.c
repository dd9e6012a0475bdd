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
        kv_index_remove(&x->t.host, x->sh, link, e);
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
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
