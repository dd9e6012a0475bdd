#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>

#include "test_util.h"


#define SEG     4096
#define VLEN    1000
#define BIG     10000

#define S(str)  (const uint8_t *) (str), sizeof(str) - 1


static void
open_small(kv_test_store_t *t, const char *dir, uint64_t segment_size)
{
    kv_conf_t  conf;

    kv_test_conf(&conf, dir);
    conf.segment_size = segment_size;

    assert_int_equal(kv_test_open_conf(t, &conf, KV_TEST_ARENA, 1024), KV_OK);
}


/* value n: vlen bytes that differ from every other n's */
static uint8_t *
value(uint32_t n, size_t vlen)
{
    size_t    i;
    uint8_t  *v;

    v = malloc(vlen);
    assert_non_null(v);

    for (i = 0; i < vlen; i++) {
        v[i] = (uint8_t) (n * 7 + i);
    }

    return v;
}


static void
put_key(kv_store_t *s, uint32_t n, size_t vlen)
{
    char      key[32];
    uint8_t  *v;

    snprintf(key, sizeof(key), "key-%u", n);
    v = value(n, vlen);
    assert_int_equal(kv_put(s, (uint8_t *) key, strlen(key), v, vlen,
                            KV_TYPE_OCTET), KV_OK);
    free(v);
}


static kv_loc_t
where(kv_store_t *s, uint32_t n)
{
    char      key[32];
    kv_loc_t  loc;

    snprintf(key, sizeof(key), "key-%u", n);
    assert_int_equal(kv_lookup(s, (uint8_t *) key, strlen(key), &loc), KV_OK);

    return loc;
}


/* Reads key n through handle s, which need not be the one that wrote it. */
static void
expect_key(kv_store_t *s, uint32_t n, size_t vlen)
{
    uint8_t   *buf, *v;
    kv_loc_t   loc;

    loc = where(s, n);
    assert_int_equal(loc.vlen, vlen);

    buf = malloc(loc.flen);
    assert_non_null(buf);
    assert_int_equal(kv_read(s, &loc, buf), KV_OK);

    v = value(n, vlen);
    assert_memory_equal(buf + loc.flen - vlen, v, vlen);
    free(v);
    free(buf);
}


static uint64_t
segment_size(const char *dir, uint32_t id)
{
    char  path[PATH_MAX];

    kv_test_segment(dir, id, path);

    return kv_test_file_size(path);
}


static int
open_fds(void)
{
    int             n;
    DIR            *d;
    struct dirent  *de;

    d = opendir("/proc/self/fd");
    assert_non_null(d);
    n = 0;

    while ((de = readdir(d)) != NULL) {
        n += de->d_name[0] != '.';
    }

    closedir(d);

    return n;
}


/*
 * Roll-over at segment_size: a record that would pass it opens a new
 * segment, one bigger than a segment goes alone into a fresh one.
 */
static void
test_roll_over(void **state)
{
    char              dir[PATH_MAX];
    uint32_t          i, per;
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir, SEG);
    assert_true(t.sh->stats.segments == 1);

    /* the empty first segment takes it: nothing to roll away from */
    put_key(&t.s, 1000, BIG);
    loc = where(&t.s, 1000);
    assert_int_equal(loc.segment, 1);
    assert_true(loc.offset == 0);

    put_key(&t.s, 0, VLEN);
    loc = where(&t.s, 0);
    assert_int_equal(loc.segment, 2);
    assert_true(loc.offset == 0);
    per = SEG / loc.flen;
    assert_true(per >= 2);

    for (i = 1; i < per; i++) {
        put_key(&t.s, i, VLEN);
        loc = where(&t.s, i);
        assert_int_equal(loc.segment, 2);
        assert_true(loc.offset == (uint64_t) i * loc.flen);
    }

    put_key(&t.s, per, VLEN);
    loc = where(&t.s, per);
    assert_int_equal(loc.segment, 3);
    assert_true(loc.offset == 0);
    assert_true(t.s.written == KV_LOC(3, loc.flen));
    assert_true(segment_size(dir, 2) == (uint64_t) per * loc.flen);
    assert_true(segment_size(dir, 2) + loc.flen > SEG);

    put_key(&t.s, 1001, BIG);
    loc = where(&t.s, 1001);
    assert_int_equal(loc.segment, 4);
    assert_true(loc.offset == 0);
    assert_true(segment_size(dir, 4) == loc.flen);

    put_key(&t.s, 1002, VLEN);
    loc = where(&t.s, 1002);
    assert_int_equal(loc.segment, 5);
    assert_true(t.sh->segment == 5);
    assert_true(t.sh->stats.segments == 5);
    assert_true(t.sh->write_off == loc.flen);

    /* a tombstone rolls over too */
    for (i = 0; t.sh->segment == 5; i++) {
        assert_int_equal(kv_delete(&t.s, S("absent")), KV_NOTFOUND);
        put_key(&t.s, 2000 + i, 100);
    }

    assert_true(segment_size(dir, 5) <= SEG);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/* Another handle (another worker) reads and writes files it did not open */
