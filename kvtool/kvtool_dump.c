#define _GNU_SOURCE

/*
 * kvtool dump DIR: a read-only recovery, then every live key in key order,
 * one JSON object per line:
 *
 *   {"key":"k","value":...,"content_type":"application/json","seq":7}
 *
 * with "expires_at_ms" (Unix time in ms) for a key that has a TTL.
 * A JSON value is embedded as JSON (minified: one line, its numbers
 * untouched).  Other values, and keys, are strings when they are UTF-8
 * text, else "value_base64" and "key_base64" hold them in base64.
 */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "kvtool.h"


typedef struct {
    const kv_entry_t  **entries;
    size_t              n;
    size_t              cap;
} kvtool_keys_t;


/*
 * 1 if p is UTF-8 that a JSON string (and a C string, as cJSON takes it)
 * carries as is: no NUL, no overlong form, no surrogate, nothing past
 * U+10FFFF.
 */
static int
kvtool_utf8(const uint8_t *p, size_t len)
{
    size_t    i, j, n;
    uint32_t  c, min;

    for (i = 0; i < len; i += n) {
        c = p[i];

        if (c == 0) {
            return 0;
        }

        if (c < 0x80) {
            n = 1;
            continue;
        }

        if (c >= 0xc2 && c <= 0xdf) {
            n = 2;
            c &= 0x1f;
            min = 0x80;

        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3;
            c &= 0x0f;
            min = 0x800;

        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4;
            c &= 0x07;
            min = 0x10000;

        } else {
            return 0;
        }

        if (n > len - i) {
            return 0;
        }

        for (j = 1; j < n; j++) {
            if ((p[i + j] & 0xc0) != 0x80) {
                return 0;
            }

            c = c << 6 | (p[i + j] & 0x3f);
        }

        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
            return 0;
        }
    }

    return 1;
}


/* Standard base64 with padding, NUL-terminated, malloc()ed. */
static char *
kvtool_base64(const uint8_t *p, size_t len)
{
    char        *out, *o;
    size_t       i;
    uint32_t     v;
    static const char  digits[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    out = malloc((len + 2) / 3 * 4 + 1);
    if (out == NULL) {
        return NULL;
    }

    o = out;

    for (i = 0; len - i >= 3; i += 3) {
        v = (uint32_t) p[i] << 16 | (uint32_t) p[i + 1] << 8 | p[i + 2];

        *o++ = digits[v >> 18];
        *o++ = digits[v >> 12 & 0x3f];
        *o++ = digits[v >> 6 & 0x3f];
        *o++ = digits[v & 0x3f];
    }

    if (len - i > 0) {
        v = (uint32_t) p[i] << 16
            | (len - i == 2 ? (uint32_t) p[i + 1] << 8 : 0);

        *o++ = digits[v >> 18];
        *o++ = digits[v >> 12 & 0x3f];
        *o++ = len - i == 2 ? digits[v >> 6 & 0x3f] : '=';
        *o++ = '=';
    }

    *o = '\0';

    return out;
}


static char *
kvtool_cstr(const uint8_t *p, size_t len)
{
    char  *s;

    s = malloc(len + 1);
    if (s == NULL) {
        return NULL;
    }

    /* an empty value has no memory behind it */
    if (len > 0) {
        memcpy(s, p, len);
    }

    s[len] = '\0';

    return s;
}


/* Adds p as the string name, or in base64 as b64name. */
static int
kvtool_add_bytes(cJSON *obj, const char *name, const char *b64name,
    const uint8_t *p, size_t len)
{
    int    text;
    char  *s;

    text = kvtool_utf8(p, len);
    s = text ? kvtool_cstr(p, len) : kvtool_base64(p, len);

    if (s == NULL) {
        return KV_ENOMEM;
    }

    obj = cJSON_AddStringToObject(obj, text ? name : b64name, s);
    free(s);

    return obj != NULL ? KV_OK : KV_ENOMEM;
}


/*
 * Adds a JSON value as JSON: minified, so that it fits on the line, but
 * not reprinted, which would round big numbers.  KV_NOTFOUND if it does
 * not parse after all.
 */
static int
kvtool_add_json(cJSON *obj, const uint8_t *p, size_t len)
{
    char         *s;
    cJSON        *doc;
    const char   *end;

    if (len == 0 || memchr(p, '\0', len) != NULL) {
        return KV_NOTFOUND;
    }

    s = kvtool_cstr(p, len);
    if (s == NULL) {
        return KV_ENOMEM;
    }

    cJSON_Minify(s);

    doc = cJSON_ParseWithOpts(s, &end, 1);

    if (doc == NULL) {
        free(s);
        return KV_NOTFOUND;
    }

    cJSON_Delete(doc);

    obj = cJSON_AddRawToObject(obj, "value", s);
    free(s);

    return obj != NULL ? KV_OK : KV_ENOMEM;
}


static int
kvtool_dump_record(const kv_record_t *rec)
{
    int     rc;
    char    seq[24], expires[24], *line;
    cJSON  *obj;

    obj = cJSON_CreateObject();
    if (obj == NULL) {
        return KV_ENOMEM;
    }

    snprintf(seq, sizeof(seq), "%" PRIu64, rec->seq);
    snprintf(expires, sizeof(expires), "%" PRIu64, rec->expires_at_ms);

    rc = kvtool_add_bytes(obj, "key", "key_base64", rec->key, rec->klen);

    if (rc == KV_OK) {
        rc = rec->type == KV_TYPE_JSON
             ? kvtool_add_json(obj, rec->value, rec->vlen) : KV_NOTFOUND;
    }

    if (rc == KV_NOTFOUND) {
        rc = kvtool_add_bytes(obj, "value", "value_base64", rec->value,
                              rec->vlen);
    }

    if (rc == KV_OK
        && (cJSON_AddStringToObject(obj, "content_type",
                                    rec->type == KV_TYPE_JSON
                                    ? "application/json"
                                    : "application/octet-stream")
            == NULL
            || cJSON_AddRawToObject(obj, "seq", seq) == NULL
            || (rec->expires_at_ms != 0
                && cJSON_AddRawToObject(obj, "expires_at_ms", expires)
                   == NULL)))
    {
        rc = KV_ENOMEM;
    }

    line = rc == KV_OK ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);

    if (line == NULL) {
        return KV_ENOMEM;
    }

    puts(line);
    cJSON_free(line);

    return KV_OK;
}


