#define _GNU_SOURCE

/*
 * A bump allocator over one mmap()ed region, with one free list per 8-byte
 * size class.  Every block has an 8-byte header (its size and, once free,
 * the next free block), so blocks stay 8-byte aligned and kv_ref_t 0 never
 * names a block.  Blocks of KV_ENTRY_PAGE bytes (the index's slot pages)
 * come from the top end instead, aligned to their size and without a
 * header, as a host must give them (kvstore.h).  Under AddressSanitizer
 * everything but live blocks and headers is poisoned, so the index cannot
 * touch freed entries unnoticed.
 *
 * The lock is an error-checking pthread mutex, so tests can run a
 * compaction in one thread while another writes, and misuse (re-entry,
 * unlock by a thread that does not hold it) still aborts.
 */

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kv_arena.h"
#include "kv_internal.h"


/* blocks up to 64 KiB are recycled; bigger ones (bucket arrays) are not */
#define KV_ARENA_CLASSES  8192


typedef struct {
    uint32_t  size;
    uint32_t  next;      /* free list link, in 8-byte units from base */
} kv_arena_hdr_t;


struct kv_arena_s {
    uint8_t          *base;
    size_t            size;
    size_t            top;
    size_t            pages;    /* where the pages carved from the end
                                   begin */
    uint32_t          free_pages;  /* a free page, in 8-byte units, whose
                                      first 4 bytes name the next */
    const kv_host_t  *outer;    /* kv_arena_host_over()'s */
    pthread_mutex_t   mutex;
    pthread_t         owner;
    int               locked;   /* written only by the mutex's holder */
    uint32_t          free[KV_ARENA_CLASSES];
};


static void
kv_arena_check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "kv_arena: %s\n", what);
        abort();
    }
}


/*
 * Only the holder can see locked set with itself as owner; for any other
 * thread the check fails, which is the misuse it reports.
 */
static int
kv_arena_held(kv_arena_t *a)
{
    return a->locked && pthread_equal(a->owner, pthread_self());
}


static void *
kv_arena_page(kv_arena_t *a)
{
    uint8_t  *p;

    if (a->free_pages != 0) {
        p = a->base + (size_t) a->free_pages * 8;
        kv_unpoison(p, KV_ENTRY_PAGE);
        memcpy(&a->free_pages, p, sizeof(uint32_t));

        return p;
    }

    if (a->pages - a->top < KV_ENTRY_PAGE) {
        return NULL;
    }

    a->pages -= KV_ENTRY_PAGE;
    p = a->base + a->pages;
    kv_unpoison(p, KV_ENTRY_PAGE);

    return p;
}


static void *
kv_arena_alloc(void *ctx, size_t size)
{
    size_t           n;
    kv_arena_t      *a;
    kv_arena_hdr_t  *h;

    a = ctx;
    kv_arena_check(kv_arena_held(a), "alloc without the lock");

    if (size == KV_ENTRY_PAGE) {
        return kv_arena_page(a);
    }

    n = size ? (size + 7) & ~(size_t) 7 : 8;

    if (n / 8 < KV_ARENA_CLASSES && a->free[n / 8] != 0) {
        h = (kv_arena_hdr_t *) (a->base + (size_t) a->free[n / 8] * 8);
        a->free[n / 8] = h->next;

    } else {
        if (n > UINT32_MAX || n + sizeof(kv_arena_hdr_t) > a->pages - a->top)
        {
            return NULL;
        }

        h = (kv_arena_hdr_t *) (a->base + a->top);
        a->top += sizeof(kv_arena_hdr_t) + n;

        kv_unpoison(h, sizeof(kv_arena_hdr_t));
        h->size = (uint32_t) n;
    }

    kv_unpoison(h + 1, size);

    return h + 1;
}


static void
kv_arena_free(void *ctx, void *p)
{
    kv_arena_t      *a;
    kv_arena_hdr_t  *h;

    a = ctx;
    kv_arena_check(kv_arena_held(a), "free without the lock");

    if ((uint8_t *) p >= a->base + a->pages) {
        memcpy(p, &a->free_pages, sizeof(uint32_t));
        a->free_pages = (uint32_t) (((uint8_t *) p - a->base) / 8);
        kv_poison((uint8_t *) p + sizeof(uint32_t),
                  KV_ENTRY_PAGE - sizeof(uint32_t));
        return;
    }

    h = (kv_arena_hdr_t *) p - 1;
    kv_poison(p, h->size);

    if (h->size / 8 < KV_ARENA_CLASSES) {
        h->next = a->free[h->size / 8];
        a->free[h->size / 8] = (uint32_t) (((uint8_t *) h - a->base) / 8);
    }
}


static void
kv_arena_lock(void *ctx)
{
    int          err;
    kv_arena_t  *a;

    a = ctx;
    err = pthread_mutex_lock(&a->mutex);
    kv_arena_check(err != EDEADLK, "lock taken twice");
    kv_arena_check(err == 0, "pthread_mutex_lock() failed");
    a->owner = pthread_self();
    a->locked = 1;
}


