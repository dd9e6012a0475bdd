/*
 * kvstore: a Bitcask-style key-value engine in plain C11.
 *
 * Data lives in append-only log segments in one directory; a hash index
 * (key -> location of the newest record) lives in memory that the host
 * provides, typically an nginx shared-memory zone seen by every worker.
 *
 * The engine knows nothing of nginx: memory, the store lock and logging come
 * through kv_host_t, so the same code runs in nginx, in unit tests and in
 * command-line tools.
 *
 * Two kinds of state:
 *   kv_shared_t  lives in host memory (shared between processes): counters,
 *                the write position, the index (in index=sorted also
 *                kept in key order, for listings).  Fields change with the
 *                host lock held; the few that hot paths read without it
 *                (synced, sync_failed, first_segment, flusher) only move
 *                one way and are read and written atomically, and so
 *                are lock_tickets and lock_served (kv_lock()).  Hosts
 *                never read it: kv_stats() says what they may want to
 *                know.
 *   kv_store_t   one per process: the directory, open file descriptors
 *                (and sorted segments' tables, for lookups and listings).
 */

#ifndef KVSTORE_H
#define KVSTORE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>


/* return codes */
#define KV_OK          0
#define KV_NOTFOUND   -1     /* no such key */
#define KV_ENOMEM     -2     /* the index memory is full */
#define KV_EIO        -3     /* a read or write failed (errno is logged) */
#define KV_ENOSPC     -4     /* the disk is full */
#define KV_ECORRUPT   -5     /* a record failed its checksum or decoding */
#define KV_ELOCKED    -6     /* another process holds the data directory */
#define KV_EINVAL     -7     /* bad argument (key or value size) */
#define KV_EUNAVAIL   -8     /* the store is not open */
#define KV_EBUSY      -9     /* a compaction is already running */
#define KV_ESTALE     -10    /* the record moved (compaction): look it up
                                again */
#define KV_ECANCELED  -11    /* kv_compact_cancel() stopped a compaction */
#define KV_EPRECOND   -12    /* a condition of kv_write() does not hold */

/* log levels, mapped by the host onto its own */
#define KV_LOG_ERR     1
#define KV_LOG_WARN    2
#define KV_LOG_NOTICE  3
#define KV_LOG_INFO    4

/* content types, kept in the record and in the index */
#define KV_TYPE_OCTET  0
#define KV_TYPE_JSON   1

#define KV_MAX_KEY_LIMIT    32767               /* hard cap on max_key */

/*
 * Index entries up to KV_ENTRY_SLOT_MAX bytes live in slots of their size
 * (8-byte steps) carved from KV_ENTRY_PAGE-byte pages, which go back to
 * the host once all their slots are free; bigger ones come from the host
 * allocator.
 */
#define KV_ENTRY_PAGE       4096
#define KV_ENTRY_SLOT_MAX   512
/*
 * index=sorted: levels of the skip list that keeps the index's keys in
 * order; with one entry in four rising a level, enough for 16 million
 * entries
 */
#define KV_ORDER_LEVELS     12
#define KV_MAX_VALUE_LIMIT  (1024u * 1024 * 1024) /* hard cap on max_value */

/*
 * On-disk frame: u32 payload length, u64 XXH3-64 of the payload seeded with
 * that length (both little-endian), then the protobuf-encoded kv.Record.
 */
#define KV_FRAME_HEADER  12

/* file names inside the data directory */
#define KV_LOCK_FILE     "LOCK"
#define KV_SEGMENT_FMT   "%010u.kvlog"     /* ids from 1, in write order */
#define KV_HINT_FMT      "%010u.kvhint"    /* index of an immutable segment */
#define KV_TABLE_FMT     "%010u.kvsst"     /* sparse index and filter of a
                                              sorted segment */
#define KV_MERGE_FILE    "MERGE"           /* a compaction is incomplete */
#define KV_TABLES_FILE   "TABLES"          /* index=sorted: which segments
                                              are sorted */
#define KV_SEQ_FILE      "SEQ"             /* no sequence number at or below
                                              it is ever written again */
#define KV_SEED_FILE     "SEED"            /* of the keys' hashes */
#define KV_TMP_SUFFIX    ".tmp"            /* written, then renamed */

