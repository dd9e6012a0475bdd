
/*
 * ngx_http_kv_module: directives, the shared zone and start-up recovery.
 */


#include "ngx_http_kv_module.h"
#include "kv_http_parse.h"


static void *ngx_http_kv_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_kv_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_kv_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_kv_zone_known(ngx_conf_t *cf,
    ngx_shm_zone_t *shm_zone);
static ngx_int_t ngx_http_kv_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_kv_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_kv_init_process(ngx_cycle_t *cycle);
static void ngx_http_kv_exit_process(ngx_cycle_t *cycle);
static void ngx_http_kv_exit_master(ngx_cycle_t *cycle);

static char *ngx_http_kv_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_kv_zone_fsync(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_kv_zone_t *ctx);
static char *ngx_http_kv_zone_size(ngx_conf_t *cf, ngx_str_t *value,
    size_t skip, size_t min, size_t max, size_t *size);
static char *ngx_http_kv(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_kv_health(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_kv_endpoint(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_kv_init_zone(ngx_shm_zone_t *shm_zone, void *data);
static ngx_int_t ngx_http_kv_check_old_zones(ngx_http_kv_zone_t *ctx);

static void *ngx_http_kv_host_alloc(void *ctx, size_t size);
static void ngx_http_kv_host_free(void *ctx, void *p);
static void ngx_http_kv_host_lock(void *ctx);
static void ngx_http_kv_host_unlock(void *ctx);
static void ngx_http_kv_host_log(void *ctx, int level, int err,
    const char *msg);
static int ngx_http_kv_host_stopping(void *ctx);
static uint64_t ngx_http_kv_host_now_ms(void *ctx);


static ngx_command_t  ngx_http_kv_commands[] = {

    { ngx_string("kv_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_kv_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("kv_var"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE3,
      ngx_http_kv_var,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("kv"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_kv,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("kv_health"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_kv_health,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("kv_ready"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_kv_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kv_loc_conf_t, ready_zone),
      ngx_http_kv_ready_handler },

    { ngx_string("kv_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_kv_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kv_loc_conf_t, status_zone),
      ngx_http_kv_status_handler },

    { ngx_string("kv_compact"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_kv_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kv_loc_conf_t, compact_zone),
      ngx_http_kv_compact_handler },

    { ngx_string("kv_list"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_kv_loc_conf_t, list),
      NULL },

    { ngx_string("kv_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_kv_metrics,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_kv_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_kv_postconfiguration,         /* postconfiguration */

    ngx_http_kv_create_main_conf,          /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_kv_create_loc_conf,           /* create location configuration */
    ngx_http_kv_merge_loc_conf             /* merge location configuration */
};


ngx_module_t  ngx_http_kv_module = {
    NGX_MODULE_V1,
    &ngx_http_kv_module_ctx,               /* module context */
    ngx_http_kv_commands,                  /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_kv_init_module,               /* init module */
    ngx_http_kv_init_process,              /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_kv_exit_process,              /* exit process */
    ngx_http_kv_exit_master,               /* exit master */
    NGX_MODULE_V1_PADDING
};


/* the index gets one bucket per this many bytes of zone */
#define NGX_HTTP_KV_BYTES_PER_BUCKET  64

#define NGX_HTTP_KV_MIN_ZONE          (64 * 1024)


static void *
ngx_http_kv_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_kv_main_conf_t  *kmcf;

    kmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_kv_main_conf_t));
    if (kmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&kmcf->zones, cf->pool, 2,
                       sizeof(ngx_http_kv_zone_t *))
        != NGX_OK
        || ngx_array_init(&kmcf->var_zones, cf->pool, 2,
                          sizeof(ngx_shm_zone_t *))
           != NGX_OK)
    {
        return NULL;
    }

    return kmcf;
}


static void *
ngx_http_kv_create_loc_conf(ngx_conf_t *cf)
{
    /*
     * set by ngx_pcalloc():
     *
     *     conf->shm_zone = NULL;
     *     conf->ready_zone = NULL;
     *     conf->status_zone = NULL;
     *     conf->compact_zone = NULL;
     *     conf->metrics_zones = NULL;
     */

    ngx_http_kv_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_kv_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->list = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_kv_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_kv_loc_conf_t  *prev = parent;
    ngx_http_kv_loc_conf_t  *conf = child;

    ngx_uint_t                 i;
    ngx_shm_zone_t            *zones[4], **metrics;
    ngx_http_core_loc_conf_t  *clcf;

    ngx_conf_merge_value(conf->list, prev->list, 0);

    /* kv_zone may come after the locations that use it: check here */

    zones[0] = conf->shm_zone;
    zones[1] = conf->ready_zone;
    zones[2] = conf->status_zone;
    zones[3] = conf->compact_zone;

    for (i = 0; i < 4; i++) {
        if (ngx_http_kv_zone_known(cf, zones[i]) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (conf->metrics_zones != NULL) {
        metrics = conf->metrics_zones->elts;

        for (i = 0; i < conf->metrics_zones->nelts; i++) {
            if (ngx_http_kv_zone_known(cf, metrics[i]) != NGX_OK) {
                return NGX_CONF_ERROR;
            }
        }
    }

    if (conf->shm_zone != NULL) {
        /*
         * The zone's max_value is the body limit of a kv location; the
         * handler answers an oversized body with a JSON 413 instead of
         * nginx's own page.
         */
        clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
        clcf->client_max_body_size = 0;
    }

    return NGX_CONF_OK;
}


/* a zone a directive names (NULL: none) must be declared by kv_zone */

static ngx_int_t
ngx_http_kv_zone_known(ngx_conf_t *cf, ngx_shm_zone_t *shm_zone)
{
    if (shm_zone != NULL && shm_zone->data == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown kv_zone \"%V\"", &shm_zone->shm.name);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_kv_postconfiguration(ngx_conf_t *cf)
{
    ngx_uint_t                i;
    ngx_shm_zone_t          **zonep;
    ngx_http_kv_main_conf_t  *kmcf;

    kmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_kv_module);
    zonep = kmcf->var_zones.elts;

    for (i = 0; i < kmcf->var_zones.nelts; i++) {
        if (ngx_http_kv_zone_known(cf, zonep[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    ngx_http_kv_install_body_filter();

    return ngx_http_kv_metrics_init(cf);
}


/*
 * kv_zone zone=NAME:SIZE path=DIR [max_key=SIZE] [max_value=SIZE]
 *         [segment_size=SIZE] [fsync=off|interval:TIME|always]
 *         [compact_ratio=PERCENT] [compact_dead=SIZE] [default_ttl=TIME]
 *         [index=hash|sorted]
 */

static char *
ngx_http_kv_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_kv_main_conf_t *kmcf = conf;

    char                 *rv;
    u_char               *p;
    size_t                size;
    ngx_int_t             ratio;
    ngx_str_t            *value, name, path, s;
    ngx_uint_t            i;
    ngx_shm_zone_t       *shm_zone;
    ngx_http_kv_zone_t   *ctx, **zonep;

    value = cf->args->elts;

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_kv_zone_t));
    if (ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    size = 0;
    ngx_str_null(&name);
    ngx_str_null(&path);

    /*
     * fsync=always by default: a 201 then means the record is on stable
     * storage, and group commit keeps that cheap under concurrency.
     */

    ctx->max_key = 1024;
    ctx->max_value = 1024 * 1024;
    ctx->segment_size = KV_SEGMENT_SIZE_DEFAULT;
    ctx->fsync = KV_FSYNC_ALWAYS;
    ctx->compact_ratio = KV_COMPACT_DEAD_PCT_DEFAULT;
    ctx->compact_dead = KV_COMPACT_DEAD_BYTES_DEFAULT;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            name.data = value[i].data + 5;
            p = (u_char *) ngx_strchr(name.data, ':');

            if (p == NULL || p == name.data) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            name.len = p - name.data;
            rv = ngx_http_kv_zone_size(cf, &value[i], p + 1 - value[i].data,
                                       NGX_HTTP_KV_MIN_ZONE,
                                       NGX_MAX_SIZE_T_VALUE, &size);

        } else if (ngx_strncmp(value[i].data, "path=", 5) == 0) {

            path.data = value[i].data + 5;
            path.len = value[i].len - 5;

            if (path.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "empty path in \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;

        } else if (ngx_strncmp(value[i].data, "max_key=", 8) == 0) {
            rv = ngx_http_kv_zone_size(cf, &value[i], 8, 1, KV_MAX_KEY_LIMIT,
                                       &ctx->max_key);

        } else if (ngx_strncmp(value[i].data, "max_value=", 10) == 0) {
            rv = ngx_http_kv_zone_size(cf, &value[i], 10, 0,
                                       KV_MAX_VALUE_LIMIT, &ctx->max_value);

        } else if (ngx_strncmp(value[i].data, "segment_size=", 13) == 0) {
            rv = ngx_http_kv_zone_size(cf, &value[i], 13,
                                       KV_SEGMENT_SIZE_MIN,
                                       KV_SEGMENT_SIZE_MAX,
                                       &ctx->segment_size);

        } else if (ngx_strncmp(value[i].data, "compact_dead=", 13) == 0) {
            rv = ngx_http_kv_zone_size(cf, &value[i], 13, 0,
                                       NGX_MAX_SIZE_T_VALUE,
                                       &ctx->compact_dead);

        } else if (ngx_strncmp(value[i].data, "compact_ratio=", 14) == 0) {
            s.data = value[i].data + 14;
            s.len = value[i].len - 14;

            if (s.len && s.data[s.len - 1] == '%') {
                s.len--;
            }

            ratio = ngx_atoi(s.data, s.len);

            if (ratio < 1 || ratio > 100) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\", it must be a percentage "
                                   "from 1 to 100", &value[i]);
                return NGX_CONF_ERROR;
            }

            ctx->compact_ratio = ratio;
            continue;

        } else if (ngx_strncmp(value[i].data, "fsync=", 6) == 0) {
            rv = ngx_http_kv_zone_fsync(cf, &value[i], ctx);

        } else if (value[i].len == 10
                   && ngx_strncmp(value[i].data, "index=hash", 10) == 0)
        {
            ctx->sorted = 0;
            continue;

        } else if (value[i].len == 12
                   && ngx_strncmp(value[i].data, "index=sorted", 12) == 0)
        {
            ctx->sorted = 1;
            continue;

        } else if (ngx_strncmp(value[i].data, "index=", 6) == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid \"%V\", it must be \"index=hash\" "
                               "or \"index=sorted\"", &value[i]);
            return NGX_CONF_ERROR;

        } else if (ngx_strncmp(value[i].data, "default_ttl=", 12) == 0) {
            s.data = value[i].data + 12;
            s.len = value[i].len - 12;

            ctx->default_ttl = ngx_parse_time(&s, 1);

            /* the bounds of X-KV-TTL: a longer one would wrap around */

            if (ctx->default_ttl == (time_t) NGX_ERROR
                || ctx->default_ttl == 0
                || ctx->default_ttl > KV_HTTP_MAX_TTL)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\", it must be a time from "
                                   "1s to %d seconds", &value[i],
                                   KV_HTTP_MAX_TTL);
                return NGX_CONF_ERROR;
            }

            continue;

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        if (rv != NGX_CONF_OK) {
            return rv;
        }
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"zone\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (path.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"path\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    /* relative to the prefix, like proxy_cache_path; null-terminated */

    if (ngx_conf_full_name(cf->cycle, &path, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    while (path.len > 1 && path.data[path.len - 1] == '/') {
        path.len--;
    }

    path.data[path.len] = '\0';

    zonep = kmcf->zones.elts;

    for (i = 0; i < kmcf->zones.nelts; i++) {
        if (zonep[i]->path.len == path.len
            && ngx_strncmp(zonep[i]->path.data, path.data, path.len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "path \"%V\" is already used by kv_zone "
                               "\"%V\"", &path, &zonep[i]->name);
            return NGX_CONF_ERROR;
        }
    }

    ctx->name = name;
    ctx->path = path;

    ctx->host.ctx = ctx;
    ctx->host.alloc = ngx_http_kv_host_alloc;
    ctx->host.free = ngx_http_kv_host_free;
    ctx->host.lock = ngx_http_kv_host_lock;
    ctx->host.unlock = ngx_http_kv_host_unlock;
    ctx->host.log = ngx_http_kv_host_log;
    ctx->host.stopping = ngx_http_kv_host_stopping;
    ctx->host.now_ms = ngx_http_kv_host_now_ms;
    ctx->host.shared = 1;

#if (NGX_THREADS)
    /* fsync and compaction run there, off the event loop */

    ctx->thread_pool = ngx_thread_pool_add(cf, NULL);
    if (ctx->thread_pool == NULL) {
        return NGX_CONF_ERROR;
    }
#endif

    shm_zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_kv_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate kv_zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_kv_init_zone;
    shm_zone->data = ctx;
    ctx->shm_zone = shm_zone;

    zonep = ngx_array_push(&kmcf->zones);
    if (zonep == NULL) {
        return NGX_CONF_ERROR;
    }

    *zonep = ctx;

    return NGX_CONF_OK;
}


/* "name=SIZE" from offset skip on, within [min, max] */

static char *
ngx_http_kv_zone_size(ngx_conf_t *cf, ngx_str_t *value, size_t skip,
    size_t min, size_t max, size_t *size)
{
    off_t      n;
    ngx_str_t  s;

    s.data = value->data + skip;
    s.len = value->len - skip;

    n = ngx_parse_offset(&s);

    if (n == NGX_ERROR || (uint64_t) n < min || (uint64_t) n > max) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"%V\", it must be a size from %uz to "
                           "%uz", value, min, max);
        return NGX_CONF_ERROR;
    }

    *size = n;

    return NGX_CONF_OK;
}


/* fsync=off|always|interval:TIME */

static char *
ngx_http_kv_zone_fsync(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_kv_zone_t *ctx)
{
    ngx_int_t  ms;
    ngx_str_t  s;

    s.data = value->data + 6;
    s.len = value->len - 6;

    if (s.len == 3 && ngx_strncmp(s.data, "off", 3) == 0) {
        ctx->fsync = KV_FSYNC_OFF;
        return NGX_CONF_OK;
    }

    if (s.len == 6 && ngx_strncmp(s.data, "always", 6) == 0) {
        ctx->fsync = KV_FSYNC_ALWAYS;
        return NGX_CONF_OK;
    }

    if (s.len > 9 && ngx_strncmp(s.data, "interval:", 9) == 0) {
        s.data += 9;
        s.len -= 9;

        ms = ngx_parse_time(&s, 0);

        if (ms != NGX_ERROR && ms > 0) {
            ctx->fsync = KV_FSYNC_INTERVAL;
            ctx->fsync_interval = ms;
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid \"%V\", it must be \"fsync=off\", "
                       "\"fsync=always\" or \"fsync=interval:TIME\"", value);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_kv(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_kv_loc_conf_t *klcf = conf;

    ngx_str_t                 *value;
    ngx_http_core_loc_conf_t  *clcf;

    if (klcf->shm_zone) {
        return "is duplicate";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    /* the key is what follows the location's literal prefix */

#if (NGX_PCRE)
    if (clcf->regex) {
        return "cannot be used in a regex location, use a prefix location";
    }
#endif

    if (clcf->named || clcf->noname) {
        return "cannot be used in a named or unnamed location";
    }

    value = cf->args->elts;

    klcf->shm_zone = ngx_shared_memory_add(cf, &value[1], 0,
                                           &ngx_http_kv_module);
    if (klcf->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    clcf->handler = ngx_http_kv_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_kv_health(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_kv_health_handler;

    return NGX_CONF_OK;
}


/*
 * kv_ready, kv_status, kv_compact NAME: a location answering for a zone;
 * cmd->offset is the zone's field in the location conf, cmd->post the
 * handler.  The zone's kv_zone line may come later in the configuration.
 */

static char *
ngx_http_kv_endpoint(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_str_t                 *value;
    ngx_shm_zone_t           **zonep;
    ngx_http_core_loc_conf_t  *clcf;

    zonep = (ngx_shm_zone_t **) ((char *) conf + cmd->offset);

    if (*zonep) {
        return "is duplicate";
    }

    value = cf->args->elts;

    *zonep = ngx_shared_memory_add(cf, &value[1], 0, &ngx_http_kv_module);
    if (*zonep == NULL) {
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = (ngx_http_handler_pt) cmd->post;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_kv_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_kv_zone_t  *octx = data;

    size_t               len;
    kv_shared_t         *sh;
    ngx_http_kv_zone_t  *ctx;

    ctx = shm_zone->data;

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;
    ctx->host.base = (uint8_t *) ctx->shpool;
    ctx->host.size = shm_zone->shm.size;

    if (octx) {

        /*
         * A reload kept the zone: the index and the open log carry on, and
         * old and new workers share them.  Moving the data would leave old
         * workers appending to the old directory.
         */

        if (octx->path.len != ctx->path.len
            || ngx_strncmp(octx->path.data, ctx->path.data, ctx->path.len)
               != 0)
        {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "kv_zone \"%V\" cannot change its path from "
                          "\"%V\" to \"%V\" on reload, restart nginx instead",
                          &ctx->name, &octx->path, &ctx->path);
            return NGX_ERROR;
        }

        /* the workers of both generations must look keys up alike */

        if (octx->sorted != ctx->sorted) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "kv_zone \"%V\" cannot change its index from "
                          "\"%s\" to \"%s\" on reload, restart nginx "
                          "instead", &ctx->name,
                          octx->sorted ? "sorted" : "hash",
                          ctx->sorted ? "sorted" : "hash");
            return NGX_ERROR;
        }

        /*
         * A reload may bring a new build of the module (a package
         * upgrade replaces the .so): it must not read a zone laid out by
         * another one.
         */

        ctx->shctx = ctx->shpool->data;

        if (ctx->shctx->magic != NGX_HTTP_KV_SHCTX_MAGIC
            || !kv_shared_compatible(ctx->shctx->sh))
        {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "kv_zone \"%V\" was laid out by another build of "
                          "ngx_http_kv_module, restart nginx to use this "
                          "one", &ctx->name);
            return NGX_ERROR;
        }

        /* the new max_key and max_value: ngx_http_kv_init_module() */

        ctx->reused = 1;

        return NGX_OK;
    }

    if (ngx_http_kv_check_old_zones(ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    ctx->shpool->log_nomem = 0;

    len = sizeof(" in kv_zone \"\"") + ctx->name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in kv_zone \"%V\"%Z", &ctx->name);

    ctx->shctx = ngx_slab_calloc(ctx->shpool, sizeof(ngx_http_kv_shctx_t));
    if (ctx->shctx == NULL) {
        return NGX_ERROR;
    }

    sh = kv_shared_create(&ctx->host,
                          shm_zone->shm.size / NGX_HTTP_KV_BYTES_PER_BUCKET,
                          ctx->max_key, ctx->max_value);
    if (sh == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "kv_zone \"%V\" is too small for its index",
                      &ctx->name);
        return NGX_ERROR;
    }

    ctx->shctx->magic = NGX_HTTP_KV_SHCTX_MAGIC;
    ctx->shctx->sh = sh;
    ctx->shpool->data = ctx->shctx;

    /* the store is opened by ngx_http_kv_init_module() */

    return NGX_OK;
}


/*
 * A fresh zone during a reload must not take over data that a zone of the
 * previous configuration still serves: a zone whose size changed is a new
 * zone to nginx, and so is a renamed one.  Refusing here fails the reload
 * cleanly; the running configuration keeps serving.
 */

static ngx_int_t
ngx_http_kv_check_old_zones(ngx_http_kv_zone_t *ctx)
{
    ngx_uint_t           i;
    ngx_list_part_t     *part;
    ngx_shm_zone_t      *ozone;
    ngx_http_kv_zone_t  *octx;

    part = (ngx_list_part_t *) &ngx_cycle->shared_memory.part;
    ozone = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            ozone = part->elts;
            i = 0;
        }

        if (ozone[i].tag != &ngx_http_kv_module || ozone[i].data == NULL) {
            continue;
        }

        octx = ozone[i].data;

        if (octx->name.len == ctx->name.len
            && ngx_strncmp(octx->name.data, ctx->name.data, ctx->name.len)
               == 0)
        {
            ngx_log_error(NGX_LOG_EMERG, ctx->shm_zone->shm.log, 0,
                          "kv_zone \"%V\" cannot change its size from %uz "
                          "to %uz on reload, restart nginx instead",
                          &ctx->name, ozone[i].shm.size,
                          ctx->shm_zone->shm.size);
            return NGX_ERROR;
        }

        if (octx->path.len == ctx->path.len
            && ngx_strncmp(octx->path.data, ctx->path.data, ctx->path.len)
               == 0)
        {
            ngx_log_error(NGX_LOG_EMERG, ctx->shm_zone->shm.log, 0,
                          "kv_zone \"%V\" cannot take over path \"%V\" "
                          "from kv_zone \"%V\" on reload, restart nginx "
                          "instead", &ctx->name, &ctx->path, &octx->name);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * Recovery runs here, in the master, once the zones exist and before any
 * worker starts, as the design puts it.  init_module also runs for
 * "nginx -t", for "nginx -s" and on every reload, and a failure here ends
 * the master: so it touches nothing when testing or signalling, does not
 * rescan zones kept from the previous cycle, and fails only at the first
 * start.  A zone
 * that cannot be opened on a reload stays closed (503) and says why.
 */

static ngx_int_t
ngx_http_kv_init_module(ngx_cycle_t *cycle)
{
    int                       rc;
    kv_conf_t                 conf;
    ngx_uint_t                i;
    ngx_core_conf_t          *ccf;
    ngx_http_kv_zone_t      **zonep, *ctx;
    ngx_http_kv_main_conf_t  *kmcf;

    if (ngx_test_config || ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_OK;
    }

    kmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_kv_module);
    if (kmcf == NULL) {
        return NGX_OK;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    zonep = kmcf->zones.elts;

    for (i = 0; i < kmcf->zones.nelts; i++) {
        ctx = zonep[i];

        conf.dir = (const char *) ctx->path.data;
        conf.max_key = ctx->max_key;
        conf.max_value = ctx->max_value;
        conf.owner_uid = (uid_t) -1;
        conf.owner_gid = (gid_t) -1;
        conf.segment_size = ctx->segment_size;
        conf.compact_dead_pct = ctx->compact_ratio;
        conf.compact_dead_bytes = ctx->compact_dead;
        conf.read_only = 0;
        conf.sorted = ctx->sorted;

        /* every acknowledgement waits for a flush: make flushes cheaper */
        conf.preallocate = ctx->fsync == KV_FSYNC_ALWAYS
                           ? KV_PREALLOCATE_DEFAULT : 0;

        /*
         * A conversion holds the master for seconds per million keys: at
         * the first start, not in a reload, where it would not reap
         * workers or answer signals meanwhile.
         */
        conf.convert = ngx_is_init_cycle(cycle->old_cycle);

        /* the master usually runs as root, the workers as "user" */

        if (geteuid() == 0 && ccf->user != (ngx_uid_t) NGX_CONF_UNSET_UINT) {
            conf.owner_uid = ccf->user;
            conf.owner_gid = ccf->group;
        }

        kv_store_init(&ctx->store, ctx->shctx->sh, &ctx->host, &conf);

        ngx_http_kv_flushed_pipes(cycle, ctx);

        if (ctx->reused) {
            kv_set_limits(&ctx->store);
            continue;
        }

        rc = kv_recover(&ctx->store);

        if (rc == KV_OK) {
            continue;
        }

        if (ngx_is_init_cycle(cycle->old_cycle)) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "kv_zone \"%V\": cannot open the store in \"%V\": "
                          "%s", &ctx->name, &ctx->path, kv_strerror(rc));
            return NGX_ERROR;
        }

        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "kv_zone \"%V\": cannot open the store in \"%V\": %s; "
                      "it answers 503 until nginx is restarted",
                      &ctx->name, &ctx->path, kv_strerror(rc));
    }

    return NGX_OK;
}


/* the cycle's kv_zone zones, or NULL without an http block */

static ngx_array_t *
ngx_http_kv_zones(ngx_cycle_t *cycle)
{
    ngx_http_kv_main_conf_t  *kmcf;

    kmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_kv_module);

    return kmcf != NULL ? &kmcf->zones : NULL;
}


static ngx_int_t
ngx_http_kv_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                i;
    ngx_http_kv_zone_t      **zonep;
    ngx_array_t              *zones;

    zones = ngx_http_kv_zones(cycle);
    if (zones == NULL) {
        return NGX_OK;
    }

    zonep = zones->elts;

    for (i = 0; i < zones->nelts; i++) {
        if (ngx_http_kv_sync_init(cycle, zonep[i]) != NGX_OK
            || ngx_http_kv_jobs_init(cycle, zonep[i]) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_kv_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                i;
    ngx_http_kv_zone_t      **zonep;
    ngx_array_t              *zones;

    zones = ngx_http_kv_zones(cycle);
    if (zones == NULL) {
        return;
    }

    zonep = zones->elts;

    for (i = 0; i < zones->nelts; i++) {
        ngx_http_kv_sync_exit(zonep[i]);
        kv_store_close(&zonep[i]->store);
    }
}


/* the workers are gone: the log ends with its last record again */

static void
ngx_http_kv_exit_master(ngx_cycle_t *cycle)
{
    ngx_uint_t                i;
    ngx_http_kv_zone_t      **zonep;
    ngx_array_t              *zones;

    zones = ngx_http_kv_zones(cycle);
    if (zones == NULL) {
        return;
    }

    zonep = zones->elts;

    for (i = 0; i < zones->nelts; i++) {
        if (zonep[i]->store.sh != NULL) {
            (void) kv_store_trim(&zonep[i]->store);
        }
    }
}


/*
 * The host interface of kvstore.  The store lock is the zone's slab mutex:
 * the master force-unlocks it when a worker dies holding it, so a worker
 * killed in the middle of a write cannot wedge the store.
 */

static void *
ngx_http_kv_host_alloc(void *ctx, size_t size)
{
    ngx_http_kv_zone_t  *zone = ctx;

    return ngx_slab_alloc_locked(zone->shpool, size);
}


static void
ngx_http_kv_host_free(void *ctx, void *p)
{
    ngx_http_kv_zone_t  *zone = ctx;

    ngx_slab_free_locked(zone->shpool, p);
}


static void
ngx_http_kv_host_lock(void *ctx)
{
    ngx_http_kv_zone_t  *zone = ctx;

    ngx_shmtx_lock(&zone->shpool->mutex);
}


static void
ngx_http_kv_host_unlock(void *ctx)
{
    ngx_http_kv_zone_t  *zone = ctx;

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


static void
ngx_http_kv_host_log(void *ctx, int level, int err, const char *msg)
{
    ngx_http_kv_zone_t  *zone = ctx;

    static const ngx_uint_t  levels[] = {
        NGX_LOG_ERR,            /* unused: kvstore levels start at 1 */
        NGX_LOG_ERR,            /* KV_LOG_ERR */
        NGX_LOG_WARN,           /* KV_LOG_WARN */
        NGX_LOG_NOTICE,         /* KV_LOG_NOTICE */
        NGX_LOG_INFO            /* KV_LOG_INFO */
    };

    if (level < KV_LOG_ERR || level > KV_LOG_INFO) {
        level = KV_LOG_ERR;
    }

    ngx_log_error(levels[level], ngx_cycle->log, err, "kv_zone \"%V\": %s",
                  &zone->name, msg);
}


/*
 * Read by a compaction in a pool thread: a worker that stops, gracefully
 * (SIGQUIT, reload) or fast (SIGTERM), would otherwise wait at exit for the
 * whole compaction, which nginx's thread pool finishes before it exits.
 */

static int
ngx_http_kv_host_stopping(void *ctx)
{
    return __atomic_load_n(&ngx_terminate, __ATOMIC_RELAXED)
           || __atomic_load_n(&ngx_quit, __ATOMIC_RELAXED)
           || __atomic_load_n(&ngx_exiting, __ATOMIC_RELAXED);
}


/* expiry times are compared with nginx's cached time, as TTLs are set */

static uint64_t
ngx_http_kv_host_now_ms(void *ctx)
{
    return ngx_http_kv_now_ms();
}
