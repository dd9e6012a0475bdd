#define _GNU_SOURCE

/*
 * Compaction (merge): copies the live records of every segment up to the
 * active one into new segments and deletes the old ones.
 *
 *  1. Under the lock: A = the active segment; the inputs are every segment
 *     <= A (listed and measured under the lock: metadata only, and a roll
 *     flushes the directory under it anyway); K = ceil(input bytes /
 *     segment_size) + 1 output ids are reserved by rolling the log to
 *     A + K + 1.  An output rolls over once it reaches
 *     segment_size, so every output but the last holds at least
 *     segment_size bytes of the inputs' live data and K always suffices.
 *  2. MERGE ("outputs FIRST LAST\ninputs ID...\n") is written as MERGE.tmp,
 *     flushed, renamed and the directory flushed, before any output exists.
 *  3. Each put record of each input (in id order) whose index entry still
 *     points exactly at it is re-read raw and appended to the current
 *     output: same bytes, sequence number and checksum.  One whose expiry
 *     time had passed when the compaction began is dropped with its
 *     entry.  The lock is held for the index check only, never across
 *     I/O.  Tombstones are not copied: every older segment is an input,
 *     so no older put of their key survives the compaction.  (A tombstone
 *     may only go once no older file can hold its key: Bitcask
 *     resurrected deleted keys by dropping them earlier.)
 *  4. Each output is flushed, then gets its hint file (and, index=sorted,
 *     its table file), both built as its records were copied; the
 *     directory is flushed; MERGE is removed and the directory flushed:
 *     from then on the outputs are part of the store.
 *  5. The outputs are scanned again and each index entry that still points
 *     at the old copy is pointed at the new one (batches per lock hold).
 *  6. The SEQ file keeps the newest sequence number of the inputs (a
 *     dropped tombstone or expired record may have held it).
 *     first_segment moves past the inputs (readers drop their descriptors
 *     of them; a reader with an old location gets KV_ESTALE and looks up
 *     again, one with an open descriptor reads the unlinked file: no byte a
 *     response may send ever changes), then the inputs are unlinked in
 *     ascending order, the directory flushed after each.
 *  7. Counters; the claim is released on every path.
 *
 * Cancel (kv_compact_cancel(), or host->stopping() saying 1): both are
 * checked before each record of step 3 (a relaxed load and a call, cheap
 * beside the lock taken for the index check; at most one record is copied
 * after a cancel).  Until MERGE is removed the compaction is undone as
 * recovery undoes a crash: the outputs MERGE names, then MERGE, are
 * deleted; no index entry refers to them yet, and the roll stays, as after
 * a crash.  Once MERGE is gone there is nothing to undo, only steps 5 and
 * 6 to finish, which write no data (step 5 re-reads the outputs, just
 * written): they run to the end whatever the flag says.
 *
 * Memory: 8 bytes per copied record (its old location; the new one and the
 * key come back from the scan of step 5), a 1 MiB output buffer (or one
 * frame if bigger), a 1 MiB buffer of the output's hint, for index=sorted
 * its table file's builder (8 bytes a key, the first key of each block)
 * and a 64 KiB batch of keys for the swaps.
 *
 * A kill -9 at any moment (recovery replays segments in id order: inputs,
 * outputs, then the new active segment A + K + 1, so a newer write wins):
 *  - before MERGE exists: no output exists; the roll only added an empty
 *    segment.  MERGE.tmp is a *.tmp file, which recovery deletes.
 *  - while MERGE exists (outputs partial or complete, unreferenced: swaps
 *    come later): recovery deletes the outputs MERGE lists, then MERGE;
 *    the inputs are untouched and complete.
 *  - after MERGE is gone (during swaps or unlinks): the outputs are
 *    complete and durable copies of records that were the newest of their
 *    key in the inputs.  Any key whose newest record is a put in the inputs
 *    has it copied, replayed after every input; a key deleted or
 *    overwritten during the compaction has that newer record in A + K + 1,
 *    replayed last.  Inputs are unlinked oldest first, so those left are a
 *    suffix: a tombstone they lack had all older puts of its key in
 *    already deleted inputs, and nothing resurrects.
 * A power cut adds nothing: each step is flushed before the next begins,
 * and the directory is flushed after each unlink, so deletions land in
 * order.  A compactor that dies in a running store leaves its pid as the
 * claim; the next kv_compact_begin() takes it over and kv_compact() first
 * deletes the outputs that the dead one's MERGE lists (no entry refers to
 * them); without MERGE, its inputs and outputs are all inputs of the next
 * one, and inputs it left below first_segment are deleted.
 *
 * Automatic compaction (kv_compact_due): dead_bytes >= compact_dead_bytes,
 * or dead_pct of the data dead once at least one segment's worth is dead.
 * A compaction rewrites every live byte and uses K + 1 segment ids, so a
 * smaller store churning a few keys would otherwise recompact on every
 * check and exhaust the ids; below a segment's worth the directory would
 * not even lose a file.  A requested compaction (kv_compact_request())
 * is due until one completes, so that one cancelled by a reload resumes
 * in the new workers.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "kv_internal.h"


#define KV_COMPACT_BUF   (1024 * 1024)   /* output write buffer */
#define KV_SWAP_KEYS     (64 * 1024)     /* >= KV_MAX_KEY_LIMIT */
#define KV_SWAP_BATCH    512             /* swaps per lock hold */
#define KV_COLLECT_BATCH 4096           /* entries collected per hold */
#define KV_MERGE_AHEAD   8              /* records prefetched ahead */


typedef struct {
    uint64_t          old;
    uint64_t          loc;
    uint32_t          key;               /* offset in keys */
    uint16_t          klen;
} kv_swap_t;


/* index=sorted: an index entry of an input, at the merge's start */
typedef struct {
    uint64_t          key;               /* offset in index_keys */
    uint64_t          loc;
    uint32_t          flen;
    uint16_t          klen;
    uint8_t           dead;              /* a mask, or expired */
} kv_merge_entry_t;


