/*
 * kvstore internals shared by the engine's source files and its tests: the
 * frame codec, the index primitives, segment files and logging.  kvtool
 * includes it too, as a friend: check, repair and dump read segments frame
 * by frame, replay them into an index of their own and walk it, which no
 * host of a running store should ever do.
 *
 * The files, each calling only the ones listed before it:
 *   kv_codec.c    record frames: encode, verify, decode
 *   kv_segment.c  paths, file helpers, listing and scanning segments, logs
 *   kv_seq.c      the SEQ and SEED files: the sequence floor that
 *                 compaction keeps, the seed of the keys' hashes
 *   kv_order.c    index=sorted: the index's keys in order (a skip list)
 *   kv_index.c    the hash index in host memory, replaying a record into it
 *   kv_filter.c   the Bloom filter of a sorted segment
 *   kv_table.c    sorted segments: their table file (sparse index and
 *                 filter), building it, finding a key, reading in order
 *   kv_level.c    index=sorted: which sorted segments exist, lookups in
 *                 them, the TABLES file
 *   kv_store.c    appends, lookups, reads, flushes (the kvstore.h calls)
 *   kv_iter.c     listing keys in order
 *   kv_hint.c     hint files: write and load
 *   kv_compact.c  compaction and the cleanup of an interrupted one
 *   kv_recover.c  opening a store: lock, cleanup, replay
 */

#ifndef KV_INTERNAL_H
#define KV_INTERNAL_H

#include <limits.h>
#include <string.h>
#include <sys/uio.h>

#include "kvstore.h"


/* under AddressSanitizer, freed index memory is poisoned */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define kv_poison(p, n)    ASAN_POISON_MEMORY_REGION(p, n)
#define kv_unpoison(p, n)  ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define kv_poison(p, n)    (void) 0
#define kv_unpoison(p, n)  (void) 0
#endif

/* kv_shared_t.magic; the version changes with the layout of kv_shared_t */
#define KV_SHARED_VERSION  10
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

/* kv_entry_t.flags: the entry carries an expiry time (kv_entry_expiry()) */
#define KV_ENTRY_EXPIRES   0x01
/* kv_open_value() checked the frame the entry points at */
#define KV_ENTRY_VERIFIED  0x02
/*
 * index=sorted: the key is deleted (or expired), and the entry, which
 * points at the tombstone (or the expired record), hides what the sorted
 * segments hold of it until a merge drops both
 */
#define KV_ENTRY_MASK      0x04
/*
 * index=sorted: the entry's height in the skip list of kv_order.c (1 to
 * KV_ORDER_LEVELS; 0 in index=hash, which keeps no order), in the high
 * bits of its flags
 */
#define KV_ENTRY_HEIGHT_SHIFT  4
#define KV_ENTRY_HEIGHT(flags)  ((unsigned) (flags) >> KV_ENTRY_HEIGHT_SHIFT)

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

/*
 * read(ctx, buf, len, off) puts len bytes of a frame, from its byte off,
 * into buf: KV_OK, or an error that kv_frame_verify_pieces() returns.
 */
typedef int (*kv_read_pt)(void *ctx, uint8_t *buf, size_t len, uint64_t off);

/* the piece kv_frame_verify_pieces() reads at a time: stays in L2 cache */
#define KV_FRAME_PIECE  32768

/*
 * kv_frame_verify() of a frame that is not in memory, read a piece at a
 * time: KV_OK, KV_ECORRUPT, KV_ENOMEM or read's error.
 */
int kv_frame_verify_pieces(size_t flen, kv_read_pt read, void *ctx);
int kv_record_decode(kv_record_t *rec, const uint8_t *payload, size_t plen);
void kv_record_free(kv_record_t *rec);

/*
 * The sequence number of a frame from its first len bytes (the header and
 * the record's first field: protobuf-c writes fields in number order).
 */
int kv_frame_seq(const uint8_t *frame, size_t len, uint64_t *seq);

