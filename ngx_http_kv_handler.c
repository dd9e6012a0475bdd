
/*
 * ngx_http_kv_module: the content handlers.  In a kv location, the key is
 * the rest of the path after the location's prefix: GET and HEAD read it,
 * POST and PUT write it, DELETE removes it.  Writes may carry a TTL
 * (X-KV-TTL or ?ttl=) and, like reads, If-Match / If-None-Match on the
 * ETag, which is the record's sequence number.  Also the kv_health,
 * kv_ready, kv_status and kv_compact locations, and the body filter that
 * bounds chunked bodies.
 */


#include "ngx_http_kv_module.h"
#include "kv_http_parse.h"

#include <cjson/cJSON.h>


/* nginx defines no name for it */
#define NGX_HTTP_KV_NOT_ACCEPTABLE  406


/* a GET retries when a compaction moved the record under it */
#define NGX_HTTP_KV_READ_TRIES  3

/*
 * A value from this size up is sent from its segment file, as nginx sends
 * a static file (sendfile, or output_buffers), not copied whole into
 * memory.  bench/values.sh measures the choice (bench/README.md); it
 * builds the module with other sizes through -DNGX_HTTP_KV_FILE_MIN=.
 */
#ifndef NGX_HTTP_KV_FILE_MIN
#define NGX_HTTP_KV_FILE_MIN    (64 * 1024)
#endif


typedef struct {
    ngx_str_t                key;
    kv_write_t               write;       /* type, expiry, conditions */
    unsigned                 too_large:1; /* a chunked body over max_value */
} ngx_http_kv_ctx_t;


static ngx_int_t ngx_http_kv_get(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, ngx_str_t *key);
static ngx_int_t ngx_http_kv_open(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, ngx_str_t *key, kv_loc_t *loc,
    ngx_chain_t **out, int *rc);
static ngx_int_t ngx_http_kv_delete(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, ngx_str_t *key);
static ngx_int_t ngx_http_kv_put(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, ngx_str_t *key);
static void ngx_http_kv_put_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_kv_read_body(ngx_http_request_t *r,
    ngx_str_t *value);
static ngx_int_t ngx_http_kv_parse_key(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, ngx_str_t *key, const char **err);
static ngx_int_t ngx_http_kv_parse_type(ngx_http_request_t *r,
    unsigned *type);
static ngx_int_t ngx_http_kv_parse_ttl(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, uint64_t *expires, const char **err);
static ngx_int_t ngx_http_kv_parse_conds(ngx_http_request_t *r,
    kv_write_t *w, const char **err);
static ngx_int_t ngx_http_kv_parse_etags(ngx_http_request_t *r,
    ngx_table_elt_t *h, ngx_uint_t weak, kv_cond_t *cond);
static ngx_int_t ngx_http_kv_written(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, ngx_str_t *key, kv_write_t *w,
    ngx_uint_t status);
static ngx_int_t ngx_http_kv_want_json(ngx_http_request_t *r,
    ngx_uint_t *json);
static ngx_http_kv_zone_t *ngx_http_kv_endpoint_zone(ngx_http_request_t *r,
    size_t offset);


static ngx_http_request_body_filter_pt  ngx_http_next_request_body_filter;


ngx_int_t
ngx_http_kv_handler(ngx_http_request_t *r)
{
    ngx_int_t                rc, status;
    ngx_str_t                key;
    const char              *err;
    ngx_table_elt_t         *allow;
    ngx_http_kv_zone_t      *zone;
    ngx_http_kv_loc_conf_t  *klcf;

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kv_module);
    zone = klcf->shm_zone->data;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_POST|NGX_HTTP_PUT
                       |NGX_HTTP_DELETE)))
    {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        allow = ngx_list_push(&r->headers_out.headers);
        if (allow == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        allow->hash = 1;
        ngx_str_set(&allow->key, "Allow");
        ngx_str_set(&allow->value, "GET, HEAD, POST, PUT, DELETE");
#if (nginx_version >= 1023000)
        allow->next = NULL;
#endif

        return ngx_http_kv_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                      "method not allowed");
    }

    status = ngx_http_kv_parse_key(r, zone, &key, &err);

    /* the location itself: a listing of keys, where kv_list allows it */

    if (status == NGX_OK && key.len == 0) {
        if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
            status = NGX_HTTP_BAD_REQUEST;
            err = "empty key";

        } else if (!klcf->list) {
            status = NGX_HTTP_FORBIDDEN;
            err = "listing keys is off here (kv_list)";
        }
    }

    if (status == NGX_OK && (r->method & (NGX_HTTP_POST|NGX_HTTP_PUT))) {
        return ngx_http_kv_put(r, zone, &key);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (status != NGX_OK) {
        return ngx_http_kv_send_error(r, status, err);
    }

    if (key.len == 0) {
        return ngx_http_kv_list(r, zone);
    }

    if (r->method & NGX_HTTP_DELETE) {
        return ngx_http_kv_delete(r, zone, &key);
    }

    return ngx_http_kv_get(r, zone, &key);
}


