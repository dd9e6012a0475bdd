/*
 * libFuzzer harness: a listing's cursor and the UTF-8 check of its keys.
 * A cursor that decodes is the one spelling of its key (encoding the key
 * gives it back); any bytes, as a key, encode to a cursor that decodes to
 * them; a key the UTF-8 check accepts goes through a JSON string intact.
 */

#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "kv_http_parse.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
check_json_string(const uint8_t *data, size_t size)
{
    char   *s, *json;
    cJSON  *str, *back;

    s = malloc(size + 1);
    if (s == NULL) {
        abort();
    }

    memcpy(s, data, size);
    s[size] = '\0';

    str = cJSON_CreateString(s);
    json = str ? cJSON_PrintUnformatted(str) : NULL;
    back = json ? cJSON_Parse(json) : NULL;

    if (back == NULL || !cJSON_IsString(back)
        || strlen(back->valuestring) != size
        || memcmp(back->valuestring, data, size) != 0)
    {
        abort();
    }

    cJSON_Delete(back);
    cJSON_free(json);
    cJSON_Delete(str);
    free(s);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t    n;
    ssize_t   klen, len;
    uint8_t  *key, *enc;

    key = malloc(size + 1);
    enc = malloc(kv_http_cursor_len(size));

    if (key == NULL || enc == NULL) {
        abort();
    }

    /* the input as a cursor */

    klen = kv_http_decode_cursor(data, size, key);

    if (klen != -1) {
        if ((size_t) klen >= size) {
            abort();
        }

        n = kv_http_encode_cursor(key, (size_t) klen, enc);

        if (n != size || memcmp(enc, data, size) != 0) {
            abort();
        }
    }

    /* the input as a key */

    n = kv_http_encode_cursor(data, size, enc);

    if (n > kv_http_cursor_len(size)) {
        abort();
    }

    len = kv_http_decode_cursor(enc, n, key);

    if (len != (ssize_t) size || memcmp(key, data, size) != 0) {
        abort();
    }

    if (kv_http_is_utf8(data, size)) {
        check_json_string(data, size);
    }

    free(enc);
    free(key);

    return 0;
}
