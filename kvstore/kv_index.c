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
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include <xxhash.h>

#include "kv_internal.h"


/* the hard caps bound the limits of a configuration: called locked */
static void
kv_limits(kv_shared_t *sh, uint32_t max_key, uint32_t max_value)
{
    /* stored atomically: kv_set_limits() does it without the lock */
    __atomic_store_n(&sh->max_key,
                     max_key < KV_MAX_KEY_LIMIT ? max_key : KV_MAX_KEY_LIMIT,
                     __ATOMIC_RELAXED);
    __atomic_store_n(&sh->max_value,
                     max_value < KV_MAX_VALUE_LIMIT ? max_value
                                                    : KV_MAX_VALUE_LIMIT,
                     __ATOMIC_RELAXED);
}


/*
 * A seed for the keys' hashes, new with every zone, so that no client can
 * choose keys that pile up in one bucket (a chain every lookup of them
 * walks under the store lock), as Redis seeds its dictionaries' hashes.
 */
static uint64_t
kv_hash_seed(void)
{
    uint64_t         seed;
    struct timespec  ts;

    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) == sizeof(seed)) {
        return seed;
    }

    /* no entropy yet, early in a boot: the clock and pid are not guessed */
    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return XXH3_64bits_withSeed(&ts, sizeof(ts), (uint64_t) getpid());
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
    sh->hash_seed = kv_hash_seed();
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


int
kv_shared_compatible(const kv_shared_t *sh)
{
    return sh->magic == KV_SHARED_MAGIC;
}


/*
 * Without the host lock: nginx's master calls it on a reload, with SIGCHLD
 * blocked, so a worker that died holding the lock would never be reaped,
 * nor the lock released, while the master waited for it.
 */
void
kv_set_limits(kv_store_t *s)
{
    kv_limits(s->sh, s->conf.max_key, s->conf.max_value);
}


uint64_t
kv_key_hash(const kv_shared_t *sh, const uint8_t *key, size_t klen)
{
    return XXH3_64bits_withSeed(key, klen, sh->hash_seed);
}


