#define _GNU_SOURCE

/*
 * index=sorted: merges into sorted segments, lookups that fall through
 * the index to them, deletes and expiry that masks what they hold,
 * conditional writes on their keys, recovery (tables loaded, masks
 * replayed, a damaged or missing table file rebuilt, a crash at the
 * merge's commit), index=hash opening the same directory, more keys than
 * the index memory holds, no cold read under the lock for a delete, and
 * the conversion at start of a log with more keys than the index holds.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"


#define SEG     (64 * 1024)
#define ZONE    (4 * 1024 * 1024)


static void
open_sorted(kv_test_store_t *t, const char *dir, size_t zone, unsigned sorted)
{
    kv_conf_t  conf;

    kv_test_conf(&conf, dir);
    conf.segment_size = SEG;
    conf.sorted = sorted;

    assert_int_equal(kv_test_open_conf(t, &conf, zone, 1024), KV_OK);
}


static void
merge(kv_test_store_t *t)
{
    assert_int_equal(kv_compact_begin(&t->s), KV_OK);
    assert_int_equal(kv_compact(&t->s), KV_OK);
}


/* the value of key i in round r */
static int
value_of(uint32_t i, uint32_t r, char *buf)
{
    return sprintf(buf, "value %u of round %u %.*s", i, r, (int) (i % 50),
                   "..................................................");
}


static int
key_of(uint32_t i, char *buf)
{
    return sprintf(buf, "k%07u", (i * 7919) % 100000);
}


static void
put(kv_test_store_t *t, uint32_t i, uint32_t r)
{
    char  key[32], value[128];
    int   klen, vlen;

    klen = key_of(i, key);
    vlen = value_of(i, r, value);

    assert_int_equal(kv_put(&t->s, (uint8_t *) key, klen, (uint8_t *) value,
                            vlen, KV_TYPE_OCTET), KV_OK);
}


/* round[i]: the round of key i's value, 0: deleted, or never written */
static void
check(kv_test_store_t *t, const uint32_t *round, uint32_t n)
{
    char       key[32], value[128];
    int        klen, vlen;
    uint32_t   i;
    kv_loc_t   loc;

    for (i = 0; i < n; i++) {
        klen = key_of(i, key);

        if (round[i] == 0) {
            assert_int_equal(kv_lookup(&t->s, (uint8_t *) key, klen, &loc),
                             KV_NOTFOUND);
            continue;
        }

        vlen = value_of(i, round[i], value);
        kv_test_expect(t, key, klen, value, vlen);
    }
}


/* every sorted segment's hint and table file as a scan writes them */
static void
check_merge_files(kv_test_store_t *t)
{
    uint32_t  r, id;

    for (r = 0; r < t->sh->runs.n; r++) {
        for (id = t->sh->runs.run[r].first; id <= t->sh->runs.run[r].last;
             id++)
        {
            kv_test_same_as_scanned(&t->s, id, 1);
        }
    }
}


