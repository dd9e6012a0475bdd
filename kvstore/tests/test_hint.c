#define _GNU_SOURCE

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "test_util.h"


#define SEG     2048

#define S(str)  (const uint8_t *) (str), sizeof(str) - 1


typedef struct {
    uint8_t   key[64];
    uint16_t  klen;
    uint64_t  loc;
    uint32_t  flen;
    uint32_t  vlen;
    uint8_t   type;
} entry_t;


typedef struct {
    entry_t   *e;
    size_t     n;
    uint64_t   keys, live, dead, seq, records;
} snapshot_t;


static void
hint_path(const char *dir, uint32_t id, char *path)
{
    snprintf(path, PATH_MAX, "%s/" KV_HINT_FMT, dir, id);
}


static int
exists(const char *path)
{
    return access(path, F_OK) == 0;
}


static int
snap_entry(void *ctx, const kv_entry_t *e)
{
    entry_t     *x;
    snapshot_t  *sn;

    sn = ctx;
    sn->e = realloc(sn->e, (sn->n + 1) * sizeof(entry_t));
    assert_non_null(sn->e);

    x = &sn->e[sn->n++];
    memset(x, 0, sizeof(entry_t));
    assert_true(e->klen <= sizeof(x->key));
    memcpy(x->key, e->key, e->klen);
    x->klen = e->klen;
    x->loc = e->loc;
    x->flen = e->flen;
    x->vlen = e->vlen;
    x->type = e->type;

    return KV_OK;
}


static int
cmp_entry(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(((entry_t *) 0)->key));
}


/* The whole index, sorted by key, and the counters recovery rebuilds. */
static void
snapshot(kv_test_store_t *t, snapshot_t *sn)
{
    memset(sn, 0, sizeof(snapshot_t));

    t->host.lock(t->host.ctx);
    assert_int_equal(kv_index_walk(&t->host, t->sh, snap_entry, sn), KV_OK);
    sn->keys = t->sh->stats.keys;
    sn->live = t->sh->stats.live_bytes;
    sn->dead = t->sh->stats.dead_bytes;
    sn->seq = t->sh->seq;
    sn->records = t->sh->stats.recovered_records;
    t->host.unlock(t->host.ctx);

    qsort(sn->e, sn->n, sizeof(entry_t), cmp_entry);
}


/* Same index, and every value reads back with a good checksum. */
static void
expect_snapshot(kv_test_store_t *t, const snapshot_t *ref)
{
    size_t       i;
    uint8_t     *buf;
    kv_loc_t     loc;
    snapshot_t   sn;

    snapshot(t, &sn);

    assert_int_equal(sn.n, ref->n);
    assert_true(sn.keys == ref->keys);
    assert_true(sn.live == ref->live);
    assert_true(sn.dead == ref->dead);
    assert_true(sn.seq == ref->seq);

    for (i = 0; i < sn.n; i++) {
        assert_memory_equal(&sn.e[i], &ref->e[i], sizeof(entry_t));

        assert_int_equal(kv_lookup(&t->s, sn.e[i].key, sn.e[i].klen, &loc),
                         KV_OK);
        buf = malloc(loc.flen);
        assert_non_null(buf);
        assert_int_equal(kv_read(&t->s, &loc, buf), KV_OK);
        free(buf);
    }

    free(sn.e);
}


/*
 * Puts, overwrites across segments, JSON values and deletes whose
 * tombstones land in later segments than the keys they delete.
 */