/*
 * Reads the key's value into the pool (only the sequence number if value
 * is NULL), looking it up again if a compaction moved it meanwhile.
 * NGX_OK; NGX_DECLINED with the store's *rc; NGX_ABORT if the value is
 * longer than max (0: no limit), with loc set; NGX_ERROR if out of memory.
 */

ngx_int_t
ngx_http_kv_fetch(ngx_http_kv_zone_t *zone, ngx_pool_t *pool, ngx_str_t *key,
    kv_loc_t *loc, u_char **value, size_t max, int *rc)
{
    u_char      *frame;
    ngx_uint_t   tries;

    tries = NGX_HTTP_KV_READ_TRIES;

    do {
        *rc = kv_lookup(&zone->store, key->data, key->len, loc);
        if (*rc != KV_OK) {
            return NGX_DECLINED;
        }

        if (value == NULL) {
            *rc = kv_read_seq(&zone->store, loc);
            continue;
        }

        if (max != 0 && loc->vlen > max) {
            return NGX_ABORT;
        }

        frame = ngx_pnalloc(pool, loc->flen);
        if (frame == NULL) {
            return NGX_ERROR;
        }

        *rc = kv_read(&zone->store, loc, frame);
        *value = frame + loc->flen - loc->vlen;

    } while (*rc == KV_ESTALE && --tries);

    return *rc == KV_OK ? NGX_OK : NGX_DECLINED;
}


/*
 * GET and HEAD.  The ETag is the record's sequence number; If-Match
 * (strong comparison) and If-None-Match (weak) are decided here, so
 * nginx's not_modified filter, which knows no better ETag, stays out
 * (ngx_http_kv_send()).  A missing key is 404 whatever the conditions.
 */