static void
kv_arena_unlock(void *ctx)
{
    kv_arena_t  *a;

    a = ctx;
    kv_arena_check(kv_arena_held(a), "unlock without the lock");
    a->locked = 0;
    kv_arena_check(pthread_mutex_unlock(&a->mutex) == 0,
                   "pthread_mutex_unlock() failed");
}


static void
kv_arena_log(void *ctx, int level, int err, const char *msg)
{
    static const char  *levels[] = { "?", "error", "warn", "notice", "info" };

    (void) ctx;

    fprintf(stderr, "kv [%s] %s%s%s\n",
            level >= KV_LOG_ERR && level <= KV_LOG_INFO ? levels[level] : "?",
            msg, err ? ": " : "", err ? strerror(err) : "");
}


/* kv_arena_host_over(): the outer host's hooks, with its context */

static void
kv_arena_outer_log(void *ctx, int level, int err, const char *msg)
{
    const kv_host_t  *outer = ((kv_arena_t *) ctx)->outer;

    outer->log(outer->ctx, level, err, msg);
}


static int
kv_arena_outer_sync(void *ctx, int fd, const char *path)
{
    const kv_host_t  *outer = ((kv_arena_t *) ctx)->outer;

    return outer->sync(outer->ctx, fd, path);
}


static int
kv_arena_outer_stopping(void *ctx)
{
    const kv_host_t  *outer = ((kv_arena_t *) ctx)->outer;

    return outer->stopping(outer->ctx);
}


static uint64_t
kv_arena_outer_now_ms(void *ctx)
{
    const kv_host_t  *outer = ((kv_arena_t *) ctx)->outer;

    return outer->now_ms(outer->ctx);
}


size_t
kv_arena_size_for(uint64_t data, uint32_t *nbuckets)
{
    uint64_t  n, size;

    n = data / 128 > 1024 ? data / 128 : 1024;
    n = n < 0x80000000u ? n : 0x80000000u;
    size = 64 * 1024 * 1024 + n * 8 + data / 2 * 5;

    *nbuckets = (uint32_t) n;

    size = size < KV_ARENA_MAX ? size : KV_ARENA_MAX;

    /* a 32-bit host: as much as it can address, or mmap() says no */
    return size < SIZE_MAX ? (size_t) size : SIZE_MAX & ~(size_t) 0xfff;
}


kv_arena_t *
kv_arena_create(size_t size)
{
    int                   err;
    kv_arena_t           *a;
    pthread_mutexattr_t   attr;

    /* whole pages, so that the pages carved from the end are aligned */
    size &= ~(size_t) (KV_ENTRY_PAGE - 1);

    /* the first 8 bytes are reserved; kv_ref_t reaches 32 GiB */
    if (size == 0 || size > KV_ARENA_MAX) {
        errno = EINVAL;
        return NULL;
    }

    a = calloc(1, sizeof(kv_arena_t));
    if (a == NULL) {
        return NULL;
    }

    /*
     * Reserved, not committed: only the pages the index touches count, so
     * the default overcommit heuristic does not refuse an arena sized for
     * the worst case (vm.overcommit_memory=2 and ulimit -v still count it
     * all).  Page-aligned, as the slot pages must be.
     */
    a->base = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a->base == MAP_FAILED) {
        err = errno;
        free(a);
        errno = err;
        return NULL;
    }

    err = pthread_mutexattr_init(&attr);
    if (err != 0) {
        goto failed;
    }

    err = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    if (err == 0) {
        err = pthread_mutex_init(&a->mutex, &attr);
    }

    pthread_mutexattr_destroy(&attr);

    if (err != 0) {
        goto failed;
    }

    a->size = size;
    a->top = 8;       /* kv_ref_t 0 is the null reference */
    a->pages = size;

    kv_poison(a->base, size);

    return a;

failed:

    munmap(a->base, size);
    free(a);
    errno = err;

    return NULL;
}


void
kv_arena_destroy(kv_arena_t *a)
{
    kv_unpoison(a->base, a->size);
    pthread_mutex_destroy(&a->mutex);
    munmap(a->base, a->size);
    free(a);
}


void
kv_arena_host(kv_arena_t *a, kv_host_t *host)
{
    /* the optional hooks stay NULL */
    memset(host, 0, sizeof(kv_host_t));

    host->ctx = a;
    host->base = a->base;
    host->size = a->size;
    host->alloc = kv_arena_alloc;
    host->free = kv_arena_free;
    host->lock = kv_arena_lock;
    host->unlock = kv_arena_unlock;
    host->log = kv_arena_log;
}


void
kv_arena_host_over(kv_arena_t *a, const kv_host_t *outer, kv_host_t *host)
{
    kv_arena_host(a, host);

    a->outer = outer;

    if (outer->log != NULL) {
        host->log = kv_arena_outer_log;
    }

    if (outer->sync != NULL) {
        host->sync = kv_arena_outer_sync;
    }

    if (outer->stopping != NULL) {
        host->stopping = kv_arena_outer_stopping;
    }

    if (outer->now_ms != NULL) {
        host->now_ms = kv_arena_outer_now_ms;
    }
}
