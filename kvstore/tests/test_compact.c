#define _GNU_SOURCE

/*
 * Compaction: space reclaimed, values byte-exact before and after a
 * restart, no resurrection (also of keys deleted or re-put while a
 * compaction runs, in the same thread at chosen moments and in another
 * thread at random ones), the claim, a kill at every flush a compaction
 * makes (fork, then _exit() in the child's host->sync), and a cancel before
 * the copy, during it, during the hints and too late to stop anything.
 */

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "test_util.h"


#define KV_CT_KEYS     400
#define KV_CT_ABSENT   -1


/* the version each key holds, or KV_CT_ABSENT */
typedef struct {
    int               version[KV_CT_KEYS];
} kv_ct_ref_t;


typedef struct {
    kv_test_store_t  *t;
    int               rounds;
    int               rc;
    int               done;
} kv_ct_bg_t;


/* what a cancelled compaction must leave as it found it */
typedef struct {
    uint32_t         *ids;               /* segments, ascending */
    size_t            nids;
    uint64_t          hints;             /* hint files */
    uint32_t          first;             /* first_segment */
    kv_stats_t        st;
} kv_ct_before_t;


/* the moments of a compaction test_cancel_during cancels it at */
#define KV_CT_AT_COPY  0      /* first output flushed, the copy goes on */
#define KV_CT_AT_HINT  1      /* the first output's hint written */
#define KV_CT_AT_SWAP  2      /* MERGE removed: too late to cancel */
#define KV_CT_AT_N     3


/* the stop of a compaction thread at a moment, for a cancel */
typedef struct {
    pthread_mutex_t   mutex;
    pthread_cond_t    cond;
    int               state;             /* KV_CT_STOP_* */
    char              path[PATH_MAX];    /* flushed at the moment */
    char              first_out[PATH_MAX];
    int               merge;             /* MERGE exists at the moment */
    int               late;              /* outputs flushed after it */
    kv_store_t       *s;
    int               rc;                /* kv_compact()'s */
} kv_ct_stop_t;

#define KV_CT_STOP_BEFORE     0
#define KV_CT_STOP_AT         1          /* the compaction waits there */
#define KV_CT_STOP_CANCELLED  2
#define KV_CT_STOP_DONE       3          /* kv_compact() returned */


/* the moments the sync hook acts at, and how */
static int           kv_ct_phase;
static const char   *kv_ct_dir;
static kv_store_t   *kv_ct_other;       /* writes "during" a compaction */
static kv_ct_ref_t  *kv_ct_during;
static kv_ct_stop_t  kv_ct_stop = {
    .mutex = PTHREAD_MUTEX_INITIALIZER,
    .cond = PTHREAD_COND_INITIALIZER
};


static size_t
kv_ct_key(int i, char *key)
{
    return (size_t) sprintf(key, "key%05d", i);
}


/* every (key, version) has its own length and bytes */
static size_t
kv_ct_value(int i, int version, uint8_t *value)
{
    size_t  n, len;

    len = 1 + (size_t) (i * 37 + version * 101) % 300;

    for (n = 0; n < len; n++) {
        value[n] = (uint8_t) (i * 7 + version * 13 + n);
    }

    return len;
}


static void
kv_ct_put(kv_store_t *s, kv_ct_ref_t *ref, int i, int version)
{
    char     key[16];
    size_t   klen, vlen;
    uint8_t  value[512];

    klen = kv_ct_key(i, key);
    vlen = kv_ct_value(i, version, value);

    assert_int_equal(kv_put(s, (uint8_t *) key, klen, value, vlen,
                            KV_TYPE_OCTET), KV_OK);
    ref->version[i] = version;
}


static void
kv_ct_del(kv_store_t *s, kv_ct_ref_t *ref, int i)
{
    char    key[16];
    size_t  klen;

    klen = kv_ct_key(i, key);

    assert_int_equal(kv_delete(s, (uint8_t *) key, klen),
                     ref->version[i] == KV_CT_ABSENT ? KV_NOTFOUND : KV_OK);
    ref->version[i] = KV_CT_ABSENT;
}


/* Every key holds exactly its reference value, or is absent. */
static void
kv_ct_check(kv_test_store_t *t, const kv_ct_ref_t *ref)
{
    int       i, rc;
    char      key[16];
    size_t    klen, vlen, n;
    uint8_t   value[512], *v;

    for (i = 0; i < KV_CT_KEYS; i++) {
        klen = kv_ct_key(i, key);

        /* a location taken just before a compaction's swap goes stale */
        do {
            rc = kv_test_get(t, key, klen, &v, &n);
        } while (rc == KV_ESTALE);

        if (ref->version[i] == KV_CT_ABSENT) {
            if (rc != KV_NOTFOUND) {
                fail_msg("%s is back from the dead", key);
            }

            continue;
        }

        if (rc != KV_OK) {
            fail_msg("%s: %s", key, kv_strerror(rc));
        }

        vlen = kv_ct_value(i, ref->version[i], value);
        assert_int_equal(n, vlen);
        assert_memory_equal(v, value, vlen);
        free(v);
    }
}


