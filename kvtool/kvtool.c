#define _GNU_SOURCE

/*
 * kvtool COMMAND ...: see kvtool_usage().  This file holds what the
 * commands share: opening a store over an arena host, the engine's log,
 * the directory lock's holder.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "kvtool.h"


/* the largest arena a kv_ref_t can address */
#define KVTOOL_ARENA_MAX  ((uint64_t) 32 * 1024 * 1024 * 1024)


static const char  *kvtool_usage_text =
    "usage: kvtool COMMAND [OPTIONS] ARGS\n"
    "\n"
    "  check DIR               verify every record and hint file; exit 1\n"
    "                          on damage (works on a running store)\n"
    "  dump DIR                print every live key as one JSON object per\n"
    "                          line, sorted by key (works on a running "
    "store)\n"
    "  compact [--segment-size=SIZE] DIR\n"
    "                          compact a stopped store\n"
    "  import-seed [--segment-size=SIZE] FILE DIR\n"
    "                          import the original Go server's data file\n"
    "  repair DIR              move damaged records of a stopped store to\n"
    "                          DIR/lost+found so that it starts again\n"
    "\n"
    "Options go right after the command name.  --segment-size=SIZE (or\n"
    "--segment-size SIZE): new segments roll over at SIZE, which should be\n"
    "the kv_zone's segment_size; nginx's syntax (16m, 64k, 1g), from 64k\n"
    "to 512g, default 64m.\n"
    "\n"
    "dump prints {\"key\": ..., \"value\": ..., \"content_type\": ..., "
    "\"seq\": N}:\n"
    "a JSON value is embedded as JSON, other values and keys are strings\n"
    "when they are UTF-8 text, else \"value_base64\" and \"key_base64\".\n"
    "Exit codes: 0 ok, 1 damage found or the operation failed, 2 usage.\n";


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


/* the engine's last error or warning, for reports that quote it */
static char  kvtool_last[512];


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
 * segment at segment_size, with an arena for a log of data bytes: a live
 * frame takes at least 17 bytes of log and its index entry at most 39
 * bytes more than the key, so 2.5 bytes of arena per byte of log hold any
 * store; the arena is malloc()ed, and pages never touched cost nothing.
 * Failures are reported; nothing is left open then.
 */
