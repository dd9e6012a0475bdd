/*
 * libFuzzer harness: the TTL of X-KV-TTL and ?ttl=, checked against
 * strtoll(): accepted exactly when the value is all digits and from 1 to
 * KV_HTTP_MAX_TTL, with that value.
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kv_http_parse.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char       *s, *end;
    size_t      i;
    int64_t     ttl;
    long long   v;
    int         digits;

    ttl = kv_http_parse_ttl(data, size);

    digits = (size > 0);

    for (i = 0; i < size; i++) {
        digits = digits && data[i] >= '0' && data[i] <= '9';
    }

    s = malloc(size + 1);
    if (s == NULL) {
        abort();
    }

    memcpy(s, data, size);
    s[size] = '\0';

    errno = 0;
    v = digits ? strtoll(s, &end, 10) : -1;

    if (errno == ERANGE || v < 1 || v > KV_HTTP_MAX_TTL) {
        v = -1;
    }

    if (ttl != v) {
        abort();
    }

    free(s);

    return 0;
}
