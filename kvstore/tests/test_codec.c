#define _GNU_SOURCE

#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "test_util.h"


/* Encodes rec and returns the frame's bytes, as pwritev() would write them. */
static uint8_t *
encode(const kv_record_t *rec, size_t *flen)
{
    uint8_t     *out;
    kv_frame_t  *f;

    f = malloc(sizeof(kv_frame_t));
    assert_non_null(f);
    assert_int_equal(kv_frame_encode(f, rec), KV_OK);
    assert_int_equal(f->niov, rec->vlen > 0 ? 2 : 1);
    assert_int_equal(f->iov[0].iov_len + (f->niov == 2 ? f->iov[1].iov_len : 0),
                     f->flen);

    /* zero copy: the value is referenced, not copied */
    if (rec->vlen > 0) {
        assert_ptr_equal(f->iov[1].iov_base, rec->value);
        assert_int_equal(f->iov[1].iov_len, rec->vlen);
    }

    *flen = f->flen;
    out = malloc(f->flen);
    assert_non_null(out);
    memcpy(out, f->iov[0].iov_base, f->iov[0].iov_len);

    if (f->niov == 2) {
        memcpy(out + f->iov[0].iov_len, f->iov[1].iov_base, f->iov[1].iov_len);
    }

    free(f);

    return out;
}


/* Encodes, checks the frame, decodes and compares every field. */
static void
round_trip(const kv_record_t *rec)
{
    size_t       flen;
    uint8_t     *frame;
    kv_record_t  out;

    frame = encode(rec, &flen);

    assert_int_equal(kv_get_le32(frame), flen - KV_FRAME_HEADER);

    assert_true(kv_get_le64(frame + 4)
                == XXH3_64bits_withSeed(frame + KV_FRAME_HEADER,
                                        flen - KV_FRAME_HEADER,
                                        flen - KV_FRAME_HEADER));
    assert_int_equal(kv_frame_verify(frame, flen), KV_OK);

    assert_int_equal(kv_record_decode(&out, frame + KV_FRAME_HEADER,
                                      flen - KV_FRAME_HEADER), KV_OK);
    assert_true(out.seq == rec->seq);
    assert_int_equal(out.klen, rec->klen);
    assert_memory_equal(out.key, rec->key, rec->klen);
    assert_int_equal(out.vlen, rec->vlen);
    assert_int_equal(out.type, rec->type);
    assert_int_equal(out.tombstone, rec->tombstone);
    assert_true(out.expires_at_ms == 0);

    /* the value is the frame's tail, where GET takes it from */
    if (rec->vlen > 0) {
        assert_memory_equal(out.value, rec->value, rec->vlen);
        assert_memory_equal(frame + flen - rec->vlen, rec->value, rec->vlen);
    }

    kv_record_free(&out);
    free(frame);
}


static void
test_round_trip(void **state)
{
    kv_record_t  rec;

    (void) state;

    memset(&rec, 0, sizeof(rec));
    rec.seq = 42;
    rec.key = (const uint8_t *) "hello";
    rec.klen = 5;
    rec.value = (const uint8_t *) "{\"a\":1}";
    rec.vlen = 7;
    rec.type = KV_TYPE_JSON;
    round_trip(&rec);

    rec.seq = UINT64_MAX;
    rec.type = KV_TYPE_OCTET;
    round_trip(&rec);
}


static void
test_tombstone(void **state)
{
    kv_record_t  rec;

    (void) state;

    memset(&rec, 0, sizeof(rec));
    rec.seq = 7;
    rec.key = (const uint8_t *) "gone";
    rec.klen = 4;
    rec.tombstone = 1;
    round_trip(&rec);
}


static void
test_empty_value(void **state)
{
    kv_record_t  rec;

    (void) state;

    memset(&rec, 0, sizeof(rec));
    rec.seq = 1;
    rec.key = (const uint8_t *) "k";
    rec.klen = 1;
    rec.value = (const uint8_t *) "";
    round_trip(&rec);
}


static void
test_all_bytes(void **state)
{
    int          i;
    uint8_t      value[256 * 3], key[256];
    kv_record_t  rec;

    (void) state;

    for (i = 0; i < (int) sizeof(value); i++) {
        value[i] = (uint8_t) (255 - i % 256);
    }

    for (i = 0; i < 256; i++) {
        key[i] = (uint8_t) i;
    }

    memset(&rec, 0, sizeof(rec));
    rec.seq = 300;
    rec.key = key;
    rec.klen = sizeof(key);
    rec.value = value;
    rec.vlen = sizeof(value);
    round_trip(&rec);
}