static void
test_handles(void **state)
{
    char              dir[PATH_MAX];
    uint32_t          i, last;
    kv_store_t        h2;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir, SEG);

    for (i = 0; i < 12; i++) {
        put_key(&t.s, i, VLEN);
    }

    put_key(&t.s, 100, BIG);
    last = t.sh->segment;
    assert_true(last >= 4);

    kv_store_init(&h2, t.sh, &t.host, &t.s.conf);

    for (i = 0; i < 12; i++) {
        expect_key(&h2, i, VLEN);
    }

    expect_key(&h2, 100, BIG);

    /* h2 rolls over; the first handle finds the new segment */
    for (i = 200; t.sh->segment < last + 2; i++) {
        put_key(&h2, i, VLEN);
    }

    assert_true(h2.written == KV_LOC(t.sh->segment, t.sh->write_off));

    while (i-- > 200) {
        expect_key(&t.s, i, VLEN);
    }

    /* overwriting moves a key to the newest segment */
    put_key(&t.s, 0, 50);
    assert_int_equal(where(&h2, 0).segment, t.sh->segment);
    expect_key(&h2, 0, 50);

    kv_store_close(&h2);
    kv_test_close(&t);
    kv_test_rmdir(dir);
}


static void
test_restart(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX];
    uint32_t          i, n;
    kv_stats_t        before;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir, SEG);

    for (i = 0; i < 20; i++) {
        put_key(&t.s, i, VLEN);
    }

    for (i = 0; i < 20; i += 3) {
        put_key(&t.s, i, 10);
    }

    put_key(&t.s, 100, BIG);
    put_key(&t.s, 101, 10);
    assert_int_equal(kv_delete(&t.s, S("key-1")), KV_OK);

    n = t.sh->segment;
    kv_stats(&t.s, &before);
    kv_test_close(&t);

    kv_test_log_reset();
    open_small(&t, dir, SEG);

    assert_int_equal(t.sh->segment, n);
    assert_int_equal(t.sh->first_segment, 1);
    assert_true(t.sh->write_off == segment_size(dir, n));
    assert_true(t.sh->synced == KV_LOC(n, t.sh->write_off));
    assert_true(t.sh->stats.segments == n);
    assert_true(t.sh->stats.keys == before.keys);
    assert_true(t.sh->stats.live_bytes == before.live_bytes);
    assert_true(t.sh->stats.dead_bytes == before.dead_bytes);
    assert_int_equal(t.sh->stats.recovery_scans, n);
    assert_int_equal(t.sh->stats.recovery_hints, 0);

    /* every immutable segment without a hint is reported, then a summary */
    assert_int_equal(kv_test_log_count[KV_LOG_NOTICE], n);
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 0);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_NOTICE],
                           "(0 from hints"));

    for (i = 0; i < 20; i++) {
        if (i == 1) {
            assert_int_equal(kv_lookup(&t.s, S("key-1"), &(kv_loc_t) { 0 }),
                             KV_NOTFOUND);
            continue;
        }

        expect_key(&t.s, i, i % 3 == 0 ? 10 : VLEN);
    }

    expect_key(&t.s, 100, BIG);
    expect_key(&t.s, 101, 10);

    /* appends continue in the last segment */
    put_key(&t.s, 102, 10);
    assert_int_equal(where(&t.s, 102).segment, n);
    kv_test_close(&t);

    /* an empty newest segment (a crash right after a roll-over) is fine */
    kv_test_segment(dir, n + 1, path);
    kv_test_write_file(path, (const uint8_t *) "", 0);
    open_small(&t, dir, SEG);
    assert_int_equal(t.sh->segment, n + 1);
    assert_true(t.sh->write_off == 0);
    expect_key(&t.s, 102, 10);
    kv_test_close(&t);

    kv_test_rmdir(dir);
}


