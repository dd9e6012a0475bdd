#define _GNU_SOURCE

/*
 * Values sent from their segment file (kv_open_value()): the descriptor
 * reads the value, the checksum is verified the first time a location is
 * opened, in pieces (kv_frame_verify_pieces()), and the descriptor outlives
 * a compaction that deletes the segment.
 */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"


/* bigger than a few KV_FRAME_PIECE pieces, not a multiple of one */
#define KV_TV_LEN  (5 * KV_FRAME_PIECE + 123)


static uint8_t *
kv_tv_value(unsigned seed)
{
    size_t    i;
    uint8_t  *v;

    v = malloc(KV_TV_LEN);
    assert_non_null(v);

    for (i = 0; i < KV_TV_LEN; i++) {
        v[i] = (uint8_t) (i * 31 + seed);
    }

    return v;
}


/* opens key's value and asserts that the descriptor reads want */
static void
kv_tv_expect(kv_test_store_t *t, const char *key, const uint8_t *want,
    kv_loc_t *loc)
{
    int       fd;
    uint8_t  *got;

    assert_int_equal(kv_lookup(&t->s, (const uint8_t *) key, strlen(key),
                               loc), KV_OK);
    assert_int_equal(kv_open_value(&t->s, (const uint8_t *) key,
                                   strlen(key), loc, &fd), KV_OK);

    got = malloc(KV_TV_LEN);
    assert_non_null(got);
    assert_int_equal(pread(fd, got, KV_TV_LEN,
                           (off_t) kv_value_offset(loc)), KV_TV_LEN);
    assert_memory_equal(got, want, KV_TV_LEN);
    assert_true(loc->seq > 0);

    free(got);
    close(fd);
}


/* flips a byte of the value at loc in the segment file */
static void
kv_tv_flip(const char *dir, const kv_loc_t *loc, size_t at)
{
    int      fd;
    char     path[PATH_MAX];
    uint8_t  b;
    off_t    off;

    kv_test_segment(dir, loc->segment, path);
    fd = open(path, O_RDWR);
    assert_true(fd >= 0);

    off = (off_t) (kv_value_offset(loc) + at);
    assert_int_equal(pread(fd, &b, 1, off), 1);
    b ^= 0x20;
    assert_int_equal(pwrite(fd, &b, 1, off), 1);

    close(fd);
}


static void
test_open_value(void **state)
{
    char              dir[PATH_MAX];
    uint8_t          *v1, *v2;
    uint64_t          seq;
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 256), KV_OK);

    v1 = kv_tv_value(1);
    v2 = kv_tv_value(2);

    assert_int_equal(kv_put(&t.s, (uint8_t *) "big", 3, v1, KV_TV_LEN,
                            KV_TYPE_OCTET), KV_OK);

    /* the first open verifies, and the entry remembers it */
    kv_tv_expect(&t, "big", v1, &loc);
    seq = loc.seq;
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) "big", 3, &loc), KV_OK);
    assert_true(loc.verified);

    /* the sequence number is the one a full read gives */
    assert_int_equal(kv_read_seq(&t.s, &loc), KV_OK);
    assert_true(loc.seq == seq);

    /* an overwrite points at a frame nobody checked yet */
    assert_int_equal(kv_put(&t.s, (uint8_t *) "big", 3, v2, KV_TV_LEN,
                            KV_TYPE_OCTET), KV_OK);
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) "big", 3, &loc), KV_OK);
    assert_false(loc.verified);
    kv_tv_expect(&t, "big", v2, &loc);
    assert_true(loc.seq > seq);

    kv_test_close(&t);
    free(v1);
    free(v2);
    kv_test_rmdir(dir);
}


/* a damaged value is refused by the first open, in any piece */
static void
test_corrupt(void **state)
{
    int               fd;
    char              dir[PATH_MAX];
    char              key[16];
    size_t            at[] = { 0, KV_FRAME_PIECE - 1, 3 * KV_FRAME_PIECE,
                               KV_TV_LEN - 1 };
    unsigned          i;
    uint8_t          *v;
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    assert_int_equal(kv_test_open(&t, dir, KV_TEST_ARENA, 256), KV_OK);

    v = kv_tv_value(3);

    for (i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        snprintf(key, sizeof(key), "k%u", i);
        assert_int_equal(kv_put(&t.s, (uint8_t *) key, strlen(key), v,
                                KV_TV_LEN, KV_TYPE_OCTET), KV_OK);
        assert_int_equal(kv_lookup(&t.s, (uint8_t *) key, strlen(key), &loc),
                         KV_OK);

        kv_tv_flip(dir, &loc, at[i]);

        kv_test_log_reset();
        fd = -1;
        assert_int_equal(kv_open_value(&t.s, (uint8_t *) key, strlen(key),
                                       &loc, &fd), KV_ECORRUPT);
        assert_int_equal(fd, -1);
        assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR],
                               "corrupt record"));

        /* and stays unverified */
        assert_int_equal(kv_lookup(&t.s, (uint8_t *) key, strlen(key), &loc),
                         KV_OK);
        assert_false(loc.verified);
    }

    kv_test_close(&t);
    free(v);
    kv_test_rmdir(dir);
}


