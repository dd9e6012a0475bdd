
/*
 * Listing: GET (or HEAD) of the location itself, with no key, where
 * kv_list is on.  The engine collects a page of keys in byte-wise order
 * (kv_iter_*); here it becomes
 *
 *     {"keys": [...], "cursor": "...", "encoding": "base64",
 *      "values": [...]}
 *
 * "cursor" only while keys remain, "encoding" only on a page with a key
 * that is not UTF-8 (then every key of the page is base64), "values" only
 * with values=1.
 *
 * In index=hash a page is a pass over the whole index, tens of ms per
 * million keys (bench/list.sh): it runs in the zone's thread pool, as
 * nginx reads files with "aio threads", so the worker's other requests
 * do not wait for it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <cjson/cJSON.h>

#include "ngx_http_kv_module.h"
#include "kv_http_parse.h"


#define NGX_HTTP_KV_LIST_DEFAULT    100
#define NGX_HTTP_KV_LIST_MAX        1000
/* values=1 gives the values up to this size, the size of bigger ones */
#define NGX_HTTP_KV_LIST_VALUE_MAX  4096


typedef struct {
    ngx_str_t                key;
    cJSON                   *value;
} ngx_http_kv_item_t;


typedef struct {
    ngx_http_request_t      *request;
    ngx_http_kv_zone_t      *zone;
    kv_range_t               range;
    ngx_uint_t               values;
    kv_iter_t               *it;
    int                      rc;
} ngx_http_kv_list_ctx_t;


static ngx_int_t ngx_http_kv_list_args(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, kv_range_t *range, ngx_uint_t *values,
    const char **err);
static ngx_int_t ngx_http_kv_list_arg(ngx_http_request_t *r, char *name,
    ngx_str_t *value, const char **err);
static void ngx_http_kv_list_cleanup(void *data);
#if (NGX_THREADS)
static void ngx_http_kv_list_thread(void *data, ngx_log_t *log);
static void ngx_http_kv_list_event(ngx_event_t *ev);
#endif
static ngx_int_t ngx_http_kv_list_send(ngx_http_kv_list_ctx_t *ctx);
static cJSON *ngx_http_kv_list_value(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, ngx_str_t *key, int *rc);
static cJSON *ngx_http_kv_list_page(ngx_http_request_t *r,
    ngx_http_kv_item_t *items, ngx_uint_t n, ngx_uint_t values,
    ngx_str_t *cursor);
static cJSON *ngx_http_kv_string(ngx_http_request_t *r, u_char *data,
    size_t len, ngx_uint_t base64);