/*
 * What a frame says of its record, read from its first bytes without
 * decoding it and without its checksum (the caller verifies the frame
 * when it needs to trust it): a sorted segment's lookup reads keys this
 * way.  The fields are in the order protobuf-c writes them.
 */
typedef struct {
    uint64_t        seq;
    const uint8_t  *key;           /* into the frame */
    size_t          klen;
    uint32_t        flen;          /* header included */
    uint32_t        vlen;
    unsigned        type;
    unsigned        tombstone;
    uint64_t        expires_at_ms;
} kv_peek_t;

/* 0, -1 if the bytes are no frame, 1 if avail is too short to say */
int kv_frame_peek(const uint8_t *frame, size_t avail, kv_peek_t *pk);

/* the bytes of a frame that kv_frame_peek() needs at most */
#define KV_FRAME_PEEK(klen)  (KV_FRAME_HEADER + 11 + 4 + (klen) + 2 + 2 \
                              + 11 + 6)

/* the bytes of a frame that kv_frame_seq() needs at most */
#define KV_FRAME_SEQ_LEN  (KV_FRAME_HEADER + 1 + 10)


/* byte-wise order, the shorter first: the order of keys everywhere */
static inline int
kv_key_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    int     c;
    size_t  n;

    n = alen < blen ? alen : blen;
    c = n ? memcmp(a, b, n) : 0;

    if (c != 0) {
        return c;
    }

    return (alen > blen) - (alen < blen);
}


/*
 * kv_store.c: the store lock.  Requests take it with kv_lock(), each with
 * a ticket served once it holds the lock; a background loop that takes it batch after batch (a
 * merge, a compaction) takes it with kv_lock_background(), which first
 * lets waiting requests in: else the loop's thread, running, takes the
 * lock again before a woken waiter is back on a CPU, and a request waits
 * for many batches.
 */
void kv_lock(kv_store_t *s);
void kv_lock_background(kv_store_t *s);
/* 1 while a request waits for the lock (or one was killed waiting) */
int kv_lock_wanted(const kv_shared_t *sh);
/*
 * Between two batches of a sweep that runs in an event loop, lock held:
 * lets a waiting request in (one nap, as that loop waits too).
 */
void kv_lock_pause(kv_store_t *s);
void kv_unlock(kv_store_t *s);


