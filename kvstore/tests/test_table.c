#define _GNU_SOURCE

/*
 * Sorted segments: building the table file of a segment written in key
 * order, finding every key through it (small and big values, short and
 * long keys), missing keys, the filter's false positives, a damaged,
 * stale or missing table file, and a segment that is not sorted.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"


#define ZONE   (64 * 1024 * 1024)


/* key i: "key:" and 8 digits; every 97th is long, every 89th has a big
 * value */
static size_t
make_key(uint32_t i, uint8_t *key)
{
    size_t  n;

    n = (size_t) sprintf((char *) key, "key:%08u", i);

    if (i % 97 == 0) {
        memset(key + n, 'L', 900);
        n += 900;
    }

    return n;
}


static size_t
value_len(uint32_t i)
{
    return i % 89 == 0 ? 20000 + i % 7 : 100;
}


static void
fill_sorted(kv_test_store_t *t, uint32_t n)
{
    uint8_t   key[1024], *value;
    uint32_t  i;
    size_t    klen;

    value = malloc(30000);
    assert_non_null(value);

    for (i = 0; i < n; i++) {
        klen = make_key(i, key);
        memset(value, 'a' + i % 26, value_len(i));
        assert_int_equal(kv_put(&t->s, key, klen, value, value_len(i),
                                KV_TYPE_OCTET), KV_OK);
    }

    free(value);
}


static void
expect_all(kv_test_store_t *t, kv_table_t *tb, uint32_t n)
{
    uint8_t    key[1024], *frame;
    uint32_t   i;
    size_t     klen;
    kv_loc_t   loc;
    kv_peek_t  pk;

    for (i = 0; i < n; i++) {
        klen = make_key(i, key);
        assert_int_equal(kv_table_get(tb, key, klen, &loc, &pk), KV_OK);
        assert_int_equal(loc.segment, tb->id);
        assert_int_equal(loc.vlen, value_len(i));
        assert_int_equal(pk.klen, klen);
        assert_false(pk.tombstone);

        frame = malloc(loc.flen);
        assert_non_null(frame);
        assert_int_equal(kv_read(&t->s, &loc, frame), KV_OK);
        assert_int_equal(frame[loc.flen - 1], 'a' + i % 26);
        free(frame);
    }
}


