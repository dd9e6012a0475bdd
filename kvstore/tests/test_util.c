#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "test_util.h"


char  kv_test_log_msg[KV_LOG_INFO + 1][1024];
int   kv_test_log_count[KV_LOG_INFO + 1];

/* every message at each level since the last reset, one per line */
static char  kv_test_log_all[KV_LOG_INFO + 1][65536];

int  (*kv_test_sync)(void *ctx, int fd, const char *path);

int  kv_test_kill_at;
int  kv_test_syncs;

uint64_t  kv_test_now;


static uint64_t
kv_test_clock(void *ctx)
{
    static const kv_host_t  wall;     /* no now_ms: the system's clock */

    (void) ctx;

    return kv_test_now != 0 ? kv_test_now : kv_now_ms(&wall);
}


static void
kv_test_log(void *ctx, int level, int err, const char *msg)
{
    size_t  len;

    (void) ctx;

    assert_true(level >= KV_LOG_ERR && level <= KV_LOG_INFO);

    snprintf(kv_test_log_msg[level], sizeof(kv_test_log_msg[level]), "%s%s%s",
             msg, err ? ": " : "", err ? strerror(err) : "");
    kv_test_log_count[level]++;

    len = strlen(kv_test_log_all[level]);
    snprintf(kv_test_log_all[level] + len, sizeof(kv_test_log_all[level])
             - len, "%s\n", kv_test_log_msg[level]);

    if (getenv("KV_TEST_VERBOSE") != NULL) {
        fprintf(stderr, "  log %d: %s\n", level, kv_test_log_msg[level]);
    }
}


int
kv_test_kill_sync(void *ctx, int fd, const char *path)
{
    (void) ctx;
    (void) fd;
    (void) path;

    if (++kv_test_syncs == kv_test_kill_at) {
        _exit(KV_TEST_KILLED);
    }

    return 0;
}


void
kv_test_log_reset(void)
{
    memset(kv_test_log_msg, 0, sizeof(kv_test_log_msg));
    memset(kv_test_log_count, 0, sizeof(kv_test_log_count));
    memset(kv_test_log_all, 0, sizeof(kv_test_log_all));
}


int
kv_test_logged(int level, const char *text)
{
    int          n;
    const char  *p;

    n = 0;

    for (p = strstr(kv_test_log_all[level], text); p != NULL;
         p = strstr(p + 1, text))
    {
        n++;
    }

    return n;
}


void
kv_test_mkdtemp(char *dir)
{
    const char  *tmp;

    tmp = getenv("TMPDIR");
    snprintf(dir, PATH_MAX, "%s/kvtest.XXXXXX", tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(dir));
}


void
kv_test_rmdir(const char *dir)
{
    DIR            *d;
    char            path[PATH_MAX];
    struct dirent  *de;

    d = opendir(dir);
    assert_non_null(d);

    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
            assert_int_equal(unlink(path), 0);
        }
    }

    closedir(d);
    assert_int_equal(rmdir(dir), 0);
}


void
kv_test_host(kv_test_store_t *t, size_t zone_size)
{
    memset(t, 0, sizeof(kv_test_store_t));

    t->arena = kv_arena_create(zone_size);
    assert_non_null(t->arena);

    kv_arena_host(t->arena, &t->host);
    t->host.log = kv_test_log;
    t->host.sync = kv_test_sync;
    t->host.now_ms = kv_test_clock;
}


void
kv_test_conf(kv_conf_t *conf, const char *dir)
{
    memset(conf, 0, sizeof(kv_conf_t));
    conf->dir = dir;
    conf->max_key = 1024;
    conf->max_value = 16 * 1024 * 1024;
    conf->owner_uid = (uid_t) -1;
    conf->owner_gid = (gid_t) -1;
}


int
kv_test_open(kv_test_store_t *t, const char *dir, size_t zone_size,
    uint32_t nbuckets)
{
    kv_conf_t  conf;

    kv_test_conf(&conf, dir);

    return kv_test_open_conf(t, &conf, zone_size, nbuckets);
}