/*
 * fsync policies: the host's to carry out, with kv_sync() and kv_durable();
 * the engine itself only writes.
 */
#define KV_FSYNC_OFF       0   /* write(2): survives a process crash */
#define KV_FSYNC_INTERVAL  1   /* the host calls kv_sync() periodically */
#define KV_FSYNC_ALWAYS    2   /* acknowledge once kv_durable() says so */

/*
 * Defaults.  64 MiB segments bound the part of the log that start-up must
 * scan without a hint file to well under a second, and let compaction give
 * space back in steps of that size.  Compaction starts when half of the
 * data is dead or 512 MiB are (Bitcask merges at 60% or 512 MB).
 */
#define KV_SEGMENT_SIZE_DEFAULT        (64 * 1024 * 1024)
/* the bounds of segment_size= and kvtool's --segment-size */
#define KV_SEGMENT_SIZE_MIN            ((uint64_t) 64 * 1024)
#define KV_SEGMENT_SIZE_MAX            ((uint64_t) 1 << 39)
/*
 * For hosts that flush every write: a flush that overwrites zeros already
 * on disk commits no file size: a flush a fifth shorter, under load, here.
 */
#define KV_PREALLOCATE_DEFAULT         (1024 * 1024)
#define KV_COMPACT_DEAD_PCT_DEFAULT    50
#define KV_COMPACT_DEAD_BYTES_DEFAULT  (512ull * 1024 * 1024)


/*
 * Index references are 32-bit: offsets in 8-byte units from host->base, so
 * an entry costs 24 bytes plus its key instead of needing 64-bit pointers.
 * All memory that host->alloc returns must lie within 32 GiB after base.
 */
typedef uint32_t  kv_ref_t;


typedef struct {
    void      *ctx;
    uint8_t   *base;
    size_t     size;     /* of the memory at base that alloc() hands out;
                            0: unknown (then no write walks the key
                            order before taking the lock) */

    /*
     * Called with the lock held.  Returns 8-byte aligned memory or NULL;
     * KV_ENTRY_PAGE bytes aligned to KV_ENTRY_PAGE from base (as nginx's
     * slab allocator gives a page).
     */
    void    *(*alloc)(void *ctx, size_t size);
    void     (*free)(void *ctx, void *p);

    /* The one store lock: serializes appends and guards the index. */
    void     (*lock)(void *ctx);
    void     (*unlock)(void *ctx);

    /* err is an errno value (0 if none); msg is a complete sentence. */
    void     (*log)(void *ctx, int level, int err, const char *msg);

    /*
     * Optional (NULL: fdatasync() for files, fsync() for directories):
     * every flush to stable storage goes through it, so tests can record
     * the order and inject failures.  Returns 0 or -1 with errno set.
     */
    int      (*sync)(void *ctx, int fd, const char *path);

    /*
     * Optional: 1 once the host is shutting down.  A compaction polls it
     * as it polls kv_compact_cancel()'s flag, from its own thread, so a
     * stopping process does not wait for a whole compaction; writing hint
     * files checks it between files.
     */
    int      (*stopping)(void *ctx);

    /*
     * Optional (NULL: CLOCK_REALTIME): the wall-clock time in ms since the
     * Unix epoch, against which expiry times are compared.
     */
    uint64_t (*now_ms)(void *ctx);
    /*
     * 1 if other processes map the same memory (nginx workers): the engine
     * then does not poison for AddressSanitizer the index slots it frees,
     * as the shadow memory that records it is each process's own, and a
     * slot freed here and reused by another process would look poisoned
     * here.
     */
    unsigned   shared;
} kv_host_t;


typedef struct {
    uint32_t  next;      /* kv_ref_t of the next entry in the bucket */
    uint32_t  flen;      /* whole frame length, header included */
    uint64_t  loc;       /* segment << 40 | offset of the frame */
    uint32_t  vlen;      /* value length: the frame's last vlen bytes */
    uint16_t  klen;
    uint8_t   type;      /* KV_TYPE_* */
    uint8_t   flags;     /* KV_ENTRY_* of kv_internal.h */
    uint8_t   key[];     /* then, with KV_ENTRY_EXPIRES, the expiry time
                            at the next 8-byte boundary */
} kv_entry_t;