/*
 * Versions 0 to 2 over every key, with deletes and re-puts, so segments
 * hold overwritten records, tombstones newer than their puts and keys
 * deleted and put again.
 */
static void
kv_ct_fill(kv_test_store_t *t, kv_ct_ref_t *ref)
{
    int  i;

    for (i = 0; i < KV_CT_KEYS; i++) {
        ref->version[i] = KV_CT_ABSENT;
        kv_ct_put(&t->s, ref, i, 0);
    }

    for (i = 0; i < KV_CT_KEYS; i++) {
        if (i % 3 == 0) {
            kv_ct_put(&t->s, ref, i, 1);
        }

        if (i % 5 == 1) {
            kv_ct_del(&t->s, ref, i);
        }
    }

    for (i = 0; i < KV_CT_KEYS; i++) {
        if (i % 10 == 1) {
            kv_ct_put(&t->s, ref, i, 2);
        }

        if (i % 7 == 2) {
            kv_ct_del(&t->s, ref, i);
        }
    }
}


static void
kv_ct_conf(kv_conf_t *conf, const char *dir, uint64_t segment_size)
{
    kv_test_conf(conf, dir);
    conf->segment_size = segment_size;
}


/* Sums the sizes of the segment files; *count gets their number. */
static uint64_t
kv_ct_dir_bytes(const char *dir, const char *suffix, uint64_t *count)
{
    DIR            *d;
    char            path[PATH_MAX];
    size_t          len;
    uint64_t        bytes;
    struct dirent  *de;

    d = opendir(dir);
    assert_non_null(d);

    bytes = 0;
    *count = 0;

    while ((de = readdir(d)) != NULL) {
        len = strlen(de->d_name);

        if (len > strlen(suffix)
            && strcmp(de->d_name + len - strlen(suffix), suffix) == 0)
        {
            kv_test_path(dir, de->d_name, path);
            bytes += kv_test_file_size(path);
            (*count)++;
        }
    }

    closedir(d);

    return bytes;
}


/* The counters agree with the directory: every frame is live or dead. */
static void
kv_ct_check_bytes(kv_test_store_t *t, const char *dir)
{
    uint64_t    n;
    kv_stats_t  st;

    kv_stats(&t->s, &st);

    assert_true(kv_ct_dir_bytes(dir, ".kvlog", &n)
                == st.live_bytes + st.dead_bytes);
    assert_int_equal(st.segments, n);
}


/* every key and the byte counters, the checks a compaction must pass */
static void
kv_ct_check_all(kv_test_store_t *t, const kv_ct_ref_t *ref, const char *dir)
{
    kv_ct_check(t, ref);
    kv_ct_check_bytes(t, dir);
}


static int
kv_ct_exists(const char *dir, const char *name)
{
    char  path[PATH_MAX];

    kv_test_path(dir, name, path);

    return access(path, F_OK) == 0;
}


static void
kv_ct_compact(kv_test_store_t *t)
{
    assert_int_equal(kv_compact_begin(&t->s), KV_OK);
    assert_int_equal(kv_compact(&t->s), KV_OK);
}


static void
kv_ct_reopen(kv_test_store_t *t, const kv_conf_t *conf)
{
    kv_test_close(t);
    assert_int_equal(kv_test_open_conf(t, conf, KV_TEST_ARENA, 1024), KV_OK);
}


/*
 * After an interrupted compaction: the store reopens whole, without MERGE,
 * and goes on, with writes and a compaction of what is left.
 */
static void
kv_ct_goes_on(kv_test_store_t *t, kv_ct_ref_t *ref, const char *dir,
    const kv_conf_t *conf)
{
    kv_ct_reopen(t, conf);
    kv_ct_check_all(t, ref, dir);
    assert_false(kv_ct_exists(dir, KV_MERGE_FILE));

    kv_ct_put(&t->s, ref, 2, 7);
    kv_ct_del(&t->s, ref, 3);
    kv_ct_compact(t);
    kv_ct_reopen(t, conf);
    kv_ct_check(t, ref);
}