static ngx_int_t
ngx_http_kv_get(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    ngx_str_t *key)
{
    int          rc;
    u_char       *value;
    ngx_int_t     status;
    ngx_uint_t    json, head;
    ngx_chain_t  *file;
    kv_loc_t      loc;
    kv_write_t   conds;
    const char  *err;

    status = ngx_http_kv_want_json(r, &json);
    if (status != NGX_OK) {
        return ngx_http_kv_send_error(r, status,
                                      "unsupported format, use format=json");
    }

    ngx_memzero(&conds, sizeof(kv_write_t));

    if (ngx_http_kv_parse_conds(r, &conds, &err) != NGX_OK) {
        return ngx_http_kv_send_error(r, NGX_HTTP_BAD_REQUEST, err);
    }

    /* HEAD needs the value only to check it is JSON */

    head = (r->method == NGX_HTTP_HEAD);
    value = NULL;
    file = NULL;

    /* a big value not checked for JSON here is sent from its file */

    switch (ngx_http_kv_fetch(zone, r->pool, key, &loc,
                              (head && !json) ? NULL : &value,
                              json ? 0 : NGX_HTTP_KV_FILE_MIN - 1, &rc))
    {
    case NGX_OK:
        break;

    case NGX_ABORT:
        status = ngx_http_kv_open(r, zone, key, &loc, &file, &rc);

        if (status == NGX_DECLINED) {
            return ngx_http_kv_store_error(r, rc);
        }

        if (status != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        break;

    case NGX_DECLINED:
        return ngx_http_kv_store_error(r, rc);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json && loc.type != KV_TYPE_JSON) {
        if (!kv_http_is_json(value, loc.vlen)) {
            return ngx_http_kv_send_error(r, NGX_HTTP_KV_NOT_ACCEPTABLE,
                                          "the value is not valid JSON");
        }

        loc.type = KV_TYPE_JSON;
    }

    if (ngx_http_kv_set_etag(r, loc.seq) != NGX_OK
        || ngx_http_kv_set_expires(r, loc.expires_at_ms) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (conds.if_match.n && !kv_cond_holds(&conds.if_match, loc.seq))
    {
        return ngx_http_kv_send_error(r, NGX_HTTP_PRECONDITION_FAILED,
                                      "the key's ETag does not match "
                                      "If-Match");
    }

    if (conds.if_none_match.n
        && kv_cond_holds(&conds.if_none_match, loc.seq))
    {
        return ngx_http_kv_send(r, NGX_HTTP_NOT_MODIFIED, NULL, NULL, 0);
    }

    if (file != NULL) {
        return ngx_http_kv_send_chain(r, NGX_HTTP_OK,
                                      &ngx_http_kv_types[loc.type], file, 0,
                                      loc.vlen);
    }

    return ngx_http_kv_send(r, NGX_HTTP_OK, &ngx_http_kv_types[loc.type],
                            head ? NULL : value, loc.vlen);
}


/*
 * The value at loc as buffers of its segment file, whose descriptor the
 * request's pool closes; looked up again if a compaction moved it.  The
 * bytes before the value's first page boundary are read into memory:
 * sendfile() from an offset inside a page moves every page in two pieces,
 * about a fifth slower (bench/README.md).  NGX_OK, NGX_DECLINED with the
 * store's *rc, or NGX_ERROR.
 */

static ngx_int_t
ngx_http_kv_open(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    ngx_str_t *key, kv_loc_t *loc, ngx_chain_t **out, int *rc)
{
    int                        fd;
    off_t                      start;
    size_t                     lead;
    ssize_t                    n;
    ngx_buf_t                 *mb, *fb;
    ngx_uint_t                 tries;
    ngx_chain_t               *cl;
    ngx_pool_cleanup_t        *cln;
    ngx_pool_cleanup_file_t   *clnf;

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_pool_cleanup_file_t));
    fb = ngx_calloc_buf(r->pool);
    cl = ngx_alloc_chain_link(r->pool);

    if (cln == NULL || fb == NULL || cl == NULL) {
        return NGX_ERROR;
    }

    fb->file = ngx_pcalloc(r->pool, sizeof(ngx_file_t));
    if (fb->file == NULL) {
        return NGX_ERROR;
    }

    tries = NGX_HTTP_KV_READ_TRIES;

    for ( ;; ) {
        *rc = kv_open_value(&zone->store, key->data, key->len, loc, &fd);

        if (*rc != KV_ESTALE || --tries == 0) {
            break;
        }

        *rc = kv_lookup(&zone->store, key->data, key->len, loc);
        if (*rc != KV_OK) {
            return NGX_DECLINED;
        }
    }

    if (*rc != KV_OK) {
        return NGX_DECLINED;
    }

    clnf = cln->data;
    clnf->fd = fd;
    clnf->name = zone->path.data;
    clnf->log = r->connection->log;
    cln->handler = ngx_pool_cleanup_file;

    fb->file->fd = fd;
    fb->file->name = zone->path;
    fb->file->log = r->connection->log;

    start = (off_t) kv_value_offset(loc);
    lead = (ngx_pagesize - (size_t) start % ngx_pagesize) % ngx_pagesize;
    lead = ngx_min(lead, loc->vlen);

    /* an empty value (a retry found the key overwritten) is no file part */

    fb->in_file = (loc->vlen > lead);
    fb->sync = !fb->in_file;
    fb->file_pos = start + (off_t) lead;
    fb->file_last = start + (off_t) loc->vlen;

    cl->buf = fb;
    cl->next = NULL;
    *out = cl;

    if (lead == 0) {
        return NGX_OK;
    }

    mb = ngx_create_temp_buf(r->pool, lead);
    cl = ngx_alloc_chain_link(r->pool);

    if (mb == NULL || cl == NULL) {
        return NGX_ERROR;
    }

    n = ngx_read_file(fb->file, mb->pos, lead, start);

    if (n != (ssize_t) lead) {
        if (n != NGX_ERROR) {
            ngx_log_error(NGX_LOG_CRIT, r->connection->log, 0,
                          "kv_zone \"%V\": %z of %uz bytes of the value of "
                          "key \"%V\" read from a segment in \"%V\"",
                          &zone->name, n, lead, key, &zone->path);
        }

        return NGX_ERROR;
    }

    mb->last = mb->pos + lead;

    cl->buf = mb;
    cl->next = *out;
    *out = cl;

    return NGX_OK;
}


