
/*
 * ngx_http_kv_module: nginx as a persistent key-value store.
 *
 * ngx_http_kv_module.c    directives, the shared zone, start-up recovery,
 *                         the host interface the engine runs on
 * ngx_http_kv_variables.c kv_var: nginx variables whose value is a key's
 * ngx_http_kv_metrics.c   kv_metrics: Prometheus metrics; the log-phase
 *                         counters of requests and bytes
 * ngx_http_kv_handler.c   the content handlers: keys (TTL, ETags and
 *                         conditions), health, readiness, status,
 *                         compaction; the chunked-body limit
 * ngx_http_kv_list.c      listing keys in order (kv_list): a page as JSON
 * ngx_http_kv_sync.c      when a write is answered: group commit under
 *                         fsync=always, the fsync=interval timer
 * ngx_http_kv_jobs.c      thread-pool jobs (flush, hints, compaction) and
 *                         the maintenance timer that starts them
 * ngx_http_kv_response.c  sending responses and JSON errors
 * kv_http_parse.c         the handlers' parsers of keys, JSON, TTLs, ETag
 *                         lists and cursors, free of nginx for fuzz/
 * kvstore/                the storage engine (no nginx code), used only
 *                         through kvstore.h
 *
 * Calls go one way, down this list: a file calls only files listed after
 * it (the handlers are named in the module's directive table).
 */


#ifndef _NGX_HTTP_KV_MODULE_H_INCLUDED_
#define _NGX_HTTP_KV_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "kvstore.h"


typedef struct ngx_http_kv_zone_s  ngx_http_kv_zone_t;
typedef struct ngx_http_kv_job_s   ngx_http_kv_job_t;

struct cJSON;


#define NGX_HTTP_KV_METHODS  6     /* GET, HEAD, POST, PUT, DELETE, other */
#define NGX_HTTP_KV_CLASSES  5     /* 1xx to 5xx */

/*
 * What a zone's shared memory holds besides the index: the engine's state
 * and the module's own counters, which every worker adds to and which a
 * reload keeps with the zone.
 */
#define NGX_HTTP_KV_SHCTX_MAGIC  0x4d564b31   /* "1KVM": its layout's */

typedef struct {
    uint32_t                 magic;       /* first: see init_zone */
    kv_shared_t             *sh;
    ngx_atomic_t             requests[NGX_HTTP_KV_METHODS]
                                     [NGX_HTTP_KV_CLASSES];
    ngx_atomic_t             bytes_in;
    ngx_atomic_t             bytes_out;
    kv_hist_t                ack_latency;  /* write to its answer */
} ngx_http_kv_shctx_t;


/* blocking work run in a thread pool, with a store handle of its own */
struct ngx_http_kv_job_s {
    ngx_http_kv_zone_t      *zone;
    kv_store_t               store;
    int                      rc;
    uint64_t                 durable;     /* sync: the position now durable */
    void                   (*run)(ngx_http_kv_job_t *job);   /* the thread */
    void                   (*done)(ngx_http_kv_job_t *job);  /* event loop */
    ngx_uint_t               busy;
#if (NGX_THREADS)
    ngx_thread_task_t       *task;
#endif
};


struct ngx_http_kv_zone_s {
    ngx_str_t                name;
    ngx_str_t                path;        /* absolute, null-terminated */
    size_t                   max_key;
    size_t                   max_value;
    size_t                   segment_size;
    ngx_uint_t               fsync;       /* KV_FSYNC_* */
    ngx_msec_t               fsync_interval;
    ngx_uint_t               compact_ratio;
    size_t                   compact_dead;
    time_t                   default_ttl; /* seconds, 0: none */
    ngx_uint_t               sorted;      /* index=sorted */
    ngx_shm_zone_t          *shm_zone;
    ngx_slab_pool_t         *shpool;
    ngx_http_kv_shctx_t     *shctx;
    kv_host_t                host;
    kv_store_t               store;       /* this process's handle */
    ngx_flag_t               reused;      /* index kept from the last cycle */
#if (NGX_THREADS)
    ngx_thread_pool_t       *thread_pool;
#endif

    /* per worker process */
    ngx_queue_t              waiters;     /* writes waiting for an fsync */
    ngx_http_kv_job_t       *sync;
#if (NGX_THREADS)
    ngx_fd_t               (*flushed)[2]; /* a pipe per worker: any worker's
                                             flush says so in the others' */
    ngx_uint_t               nflushed;
    ngx_connection_t        *flushed_conn; /* this worker's read end */
    ngx_event_t              flush_retry; /* if that word does not come */
#endif
    ngx_http_kv_job_t       *hints;
    ngx_http_kv_job_t       *compact;
    ngx_msec_t               compact_after; /* automatic ones wait until
                                               then after a failure */
    ngx_event_t              flush_timer;
    ngx_event_t              maintenance_timer;
    ngx_event_t              hold;        /* while writes wait for a flush */
    uint32_t                 hinted;      /* active segment at the last
                                             hint pass */
};