static void
test_reclaim(void **state)
{
    int               i, v;
    char              dir[PATH_MAX], key[16], path[PATH_MAX];
    uint32_t          id;
    uint64_t          hints;
    size_t            klen;
    uint8_t           buf[512];
    uint64_t          before, after, n, durable;
    kv_loc_t          old, loc;
    kv_conf_t         conf;
    kv_stats_t        st;
    kv_ct_ref_t       ref;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_ct_conf(&conf, dir, 8192);
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                     KV_OK);

    /* 90% of the data deleted or overwritten */
    for (i = 0; i < KV_CT_KEYS; i++) {
        ref.version[i] = KV_CT_ABSENT;
        kv_ct_put(&t.s, &ref, i, 0);
    }

    for (v = 1; v <= 6; v++) {
        for (i = 0; i < KV_CT_KEYS; i++) {
            if (i % 10 < 5 && v == 1) {
                kv_ct_del(&t.s, &ref, i);

            } else if (i % 10 >= 5 && i % 10 < 9) {
                kv_ct_put(&t.s, &ref, i, v);
            }
        }
    }

    klen = kv_ct_key(9, key);
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) key, klen, &old), KV_OK);

    kv_ct_check_bytes(&t, dir);
    before = kv_ct_dir_bytes(dir, ".kvlog", &n);
    assert_true(n > 10);

    kv_ct_compact(&t);

    kv_stats(&t.s, &st);
    after = kv_ct_dir_bytes(dir, ".kvlog", &n);

    /* only live frames are left: the outputs, then an empty active one */
    assert_true(after == st.live_bytes);
    assert_true(st.dead_bytes == 0);
    assert_true(st.reclaimed_bytes == before - after);
    assert_true(st.compactions == 1);
    assert_true(after * 5 < before);
    assert_true(kv_ct_dir_bytes(dir, ".kvhint", &n) > 0);
    assert_true(n == st.segments - 1);
    assert_false(kv_ct_exists(dir, KV_MERGE_FILE));

    /* the outputs' hints, written as the records were copied */
    for (id = 1, hints = 0; id < st.active_segment; id++) {
        kv_hint_path(&t.s, id, "", path);

        if (access(path, F_OK) == 0) {
            kv_test_same_as_scanned(&t.s, id, 0);
            hints++;
        }
    }

    assert_true(hints == n);
    kv_ct_check_bytes(&t, dir);
    kv_ct_check(&t, &ref);

    /* a location taken before the compaction went stale, a new one works */
    assert_int_equal(kv_read(&t.s, &old, buf), KV_ESTALE);
    assert_int_equal(kv_lookup(&t.s, (uint8_t *) key, klen, &loc), KV_OK);
    assert_true(loc.segment > old.segment);
    assert_int_equal(kv_read(&t.s, &loc, buf), KV_OK);

    /* the deleted inputs do not trouble the flushes */
    assert_int_equal(kv_sync(&t.s, &durable), KV_OK);

    kv_ct_reopen(&t, &conf);
    kv_ct_check_all(&t, &ref, dir);
    kv_stats(&t.s, &st);
    assert_true(st.recovery_hints > 0);

    /* and again, with new writes on top */
    kv_ct_put(&t.s, &ref, 0, 3);
    kv_ct_del(&t.s, &ref, 5);
    kv_ct_compact(&t);
    kv_ct_check(&t, &ref);
    kv_ct_reopen(&t, &conf);
    kv_ct_check(&t, &ref);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


static void
test_all_deleted(void **state)
{
    int               i;
    char              dir[PATH_MAX];
    uint64_t          n;
    kv_conf_t         conf;
    kv_stats_t        st;
    kv_ct_ref_t       ref;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_ct_conf(&conf, dir, 4096);
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                     KV_OK);

    for (i = 0; i < KV_CT_KEYS; i++) {
        ref.version[i] = KV_CT_ABSENT;
        kv_ct_put(&t.s, &ref, i, 0);
    }

    for (i = 0; i < KV_CT_KEYS; i++) {
        kv_ct_del(&t.s, &ref, i);
    }

    /* no live record: no output, tombstones gone, one empty segment */
    kv_ct_compact(&t);
    assert_true(kv_ct_dir_bytes(dir, ".kvlog", &n) == 0);
    assert_true(n == 1);
    kv_stats(&t.s, &st);
    assert_true(st.keys == 0 && st.live_bytes == 0 && st.dead_bytes == 0);

    kv_ct_reopen(&t, &conf);
    kv_ct_check(&t, &ref);
    kv_stats(&t.s, &st);
    assert_true(st.keys == 0);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * Acts at two moments of a compaction through another handle: when MERGE
 * is written (before any copy) and at the first directory flush without
 * MERGE after it (copies done, no swap yet).
 */
