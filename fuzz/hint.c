/*
 * libFuzzer harness: the hint-file reader.  At start-up a store writes a
 * few records of each kind (plain, JSON, with an expiry time, overwritten,
 * deleted) until segment 1 is immutable.  Each input is then written as
 * the hint file of segment 1 and loaded with kv_load_hint() into a fresh
 * index, as recovery does; every key it indexed is looked up and read, so
 * that a hint which lies about frame lengths is caught by the read and
 * never by a crash.  The checks and the entries are also run on a heap
 * copy, where ASan sees every byte they read.
 *
 * The hint's segment id, segment size and checksum are set to the right
 * values when the input is long enough to hold them: random bytes would
 * fail those checks and never reach the entries.  The magic, the version,
 * the entries and their count stay the fuzzer's.
 *
 * KV_FUZZ_HINT_SEED=path: writes the store's own hint of segment 1 to path
 * and exits (the seed of fuzz/corpus/hint/).
 */

#define _GNU_SOURCE

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <xxhash.h>

#include "kv_internal.h"


#define KV_FUZZ_ARENA    (256 * 1024)
#define KV_FUZZ_BUCKETS  64
#define KV_FUZZ_KEYS     256


typedef struct {
    kv_host_t       host;
    kv_shared_t    *sh;
    kv_store_t      s;
} kv_fuzz_store_t;


/*
 * The host memory of the store being tested: a bump allocator reset for
 * every input (malloc() of an arena per input would be most of the time
 * spent under ASan); free() is a no-op.  The lock aborts on misuse.
 */
typedef struct {
    size_t          top;
    int             locked;
    uint64_t        mem[KV_FUZZ_ARENA / 8];
} kv_fuzz_arena_t;


typedef struct {
    size_t          n;
    uint8_t        *keys[KV_FUZZ_KEYS];
    size_t          klens[KV_FUZZ_KEYS];
} kv_fuzz_keys_t;


static kv_fuzz_arena_t  kv_fuzz_arena;
static char      kv_fuzz_dir[PATH_MAX];
static char      kv_fuzz_hint[PATH_MAX];
static uint64_t  kv_fuzz_size;


int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
kv_fuzz_log(void *ctx, int level, int err, const char *msg)
{
    (void) ctx;
    (void) level;
    (void) err;
    (void) msg;
}


static void
kv_fuzz_fail(const char *what)
{
    fprintf(stderr, "fuzz/hint: %s failed\n", what);
    abort();
}


static void *
kv_fuzz_alloc(void *ctx, size_t size)
{
    void             *p;
    kv_fuzz_arena_t  *a;

    a = ctx;

    if (!a->locked) {
        kv_fuzz_fail("an allocation without the lock");
    }

    size = (size + 7) & ~(size_t) 7;

    /* the index's slot pages are aligned to their size, as kvstore.h asks */
    if (size == KV_ENTRY_PAGE) {
        a->top = (a->top + KV_ENTRY_PAGE - 1) & ~(size_t) (KV_ENTRY_PAGE - 1);
    }

    if (a->top > sizeof(a->mem) || size > sizeof(a->mem) - a->top) {
        return NULL;
    }

    p = (uint8_t *) a->mem + a->top;
    a->top += size;

    return p;
}


static void
kv_fuzz_free(void *ctx, void *p)
{
    kv_fuzz_arena_t  *a;

    a = ctx;

    if (!a->locked || (uint8_t *) p < (uint8_t *) a->mem + 8
        || (uint8_t *) p >= (uint8_t *) a->mem + a->top)
    {
        kv_fuzz_fail("a free without the lock or of foreign memory");
    }
}


static void
kv_fuzz_lock(void *ctx)
{
    kv_fuzz_arena_t  *a;

    a = ctx;

    if (a->locked) {
        kv_fuzz_fail("taking the lock twice");
    }

    a->locked = 1;
}


static void
kv_fuzz_unlock(void *ctx)
{
    kv_fuzz_arena_t  *a;

    a = ctx;

    if (!a->locked) {
        kv_fuzz_fail("releasing a lock not held");
    }

    a->locked = 0;
}


