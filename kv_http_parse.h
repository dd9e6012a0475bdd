
/*
 * The request parsers of ngx_http_kv_handler.c, as plain C without nginx,
 * so that the fuzz harnesses of fuzz/ link them alone: the key's
 * percent-decoding, the JSON check of a value, the TTL, the entity-tag
 * lists of If-Match and If-None-Match, and the listing's cursors and keys.
 */


#ifndef _KV_HTTP_PARSE_H_INCLUDED_
#define _KV_HTTP_PARSE_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kvstore.h"


/* the largest TTL, in seconds: about 68 years */
#define KV_HTTP_MAX_TTL  2147483647


/*
 * Percent-decodes the key [src, end) into dst, which has room for end - src
 * bytes; every other byte is kept as sent.  The key's length, or -1 if an
 * escape is not % and two hex digits.
 */
ssize_t kv_http_decode_key(const uint8_t *src, const uint8_t *end,
    uint8_t *dst);

/* 1 if [data, data + len) is one JSON value, with only white space after */
int kv_http_is_json(const uint8_t *data, size_t len);

/*
 * A TTL in seconds: digits only, 1 to KV_HTTP_MAX_TTL; -1 for anything
 * else.
 */
int64_t kv_http_parse_ttl(const uint8_t *p, size_t len);

/* how many sequence numbers kv_http_parse_etags() may store for a value */
size_t kv_http_etags_room(const uint8_t *p, size_t len);

/*
 * "*", or a list of entity tags: those of the form "<sequence>" (W/ ones
 * too if weak) become cond's sequence numbers, stored in seqs (of
 * kv_http_etags_room() elements); others can never match.  A list of none
 * of ours becomes {0}, which no record has.  0, or -1 if the list is
 * malformed.
 */
int kv_http_parse_etags(const uint8_t *p, size_t len, int weak,
    uint64_t *seqs, kv_cond_t *cond);


/*
 * A listing's cursor: the last key of a page, opaque to clients, as
 * base64url without padding of a version byte and the key.
 */
#define KV_HTTP_CURSOR_VERSION  1

/* the length of the cursor of a klen-byte key */
#define kv_http_cursor_len(klen)  (((klen) + 1) * 4 / 3 + 3)

/* Writes the cursor of key into dst; returns its length. */
size_t kv_http_encode_cursor(const uint8_t *key, size_t klen, uint8_t *dst);

/*
 * Decodes a cursor into key (room for len bytes): the key's length, or -1
 * if it is not one of kv_http_encode_cursor()'s.
 */
ssize_t kv_http_decode_cursor(const uint8_t *src, size_t len, uint8_t *key);

/*
 * 1 if [p, p + len) is valid UTF-8 (RFC 3629: shortest forms, no
 * surrogates) without NUL, so that a JSON string can carry it as is.
 */
int kv_http_is_utf8(const uint8_t *p, size_t len);

/* digits only, 1 to max: the number, or -1 */
int64_t kv_http_parse_uint(const uint8_t *p, size_t len, int64_t max);

#endif /* _KV_HTTP_PARSE_H_INCLUDED_ */
