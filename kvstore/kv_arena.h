/*
 * kv_arena: a kv_host_t over one mmap()ed region, for unit tests,
 * command-line tools and the private index of a conversion to
 * index=sorted (nginx serves from its shared-memory zone instead).
 */

#ifndef KV_ARENA_H
#define KV_ARENA_H

#include "kvstore.h"


typedef struct kv_arena_s  kv_arena_t;


/* the largest arena a kv_ref_t can address */
#define KV_ARENA_MAX  ((uint64_t) 32 * 1024 * 1024 * 1024)


/*
 * The size of an arena whose index holds every key of a log of data
 * bytes, and its number of buckets: a live frame takes at least 17 bytes
 * of log and its index entry at most 39 bytes more than the key, so 2.5
 * bytes of arena per byte of log hold any index=hash store (index=sorted's
 * skip list adds 8 bytes a key on average: within it for keys of 3 bytes
 * or more, and a 64 MiB margin on top); at most KV_ARENA_MAX.  Pages of
 * the region never touched cost nothing.
 */
size_t kv_arena_size_for(uint64_t data, uint32_t *nbuckets);

/* NULL if the region cannot be allocated; errno says why. */
kv_arena_t *kv_arena_create(size_t size);
void kv_arena_destroy(kv_arena_t *a);

/*
 * Fills host with the arena's memory, a lock (a pthread mutex, so threads
 * can share the arena) that aborts on misuse (re-entry by the holder,
 * unlock or alloc or free by a thread not holding it) and a log to stderr;
 * the optional hooks (sync, stopping) are NULL: set them after.
 */
void kv_arena_host(kv_arena_t *a, kv_host_t *host);

/*
 * kv_arena_host() whose log, sync, stopping and now_ms are outer's (those
 * outer has): a private index that logs, flushes and stops as outer does.
 */
void kv_arena_host_over(kv_arena_t *a, const kv_host_t *outer,
    kv_host_t *host);

#endif /* KV_ARENA_H */