static void
kv_fuzz_open(kv_fuzz_store_t *t, unsigned read_only)
{
    kv_conf_t  conf;

    memset(t, 0, sizeof(kv_fuzz_store_t));
    memset(&conf, 0, sizeof(kv_conf_t));
    conf.dir = kv_fuzz_dir;
    conf.max_key = 1024;
    conf.max_value = 64 * 1024;
    conf.owner_uid = (uid_t) -1;
    conf.owner_gid = (gid_t) -1;
    conf.segment_size = KV_SEGMENT_SIZE_MIN;
    conf.read_only = read_only;

    /* kv_ref_t 0 is the null reference */
    kv_fuzz_arena.top = 8;
    kv_fuzz_arena.locked = 0;

    t->host.ctx = &kv_fuzz_arena;
    t->host.base = (uint8_t *) kv_fuzz_arena.mem;
    t->host.size = sizeof(kv_fuzz_arena.mem);
    t->host.alloc = kv_fuzz_alloc;
    t->host.free = kv_fuzz_free;
    t->host.lock = kv_fuzz_lock;
    t->host.unlock = kv_fuzz_unlock;
    t->host.log = kv_fuzz_log;

    t->sh = kv_shared_create(&t->host, KV_FUZZ_BUCKETS, conf.max_key,
                             conf.max_value);
    if (t->sh == NULL) {
        kv_fuzz_fail("kv_shared_create()");
    }

    kv_store_init(&t->s, t->sh, &t->host, &conf);
}


static void
kv_fuzz_close(kv_fuzz_store_t *t)
{
    kv_store_close(&t->s);

    if (t->sh->lock_fd >= 0) {
        close(t->sh->lock_fd);
    }
}


/* segment 1 and its hint, the same bytes on every run */
static void
kv_fuzz_segment(void)
{
    int               i;
    char              key[32], seg[PATH_MAX];
    uint8_t           value[2048];
    struct stat       st;
    kv_write_t        w;
    kv_fuzz_store_t   t;

    kv_fuzz_open(&t, 0);

    if (kv_recover(&t.s) != KV_OK) {
        kv_fuzz_fail("kv_recover()");
    }

    memset(value, 'v', sizeof(value));

    /* 2 KiB values: segment 1 fills and the store rolls to segment 2 */
    for (i = 0; i < 64; i++) {
        snprintf(key, sizeof(key), "key-%d", i % 24);

        memset(&w, 0, sizeof(kv_write_t));
        w.value = (i % 5 == 1) ? (const uint8_t *) "{\"a\":[1,2]}" : value;
        w.vlen = (i % 5 == 1) ? 11 : sizeof(value) - (size_t) i;
        w.type = (i % 5 == 1) ? KV_TYPE_JSON : KV_TYPE_OCTET;
        w.tombstone = (i % 7 == 6);
        w.expires_at_ms = (i % 3 == 0) ? 4102444800000ull : 0;

        if (kv_write(&t.s, (uint8_t *) key, strlen(key), &w) != KV_OK
            && !w.tombstone)
        {
            kv_fuzz_fail("kv_write()");
        }
    }

    if (kv_write_hints(&t.s) != KV_OK) {
        kv_fuzz_fail("kv_write_hints()");
    }

    kv_fuzz_close(&t);

    kv_segment_path(&t.s, 1, seg);
    kv_hint_path(&t.s, 1, "", kv_fuzz_hint);

    if (stat(seg, &st) == -1 || access(kv_fuzz_hint, F_OK) == -1) {
        kv_fuzz_fail("rolling segment 1");
    }

    kv_fuzz_size = (uint64_t) st.st_size;
}


/* libFuzzer ends with exit(): the directory goes then */
static void
kv_fuzz_cleanup(void)
{
    DIR            *d;
    char            path[PATH_MAX];
    struct dirent  *de;

    d = opendir(kv_fuzz_dir);
    if (d == NULL) {
        return;
    }

    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] != '.') {
            snprintf(path, sizeof(path), "%s/%s", kv_fuzz_dir, de->d_name);
            unlink(path);
        }
    }

    closedir(d);
    rmdir(kv_fuzz_dir);
}


static void
kv_fuzz_copy(const char *from, const char *to)
{
    int      in, out;
    char     buf[4096];
    ssize_t  n;

    in = open(from, O_RDONLY);
    out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);

    if (in == -1 || out == -1) {
        kv_fuzz_fail("opening the seed files");
    }

    while ((n = read(in, buf, sizeof(buf))) > 0) {
        if (write(out, buf, (size_t) n) != n) {
            kv_fuzz_fail("writing the seed");
        }
    }

    close(in);
    close(out);
}


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char  *tmp, *seed;

    (void) argc;
    (void) argv;

    tmp = getenv("TMPDIR");
    snprintf(kv_fuzz_dir, sizeof(kv_fuzz_dir), "%s/kv-fuzz-hint.XXXXXX",
             tmp ? tmp : "/tmp");

    if (mkdtemp(kv_fuzz_dir) == NULL) {
        kv_fuzz_fail("mkdtemp()");
    }

    atexit(kv_fuzz_cleanup);

    kv_fuzz_segment();

    seed = getenv("KV_FUZZ_HINT_SEED");

    if (seed != NULL) {
        kv_fuzz_copy(kv_fuzz_hint, seed);
        exit(0);
    }

    return 0;
}


