/*
 * libFuzzer harness: what index=sorted reads from disk besides frames.
 * The input, as the table file of sorted segment 1 (its id and checksum
 * set right, so that the checks past them are reached), goes through
 * kv_table_check() on a heap copy of its exact size (ASan sees any read
 * past it); one that passes is walked as kv_table_open() and a lookup
 * would walk it (every block's first key, the filter).  The input, as the
 * text of TABLES, goes through kv_level_parse(): runs it accepts are
 * ascending and within KV_RUNS_MAX.
 */

#define _GNU_SOURCE

#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "kv_internal.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char            why[128], *text;
    size_t          klen;
    uint8_t        *map;
    int             sum;
    uint32_t        i, nblocks, floor, prev;
    kv_runs_t       runs;
    const uint8_t  *e, *keys, *filter;
    size_t          filter_len;

    map = malloc(size ? size : 1);
    text = malloc(size + 1);

    if (map == NULL || text == NULL) {
        abort();
    }

    memcpy(map, data, size);

    if (size >= 56) {
        kv_put_le(map + 8, 1, 4);
        kv_put_le(map + size - 8, XXH3_64bits(map, size - 8), 8);
    }

    /* summed or not: the checks kv_table_open() makes either way */
    sum = size > 0 && (data[size - 1] & 1);

    if (kv_table_check(map, size, 1, sum, why, sizeof(why)) == 0) {
        nblocks = kv_get_le32(map + 12);
        filter_len = kv_get_le32(map + 32);
        keys = map + 48 + (size_t) nblocks * 16;
        filter = keys + kv_get_le32(map + 36);

        if (filter + filter_len > map + size || filter_len % 64 != 0) {
            abort();
        }

        for (i = 0; i < nblocks; i++) {
            e = map + 48 + (size_t) i * 16;
            klen = (size_t) e[12] | (size_t) e[13] << 8;

            (void) kv_filter_may_contain(filter, filter_len,
                           kv_filter_hash(keys + kv_get_le32(e + 8), klen));
        }
    }

    memcpy(text, data, size);
    text[size] = '\0';

    if (kv_level_parse(text, &runs, &floor) == 0) {
        if (runs.n > KV_RUNS_MAX) {
            abort();
        }

        for (i = 0, prev = 0; i < runs.n; i++) {
            if (runs.run[i].first == 0 || runs.run[i].first > runs.run[i].last
                || runs.run[i].first <= prev)
            {
                abort();
            }

            prev = runs.run[i].last;
        }
    }

    free(text);
    free(map);

    return 0;
}