/* More segments than cached descriptors: the cache evicts, never leaks */
static void
test_fd_cache(void **state)
{
    int               base, round;
    char              dir[PATH_MAX];
    uint32_t          i, n;
    kv_store_t        h2;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir, SEG);

    for (n = 0; t.sh->segment <= 2 * KV_FD_CACHE; n++) {
        put_key(&t.s, n, VLEN);
    }

    base = open_fds();
    kv_store_init(&h2, t.sh, &t.host, &t.s.conf);

    for (round = 0; round < 2; round++) {
        for (i = 0; i < n; i++) {
            expect_key(&h2, round ? n - 1 - i : i, VLEN);
            assert_true(open_fds() <= base + KV_FD_CACHE);
        }
    }

    assert_int_equal(open_fds(), base + KV_FD_CACHE);
    kv_store_close(&h2);
    assert_int_equal(open_fds(), base);

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/* A record whose segment compaction deleted: look it up again */
static void
test_stale(void **state)
{
    int               i;
    char              dir[PATH_MAX], path[PATH_MAX];
    uint8_t           buf[2 * VLEN];
    uint32_t          n;
    kv_loc_t          old, cur;
    kv_store_t        h2, h3;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir, SEG);

    for (n = 0; t.sh->segment < 3; n++) {
        put_key(&t.s, n, VLEN);
    }

    kv_store_init(&h2, t.sh, &t.host, &t.s.conf);
    kv_store_init(&h3, t.sh, &t.host, &t.s.conf);

    old = where(&t.s, 0);
    assert_int_equal(old.segment, 1);
    assert_int_equal(kv_read(&h2, &old, buf), KV_OK);

    /* what a compaction does: move the record, raise first_segment, unlink */
    put_key(&t.s, 0, VLEN);
    t.host.lock(t.host.ctx);
    t.sh->first_segment = 2;
    t.host.unlock(t.host.ctx);
    kv_test_segment(dir, 1, path);
    assert_int_equal(unlink(path), 0);

    kv_test_log_reset();
    assert_int_equal(kv_read(&h3, &old, buf), KV_ESTALE);
    assert_int_equal(kv_test_log_count[KV_LOG_ERR], 0);
    assert_int_equal(kv_test_log_count[KV_LOG_INFO], 1);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_INFO], path));

    /* h2's descriptor of the deleted file goes on its next use */
    cur = where(&h2, 0);
    assert_int_equal(kv_read(&h2, &cur, buf), KV_OK);

    for (i = 0; i < KV_FD_CACHE; i++) {
        assert_int_not_equal(h2.fds[i].segment, 1);
    }

    assert_int_equal(kv_read(&h2, &old, buf), KV_ESTALE);
    assert_int_equal(kv_test_log_count[KV_LOG_ERR], 0);
    assert_string_equal(kv_strerror(KV_ESTALE), "the record moved");

    kv_store_close(&h2);
    kv_store_close(&h3);
    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/* Offsets have 40 bits: a segment never grows past 1 TiB */
static void
test_offset_limit(void **state)
{
    char              dir[PATH_MAX];
    uint64_t          end;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir, (uint64_t) 1 << 41);
    put_key(&t.s, 1, 10);
    end = t.sh->write_off;

    t.host.lock(t.host.ctx);
    t.sh->write_off = ((uint64_t) 1 << KV_LOC_OFFSET_BITS) - 10;
    t.host.unlock(t.host.ctx);

    kv_test_log_reset();
    assert_int_equal(kv_put(&t.s, S("key-2"), (uint8_t *) "v", 1,
                            KV_TYPE_OCTET), KV_ENOSPC);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], "1 TiB"));
    assert_true(t.sh->stats.write_errors == 1);

    /* and ids end at KV_SEGMENT_MAX: no roll-over past it */
    t.host.lock(t.host.ctx);
    t.sh->write_off = end;
    t.s.conf.segment_size = end;
    t.sh->segment = KV_SEGMENT_MAX;
    t.host.unlock(t.host.ctx);

    assert_int_equal(kv_put(&t.s, S("key-2"), (uint8_t *) "v", 1,
                            KV_TYPE_OCTET), KV_EINVAL);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], "cannot roll over"));

    t.host.lock(t.host.ctx);
    t.sh->segment = 1;
    t.host.unlock(t.host.ctx);
    kv_test_close(&t);

    /* 0 means the default size: no roll-over here */
    open_small(&t, dir, 0);
    put_key(&t.s, 3, 10);
    assert_int_equal(where(&t.s, 3).segment, 1);
    kv_test_close(&t);

    open_small(&t, dir, 0);
    expect_key(&t.s, 1, 10);
    expect_key(&t.s, 3, 10);
    assert_int_equal(kv_lookup(&t.s, S("key-2"), &(kv_loc_t) { 0 }),
                     KV_NOTFOUND);
    kv_test_close(&t);

    kv_test_rmdir(dir);
}