static int
kv_ct_during_sync(void *ctx, int fd, const char *path)
{
    size_t  len;

    (void) ctx;
    (void) fd;

    len = strlen(path);

    if (kv_ct_phase == 0 && len > 4 && strcmp(path + len - 4, ".tmp") == 0
        && strstr(path, KV_MERGE_FILE) != NULL)
    {
        kv_ct_phase = 1;
        kv_ct_del(kv_ct_other, kv_ct_during, 3);
        kv_ct_put(kv_ct_other, kv_ct_during, 4, 9);
        kv_ct_put(kv_ct_other, kv_ct_during, 6, 9);

    } else if (kv_ct_phase == 1 && strcmp(path, kv_ct_dir) == 0
               && !kv_ct_exists(kv_ct_dir, KV_MERGE_FILE))
    {
        kv_ct_phase = 2;
        kv_ct_del(kv_ct_other, kv_ct_during, 12);
        kv_ct_put(kv_ct_other, kv_ct_during, 7, 9);
        kv_ct_put(kv_ct_other, kv_ct_during, 16, 9);
    }

    return 0;
}


static void
test_writes_during(void **state)
{
    char              dir[PATH_MAX];
    kv_conf_t         conf;
    kv_stats_t        st;
    kv_store_t        other;
    kv_ct_ref_t       ref;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_ct_conf(&conf, dir, 4096);
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                     KV_OK);
    kv_ct_fill(&t, &ref);

    /* 3, 4, 7 and 12 are live in the inputs, 6 and 16 deleted there */
    assert_true(ref.version[3] == 1 && ref.version[4] == 0
                && ref.version[7] == 0 && ref.version[12] == 1
                && ref.version[6] == KV_CT_ABSENT
                && ref.version[16] == KV_CT_ABSENT);

    kv_store_init(&other, t.sh, &t.host, &conf);
    kv_ct_other = &other;
    kv_ct_during = &ref;
    kv_ct_dir = dir;
    kv_ct_phase = 0;
    t.host.sync = kv_ct_during_sync;

    kv_ct_compact(&t);

    t.host.sync = NULL;
    kv_store_close(&other);
    assert_int_equal(kv_ct_phase, 2);

    /* the copies of 7 and 12 are dead: their swaps found newer records */
    kv_ct_check_all(&t, &ref, dir);
    kv_stats(&t.s, &st);
    assert_true(st.dead_bytes > 0);

    kv_ct_reopen(&t, &conf);
    kv_ct_check_all(&t, &ref, dir);

    /* the next compaction drops what the first one could not */
    kv_ct_compact(&t);
    kv_stats(&t.s, &st);
    assert_true(st.dead_bytes == 0);
    kv_ct_check(&t, &ref);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


static void *
kv_ct_compactor(void *arg)
{
    int          r, rc;
    kv_store_t   s;
    kv_ct_bg_t  *bg;

    bg = arg;
    rc = KV_OK;

    kv_store_init(&s, bg->t->sh, &bg->t->host, &bg->t->s.conf);

    for (r = 0; rc == KV_OK && r < bg->rounds; r++) {
        rc = kv_compact_begin(&s);

        if (rc == KV_OK) {
            rc = kv_compact(&s);
        }
    }

    kv_store_close(&s);

    bg->rc = rc;
    __atomic_store_n(&bg->done, 1, __ATOMIC_RELEASE);

    return NULL;
}


static void
test_concurrent(void **state)
{
    int               i, ops;
    char              dir[PATH_MAX];
    unsigned          seed;
    pthread_t         tid;
    kv_conf_t         conf;
    kv_stats_t        st;
    kv_ct_bg_t        bg;
    kv_ct_ref_t       ref;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_ct_conf(&conf, dir, 4096);
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                     KV_OK);
    kv_ct_fill(&t, &ref);

    memset(&bg, 0, sizeof(bg));
    bg.t = &t;
    bg.rounds = 5;
    seed = 1;
    ops = 0;

    assert_int_equal(pthread_create(&tid, NULL, kv_ct_compactor, &bg), 0);

    /*
     * Write while the compactions run, but boundedly: every write grows the
     * next compaction's input, so an unbounded writer on a slow disk makes
     * the test's duration run away.
     */
    while ((!__atomic_load_n(&bg.done, __ATOMIC_ACQUIRE) && ops < 3000)
           || ops < 100)
    {
        i = rand_r(&seed) % KV_CT_KEYS;

        if (rand_r(&seed) % 4 == 0) {
            kv_ct_del(&t.s, &ref, i);

        } else {
            kv_ct_put(&t.s, &ref, i, 3 + ops % 50);
        }

        ops++;
    }

    assert_int_equal(pthread_join(tid, NULL), 0);
    assert_int_equal(bg.rc, KV_OK);

    kv_stats(&t.s, &st);
    assert_true(st.compactions == 5);
    kv_ct_check_all(&t, &ref, dir);

    kv_ct_reopen(&t, &conf);
    kv_ct_check_all(&t, &ref, dir);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


