#define _GNU_SOURCE

/*
 * The SEQ file: a sequence number that no later record may reuse, because
 * a record that carried it may have been dropped.  Sequence numbers are the
 * ETags of HTTP: one handed out twice would let a stale If-Match win.
 * Recovery takes the highest sequence number it replays; compaction drops
 * tombstones and expired records, which may hold the highest ones, so it
 * saves the floor here before it deletes any input.  All integers
 * little-endian:
 *
 *   u32 magic "KSEQ", u32 version (1), u64 sequence number,
 *   u64 XXH3-64 of the 16 bytes before it
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "kv_internal.h"


#define KV_SEQ_MAGIC    0x5145534bu    /* "KSEQ" */
#define KV_SEQ_VERSION  1
#define KV_SEQ_SIZE     24


int
kv_seq_save(kv_store_t *s, uint64_t seq)
{
    uint8_t  buf[KV_SEQ_SIZE];

    kv_put_le(buf, KV_SEQ_MAGIC, 4);
    kv_put_le(buf + 4, KV_SEQ_VERSION, 4);
    kv_put_le(buf + 8, seq, 8);
    kv_put_le(buf + 16, XXH3_64bits(buf, 16), 8);

    return kv_replace_file(s, KV_SEQ_FILE, buf, sizeof(buf));
}


int
kv_seq_load(kv_store_t *s)
{
    int       fd, rc;
    char      path[PATH_MAX];
    ssize_t   n;
    uint8_t   buf[KV_SEQ_SIZE];
    uint64_t  size, seq;

    snprintf(path, sizeof(path), "%s/" KV_SEQ_FILE, s->conf.dir);

    rc = kv_open_read(s, path, &fd, &size);
    if (rc != KV_OK) {
        return rc == KV_NOTFOUND ? KV_OK : rc;
    }

    n = kv_pread_full(fd, buf, sizeof(buf), 0);
    close(fd);

    if (n != KV_SEQ_SIZE || size != KV_SEQ_SIZE
        || kv_get_le32(buf) != KV_SEQ_MAGIC
        || kv_get_le32(buf + 4) != KV_SEQ_VERSION
        || XXH3_64bits(buf, 16) != kv_get_le64(buf + 16))
    {
        kv_log(s->host, KV_LOG_WARN, n == -1 ? errno : 0, "\"%s\" is "
               "damaged and ignored: sequence numbers (ETags) of records "
               "that compaction dropped may be handed out again", path);
        return KV_OK;
    }

    seq = kv_get_le64(buf + 8);

    s->host->lock(s->host->ctx);

    if (seq > s->sh->seq) {
        s->sh->seq = seq;
    }

    s->host->unlock(s->host->ctx);

    return KV_OK;
}
