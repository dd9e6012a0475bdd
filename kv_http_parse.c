
/*
 * The request parsers of the kv handlers, free of nginx (kv_http_parse.h).
 */


#include <cjson/cJSON.h>

#include "kv_http_parse.h"


static int kv_http_hex(uint8_t c);


ssize_t
kv_http_decode_key(const uint8_t *src, const uint8_t *end, uint8_t *dst)
{
    int       hi, lo;
    uint8_t  *start;

    start = dst;

    while (src < end) {
        if (*src != '%') {
            *dst++ = *src++;
            continue;
        }

        if (end - src < 3) {
            return -1;
        }

        hi = kv_http_hex(src[1]);
        lo = kv_http_hex(src[2]);

        if (hi == -1 || lo == -1) {
            return -1;
        }

        *dst++ = (uint8_t) (hi << 4 | lo);
        src += 3;
    }

    return dst - start;
}


/* the value of a hex digit of either case, or -1 */

static int
kv_http_hex(uint8_t c)
{
    c |= 0x20;

    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


int
kv_http_is_json(const uint8_t *data, size_t len)
{
    cJSON          *doc;
    const char     *end;
    const uint8_t  *p, *last;

    doc = cJSON_ParseWithLengthOpts((const char *) data, len, &end, 0);
    if (doc == NULL) {
        return 0;
    }

    cJSON_Delete(doc);

    last = data + len;

    for (p = (const uint8_t *) end; p < last; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            return 0;
        }
    }

    return 1;
}


int64_t
kv_http_parse_ttl(const uint8_t *p, size_t len)
{
    int64_t         ttl;
    const uint8_t  *end;

    if (len == 0) {
        return -1;
    }

    ttl = 0;

    for (end = p + len; p < end; p++) {
        if (*p < '0' || *p > '9') {
            return -1;
        }

        ttl = ttl * 10 + (*p - '0');

        if (ttl > KV_HTTP_MAX_TTL) {
            return -1;
        }
    }

    return ttl == 0 ? -1 : ttl;
}


size_t
kv_http_etags_room(const uint8_t *p, size_t len)
{
    size_t          quotes;
    const uint8_t  *end;

    quotes = 0;

    for (end = p + len; p < end; p++) {
        quotes += (*p == '"');
    }

    /* each tag takes two quotes; "{0}" takes one element */
    return (quotes + 1) / 2 + 1;
}


int
kv_http_parse_etags(const uint8_t *p, size_t len, int weak, uint64_t *seqs,
    kv_cond_t *cond)
{
    int             w, ours;
    uint32_t        n;
    uint64_t        seq;
    const uint8_t  *end, *tag;

    end = p + len;

    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (end > p && (end[-1] == ' ' || end[-1] == '\t')) {
        end--;
    }

    if (end - p == 1 && *p == '*') {
        cond->n = KV_COND_ANY;
        return 0;
    }

    n = 0;

    for ( ;; ) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        if (p == end) {
            break;
        }

        w = (end - p > 2 && p[0] == 'W' && p[1] == '/');
        p += w ? 2 : 0;

        if (*p++ != '"') {
            return -1;
        }

        tag = p;

        while (p < end && *p != '"') {
            p++;
        }

        if (p == end) {
            return -1;
        }

        /*
         * Up to 19 digits, below 2^64, and no leading zero: we send "7",
         * so "007" is another entity tag and must not match it.
         */
        ours = (p > tag && p - tag <= 19 && *tag != '0');
        seq = 0;

        for ( /* void */ ; ours && tag < p; tag++) {
            ours = (*tag >= '0' && *tag <= '9');
            seq = seq * 10 + (uint64_t) (*tag - '0');
        }

        if (ours && (weak || !w)) {
            seqs[n++] = seq;
        }

        p++;

        while (p < end && (*p == ' ' || *p == '\t')) {
            p++;
        }

        if (p < end && *p != ',') {
            return -1;
        }
    }

    if (n == 0) {
        seqs[n++] = 0;
    }

    cond->n = n;
    cond->seqs = seqs;

    return 0;
}
