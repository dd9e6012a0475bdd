#define _GNU_SOURCE

/*
 * The HTTP client of kvtool reshard: one request per connection
 * (Connection: close), to a server named as in an nginx upstream block
 * (host:port, [v6]:port, or a host for port 80), and only the status
 * code of the answer matters.
 */

#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "kvtool.h"


/* a shard that does not answer within this is reported, not waited for */
#define KVTOOL_HTTP_TIMEOUT  30


static int
kvtool_http_connect(const char *server)
{
    int               fd, rc;
    char              host[256];
    const char       *port, *colon;
    size_t            len;
    struct timeval    tv;
    struct addrinfo   hints, *res, *ai;

    colon = strrchr(server, ':');

    if (server[0] == '[') {
        len = strcspn(server + 1, "]");
        port = server[len + 1] == ']' && server[len + 2] == ':'
               ? server + len + 3 : "80";
        server++;

    } else if (colon != NULL) {
        len = (size_t) (colon - server);
        port = colon + 1;

    } else {
        len = strlen(server);
        port = "80";
    }

    if (len >= sizeof(host)) {
        kvtool_error("server name \"%s\" is too long", server);
        return -1;
    }

    memcpy(host, server, len);
    host[len] = '\0';

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;

    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        kvtool_error("cannot resolve \"%s\" port %s: %s", host, port,
                     gai_strerror(rc));
        return -1;
    }

    tv.tv_sec = KVTOOL_HTTP_TIMEOUT;
    tv.tv_usec = 0;
    fd = -1;

    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd == -1) {
            continue;
        }

        /* on Linux the send timeout bounds connect() too */
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            break;
        }

        close(fd);
        fd = -1;
    }

    if (fd == -1) {
        kvtool_error("cannot connect to %s:%s: %s", host, port,
                     strerror(errno));
    }

    freeaddrinfo(res);

    return fd;
}


static int
kvtool_http_send(int fd, const char *server, const void *p, size_t len)
{
    ssize_t      n;
    const char  *c;

    c = p;

    while (len > 0) {
        n = send(fd, c, len, MSG_NOSIGNAL);

        if (n == -1 && errno == EINTR) {
            continue;
        }

        if (n <= 0) {
            kvtool_error("sending to %s failed: %s", server,
                         n == 0 ? "connection closed" : strerror(errno));
            return -1;
        }

        c += n;
        len -= (size_t) n;
    }

    return 0;
}


/*
 * The path prefix + key, each key byte outside RFC 3986's unreserved set
 * as %XX (a '/' too: the module decodes the key from the raw URI).
 * malloc()ed.
 */
char *
kvtool_http_path(const char *prefix, const uint8_t *key, size_t klen)
{
    char    *path, *p;
    size_t   i, plen;
    static const char  hex[] = "0123456789ABCDEF";

    plen = strlen(prefix);

    path = malloc(plen + klen * 3 + 1);
    if (path == NULL) {
        return NULL;
    }

    memcpy(path, prefix, plen);
    p = path + plen;

    for (i = 0; i < klen; i++) {
        if ((key[i] >= 'a' && key[i] <= 'z') || (key[i] >= 'A' && key[i] <= 'Z')
            || (key[i] >= '0' && key[i] <= '9') || key[i] == '-'
            || key[i] == '.' || key[i] == '_' || key[i] == '~')
        {
            *p++ = (char) key[i];

        } else {
            *p++ = '%';
            *p++ = hex[key[i] >> 4];
            *p++ = hex[key[i] & 0xf];
        }
    }

    *p = '\0';

    return path;
}


/*
 * Sends METHOD path to server, with more header lines (each ending in
 * CRLF) unless headers is NULL, and a body of type ctype unless ctype is
 * NULL; the answer's status code, or -1 (reported) if there is none.
 * Unless etag is NULL, the answer's ETag goes there (KVTOOL_ETAG_LEN + 1
 * bytes), or "" if it has none.
 */
int
kvtool_http(const char *server, const char *method, const char *path,
    const char *headers, const char *ctype, const uint8_t *body,
    size_t blen, char *etag)
{
    int      fd, status;
    char     head[512], resp[512], *p;
    size_t   have, len;
    ssize_t  n;

    if (etag != NULL) {
        etag[0] = '\0';
    }

    headers = headers != NULL ? headers : "";

    if (ctype != NULL) {
        n = snprintf(head, sizeof(head),
                     " HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s"
                     "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                     server, headers, ctype, blen);
    } else {
        n = snprintf(head, sizeof(head),
                     " HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s"
                     "\r\n", server, headers);
    }

    if (n < 0 || (size_t) n >= sizeof(head)) {
        kvtool_error("server name \"%s\" is too long", server);
        return -1;
    }

    fd = kvtool_http_connect(server);
    if (fd == -1) {
        return -1;
    }

    status = -1;

    if (kvtool_http_send(fd, server, method, strlen(method)) == 0
        && kvtool_http_send(fd, server, " ", 1) == 0
        && kvtool_http_send(fd, server, path, strlen(path)) == 0
        && kvtool_http_send(fd, server, head, (size_t) n) == 0
        && (blen == 0 || kvtool_http_send(fd, server, body, blen) == 0))
    {
        /*
         * The status line is in the first bytes; the rest (a GET's value)
         * is not needed, and closing the socket drops it.
         */
        have = 0;

        while (have < sizeof(resp) - 1) {
            n = recv(fd, resp + have, sizeof(resp) - 1 - have, 0);

            if (n == -1 && errno == EINTR) {
                continue;
            }

            if (n <= 0) {
                break;
            }

            have += (size_t) n;
        }

        resp[have] = '\0';

        p = strcasestr(resp, "\r\nETag: ");

        if (etag != NULL && p != NULL) {
            p += sizeof("\r\nETag: ") - 1;
            len = strcspn(p, "\r\n");

            if (len <= KVTOOL_ETAG_LEN) {
                memcpy(etag, p, len);
                etag[len] = '\0';
            }
        }

        if (sscanf(resp, "HTTP/1.%*1[01] %3d", &status) != 1) {
            status = -1;
            kvtool_error("%s answered %s %s with no status line%s%s",
                         server, method, path, n == -1 ? ": " : "",
                         n == -1 ? strerror(errno) : "");
        }
    }

    close(fd);

    return status;
}