static void
test_table_lookup(void **state)
{
    int               rc;
    char              dir[PATH_MAX], path[PATH_MAX];
    uint8_t           key[1024];
    uint32_t          i, n, fp;
    size_t            klen;
    uint64_t          size;
    kv_loc_t          loc;
    kv_peek_t         pk;
    kv_table_t        tb;
    kv_test_store_t   t;

    (void) state;

    n = 20000;

    kv_test_mkdtemp(dir);
    assert_int_equal(kv_test_open(&t, dir, ZONE, 65536), KV_OK);
    fill_sorted(&t, n);

    assert_int_equal(kv_table_open(&t.s, 1, &tb, 1), KV_NOTFOUND);
    assert_int_equal(kv_table_build(&t.s, 1), KV_OK);
    assert_int_equal(kv_table_open(&t.s, 1, &tb, 1), KV_OK);
    assert_int_equal(tb.nkeys, n);

    expect_all(&t, &tb, n);

    /* in order, from the start and from a key */
    {
        kv_table_iter_t  *it;

        it = malloc(sizeof(kv_table_iter_t));
        assert_non_null(it);

        assert_int_equal(kv_table_iter_seek(it, &tb, NULL, 0), KV_OK);

        for (i = 0; i < n; i++) {
            klen = make_key(i, key);
            assert_int_equal(it->pk.klen, klen);
            assert_memory_equal(it->pk.key, key, klen);
            assert_int_equal(it->pk.vlen, value_len(i));
            assert_int_equal(kv_table_iter_next(it),
                             i + 1 < n ? KV_OK : KV_NOTFOUND);
        }

        klen = make_key(12345, key);
        assert_int_equal(kv_table_iter_seek(it, &tb, key, klen), KV_OK);
        assert_memory_equal(it->pk.key, key, klen);

        /* between key 12345 and 12346 */
        key[klen] = '!';
        assert_int_equal(kv_table_iter_seek(it, &tb, key, klen + 1), KV_OK);
        klen = make_key(12346, key);
        assert_memory_equal(it->pk.key, key, klen);

        assert_int_equal(kv_table_iter_seek(it, &tb, (const uint8_t *) "zz",
                                            2), KV_NOTFOUND);
        free(it);
    }

    /* before the first key, between keys, after the last */
    assert_int_equal(kv_table_get(&tb, (const uint8_t *) "a", 1, &loc, &pk),
                     KV_NOTFOUND);
    assert_int_equal(kv_table_get(&tb, (const uint8_t *) "key:00000001x",
                                  13, &loc, &pk), KV_NOTFOUND);
    assert_int_equal(kv_table_get(&tb, (const uint8_t *) "zz", 2, &loc, &pk),
                     KV_NOTFOUND);

    /* the filter: keys that are not there pass it about 1.2% of the time */
    fp = 0;

    for (i = 0; i < 100000; i++) {
        klen = (size_t) sprintf((char *) key, "absent:%u", i);
        fp += kv_filter_may_contain(tb.filter, tb.filter_len,
                                    kv_filter_hash(key, klen));
    }

    print_message("filter: %u false positives in 100000 (%.2f%%); table "
                  "file %zu bytes for %u keys: %.2f bytes per key\n", fp,
                  fp / 1000.0, tb.map_len, n, (double) tb.map_len / n);
    assert_true(fp < 2500);

    kv_table_close(&tb);

    /* a damaged table file is refused, and built again */
    kv_table_path(&t.s, 1, path);
    size = kv_test_file_size(path);
    {
        uint8_t  *data;
        size_t    len;

        data = kv_test_read_file(path, &len);
        data[len / 2] ^= 0x40;
        kv_test_write_file(path, data, len);
        free(data);
    }

    kv_test_log_reset();
    assert_int_equal(kv_table_open(&t.s, 1, &tb, 1), KV_ECORRUPT);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN], "damaged"));

    /* unsummed, only a flip that breaks the structure is seen: this one
       is in the filter (a worker trusts what recovery summed) */
    assert_int_equal(kv_table_open(&t.s, 1, &tb, 0), KV_OK);
    kv_table_close(&tb);

    /*
     * a block's key out of the keys part: a full check refuses it; opened
     * unsummed, lookups stay in bounds (ASan) and find only what the
     * other blocks lead to
     */
    assert_int_equal(kv_table_build(&t.s, 1), KV_OK);
    {
        uint8_t  *data;
        size_t    len;

        data = kv_test_read_file(path, &len);
        kv_put_le(data + 48 + 16 + 8, 0xfffffff0u, 4);
        kv_test_write_file(path, data, len);
        free(data);
    }

    assert_int_equal(kv_table_open(&t.s, 1, &tb, 1), KV_ECORRUPT);
    assert_int_equal(kv_table_open(&t.s, 1, &tb, 0), KV_OK);

    for (i = 0; i < n; i += 97) {
        klen = make_key(i, key);
        rc = kv_table_get(&tb, key, klen, &loc, &pk);
        assert_true(rc == KV_OK || rc == KV_NOTFOUND);
    }

    klen = make_key(n - 1, key);
    assert_int_equal(kv_table_get(&tb, key, klen, &loc, &pk), KV_OK);
    kv_table_close(&tb);

    /* a block's offset past the segment: a seek there says damage */
    assert_int_equal(kv_table_build(&t.s, 1), KV_OK);
    {
        uint8_t           *data;
        size_t             len, bklen;
        const uint8_t     *bkey;
        kv_table_iter_t   *it;

        data = kv_test_read_file(path, &len);
        kv_put_le(data + 48 + 2 * 16, (uint64_t) 1 << 40, 8);
        kv_test_write_file(path, data, len);
        free(data);

        assert_int_equal(kv_table_open(&t.s, 1, &tb, 1), KV_ECORRUPT);
        assert_int_equal(kv_table_open(&t.s, 1, &tb, 0), KV_OK);

        (void) kv_table_block(&tb, 2, &bkey, &bklen);
        memcpy(key, bkey, bklen);

        it = malloc(sizeof(kv_table_iter_t));
        assert_non_null(it);
        assert_int_equal(kv_table_iter_seek(it, &tb, key, bklen),
                         KV_ECORRUPT);
        free(it);
        kv_table_close(&tb);
    }

    assert_int_equal(kv_table_build(&t.s, 1), KV_OK);
    assert_int_equal(kv_test_file_size(path), size);
    assert_int_equal(kv_table_open(&t.s, 1, &tb, 1), KV_OK);
    expect_all(&t, &tb, n);
    kv_table_close(&tb);

    /* a stale one (the segment grew since) is refused too */
    assert_int_equal(kv_put(&t.s, (const uint8_t *) "zzz", 3,
                            (const uint8_t *) "v", 1, 0), KV_OK);
    assert_int_equal(kv_table_open(&t.s, 1, &tb, 1), KV_ECORRUPT);
    assert_int_equal(kv_table_build(&t.s, 1), KV_OK);
    assert_int_equal(kv_table_open(&t.s, 1, &tb, 1), KV_OK);
    assert_int_equal(kv_table_get(&tb, (const uint8_t *) "zzz", 3, &loc,
                                  &pk), KV_OK);
    kv_table_close(&tb);

    /* a key written out of order: the segment is not sorted */
    assert_int_equal(kv_put(&t.s, (const uint8_t *) "b", 1,
                            (const uint8_t *) "v", 1, 0), KV_OK);
    kv_test_log_reset();
    assert_int_equal(kv_table_build(&t.s, 1), KV_ECORRUPT);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], "not sorted"));

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_table_lookup),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
