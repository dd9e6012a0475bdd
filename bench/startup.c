#define _GNU_SOURCE

/*
 * startup [N [DIR]]: how long kv_recover() takes to bring back N keys
 * (16-byte keys, 100-byte values; N defaults to 10,000,000) from hint files
 * and by scanning every segment, with the page cache warm and cold.
 *
 * It builds the store with kv_put() in DIR (a fresh temporary directory by
 * default, removed at the end; a given DIR is kept, and reused as it is if
 * it already holds segments), writes the hints of every immutable segment,
 * then recovers into a fresh index four times: hints warm, hints cold, and
 * with the hints moved aside, scan cold, scan warm.  "Cold" drops the
 * store's own files from the page cache (fdatasync + POSIX_FADV_DONTNEED),
 * so the rest of the machine keeps its cache.
 *
 * Target (issue 3): recovery from hints under 5000 ms.
 *
 * Then it measures the index memory per key of up to 1,000,000 keys
 * written with and without a TTL (issue 11: an expiry must not cost the
 * keys that have none).
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "kv_arena.h"


#define KV_BENCH_KEYS       10000000
#define KV_BENCH_KEY_LEN    16
#define KV_BENCH_VALUE_LEN  100
#define KV_BENCH_TARGET_MS  5000

/* Bitcask's keydir: about 44.5 bytes per key plus the key */
#define KV_BENCH_BITCASK    44.5

#define KV_BENCH_ASIDE      "hints-aside"

/* keys of the TTL memory comparison, at most */
#define KV_BENCH_TTL_KEYS   1000000

/* a directory and a file name in it */
#define KV_BENCH_PATH       (PATH_MAX + NAME_MAX + 2)


typedef struct {
    uint64_t   files;
    uint64_t   segment_bytes;
    uint64_t   hint_bytes;
    uint32_t   hints;
} kv_bench_dir_t;


/*
 * The arena's high-water mark: it is a bump allocator, so the end of the
 * highest block handed out is the memory the index occupies.
 */
static void      *(*kv_bench_arena_alloc)(void *ctx, size_t size);
static uint8_t   *kv_bench_base;
static size_t     kv_bench_top;


static void *
kv_bench_alloc(void *ctx, size_t size)
{
    size_t   end;
    uint8_t  *p;

    p = kv_bench_arena_alloc(ctx, size);

    if (p != NULL) {
        end = (size_t) (p - kv_bench_base) + ((size + 7) & ~(size_t) 7);

        if (end > kv_bench_top) {
            kv_bench_top = end;
        }
    }

    return p;
}


static void
kv_bench_ok(int rc, const char *call, const char *arg)
{
    if (rc != KV_OK) {
        fprintf(stderr, "startup: %s(\"%s\") failed: %s\n", call, arg,
                kv_strerror(rc));
        exit(1);
    }
}


/* CPU time of this process: wall time well above it means it waited */
static double
kv_bench_cpu(void)
{
    struct rusage  ru;

    getrusage(RUSAGE_SELF, &ru);

    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec
           + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}


static void
kv_bench_load(void)
{
    FILE  *f;
    char   line[128];

    f = fopen("/proc/loadavg", "r");

    if (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        printf("load average: %s", line);
    }

    if (f != NULL) {
        fclose(f);
    }
}


static void
kv_bench_die(const char *what, const char *path, int err)
{
    fprintf(stderr, "startup: %s \"%s\" failed%s%s\n", what, path,
            err ? ": " : "", err ? strerror(err) : "");
    exit(1);
}


static double
kv_bench_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec + ts.tv_nsec / 1e9;
}


static int
kv_bench_suffix(const char *name, const char *suffix)
{
    size_t  n, m;

    n = strlen(name);
    m = strlen(suffix);

    return n > m && strcmp(name + n - m, suffix) == 0;
}


/*
 * Calls fn (if not NULL) for every plain file of dir whose name ends in
 * suffix ("" for all); returns the sum of their sizes.
 */
static uint64_t
kv_bench_files(const char *dir, const char *suffix,
    void (*fn)(const char *dir, const char *name))
{
    DIR            *d;
    char            path[PATH_MAX];
    uint64_t        bytes;
    struct stat     st;
    struct dirent  *de;

    d = opendir(dir);
    if (d == NULL) {
        kv_bench_die("opendir", dir, errno);
    }

    bytes = 0;

    while ((de = readdir(d)) != NULL) {
        if (!kv_bench_suffix(de->d_name, suffix)) {
            continue;
        }

        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);

        if (lstat(path, &st) == -1 || !S_ISREG(st.st_mode)) {
            continue;
        }

        bytes += (uint64_t) st.st_size;

        if (fn != NULL) {
            fn(dir, de->d_name);
        }
    }

    closedir(d);

    return bytes;
}


