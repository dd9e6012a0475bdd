#define _GNU_SOURCE

/*
 * Expiry times (TTL), conditional writes and the sequence numbers that
 * serve as ETags: in the index, through recovery from segments and hint
 * files, through compaction, and across restarts.
 */

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "test_util.h"


#define SEG     2048
#define T0      ((uint64_t) 1700000000000)    /* the test clock's start */

#define S(str)  (const uint8_t *) (str), sizeof(str) - 1


static void
reopen(kv_test_store_t *t, const char *dir)
{
    kv_test_close(t);
    kv_test_open_small(t, dir, SEG);
}


/* a put with an expiry time (0: none); returns kv_write()'s rc */
static int
put_ttl(kv_test_store_t *t, const char *key, const char *value,
    uint64_t expires, uint64_t *seq)
{
    int         rc;
    kv_write_t  w;

    memset(&w, 0, sizeof(w));
    w.value = (const uint8_t *) value;
    w.vlen = strlen(value);
    w.expires_at_ms = expires;

    rc = kv_write(&t->s, (const uint8_t *) key, strlen(key), &w);

    if (seq != NULL) {
        *seq = w.seq;
    }

    return rc;
}


static kv_stats_t
stats(kv_test_store_t *t)
{
    kv_stats_t  st;

    kv_stats(&t->s, &st);

    return st;
}


static kv_loc_t
loc_of(kv_test_store_t *t, const char *key)
{
    kv_loc_t  loc;

    assert_int_equal(kv_lookup(&t->s, (const uint8_t *) key, strlen(key),
                               &loc), KV_OK);

    return loc;
}


static uint64_t
expiry_of(kv_test_store_t *t, const char *key)
{
    return loc_of(t, key).expires_at_ms;
}


static int
absent(kv_test_store_t *t, const char *key)
{
    kv_loc_t  loc;

    return kv_lookup(&t->s, (const uint8_t *) key, strlen(key), &loc)
           == KV_NOTFOUND;
}


static void
test_expiry_lookup(void **state)
{
    char             dir[PATH_MAX];
    kv_stats_t       st;
    kv_test_store_t  t;

    (void) state;

    kv_test_now = T0;
    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);

    assert_int_equal(put_ttl(&t, "a", "one", T0 + 1000, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "b", "two", 0, NULL), KV_OK);

    st = stats(&t);
    assert_int_equal(st.keys, 2);
    assert_int_equal(st.expiring, 1);
    assert_true(expiry_of(&t, "a") == T0 + 1000);
    assert_true(expiry_of(&t, "b") == 0);
    kv_test_expect(&t, S("a"), "one", 3);

    /* the last millisecond of its life, then gone */
    kv_test_now = T0 + 999;
    kv_test_expect(&t, S("a"), "one", 3);

    kv_test_now = T0 + 1000;
    assert_true(absent(&t, "a"));
    kv_test_expect(&t, S("b"), "two", 3);

    st = stats(&t);
    assert_int_equal(st.keys, 1);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.expiring, 0);
    assert_true(st.dead_bytes > 0);

    /* an expired key is absent to a delete and to conditions too */
    assert_int_equal(put_ttl(&t, "c", "x", T0 + 2000, NULL), KV_OK);
    kv_test_now = T0 + 3000;
    assert_int_equal(kv_delete(&t.s, S("c")), KV_NOTFOUND);
    assert_int_equal(stats(&t).expired, 2);

    kv_test_close(&t);
    kv_test_rmdir(dir);
    kv_test_now = 0;
}


/* Gaining and losing an expiry time changes the entry's size. */
static void
test_expiry_entry_resize(void **state)
{
    int              i;
    char             dir[PATH_MAX], key[16];
    kv_stats_t       st;
    kv_test_store_t  t;

    (void) state;

    kv_test_now = T0;
    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);

    for (i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "k%02d", i);
        assert_int_equal(put_ttl(&t, key, "v0", 0, NULL), KV_OK);
        assert_int_equal(put_ttl(&t, key, "v1", T0 + 5000 + i, NULL), KV_OK);
    }

    st = stats(&t);
    assert_int_equal(st.keys, 50);
    assert_int_equal(st.expiring, 50);

    for (i = 0; i < 50; i += 2) {
        snprintf(key, sizeof(key), "k%02d", i);
        assert_int_equal(put_ttl(&t, key, "v2", 0, NULL), KV_OK);
    }

    st = stats(&t);
    assert_int_equal(st.keys, 50);
    assert_int_equal(st.expiring, 25);

    for (i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "k%02d", i);
        kv_test_expect(&t, key, 3, i % 2 ? "v1" : "v2", 2);
        assert_true(expiry_of(&t, key) == (i % 2 ? T0 + 5000 + i : 0));
    }

    kv_test_now = T0 + 6000;

    for (i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "k%02d", i);
        assert_int_equal(absent(&t, key), i % 2);
    }

    assert_int_equal(stats(&t).keys, 25);

    kv_test_close(&t);
    kv_test_rmdir(dir);
    kv_test_now = 0;
}


