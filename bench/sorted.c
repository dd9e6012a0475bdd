#define _GNU_SOURCE

/*
 * sorted [N [DIR]]: index=sorted at N keys (16-byte keys, 100-byte values;
 * N defaults to 10,000,000), in the engine, without HTTP (bench/sorted.sh
 * serves the store this leaves behind through nginx).
 *
 *  1. load: N puts in random key order into a store whose index has the
 *     memory of a 64m zone (1 Mi buckets), merging whenever a write says
 *     the index is crowded, as nginx does; puts per second with the merges
 *     counted in, and again without them (index=hash, an index big enough
 *     for all), and the write amplification (bytes written by merges over
 *     the bytes of the records put);
 *  2. memory: the table files (sparse indexes and filters, the only RAM a
 *     key in a sorted segment costs) per key held in sorted segments;
 *  3. start-up: kv_recover() of the store in index=sorted, page cache warm;
 *  4. lookups: random hits and misses per second (kv_lookup() and, for
 *     hits, kv_read()), in index=sorted and in index=hash with an index
 *     big enough for every key, in the same run.
 *
 * Targets (issue 12, at 50,000,000 keys): memory at most 2 bytes a key,
 * start-up under 2 s, hits at least 0.7x and misses 0.9x of index=hash,
 * writes with merges at least 0.8x of the figure without.  Printed, and
 * PASS/FAIL per target; the HTTP figures come from bench/sorted.sh.
 */

#include <errno.h>
#include <limits.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "kv_arena.h"


#define KV_SB_KEYS      10000000
#define KV_SB_VALUE     100
#define KV_SB_ZONE      (64 * 1024 * 1024)
#define KV_SB_LOOKUPS   1000000


static double
kv_sb_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec + ts.tv_nsec / 1e9;
}


static void
kv_sb_ok(int rc, const char *what)
{
    if (rc != KV_OK) {
        fprintf(stderr, "sorted: %s failed: %s\n", what, kv_strerror(rc));
        exit(1);
    }
}


static void
kv_sb_log(void *ctx, int level, int err, const char *msg)
{
    (void) ctx;

    if (level <= KV_LOG_WARN) {
        fprintf(stderr, "  kvstore: %s%s%s\n", msg, err ? ": " : "",
                err ? strerror(err) : "");
    }
}


typedef struct {
    kv_arena_t    *arena;
    kv_host_t      host;
    kv_shared_t   *sh;
    kv_store_t     s;
} kv_sb_store_t;


static void
kv_sb_open(kv_sb_store_t *t, const char *dir, size_t zone, uint32_t nbuckets,
    unsigned sorted)
{
    kv_conf_t  conf;

    memset(t, 0, sizeof(kv_sb_store_t));

    t->arena = kv_arena_create(zone);
    if (t->arena == NULL) {
        fprintf(stderr, "sorted: no memory for a %zu-byte index\n", zone);
        exit(1);
    }

    kv_arena_host(t->arena, &t->host);
    t->host.log = kv_sb_log;

    t->sh = kv_shared_create(&t->host, nbuckets, 64, 1024);
    if (t->sh == NULL) {
        fprintf(stderr, "sorted: the index does not fit\n");
        exit(1);
    }

    memset(&conf, 0, sizeof(conf));
    conf.dir = dir;
    conf.max_key = 64;
    conf.max_value = 1024;
    conf.owner_uid = (uid_t) -1;
    conf.owner_gid = (gid_t) -1;
    conf.sorted = sorted;

    kv_store_init(&t->s, t->sh, &t->host, &conf);
    kv_sb_ok(kv_recover(&t->s), "kv_recover");
}


static void
kv_sb_close(kv_sb_store_t *t)
{
    kv_store_close(&t->s);

    if (t->sh->lock_fd >= 0) {
        close(t->sh->lock_fd);
    }

    kv_arena_destroy(t->arena);
}


/*
 * key i of n: "k" and 15 digits of a number of [0, n), in an order that
 * looks random (kv.lua and get.lua name keys the same way)
 */
