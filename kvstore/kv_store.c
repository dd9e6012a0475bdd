#define _GNU_SOURCE

/*
 * Appends, lookups, reads and durability.  Appends go to the active segment
 * at the shared write offset, with the host lock held from the index check
 * to the index update, so records and index change in the same order
 * everywhere.  Each handle caches descriptors of the segments it touches.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "kv_internal.h"


/* kv_preallocate() writes up to 1 MiB of zeros a system call */
#define KV_ZEROS         65536
#define KV_ZEROS_IOV     16

/* lookups in sorted segments that a merge replaced meanwhile */
#define KV_LOOKUP_TRIES  8

/*
 * How long a background batch lets waiting requests go first, in naps of
 * KV_DEFER_NAP_NS (about 5 ms in all with the kernel's timer slack):
 * bounded, as a request may stop waiting without being served.
 */
#define KV_DEFER_NAPS    40
#define KV_DEFER_NAP_NS  50000


/*
 * Each request takes a ticket before it waits and marks it served once it
 * holds the lock: a ticket not served is a request waiting.  A worker
 * killed while it waited leaves its ticket unserved only until the next
 * request gets the lock, which marks every ticket up to its own.
 */
void
kv_lock(kv_store_t *s)
{
    uint32_t  ticket;

    ticket = __atomic_add_fetch(&s->sh->lock_tickets, 1, __ATOMIC_RELAXED);

    s->host->lock(s->host->ctx);

    if ((int32_t) (ticket - s->sh->lock_served) > 0) {
        __atomic_store_n(&s->sh->lock_served, ticket, __ATOMIC_RELAXED);
    }
}


int
kv_lock_wanted(const kv_shared_t *sh)
{
    return __atomic_load_n(&sh->lock_tickets, __ATOMIC_RELAXED)
           != __atomic_load_n(&sh->lock_served, __ATOMIC_RELAXED);
}


/* up to naps naps while a request waits for the lock */
static void
kv_lock_defer(kv_store_t *s, int naps)
{
    struct timespec  nap;

    nap.tv_sec = 0;
    nap.tv_nsec = KV_DEFER_NAP_NS;

    /* a nap, not a spin: on a busy machine the waiter needs this CPU */

    while (naps-- > 0 && kv_lock_wanted(s->sh)) {
        (void) nanosleep(&nap, NULL);
    }
}


void
kv_lock_background(kv_store_t *s)
{
    kv_lock_defer(s, KV_DEFER_NAPS);
    s->host->lock(s->host->ctx);
}


void
kv_lock_pause(kv_store_t *s)
{
    s->host->unlock(s->host->ctx);

    /* one nap only: the caller's own event loop waits meanwhile */
    kv_lock_defer(s, 1);

    s->host->lock(s->host->ctx);
}


void
kv_unlock(kv_store_t *s)
{
    s->host->unlock(s->host->ctx);
}


/* The return code for a failed write's errno. */
static int
kv_write_rc(int err)
{
    return (err == ENOSPC || err == EDQUOT || err == EFBIG) ? KV_ENOSPC
                                                            : KV_EIO;
}


/* Caches fd as segment's, evicting round-robin when every slot is taken. */
static int
kv_fd_add(kv_store_t *s, uint32_t segment, int fd)
{
    uint32_t  i;

    for (i = 0; i < KV_FD_CACHE; i++) {
        if (s->fds[i].segment == 0) {
            break;
        }
    }

    if (i == KV_FD_CACHE) {
        i = s->fd_next;
        s->fd_next = (i + 1) % KV_FD_CACHE;
        close(s->fds[i].fd);
    }

    s->fds[i].segment = segment;
    s->fds[i].fd = fd;

    return fd;
}


/*
 * Segments never change once written, so a cached descriptor stays valid.
 * Returns -1 with errno set; the caller logs with its context.
 */
static int
kv_segment_fd(kv_store_t *s, uint32_t segment)
{
    int        fd;
    char       path[PATH_MAX];
    uint32_t   i;

    kv_store_sweep(s);

    for (i = 0; i < KV_FD_CACHE; i++) {
        if (s->fds[i].segment == segment) {
            return s->fds[i].fd;
        }
    }

    kv_segment_path(s, segment, path);

    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    return kv_fd_add(s, segment, fd);
}


/*
 * Compaction deletes the segments below first_segment: an open descriptor
 * would keep their disk space.  Lock-free like kv_read().
 */
void
kv_store_sweep(kv_store_t *s)
{
    kv_fd_t   *f;
    uint32_t   i, first, gen;

    first = __atomic_load_n(&s->sh->first_segment, __ATOMIC_RELAXED);
    gen = __atomic_load_n(&s->sh->runs.gen, __ATOMIC_RELAXED);

    /* sorted segments a merge replaced: their space goes with the maps */
    if (s->tables != NULL && s->tables_gen != gen) {
        kv_level_close(s);
    }

    for (i = 0; i < KV_FD_CACHE; i++) {
        f = &s->fds[i];

        if (f->segment != 0 && f->segment < first) {
            close(f->fd);
            f->segment = 0;
            f->fd = -1;
        }
    }
}


/*
 * A sealed segment ends with its last record: hint files, compaction and
 * kvtool read it to its end.  Whatever is after it (the zeros
 * kv_preallocate() wrote, or a record a killed writer left unfinished) is
 * cut, and the cut made durable before a record goes into the next
 * segment.
 */