static uint32_t
fill(kv_test_store_t *t)
{
    int       i;
    char      key[32];
    uint8_t   v[700];

    for (i = 0; i < 40; i++) {
        snprintf(key, sizeof(key), "key-%02d", i);
        memset(v, 'a' + i % 26, sizeof(v));

        assert_int_equal(kv_put(&t->s, (uint8_t *) key, strlen(key), v,
                                (size_t) (i * 37) % sizeof(v),
                                i % 4 ? KV_TYPE_OCTET : KV_TYPE_JSON), KV_OK);
    }

    for (i = 0; i < 40; i += 5) {
        snprintf(key, sizeof(key), "key-%02d", i);
        assert_int_equal(kv_put(&t->s, (uint8_t *) key, strlen(key),
                                (uint8_t *) "again", 5, KV_TYPE_OCTET), KV_OK);
    }

    for (i = 1; i < 40; i += 7) {
        snprintf(key, sizeof(key), "key-%02d", i);
        assert_int_equal(kv_delete(&t->s, (uint8_t *) key, strlen(key)),
                         KV_OK);
    }

    /* deleted, then back */
    assert_int_equal(kv_put(&t->s, S("key-08"), S("back"), KV_TYPE_OCTET),
                     KV_OK);

    assert_true(t->sh->segment >= 5);

    return t->sh->segment;
}


static void
expect_deleted(kv_test_store_t *t)
{
    int        i;
    char       key[32];
    kv_loc_t   loc;

    for (i = 1; i < 40; i += 7) {
        snprintf(key, sizeof(key), "key-%02d", i);
        assert_int_equal(kv_lookup(&t->s, (uint8_t *) key, strlen(key), &loc),
                         i == 8 ? KV_OK : KV_NOTFOUND);
    }
}


static void
test_same_index(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX];
    uint32_t          i, n;
    snapshot_t        ref;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);
    n = fill(&t);

    /* a running compaction writes the hints of what it creates itself */
    t.host.lock(t.host.ctx);
    t.sh->compactor = 12345;
    t.host.unlock(t.host.ctx);
    assert_int_equal(kv_write_hints(&t.s), KV_OK);
    hint_path(dir, 1, path);
    assert_false(exists(path));
    t.host.lock(t.host.ctx);
    t.sh->compactor = 0;
    t.host.unlock(t.host.ctx);

    /* immutable segments only */
    kv_test_log_reset();
    assert_int_equal(kv_write_hints(&t.s), KV_OK);
    assert_int_equal(kv_write_hint(&t.s, n), KV_EINVAL);
    assert_int_equal(kv_test_log_count[KV_LOG_ERR], 1);
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 0);

    for (i = 1; i <= n; i++) {
        hint_path(dir, i, path);
        assert_int_equal(exists(path), i < n);
        strcat(path, KV_TMP_SUFFIX);
        assert_false(exists(path));
    }

    /* a second run finds nothing to do */
    assert_int_equal(kv_write_hints(&t.s), KV_OK);

    snapshot(&t, &ref);
    ref.records = t.sh->stats.puts + t.sh->stats.deletes;
    kv_test_close(&t);

    kv_test_log_reset();
    kv_test_open_small(&t, dir, SEG);
    assert_int_equal(t.sh->stats.recovery_hints, n - 1);
    assert_int_equal(t.sh->stats.recovery_scans, 1);
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 0);
    assert_int_equal(kv_test_log_count[KV_LOG_NOTICE], 1);
    assert_true(t.sh->stats.recovered_records == ref.records);
    expect_snapshot(&t, &ref);
    expect_deleted(&t);
    kv_test_expect(&t, S("key-08"), "back", 4);
    kv_test_close(&t);

    /* without hints: the very same index */
    for (i = 1; i < n; i++) {
        hint_path(dir, i, path);
        assert_int_equal(unlink(path), 0);
    }

    kv_test_open_small(&t, dir, SEG);
    assert_int_equal(t.sh->stats.recovery_hints, 0);
    assert_int_equal(t.sh->stats.recovery_scans, n);
    assert_true(t.sh->stats.recovered_records == ref.records);
    expect_snapshot(&t, &ref);
    expect_deleted(&t);
    kv_test_close(&t);

    free(ref.e);
    kv_test_rmdir(dir);
}


enum {
    DAMAGE_MISSING,
    DAMAGE_STALE,
    DAMAGE_FLIPPED,
    DAMAGE_TRUNCATED,
    DAMAGE_ENTRY,
    DAMAGE_OTHER_ID,
    DAMAGE_KINDS
};


