#define _GNU_SOURCE

/*
 * Segment files and the file helpers below every other part of the engine:
 * paths, creating, flushing and reading files, listing the segments of the
 * directory and scanning one frame by frame (recovery, hint writing,
 * compaction and kvtool all read segments this way), and the engine's log
 * line.  Nothing here touches the index.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "kv_internal.h"


#define KV_LOG_LEN   1024
#define KV_READ_BUF  (1024 * 1024)


typedef struct {
    kv_store_t     *s;
    int             fd;
    const char     *path;
    uint8_t        *buf;
    size_t          cap;
    uint64_t        size;          /* of the file when the scan began */
} kv_scan_t;


void
kv_log(const kv_host_t *host, int level, int err, const char *fmt, ...)
{
    char     msg[KV_LOG_LEN];
    va_list  args;

    va_start(args, fmt);
    vsnprintf(msg, sizeof(msg), fmt, args);
    va_end(args);

    host->log(host->ctx, level, err, msg);
}


/* Keys are binary: show at most KV_KEY_SHOWN bytes, non-printables as \xNN */
const char *
kv_key_str(const uint8_t *key, size_t klen, char buf[KV_KEY_STR_LEN])
{
    char    *p;
    size_t   i, n;

    p = buf;
    n = klen < KV_KEY_SHOWN ? klen : KV_KEY_SHOWN;

    for (i = 0; i < n; i++) {
        if (key[i] < 0x20 || key[i] >= 0x7f || key[i] == '"'
            || key[i] == '\\')
        {
            p += sprintf(p, "\\x%02x", key[i]);

        } else {
            *p++ = (char) key[i];
        }
    }

    strcpy(p, klen > n ? "..." : "");

    return buf;
}


void
kv_segment_path(const kv_store_t *s, uint32_t segment, char path[PATH_MAX])
{
    snprintf(path, PATH_MAX, "%s/" KV_SEGMENT_FMT, s->conf.dir, segment);
}


/* Reads len bytes unless the file ends first; returns the count or -1. */
ssize_t
kv_pread_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
    size_t   done;
    ssize_t  n;

    done = 0;

    while (done < len) {
        n = pread(fd, buf + done, len - done, (off_t) (off + done));

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            return -1;
        }

        if (n == 0) {
            break;
        }

        done += (size_t) n;
    }

    return (ssize_t) done;
}


int
kv_chown(kv_store_t *s, int fd, const char *path)
{
    if (s->conf.owner_uid == (uid_t) -1 && s->conf.owner_gid == (gid_t) -1) {
        return KV_OK;
    }

    if ((fd >= 0 ? fchown(fd, s->conf.owner_uid, s->conf.owner_gid)
                 : chown(path, s->conf.owner_uid, s->conf.owner_gid))
        == -1)
    {
        kv_log(s->host, KV_LOG_ERR, errno, "chown(\"%s\", %ld, %ld) failed",
               path, (long) s->conf.owner_uid, (long) s->conf.owner_gid);
        return KV_EIO;
    }

    return KV_OK;
}


int
kv_create_file(kv_store_t *s, const char *path, int flags)
{
    int  fd, err;

    fd = open(path, flags | O_CREAT | O_EXCL | O_CLOEXEC, 0640);

    if (fd == -1) {
        if (errno != EEXIST) {
            kv_log(s->host, KV_LOG_ERR, errno, "creating \"%s\" failed",
                   path);
        }

        return -1;
    }

    if (kv_chown(s, fd, path) != KV_OK) {
        err = errno;
        close(fd);
        unlink(path);
        errno = err;
        return -1;
    }

    return fd;
}


