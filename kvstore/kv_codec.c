#define _GNU_SOURCE

/*
 * Frames: [u32 payload length LE][u64 checksum LE][kv.Record payload], the
 * checksum being XXH3-64 of the payload seeded with its length.
 */

#include <string.h>

#define XXH_STATIC_LINKING_ONLY    /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "kv.pb-c.h"
#include "kv_internal.h"


/*
 * protobuf-c hands us the encoding piece by piece; everything is copied
 * into the frame buffer except the value, which stays by reference.
 */
typedef struct {
    ProtobufCBuffer   base;
    kv_frame_t       *frame;
    const uint8_t    *value;
    size_t            vlen;
    const uint8_t    *ref;        /* the latest append, if it was the value */
    int               overflow;
} kv_pack_t;


static void
kv_pack_copy(kv_pack_t *pk, const uint8_t *data, size_t len)
{
    kv_frame_t  *f;

    f = pk->frame;

    if (len > sizeof(f->buf) - f->used) {
        pk->overflow = 1;
        return;
    }

    if (len) {
        memcpy(f->buf + f->used, data, len);
        f->used += len;
    }
}


static void
kv_pack_append(ProtobufCBuffer *buffer, size_t len, const uint8_t *data)
{
    kv_pack_t  *pk;

    pk = (kv_pack_t *) buffer;

    /*
     * Only the final append may stay by reference: a key that aliases the
     * value's memory comes earlier and must end up copied.
     */
    if (pk->ref != NULL) {
        kv_pack_copy(pk, pk->ref, pk->vlen);
        pk->ref = NULL;
    }

    if (len > 0 && len == pk->vlen && data == pk->value) {
        pk->ref = data;
        return;
    }

    kv_pack_copy(pk, data, len);
}


int
kv_frame_encode(kv_frame_t *f, const kv_record_t *rec)
{
    size_t        plen;
    kv_pack_t     pk;
    Kv__Record    msg;
    XXH3_state_t  st;

    if (rec->klen == 0 || rec->klen > KV_MAX_KEY_LIMIT
        || rec->vlen > KV_MAX_VALUE_LIMIT)
    {
        return KV_EINVAL;
    }

    kv__record__init(&msg);
    msg.seq = rec->seq;
    msg.key.data = (uint8_t *) rec->key;
    msg.key.len = rec->klen;
    msg.tombstone = rec->tombstone ? 1 : 0;
    msg.content_type = (Kv__ContentType) rec->type;
    msg.expires_at_ms = rec->expires_at_ms;
    msg.value.data = (uint8_t *) rec->value;
    msg.value.len = rec->vlen;

    memset(&pk, 0, sizeof(pk));
    pk.base.append = kv_pack_append;
    pk.frame = f;
    pk.value = rec->value;
    pk.vlen = rec->vlen;

    f->used = KV_FRAME_HEADER;

    protobuf_c_message_pack_to_buffer(&msg.base, &pk.base);

    /* the value must be the payload's tail, see proto/kv.proto */
    if (pk.overflow || (rec->vlen > 0 && pk.ref == NULL)) {
        return KV_EINVAL;
    }

    plen = f->used - KV_FRAME_HEADER + rec->vlen;

    XXH3_INITSTATE(&st);
    XXH3_64bits_reset_withSeed(&st, (XXH64_hash_t) plen);
    XXH3_64bits_update(&st, f->buf + KV_FRAME_HEADER,
                       f->used - KV_FRAME_HEADER);

    if (rec->vlen > 0) {
        XXH3_64bits_update(&st, rec->value, rec->vlen);
    }

    kv_put_le(f->buf, plen, 4);
    kv_put_le(f->buf + 4, XXH3_64bits_digest(&st), 8);

    f->iov[0].iov_base = f->buf;
    f->iov[0].iov_len = f->used;
    f->iov[1].iov_base = (void *) rec->value;
    f->iov[1].iov_len = rec->vlen;
    f->niov = rec->vlen > 0 ? 2 : 1;
    f->flen = f->used + rec->vlen;

    return KV_OK;
}


int
kv_frame_verify(const uint8_t *frame, size_t flen)
{
    size_t  plen;

    if (flen <= KV_FRAME_HEADER || flen > KV_FRAME_MAX) {
        return KV_ECORRUPT;
    }

    plen = flen - KV_FRAME_HEADER;

    if (kv_get_le32(frame) != plen) {
        return KV_ECORRUPT;
    }

    if (XXH3_64bits_withSeed(frame + KV_FRAME_HEADER, plen,
                             (XXH64_hash_t) plen)
        != kv_get_le64(frame + 4))
    {
        return KV_ECORRUPT;
    }

    return KV_OK;
}


int
kv_frame_verify_pieces(size_t flen, kv_read_pt read, void *ctx)
{
    int            rc;
    size_t         plen, len;
    uint8_t        head[KV_FRAME_HEADER], buf[KV_FRAME_PIECE];
    uint64_t       off;
    XXH3_state_t  *st;

    if (flen <= KV_FRAME_HEADER || flen > KV_FRAME_MAX) {
        return KV_ECORRUPT;
    }

    plen = flen - KV_FRAME_HEADER;

    rc = read(ctx, head, KV_FRAME_HEADER, 0);
    if (rc != KV_OK) {
        return rc;
    }

    if (kv_get_le32(head) != plen) {
        return KV_ECORRUPT;
    }

    st = XXH3_createState();
    if (st == NULL) {
        return KV_ENOMEM;
    }

    (void) XXH3_64bits_reset_withSeed(st, (XXH64_hash_t) plen);

    for (off = KV_FRAME_HEADER; off < flen; off += len) {
        len = flen - off < sizeof(buf) ? flen - off : sizeof(buf);

        rc = read(ctx, buf, len, off);
        if (rc != KV_OK) {
            break;
        }

        (void) XXH3_64bits_update(st, buf, len);
    }

    if (rc == KV_OK && XXH3_64bits_digest(st) != kv_get_le64(head + 4)) {
        rc = KV_ECORRUPT;
    }

    XXH3_freeState(st);

    return rc;
}


