
/*
 * ngx_http_kv_module: nginx as a persistent key-value store.
 *
 * ngx_http_kv_module.c    directives, the shared zone, start-up recovery,
 *                         the host interface the engine runs on
 * ngx_http_kv_handler.c   the content handlers: keys, health, readiness,
 *                         status, compaction; the chunked-body limit
 * ngx_http_kv_sync.c      when a write is answered: group commit under
 *                         fsync=always, the fsync=interval timer
 * ngx_http_kv_jobs.c      thread-pool jobs (flush, hints, compaction) and
 *                         the maintenance timer that starts them
 * ngx_http_kv_response.c  sending responses and JSON errors
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
    ngx_shm_zone_t          *shm_zone;
    ngx_slab_pool_t         *shpool;
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
    ngx_shm_zone_t          *shm_zone;    /* kv NAME */
    ngx_shm_zone_t          *ready_zone;  /* kv_ready NAME */
    ngx_shm_zone_t          *status_zone; /* kv_status NAME */
    ngx_shm_zone_t          *compact_zone; /* kv_compact NAME */
} ngx_http_kv_loc_conf_t;


/* ngx_http_kv_handler.c */
ngx_int_t ngx_http_kv_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kv_health_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kv_ready_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kv_status_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kv_compact_handler(ngx_http_request_t *r);
void ngx_http_kv_install_body_filter(void);

/* ngx_http_kv_sync.c */
void ngx_http_kv_flushed_pipes(ngx_cycle_t *cycle,
    ngx_http_kv_zone_t *zone);
ngx_int_t ngx_http_kv_sync_init(ngx_cycle_t *cycle,
    ngx_http_kv_zone_t *zone);
void ngx_http_kv_sync_exit(ngx_http_kv_zone_t *zone);
ngx_int_t ngx_http_kv_write_done(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, ngx_uint_t status);

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
ngx_int_t ngx_http_kv_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *msg);
ngx_int_t ngx_http_kv_send_json(ngx_http_request_t *r, ngx_uint_t status,
    const char *name, const char *text);
ngx_int_t ngx_http_kv_send_object(ngx_http_request_t *r, ngx_uint_t status,
    struct cJSON *obj);
ngx_int_t ngx_http_kv_store_error(ngx_http_request_t *r, int rc);


extern ngx_module_t  ngx_http_kv_module;


#endif /* _NGX_HTTP_KV_MODULE_H_INCLUDED_ */