/* Damage followed by valid records in an older segment: refuse to start */
static void
test_corrupt_older(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX], msg[PATH_MAX + 64];
    size_t            len;
    uint8_t          *data;
    uint32_t          n;
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir, SEG);

    for (n = 0; t.sh->segment < 3; n++) {
        put_key(&t.s, n, VLEN);
    }

    loc = where(&t.s, 1);
    assert_int_equal(loc.segment, 1);
    kv_test_close(&t);

    kv_test_segment(dir, 1, path);
    data = kv_test_read_file(path, &len);
    data[loc.offset + 20] ^= 0x40;
    kv_test_write_file(path, data, len);

    kv_test_log_reset();
    kv_test_open(&t, dir, KV_TEST_ARENA, 64);
    assert_int_equal(t.sh->open, 0);
    snprintf(msg, sizeof(msg), "corrupt record in \"%s\" at offset %" PRIu64
             " followed by valid records", path, loc.offset);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], msg));
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], "kvtool repair"));
    assert_true(kv_test_file_size(path) == len);
    kv_test_close(&t);

    free(data);
    kv_test_rmdir(dir);
}


/* 16 KiB segments, zeros written ahead in steps of 3000 bytes */
static void
open_preallocating(kv_test_store_t *t, const char *dir)
{
    kv_conf_t  conf;

    kv_test_conf(&conf, dir);
    conf.segment_size = 4 * SEG;
    conf.preallocate = 3000;

    assert_int_equal(kv_test_open_conf(t, &conf, KV_TEST_ARENA, 1024), KV_OK);
}


/* every byte of the segment from off to its end is zero */
static int
zeros_from(const char *dir, uint32_t id, uint64_t off)
{
    int       zero;
    char      path[PATH_MAX];
    size_t    len, i;
    uint8_t  *data;

    kv_test_segment(dir, id, path);
    data = kv_test_read_file(path, &len);
    zero = off <= len;

    for (i = (size_t) off; zero && i < len; i++) {
        zero = data[i] == 0;
    }

    free(data);

    return zero;
}


/*
 * conf.preallocate: the active segment runs ahead of its records in
 * zeros, a sealed one ends with its last record, and a start cuts the
 * zeros off without calling them torn; a torn record before them is.
 */
static void
test_preallocate(void **state)
{
    FILE             *f;
    char              dir[PATH_MAX], path[PATH_MAX];
    uint8_t           junk[40];
    uint32_t          i, n, id;
    uint64_t          end[64], size;
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_preallocating(&t, dir);

    memset(end, 0, sizeof(end));

    for (i = 0; i < 60; i++) {
        put_key(&t.s, i, VLEN);
        loc = where(&t.s, i);
        end[loc.segment] = loc.offset + loc.flen;

        /* ahead in zeros, within segment_size */
        size = segment_size(dir, t.sh->segment);
        assert_true(size == t.sh->prealloc_end);
        assert_true(size > t.sh->write_off);
        assert_true(size <= 4 * SEG);
        assert_true(zeros_from(dir, t.sh->segment, t.sh->write_off));
    }

    n = t.sh->segment;
    assert_true(n > 3);

    for (id = 1; id < n; id++) {
        assert_true(segment_size(dir, id) == end[id]);
    }

    /* a record bigger than a segment: nothing preallocated after it */
    put_key(&t.s, 100, 5 * SEG);
    assert_int_equal(t.sh->segment, n + 1);
    assert_true(segment_size(dir, n + 1) == t.sh->write_off);
    assert_true(t.sh->prealloc_end == t.sh->write_off);
    put_key(&t.s, 101, 10);
    assert_int_equal(t.sh->segment, n + 2);
    assert_true(segment_size(dir, n + 1) == where(&t.s, 100).flen);
    assert_true(segment_size(dir, n + 2) > t.sh->write_off);
    n = t.sh->segment;
    size = t.sh->write_off;
    kv_test_close(&t);

    /* a start after a crash: the zeros go, quietly, the records stay */
    kv_test_log_reset();
    open_small(&t, dir, 4 * SEG);
    assert_int_equal(t.sh->segment, n);
    assert_true(t.sh->write_off == size);
    assert_true(segment_size(dir, n) == size);
    assert_true(t.sh->stats.truncated_bytes == 0);
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 0);
    assert_true(kv_test_logged(KV_LOG_NOTICE, "bytes of preallocated space "
                               "off"));

    for (i = 0; i < 60; i++) {
        expect_key(&t.s, i, VLEN);
    }

    expect_key(&t.s, 100, 5 * SEG);
    expect_key(&t.s, 101, 10);
    kv_test_close(&t);

    /* a torn record among the zeros is a torn tail */
    open_preallocating(&t, dir);
    put_key(&t.s, 102, 10);
    size = t.sh->write_off;
    kv_test_close(&t);

    kv_test_segment(dir, n, path);
    memset(junk, 0x5a, sizeof(junk));
    f = fopen(path, "r+");
    assert_non_null(f);
    assert_int_equal(fseek(f, (long) size, SEEK_SET), 0);
    assert_int_equal(fwrite(junk, 1, sizeof(junk), f), sizeof(junk));
    fclose(f);
    assert_true(segment_size(dir, n) > size + sizeof(junk));

    kv_test_log_reset();
    open_small(&t, dir, 4 * SEG);
    assert_true(t.sh->write_off == size);
    assert_true(t.sh->stats.truncated_bytes > sizeof(junk));
    assert_true(kv_test_logged(KV_LOG_WARN, "truncated torn tail"));
    expect_key(&t.s, 102, 10);
    kv_test_close(&t);

    kv_test_rmdir(dir);
}