typedef struct {
    uint32_t  segment;
    uint64_t  offset;    /* of the frame in the segment */
    uint32_t  flen;
    uint32_t  vlen;
    uint8_t   type;
    uint64_t  expires_at_ms;   /* Unix time in ms; 0: never */
    uint64_t  seq;             /* the record's sequence number: set by
                                  kv_read(), kv_read_seq() and
                                  kv_open_value() */
    unsigned  verified;        /* kv_open_value() has checked the frame */
} kv_loc_t;


/*
 * A latency histogram: count[i] counts the samples of at most
 * KV_HIST_BOUNDS_US[i] microseconds (not cumulative), count[KV_HIST_N]
 * the slower ones.  kv_hist_add() updates it atomically.
 */
#define KV_HIST_N           14
#define KV_HIST_BOUNDS_US   { 50, 100, 250, 500, 1000, 2500, 5000, 10000,     \
                              25000, 50000, 100000, 250000, 500000, 1000000 }

typedef struct {
    uint64_t  count[KV_HIST_N + 1];
    uint64_t  sum_us;
} kv_hist_t;


typedef struct {
    uint64_t  keys;
    uint64_t  live_bytes;      /* frames the index points at */
    uint64_t  dead_bytes;      /* overwritten, deleted and tombstone frames */
    uint64_t  puts;
    uint64_t  deletes;
    uint64_t  write_errors;
    uint64_t  recovered_records;
    uint64_t  truncated_bytes; /* torn tail cut at the last recovery */
    uint64_t  segments;        /* segment files in the directory */
    uint64_t  fsyncs;          /* kv_sync() flushes */
    uint64_t  compactions;     /* completed */
    uint64_t  reclaimed_bytes; /* by compactions */
    uint64_t  compacted_bytes; /* written by compactions (and merges) */
    uint64_t  recovery_ms;     /* duration of the last recovery */
    uint64_t  expired;         /* keys dropped because their time ran out */
    uint64_t  expiring;        /* keys that have an expiry time */
    uint64_t  precond_failed;  /* writes refused by their conditions */
    kv_hist_t fsync_latency;   /* of kv_sync()'s flushes */
    uint64_t  masks;           /* index=sorted: entries that hide a
                                  deleted or expired key from the sorted
                                  segments */
    uint64_t  table_keys;      /* records in sorted segments */
    uint64_t  table_bytes;     /* their size, and their table files' */
    uint64_t  table_index_bytes;
    uint32_t  recovery_hints;  /* segments it loaded from hint files */
    uint32_t  recovery_scans;  /* segments it scanned */

    /*
     * The store's state at the moment of kv_stats(), for status and
     * readiness; kv_shared_t.stats leaves them zero.
     */
    uint32_t  open;            /* recovered, appends allowed */
    uint32_t  active_segment;  /* the segment appends go to */
    uint32_t  durable_segment; /* the segment the durable part ends in */
    uint32_t  compacting;      /* a compaction runs, in any process */
    uint32_t  sync_failed;     /* a flush failed: appends are refused */
    uint32_t  tables;          /* index=sorted: sorted segments */
    uint32_t  runs;            /* and the runs they form */
} kv_stats_t;


/*
 * index=sorted: the sorted segments form runs, oldest first; a run is
 * the ids [first, last], each holding a range of keys that the next one's
 * follows; a newer run's record of a key wins over an older one's.
 */
#define KV_RUNS_MAX  8

typedef struct {
    uint32_t    first;
    uint32_t    last;
    uint64_t    bytes;         /* of its segments */
} kv_run_t;

typedef struct {
    uint32_t    n;
    uint32_t    gen;           /* changes with every new set */
    kv_run_t    run[KV_RUNS_MAX];
} kv_runs_t;