int
kv_open_read(kv_store_t *s, const char *path, int *fd, uint64_t *size)
{
    struct stat  st;

    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd == -1) {
        if (errno == ENOENT) {
            return KV_NOTFOUND;
        }

        kv_log(s->host, KV_LOG_ERR, errno, "open(\"%s\") failed", path);
        return KV_EIO;
    }

    if (size == NULL) {
        return KV_OK;
    }

    if (fstat(*fd, &st) == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "fstat(\"%s\") failed", path);
        close(*fd);
        *fd = -1;
        return KV_EIO;
    }

    *size = (uint64_t) st.st_size;

    return KV_OK;
}


/*
 * The caller says what fd is: on Linux 6.13 and later an fstat() to find
 * out would make the next write's mtime fine-grained, which dirties the
 * inode at every write and adds an inode write to every flush of the log.
 */
static int
kv_flush_fd(kv_store_t *s, int fd, const char *path, int dir)
{
    int  rc;

    if (s->host->sync != NULL) {
        rc = s->host->sync(s->host->ctx, fd, path);

    } else {
        /* a file's data reads back without its inode times */
        rc = dir ? fsync(fd) : fdatasync(fd);
    }

    if (rc == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "flushing \"%s\" to stable "
               "storage failed", path);
        return KV_EIO;
    }

    return KV_OK;
}


int
kv_flush(kv_store_t *s, int fd, const char *path)
{
    return kv_flush_fd(s, fd, path, 0);
}


int
kv_flush_dir(kv_store_t *s, const char *path)
{
    int  fd, rc;

    fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "opening \"%s\" to flush it "
               "failed", path);
        return KV_EIO;
    }

    rc = kv_flush_fd(s, fd, path, 1);

    close(fd);

    return rc;
}


int
kv_replace_file(kv_store_t *s, const char *name, const void *data,
    size_t len)
{
    int   fd, rc;
    char  tmp[PATH_MAX + sizeof(KV_TMP_SUFFIX)], path[PATH_MAX];

    snprintf(path, sizeof(path), "%s/%s", s->conf.dir, name);
    snprintf(tmp, sizeof(tmp), "%s" KV_TMP_SUFFIX, path);

    /* a process that died while writing may have left one */
    if (unlink(tmp) == -1 && errno != ENOENT) {
        kv_log(s->host, KV_LOG_ERR, errno, "unlink(\"%s\") failed", tmp);
        return KV_EIO;
    }

    fd = kv_create_file(s, tmp, O_WRONLY);
    if (fd == -1) {
        if (errno == EEXIST) {
            kv_log(s->host, KV_LOG_ERR, EEXIST, "creating \"%s\" failed",
                   tmp);
        }

        return KV_EIO;
    }

    rc = KV_OK;

    if (write(fd, data, len) != (ssize_t) len) {
        kv_log(s->host, KV_LOG_ERR, errno, "writing %zu bytes to \"%s\" "
               "failed", len, tmp);
        rc = KV_EIO;
    }

    if (rc == KV_OK) {
        rc = kv_flush(s, fd, tmp);
    }

    close(fd);

    if (rc == KV_OK && rename(tmp, path) == -1) {
        kv_log(s->host, KV_LOG_ERR, errno, "rename(\"%s\", \"%s\") failed",
               tmp, path);
        rc = KV_EIO;
    }

    if (rc == KV_OK) {
        return kv_flush_dir(s, s->conf.dir);
    }

    unlink(tmp);

    return rc;
}


/* Accepts exactly ten digits followed by suffix; returns the id or 0. */
uint32_t
kv_file_id(const char *name, const char *suffix)
{
    int            i;
    unsigned long  id;

    for (i = 0; i < 10; i++) {
        if (name[i] < '0' || name[i] > '9') {
            return 0;
        }
    }

    if (strcmp(name + 10, suffix) != 0) {
        return 0;
    }

    id = strtoul(name, NULL, 10);

    return id <= KV_SEGMENT_MAX ? (uint32_t) id : 0;
}


int
kv_cmp_id(const void *a, const void *b)
{
    uint32_t  x, y;

    x = *(const uint32_t *) a;
    y = *(const uint32_t *) b;

    return (x > y) - (x < y);
}