int
kv_test_open_conf(kv_test_store_t *t, const kv_conf_t *conf,
    size_t zone_size, uint32_t nbuckets)
{
    kv_test_host(t, zone_size);

    t->sh = kv_shared_create(&t->host, nbuckets, conf->max_key,
                             conf->max_value);
    assert_non_null(t->sh);

    kv_store_init(&t->s, t->sh, &t->host, conf);

    return kv_recover(&t->s);
}


void
kv_test_open_small(kv_test_store_t *t, const char *dir, uint64_t segment_size)
{
    kv_conf_t  conf;

    kv_test_conf(&conf, dir);
    conf.segment_size = segment_size;

    assert_int_equal(kv_test_open_conf(t, &conf, KV_TEST_ARENA, 256), KV_OK);
}


void
kv_test_close(kv_test_store_t *t)
{
    kv_store_close(&t->s);

    if (t->sh != NULL && t->sh->lock_fd >= 0) {
        close(t->sh->lock_fd);
    }

    kv_arena_destroy(t->arena);
    memset(t, 0, sizeof(kv_test_store_t));
}


int
kv_test_get(kv_test_store_t *t, const void *key, size_t klen,
    uint8_t **value, size_t *vlen)
{
    int        rc;
    uint8_t   *buf;
    kv_loc_t   loc;

    rc = kv_lookup(&t->s, key, klen, &loc);
    if (rc != KV_OK) {
        return rc;
    }

    buf = malloc(loc.flen);
    assert_non_null(buf);

    rc = kv_read(&t->s, &loc, buf);
    if (rc != KV_OK) {
        free(buf);
        return rc;
    }

    *vlen = loc.vlen;
    *value = malloc(loc.vlen + 1);
    assert_non_null(*value);
    memcpy(*value, buf + loc.flen - loc.vlen, loc.vlen);
    free(buf);

    return KV_OK;
}


void
kv_test_expect(kv_test_store_t *t, const void *key, size_t klen,
    const void *value, size_t vlen)
{
    size_t    n;
    uint8_t  *v;

    assert_int_equal(kv_test_get(t, key, klen, &v, &n), KV_OK);
    assert_int_equal(n, vlen);
    assert_memory_equal(v, value, vlen);
    free(v);
}


void
kv_test_segment(const char *dir, uint32_t id, char *path)
{
    snprintf(path, PATH_MAX, "%s/" KV_SEGMENT_FMT, dir, id);
}


void
kv_test_path(const char *dir, const char *name, char *path)
{
    snprintf(path, PATH_MAX, "%s/%s", dir, name);
}


uint8_t *
kv_test_read_file(const char *path, size_t *len)
{
    FILE     *f;
    uint8_t  *data;

    *len = kv_test_file_size(path);
    data = malloc(*len + 1);
    assert_non_null(data);

    f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(data, 1, *len, f), *len);
    fclose(f);

    return data;
}


void
kv_test_write_file(const char *path, const uint8_t *data, size_t len)
{
    FILE  *f;

    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}


uint64_t
kv_test_file_size(const char *path)
{
    struct stat  st;

    assert_int_equal(stat(path, &st), 0);

    return (uint64_t) st.st_size;
}


static void
kv_test_same_file(const char *path, kv_store_t *s, uint32_t id,
    int (*write)(kv_store_t *s, uint32_t id))
{
    size_t    len, again_len;
    uint8_t  *data, *again;

    data = kv_test_read_file(path, &len);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(write(s, id), KV_OK);
    again = kv_test_read_file(path, &again_len);

    assert_int_equal(again_len, len);
    assert_memory_equal(again, data, len);

    free(data);
    free(again);
}


void
kv_test_same_as_scanned(kv_store_t *s, uint32_t id, int table)
{
    char  path[PATH_MAX];

    kv_hint_path(s, id, "", path);
    kv_test_same_file(path, s, id, kv_write_hint);

    if (table) {
        kv_table_path(s, id, path);
        kv_test_same_file(path, s, id, kv_table_build);
    }
}
