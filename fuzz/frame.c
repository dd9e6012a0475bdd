/*
 * libFuzzer harness: a record frame as recovery, reads and kvtool meet it
 * on disk.  Arbitrary bytes go through kv_frame_verify() and kv_frame_seq()
 * as they are, and the payload through kv_record_decode() whatever the
 * checksum says (a frame whose checksum matches may still hold any bytes).
 * A record that decodes must encode again into a frame that verifies and
 * decodes to the same record.  kv_frame_verify_pieces(), which checks a
 * frame sent from its file, must agree with kv_frame_verify() on every
 * input.  kv_frame_peek(), which sorted segments read keys with, meets the
 * input as it is, and must read from a re-encoded frame, whole or cut to
 * KV_FRAME_PEEK() bytes, what kv_record_decode() reads.
 */

#define _GNU_SOURCE

#include <stdlib.h>
#include <string.h>

#include "kv_internal.h"


static void kv_fuzz_same(const kv_record_t *a, const kv_record_t *b);
static void kv_fuzz_peek(const kv_record_t *rec, const uint8_t *frame,
    size_t flen, size_t avail);
static int kv_fuzz_read(void *ctx, uint8_t *buf, size_t len, uint64_t off);


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t            *flat;
    uint64_t            seq;
    kv_peek_t           pk;
    kv_record_t         rec, again;
    static kv_frame_t   f;

    if (kv_frame_verify_pieces(size, kv_fuzz_read, (void *) data)
        != kv_frame_verify(data, size))
    {
        abort();
    }

    (void) kv_frame_seq(data, size, &seq);
    (void) kv_frame_peek(data, size, &pk);

    if (size <= KV_FRAME_HEADER
        || kv_record_decode(&rec, data + KV_FRAME_HEADER,
                            size - KV_FRAME_HEADER)
           != KV_OK)
    {
        return 0;
    }

    if (kv_frame_encode(&f, &rec) != KV_OK) {
        abort();
    }

    flat = malloc(f.flen);
    if (flat == NULL) {
        abort();
    }

    memcpy(flat, f.iov[0].iov_base, f.iov[0].iov_len);

    if (f.niov == 2) {
        memcpy(flat + f.iov[0].iov_len, f.iov[1].iov_base, f.iov[1].iov_len);
    }

    if (kv_frame_verify(flat, f.flen) != KV_OK
        || kv_record_decode(&again, flat + KV_FRAME_HEADER,
                            f.flen - KV_FRAME_HEADER)
           != KV_OK)
    {
        abort();
    }

    kv_fuzz_same(&rec, &again);

    /* protobuf leaves out a zero seq: then there is none to read */
    if (rec.seq != 0
        && (kv_frame_seq(flat, f.flen, &seq) != KV_OK || seq != rec.seq))
    {
        abort();
    }

    /* the store writes no record without a seq or a key */
    if (rec.seq != 0 && rec.klen != 0) {
        kv_fuzz_peek(&rec, flat, f.flen, f.flen);
        kv_fuzz_peek(&rec, flat, f.flen, KV_FRAME_PEEK(rec.klen));
    }

    kv_record_free(&again);
    kv_record_free(&rec);
    free(flat);

    return 0;
}


static void
kv_fuzz_same(const kv_record_t *a, const kv_record_t *b)
{
    if (a->seq != b->seq || a->klen != b->klen || a->vlen != b->vlen
        || a->type != b->type || a->tombstone != b->tombstone
        || a->expires_at_ms != b->expires_at_ms
        || memcmp(a->key, b->key, a->klen) != 0
        || (a->vlen > 0 && memcmp(a->value, b->value, a->vlen) != 0))
    {
        abort();
    }
}


/* a piece of the input for kv_frame_verify_pieces() */
static int
kv_fuzz_read(void *ctx, uint8_t *buf, size_t len, uint64_t off)
{
    memcpy(buf, (const uint8_t *) ctx + off, len);

    return KV_OK;
}


/* kv_frame_peek() of avail bytes of a frame of rec reads rec's fields */
static void
kv_fuzz_peek(const kv_record_t *rec, const uint8_t *frame, size_t flen,
    size_t avail)
{
    uint8_t    *copy;
    kv_peek_t   pk;

    avail = avail < flen ? avail : flen;

    /* a heap copy of exactly avail bytes: ASan sees a read past them */
    copy = malloc(avail);
    if (copy == NULL) {
        abort();
    }

    memcpy(copy, frame, avail);

    if (kv_frame_peek(copy, avail, &pk) != 0
        || pk.flen != flen || pk.seq != rec->seq || pk.klen != rec->klen
        || memcmp(pk.key, rec->key, rec->klen) != 0
        || pk.vlen != rec->vlen || pk.type != rec->type
        || pk.tombstone != rec->tombstone
        || pk.expires_at_ms != rec->expires_at_ms)
    {
        abort();
    }

    free(copy);
}