static int
kv_seal(kv_store_t *s)
{
    int           fd, err;
    char          path[PATH_MAX];
    kv_shared_t  *sh;
    struct stat   st;

    sh = s->sh;
    fd = kv_segment_fd(s, sh->segment);

    if (fd != -1 && fstat(fd, &st) == 0
        && (uint64_t) st.st_size <= sh->write_off)
    {
        return KV_OK;
    }

    kv_segment_path(s, sh->segment, path);

    if (fd == -1 || ftruncate(fd, (off_t) sh->write_off) == -1) {
        err = errno;
        kv_log(s->host, KV_LOG_ERR, err, "cutting \"%s\" at offset %"
               PRIu64 ", the end of its last record, failed", path,
               sh->write_off);
        return kv_write_rc(err);
    }

    sh->prealloc_end = sh->write_off;

    if (kv_flush(s, fd, path) != KV_OK) {
        __atomic_store_n(&sh->sync_failed, 1, __ATOMIC_RELEASE);
        return KV_EIO;
    }

    return KV_OK;
}


int
kv_store_trim(kv_store_t *s)
{
    int  rc;

    rc = KV_OK;
    kv_lock(s);

    if (s->sh->open && s->sh->segment != 0) {
        rc = kv_seal(s);
    }

    kv_unlock(s);

    return rc;
}


int
kv_roll(kv_store_t *s, uint32_t next)
{
    int           fd, rc;
    char          path[PATH_MAX];
    kv_shared_t  *sh;

    sh = s->sh;
    kv_segment_path(s, next, path);

    if (next <= sh->segment || next > KV_SEGMENT_MAX) {
        kv_log(s->host, KV_LOG_ERR, 0, "cannot roll over from segment %u to "
               "\"%s\" (ids end at %u)", sh->segment, path, KV_SEGMENT_MAX);
        return KV_EINVAL;
    }

    if (sh->segment != 0) {
        rc = kv_seal(s);
        if (rc != KV_OK) {
            return rc;
        }
    }

    fd = kv_create_file(s, path, O_RDWR);

    if (fd == -1) {
        if (errno == EEXIST) {
            kv_log(s->host, KV_LOG_ERR, EEXIST, "rolling over to \"%s\" "
                   "failed", path);
        }

        return kv_write_rc(errno);
    }

    /* the file must be durable, and its name, before a record goes in */
    if (kv_flush(s, fd, path) != KV_OK
        || kv_flush_dir(s, s->conf.dir) != KV_OK)
    {
        close(fd);
        __atomic_store_n(&sh->sync_failed, 1, __ATOMIC_RELEASE);
        return KV_EIO;
    }

    kv_fd_add(s, next, fd);

    sh->segment = next;
    sh->write_off = 0;
    sh->prealloc_end = 0;
    sh->stats.segments++;

    return KV_OK;
}


static int
kv_write_frame(int fd, const kv_frame_t *f, uint64_t off)
{
    int           i;
    ssize_t       n;
    struct iovec  iov[2];

    memcpy(iov, f->iov, sizeof(iov));
    i = 0;

    while (i < f->niov) {
        n = pwritev(fd, &iov[i], f->niov - i, (off_t) off);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            return -1;
        }

        off += (uint64_t) n;

        /* a short write: skip what was written, retry the rest */
        while (i < f->niov && (size_t) n >= iov[i].iov_len) {
            n -= (ssize_t) iov[i].iov_len;
            i++;
        }

        if (i < f->niov) {
            iov[i].iov_base = (uint8_t *) iov[i].iov_base + n;
            iov[i].iov_len -= (size_t) n;
        }
    }

    return 0;
}


/*
 * Writes zeros past the active segment's end up to need plus
 * conf.preallocate (or segment_size, if less), so that the flushes of the
 * records written over them change no file size and commit no metadata.
 * A failure only costs that: the record is appended as it would be
 * without.  Recovery cuts the zeros off (kv_recover_segment()).
 */
static void
kv_preallocate(kv_store_t *s, int fd, uint64_t need)
{
    int           i, err;
    char          path[PATH_MAX];
    ssize_t       n;
    uint64_t      start, end, left;
    kv_shared_t  *sh;
    struct iovec  iov[KV_ZEROS_IOV];

    static const uint8_t  zeros[KV_ZEROS];

    sh = s->sh;
    end = need + s->conf.preallocate;

    if (end > s->conf.segment_size) {
        end = need > s->conf.segment_size ? need : s->conf.segment_size;
    }

    start = sh->prealloc_end;

    while (sh->prealloc_end < end) {
        left = end - sh->prealloc_end;

        for (i = 0; i < KV_ZEROS_IOV && left > 0; i++) {
            iov[i].iov_base = (void *) zeros;
            iov[i].iov_len = left < KV_ZEROS ? (size_t) left : KV_ZEROS;
            left -= iov[i].iov_len;
        }

        n = pwritev(fd, iov, i, (off_t) sh->prealloc_end);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            /* a full disk fails every write: one warning, not one each */

            err = errno;

            if (err != s->prealloc_errno) {
                kv_segment_path(s, sh->segment, path);
                kv_log(s->host, KV_LOG_WARN, err, "preallocating \"%s\" "
                       "from offset %" PRIu64 " to %" PRIu64 " failed: "
                       "appending without until it succeeds", path, start,
                       end);
                s->prealloc_errno = err;
            }

            /* a full disk: the zeros would take what hints and merges need */
            if (ftruncate(fd, (off_t) start) == 0) {
                sh->prealloc_end = start;
            }

            return;
        }

        sh->prealloc_end += (uint64_t) n;
    }

    s->prealloc_errno = 0;
}