/*
 * Recovery from segments, then from hint files: an expired record hides
 * the older records of its key; a live expiry time survives, and so does
 * the content type beside it (a hint's expiry flag once became part of
 * the type).
 */
static void
test_expiry_recovery(void **state)
{
    int              pass;
    char             dir[PATH_MAX], big[600];
    kv_stats_t       st;
    kv_write_t       w;
    kv_test_store_t  t;

    (void) state;

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';

    kv_test_now = T0;
    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);

    assert_int_equal(put_ttl(&t, "old", "forever", 0, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "old", "short", T0 + 1000, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "long", "lives", T0 + 60000, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "plain", "value", 0, NULL), KV_OK);

    memset(&w, 0, sizeof(w));
    w.value = (const uint8_t *) "[1]";
    w.vlen = 3;
    w.type = KV_TYPE_JSON;
    w.expires_at_ms = T0 + 60000;
    assert_int_equal(kv_write(&t.s, S("json"), &w), KV_OK);

    /* roll into later segments, so the first ones get hint files */
    assert_int_equal(put_ttl(&t, "big1", big, 0, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "big2", big, 0, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "big3", big, 0, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "big4", big, 0, NULL), KV_OK);

    kv_test_now = T0 + 2000;

    for (pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            assert_int_equal(kv_write_hints(&t.s), KV_OK);
        }

        reopen(&t, dir);

        st = stats(&t);
        assert_int_equal(st.recovery_hints > 0, pass == 1);
        assert_true(absent(&t, "old"));
        kv_test_expect(&t, S("long"), "lives", 5);
        assert_true(expiry_of(&t, "long") == T0 + 60000);
        assert_int_equal(loc_of(&t, "long").type, KV_TYPE_OCTET);
        assert_int_equal(loc_of(&t, "json").type, KV_TYPE_JSON);
        kv_test_expect(&t, S("plain"), "value", 5);
        assert_int_equal(st.keys, 7);
        assert_int_equal(st.expiring, 2);
        assert_int_equal(st.expired, 1);
    }

    /* once its time is over, recovery drops the long one too */
    kv_test_now = T0 + 60000;
    reopen(&t, dir);
    assert_true(absent(&t, "long"));
    assert_int_equal(stats(&t).keys, 5);

    kv_test_close(&t);
    kv_test_rmdir(dir);
    kv_test_now = 0;
}


/* A version 1 hint (before expiry times) is still read. */
static void
test_expiry_hint_v1(void **state)
{
    char             dir[PATH_MAX], path[PATH_MAX], big[600];
    size_t           len;
    uint8_t         *hint;
    kv_test_store_t  t;

    (void) state;

    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';

    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);

    assert_int_equal(put_ttl(&t, "a", big, 0, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "b", big, 0, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "c", big, 0, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "d", big, 0, NULL), KV_OK);
    assert_int_equal(kv_write_hints(&t.s), KV_OK);

    kv_test_path(dir, "0000000001.kvhint", path);
    hint = kv_test_read_file(path, &len);
    assert_int_equal(kv_get_le32(hint + 4), 2);

    /* as version 1 wrote it: the same entries, another version number */
    kv_put_le(hint + 4, 1, 4);
    kv_put_le(hint + len - 8, XXH3_64bits(hint, len - 8), 8);
    kv_test_write_file(path, hint, len);
    free(hint);

    reopen(&t, dir);
    assert_true(stats(&t).recovery_hints > 0);
    kv_test_expect(&t, S("a"), big, sizeof(big) - 1);
    kv_test_expect(&t, S("d"), big, sizeof(big) - 1);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/* Compaction drops expired keys with their older records, for good. */
static void
test_expiry_compaction(void **state)
{
    char             dir[PATH_MAX];
    kv_stats_t       st;
    kv_test_store_t  t;

    (void) state;

    kv_test_now = T0;
    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);

    assert_int_equal(put_ttl(&t, "gone", "v0", 0, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "gone", "v1", T0 + 1000, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "stays", "v", T0 + 90000, NULL), KV_OK);
    assert_int_equal(put_ttl(&t, "plain", "p", 0, NULL), KV_OK);

    kv_test_now = T0 + 5000;

    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    assert_int_equal(kv_compact(&t.s), KV_OK);

    st = stats(&t);
    assert_int_equal(st.keys, 2);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.compactions, 1);
    assert_true(absent(&t, "gone"));
    kv_test_expect(&t, S("stays"), "v", 1);
    assert_true(expiry_of(&t, "stays") == T0 + 90000);

    /* nothing of "gone" is left to come back, even with the clock back */
    kv_test_now = T0;
    reopen(&t, dir);
    assert_true(absent(&t, "gone"));
    kv_test_expect(&t, S("stays"), "v", 1);
    kv_test_expect(&t, S("plain"), "p", 1);
    assert_true(expiry_of(&t, "stays") == T0 + 90000);

    kv_test_close(&t);
    kv_test_rmdir(dir);
    kv_test_now = 0;
}


