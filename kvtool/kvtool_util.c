#define _GNU_SOURCE

/*
 * What kvtool's commands share: errors on stderr, the engine's log,
 * opening a store over an arena host, the directory lock's holder.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "kvtool.h"


/* the engine's last error or warning, for reports that quote it */
static char  kvtool_last[512];


void
kvtool_error(const char *fmt, ...)
{
    va_list  args;

    fputs("kvtool: ", stderr);

    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);

    fputc('\n', stderr);
}


/* Errors and warnings of the engine: its notices are kvtool's to tell. */
static void
kvtool_log(void *ctx, int level, int err, const char *msg)
{
    (void) ctx;

    if (level <= KV_LOG_WARN) {
        snprintf(kvtool_last, sizeof(kvtool_last), "%s%s%s", msg,
                 err ? ": " : "", err ? strerror(err) : "");
        kvtool_error("%s: %s", level == KV_LOG_ERR ? "error" : "warning",
                     kvtool_last);
    }
}


const char *
kvtool_last_log(void)
{
    return kvtool_last;
}


/*
 * Prepares a store in dir as mode says, its log rolling over to a new
 * segment at segment_size, with an arena that holds the index of a log of
 * data bytes (kv_arena_size_for()).  Failures are reported; nothing is
 * left open then.
 */
int
kvtool_open(kvtool_store_t *t, const char *dir, uint64_t data, unsigned mode,
    uint64_t segment_size)
{
    int          rc;
    long         pid;
    size_t       size;
    uint32_t     nbuckets;
    kv_conf_t    conf;
    struct stat  st;

    memset(t, 0, sizeof(kvtool_store_t));

    size = kv_arena_size_for(data, &nbuckets);

    t->arena = kv_arena_create(size);
    if (t->arena == NULL) {
        kvtool_error("cannot allocate %zu bytes for the index of \"%s\"",
                     size, dir);
        return KV_ENOMEM;
    }

    kv_arena_host(t->arena, &t->host);
    t->host.log = kvtool_log;

    t->sh = kv_shared_create(&t->host, nbuckets, KV_MAX_KEY_LIMIT,
                             KV_MAX_VALUE_LIMIT);
    if (t->sh == NULL) {
        kv_arena_destroy(t->arena);
        t->arena = NULL;
        return KV_ENOMEM;
    }

    memset(&conf, 0, sizeof(kv_conf_t));
    conf.dir = dir;
    conf.max_key = KV_MAX_KEY_LIMIT;
    conf.max_value = KV_MAX_VALUE_LIMIT;
    conf.segment_size = segment_size;
    conf.compact_dead_pct = KV_COMPACT_DEAD_PCT_DEFAULT;
    conf.compact_dead_bytes = KV_COMPACT_DEAD_BYTES_DEFAULT;
    conf.read_only = mode == KVTOOL_SCAN || mode == KVTOOL_READ;

    conf.sorted = (mode == KVTOOL_WRITE_SORTED);

    /* run as root, files go to the directory's owner, as nginx's would */
    conf.owner_uid = (uid_t) -1;
    conf.owner_gid = (gid_t) -1;

    if (geteuid() == 0 && stat(dir, &st) == 0) {
        conf.owner_uid = st.st_uid;
        conf.owner_gid = st.st_gid;
    }

    kv_store_init(&t->s, t->sh, &t->host, &conf);

    /*
     * A store that has sorted segments is written as index=sorted would:
     * its merges keep them sorted (read before recovery, which sets the
     * mode up).  Reading replays every segment.
     */
    if (mode == KVTOOL_WRITE) {
        t->s.conf.sorted = kv_level_present(&t->s);
    }

    if (mode == KVTOOL_SCAN) {
        return KV_OK;
    }

    rc = mode == KVTOOL_LOCK ? kv_lock_dir(&t->s) : kv_recover(&t->s);

    if (rc == KV_ELOCKED) {
        pid = kvtool_lock_holder(dir);
        kvtool_error("\"%s\" is in use by a running process (pid %ld holds "
                     "%s/" KV_LOCK_FILE "): stop nginx first", dir, pid,
                     dir);

    } else if (rc == KV_ECORRUPT) {
        kvtool_error("\"%s\" has damaged records: see \"kvtool check %s\" "
                     "and \"kvtool repair %s\"", dir, dir, dir);

    } else if (rc != KV_OK) {
        kvtool_error("opening the store in \"%s\" failed: %s", dir,
                     kv_strerror(rc));
    }

    if (rc != KV_OK) {
        kvtool_close(t);
    }

    return rc;
}


void
kvtool_close(kvtool_store_t *t)
{
    if (t->arena == NULL) {
        return;
    }

    kv_store_close(&t->s);

    if (t->sh->lock_fd >= 0) {
        close(t->sh->lock_fd);
    }

    kv_arena_destroy(t->arena);
    t->arena = NULL;
}


/*
 * The pid holding the flock of dir/LOCK, 0 if none, -1 if unknown.
 * /proc/locks tells without taking the lock: even a brief test lock could
 * make an nginx starting at that moment refuse the directory.
 */
long
kvtool_lock_holder(const char *dir)
{
    FILE               *f;
    long                pid, holder;
    char                path[PATH_MAX], line[256], type[16];
    unsigned            maj, min;
    struct stat         st;
    unsigned long long  ino;

    snprintf(path, sizeof(path), "%s/" KV_LOCK_FILE, dir);

    if (stat(path, &st) == -1) {
        return 0;
    }

    f = fopen("/proc/locks", "r");
    if (f == NULL) {
        return -1;
    }

    holder = 0;

    /* "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters: "->" */
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%llu", type, &pid, &maj,
                   &min, &ino)
            == 5
            && strcmp(type, "FLOCK") == 0 && maj == major(st.st_dev)
            && min == minor(st.st_dev)
            && ino == (unsigned long long) st.st_ino)
        {
            holder = pid;
            break;
        }
    }

    fclose(f);

    return holder;
}


void
kvtool_hint_path(const char *dir, uint32_t id, char path[PATH_MAX])
{
    snprintf(path, PATH_MAX, "%s/" KV_HINT_FMT, dir, id);
}
