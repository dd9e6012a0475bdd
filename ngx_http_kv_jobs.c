
/*
 * ngx_http_kv_module: jobs, the blocking work that runs in the thread
 * pool, and the maintenance that starts them.
 *
 * Each job has a kv_store_t of its own: descriptors are never shared
 * between a thread and the event loop.  A job has one run at a time; without
 * thread support in nginx it runs in place, blocking.  The flush job of
 * group commit is ngx_http_kv_sync.c's; hint writing and compaction are
 * here.
 *
 * Maintenance: every worker closes its descriptors of segments that a
 * compaction deleted; worker 0 also sweeps 1/16 of the index for keys
 * whose TTL ran out, writes the hint files of segments that became
 * immutable and starts a compaction when the dead-data thresholds say so.
 * A kv_compact location starts one in whichever worker receives the
 * request.
 */


#include "ngx_http_kv_module.h"


/* how often worker 0 looks for maintenance work */
#define NGX_HTTP_KV_MAINTENANCE_INTERVAL  1000

/*
 * After a failed compaction (a full disk, say), the thresholds wait this
 * long before trying again: each try logs an error and rolls the log.
 * A requested compaction does not wait.
 */
#define NGX_HTTP_KV_COMPACT_RETRY         60000


#if (NGX_THREADS)
static void ngx_http_kv_job_thread(void *data, ngx_log_t *log);
static void ngx_http_kv_job_event(ngx_event_t *ev);
#endif
static void ngx_http_kv_hints_run(ngx_http_kv_job_t *job);
static void ngx_http_kv_compact_run(ngx_http_kv_job_t *job);
static void ngx_http_kv_job_logged(ngx_http_kv_job_t *job);
static void ngx_http_kv_maintenance_timer(ngx_event_t *ev);


ngx_int_t
ngx_http_kv_jobs_init(ngx_cycle_t *cycle, ngx_http_kv_zone_t *zone)
{
    zone->hints = ngx_http_kv_job_create(cycle, zone, ngx_http_kv_hints_run,
                                         ngx_http_kv_job_logged);
    zone->compact = ngx_http_kv_job_create(cycle, zone,
                                           ngx_http_kv_compact_run,
                                           ngx_http_kv_job_logged);

    if (zone->hints == NULL || zone->compact == NULL) {
        return NGX_ERROR;
    }

    ngx_http_kv_timer_init(&zone->maintenance_timer, zone,
                           ngx_http_kv_maintenance_timer,
                           NGX_HTTP_KV_MAINTENANCE_INTERVAL, cycle->log);

    return NGX_OK;
}


/* cancelable: a graceful shutdown does not wait for them */

void
ngx_http_kv_timer_init(ngx_event_t *ev, ngx_http_kv_zone_t *zone,
    ngx_event_handler_pt handler, ngx_msec_t period, ngx_log_t *log)
{
    ev->handler = handler;
    ev->data = zone;
    ev->log = log;
    ev->cancelable = 1;

    ngx_add_timer(ev, period);
}


ngx_http_kv_job_t *
ngx_http_kv_job_create(ngx_cycle_t *cycle, ngx_http_kv_zone_t *zone,
    void (*run)(ngx_http_kv_job_t *job), void (*done)(ngx_http_kv_job_t *job))
{
    ngx_http_kv_job_t  *job;

    job = ngx_pcalloc(cycle->pool, sizeof(ngx_http_kv_job_t));
    if (job == NULL) {
        return NULL;
    }

    job->zone = zone;
    job->run = run;
    job->done = done;

    kv_store_init(&job->store, zone->store.sh, &zone->host,
                  &zone->store.conf);

#if (NGX_THREADS)
    job->task = ngx_thread_task_alloc(cycle->pool, 0);
    if (job->task == NULL) {
        return NULL;
    }

    job->task->ctx = job;
    job->task->handler = ngx_http_kv_job_thread;
    job->task->event.handler = ngx_http_kv_job_event;
    job->task->event.data = job;
    job->task->event.log = cycle->log;
#endif

    return job;
}


/* NGX_BUSY if the job is already running */

ngx_int_t
ngx_http_kv_job_post(ngx_http_kv_job_t *job)
{
    if (job->busy) {
        return NGX_BUSY;
    }

#if (NGX_THREADS)

    if (ngx_thread_task_post(job->zone->thread_pool, job->task) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "kv_zone \"%V\": cannot post a task to the thread "
                      "pool", &job->zone->name);
        return NGX_ERROR;
    }

    job->busy = 1;

