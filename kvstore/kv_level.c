#define _GNU_SOURCE

/*
 * index=sorted: which sorted segments exist, and finding a key in them.
 *
 * A merge (kv_compact() in sorted mode) writes the newest record of every
 * key in its inputs, in key order, into sorted segments with consecutive
 * ids: a run, each segment holding a range of keys that the next one's
 * follows.  Its inputs are the log segments the index points into and the
 * newest runs, as many as keep the runs' sizes growing geometrically
 * (kv_compact.c), so that every record is rewritten a logarithmic number
 * of times.  The shared state lists the runs, oldest first, with a
 * generation; each handle opens their tables when the generation changes.
 * A lookup that misses the index asks the runs newest first, one table per
 * run (by range, then its filter): the first record found decides, a
 * tombstone or an expired record too.  The index always wins: every key
 * written since the last merge is in it, a deleted or expired one as a
 * mask.
 *
 * DIR/KV_TABLES_FILE records the runs:
 *
 *     floor F
 *     run FIRST LAST
 *     ...
 *
 * F being the first id that no merge will read again: a segment below it
 * that no run names is an input of a merge that committed.  It is
 * replaced (tmp, flush, rename, flush) when a merge commits, before its
 * MERGE file goes.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kv_internal.h"


/* "run FIRST LAST\n" */
#define KV_RUN_LINE  32


int
kv_level_save(kv_store_t *s, const kv_runs_t *runs, uint32_t floor)
{
    size_t    len;
    uint32_t  i;
    char      text[32 + KV_RUNS_MAX * KV_RUN_LINE];

    len = (size_t) snprintf(text, sizeof(text), "floor %u\n", floor);

    for (i = 0; i < runs->n; i++) {
        len += (size_t) snprintf(text + len, sizeof(text) - len,
                                 "run %u %u\n", runs->run[i].first,
                                 runs->run[i].last);
    }

    return kv_replace_file(s, KV_TABLES_FILE, text, len);
}


int
kv_level_load(kv_store_t *s, kv_runs_t *runs, uint32_t *floor)
{
    int        rc, fd;
    char       path[PATH_MAX], text[33 + KV_RUNS_MAX * KV_RUN_LINE];
    ssize_t    len;
    uint64_t   size;

    memset(runs, 0, sizeof(kv_runs_t));

    snprintf(path, sizeof(path), "%s/" KV_TABLES_FILE, s->conf.dir);

    rc = kv_open_read(s, path, &fd, &size);
    if (rc != KV_OK) {
        return rc;
    }

    len = kv_pread_full(fd, (uint8_t *) text, sizeof(text) - 1, 0);
    close(fd);

    if (len < 0) {
        kv_log(s->host, KV_LOG_ERR, errno, "reading \"%s\" failed", path);
        return KV_EIO;
    }

    text[len] = '\0';

    if (kv_level_parse(text, runs, floor) != 0) {
        kv_log(s->host, KV_LOG_ERR, 0, "\"%s\" is damaged: \"%.60s\"", path,
               text);
        return KV_ECORRUPT;
    }

    return KV_OK;
}


uint32_t
kv_runs_missing(const kv_runs_t *runs, const uint32_t *ids, size_t n)
{
    uint32_t  id, r;

    for (r = 0; r < runs->n; r++) {
        for (id = runs->run[r].first; id <= runs->run[r].last; id++) {
            if (bsearch(&id, ids, n, sizeof(uint32_t), kv_cmp_id) == NULL) {
                return id;
            }
        }
    }

    return 0;
}


int
kv_level_present(kv_store_t *s)
{
    int        rc, present;
    size_t     n;
    uint32_t   floor, *ids;
    kv_runs_t  runs;

    rc = kv_level_load(s, &runs, &floor);

    if (rc != KV_OK) {
        /* damaged or unreadable: recovery in index=sorted reports it */
        return rc != KV_NOTFOUND;
    }

    if (runs.n == 0) {
        return 0;
    }

    if (kv_list_segments(s, &ids, &n) != KV_OK) {
        /* logged; recovery meets the same error */
        return 1;
    }

    present = (kv_runs_missing(&runs, ids, n) == 0);
    free(ids);

    return present;
}