static int
kvtool_collect(void *ctx, const kv_entry_t *e)
{
    kvtool_keys_t  *keys;

    keys = ctx;

    if (keys->n == keys->cap) {
        return KV_ENOMEM;
    }

    keys->entries[keys->n++] = e;

    return KV_OK;
}


static int
kvtool_cmp_key(const void *a, const void *b)
{
    int                rc;
    const kv_entry_t  *x, *y;

    x = *(const kv_entry_t * const *) a;
    y = *(const kv_entry_t * const *) b;

    rc = memcmp(x->key, y->key, x->klen < y->klen ? x->klen : y->klen);

    return rc != 0 ? rc : (x->klen > y->klen) - (x->klen < y->klen);
}


/* Reads and prints the newest record of each key, in key order. */
static int
kvtool_dump_keys(kvtool_store_t *t, kvtool_keys_t *keys)
{
    int                rc;
    char               kbuf[KV_KEY_STR_LEN];
    size_t             i, cap;
    uint8_t           *buf, *p;
    kv_loc_t           loc;
    kv_record_t        rec;
    const kv_entry_t  *e;

    qsort(keys->entries, keys->n, sizeof(kv_entry_t *), kvtool_cmp_key);

    buf = NULL;
    cap = 0;
    rc = KV_OK;

    for (i = 0; i < keys->n && rc == KV_OK; i++) {
        e = keys->entries[i];

        rc = kv_lookup(&t->s, e->key, e->klen, &loc);
        if (rc != KV_OK) {
            break;
        }

        if (loc.flen > cap) {
            p = realloc(buf, loc.flen);
            if (p == NULL) {
                rc = KV_ENOMEM;
                break;
            }

            buf = p;
            cap = loc.flen;
        }

        rc = kv_read(&t->s, &loc, buf);

        if (rc == KV_OK) {
            rc = kv_record_decode(&rec, buf + KV_FRAME_HEADER,
                                  loc.flen - KV_FRAME_HEADER);
        }

        if (rc == KV_OK) {
            rc = kvtool_dump_record(&rec);
            kv_record_free(&rec);
        }

        if (rc != KV_OK) {
            kvtool_error("dumping key \"%s\" (" KV_SEGMENT_FMT " offset %"
                         PRIu64 ") failed: %s",
                         kv_key_str(e->key, e->klen, kbuf), loc.segment,
                         loc.offset, kv_strerror(rc));
        }
    }

    free(buf);

    return rc;
}


int
kvtool_dump(const char *dir)
{
    int             rc;
    struct stat     st;
    kvtool_keys_t   keys;
    kvtool_store_t  t;

    if (stat(dir, &st) == -1 || !S_ISDIR(st.st_mode)) {
        kvtool_error("\"%s\" is not a directory", dir);
        return KVTOOL_FAIL;
    }

    if (kvtool_open(&t, dir, kv_dir_bytes(dir), KVTOOL_READ,
                    KV_SEGMENT_SIZE_DEFAULT)
        != KV_OK)
    {
        return KVTOOL_FAIL;
    }

    keys.n = 0;
    keys.cap = t.sh->stats.keys;
    keys.entries = malloc((keys.cap ? keys.cap : 1) * sizeof(kv_entry_t *));

    if (keys.entries == NULL) {
        kvtool_error("no memory for %zu keys", keys.cap);
        kvtool_close(&t);
        return KVTOOL_FAIL;
    }

    t.host.lock(t.host.ctx);
    rc = kv_index_walk(&t.host, t.sh, kvtool_collect, &keys);
    t.host.unlock(t.host.ctx);

    if (rc == KV_OK) {
        rc = kvtool_dump_keys(&t, &keys);
    }

    if (fflush(stdout) != 0) {
        kvtool_error("writing the dump failed");
        rc = KV_EIO;
    }

    free(keys.entries);
    kvtool_close(&t);

    return rc == KV_OK ? KVTOOL_OK : KVTOOL_FAIL;
}