static ngx_int_t
ngx_http_kv_delete(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    ngx_str_t *key)
{
    kv_write_t   w;
    const char  *err;

    ngx_memzero(&w, sizeof(kv_write_t));
    w.tombstone = 1;

    if (ngx_http_kv_parse_conds(r, &w, &err) != NGX_OK) {
        return ngx_http_kv_send_error(r, NGX_HTTP_BAD_REQUEST, err);
    }

    return ngx_http_kv_written(r, zone, key, &w, NGX_HTTP_OK);
}


/*
 * Makes the write w of the request's key and answers: at once on
 * failure, else through ngx_http_kv_write_done(), with the new ETag.
 */

static ngx_int_t
ngx_http_kv_written(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    ngx_str_t *key, kv_write_t *w, ngx_uint_t status)
{
    int       rc;
    uint64_t  start;

    start = ngx_http_kv_now_us();

    rc = kv_write(&zone->store, key->data, key->len, w);

    if (rc == KV_ENOMEM && zone->sorted) {
        /* a merge moves the index's keys into sorted segments */
        (void) ngx_http_kv_start_compaction(zone, 0);

        return ngx_http_kv_send_error(r, NGX_HTTP_INSUFFICIENT_STORAGE,
                                      "the index memory is full until a "
                                      "merge moves keys to sorted "
                                      "segments; retry");
    }

    if (rc == KV_EPRECOND) {
        return ngx_http_kv_send_error(r, NGX_HTTP_PRECONDITION_FAILED,
                                      "the key's ETag does not satisfy "
                                      "If-Match or If-None-Match");
    }

    if (rc != KV_OK) {
        return ngx_http_kv_store_error(r, rc);
    }

    if (w->merge_due) {
        (void) ngx_http_kv_start_compaction(zone, 0);
    }

    if (ngx_http_kv_set_etag(r, w->seq) != NGX_OK
        || ngx_http_kv_set_expires(r, w->tombstone ? 0 : w->expires_at_ms)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_kv_write_done(r, zone, status, start);
}


static ngx_int_t
ngx_http_kv_put(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    ngx_str_t *key)
{
    ngx_int_t           rc, status;
    const char         *err;
    ngx_http_kv_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_kv_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->key = *key;
    status = NGX_OK;

    if (ngx_http_kv_parse_type(r, &ctx->write.type) != NGX_OK) {
        status = NGX_HTTP_UNSUPPORTED_MEDIA_TYPE;
        err = "Content-Type must be application/octet-stream or "
              "application/json";

    } else if (ngx_http_kv_parse_ttl(r, zone, &ctx->write.expires_at_ms,
                                     &err)
               != NGX_OK
               || ngx_http_kv_parse_conds(r, &ctx->write, &err) != NGX_OK)
    {
        status = NGX_HTTP_BAD_REQUEST;

    } else if (r->headers_in.content_length_n > (off_t) zone->max_value) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "kv: client intended to send a %O-byte value, "
                      "max_value of kv_zone \"%V\" is %uz",
                      r->headers_in.content_length_n, &zone->name,
                      zone->max_value);

        r->expect_tested = 1;
        status = NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        err = "the value is larger than max_value";
    }

    if (status != NGX_OK) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_kv_send_error(r, status, err);
    }

    ngx_http_set_ctx(r, ctx, ngx_http_kv_module);

    rc = ngx_http_read_client_request_body(r, ngx_http_kv_put_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_kv_put_body(ngx_http_request_t *r)
{
    ngx_int_t                status;
    ngx_str_t                value;
    ngx_http_kv_ctx_t       *ctx;
    ngx_http_kv_zone_t      *zone;
    ngx_http_kv_loc_conf_t  *klcf;

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kv_module);
    zone = klcf->shm_zone->data;
    ctx = ngx_http_get_module_ctx(r, ngx_http_kv_module);

    status = ngx_http_kv_read_body(r, &value);

    if (status != NGX_OK) {
        ngx_http_finalize_request(r, status);
        return;
    }

    if (ctx->too_large || value.len > zone->max_value) {
        ngx_http_finalize_request(r,
            ngx_http_kv_send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                   "the value is larger than max_value"));
        return;
    }

    if (ctx->write.type == KV_TYPE_JSON
        && !kv_http_is_json(value.data, value.len))
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "kv: the body for a JSON key is not valid JSON");

        ngx_http_finalize_request(r,
            ngx_http_kv_send_error(r, NGX_HTTP_BAD_REQUEST,
                                   "the body is not valid JSON"));
        return;
    }

    ctx->write.value = value.data;
    ctx->write.vlen = value.len;

    ngx_http_finalize_request(r, ngx_http_kv_written(r, zone, &ctx->key,
                                                     &ctx->write,
                                                     NGX_HTTP_CREATED));
}


