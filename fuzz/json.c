/*
 * libFuzzer harness: the JSON check of a value, on a buffer of exactly the
 * body's length with no terminating NUL, as nginx hands a request body
 * over.  An accepted value stays accepted with white space added after it.
 */

#include <stdlib.h>
#include <string.h>

#include "kv_http_parse.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t  *padded;

    if (!kv_http_is_json(data, size)) {
        return 0;
    }

    padded = malloc(size + 2);
    if (padded == NULL) {
        abort();
    }

    memcpy(padded, data, size);
    padded[size] = ' ';
    padded[size + 1] = '\n';

    if (!kv_http_is_json(padded, size + 2)) {
        abort();
    }

    free(padded);

    return 0;
}