/*
 * A disk that fills while zeros are written ahead: the record still goes
 * in if it fits, and one that does not fails with nothing partial left.
 * RLIMIT_FSIZE stands for the full disk.
 */
static void
test_preallocate_full(void **state)
{
    int               rc;
    char              dir[PATH_MAX], key[32];
    uint8_t          *v;
    uint32_t          i, n;
    uint64_t          limit;
    struct rlimit     old, rl;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_preallocating(&t, dir);

    put_key(&t.s, 0, VLEN);
    limit = t.sh->prealloc_end + 1500;

    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    rl = old;
    rl.rlim_cur = (rlim_t) limit;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);

    kv_test_log_reset();
    rc = KV_OK;

    for (n = 1; n < 20; n++) {
        snprintf(key, sizeof(key), "key-%u", n);
        v = value(n, VLEN);
        rc = kv_put(&t.s, (uint8_t *) key, strlen(key), v, VLEN,
                    KV_TYPE_OCTET);
        free(v);

        if (rc != KV_OK) {
            break;
        }
    }

    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);

    /*
     * a record still fit after the first failed preallocation, the next
     * one failed to preallocate again: one warning for both
     */
    assert_int_equal(rc, KV_ENOSPC);
    assert_int_equal(kv_test_logged(KV_LOG_WARN, "preallocating"), 1);
    assert_int_equal(t.s.prealloc_errno, EFBIG);
    assert_true(segment_size(dir, t.sh->segment) == t.sh->write_off);
    assert_true(t.sh->prealloc_end == t.sh->write_off);

    /* room again: preallocation resumes, and warns again when it fails */
    put_key(&t.s, n, VLEN);
    assert_true(segment_size(dir, t.sh->segment) > limit);
    assert_int_equal(t.s.prealloc_errno, 0);
    kv_test_close(&t);

    open_small(&t, dir, 4 * SEG);
    assert_true(t.sh->stats.truncated_bytes == 0);

    for (i = 0; i <= n; i++) {
        expect_key(&t.s, i, VLEN);
    }

    assert_true(n > 2);
    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/* appends n bytes of 0x5a to the file at path */
static void
append_junk(const char *path, size_t n)
{
    FILE  *f;

    f = fopen(path, "a");
    assert_non_null(f);

    while (n-- > 0) {
        assert_int_equal(fputc(0x5a, f), 0x5a);
    }

    assert_int_equal(fclose(f), 0);
}


/*
 * A store that preallocates after running without (a reload that turns
 * fsync=always on): the zeros start after the last record, never over it.
 * A roll-over also cuts what a killed writer left after the last record.
 */