static int
kv_fuzz_collect(void *ctx, const kv_entry_t *e)
{
    kv_fuzz_keys_t  *k;

    k = ctx;

    if (k->n == KV_FUZZ_KEYS) {
        return KV_OK;
    }

    k->keys[k->n] = malloc(e->klen);
    if (k->keys[k->n] == NULL) {
        kv_fuzz_fail("malloc()");
    }

    memcpy(k->keys[k->n], e->key, e->klen);
    k->klens[k->n] = e->klen;
    k->n++;

    return KV_OK;
}


/*
 * kv_load_hint()'s checks on a heap copy of the hint, then its entries
 * walked in a buffer that ends where they do, every key byte read: ASan
 * sees each byte read there, which it cannot in the loader's mmap().
 */
static void
kv_fuzz_entries(const uint8_t *hint, size_t size)
{
    char            why[160];
    size_t          n, i;
    uint8_t        *entries;
    uint32_t        flen;
    uint64_t        sum;
    kv_record_t     rec;
    const uint8_t  *p, *end;
    volatile uint8_t  x;

    if (kv_hint_check(hint, size, 1, kv_fuzz_size, why, sizeof(why)) != 0) {
        return;
    }

    n = size - KV_HINT_HEADER - KV_HINT_TRAILER;

    entries = malloc(n ? n : 1);
    if (entries == NULL) {
        kv_fuzz_fail("malloc()");
    }

    memcpy(entries, hint + KV_HINT_HEADER, n);
    memset(&rec, 0, sizeof(kv_record_t));

    p = entries;
    end = entries + n;
    sum = 0;
    x = 0;

    while (p < end) {
        p = kv_hint_entry(p, end, &rec, &flen);

        if (p == NULL || p > end
            || (rec.type != KV_TYPE_OCTET && rec.type != KV_TYPE_JSON))
        {
            kv_fuzz_fail("an entry that kv_hint_check() accepted");
        }

        for (i = 0; i < rec.klen; i++) {
            x ^= rec.key[i];
        }

        sum += flen;
    }

    if (sum != kv_fuzz_size) {
        kv_fuzz_fail("the frame lengths that kv_hint_check() accepted");
    }

    (void) x;
    free(entries);
}


/* every key indexed is looked up and read: KV_OK or KV_ECORRUPT */
static void
kv_fuzz_read_all(kv_fuzz_store_t *t)
{
    int              rc;
    size_t           i;
    uint8_t         *buf;
    kv_loc_t         loc;
    kv_fuzz_keys_t   k;

    k.n = 0;

    t->host.lock(t->host.ctx);
    (void) kv_index_walk(&t->host, t->sh, kv_fuzz_collect, &k);
    t->host.unlock(t->host.ctx);

    for (i = 0; i < k.n; i++) {
        if (kv_lookup(&t->s, k.keys[i], k.klens[i], &loc) == KV_OK) {
            if (loc.segment != 1 || loc.offset + loc.flen > kv_fuzz_size) {
                kv_fuzz_fail("a location outside segment 1: the check");
            }

            buf = malloc(loc.flen);
            if (buf == NULL) {
                kv_fuzz_fail("malloc()");
            }

            rc = kv_read(&t->s, &loc, buf);

            if (rc != KV_OK && rc != KV_ECORRUPT && rc != KV_EINVAL) {
                kv_fuzz_fail("kv_read()");
            }

            free(buf);
        }

        free(k.keys[i]);
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int               fd, rc;
    uint8_t          *hint;
    kv_fuzz_store_t   t;

    hint = malloc(size ? size : 1);
    if (hint == NULL) {
        kv_fuzz_fail("malloc()");
    }

    memcpy(hint, data, size);

    if (size >= 40) {
        kv_put_le(hint + 8, 1, 4);
        kv_put_le(hint + 16, kv_fuzz_size, 8);
        kv_put_le(hint + size - 8, XXH3_64bits(hint, size - 8), 8);
    }

    fd = open(kv_fuzz_hint, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd == -1 || write(fd, hint, size) != (ssize_t) size) {
        kv_fuzz_fail("writing the hint");
    }

    close(fd);

    kv_fuzz_entries(hint, size);
    free(hint);

    /* read-only: a rejected hint stays, as the next input overwrites it */
    kv_fuzz_open(&t, 1);

    rc = kv_load_hint(&t.s, 1);

    if (rc == KV_OK) {
        /* as recovery does once every segment is in the index */
        t.sh->open = 1;
        kv_fuzz_read_all(&t);

    } else if (rc != KV_NOTFOUND && rc != KV_ENOMEM) {
        kv_fuzz_fail("kv_load_hint()");
    }

    kv_fuzz_close(&t);

    return 0;
}
