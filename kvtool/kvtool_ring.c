#define _GNU_SOURCE

/*
 * The owner of a key among the servers of an nginx upstream with
 * "hash $kv_key consistent", computed as ngx_http_upstream_hash_module does
 * it in nginx 1.22:
 *
 *   - every server gets 160 * weight points; the base is the CRC32 state
 *     over HOST, a NUL byte and PORT, where PORT is the digits after the
 *     last ':' of the server name as written in the upstream block (none
 *     if there is no such suffix, and for "unix:" names HOST is the rest);
 *     point j is that state continued over the previous point's hash as
 *     4 little-endian bytes (0 for the first point), then finalized;
 *   - the points are sorted by hash, and of equal hashes one is kept;
 *   - a key goes to the first point whose hash is >= CRC32(key), past the
 *     last point back to the first.
 *
 * The name is hashed as written, not resolved: "kv-0.kv-shards:8080" and
 * its address are different rings.
 */

#include <stdlib.h>
#include <string.h>

#include "kvtool.h"


#define KVTOOL_POINTS_PER_WEIGHT  160


static uint32_t  kvtool_crc32_table[256];


static void
kvtool_crc32_init_table(void)
{
    uint32_t  c, i, k;

    if (kvtool_crc32_table[1] != 0) {
        return;
    }

    for (i = 0; i < 256; i++) {
        c = i;

        for (k = 0; k < 8; k++) {
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        }

        kvtool_crc32_table[i] = c;
    }
}


/* The CRC32 state after p; start from 0xffffffff, finish with ~state. */
static uint32_t
kvtool_crc32_update(uint32_t crc, const uint8_t *p, size_t len)
{
    while (len--) {
        crc = kvtool_crc32_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    }

    return crc;
}


static int
kvtool_cmp_point(const void *a, const void *b)
{
    const kvtool_point_t  *x, *y;

    x = a;
    y = b;

    if (x->hash != y->hash) {
        return x->hash < y->hash ? -1 : 1;
    }

    /* equal hashes: keep the order of the list, for a stable report */
    return (x->server > y->server) - (x->server < y->server);
}


/*
 * One entry of the list: NAME or "NAME weight=N", as in a server line.
 * KVTOOL_OK or KVTOOL_USAGE, reported.
 */
static int
kvtool_ring_entry(kvtool_ring_t *ring, char *entry)
{
    char           *name, *param, *end;
    unsigned long   weight;

    name = strtok_r(entry, " \t", &end);
    if (name == NULL) {
        kvtool_error("an empty server name in --servers");
        return KVTOOL_USAGE;
    }

    weight = 1;

    while ((param = strtok_r(NULL, " \t", &end)) != NULL) {
        if (strncmp(param, "weight=", 7) != 0
            || (weight = strtoul(param + 7, &param, 10)) == 0
            || *param != '\0' || weight > 1000)
        {
            kvtool_error("server \"%s\": only weight=N (1 to 1000) may "
                         "follow a name in --servers", name);
            return KVTOOL_USAGE;
        }
    }

    ring->names[ring->nservers] = name;
    ring->weights[ring->nservers] = (uint32_t) weight;
    ring->nservers++;

    return KVTOOL_OK;
}


/* The hash of every point of server i, appended to ring->points. */
static void
kvtool_ring_points(kvtool_ring_t *ring, size_t i)
{
    size_t          len, host_len, port_len, j, n;
    uint8_t         prev[4];
    uint32_t        base, hash;
    const char     *name, *host, *port;

    name = ring->names[i];
    len = strlen(name);

    host = name;
    host_len = len;
    port = "";
    port_len = 0;

    if (len >= 5 && strncasecmp(name, "unix:", 5) == 0) {
        host = name + 5;
        host_len = len - 5;

    } else {
        for (j = 0; j < len; j++) {
            if (name[len - j - 1] == ':') {
                host_len = len - j - 1;
                port = name + len - j;
                port_len = j;
                break;
            }

            if (name[len - j - 1] < '0' || name[len - j - 1] > '9') {
                break;
            }
        }
    }

    base = kvtool_crc32_update(0xffffffffu, (const uint8_t *) host,
                               host_len);
    base = kvtool_crc32_update(base, (const uint8_t *) "", 1);
    base = kvtool_crc32_update(base, (const uint8_t *) port, port_len);

    memset(prev, 0, sizeof(prev));
    n = (size_t) ring->weights[i] * KVTOOL_POINTS_PER_WEIGHT;

    for (j = 0; j < n; j++) {
        hash = ~kvtool_crc32_update(base, prev, sizeof(prev));

        ring->points[ring->npoints].hash = hash;
        ring->points[ring->npoints].server = (uint32_t) i;
        ring->npoints++;

        prev[0] = (uint8_t) hash;
        prev[1] = (uint8_t) (hash >> 8);
        prev[2] = (uint8_t) (hash >> 16);
        prev[3] = (uint8_t) (hash >> 24);
    }
}