int
kv_level_parse(const char *text, kv_runs_t *runs, uint32_t *floor)
{
    int          n;
    uint32_t     first, last, prev;
    const char  *p;

    memset(runs, 0, sizeof(kv_runs_t));
    prev = 0;

    if (sscanf(text, "floor %u\n%n", floor, &n) != 1 || n == 0
        || text[n - 1] != '\n')
    {
        return -1;
    }

    for (p = text + n; *p != '\0'; p += n) {
        n = 0;

        if (runs->n == KV_RUNS_MAX
            || sscanf(p, "run %u %u\n%n", &first, &last, &n) != 2
            || n == 0 || p[n - 1] != '\n' || first == 0 || first > last
            || first <= prev)
        {
            return -1;
        }

        runs->run[runs->n].first = first;
        runs->run[runs->n].last = last;
        runs->n++;
        prev = last;
    }

    return 0;
}


/* 1 if id is a sorted segment of runs */
int
kv_level_has(const kv_runs_t *runs, uint32_t id)
{
    uint32_t  i;

    for (i = 0; i < runs->n; i++) {
        if (id >= runs->run[i].first && id <= runs->run[i].last) {
            return 1;
        }
    }

    return 0;
}


void
kv_level_close(kv_store_t *s)
{
    uint32_t  i;

    for (i = 0; i < s->ntables; i++) {
        kv_table_close(&s->tables[i]);
    }

    free(s->tables);
    s->tables = NULL;
    s->ntables = 0;
    s->nruns = 0;
    s->tables_gen = 0;
}


int
kv_level_open(kv_store_t *s, const kv_runs_t *runs)
{
    int        rc;
    uint32_t   id, n, r;

    if (s->tables != NULL && s->tables_gen == runs->gen) {
        return KV_OK;
    }

    kv_level_close(s);

    n = 0;

    for (r = 0; r < runs->n; r++) {
        n += runs->run[r].last - runs->run[r].first + 1;
    }

    /* an empty set is opened too: one slot marks it */
    s->tables = calloc(n ? n : 1, sizeof(kv_table_t));
    if (s->tables == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "no memory to open %u sorted "
               "segments of \"%s\"", n, s->conf.dir);
        return KV_ENOMEM;
    }

    for (r = 0; r < runs->n; r++) {
        for (id = runs->run[r].first; id <= runs->run[r].last; id++) {
            rc = kv_table_open(s, id, &s->tables[s->ntables], 0);

            if (rc != KV_OK) {
                kv_level_close(s);

                /* a newer merge deleted it: the caller looks again */
                return rc == KV_NOTFOUND ? KV_ESTALE : rc;
            }

            s->ntables++;
        }

        s->run_end[r] = s->ntables;
    }

    s->nruns = runs->n;
    s->tables_gen = runs->gen;

    return KV_OK;
}


/* the one table of [from, to) whose range may hold key, or NULL */
static kv_table_t *
kv_level_pick(kv_store_t *s, uint32_t from, uint32_t to, const uint8_t *key,
    size_t klen)
{
    size_t           flen;
    int64_t          lo, hi, mid;
    kv_table_t      *t;
    const uint8_t   *first;

    lo = from;
    hi = (int64_t) to - 1;

    while (lo <= hi) {
        mid = lo + (hi - lo) / 2;
        t = &s->tables[mid];

        if (t->nblocks == 0) {
            /* an empty table: look to the right */
            lo = mid + 1;
            continue;
        }

        kv_table_block(t, 0, &first, &flen);

        if (kv_key_cmp(first, flen, key, klen) <= 0) {
            lo = mid + 1;

        } else {
            hi = mid - 1;
        }
    }

    return hi >= (int64_t) from ? &s->tables[hi] : NULL;
}


int
kv_level_get(kv_store_t *s, const uint8_t *key, size_t klen, kv_loc_t *loc)
{
    int          rc;
    uint32_t     r;
    kv_peek_t    pk;
    kv_table_t  *t;

    for (r = s->nruns; r-- > 0; ) {
        t = kv_level_pick(s, r ? s->run_end[r - 1] : 0, s->run_end[r], key,
                          klen);
        if (t == NULL) {
            continue;
        }

        rc = kv_table_get(t, key, klen, loc, &pk);

        if (rc == KV_NOTFOUND) {
            continue;
        }

        if (rc != KV_OK) {
            return rc;
        }

        /* the newest run that has the key decides */

        if (pk.tombstone
            || (pk.expires_at_ms != 0
                && pk.expires_at_ms <= kv_now_ms(s->host)))
        {
            return KV_NOTFOUND;
        }

        return KV_OK;
    }

    return KV_NOTFOUND;
}