typedef struct {
    uint32_t    magic;
    uint32_t    open;          /* recovery done, appends allowed */
    uint64_t    seq;           /* last sequence number written */
    uint32_t    segment;       /* active segment */
    uint32_t    nbuckets;      /* power of two */
    uint64_t    hash_seed;     /* of the keys' hashes, random, then the
                                  directory's (SEED): keys a client chose
                                  to share a bucket or a low skip-list
                                  height do not under another seed */
    uint64_t    write_off;     /* end of the last whole record */
    uint64_t    prealloc_end;  /* conf.preallocate: the active segment's
                                  zeros after write_off end here */
    kv_ref_t    buckets;       /* array of nbuckets kv_ref_t */
    uint32_t    max_key;       /* both stored and loaded atomically: */
    uint32_t    max_value;     /* kv_set_limits() takes no lock */
    int         lock_fd;       /* the data directory lock, held by the
                                  process that recovered the store */
    uint32_t    first_segment; /* no segment below it exists any more */
    uint64_t    synced;        /* KV_LOC: all before it is durable */
    uint32_t    sync_failed;   /* an fsync failed: nothing later is
                                  durable, appends are refused */
                               /* both stored atomically under the lock,
                                  read lock-free by kv_synced() */
    int32_t     compactor;     /* pid running a compaction, or 0 */
    uint32_t    compact_owed;  /* kv_compact_request() with no compaction
                                  completed since */
    uint32_t    expire_next;   /* the bucket kv_expire() sweeps next */
    kv_runs_t   runs;          /* index=sorted: the sorted segments */
    uint32_t    lock_tickets;  /* kv_lock() calls begun */
    uint32_t    lock_served;   /* the newest of them that got the lock */
    int32_t     flusher;       /* pid that claimed the next flush, or 0 */
    pthread_mutex_t  flush_mutex;  /* one kv_sync() flushes at a time;
                                      robust and process-shared */
    kv_ref_t    slot_pages[KV_ENTRY_SLOT_MAX / 8];  /* per slot size, the
                                                       pages with a free
                                                       slot */
    uint32_t    sorted;        /* index=sorted: sorted segments, and
                                  entries keep key order */
    uint32_t    order_levels;  /* the skip list's levels in use */
    kv_ref_t    order_head[KV_ORDER_LEVELS];   /* each level's first entry */
    kv_stats_t  stats;
} kv_shared_t;


typedef struct {
    const char         *dir;       /* data directory, absolute */
    uint32_t            max_key;
    uint32_t            max_value;
    uid_t               owner_uid; /* chown created files and the directory */
    gid_t               owner_gid; /* to these ids; (uid_t) -1: leave as is */
    uint64_t            segment_size;       /* roll over past this size */
    uint32_t            compact_dead_pct;   /* compaction thresholds */
    uint64_t            compact_dead_bytes;
                        /* 0 in any of these three: the KV_*_DEFAULT */
    uint64_t            preallocate;        /* zeros written ahead of the
                                               active segment's end, in
                                               steps of this size; 0: none
                                               (see kv_preallocate()) */
    unsigned            read_only;          /* recovery changes nothing
                                               and takes no lock (tools) */
    unsigned            sorted;             /* index=sorted: compaction
                                               writes sorted segments and
                                               the index holds only the
                                               keys written since */
    unsigned            convert;            /* index=sorted: a recovery
                                               whose index fills moves
                                               the log's keys into sorted
                                               segments (kv_recover()) */
} kv_conf_t;


#define KV_FD_CACHE  8

typedef struct {
    uint32_t            segment;   /* 0: free slot */
    int                 fd;
} kv_fd_t;


/*
 * One per process and per thread: descriptors are cached per handle, so a
 * thread-pool task uses a handle of its own.
 */
typedef struct kv_store_s  kv_store_t;

struct kv_store_s {
    kv_shared_t        *sh;
    const kv_host_t    *host;
    kv_conf_t           conf;
    kv_fd_t             fds[KV_FD_CACHE];  /* segments, opened lazily */
    uint32_t            fd_next;           /* round-robin eviction */
    uint64_t            written;   /* KV_LOC end of this handle's last
                                      append, for kv_durable() */
    int                 prealloc_errno;  /* of the failed preallocation
                                            warned of: quiet until one
                                            succeeds or fails otherwise */
    uint32_t            compact_cancel;  /* kv_compact_cancel() was called;
                                            __atomic builtins only */
    struct kv_table_s  *tables;    /* index=sorted: the sorted segments of */
    uint32_t            ntables;   /* generation tables_gen, opened, run */
    uint32_t            tables_gen;     /* after run; run r's are those */
    uint32_t            nruns;          /* before run_end[r] */
    uint32_t            run_end[KV_RUNS_MAX];
    kv_store_t         *spare;     /* index=sorted: a listing's handle,
                                      kept with its tables open for the
                                      next one; __atomic builtins only */
    uint32_t            replay_full;    /* kv_recover(): the index filled
                                           as it replayed the log */
};


