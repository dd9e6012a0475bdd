/*
 * kvstore internals shared by the engine's source files and its tests:
 * the frame codec, the index primitives and logging helpers.
 */

#ifndef KV_INTERNAL_H
#define KV_INTERNAL_H

#include <limits.h>
#include <sys/uio.h>

#include "kvstore.h"


/* kv_shared_t.magic; the version changes with the layout of kv_shared_t */
#define KV_SHARED_VERSION  1
#define KV_SHARED_MAGIC    (0x4b56534eu + KV_SHARED_VERSION)   /* "KVSN" */

/*
 * Largest frame recovery accepts.  It depends on the hard limits only, so
 * lowering max_key or max_value never turns old records into corrupt ones.
 */
#define KV_FRAME_MAX  ((uint64_t) KV_FRAME_HEADER + KV_MAX_KEY_LIMIT         \
                       + KV_MAX_VALUE_LIMIT + 64)

/* protobuf tags and varints of a record, everything but key and value */
#define KV_FRAME_FIELDS  64

/* a location packs the segment id above a 40-bit (1 TiB) offset */
#define KV_LOC_OFFSET_BITS  40
#define KV_SEGMENT_MAX      0xffffffu
#define KV_LOC(segment, offset)                                              \
    ((uint64_t) (segment) << KV_LOC_OFFSET_BITS | (uint64_t) (offset))

/* an escaped key in a log message: at most 64 key bytes as \xNN and "..." */
#define KV_KEY_SHOWN    64
#define KV_KEY_STR_LEN  (KV_KEY_SHOWN * 4 + sizeof("..."))


typedef struct {
    uint64_t        seq;
    const uint8_t  *key;
    size_t          klen;
    const uint8_t  *value;
    size_t          vlen;
    unsigned        type;          /* KV_TYPE_* */
    unsigned        tombstone;
    uint64_t        expires_at_ms;
    void           *msg;           /* decoded message owning key and value */
} kv_record_t;


/*
 * An encoded frame ready for pwritev(): buf holds the frame header followed
 * by every payload byte but the value, which iov[1] references in place.
 */
typedef struct {
    struct iovec    iov[2];
    int             niov;
    size_t          flen;
    size_t          used;          /* bytes of buf in use */
    uint8_t         buf[KV_FRAME_HEADER + KV_MAX_KEY_LIMIT + KV_FRAME_FIELDS];
} kv_frame_t;


/* kv_codec.c */
int kv_frame_encode(kv_frame_t *f, const kv_record_t *rec);
int kv_frame_verify(const uint8_t *frame, size_t flen);
int kv_record_decode(kv_record_t *rec, const uint8_t *payload, size_t plen);
void kv_record_free(kv_record_t *rec);


/* kv_index.c, all called with the host lock held */
kv_entry_t *kv_index_find(const kv_host_t *host, kv_shared_t *sh,
    const uint8_t *key, size_t klen, kv_ref_t **link);
kv_entry_t *kv_index_reserve(const kv_host_t *host, kv_shared_t *sh,
    const uint8_t *key, size_t klen, int *fresh);
void kv_index_set(const kv_host_t *host, kv_shared_t *sh, kv_entry_t *e,
    int fresh, uint64_t loc, uint32_t flen, uint32_t vlen, unsigned type);
void kv_index_remove(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e);


/* kv_store.c */
void kv_log(const kv_host_t *host, int level, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
const char *kv_key_str(const uint8_t *key, size_t klen,
    char buf[KV_KEY_STR_LEN]);
void kv_segment_path(const kv_store_t *s, uint32_t segment,
    char path[PATH_MAX]);
ssize_t kv_pread_full(int fd, uint8_t *buf, size_t len, uint64_t off);


static inline void *
kv_ptr(const kv_host_t *host, kv_ref_t ref)
{
    return host->base + (size_t) ref * 8;
}


static inline kv_ref_t
kv_ref(const kv_host_t *host, const void *p)
{
    return (kv_ref_t) (((const uint8_t *) p - host->base) / 8);
}


static inline uint32_t
kv_get_le32(const uint8_t *p)
{
    return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16
           | (uint32_t) p[3] << 24;
}


static inline uint64_t
kv_get_le64(const uint8_t *p)
{
    return (uint64_t) kv_get_le32(p) | (uint64_t) kv_get_le32(p + 4) << 32;
}

#endif /* KV_INTERNAL_H */