typedef struct {
    kv_store_t       *s;

    uint32_t         *ids;               /* inputs, ascending */
    size_t            nids;
    uint32_t          first;             /* first_segment: ids below it are
                                            left by a dead compactor and
                                            only deleted */
    uint64_t          in_bytes;          /* of all the inputs */
    uint64_t          seq;               /* the newest record's, at the
                                            roll: the SEQ file's floor */
    uint64_t          now;               /* Unix ms: what has expired */
    uint64_t          expired;           /* keys that expired meanwhile */

    uint32_t          first_out;         /* the reserved output ids */
    uint32_t          last_out;
    uint32_t          out;               /* current output, 0: none yet */
    int               out_fd;
    uint64_t          out_size;          /* of out, buffered bytes too */
    uint64_t          out_bytes;         /* of all outputs */
    uint8_t          *buf;               /* frames not yet written */
    size_t            buf_len;
    size_t            buf_cap;
    int               hint_open;
    kv_hint_writer_t  hint;              /* out's, if hint_open */
    kv_table_builder_t
                      table;             /* index=sorted: out's */

    uint32_t          scan;              /* the segment being scanned */
    kv_map_t          in;                /* the input being copied */

    uint64_t         *moved;             /* old location of each copy */
    size_t            nmoved;
    size_t            moved_cap;

    size_t            swapped;           /* moved[] entries seen in step 5 */
    size_t            stale;             /* copies overwritten meanwhile */
    kv_swap_t         batch[KV_SWAP_BATCH];
    size_t            nbatch;
    uint8_t          *keys;              /* KV_SWAP_KEYS bytes */
    size_t            keys_len;

    /* index=sorted */
    kv_merge_entry_t *index;             /* the entries of the inputs,
                                            by key */
    size_t            nindex;
    size_t            index_cap;
    uint8_t          *index_keys;
    size_t            index_keys_len;
    size_t            index_keys_cap;
    kv_map_t         *ins;               /* per input, mapped lazily */
    uint64_t          kept_keys;         /* in the runs not merged */
    uint64_t          kept_index_bytes;
    kv_runs_t         next_runs;         /* the runs once committed */
    kv_runs_t         runs;              /* the runs at the start */
    uint32_t          merge_from;        /* runs [merge_from, n) are
                                            inputs; 0: all, so tombstones
                                            go */
    uint64_t          table_keys;        /* in the outputs */
    uint64_t          table_index_bytes;
    size_t            masks;             /* masks dropped */
} kv_compact_t;


static void
kv_compact_path(const kv_store_t *s, const char *name, char path[PATH_MAX])
{
    snprintf(path, PATH_MAX, "%s/%s", s->conf.dir, name);
}


/* KV_OK, KV_NOTFOUND if there was no such file, or KV_EIO (logged) */
static int
kv_compact_unlink(kv_store_t *s, const char *path)
{
    if (unlink(path) == 0) {
        return KV_OK;
    }

    if (errno == ENOENT) {
        return KV_NOTFOUND;
    }

    kv_log(s->host, KV_LOG_ERR, errno, "unlink(\"%s\") failed", path);

    return KV_EIO;
}


/*
 * Unlinks a segment, its hint (and a hint a dead compactor was writing)
 * and its table file, those first: neither outlives its segment.  Returns
 * what unlinking the segment did.
 */
static int
kv_compact_drop(kv_store_t *s, uint32_t id)
{
    char  path[PATH_MAX];

    kv_hint_path(s, id, KV_TMP_SUFFIX, path);

    if (kv_compact_unlink(s, path) == KV_EIO) {
        return KV_EIO;
    }

    kv_hint_path(s, id, "", path);

    if (kv_compact_unlink(s, path) == KV_EIO) {
        return KV_EIO;
    }

    kv_table_path(s, id, path);

    if (kv_compact_unlink(s, path) == KV_EIO) {
        return KV_EIO;
    }

    kv_segment_path(s, id, path);

    return kv_compact_unlink(s, path);
}


/* Counts segment files created and deleted by the running store. */
static void
kv_compact_count(kv_store_t *s, uint64_t created, uint64_t deleted)
{
    kv_stats_t  *st;

    st = &s->sh->stats;

    s->host->lock(s->host->ctx);
    st->segments += created;
    st->segments -= st->segments < deleted ? st->segments : deleted;
    s->host->unlock(s->host->ctx);
}


/* Creates path; unlike kv_create_file(), logs an existing file too. */
static int kv_merge_drop_floor(kv_store_t *s);
static void kv_merge_choose(kv_compact_t *c);
static int kv_merge_takes(kv_compact_t *c, uint32_t id);


static int
kv_compact_create(kv_store_t *s, const char *path)
{
    int  fd;

    fd = kv_create_file(s, path, O_WRONLY);

    if (fd == -1 && errno == EEXIST) {
        kv_log(s->host, KV_LOG_ERR, EEXIST, "creating \"%s\" failed", path);
    }

    return fd;
}


/* KV_ECORRUPT if MERGE cannot be parsed: written by rename, it is whole */
int
kv_merge_outputs(kv_store_t *s, uint32_t *first, uint32_t *last)
{
    int       fd, rc;
    char      path[PATH_MAX], buf[64];
    ssize_t   n;

    kv_compact_path(s, KV_MERGE_FILE, path);

    rc = kv_open_read(s, path, &fd, NULL);
    if (rc != KV_OK) {
        return rc;
    }

    n = kv_pread_full(fd, (uint8_t *) buf, sizeof(buf) - 1, 0);
    close(fd);

    if (n == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "reading \"%s\" failed", path);
        return KV_EIO;
    }

    buf[n] = '\0';

    if (sscanf(buf, "outputs %" SCNu32 " %" SCNu32, first, last) != 2
        || *first == 0 || *first > *last || *last > KV_SEGMENT_MAX)
    {
        kv_log(s->host, KV_LOG_ERR, 0, "\"%s\" is damaged: it must start "
               "with \"outputs FIRST LAST\"; delete the segments of the "
               "interrupted compaction it names and the file itself", path);
        return KV_ECORRUPT;
    }

    return KV_OK;
}


/*
 * Deletes the outputs of a compaction that did not finish, then MERGE.
 * Sound only while MERGE exists: no index entry refers to an output yet.
 * *removed counts the segment files deleted.  level: KV_LOG_WARN after a
 * crash; KV_LOG_NOTICE when the compactor undoes its own work, having
 * logged why.
 */
static int
kv_merge_remove(kv_store_t *s, int level, uint64_t *removed)
{
    int       rc;
    char      path[PATH_MAX];
    uint32_t   first, last, id, floor;
    kv_runs_t  runs;

    *removed = 0;

    rc = kv_merge_outputs(s, &first, &last);
    if (rc != KV_OK) {
        return rc;
    }

    /*
     * A sorted merge commits by writing TABLES, which then names its
     * outputs (or, with none, its floor): they stay, only MERGE goes.
     */
    if (kv_level_load(s, &runs, &floor) == KV_OK && floor == first) {
        first = last + 1;
    }

    for (id = first; id <= last; id++) {
        rc = kv_compact_drop(s, id);

        if (rc == KV_OK) {
            (*removed)++;

        } else if (rc != KV_NOTFOUND) {
            return rc;
        }
    }

    /* the outputs must be gone for good before MERGE stops naming them */
    rc = kv_flush_dir(s, s->conf.dir);
    if (rc != KV_OK) {
        return rc;
    }

    kv_compact_path(s, KV_MERGE_FILE, path);

    rc = kv_compact_unlink(s, path);
    if (rc != KV_EIO) {
        rc = kv_flush_dir(s, s->conf.dir);
    }

    if (rc == KV_OK && first <= last) {
        kv_log(s->host, level, 0, "removed the outputs of an "
               "interrupted compaction in \"%s\" (segments %u to %u, %"
               PRIu64 " files)", s->conf.dir, first, last, *removed);
    }

    return rc;
}