/*
 * Writes rec at the end of the active segment, rolling over to a new one
 * first when the record would take the active one past segment_size (a
 * record bigger than that goes alone into a fresh segment: records are
 * never split).  On failure the segment is cut back to its previous end,
 * so no partial record survives.
 */
static int
kv_append(kv_store_t *s, const kv_record_t *rec, uint64_t *loc,
    uint32_t *flen)
{
    int           fd, rc, err;
    char          path[PATH_MAX], kbuf[KV_KEY_STR_LEN];
    uint64_t      off;
    kv_frame_t    frame;
    kv_shared_t  *sh;

    sh = s->sh;

    if (s->conf.read_only) {
        kv_log(s->host, KV_LOG_ERR, 0, "refused to append key \"%s\": the "
               "store in \"%s\" is open read-only",
               kv_key_str(rec->key, rec->klen, kbuf), s->conf.dir);
        return KV_EUNAVAIL;
    }

    if (sh->sync_failed) {
        kv_log(s->host, KV_LOG_ERR, 0, "refused to append key \"%s\" to "
               "\"%s\": a flush to stable storage failed earlier, restart "
               "to recover", kv_key_str(rec->key, rec->klen, kbuf),
               s->conf.dir);
        return KV_EIO;
    }

    if (kv_frame_encode(&frame, rec) != KV_OK) {
        kv_log(s->host, KV_LOG_ERR, 0, "encoding the record of key \"%s\" "
               "failed", kv_key_str(rec->key, rec->klen, kbuf));
        return KV_EINVAL;
    }

    if (sh->write_off > 0
        && sh->write_off + frame.flen > s->conf.segment_size)
    {
        rc = kv_roll(s, sh->segment + 1);
        if (rc != KV_OK) {
            sh->stats.write_errors++;
            return rc;
        }
    }

    off = sh->write_off;

    /* paths are formatted for error messages only: this runs locked */

    if (off + frame.flen > (uint64_t) 1 << KV_LOC_OFFSET_BITS) {
        kv_segment_path(s, sh->segment, path);
        kv_log(s->host, KV_LOG_ERR, 0, "appending key \"%s\" to \"%s\" at "
               "offset %" PRIu64 " would pass the 1 TiB limit of a segment",
               kv_key_str(rec->key, rec->klen, kbuf), path, off);
        sh->stats.write_errors++;
        return KV_ENOSPC;
    }

    fd = kv_segment_fd(s, sh->segment);

    if (fd != -1 && s->conf.preallocate != 0
        && off + frame.flen > sh->prealloc_end)
    {
        kv_preallocate(s, fd, off + frame.flen);
    }

    if (fd != -1 && kv_write_frame(fd, &frame, off) == 0) {
        sh->seq = rec->seq;
        sh->write_off = off + frame.flen;

        /* zeros are written from prealloc_end on: never over a record */
        if (sh->prealloc_end < sh->write_off) {
            sh->prealloc_end = sh->write_off;
        }

        *loc = KV_LOC(sh->segment, off);
        *flen = (uint32_t) frame.flen;
        s->written = KV_LOC(sh->segment, sh->write_off);

        return KV_OK;
    }

    err = errno;
    kv_segment_path(s, sh->segment, path);

    kv_log(s->host, KV_LOG_ERR, err, "appending %zu bytes to \"%s\" at "
           "offset %" PRIu64 " for key \"%s\" failed", frame.flen, path, off,
           kv_key_str(rec->key, rec->klen, kbuf));

    if (fd != -1) {
        if (ftruncate(fd, (off_t) off) == -1) {
            kv_log(s->host, KV_LOG_ERR, errno, "ftruncate(\"%s\", %" PRIu64
                   ") after a failed write failed: a partial record may "
                   "remain", path, off);

        } else if (sh->prealloc_end > off) {
            sh->prealloc_end = off;
        }
    }

    sh->stats.write_errors++;

    return kv_write_rc(err);
}


int
kv_check_open(kv_store_t *s)
{
    if (s->sh->open) {
        return KV_OK;
    }

    kv_log(s->host, KV_LOG_ERR, 0, "the store in \"%s\" is not open",
           s->conf.dir);

    return KV_EUNAVAIL;
}


int
kv_put(kv_store_t *s, const uint8_t *key, size_t klen, const uint8_t *value,
    size_t vlen, unsigned type)
{
    kv_write_t  w;

    memset(&w, 0, sizeof(w));
    w.value = value;
    w.vlen = vlen;
    w.type = type;

    return kv_write(s, key, klen, &w);
}


int
kv_delete(kv_store_t *s, const uint8_t *key, size_t klen)
{
    kv_write_t  w;

    memset(&w, 0, sizeof(w));
    w.tombstone = 1;

    return kv_write(s, key, klen, &w);
}


