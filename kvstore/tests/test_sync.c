#define _GNU_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "test_util.h"


#define SEG       4096
#define VLEN      1000
#define MAX_SYNC  64

#define S(str)  (const uint8_t *) (str), sizeof(str) - 1


/* fstat() calls while counting is on: the test's own wraps libc's */
static int  fstat_counting;
static int  fstat_calls;


int
fstat(int fd, struct stat *st)
{
    static int  (*libc_fstat)(int fd, struct stat *st);

    if (libc_fstat == NULL) {
        *(void **) &libc_fstat = dlsym(RTLD_NEXT, "fstat");

        if (libc_fstat == NULL) {
            fprintf(stderr, "test_sync: no libc fstat(): %s\n", dlerror());
            abort();
        }
    }

    fstat_calls += fstat_counting;

    return libc_fstat(fd, st);
}


/* every flush, in order, and what the directory looked like meanwhile */
typedef struct {
    char  path[PATH_MAX];
    int   hint_exists;      /* the hint that the last .tmp flush was for */
} sync_rec_t;


static sync_rec_t  syncs[MAX_SYNC];
static int         nsyncs;
static char        fail_path[PATH_MAX];   /* flushing it fails with EIO */
static char        hint_final[PATH_MAX];


static int
record_sync(void *ctx, int fd, const char *path)
{
    size_t       len;
    struct stat  a, b;

    (void) ctx;

    /* the descriptor is the file the path names */
    assert_int_equal(fstat(fd, &a), 0);
    assert_int_equal(stat(path, &b), 0);
    assert_true(a.st_ino == b.st_ino && a.st_dev == b.st_dev);

    len = strlen(path);

    if (len > 4 && strcmp(path + len - 4, KV_TMP_SUFFIX) == 0) {
        snprintf(hint_final, sizeof(hint_final), "%.*s", (int) len - 4, path);
    }

    assert_true(nsyncs < MAX_SYNC);
    snprintf(syncs[nsyncs].path, PATH_MAX, "%s", path);
    syncs[nsyncs].hint_exists = hint_final[0] != '\0'
                                && access(hint_final, F_OK) == 0;
    nsyncs++;

    if (strcmp(path, fail_path) == 0) {
        errno = EIO;
        return -1;
    }

    return 0;
}


static void
sync_reset(void)
{
    nsyncs = 0;
    fail_path[0] = '\0';
    hint_final[0] = '\0';
}


static void
open_small(kv_test_store_t *t, const char *dir)
{
    kv_test_sync = record_sync;
    sync_reset();

    kv_test_open_small(t, dir, SEG);
}


/* the counterpart of open_small(): closes, unhooks the flushes, removes */
static void
close_small(kv_test_store_t *t, const char *dir)
{
    kv_test_close(t);
    kv_test_sync = NULL;
    kv_test_rmdir(dir);
}


static void
put_n(kv_store_t *s, uint32_t n)
{
    char     key[32];
    uint8_t  v[VLEN];

    snprintf(key, sizeof(key), "key-%u", n);
    memset(v, (int) n, sizeof(v));

    assert_int_equal(kv_put(s, (uint8_t *) key, strlen(key), v, sizeof(v),
                            KV_TYPE_OCTET), KV_OK);
}


static void
expect_sync(int i, const char *dir, uint32_t segment)
{
    char  path[PATH_MAX];

    if (segment == 0) {
        snprintf(path, sizeof(path), "%s", dir);

    } else {
        kv_test_segment(dir, segment, path);
    }

    assert_true(i < nsyncs);
    assert_string_equal(syncs[i].path, path);
}