int
kv_level_lookup(kv_store_t *s, const uint8_t *key, size_t klen,
    const kv_runs_t *runs, kv_loc_t *loc)
{
    int  rc;

    rc = kv_level_open(s, runs);
    if (rc != KV_OK) {
        return rc;
    }

    return kv_level_get(s, key, klen, loc);
}


/* a run's next table with a record, while the current one has none left */
static void
kv_level_run_on(kv_level_run_t *lr, const kv_table_t *tables)
{
    while (lr->rc == KV_NOTFOUND && lr->i + 1 < lr->end) {
        lr->i++;
        lr->rc = kv_table_iter_seek(&lr->it, &tables[lr->i], NULL, 0);
    }
}


/* the current record: the smallest key's, from the newest run holding it */
static void
kv_level_iter_pick(kv_level_iter_t *li)
{
    uint32_t         r;
    kv_level_run_t  *lr;

    li->rec = NULL;

    for (r = 0; r < li->n; r++) {
        lr = &li->run[r];

        if (lr->rc != KV_OK) {
            if (lr->rc != KV_NOTFOUND) {
                li->rc = lr->rc;
                li->rec = NULL;
                return;
            }

            continue;
        }

        /* strictly smaller: among equal keys the newest run stays */

        if (li->rec == NULL
            || kv_key_cmp(lr->it.pk.key, lr->it.pk.klen,
                          li->rec->pk.key, li->rec->pk.klen) < 0)
        {
            li->rec = &lr->it;
            li->cur = r;
        }
    }
}


int
kv_level_iter_open(kv_level_iter_t *li, kv_store_t *s, uint32_t nruns,
    const uint8_t *key, size_t klen)
{
    uint32_t         r, run, from;
    kv_table_t      *t;
    kv_level_run_t  *lr;

    li->n = nruns;
    li->rc = KV_OK;
    li->tables = s->tables;
    li->run = calloc(nruns ? nruns : 1, sizeof(kv_level_run_t));

    if (li->run == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "no memory to read %u runs of "
               "\"%s\"", nruns, s->conf.dir);
        return KV_ENOMEM;
    }

    for (r = 0; r < nruns; r++) {
        run = s->nruns - 1 - r;
        from = run ? s->run_end[run - 1] : 0;
        lr = &li->run[r];
        lr->end = s->run_end[run];

        t = key != NULL ? kv_level_pick(s, from, lr->end, key, klen) : NULL;
        lr->i = t != NULL ? (uint32_t) (t - s->tables) : from;

        lr->rc = lr->i < lr->end
                 ? kv_table_iter_seek(&lr->it, &s->tables[lr->i], key, klen)
                 : KV_NOTFOUND;

        kv_level_run_on(lr, li->tables);
    }

    kv_level_iter_pick(li);

    return KV_OK;
}


void
kv_level_iter_next(kv_level_iter_t *li)
{
    uint32_t         r;
    kv_level_run_t  *cur, *lr;

    if (li->rec == NULL) {
        return;
    }

    cur = &li->run[li->cur];

    /* the older records of the key first: the key is in cur's buffer */

    for (r = 0; r < li->n; r++) {
        lr = &li->run[r];

        if (lr != cur && lr->rc == KV_OK
            && kv_key_cmp(lr->it.pk.key, lr->it.pk.klen,
                          cur->it.pk.key, cur->it.pk.klen) == 0)
        {
            lr->rc = kv_table_iter_next(&lr->it);
            kv_level_run_on(lr, li->tables);
        }
    }

    cur->rc = kv_table_iter_next(&cur->it);
    kv_level_run_on(cur, li->tables);

    kv_level_iter_pick(li);
}


void
kv_level_iter_close(kv_level_iter_t *li)
{
    free(li->run);
    li->run = NULL;
}