/*
 * The sequence number of the record e points at, read from the frame's
 * first bytes; called locked, for a condition that names ETags only.
 */
static int
kv_entry_seq(kv_store_t *s, const kv_entry_t *e, uint64_t *seq)
{
    int       rc;
    kv_loc_t  loc;

    kv_entry_loc(e, &loc);

    rc = kv_read_seq(s, &loc);
    *seq = loc.seq;

    return rc;
}


int
kv_cond_holds(const kv_cond_t *c, uint64_t seq)
{
    uint32_t  i;

    if (c->n == KV_COND_ANY) {
        return 1;
    }

    for (i = 0; i < c->n; i++) {
        if (c->seqs[i] == seq) {
            return 1;
        }
    }

    return 0;
}


/* 1 if a condition of w names ETags: the current record's seq is needed */
static int
kv_write_names_etags(const kv_write_t *w)
{
    return (w->if_match.n != 0 && w->if_match.n != KV_COND_ANY)
           || (w->if_none_match.n != 0 && w->if_none_match.n != KV_COND_ANY);
}


/*
 * 1 if w asks whether the key exists (a delete, a condition): in
 * index=sorted that reads the sorted segments for a key the index lacks
 */
static int
kv_write_asks_current(const kv_write_t *w)
{
    return w->tombstone || w->if_match.n != 0 || w->if_none_match.n != 0;
}


/*
 * Evaluates If-Match, then If-None-Match, against the key's current
 * record: its entry e, or (index=sorted) its record in a sorted segment
 * at tloc, or none (both NULL), as RFC 9110 orders them: KV_OK or
 * KV_EPRECOND.
 */
static int
kv_cond_check(kv_store_t *s, const kv_entry_t *e, const kv_loc_t *tloc,
    const kv_write_t *w)
{
    int       rc, exists;
    uint64_t  seq;

    seq = tloc != NULL ? tloc->seq : 0;
    exists = (e != NULL || tloc != NULL);

    if (e != NULL && kv_write_names_etags(w)) {
        rc = kv_entry_seq(s, e, &seq);
        if (rc != KV_OK) {
            return rc;
        }
    }

    if (w->if_match.n != 0
        && (!exists || !kv_cond_holds(&w->if_match, seq)))
    {
        return KV_EPRECOND;
    }

    if (w->if_none_match.n != 0
        && exists && kv_cond_holds(&w->if_none_match, seq))
    {
        return KV_EPRECOND;
    }

    return KV_OK;
}


/*
 * index=sorted, locked: the key's live record in the sorted segments, for
 * a write whose key the index does not hold.  KV_OK, KV_NOTFOUND, or an
 * error reading the tables.
 */
static int
kv_table_current(kv_store_t *s, const uint8_t *key, size_t klen,
    kv_loc_t *loc)
{
    kv_shared_t  *sh;

    sh = s->sh;

    if (!s->conf.sorted || sh->runs.n == 0) {
        return KV_NOTFOUND;
    }

    return kv_level_lookup(s, key, klen, &sh->runs, loc);
}


/*
 * Before the lock: reads what kv_write() will read of the key's current
 * record under it (a delete's or a conditional write's lookup in the
 * sorted segments, an ETag condition's sequence number), so that those
 * reads find the page cache warm and no cold pread holds up every worker,
 * and walks the key order, so that the search under the lock finds its
 * entries in the CPU's cache.  The results are dropped: the write looks
 * again, locked.
 */
static void
kv_write_warm(kv_store_t *s, const uint8_t *key, size_t klen,
    const kv_write_t *w)
{
    int       seq;
    kv_loc_t  loc;

    if (s->conf.sorted) {
        /* every write of index=sorted searches the key order, locked */
        (void) kv_order_warm(s->host, s->sh, key, klen);
    }

    seq = kv_write_names_etags(w);

    if (!seq && !(s->conf.sorted && kv_write_asks_current(w))) {
        return;
    }

    if (kv_lookup(s, key, klen, &loc) == KV_OK && seq) {
        (void) kv_read_seq(s, &loc);
    }
}


