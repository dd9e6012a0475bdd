/*
 * kvtool: the operations command line for a kvstore data directory.  It
 * links the engine itself, with the index in a kv_arena instead of nginx
 * shared memory.
 */

#ifndef KVTOOL_H
#define KVTOOL_H

#include <stdio.h>

#include "kv_arena.h"
#include "kv_internal.h"      /* a friend of the engine: see there */


/* exit codes */
#define KVTOOL_OK      0
#define KVTOOL_FAIL    1     /* damage found, or the operation failed */
#define KVTOOL_USAGE   2

/* how kvtool_open() prepares a store */
#define KVTOOL_SCAN    0     /* no recovery: for kv_scan_segment() only */
#define KVTOOL_READ    1     /* read-only recovery: no lock, no change */
#define KVTOOL_WRITE   2     /* recovery under the directory lock, in the
                                directory's index mode (sorted if it has
                                a TABLES file) */
#define KVTOOL_LOCK    3     /* the directory lock, no recovery yet */
#define KVTOOL_WRITE_HASH    4  /* KVTOOL_WRITE, as index=hash */
#define KVTOOL_WRITE_SORTED  5  /* KVTOOL_WRITE, as index=sorted */


typedef struct {
    kv_arena_t   *arena;
    kv_host_t     host;
    kv_shared_t  *sh;
    kv_store_t    s;
} kvtool_store_t;


/*
 * A damaged byte range of a segment: from a bad frame to the next valid
 * one, or to the end of the file (tail), or in the last segment the flush
 * a power cut interrupted: from the bad frame to the preallocated zeros
 * (the records after the gap were never acknowledged).  Recovery cuts a
 * tail of either kind.
 */
#define KVTOOL_TAIL_TORN   1
#define KVTOOL_TAIL_FLUSH  2

typedef struct {
    uint64_t   off;
    uint64_t   len;
    unsigned   tail;          /* KVTOOL_TAIL_*, 0: valid records follow */
} kvtool_damage_t;


/* the hint file of a segment */
#define KVTOOL_HINT_NONE       0     /* absent */
#define KVTOOL_HINT_OK         1     /* loads and agrees with the segment */
#define KVTOOL_HINT_BAD        2     /* unusable, or disagrees */
#define KVTOOL_HINT_UNCHECKED  3     /* its segment is damaged */


typedef struct {
    uint32_t          id;
    uint64_t          size;
    uint64_t          records;
    kvtool_damage_t  *damage;        /* malloc()ed */
    size_t            ndamage;
    uint64_t          preallocated;  /* zeros after the last record */
    unsigned          hint;          /* KVTOOL_HINT_* */
    char              why[512];      /* why the hint is bad */
} kvtool_segment_t;


/* kvtool_util.c */
void kvtool_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *kvtool_last_log(void);
int kvtool_open(kvtool_store_t *t, const char *dir, uint64_t data,
    unsigned mode, uint64_t segment_size);
void kvtool_close(kvtool_store_t *t);
long kvtool_lock_holder(const char *dir);
void kvtool_hint_path(const char *dir, uint32_t id, char path[PATH_MAX]);

/* kvtool_verify.c */
int kvtool_verify_segment(kvtool_store_t *t, uint32_t id, int last,
    kvtool_store_t *index, kvtool_segment_t *seg);
void kvtool_segment_free(kvtool_segment_t *seg);

/* kvtool_ring.c: owners as nginx's "hash ... consistent" picks them */
typedef struct {
    uint32_t   hash;
    uint32_t   server;               /* index in kvtool_ring_t.names */
} kvtool_point_t;

typedef struct {
    char            *list;           /* the names point into it */
    char           **names;          /* as written in the upstream block */
    uint32_t        *weights;
    size_t           nservers;
    kvtool_point_t  *points;         /* sorted by hash */
    size_t           npoints;
} kvtool_ring_t;

int kvtool_ring_init(kvtool_ring_t *ring, const char *list);
void kvtool_ring_free(kvtool_ring_t *ring);
size_t kvtool_ring_owner(const kvtool_ring_t *ring, const uint8_t *key,
    size_t klen);
size_t kvtool_ring_find(const kvtool_ring_t *ring, const char *name);

/* kvtool_http.c */
char *kvtool_http_path(const char *prefix, const uint8_t *key, size_t klen);
/* the longest ETag value kvtool_http() gives back, quotes included */
#define KVTOOL_ETAG_LEN  32

int kvtool_http(const char *server, const char *method, const char *path,
    const char *headers, const char *ctype, const uint8_t *body,
    size_t blen, char *etag);

/* one file per command */
int kvtool_check(const char *dir);
int kvtool_dump(const char *dir);
/* mode: KVTOOL_WRITE, or KVTOOL_WRITE_HASH or _SORTED (--index=) */
int kvtool_compact(const char *dir, uint64_t segment_size, unsigned mode);
int kvtool_import_seed(const char *file, const char *dir,
    uint64_t segment_size);
int kvtool_repair(const char *dir);
int kvtool_reshard(int argc, char **argv);    /* owner and reshard */

#endif /* KVTOOL_H */