int
kv_record_decode(kv_record_t *rec, const uint8_t *payload, size_t plen)
{
    Kv__Record  *msg;

    msg = kv__record__unpack(NULL, plen, payload);
    if (msg == NULL) {
        return KV_ECORRUPT;
    }

    if (msg->key.len == 0 || msg->key.len > KV_MAX_KEY_LIMIT
        || msg->value.len > KV_MAX_VALUE_LIMIT
        || (msg->tombstone && msg->value.len > 0)
        || (msg->content_type != KV__CONTENT_TYPE__OCTET_STREAM
            && msg->content_type != KV__CONTENT_TYPE__JSON)
        || (msg->value.len > 0
            && memcmp(payload + plen - msg->value.len, msg->value.data,
                      msg->value.len)
               != 0))
    {
        kv__record__free_unpacked(msg, NULL);
        return KV_ECORRUPT;
    }

    rec->seq = msg->seq;
    rec->key = msg->key.data;
    rec->klen = msg->key.len;
    rec->value = msg->value.data;
    rec->vlen = msg->value.len;
    rec->type = msg->content_type == KV__CONTENT_TYPE__JSON ? KV_TYPE_JSON
                                                            : KV_TYPE_OCTET;
    rec->tombstone = msg->tombstone ? 1 : 0;
    rec->expires_at_ms = msg->expires_at_ms;
    rec->msg = msg;

    return KV_OK;
}


void
kv_record_free(kv_record_t *rec)
{
    kv__record__free_unpacked(rec->msg, NULL);
    rec->msg = NULL;
}


int
kv_frame_seq(const uint8_t *frame, size_t len, uint64_t *seq)
{
    int       shift;
    size_t    i;
    uint64_t  v;

    /* field 1 (seq), wire type 0 (varint): the tag byte 0x08 */

    if (len <= KV_FRAME_HEADER + 1 || frame[KV_FRAME_HEADER] != 0x08) {
        return KV_ECORRUPT;
    }

    v = 0;

    for (i = KV_FRAME_HEADER + 1, shift = 0; i < len && shift < 64;
         i++, shift += 7)
    {
        v |= (uint64_t) (frame[i] & 0x7f) << shift;

        if ((frame[i] & 0x80) == 0) {
            *seq = v;
            return KV_OK;
        }
    }

    return KV_ECORRUPT;
}


/* a varint at *p (before end): 0, -1 if malformed, 1 if it runs past end */
static int
kv_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    int  shift;

    *v = 0;

    for (shift = 0; shift < 64; shift += 7) {
        if (*p == end) {
            return 1;
        }

        *v |= (uint64_t) (**p & 0x7f) << shift;

        if ((*(*p)++ & 0x80) == 0) {
            return 0;
        }
    }

    return -1;
}


int
kv_frame_peek(const uint8_t *frame, size_t avail, kv_peek_t *pk)
{
    int             rc;
    uint64_t        v, plen;
    const uint8_t  *p, *end, *pend;

    if (avail < KV_FRAME_HEADER) {
        return 1;
    }

    plen = kv_get_le32(frame);
    if (plen == 0 || KV_FRAME_HEADER + plen > KV_FRAME_MAX) {
        return -1;
    }

    memset(pk, 0, sizeof(kv_peek_t));
    pk->flen = (uint32_t) (KV_FRAME_HEADER + plen);

    p = frame + KV_FRAME_HEADER;
    pend = frame + pk->flen;
    end = avail < pk->flen ? frame + avail : pend;

    /* protobuf-c writes fields in number order: 1, 2, then 3-5, then 15 */

    if (p == end) {
        return 1;
    }

    if (*p++ != 0x08) {
        return -1;
    }

    rc = kv_varint(&p, end, &pk->seq);
    if (rc != 0) {
        return rc;
    }

    if (p == end) {
        return p == pend ? -1 : 1;
    }

    if (*p++ != 0x12) {
        return -1;
    }

    rc = kv_varint(&p, end, &v);
    if (rc != 0) {
        return rc;
    }

    if (v == 0 || v > KV_MAX_KEY_LIMIT || v > (uint64_t) (pend - p)) {
        return -1;
    }

    if (v > (uint64_t) (end - p)) {
        return 1;
    }

    pk->key = p;
    pk->klen = (size_t) v;
    p += v;

    while (p < pend) {
        if (p == end) {
            return 1;
        }

        switch (*p++) {

        case 0x18:
            rc = kv_varint(&p, end, &v);
            pk->tombstone = (v != 0);
            break;

        case 0x20:
            rc = kv_varint(&p, end, &v);
            if (rc == 0 && v > KV_TYPE_JSON) {
                return -1;
            }
            pk->type = (unsigned) v;
            break;

        case 0x28:
            rc = kv_varint(&p, end, &pk->expires_at_ms);
            break;

        case 0x7a:
            rc = kv_varint(&p, end, &v);
            if (rc == 0 && v != (uint64_t) (pend - p)) {
                return -1;
            }
            pk->vlen = (uint32_t) v;
            p = pend;
            break;

        default:
            return -1;
        }

        if (rc != 0) {
            return rc == 1 && p == pend ? -1 : rc;
        }
    }

    return p == pend ? 0 : -1;
}
