#define _GNU_SOURCE

/*
 * index=sorted: the index's entries in key order, for listings.  A skip
 * list (Pugh; LevelDB's memtable is one) threaded through the entries:
 * each entry carries a tower of links, one per level it rises to, after
 * its key.  Every change of the index keeps it, under the lock, so it
 * costs O(log n) per new or removed key and nothing per overwrite.
 *
 * Links are published bottom up, and unlinked top down, each with one
 * store: a level-0 walk never meets a half-linked entry, and an entry
 * missing from an upper level only makes a search walk further.
 */


#include "kv_internal.h"


/*
 * One entry in four rises a level.  The height comes from the key's hash
 * (bits the bucket number does not use), so every entry of a key has the
 * same one; the hash is seeded per zone, so clients cannot choose keys
 * that all stay on the lowest level and make each search a walk.
 */
unsigned
kv_order_height(const kv_shared_t *sh, const uint8_t *key, size_t klen)
{
    unsigned  h;
    uint64_t  bits;

    bits = kv_key_hash(sh, key, klen) >> 40;

    for (h = 1; h < KV_ORDER_LEVELS && (bits & 3) == 0; h++) {
        bits >>= 2;
    }

    return h;
}


static kv_ref_t *
kv_order_tower(const kv_entry_t *e)
{
    return (kv_ref_t *) ((uint8_t *) e + kv_entry_tower_off(e->klen,
                                                             e->flags));
}


/*
 * The levels an entry can be linked on: its height, but no more than the
 * list's (only those levels have a predecessor from kv_order_find()).
 */
static unsigned
kv_order_linked_height(const kv_shared_t *sh, const kv_entry_t *e)
{
    unsigned  h;

    h = KV_ENTRY_HEIGHT(e->flags);

    return h < sh->order_levels ? h : sh->order_levels;
}


/*
 * For each level, the tower (the head's or an entry's) whose link at that
 * level points at the first entry not below key.  With a finger, the
 * search starts where the last one through it ended, if that was below
 * key: removals in key order then cost a few steps each, not a search.
 * Each level starts from the finger's entry on it until a level moves
 * past that: the entries below are then past the finger's too, and a
 * search from the finger costs the log of the distance, not the distance.
 */
static void
kv_order_find(const kv_host_t *host, kv_shared_t *sh, const uint8_t *key,
    size_t klen, kv_ref_t **prev, kv_order_finger_t *f)
{
    int          l, from;
    kv_ref_t    *x;
    kv_entry_t  *n, *xe;

    from = f != NULL && f->valid
           && (f->node[0] == NULL
               || kv_key_cmp(f->node[0]->key, f->node[0]->klen, key, klen)
                  < 0);
    x = sh->order_head;
    xe = NULL;

    for (l = (int) sh->order_levels - 1; l >= 0; l--) {
        if (from) {
            xe = f->node[l];
            x = xe != NULL ? kv_order_tower(xe) : sh->order_head;
        }

        while (x[l] != 0) {
            n = kv_ptr(host, x[l]);

            if (kv_key_cmp(n->key, n->klen, key, klen) >= 0) {
                break;
            }

            x = kv_order_tower(n);
            xe = n;
            from = 0;
        }

        prev[l] = x;

        if (f != NULL) {
            f->node[l] = xe;
        }
    }

    if (f != NULL) {
        f->valid = 1;
    }
}


/*
 * The walk before the lock reads entries that other processes change,
 * free and reuse meanwhile: it copies each field once, trusts no link
 * until it has checked that the entry and its tower lie in the zone,
 * stops after a bounded number of steps, and compares keys with a loop
 * of its own (memcmp() under AddressSanitizer would check a freed slot's
 * poisoned bytes, which the walk may read and then ignores).
 */
#define KV_ORDER_WARM_STEPS  (KV_ORDER_LEVELS * 32)


__attribute__((no_sanitize_address))
const kv_entry_t *
kv_order_warm(const kv_host_t *host, const kv_shared_t *sh,
    const uint8_t *key, size_t klen)
{
    int                l, c;
    size_t             off, i, n;
    uint8_t            flags;
    uint16_t           nklen;
    unsigned           steps;
    kv_ref_t           ref, down;
    const kv_ref_t    *x;
    const kv_entry_t  *e;

    if (host->size < sizeof(kv_entry_t)) {
        return NULL;
    }

    l = (int) __atomic_load_n(&sh->order_levels, __ATOMIC_RELAXED);
    l = l < KV_ORDER_LEVELS ? l : KV_ORDER_LEVELS;
    x = sh->order_head;
    e = NULL;
    steps = 0;

    while (--l >= 0) {

        for ( ;; ) {
            ref = __atomic_load_n(&x[l], __ATOMIC_RELAXED);
            off = (size_t) ref * 8;
            e = NULL;

            if (ref == 0) {
                break;
            }

            if (++steps > KV_ORDER_WARM_STEPS
                || off > host->size - sizeof(kv_entry_t))
            {
                return NULL;
            }

            /*
             * where the walk goes if e is not below key: fetched while e
             * is, two cache misses in flight instead of one after the
             * other (a prefetch does not fault, whatever it is given)
             */
            if (l > 0) {
                down = __atomic_load_n(&x[l - 1], __ATOMIC_RELAXED);
                __builtin_prefetch(kv_ptr(host, down));
            }

            e = kv_ptr(host, ref);
            nklen = __atomic_load_n(&e->klen, __ATOMIC_RELAXED);
            flags = __atomic_load_n(&e->flags, __ATOMIC_RELAXED);

            if (KV_ENTRY_HEIGHT(flags) <= (unsigned) l
                || kv_entry_size(nklen, flags) > host->size - off)
            {
                return NULL;
            }

            n = nklen < klen ? nklen : klen;
            c = 0;

            for (i = 0; i < n && c == 0; i++) {
                c = (int) e->key[i] - (int) key[i];
            }

            if (c > 0 || (c == 0 && nklen >= klen)) {
                break;
            }

            x = (const kv_ref_t *) ((const uint8_t *) e
                                    + kv_entry_tower_off(nklen, flags));
        }
    }

    return e;
}


