
/*
 * ngx_http_kv_module: kv_metrics, the stores' metrics in the Prometheus
 * text exposition format (version 0.0.4), and the log-phase handler that
 * counts the requests of kv locations by method and status class, and
 * their bytes.
 *
 *     location = /metrics { kv_metrics store [other ...]; }
 *
 * Every metric is named nginx_kv_* and labelled with its zone.  All
 * counters live in the zone's shared memory: they are the store's, summed
 * over every worker, and a reload that keeps the zone keeps them.
 */


#include "ngx_http_kv_module.h"


/* room for one zone's metrics, with room to spare */
#define NGX_HTTP_KV_METRICS_ZONE_BUF  16384


/* one sample per zone: a field of kv_stats_t, or of the zone's shctx */
typedef struct {
    const char              *name;
    const char              *type;
    const char              *help;
    ngx_uint_t               shared;      /* ngx_http_kv_shctx_t's */
    size_t                   offset;
    size_t                   size;        /* 4 or 8 bytes */
} ngx_http_kv_metric_t;


#define ngx_http_kv_stat(field)                                              \
    0, offsetof(kv_stats_t, field), sizeof(((kv_stats_t *) 0)->field)

#define ngx_http_kv_shared(field)                                            \
    1, offsetof(ngx_http_kv_shctx_t, field),                                 \
    sizeof(((ngx_http_kv_shctx_t *) 0)->field)


typedef struct {
    u_char                  *pos;
    u_char                  *last;
    ngx_http_kv_zone_t     **zones;
    kv_stats_t              *stats;
    ngx_str_t               *labels;      /* zone="NAME", escaped */
    ngx_uint_t               nzones;
} ngx_http_kv_metrics_out_t;


static ngx_int_t ngx_http_kv_metrics_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_kv_metrics_log(ngx_http_request_t *r);
static void ngx_http_kv_metrics_family(ngx_http_kv_metrics_out_t *out,
    const char *name, const char *type, const char *help);
static void ngx_http_kv_metrics_requests(ngx_http_kv_metrics_out_t *out);
static void ngx_http_kv_metrics_zone_memory(ngx_http_kv_metrics_out_t *out);
static void ngx_http_kv_metrics_histogram(ngx_http_kv_metrics_out_t *out,
    const char *name, const char *help, size_t offset);
static ngx_int_t ngx_http_kv_metrics_label(ngx_pool_t *pool,
    ngx_str_t *zone, ngx_str_t *label);


static ngx_http_kv_metric_t  ngx_http_kv_metrics_simple[] = {

    { "nginx_kv_up", "gauge",
      "1 if the store is open, 0 if it answers 503.",
      ngx_http_kv_stat(open) },

    { "nginx_kv_request_bytes_total", "counter",
      "Bytes received in the requests of kv locations, headers included.",
      ngx_http_kv_shared(bytes_in) },

    { "nginx_kv_response_bytes_total", "counter",
      "Bytes sent in the responses of kv locations, headers included.",
      ngx_http_kv_shared(bytes_out) },

    { "nginx_kv_keys", "gauge",
      "Keys in the store.",
      ngx_http_kv_stat(keys) },

    { "nginx_kv_expiring_keys", "gauge",
      "Keys that have an expiry time (TTL).",
      ngx_http_kv_stat(expiring) },

    { "nginx_kv_expired_keys_total", "counter",
      "Keys dropped because their TTL ran out.",
      ngx_http_kv_stat(expired) },

    { "nginx_kv_live_bytes", "gauge",
      "Bytes of the log that hold the current records of keys.",
      ngx_http_kv_stat(live_bytes) },

    { "nginx_kv_dead_bytes", "gauge",
      "Bytes of the log that compaction can reclaim.",
      ngx_http_kv_stat(dead_bytes) },

    { "nginx_kv_segments", "gauge",
      "Segment files of the log.",
      ngx_http_kv_stat(segments) },

    { "nginx_kv_puts_total", "counter",
      "Values written.",
      ngx_http_kv_stat(puts) },

    { "nginx_kv_deletes_total", "counter",
      "Keys deleted.",
      ngx_http_kv_stat(deletes) },

    { "nginx_kv_precondition_failures_total", "counter",
      "Writes refused because If-Match or If-None-Match did not hold.",
      ngx_http_kv_stat(precond_failed) },

    { "nginx_kv_write_errors_total", "counter",
      "Appends to the log that failed.",
      ngx_http_kv_stat(write_errors) },

    { "nginx_kv_fsyncs_total", "counter",
      "Flushes of the log to stable storage.",
      ngx_http_kv_stat(fsyncs) },

    { "nginx_kv_compactions_total", "counter",
      "Compactions completed.",
      ngx_http_kv_stat(compactions) },

    { "nginx_kv_compaction_reclaimed_bytes_total", "counter",
      "Bytes of disk that compactions gave back.",
      ngx_http_kv_stat(reclaimed_bytes) },

    { "nginx_kv_recovered_records", "gauge",
      "Records that the last start-up replayed into the index.",
      ngx_http_kv_stat(recovered_records) },

    { "nginx_kv_recovery_truncated_bytes", "gauge",
      "Bytes of a torn tail that the last start-up cut off.",
      ngx_http_kv_stat(truncated_bytes) },

    { "nginx_kv_compaction_running", "gauge",
      "1 while a compaction runs.",
      ngx_http_kv_stat(compacting) },

    { NULL, NULL, NULL, 0, 0, 0 }
};