int
kv_compact_cleanup(kv_store_t *s)
{
    int             rc, found;
    char            path[PATH_MAX];
    size_t          len, slen;
    uint64_t        removed;
    struct dirent  *de;
    DIR            *d;

    rc = kv_merge_remove(s, KV_LOG_WARN, &removed);
    if (rc != KV_OK && rc != KV_NOTFOUND) {
        return rc;
    }

    d = opendir(s->conf.dir);
    if (d == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "opendir(\"%s\") failed",
               s->conf.dir);
        return KV_EIO;
    }

    rc = KV_OK;
    found = 0;
    slen = sizeof(KV_TMP_SUFFIX) - 1;

    while ((de = readdir(d)) != NULL) {
        len = strlen(de->d_name);

        if (len <= slen
            || strcmp(de->d_name + len - slen, KV_TMP_SUFFIX) != 0)
        {
            continue;
        }

        kv_compact_path(s, de->d_name, path);

        if (kv_compact_unlink(s, path) == KV_EIO) {
            rc = KV_EIO;
            break;
        }

        kv_log(s->host, KV_LOG_WARN, 0, "removed \"%s\", left by an "
               "interrupted write", path);
        found = 1;
    }

    closedir(d);

    if (rc == KV_OK && found) {
        rc = kv_flush_dir(s, s->conf.dir);
    }

    if (rc == KV_OK && s->conf.sorted) {
        rc = kv_merge_drop_floor(s);
    }

    return rc;
}


/*
 * index=sorted: the inputs of the last sorted merge that a crash left
 * behind (ids below the floor TABLES records) go, oldest first, as the
 * merge would have deleted them.
 */
static int
kv_merge_drop_floor(kv_store_t *s)
{
    int        rc;
    size_t     i, n;
    uint32_t  *ids, floor, dropped;
    kv_runs_t  runs;

    rc = kv_level_load(s, &runs, &floor);
    if (rc != KV_OK) {
        return rc == KV_EIO ? rc : KV_OK;
    }

    rc = kv_list_segments(s, &ids, &n);
    if (rc != KV_OK) {
        return rc;
    }

    dropped = 0;

    for (i = 0; i < n && ids[i] < floor; i++) {
        if (kv_level_has(&runs, ids[i])) {
            continue;
        }

        rc = kv_compact_drop(s, ids[i]);
        if (rc == KV_EIO) {
            break;
        }

        rc = kv_flush_dir(s, s->conf.dir);
        if (rc != KV_OK) {
            break;
        }

        dropped++;
    }

    free(ids);

    if (dropped) {
        kv_log(s->host, KV_LOG_WARN, 0, "removed %u segments of \"%s\" below "
               "%u, inputs of a merge that had committed", dropped,
               s->conf.dir, floor);
    }

    return rc == KV_NOTFOUND ? KV_OK : rc;
}


int
kv_compact_due(kv_store_t *s)
{
    int                due;
    uint64_t           dead, live;
    kv_shared_t       *sh;
    const kv_conf_t   *conf;

    sh = s->sh;
    conf = &s->conf;

    s->host->lock(s->host->ctx);

    dead = sh->stats.dead_bytes;
    live = sh->stats.live_bytes;

    due = sh->open && sh->compactor == 0 && sh->stats.segments > 1
          && (sh->compact_owed
              || dead >= conf->compact_dead_bytes
              || (dead >= conf->segment_size
                  && dead * 100 >= conf->compact_dead_pct * (live + dead))
              || (conf->sorted && kv_index_crowded(sh)));

    s->host->unlock(s->host->ctx);

    return due;
}


int
kv_compact_begin(kv_store_t *s)
{
    int           rc;
    pid_t         pid;
    kv_shared_t  *sh;

    sh = s->sh;

    s->host->lock(s->host->ctx);

    pid = sh->compactor;

    if (!sh->open) {
        rc = KV_EUNAVAIL;

    } else if (pid != 0 && (kill(pid, 0) == 0 || errno == EPERM)) {
        rc = KV_EBUSY;

    } else {
        sh->compactor = getpid();
        rc = KV_OK;
    }

    s->host->unlock(s->host->ctx);

    /*
     * Cleared here, in the thread that posts the compaction, not when
     * kv_compact() starts: a cancel made while the task waits in the
     * thread pool's queue must not be lost.  Not on KV_EBUSY: s may be the
     * handle of the compaction that runs.
     */
    if (rc == KV_OK) {
        __atomic_store_n(&s->compact_cancel, 0, __ATOMIC_RELAXED);
    }

    if (rc == KV_OK && pid != 0) {
        kv_log(s->host, KV_LOG_WARN, 0, "took over the compaction of \"%s\" "
               "from process %ld, which is gone", s->conf.dir, (long) pid);
    }

    return rc;
}


void
kv_compact_request(kv_store_t *s)
{
    s->host->lock(s->host->ctx);
    s->sh->compact_owed = 1;
    s->host->unlock(s->host->ctx);
}


void
kv_compact_release(kv_store_t *s)
{
    s->host->lock(s->host->ctx);

    if (s->sh->compactor == getpid()) {
        s->sh->compactor = 0;
        s->sh->compact_owed = 0;
    }

    s->host->unlock(s->host->ctx);
}


/* A flag with no data behind it: relaxed, lock-free, signal-safe. */
void
kv_compact_cancel(kv_store_t *s)
{
    __atomic_store_n(&s->compact_cancel, 1, __ATOMIC_RELAXED);
}


static int
kv_compact_cancelled(kv_compact_t *c)
{
    const kv_host_t  *host = c->s->host;

    return __atomic_load_n(&c->s->compact_cancel, __ATOMIC_RELAXED) != 0
           || (host->stopping != NULL && host->stopping(host->ctx));
}


/*
 * index=sorted, with the lock held: which runs the merge takes besides
 * the log segments the index points into.  The newest runs go in while
 * the next older one is at most twice what is merged so far: run sizes
 * then grow geometrically, and a record is rewritten a logarithmic number
 * of times (size-tiered merging).  All of them when an operator asked for
 * a compaction (to reclaim space: tombstones go only then), or when the
 * runs would be too many.  The segments of the runs kept are not inputs.
 */
static void
kv_merge_choose(kv_compact_t *c)
{
    size_t        i, j;
    uint32_t      k;
    uint64_t      sum;
    kv_shared_t  *sh;

    sh = c->s->sh;
    k = c->runs.n;

    sum = sh->stats.live_bytes > sh->stats.table_bytes
          ? sh->stats.live_bytes - sh->stats.table_bytes : 1;

    while (k > 0 && c->runs.run[k - 1].bytes <= 2 * sum) {
        sum += c->runs.run[k - 1].bytes;
        k--;
    }

    if (sh->compact_owed || k + 1 > KV_RUNS_MAX) {
        k = 0;
    }

    c->merge_from = k;

    for (i = 0, j = 0; i < c->nids; i++) {
        if (!kv_level_has(&c->runs, c->ids[i])
            || kv_merge_takes(c, c->ids[i]))
        {
            c->ids[j++] = c->ids[i];
        }
    }

    c->nids = j;
}


/* 1 if id is a segment of a run the merge takes */
static int
kv_merge_takes(kv_compact_t *c, uint32_t id)
{
    uint32_t  r;

    for (r = c->merge_from; r < c->runs.n; r++) {
        if (id >= c->runs.run[r].first && id <= c->runs.run[r].last) {
            return 1;
        }
    }

    return 0;
}


/*
 * Step 1, with the lock held: lists and measures the inputs, reserves the
 * output ids and rolls the log past them.
 */