int
kv_list_segments(kv_store_t *s, uint32_t **ids, size_t *n)
{
    DIR            *d;
    size_t          cap;
    uint32_t        id, *p;
    struct dirent  *de;

    d = opendir(s->conf.dir);
    if (d == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "opendir(\"%s\") failed",
               s->conf.dir);
        return KV_EIO;
    }

    *ids = NULL;
    *n = 0;
    cap = 0;

    while ((de = readdir(d)) != NULL) {
        id = kv_file_id(de->d_name, ".kvlog");
        if (id == 0) {
            continue;
        }

        if (*n == cap) {
            cap = cap ? cap * 2 : 16;

            p = realloc(*ids, cap * sizeof(uint32_t));
            if (p == NULL) {
                kv_log(s->host, KV_LOG_ERR, errno, "listing \"%s\": out of "
                       "memory", s->conf.dir);
                closedir(d);
                free(*ids);
                *ids = NULL;
                *n = 0;
                return KV_EIO;
            }

            *ids = p;
        }

        (*ids)[(*n)++] = id;
    }

    closedir(d);

    if (*n > 1) {
        qsort(*ids, *n, sizeof(uint32_t), kv_cmp_id);
    }

    return KV_OK;
}


/* The bytes of the regular files in dir (0 if it does not exist). */
uint64_t
kv_dir_bytes(const char *dir)
{
    DIR            *d;
    uint64_t        bytes;
    struct stat     st;
    struct dirent  *de;

    d = opendir(dir);
    if (d == NULL) {
        return 0;
    }

    bytes = 0;

    while ((de = readdir(d)) != NULL) {
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0
            && S_ISREG(st.st_mode))
        {
            bytes += (uint64_t) st.st_size;
        }
    }

    closedir(d);

    return bytes;
}


/*
 * Makes buf[*pos ...] hold at least need bytes unless the file (as long as
 * it was when the scan began) ends first: moves the unread bytes to the
 * front, grows the buffer, reads.  *got is the number of bytes read.
 */
static int
kv_scan_fill(kv_scan_t *sc, uint64_t *base, size_t *pos, size_t *have,
    size_t need, size_t *got)
{
    size_t    want;
    uint8_t  *p;
    ssize_t   n;

    memmove(sc->buf, sc->buf + *pos, *have - *pos);
    *base += *pos;
    *have -= *pos;
    *pos = 0;

    if (need > sc->cap) {
        p = realloc(sc->buf, need);
        if (p == NULL) {
            kv_log(sc->s->host, KV_LOG_ERR, errno, "no memory for a frame of "
                   "%zu bytes in \"%s\"", need, sc->path);
            return KV_EIO;
        }

        sc->buf = p;
        sc->cap = need;
    }

    want = sc->cap - *have;

    if (want > sc->size - (*base + *have)) {
        want = (size_t) (sc->size - (*base + *have));
    }

    n = kv_pread_full(sc->fd, sc->buf + *have, want, *base + *have);
    if (n == -1) {
        kv_log(sc->s->host, KV_LOG_ERR, errno, "reading \"%s\" at offset %"
               PRIu64 " failed", sc->path, *base + *have);
        return KV_EIO;
    }

    *have += (size_t) n;
    *got = (size_t) n;

    return KV_OK;
}


