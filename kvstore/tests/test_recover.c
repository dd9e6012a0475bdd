#define _GNU_SOURCE

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>

#include "test_util.h"


#define S(str)  (const uint8_t *) (str), sizeof(str) - 1


static void
put(kv_test_store_t *t, const uint8_t *key, size_t klen, const char *value)
{
    assert_int_equal(kv_put(&t->s, key, klen, (const uint8_t *) value,
                            strlen(value), KV_TYPE_OCTET), KV_OK);
}


static uint64_t
segment_size(const char *dir, uint32_t id)
{
    char  path[PATH_MAX];

    kv_test_segment(dir, id, path);

    return kv_test_file_size(path);
}


static void
expect_absent(kv_test_store_t *t, const uint8_t *key, size_t klen)
{
    kv_loc_t  loc;

    assert_int_equal(kv_lookup(&t->s, key, klen, &loc), KV_NOTFOUND);
}


static void
test_round_trip(void **state)
{
    char              top[PATH_MAX], dir[PATH_MAX];
    size_t            i, big_len;
    uint8_t          *big, bin[256];
    kv_loc_t          loc;
    kv_stats_t        before, after;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(top);
    kv_test_path(top, "data", dir);

    /* bigger than the recovery read buffer, so it has to grow */
    big_len = 3 * 1024 * 1024 + 7;
    big = malloc(big_len);
    assert_non_null(big);

    for (i = 0; i < big_len; i++) {
        big[i] = (uint8_t) (i * 131 + i / 4096);
    }

    for (i = 0; i < sizeof(bin); i++) {
        bin[i] = (uint8_t) i;
    }

    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);

    put(&t, S("alpha"), "1");
    assert_int_equal(kv_put(&t.s, S("doc"), S("{\"x\":1}"), KV_TYPE_JSON),
                     KV_OK);
    put(&t, S("empty"), "");
    assert_int_equal(kv_put(&t.s, S("bin\0key/"), bin, sizeof(bin),
                            KV_TYPE_OCTET), KV_OK);
    assert_int_equal(kv_put(&t.s, S("big"), big, big_len, KV_TYPE_OCTET),
                     KV_OK);
    put(&t, S("gone"), "soon");
    put(&t, S("alpha"), "2");
    assert_int_equal(kv_delete(&t.s, S("gone")), KV_OK);
    assert_int_equal(kv_delete(&t.s, S("never")), KV_NOTFOUND);

    kv_stats(&t.s, &before);
    assert_true(before.keys == 5);
    assert_true(before.puts == 7);
    assert_true(before.deletes == 1);
    kv_test_close(&t);

    kv_test_log_reset();
    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_NOTICE],
                           "recovered 8 records, 5 keys from 1 segments"));
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 0);
    assert_int_equal(kv_test_log_count[KV_LOG_ERR], 0);

    kv_stats(&t.s, &after);
    assert_true(after.keys == before.keys);
    assert_true(after.live_bytes == before.live_bytes);
    assert_true(after.dead_bytes == before.dead_bytes);
    assert_true(after.recovered_records == 8);
    assert_true(after.truncated_bytes == 0);
    assert_true(t.sh->seq == 8);
    assert_true(t.sh->write_off == segment_size(dir, 1));

    kv_test_expect(&t, S("alpha"), "2", 1);
    kv_test_expect(&t, S("doc"), "{\"x\":1}", 7);
    kv_test_expect(&t, S("empty"), "", 0);
    kv_test_expect(&t, S("bin\0key/"), bin, sizeof(bin));
    kv_test_expect(&t, S("big"), big, big_len);
    expect_absent(&t, S("gone"));
    expect_absent(&t, S("bin"));

    assert_int_equal(kv_lookup(&t.s, S("doc"), &loc), KV_OK);
    assert_int_equal(loc.type, KV_TYPE_JSON);
    assert_int_equal(loc.segment, 1);
    assert_int_equal(kv_lookup(&t.s, S("alpha"), &loc), KV_OK);
    assert_int_equal(loc.type, KV_TYPE_OCTET);

    kv_test_close(&t);
    free(big);
    kv_test_rmdir(dir);
    kv_test_rmdir(top);
}