static int
kv_compact_start(kv_compact_t *c)
{
    int           rc;
    char          path[PATH_MAX];
    size_t        i;
    uint64_t      a, k, copy, seg, size;
    kv_store_t   *s;
    kv_shared_t  *sh;
    struct stat   st;

    s = c->s;
    sh = s->sh;

    if (!sh->open) {
        return KV_EUNAVAIL;
    }

    a = sh->segment;
    c->first = sh->first_segment;
    c->seq = sh->seq;
    c->now = kv_now_ms(s->host);
    c->runs = sh->runs;

    rc = kv_list_segments(s, &c->ids, &c->nids);
    if (rc != KV_OK) {
        return rc;
    }

    /* every id <= a exists: a segment is created, then made active */
    while (c->nids > 0 && c->ids[c->nids - 1] > a) {
        c->nids--;
    }

    if (s->conf.sorted) {
        kv_merge_choose(c);
    }

    copy = 0;

    for (i = 0; i < c->nids; i++) {
        kv_segment_path(s, c->ids[i], path);

        if (stat(path, &st) == -1) {
            kv_log(s->host, KV_LOG_ERR, errno, "stat(\"%s\") failed", path);
            return KV_EIO;
        }

        /* the active segment's records, not the zeros ahead of them */
        size = c->ids[i] == a ? sh->write_off : (uint64_t) st.st_size;

        c->in_bytes += size;

        if (c->ids[i] >= c->first) {
            copy += size;
        }
    }

    seg = s->conf.segment_size;
    k = (copy + seg - 1) / seg + 1;

    if (a + k + 1 > KV_SEGMENT_MAX) {
        kv_log(s->host, KV_LOG_ERR, 0, "compacting \"%s\" needs segment "
               "ids past %u: the store has used them all", s->conf.dir,
               KV_SEGMENT_MAX);
        return KV_EINVAL;
    }

    c->first_out = a + 1;
    c->last_out = (uint32_t) (a + k);

    return kv_roll(s, c->last_out + 1);
}


/* Step 2: MERGE names the outputs before the first one exists. */
static int
kv_merge_write(kv_compact_t *c)
{
    int          rc;
    char        *text;
    size_t       i, len, cap;
    kv_store_t  *s;

    s = c->s;

    cap = 64 + c->nids * 11;
    text = malloc(cap);
    if (text == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "no memory to compact \"%s\"",
               s->conf.dir);
        return KV_EIO;
    }

    len = (size_t) snprintf(text, cap, "outputs %u %u\ninputs",
                            c->first_out, c->last_out);

    for (i = 0; i < c->nids; i++) {
        len += (size_t) snprintf(text + len, cap - len, " %u", c->ids[i]);
    }

    text[len++] = '\n';

    rc = kv_replace_file(s, KV_MERGE_FILE, text, len);

    free(text);

    return rc;
}


/* Writes the buffered frames at the end of the current output. */
static int
kv_output_write(kv_compact_t *c)
{
    char      path[PATH_MAX];
    size_t    done;
    ssize_t   n;
    uint64_t  off;

    off = c->out_size - c->buf_len;

    for (done = 0; done < c->buf_len; done += (size_t) n) {
        n = pwrite(c->out_fd, c->buf + done, c->buf_len - done,
                   (off_t) (off + done));

        if (n == -1) {
            if (errno == EINTR) {
                n = 0;
                continue;
            }

            kv_segment_path(c->s, c->out, path);
            kv_log(c->s->host, KV_LOG_ERR, errno, "writing %zu bytes to "
                   "\"%s\" at offset %" PRIu64 " failed", c->buf_len - done,
                   path, off + done);

            return (errno == ENOSPC || errno == EDQUOT) ? KV_ENOSPC : KV_EIO;
        }
    }

    c->buf_len = 0;

    return KV_OK;
}


/*
 * Completes the current output: written and flushed, then its hint and
 * (index=sorted) its table file, built as its records were copied.  With
 * rc not KV_OK (a failed compaction), only closes it and drops them.
 */
static int
kv_output_close(kv_compact_t *c, int rc)
{
    char      path[PATH_MAX];
    uint64_t  len;

    if (rc == KV_OK) {
        rc = kv_output_write(c);
    }

    if (rc == KV_OK) {
        kv_segment_path(c->s, c->out, path);
        rc = kv_flush(c->s, c->out_fd, path);
    }

    close(c->out_fd);
    c->out_fd = -1;
    c->out_bytes += c->out_size;

    /* a hint only saves a scan at start-up: its failure is logged only */
    if (c->hint_open) {
        (void) kv_hint_end(&c->hint, c->out_size, rc);
        c->hint_open = 0;
    }

    /* a sorted segment is found through its table file: it must exist */
    if (c->s->conf.sorted) {
        len = 0;
        rc = kv_table_end(&c->table, c->out_size, rc, &len);
        c->table_index_bytes += len;
    }

    return rc;
}


static int
kv_output_next(kv_compact_t *c)
{
    int   rc;
    char  path[PATH_MAX];

    if (c->out_fd != -1) {
        rc = kv_output_close(c, KV_OK);
        if (rc != KV_OK) {
            return rc;
        }
    }

    c->out = c->out ? c->out + 1 : c->first_out;
    c->out_size = 0;

    kv_segment_path(c->s, c->out, path);

    if (c->out > c->last_out) {
        /* cannot happen: K bounds the outputs (see the top) */
        kv_log(c->s->host, KV_LOG_ERR, 0, "compaction needs \"%s\", past "
               "the %u output ids it reserved", path,
               c->last_out - c->first_out + 1);
        return KV_EINVAL;
    }

    c->out_fd = kv_compact_create(c->s, path);
    if (c->out_fd == -1) {
        return KV_EIO;
    }

    kv_compact_count(c->s, 1, 0);

    /* without a hint (logged), start-up scans the output instead */
    c->hint_open = (kv_hint_begin(c->s, c->out, &c->hint) == KV_OK);

    if (c->s->conf.sorted) {
        kv_table_begin(&c->table, c->s, c->out);
    }

    return KV_OK;
}


/*
 * The hint entry and (index=sorted) the table's key of a frame copied to
 * off of the current output, from the frame itself: no second pass over
 * the output reads it again.
 */
static int
kv_output_describe(kv_compact_t *c, const uint8_t *frame, uint32_t flen,
    uint64_t off)
{
    int          rc;
    char         path[PATH_MAX];
    kv_peek_t    pk;
    kv_record_t  rec;

    if (kv_frame_peek(frame, flen, &pk) != 0 || pk.flen != flen) {
        kv_segment_path(c->s, c->out, path);
        kv_log(c->s->host, KV_LOG_ERR, 0, "a record copied to \"%s\" at "
               "offset %" PRIu64 " (%u bytes) does not decode", path, off,
               flen);
        return KV_ECORRUPT;
    }

    if (c->hint_open) {
        memset(&rec, 0, sizeof(kv_record_t));
        rec.seq = pk.seq;
        rec.key = pk.key;
        rec.klen = pk.klen;
        rec.vlen = pk.vlen;
        rec.type = pk.type;
        rec.tombstone = pk.tombstone;
        rec.expires_at_ms = pk.expires_at_ms;

        rc = kv_hint_add(&c->hint, &rec, flen);

        if (rc != KV_OK) {
            (void) kv_hint_end(&c->hint, 0, rc);
            c->hint_open = 0;
        }
    }

    return c->s->conf.sorted ? kv_table_add(&c->table, pk.key, pk.klen, off)
                             : KV_OK;
}