/*
 * The store takes a value in one piece: a body that nginx kept in one
 * buffer is used as it is, others (several buffers, or a temporary file
 * for bodies over client_body_buffer_size) are gathered into one.
 */

static ngx_int_t
ngx_http_kv_read_body(ngx_http_request_t *r, ngx_str_t *value)
{
    off_t         len, size;
    u_char       *p;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ngx_str_null(value);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        value->data = (u_char *) "";
        return NGX_OK;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL && !cl->buf->in_file) {
        value->data = cl->buf->pos;
        value->len = cl->buf->last - cl->buf->pos;
        return NGX_OK;
    }

    len = 0;

    for ( /* void */ ; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    p = ngx_pnalloc(r->pool, len ? len : 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    value->data = p;
    value->len = len;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            /* a chunked body ends with an empty buffer whose pos is NULL */
            if (b->last != b->pos) {
                p = ngx_cpymem(p, b->pos, b->last - b->pos);
            }

            continue;
        }

        size = b->file_last - b->file_pos;

        n = ngx_read_file(b->file, p, size, b->file_pos);

        if (n != size) {
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          "kv: read %z of %O bytes of the request body from "
                          "\"%V\"", n, size, &b->file->name);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p += size;
    }

    return NGX_OK;
}


/*
 * The key is the rest of the request line's path after the location's
 * prefix, percent-decoded and otherwise exactly as sent: r->uri merges
 * slashes and resolves "." and "..", which would alias distinct keys; it
 * is empty for the location itself.  Returns NGX_OK or the status to
 * answer, with *err saying why.
 */

static ngx_int_t
ngx_http_kv_parse_key(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    ngx_str_t *key, const char **err)
{
    u_char                    *src, *end;
    ssize_t                    len;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    src = r->unparsed_uri.data;
    end = ngx_strlchr(src, src + r->unparsed_uri.len, '?');

    if (end == NULL) {
        end = src + r->unparsed_uri.len;
    }

    if ((size_t) (end - src) < clcf->name.len
        || ngx_strncmp(src, clcf->name.data, clcf->name.len) != 0)
    {
        *err = "the request path must start with the location prefix";
        goto invalid;
    }

    src += clcf->name.len;

    key->data = ngx_pnalloc(r->pool, end - src);
    if (key->data == NULL) {
        *err = "out of memory";
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = kv_http_decode_key(src, end, key->data);

    if (len == -1) {
        *err = "bad percent-encoding in the key";
        goto invalid;
    }

    key->len = len;

    if (key->len > zone->max_key) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "kv: a %uz-byte key is longer than max_key %uz of "
                      "kv_zone \"%V\"", key->len, zone->max_key,
                      &zone->name);

        *err = "the key is longer than max_key";
        return NGX_HTTP_REQUEST_URI_TOO_LARGE;
    }

    return NGX_OK;

invalid:

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "kv: %s in \"%V\"", *err, &r->unparsed_uri);

    return NGX_HTTP_BAD_REQUEST;
}


/* "application/json; charset=utf-8" is JSON: parameters are ignored */