/* Every cut inside the last record is a torn tail, cut back on recovery. */
static void
test_torn_tail(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX];
    size_t            len;
    uint8_t          *data;
    uint64_t          good, cut;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_segment(dir, 1, path);

    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    put(&t, S("a"), "first");
    put(&t, S("b"), "second");
    good = segment_size(dir, 1);
    put(&t, S("c"), "the last record, torn");
    kv_test_close(&t);

    data = kv_test_read_file(path, &len);

    for (cut = good; cut < len; cut++) {
        kv_test_write_file(path, data, cut);
        kv_test_log_reset();

        assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);

        kv_test_expect(&t, S("a"), "first", 5);
        kv_test_expect(&t, S("b"), "second", 6);
        expect_absent(&t, S("c"));
        assert_true(segment_size(dir, 1) == good);
        assert_true(t.sh->write_off == good);
        assert_true(t.sh->stats.truncated_bytes == cut - good);

        if (cut == good) {
            assert_int_equal(kv_test_log_count[KV_LOG_WARN], 0);

        } else {
            assert_int_equal(kv_test_log_count[KV_LOG_WARN], 1);
            assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN],
                                   "truncated torn tail of"));
            assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN], path));
        }

        /* appends continue right after the last whole record */
        put(&t, S("d"), "after");
        kv_test_close(&t);

        assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
        kv_test_expect(&t, S("d"), "after", 5);
        kv_test_expect(&t, S("b"), "second", 6);
        kv_test_close(&t);
    }

    free(data);
    kv_test_rmdir(dir);
}


static void
test_garbage_tail(void **state)
{
    int               kind;
    char              dir[PATH_MAX], path[PATH_MAX];
    size_t            i, len;
    uint8_t          *data, garbage[5000];
    uint64_t          good;
    kv_test_store_t   t;

    (void) state;

    for (kind = 0; kind < 3; kind++) {
        kv_test_mkdtemp(dir);
        kv_test_segment(dir, 1, path);

        assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
        put(&t, S("a"), "first");
        put(&t, S("b"), "second");
        kv_test_close(&t);

        /* random bytes, zeros, and a header claiming a short payload */
        srand(1);
        for (i = 0; i < sizeof(garbage); i++) {
            garbage[i] = kind == 0 ? (uint8_t) rand() : 0;
        }

        if (kind == 2) {
            garbage[0] = 20;
        }

        data = kv_test_read_file(path, &len);
        good = len;
        data = realloc(data, len + sizeof(garbage));
        assert_non_null(data);
        memcpy(data + len, garbage, sizeof(garbage));
        kv_test_write_file(path, data, len + sizeof(garbage));

        kv_test_log_reset();
        assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);

        /* zeros are preallocated space (conf.preallocate): no warning */
        assert_int_equal(kv_test_log_count[KV_LOG_WARN], kind != 1);
        assert_true(t.sh->stats.truncated_bytes
                    == (kind != 1 ? sizeof(garbage) : 0));
        assert_int_equal(kv_test_logged(KV_LOG_NOTICE, "preallocated space"),
                         kind == 1);
        assert_true(segment_size(dir, 1) == good);
        kv_test_expect(&t, S("a"), "first", 5);
        kv_test_expect(&t, S("b"), "second", 6);
        kv_test_close(&t);

        free(data);
        kv_test_rmdir(dir);
    }
}


/* Damage followed by valid records is not a torn tail: refuse, touch nothing */
static void
test_corrupt_middle(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX], msg[3 * PATH_MAX];
    size_t            len, len2;
    uint8_t          *data, *after;
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_segment(dir, 1, path);

    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    put(&t, S("a"), "first");
    put(&t, S("b"), "second");
    put(&t, S("c"), "third");
    assert_int_equal(kv_lookup(&t.s, S("b"), &loc), KV_OK);
    kv_test_close(&t);

    data = kv_test_read_file(path, &len);
    data[loc.offset + loc.flen - 2] ^= 0x01;
    kv_test_write_file(path, data, len);

    kv_test_log_reset();
    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_ECORRUPT);
    assert_int_equal(kv_test_log_count[KV_LOG_ERR], 1);
    snprintf(msg, sizeof(msg), "corrupt record in \"%s\" at offset %" PRIu64
             " followed by valid records; refusing to start: run `kvtool "
             "repair %s`", path, loc.offset, dir);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], msg));
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 0);

    after = kv_test_read_file(path, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(after, data, len);

    assert_int_equal(t.sh->open, 0);
    assert_int_equal(kv_put(&t.s, S("x"), (const uint8_t *) "y", 1,
                            KV_TYPE_OCTET), KV_EUNAVAIL);
    assert_true(segment_size(dir, 1) == len);

    kv_test_close(&t);
    free(after);
    free(data);
    kv_test_rmdir(dir);
}