/*
 * Appends the frame at off of input id (mapped as in), byte for byte, once
 * its checksum is verified; key names it in a log line.
 */
static int
kv_compact_copy(kv_compact_t *c, const kv_map_t *in, uint32_t id,
    const uint8_t *key, size_t klen, uint64_t off, uint32_t flen)
{
    int        rc;
    char       path[PATH_MAX], kbuf[KV_KEY_STR_LEN];
    size_t     cap;
    uint8_t   *p;
    uint64_t  *m;

    if (c->out == 0 || c->out_size >= c->s->conf.segment_size) {
        rc = kv_output_next(c);
        if (rc != KV_OK) {
            return rc;
        }
    }

    if (c->buf_cap - c->buf_len < flen) {
        rc = kv_output_write(c);
        if (rc != KV_OK) {
            return rc;
        }
    }

    if (c->buf_cap < flen) {
        p = realloc(c->buf, flen);
        if (p == NULL) {
            goto nomem;
        }

        c->buf = p;
        c->buf_cap = flen;
    }

    if (!c->s->conf.sorted && c->nmoved == c->moved_cap) {
        cap = 2 * c->moved_cap + 4096;

        m = realloc(c->moved, cap * sizeof(uint64_t));
        if (m == NULL) {
            goto nomem;
        }

        c->moved = m;
        c->moved_cap = cap;
    }

    if (off > in->len || in->len - off < flen
        || kv_frame_verify(in->p + off, flen) != KV_OK)
    {
        kv_segment_path(c->s, id, path);
        kv_log(c->s->host, KV_LOG_ERR, 0, "re-reading the record of key "
               "\"%s\" in \"%s\" at offset %" PRIu64 " (%u bytes) failed",
               kv_key_str(key, klen, kbuf), path, off, flen);
        return KV_ECORRUPT;
    }

    rc = kv_output_describe(c, in->p + off, flen, c->out_size);
    if (rc != KV_OK) {
        return rc;
    }

    memcpy(c->buf + c->buf_len, in->p + off, flen);

    c->buf_len += flen;
    c->out_size += flen;

    if (!c->s->conf.sorted) {
        c->moved[c->nmoved++] = KV_LOC(id, off);
    }

    return KV_OK;

nomem:

    kv_log(c->s->host, KV_LOG_ERR, errno, "no memory to copy the record of "
           "key \"%s\" (%u bytes)", kv_key_str(key, klen, kbuf), flen);

    return KV_EIO;
}


/*
 * Step 3, for each record of an input: copies it if it is live.  A record
 * whose time ran out before the compaction began is not copied, and its
 * entry goes: the key expired (its older records are dead already).
 */
static int
kv_compact_record(void *ctx, const kv_record_t *rec, uint64_t off,
    uint32_t flen)
{
    int                live;
    kv_ref_t          *link;
    kv_entry_t        *e;
    kv_compact_t      *c;
    const kv_host_t   *host;

    c = ctx;
    host = c->s->host;

    if (kv_compact_cancelled(c)) {
        return KV_ECANCELED;
    }

    if (rec->tombstone) {
        return KV_OK;
    }

    host->lock(host->ctx);

    e = kv_index_find(host, c->s->sh, rec->key, rec->klen, &link);
    live = (e != NULL && e->loc == KV_LOC(c->scan, off));

    if (live && kv_entry_expired(e, c->now)) {
        kv_index_expire(host, c->s->sh, link, e);
        c->expired++;
        live = 0;
    }

    host->unlock(host->ctx);

    return live ? kv_compact_copy(c, &c->in, c->scan, rec->key, rec->klen,
                                  off, flen)
                : KV_OK;
}


/* Calls fn for every record of segment id; a bad frame is an error. */
static int
kv_compact_scan(kv_compact_t *c, uint32_t id, kv_scan_pt fn)
{
    int       rc;
    char      path[PATH_MAX];
    uint64_t  end, size;

    rc = kv_scan_segment(c->s, id, 0, fn, c, &end, &size);

    if (rc == KV_OK && end < size) {
        kv_segment_path(c->s, id, path);
        kv_log(c->s->host, KV_LOG_ERR, 0, "corrupt record in \"%s\" at "
               "offset %" PRIu64 ": compaction stopped, nothing deleted",
               path, end);
        rc = KV_ECORRUPT;
    }

    return rc;
}


/*
 * index=sorted, step 3: the index entries of the inputs, by key: the key
 * order's entries, a few thousand per hold of the lock, each batch from
 * where the last one ended (the first key past its last one: entries may
 * go meanwhile), so they need no sort.  A write meanwhile goes to a
 * segment past the inputs, so what is collected is each key's newest
 * record among the inputs, unless a newer one replaces it later (the swap
 * then leaves that entry alone).
 */
static int
kv_merge_collect(kv_compact_t *c)
{
    int                ret;
    void              *p;
    size_t             n, last_len;
    uint8_t           *last;
    uint32_t           seg, end;
    kv_entry_t        *e, *b;
    kv_shared_t       *sh;
    kv_merge_entry_t  *m;
    const kv_host_t   *host;

    sh = c->s->sh;
    host = c->s->host;
    end = c->first_out - 1;
    last_len = 0;
    ret = KV_OK;

    last = malloc(KV_MAX_KEY_LIMIT);
    if (last == NULL) {
        ret = KV_ENOMEM;
        goto failed;
    }

    do {
        kv_lock_background(c->s);

        e = kv_order_seek(host, sh, last_len ? last : NULL, last_len, 1);

        for (n = 0; e != NULL && n < KV_COLLECT_BATCH && ret == KV_OK;
             e = kv_order_next(host, e), n++)
        {
            /*
             * the bucket's entry is the key's: a worker killed between
             * the key order and the bucket may have left the order an
             * entry the bucket no longer holds, or a second one of a key
             */
            if (kv_key_cmp(e->key, e->klen, last, last_len) == 0) {
                continue;
            }

            memcpy(last, e->key, e->klen);
            last_len = e->klen;

            b = kv_index_find(host, sh, last, last_len, NULL);
            if (b == NULL) {
                continue;
            }

            seg = (uint32_t) (b->loc >> KV_LOC_OFFSET_BITS);

            if (seg < c->first || seg > end) {
                continue;
            }

            if (c->nindex == c->index_cap) {
                c->index_cap = 2 * c->index_cap + 4096;
                p = realloc(c->index, c->index_cap * sizeof(kv_merge_entry_t));
                if (p == NULL) {
                    ret = KV_ENOMEM;
                    break;
                }

                c->index = p;
            }

            if (c->index_keys_cap - c->index_keys_len < e->klen) {
                c->index_keys_cap = 2 * c->index_keys_cap + 65536;
                p = realloc(c->index_keys, c->index_keys_cap);
                if (p == NULL) {
                    ret = KV_ENOMEM;
                    break;
                }

                c->index_keys = p;
            }

            m = &c->index[c->nindex++];
            m->key = c->index_keys_len;
            m->klen = b->klen;
            m->loc = b->loc;
            m->flen = b->flen;
            m->dead = (b->flags & KV_ENTRY_MASK)
                      || kv_entry_expired(b, c->now);

            memcpy(c->index_keys + c->index_keys_len, b->key, b->klen);
            c->index_keys_len += b->klen;
        }

        kv_unlock(c->s);

    } while (e != NULL && ret == KV_OK);

    free(last);

    if (ret == KV_OK) {
        return KV_OK;
    }

failed:

    kv_log(host, KV_LOG_ERR, errno, "no memory for the index entries "
           "of the merge of \"%s\"", c->s->conf.dir);

    return ret;
}