/* the newest segment, which recovery scans even when hints exist */
static char      kv_bench_active[NAME_MAX + 1];


static void
kv_bench_newest(const char *dir, const char *name)
{
    (void) dir;

    /* ids are zero-padded: names sort as ids do */
    if (strcmp(name, kv_bench_active) > 0) {
        snprintf(kv_bench_active, sizeof(kv_bench_active), "%s", name);
    }
}


static void
kv_bench_uncache(const char *dir, const char *name)
{
    int   fd;
    char  path[PATH_MAX];

    snprintf(path, sizeof(path), "%s/%s", dir, name);

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        kv_bench_die("open", path, errno);
    }

    /* only clean pages can be dropped */
    if (fdatasync(fd) == -1) {
        kv_bench_die("fdatasync", path, errno);
    }

    (void) posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}


/* Moves a hint file between dir and dir/KV_BENCH_ASIDE (either way). */
static void
kv_bench_move(const char *from, const char *name)
{
    char   src[PATH_MAX], dst[PATH_MAX];
    char  *slash;

    snprintf(src, sizeof(src), "%s/%s", from, name);

    if (kv_bench_suffix(from, "/" KV_BENCH_ASIDE)) {
        snprintf(dst, sizeof(dst), "%s", from);
        slash = strrchr(dst, '/');
        snprintf(slash, sizeof(dst) - (size_t) (slash - dst), "/%s", name);

    } else {
        snprintf(dst, sizeof(dst), "%s/" KV_BENCH_ASIDE "/%s", from, name);
    }

    if (rename(src, dst) == -1) {
        kv_bench_die("rename", src, errno);
    }
}


static void
kv_bench_remove(const char *dir, const char *name)
{
    char  path[PATH_MAX];

    snprintf(path, sizeof(path), "%s/%s", dir, name);

    if (unlink(path) == -1) {
        kv_bench_die("unlink", path, errno);
    }
}


/*
 * A fresh index over an arena sized for n keys: one bucket per key (the
 * module gives one per 64 bytes of zone, which a zone sized for these keys
 * also comes to), and the arena's untouched pages cost nothing.
 */
static kv_arena_t *
kv_bench_open(kv_store_t *s, kv_host_t *host, const char *dir, uint64_t n)
{
    kv_conf_t     conf;
    kv_arena_t   *arena;
    kv_shared_t  *sh;

    arena = kv_arena_create(64 * 1024 * 1024 + n * 128);
    if (arena == NULL) {
        kv_bench_die("allocating the arena for", dir, ENOMEM);
    }

    kv_arena_host(arena, host);

    kv_bench_arena_alloc = host->alloc;
    kv_bench_base = host->base;
    kv_bench_top = 0;
    host->alloc = kv_bench_alloc;

    sh = kv_shared_create(host, n < 1024 ? 1024 : (uint32_t) n,
                          KV_BENCH_KEY_LEN, KV_BENCH_VALUE_LEN);
    if (sh == NULL) {
        kv_bench_die("creating the index for", dir, ENOMEM);
    }

    memset(&conf, 0, sizeof(kv_conf_t));
    conf.dir = dir;
    conf.max_key = KV_BENCH_KEY_LEN;
    conf.max_value = KV_BENCH_VALUE_LEN;
    conf.owner_uid = (uid_t) -1;
    conf.owner_gid = (gid_t) -1;
    conf.segment_size = KV_SEGMENT_SIZE_DEFAULT;
    conf.compact_dead_pct = KV_COMPACT_DEAD_PCT_DEFAULT;
    conf.compact_dead_bytes = KV_COMPACT_DEAD_BYTES_DEFAULT;

    kv_store_init(s, sh, host, &conf);

    return arena;
}


/* As the owning process exiting would: descriptors and the lock go. */
static void
kv_bench_close(kv_store_t *s, kv_arena_t *arena)
{
    kv_store_close(s);

    if (s->sh->lock_fd >= 0) {
        close(s->sh->lock_fd);
    }

    kv_arena_destroy(arena);
}