static kv_ref_t *
kv_bucket(const kv_host_t *host, kv_shared_t *sh, const uint8_t *key,
    size_t klen)
{
    kv_ref_t  *buckets;

    buckets = kv_ptr(host, sh->buckets);

    return &buckets[kv_key_hash(sh, key, klen) & (sh->nbuckets - 1)];
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
 * Only an entry with an expiry time has the 8 bytes that hold it, and only
 * index=sorted's entries a tower (kv_entry_size()).
 */
uint64_t
kv_entry_expiry(const kv_entry_t *e)
{
    uint64_t  t;

    if (!(e->flags & KV_ENTRY_EXPIRES)) {
        return 0;
    }

    memcpy(&t, (const uint8_t *) e + kv_entry_key_end(e->klen), sizeof(t));

    return t;
}


static void
kv_entry_set_expiry(kv_entry_t *e, uint64_t t)
{
    memcpy((uint8_t *) e + kv_entry_key_end(e->klen), &t, sizeof(t));
}


int
kv_entry_expired(const kv_entry_t *e, uint64_t now)
{
    uint64_t  t;

    if (e->flags & KV_ENTRY_MASK) {
        return 0;
    }

    t = kv_entry_expiry(e);

    return t != 0 && t <= now;
}


void
kv_entry_loc(const kv_entry_t *e, kv_loc_t *loc)
{
    loc->segment = (uint32_t) (e->loc >> KV_LOC_OFFSET_BITS);
    loc->offset = e->loc & (((uint64_t) 1 << KV_LOC_OFFSET_BITS) - 1);
    loc->flen = e->flen;
    loc->vlen = e->vlen;
    loc->type = e->type;
    loc->expires_at_ms = kv_entry_expiry(e);
    loc->seq = 0;
    loc->verified = (e->flags & KV_ENTRY_VERIFIED) != 0;
}


/*
 * A page of index slots: this header, then slots of one size.  The pages
 * of a size that have a free slot form a list; a page whose slots are all
 * free goes back to the host (but the last with room), so that the memory
 * of keys gone serves keys of any size and height.
 */
typedef struct {
    kv_ref_t   prev;           /* the size's pages with a free slot */
    kv_ref_t   next;
    kv_ref_t   free;           /* the page's first free slot */
    uint16_t   used;           /* its slots in use */
    uint16_t   size;           /* of its slots */
} kv_slot_page_t;


static kv_slot_page_t *
kv_slot_page_of(const kv_host_t *host, const kv_entry_t *e)
{
    size_t  off;

    off = (size_t) ((const uint8_t *) e - host->base);

    return (kv_slot_page_t *) (host->base + (off & ~(size_t)
                                                   (KV_ENTRY_PAGE - 1)));
}


static void
kv_slot_page_link(const kv_host_t *host, kv_ref_t *head, kv_slot_page_t *pg)
{
    pg->prev = 0;
    pg->next = *head;

    if (*head != 0) {
        ((kv_slot_page_t *) kv_ptr(host, *head))->prev = kv_ref(host, pg);
    }

    *head = kv_ref(host, pg);
}


static void
kv_slot_page_unlink(const kv_host_t *host, kv_ref_t *head,
    kv_slot_page_t *pg)
{
    if (pg->prev != 0) {
        ((kv_slot_page_t *) kv_ptr(host, pg->prev))->next = pg->next;

    } else {
        *head = pg->next;
    }

    if (pg->next != 0) {
        ((kv_slot_page_t *) kv_ptr(host, pg->next))->prev = pg->prev;
    }
}


/* a new page of slots of size bytes, on the size's list, or NULL */
static kv_slot_page_t *
kv_slot_page_new(const kv_host_t *host, kv_ref_t *head, size_t size)
{
    size_t           i;
    uint8_t         *page;
    kv_entry_t      *slot;
    kv_slot_page_t  *pg;

    page = host->alloc(host->ctx, KV_ENTRY_PAGE);
    if (page == NULL) {
        return NULL;
    }

    if ((size_t) (page - host->base) % KV_ENTRY_PAGE != 0) {
        kv_log(host, KV_LOG_ERR, 0, "the host gave an index page not "
               "aligned to %d bytes", KV_ENTRY_PAGE);
        host->free(host->ctx, page);
        return NULL;
    }

    pg = (kv_slot_page_t *) page;
    pg->used = 0;
    pg->size = (uint16_t) size;
    pg->free = 0;

    /* the slots go on the page's list last first, so the first is taken */

    for (i = (KV_ENTRY_PAGE - sizeof(kv_slot_page_t)) / size; i-- > 0; ) {
        slot = (kv_entry_t *) (page + sizeof(kv_slot_page_t) + i * size);
        slot->next = pg->free;
        pg->free = kv_ref(host, slot);

        if (!host->shared) {
            kv_poison((uint8_t *) slot + sizeof(slot->next),
                      size - sizeof(slot->next));
        }
    }

    kv_slot_page_link(host, head, pg);

    return pg;
}


static kv_entry_t *
kv_entry_alloc(const kv_host_t *host, kv_shared_t *sh, size_t klen,
    unsigned flags)
{
    size_t           size;
    kv_ref_t        *head;
    kv_entry_t      *e;
    kv_slot_page_t  *pg;

    size = kv_entry_size(klen, flags);

    if (size > KV_ENTRY_SLOT_MAX) {
        e = host->alloc(host->ctx, size);

    } else {
        head = &sh->slot_pages[size / 8 - 1];

        /* a worker killed as it filled a page may have left it listed */

        while (*head != 0
               && ((kv_slot_page_t *) kv_ptr(host, *head))->free == 0)
        {
            kv_slot_page_unlink(host, head, kv_ptr(host, *head));
        }

        if (*head != 0) {
            pg = kv_ptr(host, *head);

        } else {
            pg = kv_slot_page_new(host, head, size);
            if (pg == NULL) {
                return NULL;
            }
        }

        e = kv_ptr(host, pg->free);

        if (!host->shared) {
            kv_unpoison(e, size);
        }

        /* counted first: killed between the two, the page is never freed */
        pg->used++;
        pg->free = e->next;

        if (pg->free == 0) {
            /* full: off the list until a slot of it is freed */
            kv_slot_page_unlink(host, head, pg);
        }
    }

    if (e != NULL) {
        memset(e, 0, sizeof(kv_entry_t));
        e->klen = (uint16_t) klen;
        e->flags = (uint8_t) flags;
    }

    return e;
}


void
kv_entry_free(const kv_host_t *host, kv_shared_t *sh, kv_entry_t *e)
{
    size_t           size;
    kv_ref_t        *head;
    kv_slot_page_t  *pg;

    size = kv_entry_size(e->klen, e->flags);

    if (size > KV_ENTRY_SLOT_MAX) {
        host->free(host->ctx, e);
        return;
    }

    head = &sh->slot_pages[size / 8 - 1];
    pg = kv_slot_page_of(host, e);

    /*
     * Its last slot in use: the page goes back to the host, unless it is
     * the size's only page with room (a key freed and added again would
     * take a page and give it back each time).
     */
    if (pg->used == 1 && !(pg->free != 0 && pg->prev == 0 && pg->next == 0))
    {
        if (pg->free != 0) {
            kv_slot_page_unlink(host, head, pg);
        }

        host->free(host->ctx, pg);
        return;
    }

    if (pg->free == 0) {
        kv_slot_page_link(host, head, pg);
    }

    e->next = pg->free;
    pg->free = kv_ref(host, e);
    pg->used--;

    /* only the link stays addressable while the slot is free */
    if (!host->shared) {
        kv_poison((uint8_t *) e + sizeof(e->next), size - sizeof(e->next));
    }
}


int
kv_index_reserve(const kv_host_t *host, kv_shared_t *sh, const uint8_t *key,
    size_t klen, uint64_t expires_at_ms, kv_slot_t *slot)
{
    unsigned     flags;
    kv_entry_t  *e;

    flags = expires_at_ms ? KV_ENTRY_EXPIRES : 0;

    slot->old = kv_index_find(host, sh, key, klen, &slot->link);

    if (slot->old != NULL && (slot->old->flags & KV_ENTRY_EXPIRES) == flags)
    {
        slot->e = slot->old;
        return KV_OK;
    }

    if (sh->sorted) {
        flags |= kv_order_height(sh, key, klen) << KV_ENTRY_HEIGHT_SHIFT;
    }

    e = kv_entry_alloc(host, sh, klen, flags);
    if (e == NULL) {
        return KV_ENOMEM;
    }

    memcpy(e->key, key, klen);

    if (flags) {
        kv_entry_set_expiry(e, 0);
    }

    slot->e = e;

    return KV_OK;
}


/* a new key's entry, filled, becomes visible */
static void
kv_index_link(const kv_host_t *host, kv_shared_t *sh, kv_entry_t *e)
{
    kv_ref_t  *head;

    if (sh->sorted) {
        kv_order_insert(host, sh, e);
    }

    head = kv_bucket(host, sh, e->key, e->klen);

    e->next = *head;
    *head = kv_ref(host, e);
}


/*
 * The entry found through link goes; the caller frees it.  The bucket
 * first: a worker killed between the two steps leaves an entry only the
 * list holds, which listings skip, never a key they cannot see.
 */
static void
kv_index_unlink(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e, kv_order_finger_t *f)
{
    *link = e->next;

    if (sh->sorted) {
        kv_order_remove(host, sh, e, f);
    }
}


/*
 * Points the slot's entry at a new frame, linking it in (a new key) or in
 * place of the old entry.  The frame the old entry pointed at becomes
 * dead; a new entry is filled completely before being linked.
 */
void
kv_index_set(const kv_host_t *host, kv_shared_t *sh, kv_slot_t *slot,
    uint64_t loc, uint32_t flen, uint32_t vlen, unsigned type,
    uint64_t expires_at_ms)
{
    kv_entry_t  *e, *old;

    e = slot->e;
    old = slot->old;

    if (old != NULL && (old->flags & KV_ENTRY_MASK)) {
        /* a key written again after a delete: the mask becomes its entry */
        sh->stats.masks--;
        sh->stats.keys++;

    } else if (old != NULL) {
        sh->stats.live_bytes -= old->flen;
        sh->stats.dead_bytes += old->flen;
        sh->stats.expiring -= (kv_entry_expiry(old) != 0);
    }

    e->flen = flen;
    e->loc = loc;
    e->vlen = vlen;
    e->type = (uint8_t) type;
    e->flags &= (uint8_t) ~(KV_ENTRY_VERIFIED | KV_ENTRY_MASK);

    if (e->flags & KV_ENTRY_EXPIRES) {
        kv_entry_set_expiry(e, expires_at_ms);
    }

    sh->stats.expiring += (expires_at_ms != 0);
    sh->stats.live_bytes += flen;

    if (old == NULL) {
        kv_index_link(host, sh, e);
        sh->stats.keys++;

    } else if (e != old) {
        if (sh->sorted) {
            kv_order_replace(host, sh, old, e);
        }

        e->next = old->next;
        *slot->link = kv_ref(host, e);

        kv_entry_free(host, sh, old);
    }
}


/* Frees the entry a reservation allocated and that was not used. */
void
kv_index_release(const kv_host_t *host, kv_shared_t *sh, kv_slot_t *slot)
{
    if (slot->e != slot->old) {
        kv_entry_free(host, sh, slot->e);
    }
}


/* Unlinks the entry found through link and frees it; its frame is dead. */
void
kv_index_remove(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e, kv_order_finger_t *f)
{
    kv_index_unlink(host, sh, link, e, f);

    if (e->flags & KV_ENTRY_MASK) {
        sh->stats.masks--;

    } else {
        sh->stats.keys--;
        sh->stats.live_bytes -= e->flen;
        sh->stats.dead_bytes += e->flen;
        sh->stats.expiring -= (kv_entry_expiry(e) != 0);
    }

    kv_entry_free(host, sh, e);
}


int
kv_index_crowded(const kv_shared_t *sh)
{
    return sh->stats.keys + sh->stats.masks >= (uint64_t) sh->nbuckets / 2;
}


void
kv_index_moved(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e, kv_order_finger_t *f)
{
    kv_index_unlink(host, sh, link, e, f);

    sh->stats.keys--;
    sh->stats.live_bytes -= e->flen;
    sh->stats.expiring -= (kv_entry_expiry(e) != 0);

    kv_entry_free(host, sh, e);
}


void
kv_index_mask(kv_shared_t *sh, kv_entry_t *e, uint64_t loc, uint32_t flen)
{
    if (!(e->flags & KV_ENTRY_MASK)) {
        sh->stats.keys--;
        sh->stats.masks++;
        sh->stats.live_bytes -= e->flen;
        sh->stats.dead_bytes += e->flen;
        sh->stats.expiring -= (kv_entry_expiry(e) != 0);
    }

    e->loc = loc;
    e->flen = flen;
    e->vlen = 0;
    e->flags |= KV_ENTRY_MASK;
    e->flags &= (uint8_t) ~KV_ENTRY_VERIFIED;
}


void
kv_index_set_mask(const kv_host_t *host, kv_shared_t *sh, kv_slot_t *slot,
    uint64_t loc, uint32_t flen)
{
    kv_entry_t  *e;

    e = slot->e;
    e->loc = loc;
    e->flen = flen;
    e->vlen = 0;
    e->type = 0;
    e->flags |= KV_ENTRY_MASK;

    kv_index_link(host, sh, e);

    sh->stats.masks++;
}


int
kv_index_add_mask(const kv_host_t *host, kv_shared_t *sh,
    const uint8_t *key, size_t klen, uint64_t loc, uint32_t flen)
{
    int        rc;
    kv_slot_t  slot;

    rc = kv_index_reserve(host, sh, key, klen, 0, &slot);
    if (rc != KV_OK) {
        return rc;
    }

    kv_index_set_mask(host, sh, &slot, loc, flen);

    return KV_OK;
}


/*
 * A merge running in index=sorted may publish sorted segments that hold
 * the key (it collected the entry before this delete): the mask must stay
 * to hide them even while none exist yet, else the key comes back.
 */
void
kv_index_drop(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e, uint64_t loc, uint32_t flen)
{
    if (sh->runs.n != 0 || (sh->sorted && sh->compactor != 0)) {
        kv_index_mask(sh, e, loc, flen);

    } else {
        kv_index_remove(host, sh, link, e, NULL);
    }
}


void
kv_index_expire(const kv_host_t *host, kv_shared_t *sh, kv_ref_t *link,
    kv_entry_t *e)
{
    kv_index_drop(host, sh, link, e, e->loc, e->flen);
    sh->stats.expired++;
}


uint64_t
kv_now_ms(const kv_host_t *host)
{
    struct timespec  ts;

    if (host->now_ms != NULL) {
        return host->now_ms(host->ctx);
    }

    clock_gettime(CLOCK_REALTIME, &ts);

    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
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


void
kv_index_clear(kv_store_t *s)
{
    uint32_t          i;
    kv_ref_t         *buckets;
    kv_entry_t       *e;
    kv_shared_t      *sh;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;

    host->lock(host->ctx);

    buckets = kv_ptr(host, sh->buckets);

    for (i = 0; i < sh->nbuckets; i++) {
        while (buckets[i] != 0) {
            e = kv_ptr(host, buckets[i]);
            buckets[i] = e->next;
            kv_entry_free(host, sh, e);
        }
    }

    memset(sh->order_head, 0, sizeof(sh->order_head));
    sh->order_levels = 0;
    memset(&sh->runs, 0, sizeof(kv_runs_t));
    memset(&sh->stats, 0, sizeof(kv_stats_t));
    sh->seq = 0;
    sh->expire_next = 0;

    host->unlock(host->ctx);
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
    kv_ref_t   *ref, first;

    ref = kv_bucket(host, sh, key, klen);

    if (stage == 0) {
        __builtin_prefetch(ref);
        return;
    }

    /* without the lock too: a prefetch of any address is harmless */
    first = __atomic_load_n(ref, __ATOMIC_RELAXED);

    if (first != 0) {
        __builtin_prefetch(kv_ptr(host, first));
    }
}


/*
 * An expired put replays as a delete would: the key's time ran out, and
 * the older records of the key must not come back in its place.
 */
int
kv_replay_apply(kv_store_t *s, uint32_t id, const kv_record_t *rec,
    uint64_t off, uint32_t flen)
{
    int               rc;
    char              kbuf[KV_KEY_STR_LEN], path[PATH_MAX];
    kv_ref_t         *link;
    kv_slot_t         slot;
    kv_entry_t       *e;
    kv_shared_t      *sh;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;

    if (rec->tombstone
        || (rec->expires_at_ms != 0 && rec->expires_at_ms <= kv_now_ms(host)))
    {
        e = kv_index_find(host, sh, rec->key, rec->klen, &link);

        if (e == NULL && sh->runs.n != 0) {
            /* the sorted segments may hold the key: hide it */
            rc = kv_index_add_mask(host, sh, rec->key, rec->klen,
                                   KV_LOC(id, off), flen);
            if (rc != KV_OK) {
                goto full;
            }

        } else if (e != NULL && rec->tombstone) {
            kv_index_drop(host, sh, link, e, KV_LOC(id, off), flen);

        } else if (e != NULL) {
            kv_index_expire(host, sh, link, e);
        }

        sh->stats.dead_bytes += flen;

    } else {
        rc = kv_index_reserve(host, sh, rec->key, rec->klen,
                              rec->expires_at_ms, &slot);
        if (rc != KV_OK) {
            goto full;
        }

        kv_index_set(host, sh, &slot, KV_LOC(id, off), flen,
                     (uint32_t) rec->vlen, rec->type, rec->expires_at_ms);
    }

    if (rec->seq > sh->seq) {
        sh->seq = rec->seq;
    }

    sh->stats.recovered_records++;

    return KV_OK;

full:

    kv_segment_path(s, id, path);
    kv_key_str(rec->key, rec->klen, kbuf);
    s->replay_full = 1;

    if (kv_recover_converts(s)) {
        kv_log(host, KV_LOG_NOTICE, 0, "the log segments of \"%s\" hold "
               "more keys than the index memory (full at key \"%s\" in "
               "\"%s\" at offset %" PRIu64 "): index=sorted moves them into "
               "sorted segments first, by a full merge (\"kvtool compact "
               "--index=sorted DIR\" does the same with nginx stopped)",
               s->conf.dir, kbuf, path, off);
        return rc;
    }

    /* the advice first: a long key or path cuts the end of a message */
    kv_log(host, KV_LOG_ERR, 0, "index memory too small for the keys in "
           "\"%s\": %s (full at key \"%s\" in \"%s\" at offset %" PRIu64 ")",
           s->conf.dir,
           sh->sorted ? "index=sorted holds the keys of the log segments: "
                        "give the zone more memory, or move them into "
                        "sorted segments (nginx does as it starts; "
                        "\"kvtool compact --index=sorted DIR\" with nginx "
                        "stopped)"
                      : "index=hash holds every key: give the zone more "
                        "memory, or use index=sorted, which moves the keys "
                        "into sorted segments as nginx starts",
           kbuf, path, off);

    return rc;
}


/*
 * Sweeps 1/16 of the buckets from where the last call stopped, at most
 * KV_EXPIRE_MAX (a host calls it from its event loop: a few ms), holding
 * the lock for KV_EXPIRE_CHUNK buckets at a time and letting waiting
 * requests in between.
 */
#define KV_EXPIRE_CHUNK  4096
#define KV_EXPIRE_MAX    65536

uint64_t
kv_expire(kv_store_t *s)
{
    uint32_t          i, end, todo, chunk;
    uint64_t          now, dropped;
    kv_ref_t         *ref, *buckets;
    kv_entry_t       *e;
    kv_shared_t      *sh;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;
    dropped = 0;

    host->lock(host->ctx);

    todo = sh->nbuckets / 16 ? sh->nbuckets / 16 : sh->nbuckets;
    todo = todo < KV_EXPIRE_MAX ? todo : KV_EXPIRE_MAX;

    while (sh->open && sh->stats.expiring != 0 && todo != 0) {
        now = kv_now_ms(host);
        buckets = kv_ptr(host, sh->buckets);
        chunk = todo < KV_EXPIRE_CHUNK ? todo : KV_EXPIRE_CHUNK;
        i = sh->expire_next;
        end = i + chunk < sh->nbuckets ? i + chunk : sh->nbuckets;
        todo -= end - i;

        for ( /* void */ ; i < end; i++) {
            ref = &buckets[i];

            while (*ref != 0) {
                e = kv_ptr(host, *ref);

                if (kv_entry_expired(e, now)) {
                    kv_index_expire(host, sh, ref, e);
                    dropped++;
                    continue;
                }

                ref = &e->next;
            }
        }

        sh->expire_next = end & (sh->nbuckets - 1);

        kv_lock_pause(s);
    }

    host->unlock(host->ctx);

    return dropped;
}