static void
test_sorted_merge(void **state)
{
    char              dir[PATH_MAX], key[32], path[PATH_MAX];
    int               klen;
    uint32_t          i, n, round[3000];
    uint64_t          seq;
    kv_loc_t          loc;
    kv_write_t        w;
    kv_stats_t        st;
    kv_test_store_t   t;

    (void) state;

    n = 3000;
    kv_test_mkdtemp(dir);
    open_sorted(&t, dir, ZONE, 1);

    for (i = 0; i < n; i++) {
        put(&t, i, 1);
        round[i] = 1;
    }

    for (i = 0; i < n; i += 7) {
        klen = key_of(i, key);
        assert_int_equal(kv_delete(&t.s, (uint8_t *) key, klen), KV_OK);
        round[i] = 0;
    }

    merge(&t);

    kv_stats(&t.s, &st);
    assert_int_equal(st.keys, 0);
    assert_int_equal(st.masks, 0);
    assert_int_equal(st.table_keys, n - (n + 6) / 7);
    assert_int_equal(t.sh->runs.n, 1);
    assert_true(t.sh->runs.run[0].last >= t.sh->runs.run[0].first);
    check(&t, round, n);
    check_merge_files(&t);

    /* a delete of a key only a sorted segment holds leaves a mask */
    klen = key_of(1, key);
    assert_int_equal(kv_delete(&t.s, (uint8_t *) key, klen), KV_OK);
    assert_int_equal(kv_delete(&t.s, (uint8_t *) key, klen), KV_NOTFOUND);
    round[1] = 0;
    kv_stats(&t.s, &st);
    assert_int_equal(st.masks, 1);
    check(&t, round, n);

    /* written again, then overwritten: the index wins */
    put(&t, 1, 2);
    round[1] = 2;
    put(&t, 2, 2);
    round[2] = 2;
    kv_stats(&t.s, &st);
    assert_int_equal(st.masks, 0);
    check(&t, round, n);

    /* conditions see a sorted segment's record and its sequence number */
    klen = key_of(3, key);
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) key, klen, &loc), KV_OK);
    seq = loc.seq;
    assert_true(seq != 0);
    memset(&w, 0, sizeof(w));
    w.value = (const uint8_t *) "x";
    w.vlen = 1;
    w.if_none_match.n = KV_COND_ANY;
    assert_int_equal(kv_write(&t.s, (uint8_t *) key, klen, &w), KV_EPRECOND);
    w.if_none_match.n = 0;
    w.if_match.n = 1;
    w.if_match.seqs = &seq;
    assert_int_equal(kv_write(&t.s, (uint8_t *) key, klen, &w), KV_OK);
    assert_int_equal(kv_write(&t.s, (uint8_t *) key, klen, &w), KV_EPRECOND);
    assert_int_equal(kv_delete(&t.s, (uint8_t *) key, klen), KV_OK);
    round[3] = 0;

    /* a second merge: masks and overwrites win over the first's tables */
    for (i = 10; i < 400; i++) {
        put(&t, i, 3);
        round[i] = 3;
    }

    klen = key_of(500, key);
    assert_int_equal(kv_delete(&t.s, (uint8_t *) key, klen), KV_OK);
    round[500] = 0;

    merge(&t);
    kv_stats(&t.s, &st);
    assert_int_equal(st.keys, 0);
    assert_int_equal(st.masks, 0);
    check(&t, round, n);

    /* the small merge made a second run, its tombstones hide the first's */
    assert_int_equal(st.runs, 2);
    check_merge_files(&t);

    /* recovery: the tables, then the log with a mask */
    klen = key_of(600, key);
    assert_int_equal(kv_delete(&t.s, (uint8_t *) key, klen), KV_OK);
    round[600] = 0;
    put(&t, 601, 4);
    round[601] = 4;

    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 1);
    kv_stats(&t.s, &st);
    assert_int_equal(st.masks, 1);
    assert_int_equal(st.keys, 1);
    check(&t, round, n);

    /* a damaged table file is built again at start-up, and logged */
    kv_table_path(&t.s, t.sh->runs.run[0].first, path);
    {
        uint8_t  *data;
        size_t    len;

        data = kv_test_read_file(path, &len);
        data[len - 3] ^= 1;
        kv_test_write_file(path, data, len);
        free(data);
    }

    kv_test_close(&t);
    kv_test_log_reset();
    open_sorted(&t, dir, ZONE, 1);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_NOTICE], "rebuilt")
                    ? kv_test_log_msg[KV_LOG_NOTICE]
                    : strstr(kv_test_log_msg[KV_LOG_WARN], "damaged"));
    check(&t, round, n);

    /* and a missing one */
    kv_table_path(&t.s, t.sh->runs.run[t.sh->runs.n - 1].last, path);
    assert_int_equal(unlink(path), 0);
    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 1);
    assert_int_equal(access(path, F_OK), 0);
    check(&t, round, n);

    /* index=hash opens the same directory: every segment replayed */
    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 0);
    check(&t, round, n);
    kv_test_close(&t);

    /* and index=sorted again */
    open_sorted(&t, dir, ZONE, 1);
    check(&t, round, n);

    /* index=hash compacts the runs into log segments: TABLES is emptied */
    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 0);
    merge(&t);
    check(&t, round, n);
    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 1);
    assert_int_equal(t.sh->runs.n, 0);
    {
        size_t    len;
        uint8_t  *text;

        kv_test_path(dir, KV_TABLES_FILE, path);
        text = kv_test_read_file(path, &len);
        assert_null(memmem(text, len, "run", 3));
        free(text);
    }

    check(&t, round, n);
    merge(&t);
    assert_int_equal(t.sh->runs.n, 1);
    check(&t, round, n);
    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 1);
    check(&t, round, n);

    /* an operator's compaction merges every run: the tombstones go */
    kv_compact_request(&t.s);
    merge(&t);
    kv_stats(&t.s, &st);
    assert_int_equal(st.runs, 1);
    assert_int_equal(st.masks, 0);
    check(&t, round, n);
    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 1);
    check(&t, round, n);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * A merge whose TABLES was written but whose MERGE file a crash left:
 * committed, the outputs stay.  One whose TABLES was not written: undone.
 */