/* A new segment is durable, then its name, before a record goes in. */
static void
test_roll_order(void **state)
{
    char              top[PATH_MAX], dir[PATH_MAX], path[PATH_MAX];
    uint32_t          n;
    kv_test_store_t   t;

    (void) state;

    /* a new directory: itself, then its parent; the first segment */
    kv_test_mkdtemp(top);
    kv_test_path(top, "data", dir);
    open_small(&t, dir);

    assert_int_equal(nsyncs, 7);
    expect_sync(0, dir, 0);
    expect_sync(1, top, 0);
    expect_sync(2, dir, 1);
    expect_sync(3, dir, 0);
    kv_test_path(dir, KV_SEED_FILE KV_TMP_SUFFIX, path);
    assert_string_equal(syncs[4].path, path);   /* then renamed */
    expect_sync(5, dir, 0);
    expect_sync(6, dir, 1);       /* recovery flushes what it found */

    /* roll-overs */
    nsyncs = 0;

    for (n = 0; t.sh->segment < 3; n++) {
        put_n(&t.s, n);
    }

    assert_int_equal(nsyncs, 4);
    expect_sync(0, dir, 2);
    expect_sync(1, dir, 0);
    expect_sync(2, dir, 3);
    expect_sync(3, dir, 0);

    close_small(&t, dir);
    kv_test_rmdir(top);
}


/* segment, hint .tmp, rename, directory */
static void
test_hint_order(void **state)
{
    int               i;
    char              dir[PATH_MAX], hint[PATH_MAX + 32];
    uint32_t          n;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir);

    for (n = 0; t.sh->segment < 4; n++) {
        put_n(&t.s, n);
    }

    sync_reset();
    assert_int_equal(kv_write_hints(&t.s), KV_OK);
    assert_int_equal(nsyncs, 3 * 3);

    for (i = 0; i < 3; i++) {
        snprintf(hint, sizeof(hint), "%s/" KV_HINT_FMT KV_TMP_SUFFIX, dir,
                 i + 1);

        expect_sync(3 * i, dir, i + 1);
        assert_string_equal(syncs[3 * i + 1].path, hint);
        assert_false(syncs[3 * i + 1].hint_exists);
        expect_sync(3 * i + 2, dir, 0);
        assert_true(syncs[3 * i + 2].hint_exists);
        assert_int_equal(access(hint, F_OK), -1);
    }

    close_small(&t, dir);
}


/* kv_sync() flushes every segment written since the last one, once */
static void
test_kv_sync(void **state)
{
    char              dir[PATH_MAX];
    uint32_t          n;
    uint64_t          durable;
    kv_store_t        h2;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir);
    kv_store_init(&h2, t.sh, &t.host, &t.s.conf);

    /* nothing written: nothing to flush */
    nsyncs = 0;
    assert_int_equal(kv_sync(&t.s, &durable), KV_OK);
    assert_int_equal(nsyncs, 0);
    assert_true(durable == KV_LOC(1, 0));

    put_n(&t.s, 0);
    assert_int_equal(kv_durable(&t.s, t.s.written), 0);
    assert_int_equal(kv_durable(&t.s, KV_LOC(1, 0)), 1);

    assert_int_equal(kv_sync(&t.s, &durable), KV_OK);
    assert_int_equal(nsyncs, 1);
    expect_sync(0, dir, 1);
    assert_true(durable == t.s.written);
    assert_int_equal(kv_durable(&t.s, t.s.written), 1);
    assert_true(t.sh->stats.fsyncs == 1);

    assert_int_equal(kv_sync(&t.s, &durable), KV_OK);
    assert_int_equal(nsyncs, 1);
    assert_true(t.sh->stats.fsyncs == 1);

    /* two roll-overs later another handle syncs all three segments */
    for (n = 1; t.sh->segment < 3; n++) {
        put_n(&t.s, n);
    }

    put_n(&t.s, n);
    assert_int_equal(kv_durable(&t.s, t.s.written), 0);

    nsyncs = 0;
    assert_int_equal(kv_sync(&h2, &durable), KV_OK);
    assert_int_equal(nsyncs, 3);
    expect_sync(0, dir, 1);
    expect_sync(1, dir, 2);
    expect_sync(2, dir, 3);
    assert_true(durable == KV_LOC(3, t.sh->write_off));
    assert_int_equal(kv_durable(&t.s, t.s.written), 1);
    assert_true(t.sh->stats.fsyncs == 2);

    /* the active segment only, from then on */
    put_n(&h2, 1000);
    nsyncs = 0;
    assert_int_equal(kv_sync(&t.s, &durable), KV_OK);
    assert_int_equal(nsyncs, 1);
    expect_sync(0, dir, 3);
    assert_int_equal(kv_durable(&h2, h2.written), 1);

    kv_store_close(&h2);
    close_small(&t, dir);
}