int
kv_write(kv_store_t *s, const uint8_t *key, size_t klen, kv_write_t *w)
{
    int               rc, masked;
    char              kbuf[KV_KEY_STR_LEN];
    uint32_t          flen, max_key, max_value;
    uint64_t          loc;
    kv_ref_t         *link;
    kv_loc_t          tloc, *cur;
    kv_slot_t         slot;
    kv_entry_t       *e;
    kv_record_t       rec;
    kv_shared_t      *sh;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;
    slot.e = NULL;
    cur = NULL;

    kv_write_warm(s, key, klen, w);

    kv_lock(s);

    rc = kv_check_open(s);
    if (rc != KV_OK) {
        goto done;
    }

    /* kv_set_limits() changes them without the lock */
    max_key = __atomic_load_n(&sh->max_key, __ATOMIC_RELAXED);
    max_value = __atomic_load_n(&sh->max_value, __ATOMIC_RELAXED);

    if (!w->tombstone
        && (klen == 0 || klen > max_key || w->vlen > max_value
            || (w->type != KV_TYPE_OCTET && w->type != KV_TYPE_JSON)))
    {
        kv_log(host, KV_LOG_INFO, 0, "rejected a put of key \"%s\" (%zu "
               "bytes, max %u) with a value of %zu bytes (max %u), type %u",
               kv_key_str(key, klen, kbuf), klen, max_key, w->vlen,
               max_value, w->type);
        rc = KV_EINVAL;
        goto done;
    }

    e = kv_index_find(host, sh, key, klen, &link);

    if (e != NULL && kv_entry_expired(e, kv_now_ms(host))) {
        kv_index_expire(host, sh, link, e);
        e = kv_index_find(host, sh, key, klen, &link);
    }

    /* a mask: deleted or expired, whatever the sorted segments hold */
    masked = (e != NULL && (e->flags & KV_ENTRY_MASK));

    if (masked) {
        e = NULL;

    } else if (e == NULL && kv_write_asks_current(w)) {
        /*
         * only a delete or a conditional write asks what the sorted
         * segments hold: a plain put replaces it unseen, without a read
         * under the lock
         */
        rc = kv_table_current(s, key, klen, &tloc);

        if (rc == KV_OK) {
            cur = &tloc;

        } else if (rc != KV_NOTFOUND) {
            goto done;
        }
    }

    if (e == NULL && cur == NULL && w->tombstone) {
        rc = KV_NOTFOUND;
        goto done;
    }

    rc = kv_cond_check(s, e, cur, w);
    if (rc != KV_OK) {
        sh->stats.precond_failed += (rc == KV_EPRECOND);
        goto done;
    }

    /*
     * allocate first: on a full index nothing must reach the log; a
     * delete of a key that only a sorted segment holds needs a mask
     */
    if (!w->tombstone || cur != NULL) {
        rc = kv_index_reserve(host, sh, key, klen,
                              w->tombstone ? 0 : w->expires_at_ms, &slot);
        if (rc != KV_OK) {
            kv_log(host, KV_LOG_WARN, 0, "the index is full: cannot %s key "
                   "\"%s\" %s the store in \"%s\"%s",
                   w->tombstone ? "delete" : "add",
                   kv_key_str(key, klen, kbuf),
                   w->tombstone ? "from" : "to", s->conf.dir,
                   s->conf.sorted ? " until a merge moves keys to sorted "
                                    "segments" : "");
            goto done;
        }
    }

    memset(&rec, 0, sizeof(rec));
    rec.seq = sh->seq + 1;
    rec.key = key;
    rec.klen = klen;
    rec.tombstone = w->tombstone;

    if (!w->tombstone) {
        rec.value = w->value;
        rec.vlen = w->vlen;
        rec.type = w->type;
        rec.expires_at_ms = w->expires_at_ms;
    }

    rc = kv_append(s, &rec, &loc, &flen);

    if (rc != KV_OK) {
        if (slot.e != NULL) {
            kv_index_release(host, sh, &slot);
        }

        goto done;
    }

    w->seq = rec.seq;
    w->merge_due = s->conf.sorted && sh->compactor == 0
                   && kv_index_crowded(sh);

    if (w->tombstone) {
        if (e != NULL) {
            kv_index_drop(host, sh, link, e, loc, flen);

        } else {
            kv_index_set_mask(host, sh, &slot, loc, flen);
        }

        sh->stats.dead_bytes += flen;
        sh->stats.deletes++;

    } else {
        kv_index_set(host, sh, &slot, loc, flen, (uint32_t) w->vlen, w->type,
                     w->expires_at_ms);
        sh->stats.puts++;
    }

done:

    kv_unlock(s);

    return rc;
}


int
kv_lookup(kv_store_t *s, const uint8_t *key, size_t klen, kv_loc_t *loc)
{
    int               rc, tries;
    kv_ref_t         *link;
    kv_runs_t         runs;
    kv_entry_t       *e;
    const kv_host_t  *host;

    host = s->host;

    for (tries = 0; ; tries++) {
        kv_lock(s);

        rc = kv_check_open(s);
        if (rc != KV_OK) {
            break;
        }

        e = kv_index_find(host, s->sh, key, klen, &link);

        if (e != NULL && kv_entry_expired(e, kv_now_ms(host))) {
            kv_index_expire(host, s->sh, link, e);
            rc = KV_NOTFOUND;
            break;
        }

        if (e != NULL) {
            if (e->flags & KV_ENTRY_MASK) {
                rc = KV_NOTFOUND;
                break;
            }

            kv_entry_loc(e, loc);
            break;
        }

        if (!s->conf.sorted || s->sh->runs.n == 0) {
            rc = KV_NOTFOUND;
            break;
        }

        /* index=sorted: the sorted segments, read without the lock */

        runs = s->sh->runs;

        kv_unlock(s);

        rc = kv_level_lookup(s, key, klen, &runs, loc);

        /* a merge replaced the tables meanwhile: look again */
        if (rc != KV_ESTALE || tries == KV_LOOKUP_TRIES) {
            return rc;
        }
    }

    kv_unlock(s);

    return rc;
}


/*
 * The cached descriptor of loc's segment into *fd: KV_OK, KV_ESTALE if
 * compaction deleted the segment, KV_EIO.
 */
