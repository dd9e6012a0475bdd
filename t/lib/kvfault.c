
/*
 * kvfault.so: an LD_PRELOAD shim that makes file system calls fail, for the
 * fault-injection suite (t/faults.t).
 *
 * The file named by $KV_FAULTS (read when the shim is loaded, so nginx's
 * master sees it before it clears its environment) holds the rules, one a
 * line:
 *
 *     OP SUBSTRING [ERRNO]
 *
 * A call fails while a rule for it is in the file and the path of the file
 * it acts on contains SUBSTRING; the test edits the file to set the
 * schedule.  OP is one of
 *
 *     open       open(), openat(): fails with ERRNO
 *     write      write(), pwrite(), pwritev(): fails with ERRNO
 *     short      write(), pwrite(), pwritev(): writes half, at least a byte
 *     sync       fdatasync(), fsync(): fails with ERRNO
 *     rename     rename(): fails with ERRNO (SUBSTRING in the old name)
 *
 * ERRNO is EIO, ENOSPC, EDQUOT or EROFS (default EIO).  Paths of
 * descriptors come from /proc/self/fd.
 */


#define _GNU_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>


#define KV_FAULT_RULES_MAX  4096


typedef enum {
    KV_FAULT_FAIL = 1,
    KV_FAULT_SHORT
} kv_fault_act_t;


static char  kv_fault_file[4096];


/*
 * The errno of the rule for op that matches path, -1 for a short write, 0
 * for none.  Reads the rules with raw system calls, not the wrapped ones.
 */
static int
kv_fault_match(const char *op, const char *path)
{
    int      fd, err;
    char     buf[KV_FAULT_RULES_MAX], *line, *next, *rop, *sub, *ename;
    ssize_t  n;

    if (kv_fault_file[0] == '\0' || path == NULL) {
        return 0;
    }

    fd = (int) syscall(SYS_openat, AT_FDCWD, kv_fault_file,
                       O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return 0;
    }

    n = syscall(SYS_read, fd, buf, sizeof(buf) - 1);
    syscall(SYS_close, fd);

    if (n <= 0) {
        return 0;
    }

    buf[n] = '\0';

    for (line = buf; line != NULL; line = next) {
        next = strchr(line, '\n');
        if (next != NULL) {
            *next++ = '\0';
        }

        rop = strtok_r(line, " \t", &line);
        sub = rop ? strtok_r(NULL, " \t", &line) : NULL;
        ename = sub ? strtok_r(NULL, " \t", &line) : NULL;

        if (sub == NULL || strstr(path, sub) == NULL) {
            continue;
        }

        if (strcmp(op, "write") == 0 && strcmp(rop, "short") == 0) {
            return -1;
        }

        if (strcmp(op, rop) != 0) {
            continue;
        }

        err = EIO;

        if (ename != NULL) {
            err = strcmp(ename, "ENOSPC") == 0 ? ENOSPC
                  : strcmp(ename, "EDQUOT") == 0 ? EDQUOT
                  : strcmp(ename, "EROFS") == 0 ? EROFS : EIO;
        }

        return err;
    }

    return 0;
}


static int
kv_fault_fd(const char *op, int fd)
{
    char     link[64], path[4096];
    ssize_t  n;

    if (kv_fault_file[0] == '\0') {
        return 0;
    }

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);

    n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0) {
        return 0;
    }

    path[n] = '\0';

    return kv_fault_match(op, path);
}


static void *
kv_fault_next(const char *name)
{
    void  *f;

    f = dlsym(RTLD_NEXT, name);
    if (f == NULL) {
        fprintf(stderr, "kvfault: no %s: %s\n", name, dlerror());
        abort();
    }

    return f;
}


__attribute__((constructor))
static void
kv_fault_init(void)
{
    const char  *f;

    f = getenv("KV_FAULTS");

    if (f != NULL && strlen(f) < sizeof(kv_fault_file)) {
        strcpy(kv_fault_file, f);
    }
}


static int
kv_fault_open(const char *name, int dirfd, const char *path, int flags,
    mode_t mode)
{
    int   err;
    int (*next)(int, const char *, int, ...);

    err = kv_fault_match("open", path);
    if (err > 0) {
        errno = err;
        return -1;
    }

    next = kv_fault_next(name);

    return next(dirfd, path, flags, mode);
}