/* kv_expire() drops keys that nobody reads again. */
static void
test_expiry_sweep(void **state)
{
    int              i, calls;
    char             dir[PATH_MAX], key[16];
    uint64_t         dropped;
    kv_stats_t       st;
    kv_test_store_t  t;

    (void) state;

    kv_test_now = T0;
    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);

    /* no expiring key: nothing to do */
    assert_int_equal(put_ttl(&t, "plain", "p", 0, NULL), KV_OK);
    assert_int_equal(kv_expire(&t.s), 0);

    for (i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "t%03d", i);
        assert_int_equal(put_ttl(&t, key, "v", T0 + 100 + i % 2 * 10000,
                                 NULL), KV_OK);
    }

    kv_test_now = T0 + 200;
    dropped = 0;

    /* 1/16 of the index a call: a full pass takes 16 */
    for (calls = 0; calls < 16; calls++) {
        dropped += kv_expire(&t.s);
    }

    assert_int_equal(dropped, 100);

    st = stats(&t);
    assert_int_equal(st.keys, 101);
    assert_int_equal(st.expired, 100);
    assert_int_equal(st.expiring, 100);

    kv_test_close(&t);
    kv_test_rmdir(dir);
    kv_test_now = 0;
}


/* a request that waits for the lock while kv_expire() sweeps */
static kv_test_store_t  *pause_t;
static pthread_t         pause_th;
static int               pause_armed;
static uint32_t          pause_seen;


static void *
pause_request(void *arg)
{
    (void) arg;

    kv_lock(&pause_t->s);
    pause_seen = pause_t->sh->expire_next;
    kv_unlock(&pause_t->s);

    return NULL;
}


/* the clock, read under the lock as each batch begins */
static uint64_t
pause_clock(void *ctx)
{
    (void) ctx;

    if (pause_armed) {
        pause_armed = 0;
        assert_int_equal(pthread_create(&pause_th, NULL, pause_request,
                                        NULL), 0);

        while (!kv_lock_wanted(pause_t->sh)) {
            usleep(100);
        }
    }

    return T0;
}


/*
 * kv_expire() runs in an event loop and takes the lock batch after batch:
 * a request waiting meanwhile gets it between two batches, not after the
 * sweep.  Bounded naps may be missed on a loaded machine: a few tries.
 */
static void
test_expiry_sweep_pause(void **state)
{
    int              tries;
    char             dir[PATH_MAX];
    kv_test_store_t  t;

    (void) state;

    kv_test_now = T0;
    kv_test_mkdtemp(dir);

    /* 2 batches of 4096 buckets a call */
    assert_int_equal(kv_test_open(&t, dir, 8 * 1024 * 1024, 131072), KV_OK);
    assert_int_equal(put_ttl(&t, "soon", "v", T0 + 60000, NULL), KV_OK);

    pause_t = &t;
    t.host.now_ms = pause_clock;
    pause_seen = 0;

    for (tries = 0; tries < 5 && pause_seen != 4096; tries++) {
        t.sh->expire_next = 0;
        pause_armed = 1;
        assert_int_equal(kv_expire(&t.s), 0);
        assert_int_equal(pthread_join(pause_th, NULL), 0);
    }

    assert_int_equal(pause_seen, 4096);

    kv_test_close(&t);
    kv_test_rmdir(dir);
    kv_test_now = 0;
}


static int
write_if(kv_test_store_t *t, const char *key, const char *value,
    uint32_t nmatch, const uint64_t *match, uint32_t nnone,
    const uint64_t *none, uint64_t *seq)
{
    int         rc;
    kv_write_t  w;

    memset(&w, 0, sizeof(w));
    w.value = (const uint8_t *) value;
    w.vlen = value ? strlen(value) : 0;
    w.tombstone = (value == NULL);
    w.if_match.n = nmatch;
    w.if_match.seqs = match;
    w.if_none_match.n = nnone;
    w.if_none_match.seqs = none;

    rc = kv_write(&t->s, (const uint8_t *) key, strlen(key), &w);

    if (seq != NULL) {
        *seq = w.seq;
    }

    return rc;
}