static void
kv_bench_build(const char *dir, uint64_t n)
{
    char         key[KV_BENCH_KEY_LEN + 1];
    double       t0, t1, t2;
    uint8_t      value[KV_BENCH_VALUE_LEN];
    uint64_t     i;
    kv_host_t    host;
    kv_store_t   s;
    kv_arena_t  *arena;

    arena = kv_bench_open(&s, &host, dir, n);

    kv_bench_ok(kv_recover(&s), "kv_recover", dir);

    t0 = kv_bench_now();

    for (i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "k%015" PRIu64, i);
        memset(value, 'a' + (int) (i % 26), sizeof(value));

        kv_bench_ok(kv_put(&s, (uint8_t *) key, KV_BENCH_KEY_LEN, value,
                           sizeof(value), KV_TYPE_OCTET),
                    "kv_put", key);
    }

    t1 = kv_bench_now();

    kv_bench_ok(kv_write_hints(&s), "kv_write_hints", dir);

    t2 = kv_bench_now();

    printf("build: %" PRIu64 " kv_put in %.1f s (%.0f/s, fsync=off), "
           "hints written (segments flushed first) in %.1f s\n",
           n, t1 - t0, n / (t1 - t0), t2 - t1);

    kv_bench_close(&s, arena);
}


/*
 * The index bytes per key of n keys put in a fresh store under dir, each
 * with an expiry a day ahead if ttl is set.
 */
static double
kv_bench_index_bytes(const char *dir, uint64_t n, int ttl)
{
    char         key[KV_BENCH_KEY_LEN + 1];
    uint8_t      value[KV_BENCH_VALUE_LEN];
    uint64_t     i;
    kv_host_t    host;
    kv_write_t   w;
    kv_store_t   s;
    kv_arena_t  *arena;

    if (mkdir(dir, 0750) == -1) {
        kv_bench_die("mkdir", dir, errno);
    }

    arena = kv_bench_open(&s, &host, dir, n);
    kv_bench_ok(kv_recover(&s), "kv_recover", dir);

    memset(value, 'v', sizeof(value));
    memset(&w, 0, sizeof(w));
    w.value = value;
    w.vlen = sizeof(value);
    w.expires_at_ms = ttl ? (uint64_t) time(NULL) * 1000 + 86400000 : 0;

    for (i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "k%015" PRIu64, i);
        kv_bench_ok(kv_write(&s, (uint8_t *) key, KV_BENCH_KEY_LEN, &w),
                    "kv_write", key);
    }

    kv_bench_close(&s, arena);

    kv_bench_files(dir, "", kv_bench_remove);

    if (rmdir(dir) == -1) {
        kv_bench_die("rmdir", dir, errno);
    }

    return (double) kv_bench_top / n;
}


static void
kv_bench_ttl_memory(const char *dir, uint64_t n)
{
    char    sub[KV_BENCH_PATH];
    double  plain, ttl;

    n = n < KV_BENCH_TTL_KEYS ? n : KV_BENCH_TTL_KEYS;

    snprintf(sub, sizeof(sub), "%s/ttl-memory", dir);
    plain = kv_bench_index_bytes(sub, n, 0);
    ttl = kv_bench_index_bytes(sub, n, 1);

    printf("index memory, %" PRIu64 " keys of %d bytes: %.1f B/key without "
           "a TTL, %.1f B/key with one (+%.1f)\n", n, KV_BENCH_KEY_LEN,
           plain, ttl, ttl - plain);
}


/* One recovery into a fresh index; returns its time in ms. */
static double
kv_bench_recover(const char *dir, uint64_t n, const char *method,
    const char *cache, uint64_t bytes)
{
    int          rc;
    double       t0, c0, ms, cpu;
    kv_host_t    host;
    kv_stats_t   st;
    kv_store_t   s;
    kv_arena_t  *arena;

    arena = kv_bench_open(&s, &host, dir, n);

    c0 = kv_bench_cpu();
    t0 = kv_bench_now();
    rc = kv_recover(&s);
    ms = (kv_bench_now() - t0) * 1000;
    cpu = (kv_bench_cpu() - c0) * 1000;

    kv_bench_ok(rc, "kv_recover", dir);
    kv_stats(&s, &st);

    printf("recover %-5s cache=%-4s keys=%" PRIu64 " segments=%u from hints"
           " + %u scanned  %.0f ms (cpu %.0f ms)  %.0f MB/s read  index "
           "%.1f MiB (%.1f MiB of it buckets) = %.1f B/key (Bitcask ~%.1f "
           "B/key for %d-byte keys)\n",
           method, cache, st.keys, st.recovery_hints, st.recovery_scans, ms,
           cpu, bytes / 1e6 / (ms / 1000), kv_bench_top / 1048576.0,
           s.sh->nbuckets * sizeof(kv_ref_t) / 1048576.0,
           st.keys ? (double) kv_bench_top / st.keys : 0.0,
           KV_BENCH_BITCASK + KV_BENCH_KEY_LEN, KV_BENCH_KEY_LEN);

    if (st.keys != n) {
        fprintf(stderr, "startup: recovered %" PRIu64 " keys, expected %"
                PRIu64 "\n", st.keys, n);
        exit(1);
    }

    kv_bench_close(&s, arena);

    return ms;
}