static void
test_claim(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX], text[64];
    pid_t             pid;
    uint32_t          a;
    kv_conf_t         conf;
    kv_stats_t        st;
    kv_ct_ref_t       ref;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_ct_conf(&conf, dir, 4096);
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                     KV_OK);
    kv_ct_fill(&t, &ref);

    /* a claim given up, with its request, as when no thread can run it */
    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    kv_compact_request(&t.s);
    kv_compact_release(&t.s);
    assert_true(t.sh->compactor == 0 && t.sh->compact_owed == 0);

    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    assert_int_equal(kv_compact_begin(&t.s), KV_EBUSY);
    assert_int_equal(kv_compact_due(&t.s), 0);
    assert_int_equal(kv_compact(&t.s), KV_OK);
    assert_int_equal(t.sh->compactor, 0);

    /* kv_compact() without the claim does nothing */
    assert_int_equal(kv_compact(&t.s), KV_EINVAL);

    /*
     * A compactor died after its roll, writing its first output: its claim
     * is taken over, and the outputs its MERGE names are removed first.
     */
    pid = fork();
    assert_true(pid >= 0);

    if (pid == 0) {
        _exit(0);
    }

    assert_int_equal(waitpid(pid, NULL, 0), pid);

    a = t.sh->segment;
    snprintf(text, sizeof(text), "outputs %u %u\ninputs 1\n", a + 1, a + 2);
    kv_test_path(dir, KV_MERGE_FILE, path);
    kv_test_write_file(path, (uint8_t *) text, strlen(text));
    kv_test_segment(dir, a + 1, path);
    kv_test_write_file(path, (uint8_t *) "partial", 7);

    t.host.lock(t.host.ctx);
    assert_int_equal(kv_roll(&t.s, a + 3), KV_OK);
    t.sh->compactor = pid;
    t.sh->stats.segments++;
    t.host.unlock(t.host.ctx);

    kv_test_log_reset();
    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN], "took over"));
    assert_int_equal(kv_compact(&t.s), KV_OK);
    assert_false(kv_ct_exists(dir, KV_MERGE_FILE));
    assert_false(access(path, F_OK) == 0);
    assert_true(t.sh->first_segment == a + 4);

    kv_stats(&t.s, &st);
    assert_true(st.compactions == 2);
    kv_ct_check_all(&t, &ref, dir);

    kv_ct_reopen(&t, &conf);
    kv_ct_check(&t, &ref);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


static void
test_due(void **state)
{
    int               i;
    char              dir[PATH_MAX];
    kv_conf_t         conf;
    kv_ct_ref_t       ref;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_ct_conf(&conf, dir, 4096);
    conf.compact_dead_pct = 40;
    conf.compact_dead_bytes = 1024 * 1024;
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                     KV_OK);

    for (i = 0; i < KV_CT_KEYS; i++) {
        ref.version[i] = KV_CT_ABSENT;
    }

    /* half of the data dead, but less than a segment of it */
    for (i = 0; i < 10; i++) {
        kv_ct_put(&t.s, &ref, i, 0);
        kv_ct_put(&t.s, &ref, i, 1);
    }

    assert_int_equal(kv_compact_due(&t.s), 0);

    /* more than a segment dead, but under 40% */
    for (i = 10; i < KV_CT_KEYS; i++) {
        kv_ct_put(&t.s, &ref, i, 0);
    }

    for (i = 10; i < 50; i++) {
        kv_ct_del(&t.s, &ref, i);
    }

    assert_true(t.sh->stats.dead_bytes >= 4096);
    assert_int_equal(kv_compact_due(&t.s), 0);

    /* past both */
    for (i = 50; i < KV_CT_KEYS / 2 + 50; i++) {
        kv_ct_del(&t.s, &ref, i);
    }

    assert_int_equal(kv_compact_due(&t.s), 1);

    /* not while one runs, nor after it */
    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    assert_int_equal(kv_compact_due(&t.s), 0);
    assert_int_equal(kv_compact(&t.s), KV_OK);
    assert_int_equal(kv_compact_due(&t.s), 0);

    /* the byte threshold alone, whatever the ratio */
    t.s.conf.compact_dead_bytes = 2048;
    t.s.conf.compact_dead_pct = 100;

    for (i = 0; i < 20; i++) {
        kv_ct_put(&t.s, &ref, KV_CT_KEYS - 1 - i, 1);
    }

    assert_int_equal(kv_compact_due(&t.s), 1);
    kv_ct_check(&t, &ref);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/* A MERGE left by a crash: recovery removes its outputs and *.tmp files. */