static ngx_str_t  ngx_http_kv_metrics_type =
    ngx_string("text/plain; version=0.0.4; charset=utf-8");

static const char  *ngx_http_kv_method_names[NGX_HTTP_KV_METHODS] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "other"
};


char *
ngx_http_kv_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_kv_loc_conf_t *klcf = conf;

    ngx_str_t                 *value;
    ngx_uint_t                 i;
    ngx_shm_zone_t           **zonep;
    ngx_http_core_loc_conf_t  *clcf;

    if (klcf->metrics_zones != NULL) {
        return "is duplicate";
    }

    klcf->metrics_zones = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                           sizeof(ngx_shm_zone_t *));
    if (klcf->metrics_zones == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        zonep = ngx_array_push(klcf->metrics_zones);
        if (zonep == NULL) {
            return NGX_CONF_ERROR;
        }

        /* kv_zone may come later: the location's merge checks */

        *zonep = ngx_shared_memory_add(cf, &value[i], 0, &ngx_http_kv_module);
        if (*zonep == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_kv_metrics_handler;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_kv_metrics_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_kv_metrics_log;

    return NGX_OK;
}


/* counts a request that a kv location answered */

static ngx_int_t
ngx_http_kv_metrics_log(ngx_http_request_t *r)
{
    ngx_uint_t               status, method;
    ngx_http_kv_shctx_t     *shctx;
    ngx_http_kv_zone_t      *zone;
    ngx_http_kv_loc_conf_t  *klcf;

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kv_module);

    if (klcf->shm_zone == NULL) {
        return NGX_OK;
    }

    zone = klcf->shm_zone->data;
    shctx = zone->shctx;

    switch (r->method) {
    case NGX_HTTP_GET:
        method = 0;
        break;
    case NGX_HTTP_HEAD:
        method = 1;
        break;
    case NGX_HTTP_POST:
        method = 2;
        break;
    case NGX_HTTP_PUT:
        method = 3;
        break;
    case NGX_HTTP_DELETE:
        method = 4;
        break;
    default:
        method = 5;
    }

    /* as $status has it: a client that closed early is 499 */

    status = r->err_status ? r->err_status : r->headers_out.status;

    if (status >= 100 && status < 600) {
        (void) ngx_atomic_fetch_add(&shctx->requests[method][status / 100 - 1],
                                    1);
    }

    (void) ngx_atomic_fetch_add(&shctx->bytes_in, r->request_length);
    (void) ngx_atomic_fetch_add(&shctx->bytes_out, r->connection->sent);

    return NGX_OK;
}


