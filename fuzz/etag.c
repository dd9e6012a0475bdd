/*
 * libFuzzer harness: the entity-tag lists of If-Match and If-None-Match,
 * weak and strong.  The sequence numbers stored stay within the room
 * kv_http_etags_room() gave, and a list that parses parses the same once
 * its tags are written out again as "n1", "n2", ...
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_http_parse.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int         weak;
    char       *out, *p;
    size_t      room, room2, i;
    uint64_t   *seqs, *seqs2;
    kv_cond_t   cond, cond2;

    if (size == 0) {
        return 0;
    }

    /* the first byte chooses the header, the rest is its value */
    weak = data[0] & 1;
    data++;
    size--;

    room = kv_http_etags_room(data, size);

    seqs = malloc(room * sizeof(uint64_t));
    if (seqs == NULL) {
        abort();
    }

    if (kv_http_parse_etags(data, size, weak, seqs, &cond) != 0
        || cond.n == KV_COND_ANY)
    {
        free(seqs);
        return 0;
    }

    if (cond.n == 0 || cond.n > room || cond.seqs != seqs) {
        abort();
    }

    out = malloc(cond.n * 24 + 1);
    if (out == NULL) {
        abort();
    }

    p = out;

    for (i = 0; i < cond.n; i++) {
        p += sprintf(p, "%s\"%" PRIu64 "\"", i ? "," : "", seqs[i]);
    }

    room2 = kv_http_etags_room((uint8_t *) out, (size_t) (p - out));

    seqs2 = malloc(room2 * sizeof(uint64_t));
    if (seqs2 == NULL) {
        abort();
    }

    if (kv_http_parse_etags((uint8_t *) out, (size_t) (p - out), weak, seqs2,
                            &cond2)
        != 0
        || cond2.n != cond.n
        || memcmp(seqs, seqs2, cond.n * sizeof(uint64_t)) != 0)
    {
        abort();
    }

    free(seqs2);
    free(out);
    free(seqs);

    return 0;
}