static void
test_sorted_commit(void **state)
{
    char              dir[PATH_MAX], text[64];
    int               len;
    uint32_t          i, n, round[500], first, last;
    kv_test_store_t   t;

    (void) state;

    n = 500;
    kv_test_mkdtemp(dir);
    open_sorted(&t, dir, ZONE, 1);

    for (i = 0; i < n; i++) {
        put(&t, i, 1);
        round[i] = 1;
    }

    merge(&t);
    first = t.sh->runs.run[0].first;
    last = t.sh->runs.run[0].last;

    /* as if killed between TABLES and removing MERGE */
    len = snprintf(text, sizeof(text), "outputs %u %u\ninputs 1\n", first,
                   last);
    assert_int_equal(kv_replace_file(&t.s, KV_MERGE_FILE, text, len), KV_OK);

    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 1);
    assert_int_equal(t.sh->runs.run[t.sh->runs.n - 1].first, first);
    check(&t, round, n);

    /* a MERGE naming outputs TABLES does not name: they go */
    for (i = 0; i < n; i++) {
        put(&t, i, 2);
        round[i] = 2;
    }

    len = snprintf(text, sizeof(text), "outputs %u %u\ninputs 1\n",
                   t.sh->segment + 1, t.sh->segment + 1);
    assert_int_equal(kv_replace_file(&t.s, KV_MERGE_FILE, text, len), KV_OK);
    {
        char   path[PATH_MAX];
        FILE  *f;

        kv_test_segment(dir, t.sh->segment + 1, path);
        f = fopen(path, "w");
        assert_non_null(f);
        fputs("partial", f);
        fclose(f);
    }

    kv_test_close(&t);
    kv_test_log_reset();
    open_sorted(&t, dir, ZONE, 1);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN], "removed the "
                                                          "outputs"));
    check(&t, round, n);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * The index memory holds a few thousand keys; merging whenever it is
 * crowded, as nginx starts a merge, the store takes many more, all
 * readable, and opens again in the same memory.  (Filled to the last
 * byte, a zone may not hold the same keys again after a restart: the
 * keys' heights in the skip list come from a hash seeded anew.)
 */
static void
test_sorted_beyond_memory(void **state)
{
    int               rc;
    char              dir[PATH_MAX], key[32], value[128];
    int               klen, vlen;
    uint32_t          i, n, merges, *round;
    kv_stats_t        st;
    kv_test_store_t   t;

    (void) state;

    n = 30000;
    round = calloc(n, sizeof(uint32_t));
    assert_non_null(round);

    kv_test_mkdtemp(dir);
    open_sorted(&t, dir, 256 * 1024, 1);
    merges = 0;

    for (i = 0; i < n; i++) {
        klen = sprintf(key, "k%07u", (i * 7919) % 100000);
        vlen = value_of(i, 1, value);

        rc = kv_put(&t.s, (uint8_t *) key, klen, (uint8_t *) value, vlen, 0);
        assert_int_equal(rc, KV_OK);
        round[i] = 1;

        if (kv_index_crowded(t.sh)) {
            merge(&t);
            merges++;
        }
    }

    kv_stats(&t.s, &st);
    print_message("%u keys in a 256 KiB index: %u merges, %" PRIu64
                  " keys in %u runs of sorted segments, %" PRIu64 " in the "
                  "index\n", n, merges, st.table_keys, st.runs, st.keys);
    assert_true(merges > 2);
    assert_int_equal(st.table_keys + st.keys, n);
    check(&t, round, n);

    kv_test_close(&t);
    open_sorted(&t, dir, 256 * 1024, 1);
    check(&t, round, n);

    kv_test_close(&t);
    kv_test_rmdir(dir);
    free(round);
}


/* writes between the merge's holds of the lock */
static kv_test_store_t  *churn_t;
static uint32_t         *churn_round;
static uint32_t          churn_next, churn_n;
static int               churn_busy;
static void            (*churn_lock)(void *ctx);


static void
churn_before_lock(void *ctx)
{
    char      key[32];
    int       klen;
    uint32_t  i;

    if (!churn_busy && churn_next < churn_n) {
        churn_busy = 1;

        /* a key deleted, one overwritten, one added, all over the order */
        i = churn_next;
        klen = key_of(i, key);
        assert_int_equal(kv_delete(&churn_t->s, (uint8_t *) key, klen),
                         KV_OK);
        churn_round[i] = 0;

        put(churn_t, churn_n - 1 - i, 2);
        churn_round[churn_n - 1 - i] = 2;

        put(churn_t, churn_n + i, 2);
        churn_round[churn_n + i] = 2;

        churn_next += 7;
        churn_busy = 0;
    }

    churn_lock(ctx);
}


/*
 * A merge of more index entries than one hold of the lock collects, while
 * keys are deleted, overwritten and added between every two holds: each
 * batch goes on from where the last one ended.
 */
static void
test_sorted_merge_batches(void **state)
{
    char              dir[PATH_MAX];
    uint32_t          i, n, *round;
    kv_stats_t        st;
    kv_test_store_t   t;

    (void) state;

    n = 20000;
    round = calloc(2 * n, sizeof(uint32_t));
    assert_non_null(round);

    kv_test_mkdtemp(dir);
    open_sorted(&t, dir, 16 * ZONE, 1);

    for (i = 0; i < n; i++) {
        put(&t, i, 1);
        round[i] = 1;
    }

    churn_t = &t;
    churn_round = round;
    churn_next = 3;
    churn_n = n;
    churn_lock = t.host.lock;
    t.host.lock = churn_before_lock;

    merge(&t);

    t.host.lock = churn_lock;
    assert_true(churn_next > 3 + 7 * 4);

    kv_stats(&t.s, &st);
    assert_true(st.table_keys > 10000);
    check(&t, round, 2 * n);
    check_merge_files(&t);

    kv_test_close(&t);
    open_sorted(&t, dir, 16 * ZONE, 1);
    check(&t, round, 2 * n);

    kv_test_close(&t);
    kv_test_rmdir(dir);
    free(round);
}


/*
 * What a worker killed in kv_index_unlink() leaves: key i out of its
 * bucket, still in the key order.
 */
static void
order_only(kv_test_store_t *t, uint32_t i)
{
    char         key[32];
    int          klen;
    kv_ref_t    *link;
    kv_entry_t  *e;

    klen = key_of(i, key);

    t->host.lock(t->host.ctx);
    e = kv_index_find(&t->host, t->sh, (uint8_t *) key, klen, &link);
    assert_non_null(e);
    *link = e->next;
    t->host.unlock(t->host.ctx);
}


/*
 * The merge collects the bucket's entry of each key in the key order: an
 * entry the order alone holds comes back neither as the key's value nor
 * as a second record of a key written again.
 */
static void
test_sorted_merge_order_only(void **state)
{
    char              dir[PATH_MAX], key[32];
    int               klen;
    uint32_t          i, round[100];
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_sorted(&t, dir, ZONE, 1);

    for (i = 0; i < 100; i++) {
        put(&t, i, 1);
        round[i] = 1;
    }

    order_only(&t, 5);
    round[5] = 0;
    klen = key_of(5, key);
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) key, klen, &loc),
                     KV_NOTFOUND);

    /* and a second entry of key 6 in the order, after a write again */
    order_only(&t, 6);
    put(&t, 6, 2);
    round[6] = 2;

    merge(&t);
    check(&t, round, 100);
    check_merge_files(&t);

    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 1);
    check(&t, round, 100);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/* a delete (or an expiry) that lands while the first merge writes */