static void
test_preallocate_later(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX];
    uint32_t          i, n;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    open_small(&t, dir, 4 * SEG);

    for (i = 0; i < 3; i++) {
        put_key(&t.s, i, VLEN);
    }

    t.s.conf.preallocate = 3000;

    for (i = 3; i < 6; i++) {
        put_key(&t.s, i, VLEN);
        assert_true(zeros_from(dir, t.sh->segment, t.sh->write_off));
    }

    for (i = 0; i < 6; i++) {
        expect_key(&t.s, i, VLEN);
    }

    /* a record a killed writer left half-written, then a roll-over */
    kv_test_close(&t);
    open_small(&t, dir, 4 * SEG);
    n = t.sh->segment;
    kv_test_segment(dir, n, path);
    append_junk(path, 7);
    put_key(&t.s, 100, 4 * SEG);
    assert_int_equal(t.sh->segment, n + 1);
    assert_true(segment_size(dir, n) == where(&t.s, 5).offset
                                        + where(&t.s, 5).flen);
    kv_test_close(&t);

    kv_test_log_reset();
    open_small(&t, dir, 4 * SEG);
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 0);

    for (i = 0; i < 6; i++) {
        expect_key(&t.s, i, VLEN);
    }

    expect_key(&t.s, 100, 4 * SEG);
    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * After a power cut in the middle of a flush over preallocated zeros, a
 * later sector may be on disk when an earlier one is not: the last
 * segment shows a sector never written, valid records, then zeros.  None
 * of them was acknowledged: cut at the gap, with a warning.  The same gap
 * without the zeros at the end, and damage that is no unwritten sector
 * (a bad byte in an acknowledged record), are refused.
 */
static void
test_preallocate_power_cut(void **state)
{
    int               kind;
    char              dir[PATH_MAX], path[PATH_MAX];
    size_t            len, sector_end;
    uint8_t          *data;
    uint32_t          i;
    uint64_t          last_end;
    kv_loc_t          gap, loc;
    kv_conf_t         conf;
    kv_test_store_t   t;

    (void) state;

    for (kind = 0; kind < 3; kind++) {
        kv_test_mkdtemp(dir);
        open_preallocating(&t, dir);

        for (i = 0; i < 5; i++) {
            put_key(&t.s, i, VLEN);
        }

        gap = where(&t.s, 2);
        last_end = t.sh->write_off;
        kv_test_close(&t);

        kv_test_segment(dir, gap.segment, path);
        data = kv_test_read_file(path, &len);
        assert_true(len > last_end);

        /* the first sector of key-2's record never written */
        sector_end = (size_t) (gap.offset + 512) & ~(size_t) 511;

        if (kind < 2) {
            memset(data + gap.offset, 0, sector_end - gap.offset);

        } else {
            data[gap.offset + gap.flen / 2] ^= 0xff;
        }

        kv_test_write_file(path, data, kind == 1 ? last_end : len);
        free(data);

        kv_test_log_reset();
        kv_test_conf(&conf, dir);
        conf.segment_size = 4 * SEG;

        if (kind != 0) {
            assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA,
                                               1024), KV_ECORRUPT);
            assert_true(kv_test_logged(KV_LOG_ERR, "followed by valid"));
            kv_test_close(&t);
            kv_test_rmdir(dir);
            continue;
        }

        assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 1024),
                         KV_OK);
        assert_true(t.sh->write_off == gap.offset);
        assert_true(segment_size(dir, gap.segment) == gap.offset);

        /* the records cut, not the zeros after them */
        assert_true(t.sh->stats.truncated_bytes == last_end - gap.offset);
        assert_true(kv_test_logged(KV_LOG_WARN, "power cut"));
        expect_key(&t.s, 0, VLEN);
        expect_key(&t.s, 1, VLEN);
        assert_int_equal(kv_lookup(&t.s, S("key-2"), &loc), KV_NOTFOUND);
        assert_int_equal(kv_lookup(&t.s, S("key-4"), &loc), KV_NOTFOUND);

        kv_test_close(&t);
        kv_test_rmdir(dir);
    }
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_roll_over),
        cmocka_unit_test(test_handles),
        cmocka_unit_test(test_restart),
        cmocka_unit_test(test_fd_cache),
        cmocka_unit_test(test_stale),
        cmocka_unit_test(test_offset_limit),
        cmocka_unit_test(test_corrupt_older),
        cmocka_unit_test(test_preallocate),
        cmocka_unit_test(test_preallocate_full),
        cmocka_unit_test(test_preallocate_later),
        cmocka_unit_test(test_preallocate_power_cut),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