static int
kv_scan_frames(kv_scan_t *sc, uint64_t from, kv_scan_pt fn, void *ctx,
    uint64_t *end)
{
    int          rc;
    size_t       pos, have, need, got;
    uint64_t     base, plen;
    kv_record_t  rec;

    base = from;
    pos = 0;
    have = 0;

    for ( ;; ) {
        need = KV_FRAME_HEADER;

        if (have - pos >= KV_FRAME_HEADER) {
            plen = kv_get_le32(sc->buf + pos);

            if (plen == 0 || plen > KV_FRAME_MAX - KV_FRAME_HEADER) {
                return KV_OK;
            }

            need += (size_t) plen;
        }

        if (have - pos < need) {
            rc = kv_scan_fill(sc, &base, &pos, &have, need, &got);
            if (rc != KV_OK) {
                return rc;
            }

            /* the end of the file, or a frame cut short */
            if (got == 0) {
                return KV_OK;
            }

            continue;
        }

        if (kv_frame_verify(sc->buf + pos, need) != KV_OK
            || kv_record_decode(&rec, sc->buf + pos + KV_FRAME_HEADER,
                                need - KV_FRAME_HEADER)
               != KV_OK)
        {
            return KV_OK;
        }

        rc = fn(ctx, &rec, base + pos, (uint32_t) need);
        kv_record_free(&rec);

        if (rc != KV_OK) {
            return rc;
        }

        pos += need;
        *end = base + pos;
    }
}


int
kv_scan_segment(kv_store_t *s, uint32_t id, uint64_t from, kv_scan_pt fn,
    void *ctx, uint64_t *end, uint64_t *size)
{
    int          rc;
    char         path[PATH_MAX];
    kv_scan_t    sc;

    *end = from;
    *size = 0;

    kv_segment_path(s, id, path);

    sc.s = s;
    sc.path = path;

    rc = kv_open_read(s, path, &sc.fd, &sc.size);
    if (rc != KV_OK) {
        return rc;
    }

    *size = sc.size;

    (void) posix_fadvise(sc.fd, 0, 0, POSIX_FADV_SEQUENTIAL);

    sc.cap = KV_READ_BUF;
    sc.buf = malloc(sc.cap);

    if (sc.buf == NULL) {
        kv_log(s->host, KV_LOG_ERR, errno, "no memory to scan \"%s\"", path);
        rc = KV_EIO;

    } else {
        rc = from < sc.size ? kv_scan_frames(&sc, from, fn, ctx, end)
                            : KV_OK;
    }

    free(sc.buf);
    close(sc.fd);

    return rc;
}


int
kv_segment_map(kv_store_t *s, uint32_t id, kv_map_t *m)
{
    int        fd, rc;
    char       path[PATH_MAX];
    uint64_t   size;

    m->p = NULL;
    m->len = 0;

    kv_segment_path(s, id, path);

    rc = kv_open_read(s, path, &fd, &size);

    if (rc == KV_NOTFOUND) {
        kv_log(s->host, KV_LOG_ERR, 0, "segment \"%s\" is gone", path);
        return KV_EIO;
    }

    if (rc != KV_OK || size == 0 || size > SIZE_MAX) {
        if (rc == KV_OK) {
            close(fd);
        }

        if (size > SIZE_MAX) {
            kv_log(s->host, KV_LOG_ERR, 0, "segment \"%s\" is too large "
                   "to map", path);
            return KV_EIO;
        }

        return rc;
    }

    m->p = mmap(NULL, (size_t) size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);

    if (m->p == MAP_FAILED) {
        m->p = NULL;
        kv_log(s->host, KV_LOG_ERR, errno, "mmap(\"%s\") failed", path);
        return KV_EIO;
    }

    m->len = (size_t) size;

    return KV_OK;
}


void
kv_segment_unmap(kv_map_t *m)
{
    if (m->p != NULL) {
        munmap(m->p, m->len);
        m->p = NULL;
        m->len = 0;
    }
}


/* a frame at file offset base, read a piece at a time */
typedef struct {
    int       fd;
    int       err;        /* of a failed pread() */
    uint64_t  base;
} kv_file_frame_t;


static int
kv_read_file_frame(void *ctx, uint8_t *buf, size_t len, uint64_t off)
{
    ssize_t           n;
    kv_file_frame_t  *ff;

    ff = ctx;
    n = kv_pread_full(ff->fd, buf, len, ff->base + off);

    if (n == -1) {
        ff->err = errno;
        return KV_EIO;
    }

    /* the file was cut meanwhile (a running store): no frame there */
    return (size_t) n == len ? KV_OK : KV_ECORRUPT;
}


