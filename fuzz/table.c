/*
 * libFuzzer harness: what index=sorted reads from disk besides frames.
 * The input, as the table file of sorted segment 1 (its id and checksum
 * set right, so that the checks past them are reached), goes through
 * kv_table_check() on a heap copy of its exact size (ASan sees any read
 * past it), fully (as recovery) or not (as a worker); one that passes is
 * viewed as kv_table_open() views it and walked as a lookup would walk it
 * (every block's first key through kv_table_block(), the filter).  The input, as the
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
    int             full;
    char            why[128], *text;
    size_t          klen;
    uint8_t        *map;
    uint32_t        i, floor, prev;
    kv_runs_t       runs;
    kv_table_t      t;
    const uint8_t  *key, *e;

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

    /* as recovery opens it (full) or as a worker does */
    full = size > 0 && (data[size - 1] & 1);

    if (kv_table_check(map, size, 1, full, why, sizeof(why)) == 0) {
        memset(&t, 0, sizeof(t));
        t.map = map;
        t.map_len = size;
        (void) kv_table_view(&t);

        if (t.filter + t.filter_len > map + size || t.filter_len % 64 != 0) {
            abort();
        }

        for (i = 0; i < t.nblocks; i++) {
            e = t.blocks + (size_t) i * 16;

            /* the full check leaves nothing for the bounds check to mend */
            if (full
                && kv_get_le32(e + 8) + (uint64_t) (e[12] | e[13] << 8)
                   > t.keys_len)
            {
                abort();
            }

            (void) kv_table_block(&t, i, &key, &klen);
            (void) kv_filter_may_contain(t.filter, t.filter_len,
                                         kv_filter_hash(key, klen));
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