void
kv_order_insert(const kv_host_t *host, kv_shared_t *sh, kv_entry_t *e)
{
    unsigned   l, h;
    kv_ref_t  *prev[KV_ORDER_LEVELS], *tower, ref;

    h = KV_ENTRY_HEIGHT(e->flags);
    tower = kv_order_tower(e);
    ref = kv_ref(host, e);

    kv_order_find(host, sh, e->key, e->klen, prev, NULL);

    for (l = sh->order_levels; l < h; l++) {
        prev[l] = sh->order_head;
    }

    if (h > sh->order_levels) {
        sh->order_levels = h;
    }

    for (l = 0; l < h; l++) {
        __atomic_store_n(&tower[l], prev[l][l], __ATOMIC_RELAXED);
    }

    /* release: a walk without the lock that meets e sees its tower */
    for (l = 0; l < h; l++) {
        __atomic_store_n(&prev[l][l], ref, __ATOMIC_RELEASE);
    }
}


void
kv_order_remove(const kv_host_t *host, kv_shared_t *sh, const kv_entry_t *e,
    kv_order_finger_t *f)
{
    unsigned   l;
    kv_ref_t  *prev[KV_ORDER_LEVELS], *tower, ref;

    tower = kv_order_tower(e);
    ref = kv_ref(host, e);

    kv_order_find(host, sh, e->key, e->klen, prev, f);

    /* an entry a killed worker left out of the list may rise higher */

    for (l = kv_order_linked_height(sh, e); l-- > 0; /* void */ ) {
        if (prev[l][l] == ref) {
            __atomic_store_n(&prev[l][l], tower[l], __ATOMIC_RELAXED);
        }
    }

    while (sh->order_levels > 0
           && sh->order_head[sh->order_levels - 1] == 0)
    {
        sh->order_levels--;
    }
}


/* e takes the place of old, an entry of the same key, so of its height */
void
kv_order_replace(const kv_host_t *host, kv_shared_t *sh,
    const kv_entry_t *old, kv_entry_t *e)
{
    unsigned   l, h, linked;
    kv_ref_t  *prev[KV_ORDER_LEVELS], *tower, *otower, ref, oref;

    h = KV_ENTRY_HEIGHT(e->flags);
    tower = kv_order_tower(e);
    otower = kv_order_tower(old);
    ref = kv_ref(host, e);
    oref = kv_ref(host, old);

    kv_order_find(host, sh, e->key, e->klen, prev, NULL);
    linked = kv_order_linked_height(sh, old);

    for (l = 0; l < h; l++) {
        __atomic_store_n(&tower[l], otower[l], __ATOMIC_RELAXED);
    }

    for (l = 0; l < linked; l++) {
        if (prev[l][l] == oref) {
            __atomic_store_n(&prev[l][l], ref, __ATOMIC_RELEASE);
        }
    }
}


kv_entry_t *
kv_order_seek(const kv_host_t *host, kv_shared_t *sh, const uint8_t *key,
    size_t klen, int excl)
{
    kv_ref_t    *prev[KV_ORDER_LEVELS], ref;
    kv_entry_t  *e;

    if (sh->order_levels == 0) {
        return NULL;
    }

    if (key == NULL) {
        ref = sh->order_head[0];
        return ref ? kv_ptr(host, ref) : NULL;
    }

    kv_order_find(host, sh, key, klen, prev, NULL);

    ref = prev[0][0];
    e = ref ? kv_ptr(host, ref) : NULL;

    /* a killed worker may have left a second entry of the key */

    while (e != NULL && excl && kv_key_cmp(e->key, e->klen, key, klen) == 0) {
        e = kv_order_next(host, e);
    }

    return e;
}


kv_entry_t *
kv_order_next(const kv_host_t *host, const kv_entry_t *e)
{
    kv_ref_t  ref;

    ref = kv_order_tower(e)[0];

    return ref ? kv_ptr(host, ref) : NULL;
}