/*
 * The flush of the log asks nothing of the file: on Linux 6.13 and later
 * a stat would make every write dirty the segment's inode, and every flush
 * write the inode too.  A directory is flushed by path only.  (Only
 * fstat() is counted: the one the flush used to call.)
 */
static void
test_flush_without_stat(void **state)
{
    int               fd;
    char              dir[PATH_MAX], path[PATH_MAX];
    uint64_t          durable, size;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);
    assert_null(t.host.sync);
    kv_test_segment(dir, 1, path);

    put_n(&t.s, 1);

    fstat_calls = 0;
    fstat_counting = 1;
    assert_int_equal(kv_sync(&t.s, &durable), KV_OK);
    fstat_counting = 0;

    assert_int_equal(fstat_calls, 0);
    assert_true(durable == t.s.written);
    assert_true(t.sh->stats.fsyncs == 1);

    /* the count sees kvstore's calls: opening a segment to read stats it */
    fstat_counting = 1;
    assert_int_equal(kv_open_read(&t.s, path, &fd, &size), KV_OK);
    fstat_counting = 0;

    assert_int_equal(fstat_calls, 1);
    assert_true(size > 0);
    close(fd);

    /* the real flushes: a directory by path, never a file as one */
    assert_int_equal(kv_flush_dir(&t.s, dir), KV_OK);

    kv_test_log_reset();
    assert_int_equal(kv_flush_dir(&t.s, path), KV_EIO);
    assert_true(kv_test_logged(KV_LOG_ERR, "to flush it failed"));

    fd = open(path, O_RDONLY);
    assert_true(fd != -1);
    assert_int_equal(kv_flush(&t.s, fd, path), KV_OK);
    close(fd);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * kv_sync_claim(): one claim at a time, whoever holds it; any kv_sync()
 * ends it, a flush or not (a claim a dead process left ends with it);
 * kv_synced() says where the durable part ends.
 */
static void
test_sync_claim(void **state)
{
    char              dir[PATH_MAX];
    uint64_t          durable, synced;
    kv_store_t        h2;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir);
    kv_store_init(&h2, t.sh, &t.host, &t.s.conf);

    assert_int_equal(kv_sync_claim(&t.s), 1);
    assert_int_equal(kv_sync_claim(&h2), 0);
    assert_int_equal(kv_sync_claim(&t.s), 0);

    put_n(&t.s, 0);
    assert_int_equal(kv_synced(&h2, &synced), KV_OK);
    assert_true(synced < t.s.written);

    assert_int_equal(kv_sync(&h2, &durable), KV_OK);
    assert_int_equal(kv_synced(&t.s, &synced), KV_OK);
    assert_true(synced == durable && synced == t.s.written);
    assert_int_equal(kv_sync_claim(&h2), 1);

    /* nothing to flush: the claim ends all the same */
    assert_int_equal(kv_sync(&t.s, &durable), KV_OK);
    assert_int_equal(kv_sync_claim(&t.s), 1);

    /* a claim by a process that is gone */
    t.sh->flusher = 999999;
    assert_int_equal(kv_sync_claim(&h2), 0);
    assert_int_equal(kv_sync(&h2, &durable), KV_OK);
    assert_int_equal(kv_sync_claim(&h2), 1);

    kv_store_close(&h2);
    close_small(&t, dir);
}