/*
 * open(), open64(), openat() and openat64(): each its own symbol to
 * interpose, one body; the mode is there only with O_CREAT or O_TMPFILE.
 */
#define KV_FAULT_OPEN(name, next, params, dirfd)                             \
int                                                                          \
name params                                                                  \
{                                                                            \
    mode_t   mode;                                                           \
    va_list  ap;                                                             \
                                                                             \
    va_start(ap, flags);                                                     \
    mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;         \
    va_end(ap);                                                              \
                                                                             \
    return kv_fault_open(next, dirfd, path, flags, mode);                    \
}

KV_FAULT_OPEN(open, "openat", (const char *path, int flags, ...), AT_FDCWD)
KV_FAULT_OPEN(open64, "openat64", (const char *path, int flags, ...),
              AT_FDCWD)
KV_FAULT_OPEN(openat, "openat", (int dirfd, const char *path, int flags,
              ...), dirfd)
KV_FAULT_OPEN(openat64, "openat64", (int dirfd, const char *path,
              int flags, ...), dirfd)


/* the length a write may have under the rules: 0 for an error (in errno) */
static size_t
kv_fault_write_len(int fd, size_t len)
{
    int  err;

    err = kv_fault_fd("write", fd);

    if (err > 0) {
        errno = err;
        return 0;
    }

    return (err == -1 && len > 1) ? len / 2 : len;
}


ssize_t
write(int fd, const void *buf, size_t len)
{
    size_t    n;
    ssize_t (*next)(int, const void *, size_t);

    next = kv_fault_next("write");

    n = kv_fault_write_len(fd, len);
    if (n == 0 && len != 0) {
        return -1;
    }

    return next(fd, buf, n);
}


static ssize_t
kv_fault_pwrite(const char *name, int fd, const void *buf, size_t len,
    off_t off)
{
    size_t    n;
    ssize_t (*next)(int, const void *, size_t, off_t);

    next = kv_fault_next(name);

    n = kv_fault_write_len(fd, len);
    if (n == 0 && len != 0) {
        return -1;
    }

    return next(fd, buf, n, off);
}


ssize_t
pwrite(int fd, const void *buf, size_t len, off_t off)
{
    return kv_fault_pwrite("pwrite", fd, buf, len, off);
}


ssize_t
pwrite64(int fd, const void *buf, size_t len, off_t off)
{
    return kv_fault_pwrite("pwrite64", fd, buf, len, off);
}


static ssize_t
kv_fault_pwritev(const char *name, int fd, const struct iovec *iov, int cnt,
    off_t off)
{
    int       i;
    size_t    len, n;
    ssize_t (*next)(int, const struct iovec *, int, off_t);
    ssize_t (*one)(int, const void *, size_t, off_t);

    next = kv_fault_next(name);

    len = 0;

    for (i = 0; i < cnt; i++) {
        len += iov[i].iov_len;
    }

    n = kv_fault_write_len(fd, len);

    if (n == 0 && len != 0) {
        return -1;
    }

    if (n == len || cnt == 0) {
        return next(fd, iov, cnt, off);
    }

    /* a short write: part of the first buffer only */
    one = kv_fault_next("pwrite64");
    n = iov[0].iov_len > 1 ? iov[0].iov_len / 2 : iov[0].iov_len;

    return one(fd, iov[0].iov_base, n, off);
}


ssize_t
pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return kv_fault_pwritev("pwritev", fd, iov, cnt, off);
}


ssize_t
pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return kv_fault_pwritev("pwritev64", fd, iov, cnt, off);
}


static int
kv_fault_sync(const char *name, int fd)
{
    int   err;
    int (*next)(int);

    err = kv_fault_fd("sync", fd);
    if (err > 0) {
        errno = err;
        return -1;
    }

    next = kv_fault_next(name);

    return next(fd);
}


int
fdatasync(int fd)
{
    return kv_fault_sync("fdatasync", fd);
}


int
fsync(int fd)
{
    return kv_fault_sync("fsync", fd);
}


int
rename(const char *from, const char *to)
{
    int   err;
    int (*next)(const char *, const char *);

    err = kv_fault_match("rename", from);
    if (err > 0) {
        errno = err;
        return -1;
    }

    next = kv_fault_next("rename");

    return next(from, to);
}