/*
 * Lays out a fresh shared state with an index of about nbuckets buckets
 * (rounded up to a power of two) in host memory.  Takes the host lock.
 * Returns NULL if the memory is too small.
 */
kv_shared_t *kv_shared_create(const kv_host_t *host, uint32_t nbuckets,
    uint32_t max_key, uint32_t max_value);

/*
 * 1 if sh was laid out by this build of the engine: a host that keeps the
 * shared state across a reload checks it before a new build uses it.
 */
int kv_shared_compatible(const kv_shared_t *sh);

/* Binds a per-process handle and resolves conf's defaults; opens nothing. */
void kv_store_init(kv_store_t *s, kv_shared_t *sh, const kv_host_t *host,
    const kv_conf_t *conf);

/*
 * Makes s->conf's max_key and max_value the limits of every process's
 * writes: for a host that keeps the shared state across a change of
 * configuration (an nginx reload).  Does not take the host lock: a
 * write that holds it meanwhile sees the old limits or the new ones.
 */
void kv_set_limits(kv_store_t *s);

/* Closes the per-process descriptors (not the directory lock). */
void kv_store_close(kv_store_t *s);

/*
 * Cuts the zeros conf.preallocate wrote ahead off the active segment, for
 * a host stopping with no writer left: the files a clean stop leaves end
 * with their last record.
 */
int kv_store_trim(kv_store_t *s);

/*
 * Closes the cached descriptors of segments a compaction deleted, so that
 * their disk space is freed even by a handle that reads nothing more.
 */
void kv_store_sweep(kv_store_t *s);

/*
 * Creates the directory if missing, takes its lock (KV_ELOCKED if another
 * process holds it), scans the log, truncates a torn or corrupt tail with a
 * warning, rebuilds the index and marks the store open.  Run once, by the
 * process that owns the store's lifetime, before any request.
 *
 * index=sorted with conf.convert: if the log segments hold more keys than
 * the index memory, they are first moved into sorted segments by a full
 * merge over a private index of every key (mmap()ed, sized from the
 * directory, freed before this returns), and the recovery starts again.
 * Its host sets convert only where it can wait that long (nginx: at the
 * first start, not on a reload).
 */
int kv_recover(kv_store_t *s);

/*
 * Appends a record and points the index at it.  The record is written with
 * write(2) before this returns KV_OK.  On any failure nothing is indexed and
 * no partial record is left at the end of the log.
 */
int kv_put(kv_store_t *s, const uint8_t *key, size_t klen,
    const uint8_t *value, size_t vlen, unsigned type);

/* Appends a tombstone and drops the key.  KV_NOTFOUND if it was absent. */
int kv_delete(kv_store_t *s, const uint8_t *key, size_t klen);


/*
 * The sequence numbers of an HTTP If-Match or If-None-Match: n of them,
 * or KV_COND_ANY for "*" (the key exists); n 0: no condition.
 */
#define KV_COND_ANY  UINT32_MAX

typedef struct {
    uint32_t          n;
    const uint64_t   *seqs;
} kv_cond_t;

/* 1 if a record of sequence number seq satisfies c (n != 0) */
int kv_cond_holds(const kv_cond_t *c, uint64_t seq);


typedef struct {
    const uint8_t    *value;
    size_t            vlen;
    unsigned          type;          /* KV_TYPE_* */
    unsigned          tombstone;     /* a delete: value, type, expiry
                                        unused */
    uint64_t          expires_at_ms; /* Unix time in ms; 0: never */
    kv_cond_t         if_match;      /* the key's current record is one of
                                        these */
    kv_cond_t         if_none_match; /* ... and none of these */
    uint64_t          seq;           /* set: the sequence number written */
    unsigned          merge_due;     /* set: index=sorted wants a merge
                                        (kv_compact_begin()) */
} kv_write_t;

/*
 * kv_put() and kv_delete() with an expiry time and conditions, which are
 * checked under the same hold of the store lock as the append: of two
 * writers racing with the same If-Match, one gets KV_EPRECOND.  An expired
 * key is absent.  A delete of an absent key is KV_NOTFOUND whatever its
 * conditions (as HTTP ignores preconditions of a request that would fail
 * without them).
 */
