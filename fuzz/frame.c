/*
 * libFuzzer harness: a record frame as recovery, reads and kvtool meet it
 * on disk.  Arbitrary bytes go through kv_frame_verify() and kv_frame_seq()
 * as they are, and the payload through kv_record_decode() whatever the
 * checksum says (a frame whose checksum matches may still hold any bytes).
 * A record that decodes must encode again into a frame that verifies and
 * decodes to the same record.  kv_frame_verify_pieces(), which checks a
 * frame sent from its file, must agree with kv_frame_verify() on every
 * input.
 */

#define _GNU_SOURCE

#include <stdlib.h>
#include <string.h>

#include "kv_internal.h"


static void kv_fuzz_same(const kv_record_t *a, const kv_record_t *b);
static int kv_fuzz_read(void *ctx, uint8_t *buf, size_t len, uint64_t off);


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t            *flat;
    uint64_t            seq;
    kv_record_t         rec, again;
    static kv_frame_t   f;

    if (kv_frame_verify_pieces(size, kv_fuzz_read, (void *) data)
        != kv_frame_verify(data, size))
    {
        abort();
    }

    (void) kv_frame_seq(data, size, &seq);

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