/* kv_segment.c: logging and the segment files */
void kv_log(const kv_host_t *host, int level, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
const char *kv_key_str(const uint8_t *key, size_t klen,
    char buf[KV_KEY_STR_LEN]);
void kv_segment_path(const kv_store_t *s, uint32_t segment,
    char path[PATH_MAX]);
ssize_t kv_pread_full(int fd, uint8_t *buf, size_t len, uint64_t off);

/*
 * Flushes a file's data (fdatasync) or a directory (opened by path, fsync)
 * to stable storage, through host->sync if set, and logs a failure.
 */
int kv_flush(kv_store_t *s, int fd, const char *path);
int kv_flush_dir(kv_store_t *s, const char *path);

/*
 * Makes DIR/name hold exactly data, atomically and durably: written to
 * name.tmp, flushed, renamed, the directory flushed.
 */
int kv_replace_file(kv_store_t *s, const char *name, const void *data,
    size_t len);

/* chowns fd (or path if fd is -1) to conf.owner_uid/gid, if they are set */
int kv_chown(kv_store_t *s, int fd, const char *path);

/*
 * Creates path with O_EXCL, mode 0640, owned by conf.owner_uid/gid, opened
 * with flags (O_RDWR, O_WRONLY).  -1 with errno set; logged unless EEXIST.
 */
int kv_create_file(kv_store_t *s, const char *path, int flags);

/*
 * Opens path read-only and, if size is not NULL, sets *size to its size:
 * KV_OK, KV_NOTFOUND (not logged) if there is no such file, or KV_EIO
 * (logged).
 */
int kv_open_read(kv_store_t *s, const char *path, int *fd, uint64_t *size);

/*
 * Segment id mapped whole, read-only: compaction copies records from it
 * without a read per record (a closed segment never shrinks while mapped).
 * KV_OK or KV_EIO (logged; a missing file too).
 */
typedef struct {
    uint8_t   *p;
    size_t     len;
} kv_map_t;

int kv_segment_map(kv_store_t *s, uint32_t id, kv_map_t *m);
void kv_segment_unmap(kv_map_t *m);

/* the id of a file named ten digits then suffix, or 0 if it is not one */
uint32_t kv_file_id(const char *name, const char *suffix);

/* qsort() and bsearch() order of segment ids */
int kv_cmp_id(const void *a, const void *b);

/* Segment ids present in the directory, ascending; *ids is malloc()ed. */
int kv_list_segments(kv_store_t *s, uint32_t **ids, size_t *n);

/* The bytes of the regular files in dir (0 if it does not exist). */
uint64_t kv_dir_bytes(const char *dir);

/*
 * kv_scan_segment() reads the frames of segment id in order, starting at
 * offset from (0, or where a frame starts: kvtool resumes after damage),
 * and calls fn for each good one (rec is valid during the call only); it
 * stops at the end of the file or at the first bad frame, and sets *end to
 * the offset where it stopped and *size to the file size (so *end < *size
 * means a bad frame at *end).  fn returns KV_OK to go on; any other value
 * stops the scan and is returned, *end being then the offset of that
 * frame.  KV_NOTFOUND (not logged) if the file does not exist; KV_EIO
 * (logged) if it cannot be read.
 */
typedef int (*kv_scan_pt)(void *ctx, const kv_record_t *rec, uint64_t off,
    uint32_t flen);

int kv_scan_segment(kv_store_t *s, uint32_t id, uint64_t from, kv_scan_pt fn,
    void *ctx, uint64_t *end, uint64_t *size);

/*
 * Looks for a complete valid frame starting anywhere in (from, size) of
 * segment id: *next is the offset of the first one, 0 if there is none
 * (kvtool repair cuts the damaged bytes [from, *next) out).  Reads with
 * pread(): a running store may cut the file.
 */
int kv_valid_frame_after(kv_store_t *s, uint32_t id, uint64_t from,
    uint64_t *next);

/*
 * Sets *zeros if every byte of segment id from `from` to its end is zero
 * (and there is one at least): the space kv_preallocate() wrote ahead, no
 * torn write.  Reads with pread(): a running store may cut the file.
 */
int kv_zero_tail(kv_store_t *s, uint32_t id, uint64_t from, int *zeros);


/* kv_index.c, all called with the host lock held */

/*
 * Where a put's record goes in the index: e is the entry to fill; old is
 * the key's current entry, if any, which e replaces when the expiry time
 * changes the entry's size (else e == old); link points at old.
 */
typedef struct {
    kv_entry_t     *e;
    kv_entry_t     *old;
    kv_ref_t       *link;
} kv_slot_t;

/* the key's hash: its bucket (low bits) and skip-list height (high) */
uint64_t kv_key_hash(const kv_shared_t *sh, const uint8_t *key, size_t klen);
kv_entry_t *kv_index_find(const kv_host_t *host, kv_shared_t *sh,
    const uint8_t *key, size_t klen, kv_ref_t **link);

/*
 * An entry: kv_entry_t, the key to the next 8-byte boundary, with
 * KV_ENTRY_EXPIRES the expiry time (8 bytes), then its tower of
 * KV_ENTRY_HEIGHT() links in the skip list, rounded up to 8 bytes.
 */
static inline size_t
kv_entry_key_end(size_t klen)
{
    return (sizeof(kv_entry_t) + klen + 7) & ~(size_t) 7;
}


static inline size_t
kv_entry_tower_off(size_t klen, unsigned flags)
{
    return kv_entry_key_end(klen)
           + ((flags & KV_ENTRY_EXPIRES) ? sizeof(uint64_t) : 0);
}


static inline size_t
kv_entry_size(size_t klen, unsigned flags)
{
    return kv_entry_tower_off(klen, flags)
           + ((KV_ENTRY_HEIGHT(flags) + 1) / 2) * 8;
}


/*
 * index=sorted: the index's entries in key order, a skip list threaded
 * through them (kv_order.c), kept by every change of the index under the
 * lock, so that a listing seeks to its start instead of passing over every
 * bucket.  An entry's height follows from its key's hash, so an entry that
 * replaces another of the same key has the same tower.
 */
unsigned kv_order_height(const kv_shared_t *sh, const uint8_t *key,
    size_t klen);
void kv_order_insert(const kv_host_t *host, kv_shared_t *sh, kv_entry_t *e);

/*
 * Without the lock: walks key's search path, so that the search under the
 * lock finds its entries in the CPU's cache.  Returns what the walk saw
 * as the first entry at or past key, NULL at the end or if the list
 * changed under it in a way it could not follow: a guess, for tests.
 */
const kv_entry_t *kv_order_warm(const kv_host_t *host,
    const kv_shared_t *sh, const uint8_t *key, size_t klen);

/*
 * Where the last search through it stopped: the entry (NULL: the head)
 * before its key on each level.  Valid while the lock is held and only
 * removals through it change the index (a merge's swap, in key order).
 */
typedef struct {
    kv_entry_t  *node[KV_ORDER_LEVELS];
    unsigned     valid;
} kv_order_finger_t;

/* f: NULL, or a finger zeroed before the first removal through it */
void kv_order_remove(const kv_host_t *host, kv_shared_t *sh,
    const kv_entry_t *e, kv_order_finger_t *f);
void kv_order_replace(const kv_host_t *host, kv_shared_t *sh,
    const kv_entry_t *old, kv_entry_t *e);

/* the first entry past key (excl) or at it or past, NULL if none */
kv_entry_t *kv_order_seek(const kv_host_t *host, kv_shared_t *sh,
    const uint8_t *key, size_t klen, int excl);
kv_entry_t *kv_order_next(const kv_host_t *host, const kv_entry_t *e);

/*
 * Finds the key's entry, for a record with or without an expiry time, and
 * allocates a new one if needed: KV_OK, or KV_ENOMEM with nothing changed.
 * The caller passes the slot to kv_index_set() or kv_index_release().
 */
int kv_index_reserve(const kv_host_t *host, kv_shared_t *sh,
    const uint8_t *key, size_t klen, uint64_t expires_at_ms,
    kv_slot_t *slot);
void kv_index_set(const kv_host_t *host, kv_shared_t *sh, kv_slot_t *slot,
    uint64_t loc, uint32_t flen, uint32_t vlen, unsigned type,
    uint64_t expires_at_ms);
void kv_index_release(const kv_host_t *host, kv_shared_t *sh,
    kv_slot_t *slot);
void kv_index_remove(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e, kv_order_finger_t *f);
void kv_entry_free(const kv_host_t *host, kv_shared_t *sh, kv_entry_t *e);

/* the entry's expiry time (Unix ms), 0 if it has none */
uint64_t kv_entry_expiry(const kv_entry_t *e);

/* 1 if the entry's time ran out at now (Unix ms) */
int kv_entry_expired(const kv_entry_t *e, uint64_t now);

/* what kv_lookup() says of the entry's record (seq left 0) */
void kv_entry_loc(const kv_entry_t *e, kv_loc_t *loc);

/*
 * index=sorted: 1 once the index holds as many entries as half its
 * buckets (a third of the memory with 16-byte keys), when a merge should
 * begin, so that writes meanwhile still find room.
 */
int kv_index_crowded(const kv_shared_t *sh);

/* Unlinks a live entry whose record a sorted segment now holds. */
void kv_index_moved(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e, kv_order_finger_t *f);

/*
 * Makes e a mask (KV_ENTRY_MASK) pointing at the tombstone or expired
 * record at loc: what the sorted segments hold of the key stays hidden.
 */
void kv_index_mask(kv_shared_t *sh, kv_entry_t *e, uint64_t loc,
    uint32_t flen);

/* links a reserved slot of a key the index does not hold as a mask */
void kv_index_set_mask(const kv_host_t *host, kv_shared_t *sh,
    kv_slot_t *slot, uint64_t loc, uint32_t flen);

/* a mask for a key the index does not hold: KV_OK or KV_ENOMEM */
int kv_index_add_mask(const kv_host_t *host, kv_shared_t *sh,
    const uint8_t *key, size_t klen, uint64_t loc, uint32_t flen);

/*
 * A delete's change to the index: e becomes a mask if sorted segments
 * exist or a merge may publish some (they may hold the key), else it is
 * removed.
 */
void kv_index_drop(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e, uint64_t loc, uint32_t flen);

/* Drops an expired entry found through link, counting it as expired. */
void kv_index_expire(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e);

/* host->now_ms(), or the system's wall clock */
uint64_t kv_now_ms(const kv_host_t *host);

/*
 * Applies the record at off of segment id to the index.  Replaying a
 * segment and loading its hint both go through it (rec->value is not
 * used).
 */
int kv_replay_apply(kv_store_t *s, uint32_t id, const kv_record_t *rec,
    uint64_t off, uint32_t flen);

/*
 * Frees every entry and forgets what a recovery built (the runs, the
 * sequence number, the counters): for a recovery that starts again.
 * Takes the lock.
 */
void kv_index_clear(kv_store_t *s);

/* 1 if a recovery of s whose index fills converts rather than fails */
int kv_recover_converts(const kv_store_t *s);

/*
 * In the last segment, damage at `from` followed by valid frames at
 * `next`: is it the trace of a flush that a power cut caught (recovery
 * cuts it, kvtool check reports it as such)?  Sets *data_end to where the
 * segment's trailing zeros start if so, 0 if the damage is not that.
 */
int kv_unfinished_flush(kv_store_t *s, uint32_t id, uint64_t from,
    uint64_t next, uint64_t *data_end);

/* Calls fn for every entry; fn must not change the index. */
typedef int (*kv_walk_pt)(void *ctx, const kv_entry_t *e);

int kv_index_walk(const kv_host_t *host, kv_shared_t *sh, kv_walk_pt fn,
    void *ctx);

/*
 * A hint that the key is looked up soon; stage 0 a while before, stage 1
 * shortly before.  With or without the lock.
 */
void kv_index_prefetch(const kv_host_t *host, kv_shared_t *sh,
    const uint8_t *key, size_t klen, int stage);


/*
 * kv_store.c, with the host lock held: creates segment next (file, then
 * directory flushed) and makes it the active one.
 */
int kv_roll(kv_store_t *s, uint32_t next);


/* kv_hint.c: the hint file of segment id; suffix "" or KV_TMP_SUFFIX */
void kv_hint_path(const kv_store_t *s, uint32_t id, const char *suffix,
    char path[PATH_MAX]);

/* kv_hint.c: writes the hint file of immutable segment id (tmp, rename). */
int kv_write_hint(kv_store_t *s, uint32_t id);

/* a hint being written, entry by entry */
typedef struct {
    kv_store_t     *s;
    uint32_t        id;
    int             fd;
    char            tmp[PATH_MAX];
    uint8_t        *buf;
    size_t          used;
    uint64_t        count;
    uint64_t        seq;            /* of the previous entry */
} kv_hint_writer_t;

/*
 * Segment id's hint, written as its records become known: kv_hint_begin()
 * creates the temporary file (KV_EBUSY if another process is writing it),
 * kv_hint_add() adds the next record (frame of flen bytes), and
 * kv_hint_end() completes it for a segment of size bytes, flushed by then,
 * and renames it, if rc is KV_OK; otherwise, or if that fails, it removes
 * the file.  Either way it frees w.
 */
int kv_hint_begin(kv_store_t *s, uint32_t id, kv_hint_writer_t *w);
int kv_hint_add(kv_hint_writer_t *w, const kv_record_t *rec, uint32_t flen);
int kv_hint_end(kv_hint_writer_t *w, uint64_t size, int rc);

/*
 * Loads segment id's hint into the index, as replaying the segment would.
 * KV_NOTFOUND if there is no usable hint (missing, stale or corrupt: the
 * reason is logged), then the caller scans the segment.
 */
int kv_load_hint(kv_store_t *s, uint32_t id);

/* the fixed parts of a hint file around its entries */
#define KV_HINT_HEADER   24
#define KV_HINT_TRAILER  16

/*
 * Everything that makes the hint of segment id (size bytes) in map
 * trustworthy, before any of it reaches the index.  Returns 0, or -1 with
 * the reason in why.  Pure: fuzz/hint.c calls it on a heap buffer.
 */
int kv_hint_check(const uint8_t *map, size_t len, uint32_t id, uint64_t size,
    char *why, size_t n);

/*
 * Decodes the hint entry at p into rec (rec->seq holding the previous
 * entry's on entry) and *flen; NULL if it is malformed or runs past end.
 */
const uint8_t *kv_hint_entry(const uint8_t *p, const uint8_t *end,
    kv_record_t *rec, uint32_t *flen);


/*
 * kv_filter.c: a blocked Bloom filter of KV_FILTER_BITS_PER_KEY bits per
 * key (about 1.2% false positives), KV_FILTER_PROBES bits per key in one
 * 64-byte block.
 */
#define KV_FILTER_BITS_PER_KEY  10
#define KV_FILTER_PROBES        7

size_t kv_filter_size(uint64_t nkeys);
uint64_t kv_filter_hash(const uint8_t *key, size_t klen);
void kv_filter_add(uint8_t *filter, size_t size, uint64_t h);
int kv_filter_may_contain(const uint8_t *filter, size_t size, uint64_t h);


/* kv_table.c: a sorted segment's table file, mapped */
#define KV_TABLE_BLOCK      8192
#define KV_TABLE_BLOCK_MAX  16384     /* what a reader accepts */

typedef struct kv_table_s {
    uint32_t        id;
    int             fd;            /* the segment's */
    uint64_t        size;          /* the segment's */
    uint64_t        nkeys;
    uint32_t        nblocks;
    uint8_t        *map;
    size_t          map_len;
    const uint8_t  *blocks;
    const uint8_t  *keys;
    size_t          keys_len;
    const uint8_t  *filter;
    size_t          filter_len;
    uint32_t        block;         /* the block size it was written with */
} kv_table_t;

void kv_table_path(const kv_store_t *s, uint32_t id, char path[PATH_MAX]);

/*
 * Writes the table file of segment id, which must be sorted (KV_ECORRUPT,
 * logged, if it is not or has a bad frame).
 */
int kv_table_build(kv_store_t *s, uint32_t id);

/* a table file being built, key by key */
typedef struct {
    kv_store_t     *s;
    uint32_t        id;
    uint64_t        nkeys;
    uint64_t       *hashes;        /* of every key, for the filter */
    uint64_t        nhashes;
    uint8_t        *blocks;        /* KV_TABLE_ENTRY bytes each */
    uint32_t        nblocks;
    uint8_t        *keys;
    size_t          keys_len;
    size_t          cap_hashes, cap_blocks, cap_keys;
    uint64_t        block_start;
    uint8_t        *prev;          /* the previous key, for the order */
    size_t          prev_len, prev_cap;
} kv_table_builder_t;

/*
 * Segment id's table file, built as its records become known (a merge's
 * copies, or kv_table_build()'s scan): kv_table_add() takes the next key,
 * whose frame is at off (KV_ECORRUPT, logged, if it is not above the last
 * one), and kv_table_end() writes the file for a segment of size bytes if
 * rc is KV_OK, with its length in *len if len is not NULL.  Either way it
 * frees b.
 */
void kv_table_begin(kv_table_builder_t *b, kv_store_t *s, uint32_t id);
int kv_table_add(kv_table_builder_t *b, const uint8_t *key, size_t klen,
    uint64_t off);
int kv_table_end(kv_table_builder_t *b, uint64_t size, int rc,
    uint64_t *len);

/*
 * Maps segment id's table file and opens the segment, with the file's
 * checksum summed if sum is set (recovery, kvtool): KV_OK, KV_NOTFOUND if
 * there is no table file, KV_ECORRUPT (logged) if it is damaged or stale
 * (then kv_table_build() writes it again), KV_ESTALE if the segment is
 * gone, KV_EIO.
 */
int kv_table_open(kv_store_t *s, uint32_t id, kv_table_t *t, int sum);
void kv_table_close(kv_table_t *t);

/*
 * What kv_table_open() checks on len bytes at map (with full, as when it
 * sums: the checksum and every block too): 0, or -1 with the reason in
 * why.  Pure: fuzz/table.c calls it on a heap buffer.
 */
int kv_table_check(const uint8_t *map, size_t len, uint32_t id, int full,
    char *why, size_t n);

/* sets t's parts from t->map, which passed the check; the segment size */
uint64_t kv_table_view(kv_table_t *t);

/* block i's offset, and (if key is not NULL) its first key, in bounds */
uint64_t kv_table_block(const kv_table_t *t, uint32_t i, const uint8_t **key,
    size_t *klen);

/*
 * Finds key in the table: KV_OK with loc and pk (the record's fields, a
 * tombstone too: the caller decides), KV_NOTFOUND, KV_EIO, KV_ECORRUPT.
 * Lock-free: a table never changes once written.
 */
int kv_table_get(const kv_table_t *t, const uint8_t *key, size_t klen,
    kv_loc_t *loc, kv_peek_t *pk);


/*
 * Reading a sorted segment in key order (merges, listing): pk describes
 * the current record, which is at off; its key points into buf.
 */
#define KV_TABLE_ITER_BUF  (64 * 1024 + KV_FRAME_PEEK(KV_MAX_KEY_LIMIT))

typedef struct {
    const kv_table_t  *t;
    uint64_t           off;
    kv_peek_t          pk;
    uint64_t           base;       /* buf holds len bytes from base */
    size_t             len;
    uint8_t            buf[KV_TABLE_ITER_BUF];
} kv_table_iter_t;

/*
 * Positions it at the first record at or after key (NULL: the first):
 * KV_OK, KV_NOTFOUND if there is none, KV_EIO, KV_ECORRUPT.
 */
int kv_table_iter_seek(kv_table_iter_t *it, const kv_table_t *t,
    const uint8_t *key, size_t klen);

/* the next record: KV_OK, KV_NOTFOUND after the last, KV_EIO... */
int kv_table_iter_next(kv_table_iter_t *it);

/*
 * kv_level.c (index=sorted): the TABLES file; the handle's opened tables
 * of a set of runs (KV_ESTALE if a newer merge deleted one: look again);
 * finding a key's newest record in them (KV_NOTFOUND for a tombstone or
 * an expired record too).
 */
int kv_level_save(kv_store_t *s, const kv_runs_t *runs, uint32_t floor);

/* TABLES' text (NUL-terminated): 0, or -1 if malformed.  Pure, fuzzed. */
int kv_level_parse(const char *text, kv_runs_t *runs, uint32_t *floor);
int kv_level_load(kv_store_t *s, kv_runs_t *runs, uint32_t *floor);

/*
 * 1 if the directory is index=sorted's: TABLES names runs whose segments
 * are all there.  A compaction in index=hash takes them as inputs and
 * leaves TABLES behind, naming runs that are gone.
 */
int kv_level_present(kv_store_t *s);

/* the first segment of runs missing from ids (sorted, n of them), or 0 */
uint32_t kv_runs_missing(const kv_runs_t *runs, const uint32_t *ids,
    size_t n);
int kv_level_has(const kv_runs_t *runs, uint32_t id);
int kv_level_open(kv_store_t *s, const kv_runs_t *runs);
void kv_level_close(kv_store_t *s);
int kv_level_get(kv_store_t *s, const uint8_t *key, size_t klen,
    kv_loc_t *loc);
int kv_level_lookup(kv_store_t *s, const uint8_t *key, size_t klen,
    const kv_runs_t *runs, kv_loc_t *loc);

/*
 * Reading the newest nruns runs of the handle's opened set together, in
 * key order (merges, listing), from the first key at or after key (NULL:
 * the first of all): rec is the smallest key's record in the newest run
 * that holds it, NULL past the last or after an error (then rc says it);
 * kv_level_iter_next() moves past that key in every run.
 */
typedef struct {
    uint32_t          i;           /* its current table */
    uint32_t          end;         /* past its last table */
    int               rc;          /* KV_OK: it.pk is current */
    kv_table_iter_t   it;
} kv_level_run_t;

typedef struct {
    const kv_table_iter_t  *rec;
    int                     rc;
    uint32_t                n;
    uint32_t                cur;   /* the run rec is in */
    kv_level_run_t         *run;   /* newest first */
    const kv_table_t       *tables;
} kv_level_iter_t;

int kv_level_iter_open(kv_level_iter_t *li, kv_store_t *s, uint32_t nruns,
    const uint8_t *key, size_t klen);
void kv_level_iter_next(kv_level_iter_t *li);
void kv_level_iter_close(kv_level_iter_t *li);


/*
 * kv_compact.c: run by recovery once the directory is locked: removes the
 * outputs of a compaction that did not finish (KV_MERGE_FILE lists them)
 * and any *.tmp file.
 */
int kv_compact_cleanup(kv_store_t *s);

/*
 * The output ids [*first, *last] that KV_MERGE_FILE names: partial copies
 * that read-only recovery and kvtool must skip.  KV_NOTFOUND if there is
 * no such file (no compaction was interrupted).
 */
int kv_merge_outputs(kv_store_t *s, uint32_t *first, uint32_t *last);


/*
 * kv_seq.c: the SEQ file holds a sequence number that no record written
 * later may reuse.  Compaction writes it (tmp, flush, rename, flush) before
 * it deletes records that may hold the store's newest sequence numbers
 * (tombstones and expired records), so that a restart never hands out an
 * ETag again.  kv_seq_load() raises sh->seq to it: KV_OK, also when there
 * is no such file; a damaged one is logged and ignored (the segments then
 * decide, as before the file existed).
 */
int kv_seq_save(kv_store_t *s, uint64_t seq);
int kv_seq_load(kv_store_t *s);

/*
 * The SEED file: recovery sets the empty zone's seed of the keys' hashes
 * to the directory's, or writes the zone's as the directory's if it has
 * none (a damaged one is logged and replaced).  KV_OK, or an error
 * writing it.
 */
int kv_seed_load(kv_store_t *s);


/*
 * kv_recover.c: takes the data directory lock (KV_ELOCKED if another process
 * holds it) into sh->lock_fd; kv_recover() calls it, and kvtool repair takes
 * the lock this way before it touches a store that recovery refuses.
 */
int kv_lock_dir(kv_store_t *s);

/* with the lock held: KV_OK if the store is open, else KV_EUNAVAIL, logged */
int kv_check_open(kv_store_t *s);


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


/* stores the n low bytes of v at p, little-endian; returns p + n */
static inline uint8_t *
kv_put_le(uint8_t *p, uint64_t v, int n)
{
    int  i;

    for (i = 0; i < n; i++) {
        *p++ = (uint8_t) (v >> (8 * i));
    }

    return p;
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