static void
expect_failed(kv_test_store_t *t)
{
    int       n;
    uint64_t  durable;

    assert_int_equal(t->sh->sync_failed, 1);
    assert_int_equal(kv_durable(&t->s, 0), KV_EIO);

    kv_test_log_reset();
    assert_int_equal(kv_put(&t->s, S("x"), S("y"), KV_TYPE_OCTET), KV_EIO);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], "failed earlier"));
    assert_int_equal(kv_delete(&t->s, S("key-0")), KV_EIO);

    n = nsyncs;
    assert_int_equal(kv_sync(&t->s, &durable), KV_EIO);
    assert_int_equal(nsyncs, n);
}


/* A failed flush fails this and every later write until a restart. */
static void
test_sync_failure(void **state)
{
    int               kind;
    char              dir[PATH_MAX];
    uint8_t           v[VLEN];
    uint32_t          n;
    uint64_t          durable, fsyncs;
    kv_test_store_t   t;

    (void) state;

    /* in kv_sync(), at a roll-over, flushing a segment for its hint */
    for (kind = 0; kind < 3; kind++) {
        kv_test_mkdtemp(dir);
        open_small(&t, dir);

        for (n = 0; t.sh->segment < 2; n++) {
            put_n(&t.s, n);
        }

        fsyncs = t.sh->stats.fsyncs;
        kv_test_log_reset();

        if (kind == 0) {
            kv_test_segment(dir, 2, fail_path);
            assert_int_equal(kv_sync(&t.s, &durable), KV_EIO);
            assert_true(t.sh->stats.fsyncs == fsyncs);

        } else if (kind == 1) {
            snprintf(fail_path, sizeof(fail_path), "%s", dir);

            while (t.sh->segment == 2) {
                if (kv_put(&t.s, S("key-0"), S("v"), KV_TYPE_OCTET)
                    != KV_OK)
                {
                    break;
                }
            }

            assert_int_equal(t.sh->segment, 2);
            assert_true(t.sh->stats.write_errors == 1);

        } else {
            kv_test_segment(dir, 1, fail_path);
            assert_int_equal(kv_write_hints(&t.s), KV_EIO);
        }

        assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], fail_path));
        assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR],
                               "Input/output error"));
        expect_failed(&t);

        /* reads go on */
        memset(v, 1, sizeof(v));
        kv_test_expect(&t, S("key-1"), v, sizeof(v));
        kv_test_close(&t);

        /* a restart starts afresh with what the files hold */
        open_small(&t, dir);
        assert_int_equal(t.sh->sync_failed, 0);
        assert_true(t.sh->stats.keys == n);
        put_n(&t.s, 1000);
        close_small(&t, dir);
    }
}


/* the first flush waits in the hook until the test releases it */
static pthread_mutex_t  gate_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t   gate_cond = PTHREAD_COND_INITIALIZER;
static int              gate_entered, gate_open, gate_flushes;


static int
gate_sync(void *ctx, int fd, const char *path)
{
    (void) ctx;
    (void) fd;
    (void) path;

    pthread_mutex_lock(&gate_mutex);

    gate_flushes++;
    gate_entered = 1;
    pthread_cond_broadcast(&gate_cond);

    while (!gate_open) {
        pthread_cond_wait(&gate_cond, &gate_mutex);
    }

    pthread_mutex_unlock(&gate_mutex);

    return 0;
}


typedef struct {
    kv_store_t  *s;
    uint64_t     durable;
    int          rc;
    int          done;
} sync_thread_t;


static void *
sync_thread(void *arg)
{
    sync_thread_t  *st = arg;

    st->rc = kv_sync(st->s, &st->durable);
    __atomic_store_n(&st->done, 1, __ATOMIC_RELEASE);

    return NULL;
}


static void *
lock_and_die(void *arg)
{
    kv_shared_t  *sh = arg;

    assert_int_equal(pthread_mutex_lock(&sh->flush_mutex), 0);

    return NULL;
}


/*
 * Group commit across processes: a flush waits for the one in progress,
 * then covers every write made meanwhile with one flush.  A flusher that
 * dies holding the flush lock does not wedge the store.
 */