static int
kv_bench_verdict(const char *what, double ms)
{
    int  ok;

    ok = ms < KV_BENCH_TARGET_MS;

    printf("%s: recovery from hints, %s: %.0f ms (target < %d ms)\n",
           ok ? "PASS" : "FAIL", what, ms, KV_BENCH_TARGET_MS);

    return ok;
}


int
main(int argc, char **argv)
{
    int             ok, own;
    char            dir[PATH_MAX], *end;
    char            aside[KV_BENCH_PATH], path[KV_BENCH_PATH];
    double          warm, cold;
    uint64_t        n, segments, hints;
    struct stat     st;
    const char     *tmp;

    /* the engine logs to stderr: keep the two in order */
    setvbuf(stdout, NULL, _IOLBF, 0);

    n = KV_BENCH_KEYS;

    if (argc > 1) {
        errno = 0;
        n = strtoull(argv[1], &end, 10);

        if (errno != 0 || *end != '\0' || n == 0 || n > UINT32_MAX / 2) {
            fprintf(stderr, "usage: startup [N [DIR]]\n");
            return 2;
        }
    }

    own = argc < 3;

    if (own) {
        tmp = getenv("TMPDIR");
        snprintf(dir, sizeof(dir), "%s/kv-startup.XXXXXX",
                 tmp != NULL ? tmp : "/tmp");

        if (mkdtemp(dir) == NULL) {
            kv_bench_die("mkdtemp", dir, errno);
        }

    } else if (realpath(argv[2], dir) == NULL) {
        if (errno != ENOENT || snprintf(dir, sizeof(dir), "%s", argv[2])
                               >= (int) sizeof(dir))
        {
            kv_bench_die("realpath", argv[2], errno);
        }
    }

    printf("startup: %" PRIu64 " keys of %d bytes, values of %d bytes, "
           "segment_size %d MiB, in %s\n", n, KV_BENCH_KEY_LEN,
           KV_BENCH_VALUE_LEN, KV_SEGMENT_SIZE_DEFAULT / 1048576, dir);

    kv_bench_load();

    if (access(dir, F_OK) == 0 && kv_bench_files(dir, ".kvlog", NULL) > 0) {
        printf("build: reusing the store in %s\n", dir);

    } else {
        kv_bench_build(dir, n);
    }

    segments = kv_bench_files(dir, ".kvlog", kv_bench_newest);
    hints = kv_bench_files(dir, ".kvhint", NULL);

    snprintf(path, sizeof(path), "%s/%s", dir, kv_bench_active);

    if (stat(path, &st) == -1) {
        kv_bench_die("stat", path, errno);
    }

    printf("data: %.1f MB of segments, %.1f MB of hints (%.1f B/key), "
           "active segment %s of %.1f MB (scanned in every recovery)\n",
           segments / 1e6, hints / 1e6, (double) hints / n,
           kv_bench_active, st.st_size / 1e6);

    /* the MB/s of a recovery from hints count the active segment too */
    hints += (uint64_t) st.st_size;

    warm = kv_bench_recover(dir, n, "hints", "warm", hints);

    kv_bench_files(dir, "", kv_bench_uncache);
    cold = kv_bench_recover(dir, n, "hints", "cold", hints);

    snprintf(aside, sizeof(aside), "%s/" KV_BENCH_ASIDE, dir);

    if (mkdir(aside, 0750) == -1) {
        kv_bench_die("mkdir", aside, errno);
    }

    kv_bench_files(dir, ".kvhint", kv_bench_move);

    kv_bench_files(dir, "", kv_bench_uncache);
    kv_bench_recover(dir, n, "scan", "cold", segments);
    kv_bench_recover(dir, n, "scan", "warm", segments);

    kv_bench_files(aside, ".kvhint", kv_bench_move);

    if (rmdir(aside) == -1) {
        kv_bench_die("rmdir", aside, errno);
    }

    kv_bench_load();

    kv_bench_ttl_memory(dir, n);

    ok = kv_bench_verdict("page cache warm", warm);
    ok &= kv_bench_verdict("page cache cold", cold);

    if (own) {
        kv_bench_files(dir, "", kv_bench_remove);

        if (rmdir(dir) == -1) {
            kv_bench_die("rmdir", dir, errno);
        }
    }

    return ok ? 0 : 1;
}