static const char  *damage_reason[] = {
    NULL,
    "stale: it describes",
    "checksum mismatch",
    "checksum mismatch",
    "malformed entry 0",
    "written for segment 3",
};


/* Damages segment 2's hint as kind says. */
static void
damage(const char *dir, int kind)
{
    char       path[PATH_MAX], other[PATH_MAX];
    size_t     len;
    uint8_t   *data, garbage[5];
    uint64_t   sum;

    hint_path(dir, 2, path);
    data = kv_test_read_file(path, &len);

    switch (kind) {

    case DAMAGE_MISSING:
        assert_int_equal(unlink(path), 0);
        break;

    case DAMAGE_STALE:
        /* the segment grew: a torn write appended after the hint */
        kv_test_segment(dir, 2, other);
        free(data);
        data = kv_test_read_file(other, &len);
        data = realloc(data, len + sizeof(garbage));
        assert_non_null(data);
        memset(garbage, 0x55, sizeof(garbage));
        memcpy(data + len, garbage, sizeof(garbage));
        kv_test_write_file(other, data, len + sizeof(garbage));
        break;

    case DAMAGE_FLIPPED:
        data[len / 2] ^= 0x10;
        kv_test_write_file(path, data, len);
        break;

    case DAMAGE_TRUNCATED:
        kv_test_write_file(path, data, len / 2);
        break;

    case DAMAGE_ENTRY:
        /* a bad first entry under a checksum that matches */
        data[24] = 0x80;
        sum = XXH3_64bits(data, len - 8);
        memcpy(data + len - 8, &sum, 8);
        kv_test_write_file(path, data, len);
        break;

    case DAMAGE_OTHER_ID:
        free(data);
        hint_path(dir, 3, other);
        data = kv_test_read_file(other, &len);
        kv_test_write_file(path, data, len);
        break;
    }

    free(data);
}


/* Each kind of bad hint falls back to scanning its segment, logged. */
static void
test_fallback(void **state)
{
    int               kind;
    char              dir[PATH_MAX], path[PATH_MAX];
    uint32_t          n;
    snapshot_t        ref;
    kv_test_store_t   t;

    (void) state;

    for (kind = 0; kind < DAMAGE_KINDS; kind++) {
        kv_test_mkdtemp(dir);
        kv_test_open_small(&t, dir, SEG);
        n = fill(&t);
        assert_int_equal(kv_write_hints(&t.s), KV_OK);
        snapshot(&t, &ref);
        kv_test_close(&t);

        damage(dir, kind);
        hint_path(dir, 2, path);

        kv_test_log_reset();
        kv_test_open_small(&t, dir, SEG);
        assert_int_equal(t.sh->stats.recovery_hints, n - 2);
        assert_int_equal(t.sh->stats.recovery_scans, 2);
        assert_int_equal(kv_test_log_count[KV_LOG_ERR], 0);

        if (kind == DAMAGE_MISSING) {
            assert_int_equal(kv_test_log_count[KV_LOG_WARN], 0);

        } else if (kind == DAMAGE_STALE) {
            /* then the scan cuts the torn bytes */
            assert_int_equal(kv_test_log_count[KV_LOG_WARN], 2);
            assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN],
                                   "truncated torn tail of"));
            assert_true(t.sh->stats.truncated_bytes == 5);

        } else {
            assert_int_equal(kv_test_log_count[KV_LOG_WARN], 1);
            assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN], path));
            assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN],
                                   damage_reason[kind]));
        }

        /* two NOTICEs: the scanned immutable segment, then the summary */
        assert_int_equal(kv_test_log_count[KV_LOG_NOTICE], 2);
        assert_false(exists(path));

        expect_snapshot(&t, &ref);
        expect_deleted(&t);

        /* the background job replaces the hint; the next start uses it */
        assert_int_equal(kv_write_hints(&t.s), KV_OK);
        assert_true(exists(path));
        kv_test_close(&t);

        kv_test_open_small(&t, dir, SEG);
        assert_int_equal(t.sh->stats.recovery_hints, n - 1);
        expect_snapshot(&t, &ref);
        kv_test_close(&t);

        free(ref.e);
        kv_test_rmdir(dir);
    }
}