/*
 * Damage before a record bigger than the window kv_valid_frame_after()
 * reads at a time: still found (refused); damaged too, it is a torn tail.
 */
static void
test_corrupt_before_big(void **state)
{
    int               damage_big;
    char              dir[PATH_MAX], path[PATH_MAX];
    size_t            len, vlen;
    uint8_t          *data, *big;
    kv_loc_t          loc, bloc;
    kv_test_store_t   t;

    (void) state;

    vlen = 3 * 1024 * 1024;
    big = malloc(vlen);
    assert_non_null(big);
    memset(big, 'v', vlen);

    for (damage_big = 0; damage_big < 2; damage_big++) {
        kv_test_mkdtemp(dir);
        kv_test_segment(dir, 1, path);

        assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
        put(&t, S("a"), "first");
        put(&t, S("b"), "second");
        assert_int_equal(kv_put(&t.s, S("big"), big, vlen, KV_TYPE_OCTET),
                         KV_OK);
        assert_int_equal(kv_lookup(&t.s, S("b"), &loc), KV_OK);
        assert_int_equal(kv_lookup(&t.s, S("big"), &bloc), KV_OK);
        kv_test_close(&t);

        data = kv_test_read_file(path, &len);
        data[loc.offset + loc.flen - 2] ^= 0x01;

        if (damage_big) {
            data[bloc.offset + bloc.flen - 2] ^= 0x01;
        }

        kv_test_write_file(path, data, len);
        free(data);

        kv_test_log_reset();

        if (!damage_big) {
            assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64),
                             KV_ECORRUPT);
            assert_true(kv_test_logged(KV_LOG_ERR, "followed by valid"));
            assert_true(segment_size(dir, 1) == len);

        } else {
            assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64),
                             KV_OK);
            assert_true(segment_size(dir, 1) == loc.offset);
            kv_test_expect(&t, S("a"), "first", 5);
            expect_absent(&t, S("b"));
            expect_absent(&t, S("big"));
        }

        kv_test_close(&t);
        kv_test_rmdir(dir);
    }

    free(big);
}


/* Segments replay in id order; only the last one may have a torn tail. */
static void
test_segments(void **state)
{
    char              a[PATH_MAX], b[PATH_MAX], path[PATH_MAX];
    size_t            len;
    uint8_t          *data;
    uint64_t          seg2;
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(a);
    kv_test_mkdtemp(b);

    assert_int_equal(kv_test_open(&t, a, KV_TEST_ARENA, 64), KV_OK);
    put(&t, S("k"), "old");
    put(&t, S("x"), "from segment 1");
    put(&t, S("only1"), "1");
    kv_test_close(&t);

    assert_int_equal(kv_test_open(&t, b, KV_TEST_ARENA, 64), KV_OK);
    put(&t, S("k"), "new");
    put(&t, S("x"), "tmp");
    assert_int_equal(kv_delete(&t.s, S("x")), KV_OK);
    put(&t, S("only2"), "2");
    kv_test_close(&t);

    /* b's log becomes a's segment 2; other names are not segments */
    kv_test_segment(b, 1, path);
    data = kv_test_read_file(path, &len);
    kv_test_segment(a, 2, path);
    kv_test_write_file(path, data, len);
    kv_test_path(a, "0000000003.kvlog.tmp", path);
    kv_test_write_file(path, (const uint8_t *) "junk", 4);
    kv_test_path(a, "1.kvlog", path);
    kv_test_write_file(path, (const uint8_t *) "junk", 4);
    seg2 = len;

    assert_int_equal(kv_test_open(&t, a, KV_TEST_ARENA, 64), KV_OK);
    assert_int_equal(t.sh->segment, 2);
    assert_true(t.sh->write_off == seg2);
    kv_test_expect(&t, S("k"), "new", 3);
    kv_test_expect(&t, S("only1"), "1", 1);
    kv_test_expect(&t, S("only2"), "2", 1);
    expect_absent(&t, S("x"));

    put(&t, S("z"), "appended");
    assert_int_equal(kv_lookup(&t.s, S("z"), &loc), KV_OK);
    assert_int_equal(loc.segment, 2);
    assert_true(loc.offset == seg2);
    assert_int_equal(kv_lookup(&t.s, S("only1"), &loc), KV_OK);
    assert_int_equal(loc.segment, 1);
    kv_test_close(&t);

    /*
     * A torn tail in an older segment: a record that was never durable,
     * cut like the newest segment's.
     */
    kv_test_segment(a, 1, path);
    free(data);
    data = kv_test_read_file(path, &len);
    kv_test_write_file(path, data, len - 3);

    kv_test_log_reset();
    assert_int_equal(kv_test_open(&t, a, KV_TEST_ARENA, 64), KV_OK);
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 1);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN],
                           "truncated torn tail of"));
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN], path));
    assert_true(kv_test_file_size(path) == loc.offset);
    assert_true(t.sh->stats.truncated_bytes == len - 3 - loc.offset);
    expect_absent(&t, S("only1"));
    kv_test_expect(&t, S("k"), "new", 3);
    kv_test_expect(&t, S("z"), "appended", 8);
    kv_test_close(&t);

    free(data);
    kv_test_rmdir(a);
    kv_test_rmdir(b);
}