static void
test_merge_left(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX], text[64], name[32];
    uint32_t          a;
    kv_conf_t         conf;
    kv_ct_ref_t       ref;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_ct_conf(&conf, dir, 4096);
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                     KV_OK);
    kv_ct_fill(&t, &ref);
    a = t.sh->segment;
    kv_test_close(&t);

    /* a torn output, a complete one with its hint, the new active one */
    snprintf(text, sizeof(text), "outputs %u %u\ninputs 1 %u\n", a + 1,
             a + 3, a);
    kv_test_path(dir, KV_MERGE_FILE, path);
    kv_test_write_file(path, (uint8_t *) text, strlen(text));

    kv_test_segment(dir, a + 1, path);
    kv_test_write_file(path, (uint8_t *) "\x10\0\0\0torn", 8);
    kv_test_segment(dir, a + 2, path);
    kv_test_write_file(path, (uint8_t *) "", 0);
    snprintf(name, sizeof(name), KV_HINT_FMT, a + 2);
    kv_test_path(dir, name, path);
    kv_test_write_file(path, (uint8_t *) "hint", 4);
    kv_test_segment(dir, a + 4, path);
    kv_test_write_file(path, (uint8_t *) "", 0);
    kv_test_path(dir, KV_MERGE_FILE KV_TMP_SUFFIX, path);
    kv_test_write_file(path, (uint8_t *) "x", 1);

    kv_test_log_reset();
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                     KV_OK);
    assert_true(kv_test_log_count[KV_LOG_WARN] > 0);

    assert_false(kv_ct_exists(dir, KV_MERGE_FILE));
    assert_false(kv_ct_exists(dir, KV_MERGE_FILE KV_TMP_SUFFIX));
    assert_false(kv_ct_exists(dir, name));
    kv_test_segment(dir, a + 1, path);
    assert_false(access(path, F_OK) == 0);
    kv_test_segment(dir, a + 2, path);
    assert_false(access(path, F_OK) == 0);
    assert_true(t.sh->segment == a + 4);

    kv_ct_check_all(&t, &ref, dir);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * A kill at every flush of a compaction (anything written before it is in
 * the page cache, as after kill -9): the store recovers with every key at
 * its last value, and goes on.  With preallocate, the segment the
 * compaction seals has its zeros cut first, one flush more to kill at.
 */
static void
kv_ct_kill_anywhere(uint64_t preallocate)
{
    int               kill_at, status, done;
    char              dir[PATH_MAX];
    pid_t             pid;
    kv_conf_t         conf;
    kv_ct_ref_t       ref;
    kv_test_store_t   t;

    done = 0;
    kv_test_kill_at = 0;
    kv_test_sync = kv_test_kill_sync;

    for (kill_at = 1; !done; kill_at++) {
        kv_test_mkdtemp(dir);
        kv_ct_conf(&conf, dir, 4096);
        conf.preallocate = preallocate;
        assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                         KV_OK);
        kv_ct_fill(&t, &ref);
        assert_true(preallocate == 0
                    || t.sh->prealloc_end > t.sh->write_off);

        pid = fork();
        assert_true(pid >= 0);

        if (pid == 0) {
            kv_test_syncs = 0;
            kv_test_kill_at = kill_at;

            if (kv_compact_begin(&t.s) != KV_OK || kv_compact(&t.s) != KV_OK)
            {
                _exit(1);
            }

            _exit(0);
        }

        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_true(WEXITSTATUS(status) == KV_TEST_KILLED
                    || WEXITSTATUS(status) == 0);
        done = (WEXITSTATUS(status) == 0);

        kv_ct_goes_on(&t, &ref, dir, &conf);

        kv_test_close(&t);
        kv_test_rmdir(dir);
    }

    kv_test_sync = NULL;

    /* the kills landed in every step: dozens of flushes */
    assert_true(kill_at > 20);
}


static void
test_kill_anywhere(void **state)
{
    (void) state;

    kv_ct_kill_anywhere(0);
}


static void
test_kill_anywhere_preallocated(void **state)
{
    (void) state;

    kv_ct_kill_anywhere(1000);
}


static void
kv_ct_before(kv_test_store_t *t, const char *dir, kv_ct_before_t *b)
{
    assert_int_equal(kv_list_segments(&t->s, &b->ids, &b->nids), KV_OK);
    assert_true(b->nids > 0);
    (void) kv_ct_dir_bytes(dir, ".kvhint", &b->hints);
    b->first = t->sh->first_segment;
    kv_stats(&t->s, &b->st);
}


/*
 * After a cancelled compaction, in the running store: the outputs, their
 * hints and MERGE gone, the inputs and the index as they were, and only
 * the new empty active segment added, past the ids the outputs had.
 */