/* key and value in the same memory: only the last field may be referenced */
static void
test_key_aliases_value(void **state)
{
    uint8_t      buf[16];
    kv_record_t  rec;

    (void) state;

    memcpy(buf, "same bytes here!", 16);

    memset(&rec, 0, sizeof(rec));
    rec.seq = 3;
    rec.key = buf;
    rec.klen = sizeof(buf);
    rec.value = buf;
    rec.vlen = sizeof(buf);
    round_trip(&rec);
}


static void
test_max_key(void **state)
{
    uint8_t      *key;
    kv_record_t   rec;
    kv_frame_t   *f;

    (void) state;

    key = malloc(KV_MAX_KEY_LIMIT + 1);
    assert_non_null(key);
    memset(key, 'k', KV_MAX_KEY_LIMIT + 1);

    memset(&rec, 0, sizeof(rec));
    rec.seq = UINT64_MAX;
    rec.key = key;
    rec.klen = KV_MAX_KEY_LIMIT;
    rec.value = (const uint8_t *) "v";
    rec.vlen = 1;
    rec.type = KV_TYPE_JSON;
    round_trip(&rec);

    f = malloc(sizeof(kv_frame_t));
    assert_non_null(f);

    rec.klen = KV_MAX_KEY_LIMIT + 1;
    assert_int_equal(kv_frame_encode(f, &rec), KV_EINVAL);

    rec.klen = 0;
    assert_int_equal(kv_frame_encode(f, &rec), KV_EINVAL);

    free(f);
    free(key);
}


static void
test_bit_flips(void **state)
{
    size_t       flen, bit;
    uint8_t     *frame;
    kv_record_t  rec;

    (void) state;

    memset(&rec, 0, sizeof(rec));
    rec.seq = 9;
    rec.key = (const uint8_t *) "key\0/x";
    rec.klen = 6;
    rec.value = (const uint8_t *) "some value";
    rec.vlen = 10;

    frame = encode(&rec, &flen);

    for (bit = 0; bit < flen * 8; bit++) {
        frame[bit / 8] ^= (uint8_t) (1 << bit % 8);
        assert_int_equal(kv_frame_verify(frame, flen), KV_ECORRUPT);
        frame[bit / 8] ^= (uint8_t) (1 << bit % 8);
    }

    assert_int_equal(kv_frame_verify(frame, flen), KV_OK);
    free(frame);
}


static void
test_truncated(void **state)
{
    size_t       flen, len;
    uint8_t     *frame;
    kv_record_t  rec, out;

    (void) state;

    memset(&rec, 0, sizeof(rec));
    rec.seq = 10;
    rec.key = (const uint8_t *) "key";
    rec.klen = 3;
    rec.value = (const uint8_t *) "value";
    rec.vlen = 5;

    frame = encode(&rec, &flen);

    for (len = 0; len < flen; len++) {
        assert_int_equal(kv_frame_verify(frame, len), KV_ECORRUPT);
    }

    /* a payload cut inside the value no longer decodes */
    assert_int_equal(kv_record_decode(&out, frame + KV_FRAME_HEADER,
                                      flen - KV_FRAME_HEADER - 1),
                     KV_ECORRUPT);

    free(frame);
}


static void
expect_corrupt(const char *payload, size_t plen)
{
    kv_record_t  out;

    assert_int_equal(kv_record_decode(&out, (const uint8_t *) payload, plen),
                     KV_ECORRUPT);
}


/* hand-made payloads that decode as protobuf but break the store's rules */
static void
test_decode_rules(void **state)
{
    kv_record_t  out;

    (void) state;

    /* value (field 15) written before the key: not the tail */
    expect_corrupt("\x7a\x01v\x12\x01k\x08\x01", 8);

    /* no key */
    expect_corrupt("\x08\x01\x7a\x01v", 5);

    /* a tombstone with a value */
    expect_corrupt("\x08\x01\x12\x01k\x18\x01\x7a\x01v", 10);

    /* an unknown content type */
    expect_corrupt("\x08\x01\x12\x01k\x20\x05", 7);

    /* not protobuf at all */
    expect_corrupt("\xff\xff\xff", 3);

    /* and the same fields in a valid order decode */
    assert_int_equal(kv_record_decode(&out, (const uint8_t *)
                                      "\x08\x01\x12\x01k\x20\x01\x7a\x01v",
                                      10), KV_OK);
    assert_int_equal(out.type, KV_TYPE_JSON);
    assert_memory_equal(out.value, "v", 1);
    kv_record_free(&out);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_tombstone),
        cmocka_unit_test(test_empty_value),
        cmocka_unit_test(test_all_bytes),
        cmocka_unit_test(test_key_aliases_value),
        cmocka_unit_test(test_max_key),
        cmocka_unit_test(test_bit_flips),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_decode_rules),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
