#define _GNU_SOURCE

/*
 * Compaction: space reclaimed, values byte-exact before and after a
 * restart, no resurrection (also of keys deleted or re-put while a
 * compaction runs, in the same thread at chosen moments and in another
 * thread at random ones), the claim, and a kill at every flush a
 * compaction makes (fork, then _exit() in the child's host->sync).
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
#define KV_CT_KILLED   3      /* exit status of a child killed in a flush */


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


/* the moments the sync hook acts at, and how */
static int           kv_ct_kill_at;     /* kill at this flush, 0: never */
static int           kv_ct_syncs;
static int           kv_ct_phase;
static const char   *kv_ct_dir;
static kv_store_t   *kv_ct_other;       /* writes "during" a compaction */
static kv_ct_ref_t  *kv_ct_during;


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


static void
test_reclaim(void **state)
{
    int               i, v;
    char              dir[PATH_MAX], key[16];
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
    conf.fsync = KV_FSYNC_ALWAYS;
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
    kv_ct_check(&t, &ref);
    kv_ct_check_bytes(&t, dir);
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
    kv_ct_check(&t, &ref);
    kv_ct_check_bytes(&t, dir);
    kv_stats(&t.s, &st);
    assert_true(st.dead_bytes > 0);

    kv_ct_reopen(&t, &conf);
    kv_ct_check(&t, &ref);
    kv_ct_check_bytes(&t, dir);

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
    kv_ct_check(&t, &ref);
    kv_ct_check_bytes(&t, dir);

    kv_ct_reopen(&t, &conf);
    kv_ct_check(&t, &ref);
    kv_ct_check_bytes(&t, dir);

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
    kv_ct_check(&t, &ref);
    kv_ct_check_bytes(&t, dir);

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

    kv_ct_check(&t, &ref);
    kv_ct_check_bytes(&t, dir);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * host->sync: dies at flush number kv_ct_kill_at; never flushes, since a
 * process crash keeps the page cache (and the test runs faster).
 */
static int
kv_ct_kill_sync(void *ctx, int fd, const char *path)
{
    (void) ctx;
    (void) fd;
    (void) path;

    if (++kv_ct_syncs == kv_ct_kill_at) {
        _exit(KV_CT_KILLED);
    }

    return 0;
}


/*
 * A kill at every flush of a compaction (anything written before it is in
 * the page cache, as after kill -9): the store recovers with every key at
 * its last value, and goes on.
 */
static void
test_kill_anywhere(void **state)
{
    int               kill_at, status, done;
    char              dir[PATH_MAX];
    pid_t             pid;
    kv_conf_t         conf;
    kv_ct_ref_t       ref;
    kv_test_store_t   t;

    (void) state;

    done = 0;
    kv_ct_kill_at = 0;
    kv_test_sync = kv_ct_kill_sync;

    for (kill_at = 1; !done; kill_at++) {
        kv_test_mkdtemp(dir);
        kv_ct_conf(&conf, dir, 4096);
        assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                         KV_OK);
        kv_ct_fill(&t, &ref);

        pid = fork();
        assert_true(pid >= 0);

        if (pid == 0) {
            kv_ct_syncs = 0;
            kv_ct_kill_at = kill_at;

            if (kv_compact_begin(&t.s) != KV_OK || kv_compact(&t.s) != KV_OK)
            {
                _exit(1);
            }

            _exit(0);
        }

        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_true(WEXITSTATUS(status) == KV_CT_KILLED
                    || WEXITSTATUS(status) == 0);
        done = (WEXITSTATUS(status) == 0);

        kv_ct_reopen(&t, &conf);
        kv_ct_check(&t, &ref);
        kv_ct_check_bytes(&t, dir);
        assert_false(kv_ct_exists(dir, KV_MERGE_FILE));

        /* the store goes on: writes and a compaction of what is left */
        kv_ct_put(&t.s, &ref, 2, 7);
        kv_ct_del(&t.s, &ref, 3);
        kv_ct_compact(&t);
        kv_ct_reopen(&t, &conf);
        kv_ct_check(&t, &ref);

        kv_test_close(&t);
        kv_test_rmdir(dir);
    }

    kv_test_sync = NULL;

    /* the kills landed in every step: dozens of flushes */
    assert_true(kill_at > 20);
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
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