static ngx_int_t
ngx_http_kv_parse_type(ngx_http_request_t *r, unsigned *type)
{
    u_char      *p, *last;
    size_t       len;
    ngx_uint_t   i;

    if (r->headers_in.content_type == NULL) {
        return NGX_DECLINED;
    }

    p = r->headers_in.content_type->value.data;
    last = p + r->headers_in.content_type->value.len;

    len = 0;

    while (p + len < last && p[len] != ';' && p[len] != ' '
           && p[len] != '\t')
    {
        len++;
    }

    for (i = 0; i < sizeof(ngx_http_kv_types) / sizeof(ngx_str_t); i++) {
        if (len == ngx_http_kv_types[i].len
            && ngx_strncasecmp(p, ngx_http_kv_types[i].data, len) == 0)
        {
            *type = i;
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/*
 * The TTL of a write, in seconds, from X-KV-TTL or ?ttl= (not both), else
 * the zone's default_ttl: *expires is the absolute time (0: never).
 */

static ngx_int_t
ngx_http_kv_parse_ttl(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    uint64_t *expires, const char **err)
{
    int64_t           ttl;
    ngx_str_t         arg, *s;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    s = NULL;
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("X-KV-TTL") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "X-KV-TTL",
                               sizeof("X-KV-TTL") - 1) == 0)
        {
            if (s != NULL) {
                *err = "the TTL is given twice";
                return NGX_ERROR;
            }

            s = &h[i].value;
        }
    }

    if (ngx_http_arg(r, (u_char *) "ttl", 3, &arg) == NGX_OK) {
        if (s != NULL) {
            *err = "the TTL is given twice";
            return NGX_ERROR;
        }

        s = &arg;
    }

    if (s == NULL) {
        *expires = zone->default_ttl
                   ? ngx_http_kv_now_ms() + (uint64_t) zone->default_ttl * 1000
                   : 0;
        return NGX_OK;
    }

    ttl = kv_http_parse_ttl(s->data, s->len);

    if (ttl == -1) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "kv: bad TTL \"%V\"", s);

        *err = "the TTL must be a whole number of seconds from 1 to "
               "2147483647";
        return NGX_ERROR;
    }

    *expires = ngx_http_kv_now_ms() + (uint64_t) ttl * 1000;

    return NGX_OK;
}


/* If-Match and If-None-Match into w's conditions */

static ngx_int_t
ngx_http_kv_parse_conds(ngx_http_request_t *r, kv_write_t *w,
    const char **err)
{
    if (r->headers_in.if_match
        && ngx_http_kv_parse_etags(r, r->headers_in.if_match, 0,
                                   &w->if_match)
           != NGX_OK)
    {
        *err = "bad If-Match header";
        return NGX_ERROR;
    }

    if (r->headers_in.if_none_match
        && ngx_http_kv_parse_etags(r, r->headers_in.if_none_match, 1,
                                   &w->if_none_match)
           != NGX_OK)
    {
        *err = "bad If-None-Match header";
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* an If-Match or If-None-Match header into cond: see kv_http_parse.h */

static ngx_int_t
ngx_http_kv_parse_etags(ngx_http_request_t *r, ngx_table_elt_t *h,
    ngx_uint_t weak, kv_cond_t *cond)
{
    uint64_t  *seqs;

    seqs = ngx_palloc(r->pool, kv_http_etags_room(h->value.data, h->value.len)
                               * sizeof(uint64_t));
    if (seqs == NULL) {
        return NGX_ERROR;
    }

    if (kv_http_parse_etags(h->value.data, h->value.len, weak, seqs, cond)
        != 0)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* "?format=json": NGX_OK with *json set, or the status to answer */

static ngx_int_t
ngx_http_kv_want_json(ngx_http_request_t *r, ngx_uint_t *json)
{
    ngx_str_t  format;

    *json = 0;

    if (ngx_http_arg(r, (u_char *) "format", 6, &format) != NGX_OK) {
        return NGX_OK;
    }

    if (format.len == 4 && ngx_strncmp(format.data, "json", 4) == 0) {
        *json = 1;
        return NGX_OK;
    }

    return NGX_HTTP_BAD_REQUEST;
}


ngx_int_t
ngx_http_kv_health_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_kv_send_json(r, NGX_HTTP_OK, "status", "ok");
}


/* ready: the store is open, its flushes work, its directory is writable */

ngx_int_t
ngx_http_kv_ready_handler(ngx_http_request_t *r)
{
    ngx_int_t            rc;
    kv_stats_t           st;
    ngx_http_kv_zone_t  *zone;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    zone = ngx_http_kv_endpoint_zone(r,
                                     offsetof(ngx_http_kv_loc_conf_t,
                                              ready_zone));

    kv_stats(&zone->store, &st);

    if (!st.open) {
        return ngx_http_kv_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "the store is not open");
    }

    if (st.sync_failed) {
        return ngx_http_kv_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "a flush to disk failed, writes are "
                                      "refused until a restart");
    }

    if (access((char *) zone->path.data, W_OK) != 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, ngx_errno,
                      "kv_zone \"%V\": data directory \"%V\" is not "
                      "writable", &zone->name, &zone->path);

        return ngx_http_kv_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "the data directory is not writable");
    }

    return ngx_http_kv_send_json(r, NGX_HTTP_OK, "status", "ready");
}