#else

    job->run(job);
    job->done(job);

#endif

    return NGX_OK;
}


#if (NGX_THREADS)

static void
ngx_http_kv_job_thread(void *data, ngx_log_t *log)
{
    ngx_http_kv_job_t  *job = data;

    job->run(job);
}


static void
ngx_http_kv_job_event(ngx_event_t *ev)
{
    ngx_http_kv_job_t  *job = ev->data;

    job->busy = 0;
    job->done(job);
}

#endif


static void
ngx_http_kv_hints_run(ngx_http_kv_job_t *job)
{
    job->rc = kv_write_hints(&job->store);
}


static void
ngx_http_kv_compact_run(ngx_http_kv_job_t *job)
{
    job->rc = kv_compact(&job->store);
}


/* kvstore logged the details; this says which job ended how */

static void
ngx_http_kv_job_logged(ngx_http_kv_job_t *job)
{
    ngx_uint_t  level;

    switch (job->rc) {
    case KV_OK:
        level = NGX_LOG_INFO;
        break;
    case KV_ECANCELED:
        level = NGX_LOG_NOTICE;
        break;
    default:
        level = NGX_LOG_ERR;
    }

    ngx_log_error(level, ngx_cycle->log, 0, "kv_zone \"%V\": %s: %s",
                  &job->zone->name,
                  job == job->zone->compact ? "compaction" : "hint files",
                  kv_strerror(job->rc));

    if (job == job->zone->compact && job->rc != KV_OK
        && job->rc != KV_ECANCELED)
    {
        job->zone->compact_after = ngx_current_msec
                                   + NGX_HTTP_KV_COMPACT_RETRY;

        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "kv_zone \"%V\": automatic compaction tried again "
                      "in %M s at the earliest", &job->zone->name,
                      (ngx_msec_t) NGX_HTTP_KV_COMPACT_RETRY / 1000);
    }
}


/*
 * Claims the store's compaction and starts it in a thread: NGX_OK,
 * NGX_BUSY if one is running anywhere, NGX_ERROR.  A requested one (a
 * kv_compact location's POST) stays due until it completes: a reload that
 * cancels it leaves it to the new workers.
 */

ngx_int_t
ngx_http_kv_start_compaction(ngx_http_kv_zone_t *zone, ngx_uint_t requested)
{
    int  rc;

    if (zone->compact->busy) {
        return NGX_BUSY;
    }

    /* the job's handle: the claim resets its cancel request */

    rc = kv_compact_begin(&zone->compact->store);

    if (rc == KV_EBUSY) {
        return NGX_BUSY;
    }

    if (rc != KV_OK) {
        return NGX_ERROR;
    }

    if (requested) {
        kv_compact_request(&zone->compact->store);
    }

    if (ngx_http_kv_job_post(zone->compact) != NGX_OK) {
        kv_compact_release(&zone->compact->store);
        return NGX_ERROR;
    }

    ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                  "kv_zone \"%V\": compaction started", &zone->name);

    return NGX_OK;
}


static void
ngx_http_kv_maintenance_timer(ngx_event_t *ev)
{
    kv_stats_t           st;
    ngx_http_kv_zone_t  *zone = ev->data;

    if (ngx_exiting) {
        return;
    }

    kv_stats(&zone->store, &st);

    if (!st.open) {
        return;
    }

    ngx_add_timer(ev, NGX_HTTP_KV_MAINTENANCE_INTERVAL);

    /* a thread may be using a busy job's handle */

    kv_store_sweep(&zone->store);
    kv_iter_sweep(&zone->store);

    if (!zone->sync->busy) {
        kv_store_sweep(&zone->sync->store);
    }

    if (ngx_worker != 0) {
        return;
    }

    /* keys whose TTL ran out leave the index even if nobody reads them */

    (void) kv_expire(&zone->store);

    /* a roll-over left a segment without its hint file */

    if (st.active_segment != zone->hinted
        && ngx_http_kv_job_post(zone->hints) == NGX_OK)
    {
        zone->hinted = st.active_segment;
    }

    if ((ngx_msec_int_t) (ngx_current_msec - zone->compact_after) >= 0
        && kv_compact_due(&zone->store))
    {
        (void) ngx_http_kv_start_compaction(zone, 0);
    }
}