int
kvtool_open(kvtool_store_t *t, const char *dir, uint64_t data, unsigned mode,
    uint64_t segment_size)
{
    int          rc;
    long         pid;
    uint64_t     size, nbuckets;
    kv_conf_t    conf;
    struct stat  st;

    memset(t, 0, sizeof(kvtool_store_t));

    nbuckets = data / 128 > 1024 ? data / 128 : 1024;
    nbuckets = nbuckets < 0x80000000u ? nbuckets : 0x80000000u;
    size = 64 * 1024 * 1024 + nbuckets * 8 + data / 2 * 5;
    size = size < KVTOOL_ARENA_MAX ? size : KVTOOL_ARENA_MAX;

    t->arena = kv_arena_create((size_t) size);
    if (t->arena == NULL) {
        kvtool_error("cannot allocate %llu bytes for the index of \"%s\"",
                     (unsigned long long) size, dir);
        return KV_ENOMEM;
    }

    kv_arena_host(t->arena, &t->host);
    t->host.log = kvtool_log;

    t->sh = kv_shared_create(&t->host, (uint32_t) nbuckets, KV_MAX_KEY_LIMIT,
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

    /* run as root, files go to the directory's owner, as nginx's would */
    conf.owner_uid = (uid_t) -1;
    conf.owner_gid = (gid_t) -1;

    if (geteuid() == 0 && stat(dir, &st) == 0) {
        conf.owner_uid = st.st_uid;
        conf.owner_gid = st.st_gid;
    }

    kv_store_init(&t->s, t->sh, &t->host, &conf);

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


/* The bytes of the regular files in dir (0 if it does not exist). */
uint64_t
kvtool_dir_bytes(const char *dir)
{
    DIR            *d;
    uint64_t        bytes;
    struct stat     st;
    struct dirent  *de;

    d = opendir(dir);
    if (d == NULL) {
        return 0;
    }

    bytes = 0;

    while ((de = readdir(d)) != NULL) {
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0
            && S_ISREG(st.st_mode))
        {
            bytes += (uint64_t) st.st_size;
        }
    }

    closedir(d);

    return bytes;
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


static int
kvtool_usage(FILE *out, int code)
{
    fputs(kvtool_usage_text, out);

    return code;
}


/*
 * A size in nginx's syntax, as ngx_parse_offset() reads kv_zone's: digits
 * and an optional k, m or g (either case), nothing else.  -1 if s is not
 * one or does not fit.
 */
static int
kvtool_parse_size(const char *s, uint64_t *size)
{
    size_t    len, i;
    uint64_t  n, scale;

    len = strlen(s);

    switch (len > 0 ? s[len - 1] : '\0') {

    case 'K':
    case 'k':
        scale = 1024;
        len--;
        break;

    case 'M':
    case 'm':
        scale = 1024 * 1024;
        len--;
        break;

    case 'G':
    case 'g':
        scale = 1024 * 1024 * 1024;
        len--;
        break;

    default:
        scale = 1;
    }

    if (len == 0) {
        return -1;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9'
            || n > (UINT64_MAX - (uint64_t) (s[i] - '0')) / 10)
        {
            return -1;
        }

        n = n * 10 + (uint64_t) (s[i] - '0');
    }

    if (n > UINT64_MAX / scale) {
        return -1;
    }

    *size = n * scale;

    return 0;
}


/*
 * The option at argv[*i]: --segment-size=SIZE, or --segment-size SIZE
 * (then *i moves to SIZE).  KVTOOL_OK or KVTOOL_USAGE, reported.
 */
static int
kvtool_option(int argc, char **argv, int *i, uint64_t *segment_size)
{
    size_t       len;
    const char  *arg, *value;

    arg = argv[*i];
    len = sizeof("--segment-size") - 1;

    if (strncmp(arg, "--segment-size", len) != 0
        || (arg[len] != '=' && arg[len] != '\0'))
    {
        kvtool_error("unknown option \"%s\"", arg);
        return KVTOOL_USAGE;
    }

    if (arg[len] == '=') {
        value = arg + len + 1;

    } else if (*i + 1 < argc) {
        value = argv[++*i];

    } else {
        kvtool_error("the option \"%s\" needs a SIZE", arg);
        return KVTOOL_USAGE;
    }

    if (kvtool_parse_size(value, segment_size) == -1
        || *segment_size < KV_SEGMENT_SIZE_MIN
        || *segment_size > KV_SEGMENT_SIZE_MAX)
    {
        kvtool_error("invalid --segment-size \"%s\": it must be a size "
                     "from %" PRIu64 " to %" PRIu64 " bytes, with an "
                     "optional k, m or g suffix, as kv_zone's segment_size",
                     value, KV_SEGMENT_SIZE_MIN, KV_SEGMENT_SIZE_MAX);
        return KVTOOL_USAGE;
    }

    return KVTOOL_OK;
}


int
main(int argc, char **argv)
{
    int          i, n, rc;
    uint64_t     segment_size;
    const char  *cmd;

    if (argc < 2) {
        return kvtool_usage(stderr, KVTOOL_USAGE);
    }

    cmd = argv[1];

    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "-h") == 0
        || strcmp(cmd, "--help") == 0)
    {
        return kvtool_usage(stdout, KVTOOL_OK);
    }

    segment_size = KV_SEGMENT_SIZE_DEFAULT;

    for (i = 2; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        rc = kvtool_option(argc, argv, &i, &segment_size);
        if (rc != KVTOOL_OK) {
            return kvtool_usage(stderr, rc);
        }
    }

    /* only the commands that write new segments take --segment-size */
    if (i > 2 && strcmp(cmd, "compact") != 0
        && strcmp(cmd, "import-seed") != 0)
    {
        kvtool_error("\"%s\" takes no options", cmd);
        return kvtool_usage(stderr, KVTOOL_USAGE);
    }

    n = argc - i;
    argv += i;

    if (n == 1 && strcmp(cmd, "check") == 0) {
        return kvtool_check(argv[0]);
    }

    if (n == 1 && strcmp(cmd, "dump") == 0) {
        return kvtool_dump(argv[0]);
    }

    if (n == 1 && strcmp(cmd, "compact") == 0) {
        return kvtool_compact(argv[0], segment_size);
    }

    if (n == 2 && strcmp(cmd, "import-seed") == 0) {
        return kvtool_import_seed(argv[0], argv[1], segment_size);
    }

    if (n == 1 && strcmp(cmd, "repair") == 0) {
        return kvtool_repair(argv[0]);
    }

    for (i = 0; i < n; i++) {
        if (strncmp(argv[i], "--", 2) == 0) {
            kvtool_error("the option \"%s\" comes after an argument: "
                         "options go right after the command name", argv[i]);
            return kvtool_usage(stderr, KVTOOL_USAGE);
        }
    }

    kvtool_error("bad command line");

    return kvtool_usage(stderr, KVTOOL_USAGE);
}