static kv_test_store_t  *race_t;
static int               race_armed;
static int               race_expire;
static int               race_rc = 1;


static int
race_sync(void *ctx, int fd, const char *path)
{
    kv_loc_t  loc;

    (void) ctx;
    (void) fd;

    if (!race_armed || race_rc != 1 || strstr(path, ".kvsst") == NULL) {
        return 0;
    }

    if (race_expire) {
        /* the lookup finds the key expired: it becomes a mask */
        kv_test_now = kv_now_ms(&race_t->host) + 2000;
        race_rc = kv_lookup(&race_t->s, (uint8_t *) "gone", 4, &loc);

    } else {
        race_rc = kv_delete(&race_t->s, (uint8_t *) "gone", 4);
    }

    return 0;
}


/*
 * Opens a sorted store in dir, writes "gone" (expiring in a second if
 * expire) and 50 keys, and merges while the race strikes "gone"; checks
 * the race's result and that "gone" is absent after the merge.
 */
static void
race_merge(kv_test_store_t *t, const char *dir, int expire)
{
    uint32_t    i;
    kv_loc_t    loc;
    kv_write_t  w;

    kv_test_sync = race_sync;
    open_sorted(t, dir, ZONE, 1);
    kv_test_sync = NULL;
    race_t = t;
    race_rc = 1;
    race_expire = expire;

    memset(&w, 0, sizeof(w));
    w.value = (const uint8_t *) "v1";
    w.vlen = 2;
    w.type = KV_TYPE_OCTET;
    w.expires_at_ms = expire ? kv_now_ms(&t->host) + 1000 : 0;
    assert_int_equal(kv_write(&t->s, (uint8_t *) "gone", 4, &w), KV_OK);

    for (i = 0; i < 50; i++) {
        put(t, i, 1);
    }

    race_armed = 1;
    merge(t);
    race_armed = 0;

    assert_int_equal(race_rc, expire ? KV_NOTFOUND : KV_OK);
    assert_int_equal(kv_lookup(&t->s, (uint8_t *) "gone", 4, &loc),
                     KV_NOTFOUND);
}