static ngx_int_t
ngx_http_kv_metrics_handler(ngx_http_request_t *r)
{
    size_t                      size;
    u_char                     *start, *p;
    ngx_int_t                   rc;
    ngx_uint_t                  i;
    ngx_shm_zone_t            **zonep;
    ngx_http_kv_metric_t       *m;
    ngx_http_kv_loc_conf_t     *klcf;
    ngx_http_kv_metrics_out_t   out;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    klcf = ngx_http_get_module_loc_conf(r, ngx_http_kv_module);
    zonep = klcf->metrics_zones->elts;

    out.nzones = klcf->metrics_zones->nelts;
    out.zones = ngx_palloc(r->pool, out.nzones * sizeof(ngx_http_kv_zone_t *));
    out.stats = ngx_palloc(r->pool, out.nzones * sizeof(kv_stats_t));
    out.labels = ngx_palloc(r->pool, out.nzones * sizeof(ngx_str_t));

    size = out.nzones * NGX_HTTP_KV_METRICS_ZONE_BUF;
    out.pos = ngx_pnalloc(r->pool, size);

    if (out.zones == NULL || out.stats == NULL || out.labels == NULL
        || out.pos == NULL)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    out.last = out.pos + size;

    for (i = 0; i < out.nzones; i++) {
        out.zones[i] = zonep[i]->data;
        kv_stats(&out.zones[i]->store, &out.stats[i]);

        if (ngx_http_kv_metrics_label(r->pool, &out.zones[i]->name,
                                      &out.labels[i])
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    start = out.pos;

    ngx_http_kv_metrics_requests(&out);

    for (m = ngx_http_kv_metrics_simple; m->name; m++) {
        ngx_http_kv_metrics_family(&out, m->name, m->type, m->help);

        for (i = 0; i < out.nzones; i++) {
            p = m->shared ? (u_char *) out.zones[i]->shctx
                          : (u_char *) &out.stats[i];
            p += m->offset;

            out.pos = ngx_slprintf(out.pos, out.last, "%s{%V} %uL\n",
                                   m->name, &out.labels[i],
                                   m->size == sizeof(uint32_t)
                                   ? (uint64_t) *(uint32_t *) p
                                   : *(uint64_t *) p);
        }
    }

    ngx_http_kv_metrics_family(&out, "nginx_kv_recovery_duration_seconds",
                               "gauge", "How long the last start-up "
                               "took to rebuild the index.");
    for (i = 0; i < out.nzones; i++) {
        out.pos = ngx_slprintf(out.pos, out.last,
                               "nginx_kv_recovery_duration_seconds{%V} "
                               "%uL.%03uL\n", &out.labels[i],
                               out.stats[i].recovery_ms / 1000,
                               out.stats[i].recovery_ms % 1000);
    }

    ngx_http_kv_metrics_family(&out, "nginx_kv_recovery_segments",
                               "gauge", "Segments the last start-up "
                               "loaded from hint files or scanned.");
    for (i = 0; i < out.nzones; i++) {
        out.pos = ngx_slprintf(out.pos, out.last,
                               "nginx_kv_recovery_segments{%V,"
                               "method=\"hints\"} %uD\n"
                               "nginx_kv_recovery_segments{%V,"
                               "method=\"scan\"} %uD\n",
                               &out.labels[i],
                               out.stats[i].recovery_hints,
                               &out.labels[i],
                               out.stats[i].recovery_scans);
    }

    ngx_http_kv_metrics_zone_memory(&out);

    ngx_http_kv_metrics_histogram(&out, "nginx_kv_fsync_duration_seconds",
                                  "How long flushes of the log to "
                                  "stable storage took.", 0);

    ngx_http_kv_metrics_histogram(&out,
                                  "nginx_kv_write_ack_duration_seconds",
                                  "From a write's append to its answer, "
                                  "durable as the fsync mode promises.",
                                  1);

    if (out.pos == out.last) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "kv_metrics: the metrics do not fit in %uz bytes",
                      size);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_kv_send(r, NGX_HTTP_OK, &ngx_http_kv_metrics_type,
                            r->method == NGX_HTTP_HEAD ? NULL : start,
                            out.pos - start);
}


static void
ngx_http_kv_metrics_family(ngx_http_kv_metrics_out_t *out, const char *name,
    const char *type, const char *help)
{
    out->pos = ngx_slprintf(out->pos, out->last, "# HELP %s %s\n"
                            "# TYPE %s %s\n", name, help, name, type);
}


static void
ngx_http_kv_metrics_requests(ngx_http_kv_metrics_out_t *out)
{
    ngx_uint_t            i, m, c;
    ngx_http_kv_shctx_t  *shctx;

    ngx_http_kv_metrics_family(out, "nginx_kv_requests_total", "counter",
                               "Requests answered by kv locations, by "
                               "method and status class.");

    for (i = 0; i < out->nzones; i++) {
        shctx = out->zones[i]->shctx;

        for (m = 0; m < NGX_HTTP_KV_METHODS; m++) {
            for (c = 0; c < NGX_HTTP_KV_CLASSES; c++) {
                out->pos = ngx_slprintf(out->pos, out->last,
                                        "nginx_kv_requests_total{%V,"
                                        "method=\"%s\",code=\"%uixx\"} "
                                        "%uA\n", &out->labels[i],
                                        ngx_http_kv_method_names[m], c + 1,
                                        shctx->requests[m][c]);
            }
        }
    }
}


static void
ngx_http_kv_metrics_zone_memory(ngx_http_kv_metrics_out_t *out)
{
    size_t               free_bytes;
    ngx_uint_t           i;
    ngx_http_kv_zone_t  *zone;

    ngx_http_kv_metrics_family(out, "nginx_kv_zone_bytes", "gauge",
                               "Shared memory of the zone that holds the "
                               "index, used and free.");

    for (i = 0; i < out->nzones; i++) {
        zone = out->zones[i];

        ngx_shmtx_lock(&zone->shpool->mutex);
        free_bytes = zone->shpool->pfree * ngx_pagesize;
        ngx_shmtx_unlock(&zone->shpool->mutex);

        out->pos = ngx_slprintf(out->pos, out->last,
                                "nginx_kv_zone_bytes{%V,state=\"used\"} %uz\n"
                                "nginx_kv_zone_bytes{%V,state=\"free\"} %uz\n",
                                &out->labels[i],
                                zone->shm_zone->shm.size - free_bytes,
                                &out->labels[i], free_bytes);
    }
}


/*
 * which 0: the engine's fsync latency, 1: the module's acknowledgement
 * latency; the buckets are cumulative, as Prometheus has them.
 */

static void
ngx_http_kv_metrics_histogram(ngx_http_kv_metrics_out_t *out,
    const char *name, const char *help, size_t which)
{
    u_char                  le[NGX_INT64_LEN + 8];
    uint64_t                n;
    ngx_uint_t              i, b;
    kv_hist_t              *h;
    static const uint64_t   bounds[KV_HIST_N] = KV_HIST_BOUNDS_US;

    ngx_http_kv_metrics_family(out, name, "histogram", help);

    for (i = 0; i < out->nzones; i++) {
        h = which ? &out->zones[i]->shctx->ack_latency
                  : &out->stats[i].fsync_latency;
        n = 0;

        for (b = 0; b <= KV_HIST_N; b++) {
            n += h->count[b];

            if (b < KV_HIST_N) {
                ngx_sprintf(le, "%uL.%06uL%Z", bounds[b] / 1000000,
                            bounds[b] % 1000000);

            } else {
                ngx_sprintf(le, "+Inf%Z");
            }

            out->pos = ngx_slprintf(out->pos, out->last,
                                    "%s_bucket{%V,le=\"%s\"} %uL\n", name,
                                    &out->labels[i], le, n);
        }

        out->pos = ngx_slprintf(out->pos, out->last,
                                "%s_sum{%V} %uL.%06uL\n%s_count{%V} %uL\n",
                                name, &out->labels[i], h->sum_us / 1000000,
                                h->sum_us % 1000000, name, &out->labels[i],
                                n);
    }
}


/* zone="NAME", with \ and " escaped as the format wants */

static ngx_int_t
ngx_http_kv_metrics_label(ngx_pool_t *pool, ngx_str_t *zone,
    ngx_str_t *label)
{
    u_char      *p;
    ngx_uint_t   i;

    label->data = ngx_pnalloc(pool, sizeof("zone=\"\"") - 1 + 2 * zone->len);
    if (label->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(label->data, "zone=\"", sizeof("zone=\"") - 1);

    for (i = 0; i < zone->len; i++) {
        if (zone->data[i] == '\\' || zone->data[i] == '"') {
            *p++ = '\\';
        }

        *p++ = zone->data[i];
    }

    *p++ = '"';
    label->len = p - label->data;

    return NGX_OK;
}