ngx_int_t
ngx_http_kv_list(ngx_http_request_t *r, ngx_http_kv_zone_t *zone)
{
    const char              *err;
    ngx_pool_cleanup_t      *cln;
    ngx_http_kv_list_ctx_t  *ctx;
#if (NGX_THREADS)
    ngx_thread_task_t       *task;
#endif

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_kv_list_ctx_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (ctx == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;
    ctx->zone = zone;

    if (ngx_http_kv_list_args(r, zone, &ctx->range, &ctx->values, &err)
        != NGX_OK)
    {
        return ngx_http_kv_send_error(r, NGX_HTTP_BAD_REQUEST, err);
    }

    /* the iterator is closed with the request, however it ends */

    cln->handler = ngx_http_kv_list_cleanup;
    cln->data = ctx;

#if (NGX_THREADS)
    task = ngx_thread_task_alloc(r->pool, sizeof(ngx_http_kv_list_ctx_t *));
    if (task == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *(ngx_http_kv_list_ctx_t **) task->ctx = ctx;
    task->handler = ngx_http_kv_list_thread;
    task->event.handler = ngx_http_kv_list_event;
    task->event.data = ctx;
    task->event.log = r->connection->log;

    if (ngx_thread_task_post(zone->thread_pool, task) == NGX_OK) {
        r->main->blocked++;
        r->aio = 1;
        r->main->count++;

        return NGX_DONE;
    }

    /* a full queue: collect the page here, once */
#endif

    ctx->rc = kv_iter_open(&zone->store, &ctx->range, &ctx->it);

    return ngx_http_kv_list_send(ctx);
}


#if (NGX_THREADS)

static void
ngx_http_kv_list_thread(void *data, ngx_log_t *log)
{
    ngx_http_kv_list_ctx_t  *ctx = *(ngx_http_kv_list_ctx_t **) data;

    ctx->rc = kv_iter_open(&ctx->zone->store, &ctx->range, &ctx->it);
}


static void
ngx_http_kv_list_event(ngx_event_t *ev)
{
    ngx_http_kv_list_ctx_t  *ctx = ev->data;

    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    r->main->blocked--;
    r->aio = 0;

    /* finalizing may free r */
    ngx_http_finalize_request(r, ngx_http_kv_list_send(ctx));
    ngx_http_run_posted_requests(c);
}

#endif


static ngx_int_t
ngx_http_kv_list_send(ngx_http_kv_list_ctx_t *ctx)
{
    int                   rc;
    size_t                klen;
    kv_loc_t              loc;
    ngx_str_t             cursor;
    ngx_uint_t            n;
    const uint8_t        *key;
    ngx_http_request_t   *r;
    ngx_http_kv_item_t   *items;

    r = ctx->request;

    if (ctx->rc != KV_OK) {
        return ngx_http_kv_store_error(r, ctx->rc);
    }

    items = ngx_pcalloc(r->pool,
                        ctx->range.limit * sizeof(ngx_http_kv_item_t));
    if (items == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (n = 0; kv_iter_next(ctx->it, &key, &klen, &loc) == KV_OK; n++) {
        items[n].key.data = (u_char *) key;
        items[n].key.len = klen;

        if (ctx->values) {
            items[n].value = ngx_http_kv_list_value(r, ctx->zone,
                                                    &items[n].key, &rc);
            if (items[n].value == NULL) {
                while (n--) {
                    cJSON_Delete(items[n].value);
                }

                return rc != KV_OK ? ngx_http_kv_store_error(r, rc)
                                   : NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }
    }

    cursor.len = 0;

    if (kv_iter_resume(ctx->it, &key, &klen) == KV_OK) {
        cursor.data = ngx_pnalloc(r->pool, kv_http_cursor_len(klen));
        if (cursor.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cursor.len = kv_http_encode_cursor(key, klen, cursor.data);
    }

    return ngx_http_kv_send_object(r, NGX_HTTP_OK,
                                   ngx_http_kv_list_page(r, items, n,
                                                         ctx->values,
                                                         &cursor));
}


/*
 * prefix=P (keys that start with P), start=K (from K on), cursor=C (after
 * the page that gave C; start is then ignored), limit=N (1 to 1000),
 * values=1; the strings percent-decoded as keys are.
 */

static ngx_int_t
ngx_http_kv_list_args(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    kv_range_t *range, ngx_uint_t *values, const char **err)
{
    ssize_t    len;
    int64_t    limit;
    ngx_str_t  prefix, start, cursor, arg;

    ngx_memzero(range, sizeof(kv_range_t));
    range->limit = NGX_HTTP_KV_LIST_DEFAULT;
    *values = 0;

    if (ngx_http_kv_list_arg(r, "prefix", &prefix, err) != NGX_OK
        || ngx_http_kv_list_arg(r, "start", &start, err) != NGX_OK)
    {
        return NGX_ERROR;
    }

    range->prefix = prefix.data;
    range->plen = prefix.len;

    if (start.data != NULL) {
        range->from = start.data;
        range->flen = start.len;
    }

    if (ngx_http_arg(r, (u_char *) "cursor", 6, &cursor) == NGX_OK) {
        arg.data = ngx_pnalloc(r->pool, cursor.len + 1);
        if (arg.data == NULL) {
            *err = "out of memory";
            return NGX_ERROR;
        }

        len = kv_http_decode_cursor(cursor.data, cursor.len, arg.data);

        if (len == -1 || (size_t) len > zone->max_key) {
            *err = "bad cursor";
            return NGX_ERROR;
        }

        range->from = arg.data;
        range->flen = len;
        range->from_excl = 1;
    }

    if (ngx_http_arg(r, (u_char *) "limit", 5, &arg) == NGX_OK) {
        limit = kv_http_parse_uint(arg.data, arg.len, NGX_HTTP_KV_LIST_MAX);

        if (limit == -1) {
            *err = "limit must be an integer from 1 to 1000";
            return NGX_ERROR;
        }

        range->limit = (uint32_t) limit;
    }

    if (ngx_http_arg(r, (u_char *) "values", 6, &arg) == NGX_OK) {
        if (arg.len != 1 || (arg.data[0] != '0' && arg.data[0] != '1')) {
            *err = "values must be 0 or 1";
            return NGX_ERROR;
        }

        *values = (arg.data[0] == '1');
    }

    if (ngx_http_arg(r, (u_char *) "format", 6, &arg) == NGX_OK
        && (arg.len != 4 || ngx_strncmp(arg.data, "json", 4) != 0))
    {
        *err = "unsupported format, use format=json";
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* a percent-decoded argument; data NULL if there is none */

static ngx_int_t
ngx_http_kv_list_arg(ngx_http_request_t *r, char *name, ngx_str_t *value,
    const char **err)
{
    ssize_t    len;
    ngx_str_t  raw;

    value->data = NULL;
    value->len = 0;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &raw) != NGX_OK) {
        return NGX_OK;
    }

    value->data = ngx_pnalloc(r->pool, raw.len + 1);
    if (value->data == NULL) {
        *err = "out of memory";
        return NGX_ERROR;
    }

    len = kv_http_decode_key(raw.data, raw.data + raw.len, value->data);

    if (len == -1) {
        *err = "bad percent-encoding in an argument";
        return NGX_ERROR;
    }

    value->len = len;

    return NGX_OK;
}


static void
ngx_http_kv_list_cleanup(void *data)
{
    ngx_http_kv_list_ctx_t  *ctx = data;

    kv_iter_close(ctx->it);
}


/*
 * A key's value for values=1, read anew, named as kvtool dump names it:
 * {"value": ...} for a JSON value, {"value_base64": "..."} for others,
 * {"size": N} past NGX_HTTP_KV_LIST_VALUE_MAX bytes, each with "etag";
 * the JSON null if the key is gone since the page was collected.
 * NULL with *rc the store's error, or KV_OK if out of memory.
 */

static cJSON *
ngx_http_kv_list_value(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    ngx_str_t *key, int *rc)
{
    u_char     *value, etag[NGX_INT64_LEN + 2];
    cJSON      *obj, *v;
    kv_loc_t    loc;
    ngx_int_t   got;

    *rc = KV_OK;
    value = NULL;

    got = ngx_http_kv_fetch(zone, r->pool, key, &loc, &value,
                            NGX_HTTP_KV_LIST_VALUE_MAX, rc);

    if (got == NGX_ABORT) {
        value = NULL;
        got = ngx_http_kv_fetch(zone, r->pool, key, &loc, NULL, 0, rc);
    }

    if (got == NGX_DECLINED && *rc == KV_NOTFOUND) {
        *rc = KV_OK;
        return cJSON_CreateNull();
    }

    if (got != NGX_OK) {
        return NULL;
    }

    obj = cJSON_CreateObject();
    if (obj == NULL) {
        return NULL;
    }

    if (value == NULL) {
        v = cJSON_AddNumberToObject(obj, "size", loc.vlen);

    } else if (loc.type == KV_TYPE_JSON
               && (v = cJSON_ParseWithLength((char *) value, loc.vlen))
                  != NULL)
    {
        cJSON_AddItemToObject(obj, "value", v);

    } else {
        v = ngx_http_kv_string(r, value, loc.vlen, 1);
        if (v != NULL) {
            cJSON_AddItemToObject(obj, "value_base64", v);
        }
    }

    *ngx_sprintf(etag, "\"%uL\"", loc.seq) = '\0';

    if (v == NULL || cJSON_AddStringToObject(obj, "etag", (char *) etag)
                     == NULL)
    {
        cJSON_Delete(obj);
        return NULL;
    }

    return obj;
}


static cJSON *
ngx_http_kv_list_page(ngx_http_request_t *r, ngx_http_kv_item_t *items,
    ngx_uint_t n, ngx_uint_t values, ngx_str_t *cursor)
{
    cJSON       *obj, *keys, *vals, *s;
    ngx_uint_t   i, base64;

    base64 = 0;

    for (i = 0; i < n; i++) {
        if (!kv_http_is_utf8(items[i].key.data, items[i].key.len)) {
            base64 = 1;
            break;
        }
    }

    obj = cJSON_CreateObject();
    if (obj == NULL) {
        goto failed;
    }

    keys = cJSON_AddArrayToObject(obj, "keys");
    vals = values ? cJSON_AddArrayToObject(obj, "values") : NULL;

    if (keys == NULL || (values && vals == NULL)) {
        goto failed;
    }

    for (i = 0; i < n; i++) {
        s = ngx_http_kv_string(r, items[i].key.data, items[i].key.len,
                               base64);
        if (s == NULL) {
            goto failed;
        }

        cJSON_AddItemToArray(keys, s);

        if (values) {
            cJSON_AddItemToArray(vals, items[i].value);
            items[i].value = NULL;
        }
    }

    if (cursor->len) {
        s = ngx_http_kv_string(r, cursor->data, cursor->len, 0);
        if (s == NULL) {
            goto failed;
        }

        cJSON_AddItemToObject(obj, "cursor", s);
    }

    if (base64 && cJSON_AddStringToObject(obj, "encoding", "base64") == NULL)
    {
        goto failed;
    }

    return obj;

failed:

    for (i = 0; i < n; i++) {
        cJSON_Delete(items[i].value);
    }

    cJSON_Delete(obj);

    return NULL;
}


/* a JSON string of data, as is (UTF-8 checked by the caller) or base64 */

static cJSON *
ngx_http_kv_string(ngx_http_request_t *r, u_char *data, size_t len,
    ngx_uint_t base64)
{
    ngx_str_t  src, dst;

    src.data = data;
    src.len = len;

    dst.len = base64 ? ngx_base64_encoded_length(len) : len;
    dst.data = ngx_pnalloc(r->pool, dst.len + 1);

    if (dst.data == NULL) {
        return NULL;
    }

    if (base64) {
        ngx_encode_base64(&dst, &src);

    } else {
        ngx_memcpy(dst.data, data, len);
    }

    dst.data[dst.len] = '\0';

    return cJSON_CreateString((char *) dst.data);
}
