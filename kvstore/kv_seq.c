#define _GNU_SOURCE

/*
 * The directory's two numbers, each in a file of its own:
 *
 * SEQ: a sequence number that no later record may reuse, because a record
 * that carried it may have been dropped.  Sequence numbers are the ETags
 * of HTTP: one handed out twice would let a stale If-Match win.  Recovery
 * takes the highest sequence number it replays; compaction drops
 * tombstones and expired records, which may hold the highest ones, so it
 * saves the floor here before it deletes any input.
 *
 * SEED: the seed of the keys' hashes (kv_key_hash()), random, made with
 * the directory.  A restart keeps each key's bucket and skip-list height,
 * so the keys a zone held fit it again; clients never learn it.
 *
 * Both files, all integers little-endian:
 *
 *   u32 magic ("KSEQ" or "KSED"), u32 version (1), u64 the number,
 *   u64 XXH3-64 of the 16 bytes before it
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "kv_internal.h"


#define KV_SEQ_MAGIC     0x5145534bu    /* "KSEQ" */
#define KV_SEED_MAGIC    0x4445534bu    /* "KSED" */
#define KV_NUMBER_VERSION  1
#define KV_NUMBER_SIZE     24


static int
kv_number_save(kv_store_t *s, const char *name, uint32_t magic,
    uint64_t value)
{
    uint8_t  buf[KV_NUMBER_SIZE];

    kv_put_le(buf, magic, 4);
    kv_put_le(buf + 4, KV_NUMBER_VERSION, 4);
    kv_put_le(buf + 8, value, 8);
    kv_put_le(buf + 16, XXH3_64bits(buf, 16), 8);

    return kv_replace_file(s, name, buf, sizeof(buf));
}


/*
 * KV_OK with *value, KV_NOTFOUND if there is no such file, KV_ECORRUPT if
 * it is damaged (logged with what follows, why), or an error opening it.
 */
static int
kv_number_load(kv_store_t *s, const char *name, uint32_t magic,
    uint64_t *value, const char *why)
{
    int       fd, rc;
    char      path[PATH_MAX];
    ssize_t   n;
    uint8_t   buf[KV_NUMBER_SIZE];
    uint64_t  size;

    snprintf(path, sizeof(path), "%s/%s", s->conf.dir, name);

    rc = kv_open_read(s, path, &fd, &size);
    if (rc != KV_OK) {
        return rc;
    }

    n = kv_pread_full(fd, buf, sizeof(buf), 0);
    close(fd);

    if (n != KV_NUMBER_SIZE || size != KV_NUMBER_SIZE
        || kv_get_le32(buf) != magic
        || kv_get_le32(buf + 4) != KV_NUMBER_VERSION
        || XXH3_64bits(buf, 16) != kv_get_le64(buf + 16))
    {
        kv_log(s->host, KV_LOG_WARN, n == -1 ? errno : 0, "\"%s\" is "
               "damaged and ignored: %s", path, why);
        return KV_ECORRUPT;
    }

    *value = kv_get_le64(buf + 8);

    return KV_OK;
}


int
kv_seq_save(kv_store_t *s, uint64_t seq)
{
    return kv_number_save(s, KV_SEQ_FILE, KV_SEQ_MAGIC, seq);
}


int
kv_seq_load(kv_store_t *s)
{
    int       rc;
    uint64_t  seq;

    rc = kv_number_load(s, KV_SEQ_FILE, KV_SEQ_MAGIC, &seq,
                        "sequence numbers (ETags) of records that "
                        "compaction dropped may be handed out again");

    if (rc != KV_OK) {
        /* no file, or a damaged one: the segments decide */
        return (rc == KV_NOTFOUND || rc == KV_ECORRUPT) ? KV_OK : rc;
    }

    s->host->lock(s->host->ctx);

    if (seq > s->sh->seq) {
        s->sh->seq = seq;
    }

    s->host->unlock(s->host->ctx);

    return KV_OK;
}


int
kv_seed_load(kv_store_t *s)
{
    int       rc;
    uint64_t  seed;

    rc = kv_number_load(s, KV_SEED_FILE, KV_SEED_MAGIC, &seed,
                        "a new seed is made, which moves every key to "
                        "another bucket and skip-list height");

    if (rc == KV_OK) {
        s->host->lock(s->host->ctx);

        /* only an empty index can take another seed */
        if (s->sh->stats.keys == 0 && s->sh->stats.masks == 0) {
            s->sh->hash_seed = seed;
        }

        s->host->unlock(s->host->ctx);

        return KV_OK;
    }

    if (rc != KV_NOTFOUND && rc != KV_ECORRUPT) {
        return rc;
    }

    /* the zone's own random seed becomes the directory's */

    return s->conf.read_only ? KV_OK
                             : kv_number_save(s, KV_SEED_FILE, KV_SEED_MAGIC,
                                              s->sh->hash_seed);
}