static int
kv_sb_key(uint64_t i, uint64_t n, char *key)
{
    return sprintf(key, "k%015" PRIu64, (i * 2654435761u + 12345) % n);
}


/* puts n keys; returns puts per second */
static double
kv_sb_load(kv_sb_store_t *t, uint64_t n, uint32_t *merges, double *merge_s)
{
    int         rc, len;
    char        key[32];
    double      t0, m0;
    uint64_t    i;
    kv_write_t  w;
    static uint8_t  value[KV_SB_VALUE];

    memset(value, 'v', sizeof(value));
    *merges = 0;
    *merge_s = 0;
    t0 = kv_sb_now();

    for (i = 0; i < n; i++) {
        len = kv_sb_key(i, n, key);

        memset(&w, 0, sizeof(w));
        w.value = value;
        w.vlen = sizeof(value);

        rc = kv_write(&t->s, (uint8_t *) key, len, &w);

        if (rc == KV_OK && !w.merge_due) {
            continue;
        }

        if (rc != KV_OK && rc != KV_ENOMEM) {
            kv_sb_ok(rc, "kv_write");
        }

        m0 = kv_sb_now();
        kv_sb_ok(kv_compact_begin(&t->s), "kv_compact_begin");
        kv_sb_ok(kv_compact(&t->s), "kv_compact");
        *merge_s += kv_sb_now() - m0;
        (*merges)++;

        if (rc == KV_ENOMEM) {
            i--;
        }
    }

    return n / (kv_sb_now() - t0);
}


/* random lookups of present (hit) or absent keys; returns per second */
static double
kv_sb_lookups(kv_sb_store_t *t, uint64_t n, int hit)
{
    int        len;
    char       key[32];
    double     t0;
    uint64_t   i, j, found;
    kv_loc_t   loc;
    uint8_t    buf[512];

    found = 0;
    t0 = kv_sb_now();

    for (i = 0; i < KV_SB_LOOKUPS; i++) {
        j = (i * 40503 + 7) % n;

        /* a miss: a number past n, never written */
        len = sprintf(key, "k%015" PRIu64, hit ? j : n + j);

        if (kv_lookup(&t->s, (uint8_t *) key, len, &loc) == KV_OK) {
            if (loc.flen > sizeof(buf)
                || kv_read(&t->s, &loc, buf) != KV_OK)
            {
                fprintf(stderr, "sorted: reading %s failed\n", key);
                exit(1);
            }

            found++;
        }
    }

    if (found != (hit ? KV_SB_LOOKUPS : 0)) {
        fprintf(stderr, "sorted: %" PRIu64 " of %d lookups found their key "
                "(expected %s)\n", found, KV_SB_LOOKUPS, hit ? "all" : "none");
        exit(1);
    }

    return KV_SB_LOOKUPS / (kv_sb_now() - t0);
}


static const char *
kv_sb_verdict(int ok, int *all)
{
    *all &= ok;

    return ok ? "PASS" : "FAIL";
}