/* kv_status: the store's counters and state as JSON, to GET */

ngx_int_t
ngx_http_kv_status_handler(ngx_http_request_t *r)
{
    cJSON               *obj, *sub;
    u_char              *name;
    size_t               free_bytes;
    ngx_int_t            rc;
    kv_stats_t           st;
    ngx_http_kv_zone_t  *zone;

    static const char   *modes[] = { "off", "interval", "always" };

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_kv_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                      "use GET for the status");
    }

    zone = ngx_http_kv_endpoint_zone(r,
                                     offsetof(ngx_http_kv_loc_conf_t,
                                              status_zone));

    name = ngx_pnalloc(r->pool, zone->name.len + 1);
    if (name == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_cpystrn(name, zone->name.data, zone->name.len + 1);

    kv_stats(&zone->store, &st);

    ngx_shmtx_lock(&zone->shpool->mutex);
    free_bytes = zone->shpool->pfree * ngx_pagesize;
    ngx_shmtx_unlock(&zone->shpool->mutex);

    obj = cJSON_CreateObject();
    if (obj == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cJSON_AddStringToObject(obj, "zone", (char *) name);
    cJSON_AddBoolToObject(obj, "open", st.open);
    cJSON_AddNumberToObject(obj, "keys", st.keys + st.table_keys);
    cJSON_AddNumberToObject(obj, "live_bytes", st.live_bytes);
    cJSON_AddNumberToObject(obj, "dead_bytes", st.dead_bytes);
    cJSON_AddNumberToObject(obj, "segments", st.segments);
    cJSON_AddNumberToObject(obj, "active_segment", st.active_segment);
    cJSON_AddNumberToObject(obj, "puts", st.puts);
    cJSON_AddNumberToObject(obj, "deletes", st.deletes);
    cJSON_AddNumberToObject(obj, "write_errors", st.write_errors);
    cJSON_AddNumberToObject(obj, "precondition_failures", st.precond_failed);

    sub = cJSON_AddObjectToObject(obj, "ttl");
    cJSON_AddNumberToObject(sub, "default_s", zone->default_ttl);
    cJSON_AddNumberToObject(sub, "expiring_keys", st.expiring);
    cJSON_AddNumberToObject(sub, "expired_keys", st.expired);

    sub = cJSON_AddObjectToObject(obj, "index");
    cJSON_AddNumberToObject(sub, "zone_bytes", zone->shm_zone->shm.size);
    cJSON_AddNumberToObject(sub, "used_bytes",
                            zone->shm_zone->shm.size - free_bytes);
    cJSON_AddNumberToObject(sub, "free_bytes", free_bytes);
    cJSON_AddStringToObject(sub, "mode", zone->sorted ? "sorted" : "hash");
    cJSON_AddNumberToObject(sub, "keys", st.keys);
    cJSON_AddNumberToObject(sub, "masks", st.masks);

    sub = cJSON_AddObjectToObject(obj, "sorted_segments");
    cJSON_AddNumberToObject(sub, "count", st.tables);
    cJSON_AddNumberToObject(sub, "runs", st.runs);
    cJSON_AddNumberToObject(sub, "keys", st.table_keys);
    cJSON_AddNumberToObject(sub, "bytes", st.table_bytes);
    cJSON_AddNumberToObject(sub, "table_file_bytes", st.table_index_bytes);

    sub = cJSON_AddObjectToObject(obj, "compaction");
    cJSON_AddBoolToObject(sub, "running", st.compacting);
    cJSON_AddNumberToObject(sub, "runs", st.compactions);
    cJSON_AddNumberToObject(sub, "reclaimed_bytes", st.reclaimed_bytes);
    cJSON_AddNumberToObject(sub, "written_bytes", st.compacted_bytes);

    sub = cJSON_AddObjectToObject(obj, "recovery");
    cJSON_AddNumberToObject(sub, "ms", st.recovery_ms);
    cJSON_AddStringToObject(sub, "method",
                            st.recovery_scans == 0 ? "hints"
                            : st.recovery_hints == 0 ? "scan"
                            : "hints and scan");
    cJSON_AddNumberToObject(sub, "segments_from_hints", st.recovery_hints);
    cJSON_AddNumberToObject(sub, "segments_scanned", st.recovery_scans);
    cJSON_AddNumberToObject(sub, "truncated_bytes", st.truncated_bytes);

    sub = cJSON_AddObjectToObject(obj, "fsync");
    cJSON_AddStringToObject(sub, "mode", modes[zone->fsync]);
    cJSON_AddNumberToObject(sub, "interval_ms",
                            zone->fsync == KV_FSYNC_INTERVAL
                            ? zone->fsync_interval : 0);
    cJSON_AddNumberToObject(sub, "count", st.fsyncs);
    cJSON_AddNumberToObject(sub, "durable_segment", st.durable_segment);
    cJSON_AddBoolToObject(sub, "failed", st.sync_failed);

    return ngx_http_kv_send_object(r, NGX_HTTP_OK, obj);
}


/* kv_compact: a POST starts a compaction, 202, or 409 if one runs */

ngx_int_t
ngx_http_kv_compact_handler(ngx_http_request_t *r)
{
    ngx_int_t            rc;
    kv_stats_t           st;
    ngx_http_kv_zone_t  *zone;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (r->method != NGX_HTTP_POST) {
        return ngx_http_kv_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                      "use POST to start a compaction");
    }

    zone = ngx_http_kv_endpoint_zone(r,
                                     offsetof(ngx_http_kv_loc_conf_t,
                                              compact_zone));

    kv_stats(&zone->store, &st);

    if (!st.open) {
        return ngx_http_kv_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "the store is not open");
    }

    switch (ngx_http_kv_start_compaction(zone, 1)) {

    case NGX_OK:
        return ngx_http_kv_send_json(r, NGX_HTTP_ACCEPTED, "status",
                                     "compaction started");

    case NGX_BUSY:
        return ngx_http_kv_send_error(r, NGX_HTTP_CONFLICT,
                                      "a compaction is already running");

    default:
        return ngx_http_kv_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "cannot start a compaction");
    }
}


