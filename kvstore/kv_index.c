#define _GNU_SOURCE

/*
 * The index: a chained hash table in host memory, sized once and never
 * resized, since a resize could not be made crash-atomic.  Entries are
 * published with a single store of their reference, after being filled.
 * Recovery and hint loading apply each record they find through
 * kv_replay_apply().
 */

#include <inttypes.h>
#include <string.h>

#include <xxhash.h>

#include "kv_internal.h"


/* the hard caps bound the limits of a configuration: called locked */
static void
kv_limits(kv_shared_t *sh, uint32_t max_key, uint32_t max_value)
{
    sh->max_key = max_key < KV_MAX_KEY_LIMIT ? max_key : KV_MAX_KEY_LIMIT;
    sh->max_value = max_value < KV_MAX_VALUE_LIMIT ? max_value
                                                   : KV_MAX_VALUE_LIMIT;
}


kv_shared_t *
kv_shared_create(const kv_host_t *host, uint32_t nbuckets, uint32_t max_key,
    uint32_t max_value)
{
    int                  err;
    uint32_t             n;
    kv_ref_t            *buckets;
    kv_shared_t         *sh;
    pthread_mutexattr_t  attr;

    n = 1;

    while (n < nbuckets && n < 0x80000000u) {
        n <<= 1;
    }

    host->lock(host->ctx);

    sh = host->alloc(host->ctx, sizeof(kv_shared_t));
    buckets = NULL;

    if (sh != NULL) {
        buckets = host->alloc(host->ctx, (size_t) n * sizeof(kv_ref_t));
        if (buckets == NULL) {
            host->free(host->ctx, sh);
        }
    }

    if (buckets == NULL) {
        host->unlock(host->ctx);
        kv_log(host, KV_LOG_ERR, 0,
               "index memory too small for an index of %u buckets", n);
        return NULL;
    }

    memset(sh, 0, sizeof(kv_shared_t));
    memset(buckets, 0, (size_t) n * sizeof(kv_ref_t));

    sh->magic = KV_SHARED_MAGIC;
    sh->nbuckets = n;
    sh->buckets = kv_ref(host, buckets);
    kv_limits(sh, max_key, max_value);
    sh->lock_fd = -1;

    /* robust: a process killed while flushing hands the mutex on */

    err = pthread_mutexattr_init(&attr);

    if (err == 0) {
        err = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);

        if (err == 0) {
            err = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
        }

        if (err == 0) {
            err = pthread_mutex_init(&sh->flush_mutex, &attr);
        }

        pthread_mutexattr_destroy(&attr);
    }

    if (err != 0) {
        host->free(host->ctx, buckets);
        host->free(host->ctx, sh);
        host->unlock(host->ctx);
        kv_log(host, KV_LOG_ERR, err, "initializing the flush mutex failed");
        return NULL;
    }

    host->unlock(host->ctx);

    return sh;
}


void
kv_set_limits(kv_store_t *s)
{
    s->host->lock(s->host->ctx);
    kv_limits(s->sh, s->conf.max_key, s->conf.max_value);
    s->host->unlock(s->host->ctx);
}


static kv_ref_t *
kv_bucket(const kv_host_t *host, kv_shared_t *sh, const uint8_t *key,
    size_t klen)
{
    kv_ref_t  *buckets;

    buckets = kv_ptr(host, sh->buckets);

    return &buckets[XXH3_64bits(key, klen) & (sh->nbuckets - 1)];
}


kv_entry_t *
kv_index_find(const kv_host_t *host, kv_shared_t *sh, const uint8_t *key,
    size_t klen, kv_ref_t **link)
{
    kv_ref_t    *ref;
    kv_entry_t  *e;

    ref = kv_bucket(host, sh, key, klen);

    while (*ref != 0) {
        e = kv_ptr(host, *ref);

        if (e->klen == klen && memcmp(e->key, key, klen) == 0) {
            if (link != NULL) {
                *link = ref;
            }

            return e;
        }

        ref = &e->next;
    }

    return NULL;
}


/*
 * Entries live in slots of their own size, 8-byte steps, carved from
 * pages: nginx's slab allocator would round a 40-byte entry (a 16-byte
 * key) up to 64 bytes.  A freed slot serves the next entry of its size.
 */
static size_t
kv_entry_size(size_t klen)
{
    return (sizeof(kv_entry_t) + klen + 7) & ~(size_t) 7;
}


static kv_entry_t *
kv_entry_alloc(const kv_host_t *host, kv_shared_t *sh, size_t klen)
{
    size_t       size, i;
    uint8_t     *page;
    kv_ref_t    *head;
    kv_entry_t  *e;

    size = kv_entry_size(klen);

    if (size > KV_ENTRY_SLOT_MAX) {
        return host->alloc(host->ctx, size);
    }

    head = &sh->free_slots[size / 8 - 1];

    if (*head == 0) {
        page = host->alloc(host->ctx, KV_ENTRY_PAGE);
        if (page == NULL) {
            return NULL;
        }

        /* slot 0 is returned, the others go on the free list */

        for (i = KV_ENTRY_PAGE / size - 1; i > 0; i--) {
            e = (kv_entry_t *) (page + i * size);
            e->klen = (uint16_t) klen;
            kv_entry_free(host, sh, e);
        }

        e = (kv_entry_t *) page;

    } else {
        e = kv_ptr(host, *head);
        kv_unpoison(e, size);
        *head = e->next;
    }

    return e;
}


