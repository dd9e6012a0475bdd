
/*
 * ngx_http_kv_module: sending responses.  Every answer of the module goes
 * out through ngx_http_kv_send(); errors are JSON, {"error": "..."}.
 */


#include "ngx_http_kv_module.h"

#include <cjson/cJSON.h>


/* indexed by KV_TYPE_* */
ngx_str_t  ngx_http_kv_types[KV_TYPE_JSON + 1] = {
    ngx_string("application/octet-stream"),     /* KV_TYPE_OCTET */
    ngx_string("application/json")              /* KV_TYPE_JSON */
};


/* kvstore has logged the details of its own failures */

ngx_int_t
ngx_http_kv_store_error(ngx_http_request_t *r, int rc)
{
    ngx_uint_t  status;

    switch (rc) {

    case KV_NOTFOUND:
        status = NGX_HTTP_NOT_FOUND;
        break;

    case KV_ENOMEM:
    case KV_ENOSPC:
        status = NGX_HTTP_INSUFFICIENT_STORAGE;
        break;

    case KV_EINVAL:
        status = NGX_HTTP_BAD_REQUEST;
        break;

    case KV_EPRECOND:
        status = NGX_HTTP_PRECONDITION_FAILED;
        break;

    case KV_EUNAVAIL:
        status = NGX_HTTP_SERVICE_UNAVAILABLE;
        break;

    default:
        status = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_kv_send_error(r, status, kv_strerror(rc));
}


ngx_int_t
ngx_http_kv_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *msg)
{
    /* a write that failed to become durable hands out no ETag */

    if (r->headers_out.etag != NULL) {
        r->headers_out.etag->hash = 0;
        r->headers_out.etag = NULL;
    }

    return ngx_http_kv_send_json(r, status, "error", msg);
}


/* a JSON object of one string member, {"name": "text"} */

ngx_int_t
ngx_http_kv_send_json(ngx_http_request_t *r, ngx_uint_t status,
    const char *name, const char *text)
{
    cJSON  *obj;

    obj = cJSON_CreateObject();

    if (obj != NULL && cJSON_AddStringToObject(obj, name, text) == NULL) {
        cJSON_Delete(obj);
        obj = NULL;
    }

    return ngx_http_kv_send_object(r, status, obj);
}


/* sends obj (NULL: an allocation failed) and frees it */

ngx_int_t
ngx_http_kv_send_object(ngx_http_request_t *r, ngx_uint_t status,
    cJSON *obj)
{
    char    *json;
    size_t   len;
    u_char  *body;

    if (obj == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);

    if (json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = ngx_strlen(json);

    body = ngx_pnalloc(r->pool, len);
    if (body != NULL) {
        ngx_memcpy(body, json, len);
    }

    cJSON_free(json);

    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_kv_send(r, status, &ngx_http_kv_types[KV_TYPE_JSON],
                            body, len);
}


/* ETag: "<sequence>", the record's sequence number */

ngx_int_t
ngx_http_kv_set_etag(ngx_http_request_t *r, uint64_t seq)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->value.data = ngx_pnalloc(r->pool, NGX_INT64_LEN + 2);
    if (h->value.data == NULL) {
        h->hash = 0;
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "ETag");
    h->value.len = ngx_sprintf(h->value.data, "\"%uL\"", seq)
                   - h->value.data;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    r->headers_out.etag = h;

    return NGX_OK;
}


/* X-KV-Expires: the HTTP date a key's TTL ends, if it has one */

ngx_int_t
ngx_http_kv_set_expires(ngx_http_request_t *r, uint64_t expires_at_ms)
{
    ngx_table_elt_t  *h;

    if (expires_at_ms == 0) {
        return NGX_OK;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->value.data = ngx_pnalloc(r->pool,
                                sizeof("Mon, 28 Sep 1970 06:00:00 GMT") - 1);
    if (h->value.data == NULL) {
        h->hash = 0;
        return NGX_ERROR;
    }

    /* the second it ends in, rounded up: never earlier than the key does */

    h->hash = 1;
    ngx_str_set(&h->key, "X-KV-Expires");
    h->value.len = ngx_http_time(h->value.data,
                                 (time_t) ((expires_at_ms + 999) / 1000))
                   - h->value.data;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


/*
 * Sends a complete response.  data may be NULL with a non-zero len for a
 * HEAD response; type may be NULL for an empty body.  The module decides
 * conditional requests itself: nginx's not_modified filter would compare
 * If-Match with a write's new ETag, and answer If-Unmodified-Since with
 * 412 for lack of a Last-Modified.
 */

ngx_int_t
ngx_http_kv_send(ngx_http_request_t *r, ngx_uint_t status, ngx_str_t *type,
    u_char *data, size_t len)
{
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (data == NULL || len == 0) {
        return ngx_http_kv_send_chain(r, status, type, NULL, data == NULL,
                                      len);
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = data;
    b->last = data + len;
    b->memory = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_kv_send_chain(r, status, type, &out, 0, len);
}


/*
 * ngx_http_kv_send() of a body already in buffers (NULL for none): len
 * bytes of memory or of a file.
 */

ngx_int_t
ngx_http_kv_send_chain(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, ngx_chain_t *out, ngx_uint_t header_only, size_t len)
{
    ngx_int_t     rc;
    ngx_chain_t  *cl;

    r->headers_out.status = status;
    r->headers_out.content_length_n = (status == NGX_HTTP_NOT_MODIFIED)
                                      ? -1 : (off_t) len;
    r->disable_not_modified = 1;

    if (type != NULL) {
        r->headers_out.content_type = *type;
        r->headers_out.content_type_len = type->len;
        r->headers_out.content_type_lowcase = NULL;
    }

    if (header_only) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    if (out == NULL) {
        return ngx_http_send_special(r, NGX_HTTP_LAST);
    }

    for (cl = out; cl->next; cl = cl->next) { /* void */ }

    cl->buf->last_buf = (r == r->main) ? 1 : 0;
    cl->buf->last_in_chain = 1;

    return ngx_http_output_filter(r, out);
}