static uint64_t
seq_of(kv_test_store_t *t, const char *key)
{
    uint8_t   *buf;
    uint64_t   seq;
    kv_loc_t   loc;

    assert_int_equal(kv_lookup(&t->s, (const uint8_t *) key, strlen(key),
                               &loc), KV_OK);

    assert_int_equal(kv_read_seq(&t->s, &loc), KV_OK);
    seq = loc.seq;

    buf = malloc(loc.flen);
    assert_non_null(buf);
    loc.seq = 0;
    assert_int_equal(kv_read(&t->s, &loc, buf), KV_OK);
    assert_true(loc.seq == seq);
    free(buf);

    return seq;
}


static void
test_conditions(void **state)
{
    char             dir[PATH_MAX];
    uint64_t         s1, s2, s3, list[3];
    kv_test_store_t  t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);

    /* create only */
    assert_int_equal(write_if(&t, "k", "v1", 0, NULL, KV_COND_ANY, NULL,
                              &s1), KV_OK);
    assert_int_equal(write_if(&t, "k", "xx", 0, NULL, KV_COND_ANY, NULL,
                              NULL), KV_EPRECOND);
    assert_true(seq_of(&t, "k") == s1);

    /* compare and set */
    list[0] = s1 + 100;
    assert_int_equal(write_if(&t, "k", "xx", 1, list, 0, NULL, NULL),
                     KV_EPRECOND);

    list[1] = s1;
    assert_int_equal(write_if(&t, "k", "v2", 2, list, 0, NULL, &s2), KV_OK);
    assert_true(s2 > s1);
    assert_true(seq_of(&t, "k") == s2);

    /* the old ETag no longer wins */
    assert_int_equal(write_if(&t, "k", "xx", 1, &s1, 0, NULL, NULL),
                     KV_EPRECOND);
    kv_test_expect(&t, S("k"), "v2", 2);

    /* If-Match: * needs the key; If-None-Match with ETags */
    assert_int_equal(write_if(&t, "new", "x", KV_COND_ANY, NULL, 0, NULL,
                              NULL), KV_EPRECOND);
    assert_true(absent(&t, "new"));
    assert_int_equal(write_if(&t, "k", "xx", 0, NULL, 1, &s2, NULL),
                     KV_EPRECOND);
    assert_int_equal(write_if(&t, "k", "v3", 0, NULL, 1, &s1, &s3), KV_OK);

    /* conditional deletes; an absent key is 404 whatever the condition */
    assert_int_equal(write_if(&t, "k", NULL, 1, &s2, 0, NULL, NULL),
                     KV_EPRECOND);
    assert_int_equal(write_if(&t, "k", NULL, 1, &s3, 0, NULL, NULL), KV_OK);
    assert_true(absent(&t, "k"));
    assert_int_equal(write_if(&t, "k", NULL, KV_COND_ANY, NULL, 0, NULL,
                              NULL), KV_NOTFOUND);

    assert_int_equal(stats(&t).precond_failed, 6);
    assert_int_equal(stats(&t).puts, 3);
    assert_int_equal(stats(&t).deletes, 1);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * A sequence number is never handed out twice: not after a restart, and
 * not after a compaction dropped the records that held the newest ones.
 */
static void
test_seq_floor(void **state)
{
    char             dir[PATH_MAX], path[PATH_MAX];
    uint64_t         s1, s2, s3;
    kv_test_store_t  t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);

    assert_int_equal(put_ttl(&t, "keep", "k", 0, &s1), KV_OK);
    assert_int_equal(put_ttl(&t, "k", "v1", 0, NULL), KV_OK);
    assert_int_equal(kv_delete(&t.s, S("k")), KV_OK);

    reopen(&t, dir);
    assert_int_equal(put_ttl(&t, "k", "v2", 0, &s2), KV_OK);
    assert_true(s2 == s1 + 3);
    assert_int_equal(kv_delete(&t.s, S("k")), KV_OK);

    /* the tombstone, the newest record, goes with the compaction */
    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    assert_int_equal(kv_compact(&t.s), KV_OK);

    reopen(&t, dir);
    assert_int_equal(put_ttl(&t, "k", "v3", 0, &s3), KV_OK);
    assert_true(s3 == s2 + 2);

    /* a damaged SEQ file is reported and ignored */
    kv_test_path(dir, KV_SEQ_FILE, path);
    kv_test_write_file(path, (const uint8_t *) "garbage", 7);
    kv_test_log_reset();
    reopen(&t, dir);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN], "damaged"));
    assert_true(seq_of(&t, "k") == s3);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_expiry_lookup),
        cmocka_unit_test(test_expiry_entry_resize),
        cmocka_unit_test(test_expiry_recovery),
        cmocka_unit_test(test_expiry_hint_v1),
        cmocka_unit_test(test_expiry_compaction),
        cmocka_unit_test(test_expiry_sweep),
        cmocka_unit_test(test_expiry_sweep_pause),
        cmocka_unit_test(test_conditions),
        cmocka_unit_test(test_seq_floor),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