typedef struct {
    ngx_array_t              zones;       /* ngx_http_kv_zone_t * */
    ngx_array_t              var_zones;   /* kv_var's: ngx_shm_zone_t * */
} ngx_http_kv_main_conf_t;


typedef struct {
    ngx_shm_zone_t          *shm_zone;    /* kv NAME */
    ngx_shm_zone_t          *ready_zone;  /* kv_ready NAME */
    ngx_shm_zone_t          *status_zone; /* kv_status NAME */
    ngx_shm_zone_t          *compact_zone; /* kv_compact NAME */
    ngx_array_t             *metrics_zones; /* kv_metrics NAME...:
                                              ngx_shm_zone_t * */
    ngx_flag_t               list;        /* kv_list on|off */
} ngx_http_kv_loc_conf_t;


/* wall-clock time in ms, nginx's cached time: what TTLs are measured in */
static ngx_inline uint64_t
ngx_http_kv_now_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}


/* a monotonic clock in microseconds, for latencies */
static ngx_inline uint64_t
ngx_http_kv_now_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}


/* ngx_http_kv_variables.c */
char *ngx_http_kv_var(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);

/* ngx_http_kv_metrics.c */
char *ngx_http_kv_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_kv_metrics_init(ngx_conf_t *cf);


/* ngx_http_kv_handler.c */
ngx_int_t ngx_http_kv_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kv_fetch(ngx_http_kv_zone_t *zone, ngx_pool_t *pool,
    ngx_str_t *key, kv_loc_t *loc, u_char **value, size_t max, int *rc);
ngx_int_t ngx_http_kv_health_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kv_ready_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kv_status_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kv_compact_handler(ngx_http_request_t *r);
void ngx_http_kv_install_body_filter(void);

/* ngx_http_kv_list.c */
ngx_int_t ngx_http_kv_list(ngx_http_request_t *r, ngx_http_kv_zone_t *zone);

/* ngx_http_kv_sync.c */
void ngx_http_kv_flushed_pipes(ngx_cycle_t *cycle,
    ngx_http_kv_zone_t *zone);
ngx_int_t ngx_http_kv_sync_init(ngx_cycle_t *cycle,
    ngx_http_kv_zone_t *zone);
void ngx_http_kv_sync_exit(ngx_http_kv_zone_t *zone);
ngx_int_t ngx_http_kv_write_done(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, ngx_uint_t status, uint64_t start_us);

/* ngx_http_kv_jobs.c */
ngx_int_t ngx_http_kv_jobs_init(ngx_cycle_t *cycle,
    ngx_http_kv_zone_t *zone);
ngx_http_kv_job_t *ngx_http_kv_job_create(ngx_cycle_t *cycle,
    ngx_http_kv_zone_t *zone, void (*run)(ngx_http_kv_job_t *job),
    void (*done)(ngx_http_kv_job_t *job));
ngx_int_t ngx_http_kv_job_post(ngx_http_kv_job_t *job);
void ngx_http_kv_timer_init(ngx_event_t *ev, ngx_http_kv_zone_t *zone,
    ngx_event_handler_pt handler, ngx_msec_t period, ngx_log_t *log);
ngx_int_t ngx_http_kv_start_compaction(ngx_http_kv_zone_t *zone,
    ngx_uint_t requested);

/* ngx_http_kv_response.c */
extern ngx_str_t  ngx_http_kv_types[KV_TYPE_JSON + 1];

ngx_int_t ngx_http_kv_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, u_char *data, size_t len);
ngx_int_t ngx_http_kv_send_chain(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, ngx_chain_t *out, ngx_uint_t header_only, size_t len);
ngx_int_t ngx_http_kv_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *msg);
ngx_int_t ngx_http_kv_send_json(ngx_http_request_t *r, ngx_uint_t status,
    const char *name, const char *text);
ngx_int_t ngx_http_kv_send_object(ngx_http_request_t *r, ngx_uint_t status,
    struct cJSON *obj);
ngx_int_t ngx_http_kv_store_error(ngx_http_request_t *r, int rc);
ngx_int_t ngx_http_kv_set_etag(ngx_http_request_t *r, uint64_t seq);
ngx_int_t ngx_http_kv_set_expires(ngx_http_request_t *r,
    uint64_t expires_at_ms);


extern ngx_module_t  ngx_http_kv_module;


#endif /* _NGX_HTTP_KV_MODULE_H_INCLUDED_ */