int
main(int argc, char **argv)
{
    int            all;
    char           dir[PATH_MAX - 8], hdir[PATH_MAX], cmd[PATH_MAX * 2 + 32];
    double         wps, wps_hash, merge_s, t0, start_ms, hit, miss, hhit,
                   hmiss, bpk, wa, rec;
    uint32_t       merges, hm;
    uint64_t       n, user;
    size_t         hzone;
    kv_stats_t     st;
    kv_sb_store_t  t;

    n = argc > 1 ? strtoull(argv[1], NULL, 10) : KV_SB_KEYS;

    if (argc > 2) {
        snprintf(dir, sizeof(dir), "%s", argv[2]);

    } else {
        snprintf(dir, sizeof(dir), "%s/kv-sorted-XXXXXX",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");

        if (mkdtemp(dir) == NULL) {
            perror("mkdtemp");
            return 1;
        }
    }

    snprintf(hdir, sizeof(hdir), "%s-hash", dir);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", hdir);
    if (system(cmd) != 0 || mkdir(hdir, 0755) != 0) {
        perror(hdir);
        return 1;
    }

    printf("sorted: %" PRIu64 " keys of 16 bytes, %d-byte values, in %s\n",
           n, KV_SB_VALUE, dir);

    /* 1. load: index=sorted in a 64m zone's memory, then index=hash */

    kv_sb_open(&t, dir, KV_SB_ZONE, KV_SB_ZONE / 64, 1);
    wps = kv_sb_load(&t, n, &merges, &merge_s);
    kv_stats(&t.s, &st);

    rec = (double) (st.live_bytes + st.dead_bytes) / (n ? n : 1);
    user = n * 142;
    wa = (double) (user + st.compacted_bytes) / user;
    bpk = (double) st.table_index_bytes / (st.table_keys ? st.table_keys : 1);

    printf("load, index=sorted (64m zone): %.0f puts/s with %u merges "
           "(%.1f s of merging), %u runs, %" PRIu64 " keys in sorted "
           "segments, %" PRIu64 " in the index\n", wps, merges, merge_s,
           st.runs, st.table_keys, st.keys);
    printf("write amplification: %.2f (%" PRIu64 " bytes put, %" PRIu64
           " written by merges)\n", wa, user, st.compacted_bytes);
    printf("memory: %" PRIu64 " bytes of table files for %" PRIu64
           " keys: %.2f bytes per key\n", st.table_index_bytes,
           st.table_keys, bpk);
    (void) rec;

    kv_sb_close(&t);

    hzone = (size_t) (n * 64 + (n + 1024) * 8 + 64 * 1024 * 1024);
    kv_sb_open(&t, hdir, hzone, (uint32_t) (n + 1024), 0);
    wps_hash = kv_sb_load(&t, n, &hm, &merge_s);
    kv_sb_close(&t);

    printf("load, index=hash (an index for every key): %.0f puts/s\n",
           wps_hash);

    /* 3. start-up */

    t0 = kv_sb_now();
    kv_sb_open(&t, dir, KV_SB_ZONE, KV_SB_ZONE / 64, 1);
    start_ms = (kv_sb_now() - t0) * 1000;
    printf("start-up, index=sorted: %.0f ms\n", start_ms);

    /* 4. lookups */

    hit = kv_sb_lookups(&t, n, 1);
    miss = kv_sb_lookups(&t, n, 0);
    kv_sb_close(&t);

    kv_sb_open(&t, dir, hzone, (uint32_t) (n + 1024), 0);
    hhit = kv_sb_lookups(&t, n, 1);
    hmiss = kv_sb_lookups(&t, n, 0);
    kv_sb_close(&t);

    printf("lookups (and reads) per second: sorted hits %.0f, misses %.0f; "
           "hash hits %.0f, misses %.0f: hits %.2fx, misses %.2fx\n", hit,
           miss, hhit, hmiss, hit / hhit, miss / hmiss);

    all = 1;
    printf("target memory <= 2 bytes/key: %.2f %s\n", bpk,
           kv_sb_verdict(bpk <= 2.0, &all));
    printf("target start-up < 2000 ms: %.0f %s\n", start_ms,
           kv_sb_verdict(start_ms < 2000, &all));
    printf("target hits >= 0.7x hash (engine): %.2f %s\n", hit / hhit,
           kv_sb_verdict(hit / hhit >= 0.7, &all));
    printf("target misses >= 0.9x hash (engine): %.2f %s\n", miss / hmiss,
           kv_sb_verdict(miss / hmiss >= 0.9, &all));
    printf("target writes with merges >= 0.8x without: %.2f %s\n",
           wps / wps_hash, kv_sb_verdict(wps / wps_hash >= 0.8, &all));

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", hdir);
    (void) system(cmd);

    if (argc <= 2) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        (void) system(cmd);
    }

    return all ? 0 : 1;
}