/*
 * Builds the ring of list: server names separated by commas, each
 * optionally followed by " weight=N".  KVTOOL_OK, KVTOOL_USAGE or
 * KVTOOL_FAIL, reported.
 */
int
kvtool_ring_init(kvtool_ring_t *ring, const char *list)
{
    int       rc;
    char     *entry, *end;
    size_t    i, j, n, total;

    memset(ring, 0, sizeof(kvtool_ring_t));
    kvtool_crc32_init_table();

    ring->list = strdup(list);
    n = 1;

    for (i = 0; list[i] != '\0'; i++) {
        n += list[i] == ',';
    }

    ring->names = calloc(n, sizeof(char *));
    ring->weights = calloc(n, sizeof(uint32_t));

    if (ring->list == NULL || ring->names == NULL || ring->weights == NULL) {
        kvtool_error("no memory for the server list \"%s\"", list);
        kvtool_ring_free(ring);
        return KVTOOL_FAIL;
    }

    for (entry = strtok_r(ring->list, ",", &end);
         entry != NULL;
         entry = strtok_r(NULL, ",", &end))
    {
        rc = kvtool_ring_entry(ring, entry);
        if (rc != KVTOOL_OK) {
            kvtool_ring_free(ring);
            return rc;
        }
    }

    total = 0;

    for (i = 0; i < ring->nservers; i++) {
        for (j = 0; j < i; j++) {
            if (strcmp(ring->names[i], ring->names[j]) == 0) {
                kvtool_error("server \"%s\" is twice in --servers",
                             ring->names[i]);
                kvtool_ring_free(ring);
                return KVTOOL_USAGE;
            }
        }

        total += (size_t) ring->weights[i] * KVTOOL_POINTS_PER_WEIGHT;
    }

    if (ring->nservers == 0) {
        kvtool_error("--servers names no server");
        kvtool_ring_free(ring);
        return KVTOOL_USAGE;
    }

    ring->points = malloc(total * sizeof(kvtool_point_t));
    if (ring->points == NULL) {
        kvtool_error("no memory for %zu ring points", total);
        kvtool_ring_free(ring);
        return KVTOOL_FAIL;
    }

    for (i = 0; i < ring->nservers; i++) {
        kvtool_ring_points(ring, i);
    }

    qsort(ring->points, ring->npoints, sizeof(kvtool_point_t),
          kvtool_cmp_point);

    /*
     * nginx keeps one point of equal hashes, but its qsort() is not
     * stable: which server a colliding point goes to is nginx's choice.
     */
    for (i = 0, j = 1; j < ring->npoints; j++) {
        if (ring->points[i].hash != ring->points[j].hash) {
            ring->points[++i] = ring->points[j];

        } else if (ring->points[i].server != ring->points[j].server) {
            kvtool_error("warning: servers \"%s\" and \"%s\" share the ring "
                         "point %08x: keys hashing just below it may go to "
                         "either", ring->names[ring->points[i].server],
                         ring->names[ring->points[j].server],
                         ring->points[j].hash);
        }
    }

    ring->npoints = i + 1;

    return KVTOOL_OK;
}


void
kvtool_ring_free(kvtool_ring_t *ring)
{
    free(ring->points);
    free(ring->weights);
    free(ring->names);
    free(ring->list);
    memset(ring, 0, sizeof(kvtool_ring_t));
}


/* The index in ring->names of the server that owns key. */
size_t
kvtool_ring_owner(const kvtool_ring_t *ring, const uint8_t *key, size_t klen)
{
    size_t    i, j, k;
    uint32_t  hash;

    hash = ~kvtool_crc32_update(0xffffffffu, key, klen);

    /* the first point >= hash */
    i = 0;
    j = ring->npoints;

    while (i < j) {
        k = i + (j - i) / 2;

        if (hash > ring->points[k].hash) {
            i = k + 1;

        } else {
            j = k;
        }
    }

    return ring->points[i % ring->npoints].server;
}


/* The index of name in ring->names, or ring->nservers if it is not one. */
size_t
kvtool_ring_find(const kvtool_ring_t *ring, const char *name)
{
    size_t  i;

    for (i = 0; i < ring->nservers; i++) {
        if (strcmp(ring->names[i], name) == 0) {
            break;
        }
    }

    return i;
}
