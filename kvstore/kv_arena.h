/*
 * kv_arena: a kv_host_t over one malloc()ed region, for unit tests and
 * command-line tools (nginx uses its shared-memory zone instead).
 */

#ifndef KV_ARENA_H
#define KV_ARENA_H

#include "kvstore.h"


typedef struct kv_arena_s  kv_arena_t;


/* NULL if the region cannot be allocated. */
kv_arena_t *kv_arena_create(size_t size);
void kv_arena_destroy(kv_arena_t *a);

/*
 * Fills host with the arena's memory, a lock (a pthread mutex, so threads
 * can share the arena) that aborts on misuse (re-entry by the holder,
 * unlock or alloc or free by a thread not holding it) and a log to stderr;
 * the optional hooks (sync, stopping) are NULL: set them after.
 */
void kv_arena_host(kv_arena_t *a, kv_host_t *host);

#endif /* KV_ARENA_H */
