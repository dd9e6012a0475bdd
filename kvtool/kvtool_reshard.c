#define _GNU_SOURCE

/*
 * kvtool owner --servers=LIST DIR
 *     prints "OWNER<TAB>KEY" for every live key of the store in DIR, KEY
 *     percent-encoded as in a request path: which server of LIST the
 *     router's "hash $kv_key consistent" sends it to (kvtool_ring.c).
 *
 * kvtool reshard --servers=LIST --self=NAME [--prefix=/db/] [--dry-run] DIR
 *     DIR is the data directory of the shard that LIST calls NAME (NAME
 *     need not be in LIST: a shard being removed).  Every key of DIR
 *     that LIST gives to another server is moved there over HTTP: PUT to
 *     the owner with If-None-Match: * (if the owner has the key already,
 *     it was written through the router after the switch to LIST, and is
 *     newer), then DELETE from NAME with If-Match: the version copied.
 *     A key written or deleted on NAME during its move is reported and
 *     its copy taken back from the owner (If-Match: the copy's ETag); a
 *     written one moves at the next run.  The router must
 *     already route by LIST, so that no client writes a moving key to
 *     NAME any more.
 *
 * Both read DIR as kvtool dump does: read-only, while nginx runs.  Values
 * come from DIR, so reshard needs nothing of the shards but /db/ (the
 * prefix) on the port in their names.  A failed move is reported and the
 * key stays on NAME: running reshard again finishes the job.
 */

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kvtool.h"


typedef struct {
    kvtool_ring_t        ring;
    size_t               self;       /* index in ring, or ring.nservers */
    const char          *self_name;
    const char          *prefix;
    unsigned             print;      /* kvtool owner */
    uint64_t             keys;
    const kv_entry_t   **moving;     /* keys owned by other servers */
    size_t               nmoving;
    size_t               cap;
} kvtool_reshard_t;


/* kv_index_walk() callback: prints the owner, or collects a moving key. */
static int
kvtool_reshard_walk(void *ctx, const kv_entry_t *e)
{
    char              *path;
    size_t             owner;
    kvtool_reshard_t  *rs;

    rs = ctx;
    rs->keys++;

    owner = kvtool_ring_owner(&rs->ring, e->key, e->klen);

    if (rs->print) {
        path = kvtool_http_path("", e->key, e->klen);
        if (path == NULL) {
            return KV_ENOMEM;
        }

        printf("%s\t%s\n", rs->ring.names[owner], path);
        free(path);

        return KV_OK;
    }

    if (owner == rs->self) {
        return KV_OK;
    }

    if (rs->nmoving == rs->cap) {
        return KV_ENOMEM;
    }

    rs->moving[rs->nmoving++] = e;

    return KV_OK;
}


/*
 * Moves one key to its owner, with what is left of its TTL: 1 moved, 0 the
 * owner had it already (or its TTL ran out meanwhile), -1 failed
 * (reported).
 */
