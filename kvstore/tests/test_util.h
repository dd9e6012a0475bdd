/*
 * Helpers shared by the kvstore unit tests: temporary directories, a store
 * over an arena host, captured log messages and raw segment access.
 */

#ifndef KV_TEST_UTIL_H
#define KV_TEST_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "kv_arena.h"
#include "kv_internal.h"


#define KV_TEST_ARENA  (4 * 1024 * 1024)


typedef struct {
    kv_arena_t   *arena;
    kv_host_t     host;
    kv_shared_t  *sh;
    kv_store_t    s;
} kv_test_store_t;


/* the last message logged at each level, and how many */
extern char  kv_test_log_msg[KV_LOG_INFO + 1][1024];
extern int   kv_test_log_count[KV_LOG_INFO + 1];

void kv_test_log_reset(void);

/* how many times text was logged at level since the last reset */
int kv_test_logged(int level, const char *text);

/* host->sync of the hosts kv_test_host() makes from now on (NULL: none) */
extern int  (*kv_test_sync)(void *ctx, int fd, const char *path);

/*
 * A host->sync that dies at flush number kv_test_kill_at (0: never),
 * counting them in kv_test_syncs, with exit status KV_TEST_KILLED; it
 * never flushes, since a process killed keeps the page cache (and the
 * tests run faster).
 */
#define KV_TEST_KILLED  3

extern int  kv_test_kill_at;
extern int  kv_test_syncs;

int kv_test_kill_sync(void *ctx, int fd, const char *path);

/* the clock (Unix ms) of the hosts kv_test_host() makes; 0: the real one */
extern uint64_t  kv_test_now;

/* A fresh directory under $TMPDIR (or /tmp) into dir[PATH_MAX]. */
void kv_test_mkdtemp(char *dir);

/* Removes dir and the plain files in it. */
void kv_test_rmdir(const char *dir);

/* An arena host with the log captured; the arena is zone_size bytes. */
void kv_test_host(kv_test_store_t *t, size_t zone_size);

/*
 * A fresh kv_shared_t over a new arena, bound to dir, then kv_recover();
 * returns what kv_recover() returned.
 */
int kv_test_open(kv_test_store_t *t, const char *dir, size_t zone_size,
    uint32_t nbuckets);

/* The configuration kv_test_open() uses: 1024-byte keys, 16 MiB values. */
void kv_test_conf(kv_conf_t *conf, const char *dir);

/* kv_test_open() with a configuration of the caller's. */
int kv_test_open_conf(kv_test_store_t *t, const kv_conf_t *conf,
    size_t zone_size, uint32_t nbuckets);

/*
 * kv_test_open() with segments of segment_size bytes (small ones roll over
 * after a few records), asserting that it opens.
 */
void kv_test_open_small(kv_test_store_t *t, const char *dir,
    uint64_t segment_size);

/* Closes the store and its lock, as the owning process exiting would. */
void kv_test_close(kv_test_store_t *t);

/* Reads the value of key into a malloc()ed buffer; returns kv_read()'s rc. */
int kv_test_get(kv_test_store_t *t, const void *key, size_t klen,
    uint8_t **value, size_t *vlen);

/* Asserts that key holds exactly value. */
void kv_test_expect(kv_test_store_t *t, const void *key, size_t klen,
    const void *value, size_t vlen);

void kv_test_segment(const char *dir, uint32_t id, char *path);
void kv_test_path(const char *dir, const char *name, char *path);
uint8_t *kv_test_read_file(const char *path, size_t *len);
void kv_test_write_file(const char *path, const uint8_t *data, size_t len);
uint64_t kv_test_file_size(const char *path);

/*
 * Asserts that segment id's hint file (and, with table set, its table
 * file), as a compaction wrote them from the records it copied, are byte
 * for byte what a scan of the segment writes.
 */
void kv_test_same_as_scanned(kv_store_t *s, uint32_t id, int table);

#endif /* KV_TEST_UTIL_H */