/*
 * pread(), not mmap(): kvtool runs this beside nginx, which may cut the
 * file, and a read past a mapping's new end would be a SIGBUS.
 */
int
kv_valid_frame_after(kv_store_t *s, uint32_t id, uint64_t from,
    uint64_t *next)
{
    int               rc;
    char              path[PATH_MAX];
    size_t            have, o, flen;
    ssize_t           n;
    uint8_t          *buf;
    uint64_t          base, size;
    kv_file_frame_t   ff;

    *next = 0;

    kv_segment_path(s, id, path);

    rc = kv_open_read(s, path, &ff.fd, &size);
    if (rc != KV_OK) {
        return rc;
    }

    if (from + 1 + KV_FRAME_HEADER >= size) {
        close(ff.fd);
        return KV_OK;
    }

    ff.err = 0;

    buf = malloc(KV_READ_BUF);
    if (buf == NULL) {
        close(ff.fd);
        kv_log(s->host, KV_LOG_ERR, ENOMEM, "looking for a valid record "
               "in \"%s\" after offset %" PRIu64 " failed", path, from);
        return KV_ENOMEM;
    }

    /* each window starts at the first candidate the last one left */

    for (base = from + 1; base + KV_FRAME_HEADER < size; base += o) {
        have = size - base < KV_READ_BUF ? (size_t) (size - base)
                                         : KV_READ_BUF;

        n = kv_pread_full(ff.fd, buf, have, base);

        if (n == -1) {
            kv_log(s->host, KV_LOG_ERR, errno, "reading \"%s\" at offset %"
                   PRIu64 " failed", path, base);
            rc = KV_EIO;
            break;
        }

        have = (size_t) n;

        for (o = 0; o + KV_FRAME_HEADER < have; o++) {
            flen = KV_FRAME_HEADER + (size_t) kv_get_le32(buf + o);

            if (flen > size - (base + o)) {
                continue;
            }

            if (flen <= have - o) {
                rc = kv_frame_verify(buf + o, flen);

            } else {
                ff.base = base + o;
                rc = kv_frame_verify_pieces(flen, kv_read_file_frame, &ff);
            }

            if (rc == KV_OK) {
                *next = base + o;
                goto done;
            }

            if (rc != KV_ECORRUPT) {
                kv_log(s->host, KV_LOG_ERR, rc == KV_EIO ? ff.err : ENOMEM,
                       "verifying a record in \"%s\" at offset %" PRIu64
                       " failed", path, base + o);
                goto done;
            }

            rc = KV_OK;
        }

        /* the file was cut meanwhile */
        if (o == 0) {
            break;
        }
    }

done:

    free(buf);
    close(ff.fd);

    return rc;
}


int
kv_zero_tail(kv_store_t *s, uint32_t id, uint64_t from, int *zeros)
{
    int          fd, rc;
    char         path[PATH_MAX];
    size_t       i;
    ssize_t      n;
    uint8_t      buf[4096];
    uint64_t     size;

    *zeros = 0;

    kv_segment_path(s, id, path);

    rc = kv_open_read(s, path, &fd, &size);
    if (rc != KV_OK) {
        return rc;
    }

    *zeros = from < size;

    while (*zeros) {
        n = pread(fd, buf, sizeof(buf), (off_t) from);

        if (n == -1 && errno == EINTR) {
            continue;
        }

        if (n == -1) {
            kv_log(s->host, KV_LOG_ERR, errno, "pread(\"%s\") at offset %"
                   PRIu64 " failed", path, from);
            close(fd);
            return KV_EIO;
        }

        if (n == 0) {
            break;
        }

        for (i = 0; i < (size_t) n && buf[i] == 0; i++) {
            /* void */
        }

        *zeros = (i == (size_t) n);
        from += (uint64_t) n;
    }

    close(fd);

    return KV_OK;
}