/* a slot never used is freed too: only its klen must be set */
void
kv_entry_free(const kv_host_t *host, kv_shared_t *sh, kv_entry_t *e)
{
    size_t     size;
    kv_ref_t  *head;

    size = kv_entry_size(e->klen);

    if (size > KV_ENTRY_SLOT_MAX) {
        host->free(host->ctx, e);
        return;
    }

    head = &sh->free_slots[size / 8 - 1];

    e->next = *head;
    *head = kv_ref(host, e);

    /* only the link (and flen) stay addressable while the slot is free */
    kv_poison((uint8_t *) e + 8, size - 8);
}


/*
 * Returns the key's entry, or a new unlinked one (*fresh = 1) that the
 * caller passes to kv_index_set() or frees; NULL if memory is exhausted.
 */
kv_entry_t *
kv_index_reserve(const kv_host_t *host, kv_shared_t *sh, const uint8_t *key,
    size_t klen, int *fresh)
{
    kv_entry_t  *e;

    e = kv_index_find(host, sh, key, klen, NULL);
    if (e != NULL) {
        *fresh = 0;
        return e;
    }

    e = kv_entry_alloc(host, sh, klen);
    if (e == NULL) {
        return NULL;
    }

    memset(e, 0, sizeof(kv_entry_t));
    e->klen = (uint16_t) klen;
    memcpy(e->key, key, klen);

    *fresh = 1;

    return e;
}


/*
 * Points the entry at a new frame.  The frame an existing entry pointed at
 * becomes dead; a fresh entry is filled completely before being linked.
 */
void
kv_index_set(const kv_host_t *host, kv_shared_t *sh, kv_entry_t *e,
    int fresh, uint64_t loc, uint32_t flen, uint32_t vlen, unsigned type)
{
    kv_ref_t  *head;

    if (!fresh) {
        sh->stats.live_bytes -= e->flen;
        sh->stats.dead_bytes += e->flen;
    }

    e->flen = flen;
    e->loc = loc;
    e->vlen = vlen;
    e->type = (uint8_t) type;

    if (fresh) {
        head = kv_bucket(host, sh, e->key, e->klen);

        e->next = *head;
        *head = kv_ref(host, e);

        sh->stats.keys++;
    }

    sh->stats.live_bytes += flen;
}


/* Unlinks the entry found through link and frees it; its frame is dead. */
void
kv_index_remove(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e)
{
    *link = e->next;

    sh->stats.keys--;
    sh->stats.live_bytes -= e->flen;
    sh->stats.dead_bytes += e->flen;

    kv_entry_free(host, sh, e);
}


/*
 * Calls fn for every entry, bucket by bucket, until fn returns something
 * other than KV_OK, which is then returned.  fn must not change the index.
 */
int
kv_index_walk(const kv_host_t *host, kv_shared_t *sh, kv_walk_pt fn,
    void *ctx)
{
    int          rc;
    uint32_t     i;
    kv_ref_t    *buckets, ref;
    kv_entry_t  *e;

    buckets = kv_ptr(host, sh->buckets);

    for (i = 0; i < sh->nbuckets; i++) {
        for (ref = buckets[i]; ref != 0; ref = e->next) {
            e = kv_ptr(host, ref);

            rc = fn(ctx, e);
            if (rc != KV_OK) {
                return rc;
            }
        }
    }

    return KV_OK;
}


/*
 * Starts loading what a kv_index_find() of the key will touch, so that bulk
 * inserts (hint loading) overlap their cache and TLB misses instead of
 * paying for each in turn: the bucket (stage 0), then, once the bucket is
 * cached, the first entry of its chain (stage 1).
 */
void
kv_index_prefetch(const kv_host_t *host, kv_shared_t *sh, const uint8_t *key,
    size_t klen, int stage)
{
    kv_ref_t  *ref;

    ref = kv_bucket(host, sh, key, klen);

    if (stage == 0) {
        __builtin_prefetch(ref);

    } else if (*ref != 0) {
        __builtin_prefetch(kv_ptr(host, *ref));
    }
}


int
kv_replay_apply(kv_store_t *s, uint32_t id, const kv_record_t *rec,
    uint64_t off, uint32_t flen)
{
    int               fresh;
    char              kbuf[KV_KEY_STR_LEN], path[PATH_MAX];
    kv_ref_t         *link;
    kv_entry_t       *e;
    kv_shared_t      *sh;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;

    if (rec->tombstone) {
        e = kv_index_find(host, sh, rec->key, rec->klen, &link);
        if (e != NULL) {
            kv_index_remove(host, sh, link, e);
        }

        sh->stats.dead_bytes += flen;

    } else {
        e = kv_index_reserve(host, sh, rec->key, rec->klen, &fresh);
        if (e == NULL) {
            kv_segment_path(s, id, path);
            kv_log(host, KV_LOG_ERR, 0, "index memory too small for the keys "
                   "in \"%s\" (full at key \"%s\" in \"%s\" at offset %"
                   PRIu64 ")", s->conf.dir,
                   kv_key_str(rec->key, rec->klen, kbuf), path, off);
            return KV_ENOMEM;
        }

        kv_index_set(host, sh, e, fresh, KV_LOC(id, off), flen,
                     (uint32_t) rec->vlen, rec->type);
    }

    if (rec->seq > sh->seq) {
        sh->seq = rec->seq;
    }

    sh->stats.recovered_records++;

    return KV_OK;
}