int kv_write(kv_store_t *s, const uint8_t *key, size_t klen, kv_write_t *w);

/*
 * Looks up where the key's newest value lives.  An expired key is
 * KV_NOTFOUND, and its entry is dropped.
 */
int kv_lookup(kv_store_t *s, const uint8_t *key, size_t klen, kv_loc_t *loc);

/*
 * Reads the frame at loc into buf (loc->flen bytes) and verifies its
 * checksum; the value is then buf + loc->flen - loc->vlen.  Lock-free:
 * a record never changes once written.
 */
int kv_read(kv_store_t *s, kv_loc_t *loc, uint8_t *buf);

/*
 * Sets loc->seq from the first bytes of the frame at loc, for a caller
 * that needs the record's sequence number but not its value (HEAD).
 */
int kv_read_seq(kv_store_t *s, kv_loc_t *loc);

/*
 * For a value sent from its segment file instead of from memory: sets
 * loc->seq, and *fd to a descriptor of the segment that the caller owns
 * (a compaction may delete the file meanwhile; the descriptor still reads
 * it); the value is its loc->vlen bytes from kv_value_offset(loc).  The
 * first time a location is opened its checksum is verified, reading the
 * frame a piece at a time, and its index entry remembers it (key names
 * the entry); later opens trust it, as a block cache trusts the blocks it
 * checked.  KV_OK, KV_ESTALE if compaction deleted the segment first,
 * KV_ECORRUPT, KV_EIO, KV_ENOMEM.
 */
int kv_open_value(kv_store_t *s, const uint8_t *key, size_t klen,
    kv_loc_t *loc, int *fd);

/* the offset of loc's value in its segment */
#define kv_value_offset(loc)  ((loc)->offset + (loc)->flen - (loc)->vlen)

/*
 * Drops expired keys from a part of the index (1/16 of the buckets per
 * call, at most 65536, holding the lock for a few thousand buckets at a
 * time), so that keys nobody reads again still leave memory and count as
 * dead data.  Returns how many it dropped.  Cheap when no key has an
 * expiry.
 */
uint64_t kv_expire(kv_store_t *s);

/*
 * Listing keys in byte-wise order (memcmp, then the shorter first): a page
 * of at most limit keys that start with prefix and sort at or after from
 * (strictly after it if from_excl: a cursor).
 */
typedef struct {
    const uint8_t    *prefix;
    size_t            plen;
    const uint8_t    *from;
    size_t            flen;
    unsigned          from_excl;
    uint32_t          limit;       /* 1 to KV_ITER_MAX */
} kv_range_t;

#define KV_ITER_MAX  100000

typedef struct kv_iter_s  kv_iter_t;

/*
 * Collects the page: blocking, a pass over the whole index (run it in a
 * thread).  The index is walked in steps of 512 buckets, the lock taken
 * for each, so a writer waits at most one step: a key that exists during
 * the whole call is listed, one that exists at no moment of it is not,
 * and expired keys are not.
 * KV_OK with *it set, KV_EINVAL, KV_ENOMEM, KV_EUNAVAIL.
 */
int kv_iter_open(kv_store_t *s, const kv_range_t *range, kv_iter_t **it);

/*
 * The page's next key in order (valid until kv_iter_close()) and where its
 * record was at kv_iter_open(): KV_OK, or KV_NOTFOUND after the last.
 */
int kv_iter_next(kv_iter_t *it, const uint8_t **key, size_t *klen,
    kv_loc_t *loc);

/* 1 if keys of the range sort after the page's last */
int kv_iter_more(const kv_iter_t *it);

/*
 * With more: the key the next page starts after (its cursor), valid until
 * kv_iter_close(); KV_NOTFOUND if there is no next page.  In index=sorted
 * a page may hold fewer than limit keys and still have a next page.
 */
int kv_iter_resume(const kv_iter_t *it, const uint8_t **key, size_t *klen);

void kv_iter_close(kv_iter_t *it);

/*
 * Drops the handle listings keep for the next one (index=sorted) once a
 * merge replaced its tables.  Not under the store lock: from a timer.
 */
void kv_iter_sweep(kv_store_t *s);