/*
 * The descriptor reads the value after a compaction deleted its segment;
 * a location from before the compaction is stale.
 */
static void
test_compaction(void **state)
{
    int               fd;
    char              dir[PATH_MAX], path[PATH_MAX];
    uint8_t          *v, *got;
    kv_loc_t          loc, old;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, 64 * 1024);

    v = kv_tv_value(4);

    assert_int_equal(kv_put(&t.s, (uint8_t *) "big", 3, v, KV_TV_LEN,
                            KV_TYPE_OCTET), KV_OK);
    assert_int_equal(kv_put(&t.s, (uint8_t *) "dead", 4, v, KV_TV_LEN,
                            KV_TYPE_OCTET), KV_OK);
    assert_int_equal(kv_delete(&t.s, (uint8_t *) "dead", 4), KV_OK);

    assert_int_equal(kv_lookup(&t.s, (uint8_t *) "big", 3, &old), KV_OK);
    assert_int_equal(kv_open_value(&t.s, (uint8_t *) "big", 3, &old, &fd),
                     KV_OK);

    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    assert_int_equal(kv_compact(&t.s), KV_OK);

    kv_test_segment(dir, old.segment, path);
    assert_int_equal(access(path, F_OK), -1);

    got = malloc(KV_TV_LEN);
    assert_non_null(got);
    assert_int_equal(pread(fd, got, KV_TV_LEN,
                           (off_t) kv_value_offset(&old)), KV_TV_LEN);
    assert_memory_equal(got, v, KV_TV_LEN);
    close(fd);

    /* the old location is stale; the moved record is checked anew */
    old.verified = 0;
    assert_int_equal(kv_open_value(&t.s, (uint8_t *) "big", 3, &old, &fd),
                     KV_ESTALE);
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) "big", 3, &loc), KV_OK);
    assert_true(loc.segment != old.segment);
    assert_false(loc.verified);
    kv_tv_expect(&t, "big", v, &loc);

    kv_test_close(&t);
    free(got);
    free(v);
    kv_test_rmdir(dir);
}


typedef struct {
    const uint8_t  *frame;
    size_t          flen;
    size_t          fail_at;      /* a read from here fails; 0: none */
} kv_tv_mem_t;


static int
kv_tv_read(void *ctx, uint8_t *buf, size_t len, uint64_t off)
{
    kv_tv_mem_t  *m;

    m = ctx;

    assert_true(off + len <= m->flen);
    assert_true(len <= KV_FRAME_PIECE);

    if (m->fail_at && off + len > m->fail_at) {
        return KV_EIO;
    }

    memcpy(buf, m->frame + off, len);

    return KV_OK;
}


/* kv_frame_verify_pieces() agrees with kv_frame_verify() */
static void
test_pieces(void **state)
{
    size_t        i, lens[] = { 1, 100, KV_FRAME_PIECE - 40,
                                KV_FRAME_PIECE, 7 * KV_FRAME_PIECE + 5 };
    uint8_t      *v, *frame;
    kv_frame_t   *f;
    kv_record_t   rec;
    kv_tv_mem_t   m;

    (void) state;

    f = malloc(sizeof(kv_frame_t));
    assert_non_null(f);

    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        v = malloc(lens[i]);
        assert_non_null(v);
        memset(v, (int) i, lens[i]);

        memset(&rec, 0, sizeof(rec));
        rec.seq = 7 + i;
        rec.key = (const uint8_t *) "key";
        rec.klen = 3;
        rec.value = v;
        rec.vlen = lens[i];
        assert_int_equal(kv_frame_encode(f, &rec), KV_OK);

        frame = malloc(f->flen);
        assert_non_null(frame);
        memcpy(frame, f->iov[0].iov_base, f->iov[0].iov_len);
        memcpy(frame + f->iov[0].iov_len, v, lens[i]);

        m.frame = frame;
        m.flen = f->flen;
        m.fail_at = 0;

        assert_int_equal(kv_frame_verify(frame, f->flen), KV_OK);
        assert_int_equal(kv_frame_verify_pieces(f->flen, kv_tv_read, &m),
                         KV_OK);

        /* the last byte, then the length */
        frame[f->flen - 1] ^= 1;
        assert_int_equal(kv_frame_verify_pieces(f->flen, kv_tv_read, &m),
                         KV_ECORRUPT);
        frame[f->flen - 1] ^= 1;
        assert_int_equal(kv_frame_verify_pieces(f->flen - 1, kv_tv_read, &m),
                         KV_ECORRUPT);

        /* a failed read is the answer */
        m.fail_at = f->flen - 1;
        assert_int_equal(kv_frame_verify_pieces(f->flen, kv_tv_read, &m),
                         KV_EIO);

        free(frame);
        free(v);
    }

    free(f);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_open_value),
        cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_compaction),
        cmocka_unit_test(test_pieces),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