/* the map of input id, NULL if the merge did not list it */
static kv_map_t *
kv_merge_slot(kv_compact_t *c, uint32_t id)
{
    uint32_t  *i;

    i = bsearch(&id, c->ids, c->nids, sizeof(uint32_t), kv_cmp_id);

    return i != NULL ? &c->ins[i - c->ids] : NULL;
}


/* input id, mapped once */
static int
kv_merge_input(kv_compact_t *c, uint32_t id, const kv_map_t **in)
{
    int        rc;
    kv_map_t  *m;

    m = kv_merge_slot(c, id);
    if (m == NULL) {
        kv_log(c->s->host, KV_LOG_ERR, 0, "a record to merge in \"%s\" is "
               "in segment %u, which the merge did not list", c->s->conf.dir,
               id);
        return KV_ECORRUPT;
    }

    if (m->p == NULL) {
        rc = kv_segment_map(c->s, id, m);
        if (rc != KV_OK) {
            return rc;
        }
    }

    *in = m;

    return KV_OK;
}


/*
 * An index entry's record lies anywhere in the log: the merge reads them
 * in key order, so each would be a cache miss, taken here KV_MERGE_AHEAD
 * entries early instead.
 */
static void
kv_merge_prefetch(kv_compact_t *c, const kv_merge_entry_t *h)
{
    uint64_t         off;
    const kv_map_t  *in;

    /* an input not mapped yet is left to kv_merge_input(), which logs */

    in = kv_merge_slot(c, (uint32_t) (h->loc >> KV_LOC_OFFSET_BITS));

    if (in == NULL || in->p == NULL) {
        return;
    }

    off = h->loc & (((uint64_t) 1 << KV_LOC_OFFSET_BITS) - 1);

    if (off < in->len && in->len - off >= h->flen) {
        __builtin_prefetch(in->p + off);
        __builtin_prefetch(in->p + off + h->flen - 1);
    }
}


/* copies a record of an input: an index entry's or a run's */
static int
kv_merge_copy(kv_compact_t *c, uint32_t id, const uint8_t *key, size_t klen,
    uint64_t off, uint32_t flen)
{
    int              rc;
    const kv_map_t  *in;

    rc = kv_merge_input(c, id, &in);
    if (rc != KV_OK) {
        return rc;
    }

    return kv_compact_copy(c, in, id, key, klen, off, flen);
}


/*
 * index=sorted, step 3: the outputs in key order.  For each key, the
 * newest of its records in the inputs is written: the index entry's, else
 * the newest merged run's.  When every run is merged (merge_from 0),
 * nothing older of a key survives, so a tombstone, a mask or an expired
 * record is dropped; otherwise it is written, to hide the key's records in
 * the older runs (a mask as the tombstone or expired record it points at).
 */
static int
kv_merge_sorted(kv_compact_t *c)
{
    int                     rc, cmp, drop, dead;
    size_t                  i, hi;
    uint32_t                r, nr;
    kv_store_t             *s;
    kv_runs_t               runs;
    kv_merge_entry_t       *h;
    kv_level_iter_t         li;
    const kv_table_iter_t  *rec;

    s = c->s;
    drop = (c->merge_from == 0);
    nr = c->runs.n - c->merge_from;
    li.run = NULL;

    c->ins = calloc(c->nids + 1, sizeof(kv_map_t));
    if (c->ins == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "no memory to merge \"%s\"",
               s->conf.dir);
        return KV_ENOMEM;
    }

    rc = kv_merge_collect(c);
    if (rc != KV_OK) {
        goto done;
    }

    /* a handle of its own: any generation but the ones in use */
    runs = c->runs;
    runs.gen = UINT32_MAX;

    rc = kv_level_open(s, &runs);
    if (rc != KV_OK) {
        goto done;
    }

    for (r = 0; r < c->merge_from; r++) {
        for (i = r ? s->run_end[r - 1] : 0; i < s->run_end[r]; i++) {
            c->kept_keys += s->tables[i].nkeys;
            c->kept_index_bytes += s->tables[i].map_len;
        }
    }

    rc = kv_level_iter_open(&li, s, nr, NULL, 0);
    if (rc != KV_OK) {
        goto done;
    }

    hi = 0;

    for ( ;; ) {
        if (kv_compact_cancelled(c)) {
            rc = KV_ECANCELED;
            goto done;
        }

        if (li.rc != KV_OK) {
            rc = li.rc;
            goto done;
        }

        /* the smallest key of the index's and the runs' */

        h = hi < c->nindex ? &c->index[hi] : NULL;
        rec = li.rec;

        if (h == NULL && rec == NULL) {
            break;
        }

        cmp = h == NULL ? 1
              : rec == NULL ? -1
              : kv_key_cmp(c->index_keys + h->key, h->klen, rec->pk.key,
                           rec->pk.klen);

        if (cmp <= 0) {
            /* the index entry is the newest record of its key */

            if (hi + KV_MERGE_AHEAD < c->nindex) {
                kv_merge_prefetch(c, &c->index[hi + KV_MERGE_AHEAD]);
            }

            if (!h->dead || !drop) {
                rc = kv_merge_copy(c, (uint32_t) (h->loc >> KV_LOC_OFFSET_BITS),
                                   c->index_keys + h->key, h->klen,
                                   h->loc & (((uint64_t) 1 << KV_LOC_OFFSET_BITS)
                                             - 1),
                                   h->flen);
            }

            c->table_keys += !h->dead;
            c->masks += h->dead;
            hi++;

        } else {
            dead = rec->pk.tombstone
                   || (rec->pk.expires_at_ms != 0
                       && rec->pk.expires_at_ms <= c->now);

            if (!dead || !drop) {
                rc = kv_merge_copy(c, rec->t->id, rec->pk.key, rec->pk.klen,
                                   rec->off, rec->pk.flen);
                c->table_keys += !dead;
            }

            c->expired += dead && drop;
        }

        if (rc != KV_OK) {
            goto done;
        }

        if (cmp >= 0) {
            kv_level_iter_next(&li);
        }
    }

    rc = KV_OK;

done:

    for (i = 0; i < c->nids; i++) {
        kv_segment_unmap(&c->ins[i]);
    }

    kv_level_iter_close(&li);
    kv_level_close(s);

    return rc;
}


