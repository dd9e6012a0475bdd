
/*
 * The request parsers of the kv handlers, free of nginx (kv_http_parse.h).
 */


#include <cjson/cJSON.h>

#include "kv_http_parse.h"


static int kv_http_hex(uint8_t c);
static int kv_http_b64_value(uint8_t c);


static const char  kv_http_b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";


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
    return kv_http_parse_uint(p, len, KV_HTTP_MAX_TTL);
}


int64_t
kv_http_parse_uint(const uint8_t *p, size_t len, int64_t max)
{
    int64_t         n;
    const uint8_t  *end;

    if (len == 0) {
        return -1;
    }

    n = 0;

    for (end = p + len; p < end; p++) {
        if (*p < '0' || *p > '9') {
            return -1;
        }

        n = n * 10 + (*p - '0');

        if (n > max) {
            return -1;
        }
    }

    return n == 0 ? -1 : n;
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


size_t
kv_http_encode_cursor(const uint8_t *key, size_t klen, uint8_t *dst)
{
    size_t    i, n;
    uint32_t  bits;
    int       nbits;
    uint8_t  *start;

    start = dst;
    bits = KV_HTTP_CURSOR_VERSION;
    nbits = 8;
    n = klen + 1;

    for (i = 1; ; i++) {
        while (nbits >= 6) {
            nbits -= 6;
            *dst++ = kv_http_b64url[(bits >> nbits) & 0x3f];
        }

        if (i == n) {
            break;
        }

        bits = bits << 8 | key[i - 1];
        nbits += 8;
    }

    if (nbits > 0) {
        *dst++ = kv_http_b64url[(bits << (6 - nbits)) & 0x3f];
    }

    return (size_t) (dst - start);
}


ssize_t
kv_http_decode_cursor(const uint8_t *src, size_t len, uint8_t *key)
{
    int       v, nbits;
    size_t    i, n;
    uint32_t  bits;

    /* 1 + klen bytes take 4 characters per 3, the last group 2 or 3 */
    if (len < 2 || len % 4 == 1) {
        return -1;
    }

    bits = 0;
    nbits = 0;
    n = 0;

    for (i = 0; i < len; i++) {
        v = kv_http_b64_value(src[i]);
        if (v == -1) {
            return -1;
        }

        bits = bits << 6 | (uint32_t) v;
        nbits += 6;

        if (nbits >= 8) {
            nbits -= 8;

            if (n == 0) {
                if (((bits >> nbits) & 0xff) != KV_HTTP_CURSOR_VERSION) {
                    return -1;
                }

            } else {
                key[n - 1] = (uint8_t) (bits >> nbits);
            }

            n++;
            bits &= (1u << nbits) - 1;
        }
    }

    /* the unused low bits of the last character are zero: one spelling */
    if (bits != 0) {
        return -1;
    }

    return (ssize_t) n - 1;
}


static int
kv_http_b64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }

    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }

    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }

    if (c == '-') {
        return 62;
    }

    if (c == '_') {
        return 63;
    }

    return -1;
}


int
kv_http_is_utf8(const uint8_t *p, size_t len)
{
    size_t          n, i;
    uint32_t        cp, min;
    const uint8_t  *end;

    end = p + len;

    while (p < end) {
        if (*p < 0x80) {
            if (*p++ == 0) {
                return 0;
            }

            continue;
        }

        if ((*p & 0xe0) == 0xc0) {
            n = 1;
            cp = *p & 0x1f;
            min = 0x80;

        } else if ((*p & 0xf0) == 0xe0) {
            n = 2;
            cp = *p & 0x0f;
            min = 0x800;

        } else if ((*p & 0xf8) == 0xf0) {
            n = 3;
            cp = *p & 0x07;
            min = 0x10000;

        } else {
            return 0;
        }

        if ((size_t) (end - p) <= n) {
            return 0;
        }

        for (i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return 0;
            }

            cp = cp << 6 | (p[i] & 0x3f);
        }

        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return 0;
        }

        p += n + 1;
    }

    return 1;
}