static int
kvtool_reshard_key(kvtool_store_t *t, kvtool_reshard_t *rs,
    const kv_entry_t *e, uint8_t **buf, size_t *cap)
{
    int           rc, status, copied, undo;
    char         *path, *put, kbuf[KV_KEY_STR_LEN];
    char          match[KVTOOL_ETAG_LEN + 16], etag[KVTOOL_ETAG_LEN + 1];
    size_t        len;
    uint8_t      *p;
    uint64_t      now;
    kv_loc_t      loc;
    const char   *owner, *ctype;
    kv_record_t   rec;
    static const kv_host_t  wall;     /* no now_ms: the system's clock */

    owner = rs->ring.names[kvtool_ring_owner(&rs->ring, e->key, e->klen)];

    path = kvtool_http_path(rs->prefix, e->key, e->klen);
    if (path == NULL) {
        kvtool_error("no memory for key \"%s\"",
                     kv_key_str(e->key, e->klen, kbuf));
        return -1;
    }

    rc = kv_lookup(&t->s, e->key, e->klen, &loc);

    if (rc == KV_OK && loc.flen > *cap) {
        p = realloc(*buf, loc.flen);

        if (p == NULL) {
            rc = KV_ENOMEM;

        } else {
            *buf = p;
            *cap = loc.flen;
        }
    }

    if (rc == KV_OK) {
        rc = kv_read(&t->s, &loc, *buf);
    }

    if (rc == KV_OK) {
        rc = kv_record_decode(&rec, *buf + KV_FRAME_HEADER,
                              loc.flen - KV_FRAME_HEADER);
    }

    if (rc != KV_OK) {
        kvtool_error("reading key \"%s\" from the store failed: %s",
                     kv_key_str(e->key, e->klen, kbuf), kv_strerror(rc));
        free(path);
        return -1;
    }

    /* a key with a TTL goes with what is left of it, rounded up */

    now = kv_now_ms(&wall);

    if (rec.expires_at_ms != 0 && rec.expires_at_ms <= now) {
        kv_record_free(&rec);
        free(path);
        return 0;
    }

    len = strlen(path) + sizeof("?ttl=") + 20;
    put = malloc(len);

    if (put == NULL) {
        kvtool_error("no memory for key \"%s\"",
                     kv_key_str(e->key, e->klen, kbuf));
        kv_record_free(&rec);
        free(path);
        return -1;
    }

    if (rec.expires_at_ms != 0) {
        snprintf(put, len, "%s?ttl=%" PRIu64, path,
                 (rec.expires_at_ms - now + 999) / 1000);

    } else {
        snprintf(put, len, "%s", path);
    }

    /*
     * Create only: a key the owner has already was written through the
     * router after the switch, and is newer; the check and the write are
     * one step on the owner, so such a write cannot slip in between.
     */

    ctype = rec.type == KV_TYPE_JSON ? "application/json"
                                     : "application/octet-stream";
    status = kvtool_http(owner, "PUT", put, "If-None-Match: *\r\n", ctype,
                         rec.value, rec.vlen, etag);
    copied = (status >= 200 && status <= 299);

    /* delete only the version copied: a later one is not on the owner */

    snprintf(match, sizeof(match), "If-Match: \"%" PRIu64 "\"\r\n",
             rec.seq);

    kv_record_free(&rec);
    free(put);

    if (!copied && status != 412) {
        /* status -1: kvtool_http() said why */
        kvtool_error("PUT %s on %s: %s %d: key \"%s\" stays on %s",
                     path, owner, status == -1 ? "no answer" : "answered",
                     status, kv_key_str(e->key, e->klen, kbuf),
                     rs->self_name);
        free(path);
        return -1;
    }

    status = kvtool_http(rs->self_name, "DELETE", path, match, NULL, NULL,
                         0, NULL);

    if ((status == 412 || status == 404) && copied) {
        /*
         * The key was written or deleted on NAME while it was copied: the
         * copy is old.  It is taken back from the owner unless the owner
         * changed it since; a written key moves at the next run.
         */

        snprintf(match, sizeof(match), "If-Match: %s\r\n", etag);

        undo = etag[0] ? kvtool_http(owner, "DELETE", path, match, NULL,
                                     NULL, 0, NULL)
                       : -1;

        kvtool_error("key \"%s\" was %s on %s during its move: the copy on "
                     "%s %s", kv_key_str(e->key, e->klen, kbuf),
                     status == 412 ? "written" : "deleted", rs->self_name,
                     owner, undo == 200 ? "was taken back"
                                        : "could not be taken back");

        free(path);

        return (status == 404 && undo == 200) ? 0 : -1;
    }

    if (status != 200 && status != 204 && status != 404) {
        kvtool_error("DELETE %s on %s: %s %d%s: key \"%s\" is on both %s "
                     "and %s", path, rs->self_name,
                     status == -1 ? "no answer" : "answered", status,
                     status == 412 ? " (written there during the move; the "
                                     "owner's newer value stays: run "
                                     "reshard again)" : "",
                     kv_key_str(e->key, e->klen, kbuf), owner,
                     rs->self_name);
        free(path);
        return -1;
    }

    free(path);

    return copied;
}


/*
 * --self must name the server that serves DIR: else the DELETEs would go
 * to another one, and the keys would stay on both.  The first key to move
 * must be there.
 */
static int
kvtool_reshard_self(kvtool_reshard_t *rs, const kv_entry_t *e)
{
    int    status;
    char  *path, kbuf[KV_KEY_STR_LEN];

    path = kvtool_http_path(rs->prefix, e->key, e->klen);
    if (path == NULL) {
        kvtool_error("no memory for key \"%s\"",
                     kv_key_str(e->key, e->klen, kbuf));
        return KVTOOL_FAIL;
    }

    status = kvtool_http(rs->self_name, "GET", path, NULL, NULL, NULL, 0,
                         NULL);

    if (status != 200) {
        kvtool_error("GET %s on %s: %s %d, not 200: is %s the server of "
                     "this data directory, and %s the location of its "
                     "store?", path, rs->self_name,
                     status == -1 ? "no answer" : "answered", status,
                     rs->self_name, rs->prefix);
    }

    free(path);

    return status == 200 ? KVTOOL_OK : KVTOOL_FAIL;
}