static int
kv_loc_fd(kv_store_t *s, const kv_loc_t *loc, int *fd)
{
    char  path[PATH_MAX];

    /* the path is formatted for error messages only: this is every GET */

    *fd = kv_segment_fd(s, loc->segment);

    if (*fd != -1) {
        return KV_OK;
    }

    kv_segment_path(s, loc->segment, path);

    if (errno == ENOENT) {
        /* compaction moved the record and deleted its segment */
        kv_log(s->host, KV_LOG_INFO, 0, "\"%s\" is gone, the record at "
               "offset %" PRIu64 " moved", path, loc->offset);
        return KV_ESTALE;
    }

    kv_log(s->host, KV_LOG_ERR, errno, "opening \"%s\" failed", path);

    return KV_EIO;
}


/*
 * Reads len bytes of the frame at loc, from its byte off, into buf from
 * fd, a descriptor of its segment: KV_OK, KV_ECORRUPT if the file ends
 * first, KV_EIO.
 */
static int
kv_pread_at(kv_store_t *s, const kv_loc_t *loc, int fd, uint8_t *buf,
    size_t len, uint64_t off)
{
    char     path[PATH_MAX];
    ssize_t  n;

    n = kv_pread_full(fd, buf, len, loc->offset + off);

    if (n == (ssize_t) len) {
        return KV_OK;
    }

    kv_segment_path(s, loc->segment, path);

    if (n == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "reading %zu bytes from \"%s\" "
               "at offset %" PRIu64 " failed", len, path, loc->offset + off);
        return KV_EIO;
    }

    kv_log(s->host, KV_LOG_ERR, 0, "corrupt record in \"%s\" at offset "
           "%" PRIu64 ": the file ends %zd bytes into its %u", path,
           loc->offset, (ssize_t) off + n, loc->flen);

    return KV_ECORRUPT;
}


/* kv_pread_at() through the segment's cached descriptor */
static int
kv_pread_frame(kv_store_t *s, const kv_loc_t *loc, uint8_t *buf, size_t len)
{
    int  rc, fd;

    rc = kv_loc_fd(s, loc, &fd);

    return rc == KV_OK ? kv_pread_at(s, loc, fd, buf, len, 0) : rc;
}


/* KV_OK if loc can be a record's, else KV_EINVAL, logged */
static int
kv_check_loc(kv_store_t *s, const kv_loc_t *loc)
{
    char  path[PATH_MAX];

    if (loc->flen > KV_FRAME_HEADER && loc->flen <= KV_FRAME_MAX
        && loc->vlen <= loc->flen - KV_FRAME_HEADER)
    {
        return KV_OK;
    }

    kv_segment_path(s, loc->segment, path);
    kv_log(s->host, KV_LOG_ERR, 0, "bad location in \"%s\": offset "
           "%" PRIu64 ", frame of %u bytes, value of %u bytes", path,
           loc->offset, loc->flen, loc->vlen);

    return KV_EINVAL;
}


static int
kv_corrupt(kv_store_t *s, const kv_loc_t *loc, const char *what)
{
    char  path[PATH_MAX];

    kv_segment_path(s, loc->segment, path);
    kv_log(s->host, KV_LOG_ERR, 0, "corrupt record in \"%s\" at offset "
           "%" PRIu64 ": %s", path, loc->offset, what);

    return KV_ECORRUPT;
}


int
kv_read(kv_store_t *s, kv_loc_t *loc, uint8_t *buf)
{
    int  rc;

    rc = kv_check_loc(s, loc);

    if (rc == KV_OK) {
        rc = kv_pread_frame(s, loc, buf, loc->flen);
    }

    if (rc != KV_OK) {
        return rc;
    }

    if (kv_frame_verify(buf, loc->flen) != KV_OK
        || kv_frame_seq(buf, loc->flen, &loc->seq) != KV_OK)
    {
        return kv_corrupt(s, loc, "checksum or length mismatch");
    }

    return KV_OK;
}


int
kv_read_seq(kv_store_t *s, kv_loc_t *loc)
{
    int      rc;
    size_t   len;
    uint8_t  buf[KV_FRAME_SEQ_LEN];

    len = loc->flen < sizeof(buf) ? loc->flen : sizeof(buf);

    rc = kv_pread_frame(s, loc, buf, len);
    if (rc != KV_OK) {
        return rc;
    }

    if (kv_frame_seq(buf, len, &loc->seq) != KV_OK) {
        return kv_corrupt(s, loc, "no sequence number");
    }

    return KV_OK;
}


typedef struct {
    kv_store_t      *store;
    const kv_loc_t  *loc;
    int              fd;
} kv_piece_ctx_t;


static int
kv_read_piece(void *ctx, uint8_t *buf, size_t len, uint64_t off)
{
    kv_piece_ctx_t  *pc;

    pc = ctx;

    return kv_pread_at(pc->store, pc->loc, pc->fd, buf, len, off);
}