/* Steps 3 and 4: the outputs, complete and durable, then MERGE removed. */
static int
kv_compact_outputs(kv_compact_t *c)
{
    int          rc;
    char         path[PATH_MAX];
    size_t       i;
    kv_run_t    *r;
    kv_store_t  *s;

    s = c->s;

    c->buf_cap = KV_COMPACT_BUF;
    c->buf = malloc(c->buf_cap);
    if (c->buf == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "no memory to compact \"%s\"",
               s->conf.dir);
        return KV_EIO;
    }

    for (i = 0; !s->conf.sorted && i < c->nids; i++) {
        if (c->ids[i] < c->first) {
            continue;
        }

        c->scan = c->ids[i];

        rc = kv_segment_map(s, c->scan, &c->in);
        if (rc != KV_OK) {
            return rc;
        }

        rc = kv_compact_scan(c, c->scan, kv_compact_record);

        kv_segment_unmap(&c->in);

        if (rc != KV_OK) {
            return rc;
        }
    }

    if (s->conf.sorted) {
        rc = kv_merge_sorted(c);
        if (rc != KV_OK) {
            return rc;
        }
    }

    if (c->out_fd != -1) {
        rc = kv_output_close(c, KV_OK);
        if (rc != KV_OK) {
            return rc;
        }
    }

    rc = kv_flush_dir(s, s->conf.dir);
    if (rc != KV_OK) {
        return rc;
    }

    /* a sorted merge commits here: see kv_merge_remove() and kv_level.c */
    if (s->conf.sorted) {
        c->next_runs = c->runs;
        c->next_runs.n = c->merge_from;
        c->next_runs.gen = c->runs.gen + 1;

        if (c->out != 0) {
            r = &c->next_runs.run[c->next_runs.n++];
            r->first = c->first_out;
            r->last = c->out;
            r->bytes = c->out_bytes;
        }

        rc = kv_level_save(s, &c->next_runs, c->first_out);
        if (rc != KV_OK) {
            return rc;
        }
    }

    kv_compact_path(s, KV_MERGE_FILE, path);

    if (unlink(path) == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "unlink(\"%s\") failed", path);
        return KV_EIO;
    }

    return kv_flush_dir(s, s->conf.dir);
}


/* Step 5: points the entries of a batch at the copies, if still current. */
static void
kv_swap_batch(kv_compact_t *c)
{
    size_t             i;
    kv_swap_t         *w;
    kv_entry_t        *e;
    const kv_host_t   *host;

    host = c->s->host;

    kv_lock_background(c->s);

    for (i = 0; i < c->nbatch; i++) {
        w = &c->batch[i];
        e = kv_index_find(host, c->s->sh, c->keys + w->key, w->klen, NULL);

        if (e != NULL && e->loc == w->old) {
            e->loc = w->loc;
            e->flags &= (uint8_t) ~KV_ENTRY_VERIFIED;

        } else {
            c->stale++;
        }
    }

    kv_unlock(c->s);

    c->nbatch = 0;
    c->keys_len = 0;
}


/* Step 5, for each record of an output: the key, with its old location. */
static int
kv_swap_record(void *ctx, const kv_record_t *rec, uint64_t off,
    uint32_t flen)
{
    char           path[PATH_MAX], kbuf[KV_KEY_STR_LEN];
    kv_swap_t     *w;
    kv_compact_t  *c;

    (void) flen;

    c = ctx;

    if (c->swapped == c->nmoved) {
        kv_segment_path(c->s, c->scan, path);
        kv_log(c->s->host, KV_LOG_ERR, 0, "\"%s\" holds an unexpected "
               "record of key \"%s\" at offset %" PRIu64, path,
               kv_key_str(rec->key, rec->klen, kbuf), off);
        return KV_ECORRUPT;
    }

    if (c->nbatch == KV_SWAP_BATCH || KV_SWAP_KEYS - c->keys_len < rec->klen) {
        kv_swap_batch(c);
    }

    w = &c->batch[c->nbatch++];
    w->old = c->moved[c->swapped++];
    w->loc = KV_LOC(c->scan, off);
    w->key = (uint32_t) c->keys_len;
    w->klen = (uint16_t) rec->klen;

    memcpy(c->keys + c->keys_len, rec->key, rec->klen);
    c->keys_len += rec->klen;

    return KV_OK;
}


static int
kv_compact_swap(kv_compact_t *c)
{
    int       rc;
    uint32_t  id;

    c->keys = malloc(KV_SWAP_KEYS);
    if (c->keys == NULL) {
        kv_log(c->s->host, KV_LOG_ERR, errno, "no memory to compact \"%s\"",
               c->s->conf.dir);
        return KV_EIO;
    }

    for (id = c->first_out; c->out != 0 && id <= c->out; id++) {
        c->scan = id;

        rc = kv_compact_scan(c, id, kv_swap_record);

        kv_swap_batch(c);

        if (rc != KV_OK) {
            return rc;
        }
    }

    if (c->swapped != c->nmoved) {
        kv_log(c->s->host, KV_LOG_ERR, 0, "the outputs of the compaction of "
               "\"%s\" hold %zu of the %zu records copied", c->s->conf.dir,
               c->swapped, c->nmoved);
        return KV_ECORRUPT;
    }

    return KV_OK;
}


/*
 * index=sorted, step 5: the outputs become the store's sorted segments,
 * then the index entries they took over go (a batch per hold of the
 * lock): in that order, a lookup that misses an entry finds the new
 * tables.  An entry replaced meanwhile stays, being newer.
 */
static void
kv_merge_swap(kv_compact_t *c)
{
    size_t              i, j, k, n, moved;
    uint64_t            bytes;
    kv_ref_t           *link;
    kv_entry_t         *e;
    kv_shared_t        *sh;
    kv_merge_entry_t   *m;
    kv_order_finger_t   f;
    const kv_host_t    *host;

    sh = c->s->sh;
    host = c->s->host;
    moved = 0;

    kv_lock_background(c->s);

    /* the bytes of the runs merged become the new run's */

    bytes = 0;

    for (i = c->merge_from; i < c->runs.n; i++) {
        bytes += c->runs.run[i].bytes;
    }

    sh->stats.live_bytes -= bytes < sh->stats.live_bytes
                            ? bytes : sh->stats.live_bytes;
    sh->stats.table_bytes -= bytes < sh->stats.table_bytes
                             ? bytes : sh->stats.table_bytes;
    sh->stats.live_bytes += c->out_bytes;
    sh->stats.table_bytes += c->out_bytes;
    sh->stats.table_keys = c->table_keys + c->kept_keys;
    sh->stats.table_index_bytes = c->table_index_bytes + c->kept_index_bytes;

    sh->runs = c->next_runs;

    kv_unlock(c->s);

    for (i = 0; i < c->nindex; i = n) {
        n = c->nindex - i > KV_SWAP_BATCH ? i + KV_SWAP_BATCH : c->nindex;

        /*
         * the batch's buckets, then their chains' first entries, are
         * loaded into the cache before the lock, not missed under it
         */
        for (j = 0; j < 2; j++) {
            for (k = i; k < n; k++) {
                m = &c->index[k];
                kv_index_prefetch(host, sh, c->index_keys + m->key, m->klen,
                                  (int) j);
            }
        }

        kv_lock_background(c->s);

        /* the entries go in key order: each unlinked from the last's place */
        f.valid = 0;

        for ( /* void */ ; i < n; i++) {
            m = &c->index[i];
            e = kv_index_find(host, sh, c->index_keys + m->key, m->klen,
                              &link);

            if (e == NULL || e->loc != m->loc) {
                c->stale++;
                continue;
            }

            /* a mask here: the key expired during the merge */

            if (m->dead || (e->flags & KV_ENTRY_MASK)) {
                kv_index_remove(host, sh, link, e, &f);

            } else {
                kv_index_moved(host, sh, link, e, &f);
                moved++;
            }
        }

        kv_unlock(c->s);
    }

    c->nmoved = moved;
}