/* the zone of kv_ready, kv_status or kv_compact in this location */

static ngx_http_kv_zone_t *
ngx_http_kv_endpoint_zone(ngx_http_request_t *r, size_t offset)
{
    ngx_shm_zone_t          *shm_zone;
    ngx_http_kv_loc_conf_t  *klcf;

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kv_module);
    shm_zone = *(ngx_shm_zone_t **) ((char *) klcf + offset);

    return shm_zone->data;
}


/*
 * A chunked body announces no length.  Once it passes max_value the rest
 * is read and dropped, not buffered to disk; only its end goes on, so that
 * the body handler runs and answers 413 in JSON.
 */

static ngx_int_t
ngx_http_kv_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_chain_t             *cl, last;
    ngx_http_kv_ctx_t       *ctx;
    ngx_http_kv_zone_t      *zone;
    ngx_http_kv_loc_conf_t  *klcf;

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kv_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_kv_module);

    if (klcf->shm_zone == NULL || ctx == NULL || !r->headers_in.chunked) {
        return ngx_http_next_request_body_filter(r, in);
    }

    zone = klcf->shm_zone->data;

    if (!ctx->too_large
        && r->headers_in.content_length_n > (off_t) zone->max_value)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "kv: client sent a chunked body larger than "
                      "max_value %uz of kv_zone \"%V\"",
                      zone->max_value, &zone->name);

        ctx->too_large = 1;
    }

    if (!ctx->too_large) {
        return ngx_http_next_request_body_filter(r, in);
    }

    for (cl = in; cl; cl = cl->next) {
        if (cl->buf->last_buf) {
            last.buf = cl->buf;
            last.next = NULL;

            return ngx_http_next_request_body_filter(r, &last);
        }

        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
    }

    return NGX_OK;
}


void
ngx_http_kv_install_body_filter(void)
{
    ngx_http_next_request_body_filter = ngx_http_top_request_body_filter;
    ngx_http_top_request_body_filter = ngx_http_kv_body_filter;
}