static void
kv_ct_check_cancelled(kv_test_store_t *t, const char *dir,
    const kv_ct_before_t *b, const kv_ct_ref_t *ref)
{
    char        path[PATH_MAX];
    size_t      n;
    uint32_t   *ids;
    uint64_t    hints;
    kv_stats_t  st;

    assert_int_equal(kv_test_log_count[KV_LOG_ERR], 0);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_NOTICE], "cancelled"));
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_NOTICE], dir));

    assert_false(kv_ct_exists(dir, KV_MERGE_FILE));
    assert_false(kv_ct_exists(dir, KV_MERGE_FILE KV_TMP_SUFFIX));

    assert_int_equal(kv_list_segments(&t->s, &ids, &n), KV_OK);
    assert_int_equal(n, b->nids + 1);
    assert_memory_equal(ids, b->ids, b->nids * sizeof(uint32_t));
    assert_int_equal(ids[b->nids], t->sh->segment);
    assert_true(ids[b->nids] > b->ids[b->nids - 1] + 1);
    free(ids);

    kv_test_segment(dir, t->sh->segment, path);
    assert_int_equal(kv_test_file_size(path), 0);
    (void) kv_ct_dir_bytes(dir, ".kvhint", &hints);
    assert_int_equal(hints, b->hints);

    kv_stats(&t->s, &st);
    assert_true(st.compactions == 0 && st.reclaimed_bytes == 0);
    assert_true(st.keys == b->st.keys && st.live_bytes == b->st.live_bytes
                && st.dead_bytes == b->st.dead_bytes);
    assert_int_equal(t->sh->compactor, 0);
    assert_int_equal(t->sh->first_segment, b->first);
    kv_ct_check_bytes(t, dir);
    kv_ct_check(t, ref);
}


static void
test_cancel_before_copy(void **state)
{
    char              dir[PATH_MAX];
    uint64_t          before, after, n;
    kv_conf_t         conf;
    kv_stats_t        st;
    kv_ct_ref_t       ref;
    kv_ct_before_t    b;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_ct_conf(&conf, dir, 4096);
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                     KV_OK);
    kv_ct_fill(&t, &ref);
    kv_ct_before(&t, dir, &b);
    before = kv_ct_dir_bytes(dir, ".kvlog", &n);

    /* thresholds that never call for one: only the request does */
    t.s.conf.compact_dead_pct = 100;
    t.s.conf.compact_dead_bytes = UINT64_MAX;
    assert_int_equal(kv_compact_due(&t.s), 0);

    kv_test_log_reset();
    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    kv_compact_request(&t.s);
    kv_compact_cancel(&t.s);
    assert_int_equal(kv_compact(&t.s), KV_ECANCELED);
    kv_ct_check_cancelled(&t, dir, &b, &ref);
    free(b.ids);

    /* still owed, as to the workers after a reload */
    assert_int_equal(kv_compact_due(&t.s), 1);

    /* a cancel before the claim is forgotten: this one runs to the end */
    kv_compact_cancel(&t.s);
    kv_ct_compact(&t);
    assert_int_equal(kv_compact_due(&t.s), 0);
    after = kv_ct_dir_bytes(dir, ".kvlog", &n);
    kv_stats(&t.s, &st);
    assert_true(st.compactions == 1 && st.dead_bytes == 0);
    assert_true(st.reclaimed_bytes == before - after && after < before);
    kv_ct_check_all(&t, &ref, dir);

    kv_ct_reopen(&t, &conf);
    kv_ct_check_all(&t, &ref, dir);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * host->sync of test_cancel_during, in the compaction thread: at the
 * chosen flush it waits until the test thread has cancelled; after that,
 * it counts the flushes of outputs, which a prompt cancel leaves none of.
 */
static int
kv_ct_cancel_sync(void *ctx, int fd, const char *path)
{
    size_t         len;
    kv_ct_stop_t  *st;

    (void) ctx;
    (void) fd;

    st = &kv_ct_stop;
    len = strlen(path);

    pthread_mutex_lock(&st->mutex);

    if (st->state == KV_CT_STOP_BEFORE && strcmp(path, st->path) == 0
        && kv_ct_exists(kv_ct_dir, KV_MERGE_FILE) == st->merge
        && access(st->first_out, F_OK) == 0)
    {
        st->state = KV_CT_STOP_AT;
        pthread_cond_signal(&st->cond);

        while (st->state != KV_CT_STOP_CANCELLED) {
            pthread_cond_wait(&st->cond, &st->mutex);
        }

    } else if (st->state == KV_CT_STOP_CANCELLED && len > 6
               && strcmp(path + len - 6, ".kvlog") == 0)
    {
        st->late++;
    }

    pthread_mutex_unlock(&st->mutex);

    return 0;
}


static void *
kv_ct_cancel_run(void *arg)
{
    kv_ct_stop_t  *st;

    st = arg;
    st->rc = kv_compact(st->s);

    pthread_mutex_lock(&st->mutex);
    st->state = KV_CT_STOP_DONE;
    pthread_cond_signal(&st->cond);
    pthread_mutex_unlock(&st->mutex);

    return NULL;
}