static void
test_locked(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX], pid[32];
    size_t            len;
    uint8_t          *data;
    kv_test_store_t   t1, t2;

    (void) state;

    kv_test_mkdtemp(dir);

    assert_int_equal(kv_test_open(&t1, dir, KV_TEST_ARENA, 64), KV_OK);
    put(&t1, S("a"), "1");

    kv_test_path(dir, "LOCK", path);
    snprintf(pid, sizeof(pid), "%ld\n", (long) getpid());
    data = kv_test_read_file(path, &len);
    assert_int_equal(len, strlen(pid));
    assert_memory_equal(data, pid, len);
    free(data);

    kv_test_log_reset();
    assert_int_equal(kv_test_open(&t2, dir, KV_TEST_ARENA, 64), KV_ELOCKED);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR],
                           "is in use by another process"));
    assert_int_equal(t2.sh->lock_fd, -1);
    assert_int_equal(t2.sh->open, 0);
    kv_test_close(&t2);

    /* the first owner is unaffected; once it is gone the lock is free */
    put(&t1, S("b"), "2");
    kv_test_close(&t1);

    assert_int_equal(kv_test_open(&t2, dir, KV_TEST_ARENA, 64), KV_OK);
    kv_test_expect(&t2, S("a"), "1", 1);
    kv_test_expect(&t2, S("b"), "2", 1);
    kv_test_close(&t2);

    kv_test_rmdir(dir);
}


/*
 * Puts value under key with a file size limit, which makes the write fail
 * with EFBIG once it reaches the limit.
 */
static int
put_over_limit(kv_test_store_t *t, const uint8_t *key, size_t klen,
    const uint8_t *value, size_t vlen, rlim_t limit)
{
    int            rc;
    void         (*handler)(int);
    struct rlimit  old, lim;

    handler = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = limit;

    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    rc = kv_put(&t->s, key, klen, value, vlen, KV_TYPE_OCTET);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, handler);

    return rc;
}


static void
test_write_failure(void **state)
{
    char              dir[PATH_MAX];
    uint8_t          *big;
    uint64_t          size;
    kv_test_store_t   t;

    (void) state;

    big = malloc(64 * 1024);
    assert_non_null(big);
    memset(big, 'x', 64 * 1024);

    kv_test_mkdtemp(dir);
    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    put(&t, S("a"), "first");
    put(&t, S("b"), "second");
    size = segment_size(dir, 1);

    /* a new key: pwritev gets part of the frame out, then EFBIG */
    kv_test_log_reset();
    assert_int_equal(put_over_limit(&t, S("big"), big, 64 * 1024, size + 100),
                     KV_ENOSPC);
    assert_true(segment_size(dir, 1) == size);
    assert_true(t.sh->write_off == size);
    expect_absent(&t, S("big"));
    assert_true(t.sh->stats.write_errors == 1);
    assert_true(t.sh->stats.keys == 2);
    assert_int_equal(kv_test_log_count[KV_LOG_ERR], 1);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], "\"big\""));
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], "File too large"));

    /* an overwrite: the old value stays */
    assert_int_equal(put_over_limit(&t, S("a"), big, 64 * 1024, size + 100),
                     KV_ENOSPC);
    assert_true(segment_size(dir, 1) == size);
    kv_test_expect(&t, S("a"), "first", 5);

    assert_int_equal(kv_put(&t.s, S("big"), big, 64 * 1024, KV_TYPE_OCTET),
                     KV_OK);
    put(&t, S("c"), "third");
    kv_test_close(&t);

    kv_test_log_reset();
    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 0);
    kv_test_expect(&t, S("a"), "first", 5);
    kv_test_expect(&t, S("big"), big, 64 * 1024);
    kv_test_expect(&t, S("c"), "third", 5);
    kv_test_close(&t);

    free(big);
    kv_test_rmdir(dir);
}