/* A segment with a bad record gets no hint; recovery decides about it. */
static void
test_bad_segment(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX];
    size_t            len;
    uint8_t          *data;
    kv_loc_t          loc;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);
    fill(&t);

    assert_int_equal(kv_lookup(&t.s, S("key-12"), &loc), KV_OK);
    assert_int_equal(loc.segment, 2);

    kv_test_segment(dir, 2, path);
    data = kv_test_read_file(path, &len);
    data[loc.offset + loc.flen - 1] ^= 0x01;
    kv_test_write_file(path, data, len);
    free(data);

    kv_test_log_reset();
    assert_int_equal(kv_write_hints(&t.s), KV_ECORRUPT);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_ERR], path));

    hint_path(dir, 2, path);
    assert_false(exists(path));
    strcat(path, KV_TMP_SUFFIX);
    assert_false(exists(path));
    hint_path(dir, 1, path);
    assert_true(exists(path));
    hint_path(dir, 3, path);
    assert_true(exists(path));

    kv_test_close(&t);
    kv_test_rmdir(dir);
}


/*
 * Hints of deleted segments, of the active one and interrupted writes are
 * removed at start-up; a read-only start changes nothing.
 */
static void
test_orphans(void **state)
{
    char              dir[PATH_MAX], path[PATH_MAX], tmp[PATH_MAX];
    size_t            len;
    uint8_t          *data;
    uint32_t          n;
    kv_conf_t         conf;
    kv_test_store_t   t;

    (void) state;

    kv_test_mkdtemp(dir);
    kv_test_open_small(&t, dir, SEG);
    n = fill(&t);
    assert_int_equal(kv_write_hints(&t.s), KV_OK);
    kv_test_close(&t);

    hint_path(dir, 1, path);
    data = kv_test_read_file(path, &len);
    hint_path(dir, n, path);
    kv_test_write_file(path, data, len);
    hint_path(dir, n + 5, path);
    kv_test_write_file(path, data, len);
    hint_path(dir, 2, tmp);
    strcat(tmp, KV_TMP_SUFFIX);
    kv_test_write_file(tmp, data, len / 2);

    /* read-only: reported, not touched */
    kv_test_conf(&conf, dir);
    conf.segment_size = SEG;
    conf.read_only = 1;
    hint_path(dir, 3, path);
    kv_test_write_file(path, data, len);

    kv_test_log_reset();
    assert_int_equal(kv_test_open_conf(&t, &conf, KV_TEST_ARENA, 256), KV_OK);
    assert_int_equal(t.sh->lock_fd, -1);
    assert_int_equal(kv_test_log_count[KV_LOG_WARN], 1);
    assert_non_null(strstr(kv_test_log_msg[KV_LOG_WARN], path));
    assert_true(exists(path));
    assert_true(exists(tmp));
    assert_int_equal(t.sh->stats.recovery_hints, n - 2);
    assert_int_equal(kv_put(&t.s, S("x"), S("y"), KV_TYPE_OCTET),
                     KV_EUNAVAIL);
    expect_deleted(&t);
    kv_test_close(&t);

    kv_test_open_small(&t, dir, SEG);
    assert_false(exists(tmp));
    hint_path(dir, n, path);
    assert_false(exists(path));
    hint_path(dir, n + 5, path);
    assert_false(exists(path));
    hint_path(dir, 1, path);
    assert_true(exists(path));
    assert_int_equal(t.sh->stats.recovery_hints, n - 2);
    kv_test_close(&t);

    free(data);
    kv_test_rmdir(dir);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_same_index),
        cmocka_unit_test(test_fallback),
        cmocka_unit_test(test_bad_segment),
        cmocka_unit_test(test_orphans),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