/* Adds a sample of us microseconds to h, atomically. */
void kv_hist_add(kv_hist_t *h, uint64_t us);

/*
 * Makes every record appended so far durable: flushes each segment from
 * sh->synced to the current end (a finished segment once, the active one
 * up to now) and advances sh->synced.  Blocking: nginx runs it in a thread
 * pool.  Sets *durable to the position now durable.  A failed flush may
 * have dropped dirty pages, so it sets sh->sync_failed: this and every
 * later call fail with KV_EIO and appends are refused until a restart.
 */
int kv_sync(kv_store_t *s, uint64_t *durable);

/*
 * Advisory, for hosts whose processes each run kv_sync(): claims the next
 * flush for the caller (1), or 0 while another process's claimed flush has
 * not ended; that one will cover the caller's writes made so far.  Every
 * kv_sync() ends the claim when it is done, so one left by a dead process
 * ends with the next flush anyone makes.
 */
int kv_sync_claim(kv_store_t *s);

/* 1 if everything before pos (a KV_LOC) is durable, 0 if not yet,
 * KV_EIO after a failed flush. */
int kv_durable(kv_store_t *s, uint64_t pos);

/* Sets *pos to the end of the durable part of the log (a KV_LOC); KV_OK,
 * or KV_EIO after a failed flush.  Lock-free. */
int kv_synced(kv_store_t *s, uint64_t *pos);

/*
 * 1 if the dead-data thresholds call for a compaction, or one was
 * requested that no compaction has completed since.
 */
int kv_compact_due(kv_store_t *s);

/*
 * Records that a compaction was asked for (by an operator), between
 * kv_compact_begin() and kv_compact().  kv_compact_due() says 1 until a
 * compaction ends other than cancelled: one cancelled because its process
 * stopped (a reload) is started again by the next process's check.
 */
void kv_compact_request(kv_store_t *s);

/*
 * Gives up the claim of kv_compact_begin(), and the request, when the
 * compaction cannot be started after all (no thread to run it).
 */
void kv_compact_release(kv_store_t *s);

/*
 * Claims the store's one compaction: KV_OK, or KV_EBUSY while another live
 * process runs one (a claim left by a dead pid is taken over).  A claim
 * clears the cancel request of s: call it on the handle that kv_compact()
 * and kv_compact_cancel() then use.
 */
int kv_compact_begin(kv_store_t *s);

/*
 * Run after kv_compact_begin(), blocking (a thread or a tool): rolls the
 * active segment, copies the live records of every older segment into new
 * segments (with hint files) numbered between them and the new active one,
 * points each index entry that still refers to an old copy at the new one,
 * and deletes the old segments.  Tombstones are dropped: every older
 * segment is merged.  A kill at any moment leaves a store that recovers
 * with every acknowledged write and no resurrected key.  Releases the
 * claim.  KV_ECANCELED if kv_compact_cancel() stopped it.
 */
int kv_compact(kv_store_t *s);

/*
 * Asks the kv_compact() running on s in another thread (or about to run
 * there after kv_compact_begin(s)) to stop: it only sets a flag, atomically,
 * so it is cheap and async-signal-safe.  kv_compact() checks the flag while
 * it copies (before each record it scans and each output's hint file) and
 * then undoes its work as recovery would after a crash: it deletes its
 * outputs and MERGE, leaves the index and the inputs as they were (the log
 * stays rolled to a new segment), counts no compaction, logs a notice and
 * returns KV_ECANCELED.  Once MERGE is removed the outputs are part of the
 * store; the rest (index swaps after one read of the outputs, deleting the
 * inputs) writes no data and is completed regardless of the flag, and
 * kv_compact() returns what it would have.  kv_compact_begin() clears the
 * flag: a request made before the claim is forgotten.
 */
void kv_compact_cancel(kv_store_t *s);

/*
 * Writes the missing hint file of each immutable segment (the segment is
 * flushed first, so a hint never describes data that is not durable).
 * Blocking.
 */
int kv_write_hints(kv_store_t *s);

/* Copies the counters and the state under the lock. */
void kv_stats(kv_store_t *s, kv_stats_t *stats);

/* A short English description of a return code. */
const char *kv_strerror(int rc);

#endif /* KVSTORE_H */