/*
 * A compaction thread is stopped at a flush and cancelled from the test
 * thread, as nginx's event loop cancels its thread pool's compaction:
 * during the copy and the hints it is undone, once MERGE is removed it
 * completes.  Either way the store, and a recovery of it, hold every key
 * at its last value and nothing deleted.
 */
static void
test_cancel_during(void **state)
{
    int               at, merge, copied, state_at;
    char              dir[PATH_MAX], name[32];
    uint32_t          a;
    pthread_t         tid;
    kv_conf_t         conf;
    kv_stats_t        st;
    kv_store_t        job;
    kv_ct_ref_t       ref;
    kv_ct_stop_t     *stop;
    kv_ct_before_t    b;
    kv_test_store_t   t;

    (void) state;

    stop = &kv_ct_stop;

    for (at = 0; at < KV_CT_AT_N; at++) {
        kv_test_mkdtemp(dir);
        kv_ct_conf(&conf, dir, 64 * 1024);
        assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                         KV_OK);
        kv_ct_fill(&t, &ref);
        kv_ct_before(&t, dir, &b);
        a = t.sh->segment;

        /*
         * Inputs much bigger than the outputs: a cancel seen only between
         * inputs would let outputs be completed, and flushed, after it.
         */
        conf.segment_size = 4096;

        kv_ct_dir = dir;
        stop->state = KV_CT_STOP_BEFORE;
        stop->late = 0;
        kv_test_segment(dir, a + 1, stop->first_out);

        switch (at) {
        case KV_CT_AT_COPY:
            kv_test_segment(dir, a + 1, stop->path);
            stop->merge = 1;
            break;

        case KV_CT_AT_HINT:
            snprintf(name, sizeof(name), KV_HINT_FMT KV_TMP_SUFFIX, a + 1);
            kv_test_path(dir, name, stop->path);
            stop->merge = 1;
            break;

        default:
            snprintf(stop->path, sizeof(stop->path), "%s", dir);
            stop->merge = 0;
        }

        t.host.sync = kv_ct_cancel_sync;
        kv_test_log_reset();

        /* the thread's own handle, claimed by the caller, as nginx does */
        kv_store_init(&job, t.sh, &t.host, &conf);
        assert_int_equal(kv_compact_begin(&job), KV_OK);
        stop->s = &job;
        assert_int_equal(pthread_create(&tid, NULL, kv_ct_cancel_run, stop),
                         0);

        pthread_mutex_lock(&stop->mutex);

        while (stop->state == KV_CT_STOP_BEFORE) {
            pthread_cond_wait(&stop->cond, &stop->mutex);
        }

        /* what the moment looks like, asserted once the thread is done */
        state_at = stop->state;
        merge = kv_ct_exists(dir, KV_MERGE_FILE);
        copied = access(stop->first_out, F_OK) == 0;

        kv_compact_cancel(&job);
        stop->state = KV_CT_STOP_CANCELLED;
        pthread_cond_signal(&stop->cond);
        pthread_mutex_unlock(&stop->mutex);

        assert_int_equal(pthread_join(tid, NULL), 0);
        t.host.sync = NULL;
        kv_store_close(&job);

        assert_int_equal(state_at, KV_CT_STOP_AT);
        assert_true(copied);
        assert_int_equal(merge, at != KV_CT_AT_SWAP);

        if (at == KV_CT_AT_SWAP) {
            assert_int_equal(stop->rc, KV_OK);
            assert_int_equal(kv_test_log_count[KV_LOG_ERR], 0);
            kv_stats(&t.s, &st);
            assert_true(st.compactions == 1 && st.reclaimed_bytes > 0);
            assert_true(t.sh->first_segment == a + 1);
            kv_ct_check_all(&t, &ref, dir);

        } else {
            assert_int_equal(stop->rc, KV_ECANCELED);
            assert_int_equal(stop->late, 0);
            kv_ct_check_cancelled(&t, dir, &b, &ref);
        }

        free(b.ids);

        kv_ct_goes_on(&t, &ref, dir, &conf);

        kv_test_close(&t);
        kv_test_rmdir(dir);
    }
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_reclaim),
        cmocka_unit_test(test_all_deleted),
        cmocka_unit_test(test_writes_during),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_claim),
        cmocka_unit_test(test_due),
        cmocka_unit_test(test_merge_left),
        cmocka_unit_test(test_kill_anywhere),
        cmocka_unit_test(test_kill_anywhere_preallocated),
        cmocka_unit_test(test_cancel_before_copy),
        cmocka_unit_test(test_cancel_during),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