static void
test_full_index(void **state)
{
    int               i, rc;
    char              dir[PATH_MAX], key[32];
    uint64_t          size;
    kv_conf_t         conf;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    assert_int_equal(kv_test_open(&t, dir, 4 * KV_ENTRY_PAGE, 4), KV_OK);

    for (i = 0; ; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        size = segment_size(dir, 1);
        rc = kv_put(&t.s, (const uint8_t *) key, strlen(key),
                    (const uint8_t *) "v", 1, KV_TYPE_OCTET);
        if (rc != KV_OK) {
            break;
        }
    }

    assert_int_equal(rc, KV_ENOMEM);
    assert_true(segment_size(dir, 1) == size);
    assert_true(t.sh->write_off == size);
    assert_true(t.sh->seq == (uint64_t) i);

    /* room for one entry; a failed write must give it back */
    assert_int_equal(kv_delete(&t.s, S("key-1")), KV_OK);
    size = segment_size(dir, 1);
    assert_int_equal(put_over_limit(&t, S("new-1"), (const uint8_t *) "v", 1,
                                    size + 5), KV_ENOSPC);
    put(&t, S("new-1"), "v");
    assert_int_equal(kv_put(&t.s, S("new-2"), (const uint8_t *) "v", 1,
                            KV_TYPE_OCTET), KV_ENOMEM);
    kv_test_close(&t);

    /* the same keys fit the same zone again, not a smaller one */
    assert_int_equal(kv_test_open(&t, dir, 4 * KV_ENTRY_PAGE, 4), KV_OK);
    assert_true(t.sh->stats.keys == (uint64_t) i);
    kv_test_close(&t);

    kv_test_log_reset();
    assert_int_equal(kv_test_open(&t, dir, 2 * KV_ENTRY_PAGE, 4), KV_ENOMEM);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR],
                           "index memory too small for the keys in"));
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR],
                           "index=hash holds every key"));
    assert_int_equal(t.sh->open, 0);
    kv_test_close(&t);

    /* index=hash never converts, even when asked to */
    kv_test_log_reset();
    kv_test_conf(&conf, dir);
    conf.convert = 1;
    assert_int_equal(kv_test_open_conf(&t, &conf, 2 * KV_ENTRY_PAGE, 4),
                     KV_ENOMEM);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR],
                           "index=hash holds every key"));
    assert_int_equal(kv_test_log_count[KV_LOG_ERR], 1);
    assert_false(kv_test_logged(KV_LOG_NOTICE, "hold more keys than the "
                                               "index memory"));
    assert_int_equal(t.sh->open, 0);
    kv_test_close(&t);

    /* index=sorted replays the log into the zone too: without convert
       (test_sorted.c converts), it cannot start either */
    kv_test_log_reset();
    kv_test_conf(&conf, dir);
    conf.sorted = 1;
    assert_int_equal(kv_test_open_conf(&t, &conf, 2 * KV_ENTRY_PAGE, 4),
                     KV_ENOMEM);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR],
                           "index=sorted holds the keys of the log segments: "
                           "give the zone more memory, or move them into "
                           "sorted segments"));
    assert_int_equal(t.sh->open, 0);
    kv_test_close(&t);

    kv_test_rmdir(dir);
}


static void
test_seq_continues(void **state)
{
    char              dir[PATH_MAX];
    uint8_t          *buf;
    kv_loc_t          loc;
    kv_record_t       rec;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    put(&t, S("a"), "1");
    put(&t, S("b"), "2");
    put(&t, S("c"), "3");
    assert_int_equal(kv_delete(&t.s, S("b")), KV_OK);
    assert_true(t.sh->seq == 4);
    kv_test_close(&t);

    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    assert_true(t.sh->seq == 4);
    put(&t, S("d"), "4");

    assert_int_equal(kv_lookup(&t.s, S("d"), &loc), KV_OK);
    buf = malloc(loc.flen);
    assert_non_null(buf);
    assert_int_equal(kv_read(&t.s, &loc, buf), KV_OK);
    assert_int_equal(kv_record_decode(&rec, buf + KV_FRAME_HEADER,
                                      loc.flen - KV_FRAME_HEADER), KV_OK);
    assert_true(rec.seq == 5);
    kv_record_free(&rec);
    free(buf);
    kv_test_close(&t);

    kv_test_rmdir(dir);
}