/*
 * The first merge collects a key as live; the key is deleted before the
 * merge publishes its sorted segments, while none exist yet.  The delete
 * must leave a mask: the new segment holds the old value, which must not
 * come back, after the merge, after the next one, or after a restart.
 */
static void
test_sorted_delete_during_merge(void **state)
{
    char              dir[PATH_MAX];
    uint32_t          i;
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    race_merge(&t, dir, 0);

    for (i = 50; i < 100; i++) {
        put(&t, i, 1);
    }

    merge(&t);
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) "gone", 4, &loc),
                     KV_NOTFOUND);

    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 1);
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) "gone", 4, &loc),
                     KV_NOTFOUND);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * A key collected live expires before the merge's swap, which then finds
 * a mask where it collected an entry: the mask goes, counted as one, and
 * the key stays absent.
 */
static void
test_sorted_expire_during_merge(void **state)
{
    char              dir[PATH_MAX];
    kv_loc_t          loc;
    kv_stats_t        st;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    race_merge(&t, dir, 1);

    kv_stats(&t.s, &st);
    assert_int_equal(st.masks, 0);
    assert_int_equal(st.keys, 0);

    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 1);
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) "gone", 4, &loc),
                     KV_NOTFOUND);

    kv_test_now = 0;
    kv_test_close(&t);
    kv_test_rmdir(dir);
}

/* the page of the record a locked read would fetch, and what it saw */
static const char  *warm_path;
static uint64_t     warm_offset;
static int          warm_resident;
static void       (*warm_host_lock)(void *ctx);


static int
page_resident(const char *path, uint64_t offset)
{
    int            fd;
    long           page;
    void          *p;
    unsigned char  vec;

    page = sysconf(_SC_PAGESIZE);
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);

    /* mapping a file reads none of it: mincore() says what is cached */
    p = mmap(NULL, page, PROT_READ, MAP_SHARED, fd,
             (off_t) (offset & ~(uint64_t) (page - 1)));
    assert_true(p != MAP_FAILED);
    assert_int_equal(mincore(p, page, &vec), 0);
    munmap(p, page);
    close(fd);

    return vec & 1;
}


static void
warm_lock(void *ctx)
{
    warm_resident = page_resident(warm_path, warm_offset);
    warm_host_lock(ctx);
}


/*
 * A delete of a key only a sorted segment holds reads the segment under
 * the lock; it must find the page cached (read before the lock), or a
 * cold read would stall every worker waiting for the lock.
 */