int
kv_open_value(kv_store_t *s, const uint8_t *key, size_t klen, kv_loc_t *loc,
    int *fd)
{
    int               rc, sfd;
    char              path[PATH_MAX];
    size_t            len;
    uint8_t           head[KV_FRAME_SEQ_LEN];
    kv_entry_t       *e;
    kv_piece_ctx_t    pc;
    const kv_host_t  *host;

    rc = kv_check_loc(s, loc);

    if (rc == KV_OK) {
        rc = kv_loc_fd(s, loc, &sfd);
    }

    if (rc != KV_OK) {
        return rc;
    }

    /*
     * A descriptor of our own before anything else: the store's cached
     * one may be closed by the next call (a compaction's sweep), and the
     * bytes checked must be the bytes sent.
     */

    pc.fd = fcntl(sfd, F_DUPFD_CLOEXEC, 0);

    if (pc.fd == -1) {
        kv_segment_path(s, loc->segment, path);
        kv_log(s->host, KV_LOG_ERR, errno, "duplicating the descriptor of "
               "\"%s\" failed", path);
        return KV_EIO;
    }

    pc.store = s;
    pc.loc = loc;

    /* a frame holds more than its header and sequence number */

    len = sizeof(head) < loc->flen ? sizeof(head) : loc->flen;

    rc = kv_pread_at(s, loc, pc.fd, head, len, 0);

    if (rc == KV_OK && kv_frame_seq(head, len, &loc->seq) != KV_OK) {
        rc = kv_corrupt(s, loc, "no sequence number");
    }

    if (rc == KV_OK && !loc->verified) {
        rc = kv_frame_verify_pieces(loc->flen, kv_read_piece, &pc);

        if (rc == KV_ECORRUPT) {
            rc = kv_corrupt(s, loc, "checksum or length mismatch");
        }
    }

    if (rc != KV_OK) {
        close(pc.fd);
        return rc;
    }

    if (!loc->verified) {
        host = s->host;
        kv_lock(s);

        e = kv_index_find(host, s->sh, key, klen, NULL);

        if (e != NULL && e->loc == KV_LOC(loc->segment, loc->offset)) {
            e->flags |= KV_ENTRY_VERIFIED;
        }

        kv_unlock(s);

        loc->verified = 1;
    }

    *fd = pc.fd;

    return KV_OK;
}


/*
 * One flush at a time, store-wide: a flush that waited for another one
 * then covers every write made meanwhile, in any process, so concurrent
 * writers share as few fdatasync() calls as possible.
 */
static int
kv_flush_lock(kv_store_t *s)
{
    int  err;

    err = pthread_mutex_lock(&s->sh->flush_mutex);

    if (err == EOWNERDEAD) {
        /* the dead flusher left nothing to repair: its work is redone */
        err = pthread_mutex_consistent(&s->sh->flush_mutex);
    }

    if (err != 0) {
        kv_log(s->host, KV_LOG_ERR, err, "locking the flush mutex of \"%s\" "
               "failed", s->conf.dir);
        return KV_EIO;
    }

    return KV_OK;
}


/* ends the caller's flush: the claim, then the flush mutex */
static void
kv_flush_unlock(kv_shared_t *sh)
{
    __atomic_store_n(&sh->flusher, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&sh->flush_mutex);
}