/*
 * The keys' hash seed is the directory's: a restart keeps it (each key's
 * bucket and height), a read-only open writes none, a lost or damaged
 * SEED file is replaced by the new zone's seed, logged.
 */
static void
test_seed_kept(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX];
    uint8_t          *buf;
    size_t            len;
    uint64_t          seed;
    kv_conf_t         conf;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_path(dir, KV_SEED_FILE, path);

    kv_test_conf(&conf, dir);
    conf.read_only = 1;
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 64), KV_OK);
    assert_int_equal(access(path, F_OK), -1);
    kv_test_close(&t);

    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    seed = t.sh->hash_seed;
    put(&t, S("a"), "1");
    kv_test_close(&t);
    assert_int_equal(access(path, F_OK), 0);

    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    assert_true(t.sh->hash_seed == seed);
    kv_test_expect(&t, S("a"), "1", 1);
    kv_test_close(&t);

    /* damaged: replaced by the zone's own, and the keys still found */

    buf = kv_test_read_file(path, &len);
    buf[10] ^= 1;
    kv_test_write_file(path, buf, len);
    free(buf);

    kv_test_log_reset();
    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN], "a new seed"));
    assert_true(t.sh->hash_seed != seed);
    seed = t.sh->hash_seed;
    kv_test_expect(&t, S("a"), "1", 1);
    kv_test_close(&t);

    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    assert_true(t.sh->hash_seed == seed);
    kv_test_close(&t);

    kv_test_rmdir(dir);
}


static void
test_bad_arguments(void **state)
{
    char              dir[PATH_MAX], key[1025];
    uint8_t          *value;
    kv_conf_t         conf;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);

    /* nothing works before recovery */
    kv_test_host(&t, KV_TEST_ARENA);
    t.sh = kv_shared_create(&t.host, 16, 1024, 1024);
    assert_non_null(t.sh);
    memset(&conf, 0, sizeof(conf));
    conf.dir = dir;
    kv_store_init(&t.s, t.sh, &t.host, &conf);
    assert_int_equal(kv_put(&t.s, S("a"), (const uint8_t *) "1", 1,
                            KV_TYPE_OCTET), KV_EUNAVAIL);
    assert_int_equal(kv_delete(&t.s, S("a")), KV_EUNAVAIL);
    kv_test_close(&t);

    value = calloc(1, 16 * 1024 * 1024 + 1);
    assert_non_null(value);
    memset(key, 'k', sizeof(key));

    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 64), KV_OK);
    assert_int_equal(kv_put(&t.s, (uint8_t *) key, 0, value, 1,
                            KV_TYPE_OCTET), KV_EINVAL);
    assert_int_equal(kv_put(&t.s, (uint8_t *) key, 1025, value, 1,
                            KV_TYPE_OCTET), KV_EINVAL);
    assert_int_equal(kv_put(&t.s, (uint8_t *) key, 1, value,
                            16 * 1024 * 1024 + 1, KV_TYPE_OCTET), KV_EINVAL);
    assert_int_equal(kv_put(&t.s, (uint8_t *) key, 1, value, 1, 2), KV_EINVAL);
    assert_true(segment_size(dir, 1) == 0);

    assert_int_equal(kv_put(&t.s, (uint8_t *) key, 1024, value,
                            16 * 1024 * 1024, KV_TYPE_JSON), KV_OK);
    kv_test_expect(&t, key, 1024, value, 16 * 1024 * 1024);
    kv_test_close(&t);

    free(value);
    kv_test_rmdir(dir);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_torn_tail),
        cmocka_unit_test(test_garbage_tail),
        cmocka_unit_test(test_corrupt_middle),
        cmocka_unit_test(test_corrupt_before_big),
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_locked),
        cmocka_unit_test(test_write_failure),
        cmocka_unit_test(test_full_index),
        cmocka_unit_test(test_seq_continues),
        cmocka_unit_test(test_seed_kept),
        cmocka_unit_test(test_bad_arguments),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