static void
test_sorted_delete_reads_warm(void **state)
{
    int               fd;
    char              dir[PATH_MAX], path[PATH_MAX], key[32];
    int               klen;
    uint32_t          i;
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_sorted(&t, dir, ZONE, 1);

    for (i = 0; i < 2000; i++) {
        put(&t, i, 1);
    }

    merge(&t);

    klen = key_of(1234, key);
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) key, klen, &loc), KV_OK);
    kv_test_segment(dir, loc.segment, path);

    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(fdatasync(fd), 0);
    assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    close(fd);
    assert_false(page_resident(path, loc.offset));

    warm_path = path;
    warm_offset = loc.offset;
    warm_host_lock = t.host.lock;
    t.host.lock = warm_lock;

    assert_int_equal(kv_delete(&t.s, (uint8_t *) key, klen), KV_OK);
    assert_true(warm_resident);

    t.host.lock = warm_host_lock;
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) key, klen, &loc),
                     KV_NOTFOUND);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/* index=sorted, converting (with convert) a log the zone cannot hold */
static int
open_convert(kv_test_store_t *t, const char *dir, size_t zone,
    unsigned convert)
{
    kv_conf_t  conf;

    kv_test_conf(&conf, dir);
    conf.segment_size = SEG;
    conf.sorted = 1;
    conf.convert = convert;

    return kv_test_open_conf(t, &conf, zone, 1024);
}


/*
 * The directory the conversion tests start from: n keys, the first 3000
 * merged into sorted segments in index=sorted, some of them deleted
 * after; then index=hash, with a zone for every key, writes the rest and
 * overwrites some.
 */
static void
convert_fill(const char *dir, uint32_t *round, uint32_t n)
{
    char              key[32];
    int               klen;
    uint32_t          i;
    kv_test_store_t   t;

    open_sorted(&t, dir, ZONE, 1);

    for (i = 0; i < 3000; i++) {
        put(&t, i, 1);
        round[i] = 1;
    }

    merge(&t);

    for (i = 0; i < 3000; i += 10) {
        klen = key_of(i, key);
        assert_int_equal(kv_delete(&t.s, (uint8_t *) key, klen), KV_OK);
        round[i] = 0;
    }

    kv_test_close(&t);
    open_sorted(&t, dir, ZONE, 0);

    for (i = 3000; i < n; i++) {
        put(&t, i, 1);
        round[i] = 1;
    }

    for (i = 1; i < n; i += 7) {
        put(&t, i, 2);
        round[i] = 2;
    }

    kv_test_close(&t);
}


/* a clock of the hosts far ahead of the system's: year 2096 */
#define KV_CONVERT_NOW  4000000000000ULL


/*
 * index=sorted opens a directory whose log holds more keys than its zone:
 * without conf.convert it refuses, with it the keys move into sorted
 * segments first, once.
 */