static void
test_flush_serialized(void **state)
{
    char              dir[PATH_MAX];
    uint64_t          first_end, durable;
    pthread_t         t1, t2, dead;
    kv_store_t        h1, h2;
    sync_thread_t     st1, st2;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir);
    t.host.sync = gate_sync;
    kv_store_init(&h1, t.sh, &t.host, &t.s.conf);
    kv_store_init(&h2, t.sh, &t.host, &t.s.conf);

    put_n(&t.s, 0);
    first_end = t.s.written;

    memset(&st1, 0, sizeof(st1));
    st1.s = &h1;
    assert_int_equal(pthread_create(&t1, NULL, sync_thread, &st1), 0);

    pthread_mutex_lock(&gate_mutex);
    while (!gate_entered) {
        pthread_cond_wait(&gate_cond, &gate_mutex);
    }
    pthread_mutex_unlock(&gate_mutex);

    /* a write during the first flush, and a second flusher */

    put_n(&t.s, 1);

    memset(&st2, 0, sizeof(st2));
    st2.s = &h2;
    assert_int_equal(pthread_create(&t2, NULL, sync_thread, &st2), 0);

    usleep(100 * 1000);
    assert_int_equal(__atomic_load_n(&st2.done, __ATOMIC_ACQUIRE), 0);
    assert_int_equal(gate_flushes, 1);

    pthread_mutex_lock(&gate_mutex);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_mutex);

    assert_int_equal(pthread_join(t1, NULL), 0);
    assert_int_equal(pthread_join(t2, NULL), 0);

    assert_int_equal(st1.rc, KV_OK);
    assert_true(st1.durable >= first_end);
    assert_int_equal(st2.rc, KV_OK);
    assert_true(st2.durable == t.s.written);
    assert_int_equal(gate_flushes, 2);
    assert_int_equal(kv_durable(&t.s, t.s.written), 1);

    /* covered already: no third flush */
    assert_int_equal(kv_sync(&h2, &durable), KV_OK);
    assert_int_equal(gate_flushes, 2);

    /* a flusher that dies holding the lock hands it on */
    assert_int_equal(pthread_create(&dead, NULL, lock_and_die, t.sh), 0);
    assert_int_equal(pthread_join(dead, NULL), 0);

    put_n(&t.s, 2);
    assert_int_equal(kv_sync(&h1, &durable), KV_OK);
    assert_true(durable == t.s.written);
    assert_int_equal(gate_flushes, 3);

    kv_store_close(&h1);
    kv_store_close(&h2);
    close_small(&t, dir);
}


/*
 * kv_stats() carries the state a host shows (open, active and durable
 * segment, compacting, a failed flush), and kv_set_limits() changes the
 * limits of a running store, as an nginx reload does.
 */