static int
kvtool_reshard_move(kvtool_store_t *t, kvtool_reshard_t *rs, unsigned dry)
{
    int        rc;
    size_t     i, copied, present, failed, *to, owner;
    size_t     cap;
    uint8_t   *buf;

    to = calloc(rs->ring.nservers, sizeof(size_t));
    if (to == NULL) {
        kvtool_error("no memory");
        return KVTOOL_FAIL;
    }

    if (!dry && rs->nmoving > 0
        && kvtool_reshard_self(rs, rs->moving[0]) != KVTOOL_OK)
    {
        free(to);
        return KVTOOL_FAIL;
    }

    buf = NULL;
    cap = 0;
    copied = 0;
    present = 0;
    failed = 0;

    for (i = 0; i < rs->nmoving; i++) {
        owner = kvtool_ring_owner(&rs->ring, rs->moving[i]->key,
                                  rs->moving[i]->klen);
        to[owner]++;

        if (dry) {
            continue;
        }

        rc = kvtool_reshard_key(t, rs, rs->moving[i], &buf, &cap);

        copied += rc == 1;
        present += rc == 0;
        failed += rc == -1;
    }

    free(buf);

    printf("%s: %" PRIu64 " keys, %zu owned by other servers%s", rs->self_name,
           rs->keys, rs->nmoving, rs->nmoving ? " (" : "");

    for (i = 0, owner = 0; i < rs->ring.nservers; i++) {
        if (to[i] != 0) {
            printf("%s%zu to %s", owner++ ? ", " : "", to[i],
                   rs->ring.names[i]);
        }
    }

    printf("%s\n", rs->nmoving ? ")" : "");

    if (!dry) {
        printf("%s: moved %zu: %zu copied, %zu already on their owner; "
               "%zu failed\n", rs->self_name, copied + present, copied,
               present, failed);
    }

    free(to);

    return failed ? KVTOOL_FAIL : KVTOOL_OK;
}


static const struct option  kvtool_reshard_options[] = {
    { "servers", required_argument, NULL, 's' },
    { "self",    required_argument, NULL, 'n' },
    { "prefix",  required_argument, NULL, 'p' },
    { "dry-run", no_argument,       NULL, 'd' },
    { NULL, 0, NULL, 0 }
};


/* kvtool owner and kvtool reshard: argv[0] is the command. */
int
kvtool_reshard(int argc, char **argv)
{
    int                c, rc;
    unsigned           dry;
    const char        *servers, *dir;
    struct stat        st;
    kvtool_store_t     t;
    kvtool_reshard_t   rs;

    memset(&rs, 0, sizeof(kvtool_reshard_t));
    rs.prefix = "/db/";
    rs.print = strcmp(argv[0], "owner") == 0;
    servers = NULL;
    dry = 0;

    opterr = 0;
    optind = 1;

    while ((c = getopt_long(argc, argv, "+", kvtool_reshard_options, NULL))
           != -1)
    {
        switch (c) {

        case 's':
            servers = optarg;
            break;

        case 'n':
            rs.self_name = optarg;
            break;

        case 'p':
            rs.prefix = optarg;
            break;

        case 'd':
            dry = 1;
            break;

        default:
            kvtool_error("%s: unknown option or missing value \"%s\"",
                         argv[0], argv[optind - 1]);
            return KVTOOL_USAGE;
        }
    }

    if (optind != argc - 1 || servers == NULL
        || (!rs.print && rs.self_name == NULL)
        || (rs.print && (rs.self_name != NULL || dry)))
    {
        kvtool_error("%s: bad command line", argv[0]);
        return KVTOOL_USAGE;
    }

    dir = argv[optind];

    if (rs.prefix[0] != '/') {
        kvtool_error("--prefix \"%s\" must start with \"/\"", rs.prefix);
        return KVTOOL_USAGE;
    }

    rc = kvtool_ring_init(&rs.ring, servers);
    if (rc != KVTOOL_OK) {
        return rc;
    }

    rs.self = rs.self_name ? kvtool_ring_find(&rs.ring, rs.self_name)
                           : rs.ring.nservers;

    if (stat(dir, &st) == -1 || !S_ISDIR(st.st_mode)) {
        kvtool_error("\"%s\" is not a directory", dir);
        kvtool_ring_free(&rs.ring);
        return KVTOOL_FAIL;
    }

    if (kvtool_open(&t, dir, kv_dir_bytes(dir), KVTOOL_READ,
                    KV_SEGMENT_SIZE_DEFAULT)
        != KV_OK)
    {
        kvtool_ring_free(&rs.ring);
        return KVTOOL_FAIL;
    }

    rs.cap = rs.print ? 0 : t.sh->stats.keys;
    rs.moving = malloc((rs.cap ? rs.cap : 1) * sizeof(kv_entry_t *));

    if (rs.moving == NULL) {
        kvtool_error("no memory for %zu keys", rs.cap);
        rc = KV_ENOMEM;

    } else {
        t.host.lock(t.host.ctx);
        rc = kv_index_walk(&t.host, t.sh, kvtool_reshard_walk, &rs);
        t.host.unlock(t.host.ctx);

        if (rc != KV_OK) {
            kvtool_error("listing the keys of \"%s\" failed: %s", dir,
                         kv_strerror(rc));
        }
    }

    if (rc == KV_OK && !rs.print) {
        rc = kvtool_reshard_move(&t, &rs, dry) == KVTOOL_OK ? KV_OK : KV_EIO;
    }

    if (fflush(stdout) != 0) {
        kvtool_error("writing to the standard output failed");
        rc = KV_EIO;
    }

    free(rs.moving);
    kvtool_close(&t);
    kvtool_ring_free(&rs.ring);

    return rc == KV_OK ? KVTOOL_OK : KVTOOL_FAIL;
}