static void
test_sorted_convert(void **state)
{
    int               klen;
    char              dir[PATH_MAX], path[PATH_MAX], key[32];
    FILE             *f;
    uint32_t          n, live, i, *round;
    kv_runs_t         runs;
    kv_write_t        w;
    kv_stats_t        st;
    kv_test_store_t   t;

    (void) state;

    n = 20000;
    round = calloc(n, sizeof(uint32_t));
    assert_non_null(round);

    kv_test_mkdtemp(dir);
    convert_fill(dir, round, n);

    for (i = 0, live = 0; i < n; i++) {
        live += round[i] != 0;
    }

    /*
     * Keys whose time has run out by the host's clock, not the system's:
     * the conversion drops them only if it reads the host's.
     */
    kv_test_now = KV_CONVERT_NOW;
    open_sorted(&t, dir, ZONE, 0);

    for (i = 0; i < 100; i++) {
        klen = sprintf(key, "ttl-%u", i);
        memset(&w, 0, sizeof(kv_write_t));
        w.value = (const uint8_t *) "gone";
        w.vlen = 4;
        w.expires_at_ms = KV_CONVERT_NOW + 1000;
        assert_int_equal(kv_write(&t.s, (uint8_t *) key, klen, &w), KV_OK);
    }

    /* and a torn tail in the active segment, past where the zone fills */
    kv_test_segment(dir, t.sh->segment, path);
    kv_test_close(&t);
    f = fopen(path, "a");
    assert_non_null(f);
    assert_int_equal(fwrite("garbage", 1, 7, f), 7);
    assert_int_equal(fclose(f), 0);
    kv_test_now = KV_CONVERT_NOW + 2000;

    kv_test_log_reset();
    assert_int_equal(open_convert(&t, dir, 256 * 1024, 0), KV_ENOMEM);
    assert_true(kv_test_logged(KV_LOG_ERR, "give the zone more memory, or "
                                           "move them into sorted segments"));
    kv_test_close(&t);

    kv_test_log_reset();
    assert_int_equal(open_convert(&t, dir, 256 * 1024, 1), KV_OK);
    assert_int_equal(kv_test_log_count[KV_LOG_ERR], 0);
    assert_true(kv_test_logged(KV_LOG_NOTICE, "hold more keys than the index "
                                              "memory"));
    /* the private store's own lines reach the host's log */
    assert_true(kv_test_logged(KV_LOG_NOTICE, "merged segments up to"));
    assert_true(kv_test_logged(KV_LOG_NOTICE, "into sorted segments in"));

    kv_stats(&t.s, &st);
    assert_int_equal(st.keys, 0);
    assert_int_equal(st.table_keys, live);
    assert_int_equal(st.truncated_bytes, 7);
    assert_int_equal(st.runs, 1);
    check(&t, round, n);
    check_merge_files(&t);

    /* the store goes on in its zone, and opens again without converting */
    for (i = 0; i < n; i += 3) {
        put(&t, i, 3);
        round[i] = 3;

        if (kv_index_crowded(t.sh)) {
            merge(&t);
        }
    }

    runs = t.sh->runs;
    kv_test_close(&t);
    kv_test_log_reset();
    assert_int_equal(open_convert(&t, dir, 256 * 1024, 1), KV_OK);
    assert_false(kv_test_logged(KV_LOG_NOTICE, "into sorted segments"));
    assert_int_equal(t.sh->runs.n, runs.n);
    assert_memory_equal(t.sh->runs.run, runs.run,
                        runs.n * sizeof(kv_run_t));
    check(&t, round, n);

    kv_test_close(&t);
    kv_test_rmdir(dir);
    kv_test_now = 0;
    free(round);
}


/*
 * A kill at every flush of a start that converts (what was written before
 * it stays in the page cache, as after kill -9): the next start serves
 * every key at its last value, converting again if it must.
 */
static void
test_sorted_convert_kill_anywhere(void **state)
{
    int               kill_at, status, done;
    char              dir[PATH_MAX];
    pid_t             pid;
    uint32_t          n, *round;
    kv_test_store_t   t;

    (void) state;

    n = 6000;
    round = calloc(n, sizeof(uint32_t));
    assert_non_null(round);
    done = 0;

    for (kill_at = 1; !done; kill_at++) {
        kv_test_mkdtemp(dir);
        convert_fill(dir, round, n);

        pid = fork();
        assert_true(pid >= 0);

        if (pid == 0) {
            kv_test_syncs = 0;
            kv_test_kill_at = kill_at;
            kv_test_sync = kv_test_kill_sync;

            _exit(open_convert(&t, dir, 128 * 1024, 1) == KV_OK ? 0 : 1);
        }

        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_true(WEXITSTATUS(status) == KV_TEST_KILLED
                    || WEXITSTATUS(status) == 0);
        done = (WEXITSTATUS(status) == 0);

        assert_int_equal(open_convert(&t, dir, 128 * 1024, 1), KV_OK);
        check(&t, round, n);

        kv_test_close(&t);
        kv_test_rmdir(dir);
    }

    print_message("a start that converts killed at each of its %d flushes\n",
                  kill_at - 2);

    /* the kills landed in every step: the replay, the merge, the hints */
    assert_true(kill_at > 20);
    free(round);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_sorted_merge),
        cmocka_unit_test(test_sorted_commit),
        cmocka_unit_test(test_sorted_beyond_memory),
        cmocka_unit_test(test_sorted_merge_batches),
        cmocka_unit_test(test_sorted_merge_order_only),
        cmocka_unit_test(test_sorted_delete_during_merge),
        cmocka_unit_test(test_sorted_expire_during_merge),
        cmocka_unit_test(test_sorted_delete_reads_warm),
        cmocka_unit_test(test_sorted_convert),
        cmocka_unit_test(test_sorted_convert_kill_anywhere),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