int
kv_sync_claim(kv_store_t *s)
{
    int32_t  none = 0;

    return __atomic_compare_exchange_n(&s->sh->flusher, &none,
                                       (int32_t) getpid(), 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}


int
kv_sync(kv_store_t *s, uint64_t *durable)
{
    int               fd, rc, failed;
    char              path[PATH_MAX];
    uint32_t          id, last;
    uint64_t          from, target;
    kv_shared_t      *sh;
    struct timespec   t0, t1;
    const kv_host_t  *host;

    sh = s->sh;
    host = s->host;
    *durable = 0;

    kv_lock(s);
    rc = kv_check_open(s);
    kv_unlock(s);

    if (rc != KV_OK) {
        return rc;
    }

    rc = kv_flush_lock(s);
    if (rc != KV_OK) {
        return rc;
    }

    /* the end of the log now, after waiting for the flush lock */

    kv_lock(s);
    failed = sh->sync_failed;
    from = sh->synced;
    target = KV_LOC(sh->segment, sh->write_off);
    *durable = from;
    kv_unlock(s);

    if (failed) {
        kv_flush_unlock(sh);
        kv_log(host, KV_LOG_ERR, 0, "a flush of \"%s\" to stable storage "
               "failed earlier: no later write is durable until a restart",
               s->conf.dir);
        return KV_EIO;
    }

    if (from >= target) {
        kv_flush_unlock(sh);
        return KV_OK;
    }

    last = (uint32_t) (target >> KV_LOC_OFFSET_BITS);
    failed = 0;

    clock_gettime(CLOCK_MONOTONIC, &t0);

    for (id = (uint32_t) (from >> KV_LOC_OFFSET_BITS); id <= last; id++) {
        fd = kv_segment_fd(s, id);

        if (fd == -1) {
            /*
             * A compaction deleted it (after flushing the copies of its
             * records), or reserved the id and left it unused.
             */
            if (errno == ENOENT
                && (id < last
                    || id < __atomic_load_n(&sh->first_segment,
                                            __ATOMIC_RELAXED)))
            {
                continue;
            }

            kv_segment_path(s, id, path);
            kv_log(host, KV_LOG_ERR, errno, "opening \"%s\" to flush it "
                   "failed", path);
            rc = KV_EIO;
            break;
        }

        kv_segment_path(s, id, path);

        rc = kv_flush(s, fd, path);
        if (rc != KV_OK) {
            failed = 1;
            break;
        }
    }

    clock_gettime(CLOCK_MONOTONIC, &t1);

    kv_lock(s);

    if (failed) {
        /* the kernel may have dropped the dirty pages: never pretend */
        __atomic_store_n(&sh->sync_failed, 1, __ATOMIC_RELEASE);

    } else if (rc == KV_OK) {
        if (target > sh->synced) {
            __atomic_store_n(&sh->synced, target, __ATOMIC_RELEASE);
        }

        sh->stats.fsyncs++;

        kv_hist_add(&sh->stats.fsync_latency,
                    (uint64_t) ((t1.tv_sec - t0.tv_sec) * 1000000
                                + (t1.tv_nsec - t0.tv_nsec) / 1000));
    }

    *durable = sh->synced;

    kv_unlock(s);

    kv_flush_unlock(sh);

    return rc;
}


int
kv_durable(kv_store_t *s, uint64_t pos)
{
    uint64_t  synced;

    if (kv_synced(s, &synced) != KV_OK) {
        return KV_EIO;
    }

    return pos <= synced;
}


int
kv_synced(kv_store_t *s, uint64_t *pos)
{
    /* lock-free: called for every write; both only ever move forward */

    *pos = __atomic_load_n(&s->sh->synced, __ATOMIC_ACQUIRE);

    if (__atomic_load_n(&s->sh->sync_failed, __ATOMIC_ACQUIRE)) {
        return KV_EIO;
    }

    return KV_OK;
}


void
kv_stats(kv_store_t *s, kv_stats_t *stats)
{
    uint32_t      i;
    kv_shared_t  *sh;

    sh = s->sh;

    s->host->lock(s->host->ctx);

    *stats = sh->stats;
    stats->open = sh->open;
    stats->active_segment = sh->segment;
    stats->durable_segment = (uint32_t) (sh->synced >> KV_LOC_OFFSET_BITS);
    stats->compacting = (sh->compactor != 0);
    stats->sync_failed = sh->sync_failed;
    stats->tables = 0;

    for (i = 0; i < sh->runs.n; i++) {
        stats->tables += sh->runs.run[i].last - sh->runs.run[i].first + 1;
    }

    stats->runs = sh->runs.n;

    s->host->unlock(s->host->ctx);
}


void
kv_hist_add(kv_hist_t *h, uint64_t us)
{
    int                    i;
    static const uint64_t  bounds[KV_HIST_N] = KV_HIST_BOUNDS_US;

    for (i = 0; i < KV_HIST_N && us > bounds[i]; i++) {
        /* void */
    }

    __atomic_fetch_add(&h->count[i], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->sum_us, us, __ATOMIC_RELAXED);
}


const char *
kv_strerror(int rc)
{
    switch (rc) {
    case KV_OK:
        return "ok";
    case KV_NOTFOUND:
        return "no such key";
    case KV_ENOMEM:
        return "the index memory is full";
    case KV_EIO:
        return "input/output error";
    case KV_ENOSPC:
        return "no space left on device";
    case KV_ECORRUPT:
        return "corrupt record";
    case KV_ELOCKED:
        return "the data directory is locked by another process";
    case KV_EINVAL:
        return "invalid key or value size";
    case KV_EUNAVAIL:
        return "the store is not open";
    case KV_EBUSY:
        return "a compaction is already running";
    case KV_ESTALE:
        return "the record moved";
    case KV_ECANCELED:
        return "the compaction was cancelled";
    case KV_EPRECOND:
        return "the key's current ETag does not satisfy the condition";
    default:
        return "unknown error";
    }
}


void
kv_store_init(kv_store_t *s, kv_shared_t *sh, const kv_host_t *host,
    const kv_conf_t *conf)
{
    uint32_t  i;

    s->sh = sh;
    s->host = host;
    s->conf = *conf;

    /* 0 asks for the default: resolved here, once, for every user */

    if (s->conf.segment_size == 0) {
        s->conf.segment_size = KV_SEGMENT_SIZE_DEFAULT;
    }

    if (s->conf.compact_dead_pct == 0) {
        s->conf.compact_dead_pct = KV_COMPACT_DEAD_PCT_DEFAULT;
    }

    if (s->conf.compact_dead_bytes == 0) {
        s->conf.compact_dead_bytes = KV_COMPACT_DEAD_BYTES_DEFAULT;
    }
    s->fd_next = 0;
    s->written = 0;
    s->prealloc_errno = 0;
    s->compact_cancel = 0;
    s->tables = NULL;
    s->ntables = 0;
    s->tables_gen = 0;
    s->nruns = 0;
    s->spare = NULL;
    s->replay_full = 0;

    for (i = 0; i < KV_FD_CACHE; i++) {
        s->fds[i].segment = 0;
        s->fds[i].fd = -1;
    }
}


void
kv_store_close(kv_store_t *s)
{
    uint32_t     i;
    kv_store_t  *spare;

    for (i = 0; i < KV_FD_CACHE; i++) {
        if (s->fds[i].segment != 0) {
            close(s->fds[i].fd);
            s->fds[i].segment = 0;
            s->fds[i].fd = -1;
        }
    }

    s->fd_next = 0;

    kv_level_close(s);

    spare = __atomic_exchange_n(&s->spare, NULL, __ATOMIC_ACQ_REL);

    if (spare != NULL) {
        kv_store_close(spare);
        free(spare);
    }
}