static void
test_stats_state(void **state)
{
    char              dir[PATH_MAX];
    uint8_t           v[VLEN + 1];
    uint32_t          n;
    uint64_t          durable;
    kv_stats_t        st;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir);

    kv_stats(&t.s, &st);
    assert_int_equal(st.open, 1);
    assert_int_equal(st.active_segment, 1);
    assert_int_equal(st.durable_segment, 1);
    assert_int_equal(st.compacting, 0);
    assert_int_equal(st.sync_failed, 0);

    for (n = 0; t.sh->segment < 2; n++) {
        put_n(&t.s, n);
    }

    kv_stats(&t.s, &st);
    assert_int_equal(st.active_segment, 2);
    assert_int_equal(st.durable_segment, 1);
    assert_true(st.keys == n);

    assert_int_equal(kv_sync(&t.s, &durable), KV_OK);
    kv_stats(&t.s, &st);
    assert_int_equal(st.durable_segment, 2);

    assert_int_equal(kv_compact_begin(&t.s), KV_OK);
    kv_stats(&t.s, &st);
    assert_int_equal(st.compacting, 1);
    kv_compact_release(&t.s);
    kv_stats(&t.s, &st);
    assert_int_equal(st.compacting, 0);

    /* lower limits apply to the next write; the hard caps bound them */
    memset(v, 'v', sizeof(v));
    t.s.conf.max_key = 5;
    t.s.conf.max_value = VLEN;
    kv_set_limits(&t.s);
    assert_int_equal(kv_put(&t.s, S("key-00"), v, 1, KV_TYPE_OCTET),
                     KV_EINVAL);
    assert_int_equal(kv_put(&t.s, S("key-0"), v, VLEN + 1, KV_TYPE_OCTET),
                     KV_EINVAL);
    assert_int_equal(kv_put(&t.s, S("key-0"), v, VLEN, KV_TYPE_OCTET),
                     KV_OK);

    t.s.conf.max_key = KV_MAX_KEY_LIMIT + 1;
    t.s.conf.max_value = UINT32_MAX;
    kv_set_limits(&t.s);
    assert_int_equal(t.sh->max_key, KV_MAX_KEY_LIMIT);
    assert_int_equal(t.sh->max_value, KV_MAX_VALUE_LIMIT);

    /* a failed flush shows */
    put_n(&t.s, n);
    kv_test_segment(dir, 2, fail_path);
    assert_int_equal(kv_sync(&t.s, &durable), KV_EIO);
    kv_stats(&t.s, &st);
    assert_int_equal(st.sync_failed, 1);
    assert_int_equal(st.open, 1);

    close_small(&t, dir);
}


typedef struct {
    kv_store_t  *s;
    int          in;               /* written under the store lock */
} request_thread_t;


static void *
request_thread(void *arg)
{
    request_thread_t  *rt = arg;

    kv_lock(rt->s);
    rt->in = 1;
    kv_unlock(rt->s);

    return NULL;
}


/*
 * A request waiting for the store lock gets it before a background loop's
 * next batch: the loop's thread, still running, would otherwise take the
 * mutex again before the woken waiter is back on a CPU.
 */
static void
test_lock_background(void **state)
{
    char               dir[PATH_MAX];
    pthread_t          th;
    int                in, tries;
    kv_test_store_t    t;
    request_thread_t   rt;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir);

    /*
     * The naps are bounded: on a loaded machine the woken request may
     * miss them, so it is given a few tries; without the naps the loop
     * takes the lock first every time.
     */
    rt.s = &t.s;
    rt.in = 0;

    for (tries = 0; tries < 5 && !rt.in; tries++) {
        kv_lock_background(&t.s);
        assert_int_equal(pthread_create(&th, NULL, request_thread, &rt), 0);

        while (!kv_lock_wanted(t.sh)) {
            usleep(100);
        }

        /* the end of one batch and the start of the next */
        kv_unlock(&t.s);
        kv_lock_background(&t.s);

        in = rt.in;
        kv_unlock(&t.s);
        assert_int_equal(pthread_join(th, NULL), 0);
        rt.in = in;
    }

    assert_int_equal(rt.in, 1);
    assert_false(kv_lock_wanted(t.sh));

    /*
     * a waiter killed before it got the lock: its ticket is never served,
     * the loop still gets the lock, and the next request clears it
     */
    t.sh->lock_tickets++;
    assert_true(kv_lock_wanted(t.sh));
    kv_lock_background(&t.s);
    kv_unlock(&t.s);

    kv_lock(&t.s);
    kv_unlock(&t.s);
    assert_false(kv_lock_wanted(t.sh));

    close_small(&t, dir);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_roll_order),
        cmocka_unit_test(test_hint_order),
        cmocka_unit_test(test_kv_sync),
        cmocka_unit_test(test_flush_without_stat),
        cmocka_unit_test(test_sync_claim),
        cmocka_unit_test(test_flush_serialized),
        cmocka_unit_test(test_sync_failure),
        cmocka_unit_test(test_stats_state),
        cmocka_unit_test(test_lock_background),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