/*
 * Step 6: the inputs go, oldest first and one directory flush each, so
 * those left after a crash are always the newest ones (see the top).
 */
static int
kv_compact_drop_inputs(kv_compact_t *c, uint64_t *dropped)
{
    int          rc;
    size_t       i;
    kv_store_t  *s;

    s = c->s;

    s->host->lock(s->host->ctx);
    s->sh->first_segment = c->first_out;

    /* the runs a sorted merge kept are older than its outputs */
    if (c->next_runs.n != 0 && c->next_runs.run[0].first < c->first_out) {
        s->sh->first_segment = c->next_runs.run[0].first;
    }

    s->host->unlock(s->host->ctx);

    *dropped = 0;

    for (i = 0; i < c->nids; i++) {
        rc = kv_compact_drop(s, c->ids[i]);
        if (rc == KV_EIO) {
            return rc;
        }

        *dropped += (rc == KV_OK);

        rc = kv_flush_dir(s, s->conf.dir);
        if (rc != KV_OK) {
            return rc;
        }
    }

    return KV_OK;
}


int
kv_compact(kv_store_t *s)
{
    int            rc;
    uint64_t       removed, dropped, reclaimed;
    kv_shared_t   *sh;
    kv_compact_t  *c;

    sh = s->sh;
    dropped = 0;

    s->host->lock(s->host->ctx);
    rc = (sh->compactor == getpid()) ? KV_OK : KV_EINVAL;
    s->host->unlock(s->host->ctx);

    if (rc != KV_OK) {
        kv_log(s->host, KV_LOG_ERR, 0, "kv_compact(\"%s\") without "
               "kv_compact_begin()", s->conf.dir);
        return rc;
    }

    c = calloc(1, sizeof(kv_compact_t));
    if (c == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "no memory to compact \"%s\"",
               s->conf.dir);
        rc = KV_EIO;
        goto release;
    }

    c->s = s;
    c->out_fd = -1;

    /* the outputs of a compactor that died, whose claim was taken over */
    rc = kv_merge_remove(s, KV_LOG_WARN, &removed);
    kv_compact_count(s, 0, removed);

    if (rc == KV_OK || rc == KV_NOTFOUND) {
        s->host->lock(s->host->ctx);
        rc = kv_compact_start(c);
        s->host->unlock(s->host->ctx);
    }

    if (rc == KV_OK) {
        rc = kv_merge_write(c);

        if (rc == KV_OK) {
            rc = kv_compact_outputs(c);
        }

        if (c->out_fd != -1) {
            (void) kv_output_close(c, rc == KV_OK ? KV_EIO : rc);
        }

        /* undo: MERGE, while it exists, names the outputs to remove */
        if (rc != KV_OK) {
            (void) kv_merge_remove(s, KV_LOG_NOTICE, &removed);
            kv_compact_count(s, 0, removed);
        }
    }

    if (rc == KV_OK && s->conf.sorted) {
        kv_merge_swap(c);

    } else if (rc == KV_OK) {
        rc = kv_compact_swap(c);
    }

    /* the inputs may hold the newest sequence numbers: keep the floor */
    if (rc == KV_OK) {
        rc = kv_seq_save(s, c->seq);
    }

    if (rc == KV_OK) {
        rc = kv_compact_drop_inputs(c, &dropped);
        kv_compact_count(s, 0, dropped);
    }

    if (rc == KV_OK) {
        s->host->lock(s->host->ctx);
        reclaimed = c->in_bytes - c->out_bytes;
        sh->stats.dead_bytes -= sh->stats.dead_bytes < reclaimed
                                ? sh->stats.dead_bytes : reclaimed;
        sh->stats.reclaimed_bytes += reclaimed;
        sh->stats.compacted_bytes += c->out_bytes;
        sh->stats.compactions++;
        s->host->unlock(s->host->ctx);

        if (s->conf.sorted) {
            kv_log(s->host, KV_LOG_NOTICE, 0, "merged segments up to %u of "
                   "\"%s\" into %u sorted segments: %" PRIu64 " keys, %zu "
                   "of them taken from the index (%zu entries written "
                   "meanwhile kept), %zu deleted keys and %" PRIu64
                   " expired ones dropped, %" PRIu64 " of %" PRIu64 " bytes "
                   "reclaimed", c->first_out - 1, s->conf.dir,
                   c->out ? c->out - c->first_out + 1 : 0, c->table_keys,
                   c->nmoved, c->stale, c->masks, c->expired,
                   c->in_bytes - c->out_bytes, c->in_bytes);

        } else {
            kv_log(s->host, KV_LOG_NOTICE, 0, "compacted segments up to %u "
                   "of \"%s\" into %u segments: %zu records kept (%zu "
                   "overwritten meanwhile), %" PRIu64 " expired keys "
                   "dropped, %" PRIu64 " of %" PRIu64 " bytes reclaimed",
                   c->first_out - 1, s->conf.dir,
                   c->out ? c->out - c->first_out + 1 : 0, c->nmoved,
                   c->stale, c->expired, c->in_bytes - c->out_bytes,
                   c->in_bytes);
        }

    } else if (rc == KV_ECANCELED) {
        kv_log(s->host, KV_LOG_NOTICE, 0, "compaction of \"%s\" cancelled; "
               "its inputs are kept", s->conf.dir);

    } else if (dropped == 0) {
        kv_log(s->host, KV_LOG_ERR, 0, "compaction of \"%s\" failed (%s); "
               "its inputs are kept", s->conf.dir, kv_strerror(rc));

    } else {
        kv_log(s->host, KV_LOG_ERR, 0, "compaction of \"%s\" failed (%s) "
               "after deleting %" PRIu64 " of its %zu inputs; their live "
               "records are in its outputs", s->conf.dir, kv_strerror(rc),
               dropped, c->nids);
    }

    free(c->ids);
    free(c->buf);
    free(c->moved);
    free(c->keys);
    free(c->index);
    free(c->index_keys);
    free(c->ins);
    free(c);

    /* descriptors of deleted inputs would keep their disk space */
    kv_store_close(s);

release:

    s->host->lock(s->host->ctx);
    sh->compactor = 0;

    /* a failure is not retried every check: a new request retries it */
    if (rc != KV_ECANCELED) {
        sh->compact_owed = 0;
    }

    s->host->unlock(s->host->ctx);

    return rc;
}
