/*
 * libFuzzer harness: the percent-decoding of a key from the request line.
 * A decoded key is never longer than what was sent, and encoding every
 * byte of it again gives a request line that decodes to the same key.
 */

#include <stdlib.h>
#include <string.h>

#include "kv_http_parse.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t          i;
    ssize_t         len, len2;
    uint8_t        *key, *enc, *key2;
    static const char  hex[] = "0123456789ABCDEF";

    key = malloc(size ? size : 1);
    if (key == NULL) {
        abort();
    }

    len = kv_http_decode_key(data, data + size, key);

    if (len == -1) {
        free(key);
        return 0;
    }

    if ((size_t) len > size) {
        abort();
    }

    enc = malloc(3 * (size_t) len + 1);
    key2 = malloc(3 * (size_t) len + 1);
    if (enc == NULL || key2 == NULL) {
        abort();
    }

    for (i = 0; i < (size_t) len; i++) {
        enc[3 * i] = '%';
        enc[3 * i + 1] = hex[key[i] >> 4];
        enc[3 * i + 2] = hex[key[i] & 0xf];
    }

    len2 = kv_http_decode_key(enc, enc + 3 * (size_t) len, key2);

    if (len2 != len || memcmp(key, key2, (size_t) len) != 0) {
        abort();
    }

    free(key2);
    free(enc);
    free(key);

    return 0;
}
