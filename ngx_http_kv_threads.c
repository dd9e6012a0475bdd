
/*
 * ngx_http_kv_module: the work that must not run on the event loop.
 *
 * fsync (group commit): a write under fsync=always is answered once a
 * flush covers it.  Each worker keeps one flush in flight; every write
 * that arrives meanwhile waits for the next one, so all writes waiting at a
 * moment share one fdatasync().  A flush by any process advances the
 * store's durable position for all of them.  With several workers, one
 * flush at a time covers the writes of all: a worker whose writes wait
 * while another worker's claimed flush runs does not start its own; that
 * flush's end comes through a pipe, and a short timer starts ours anyway
 * if it does not come (a worker that died, one of another cycle).
 *
 * fsync=interval: each worker flushes its own writes every interval.
 *
 * Maintenance: every worker closes its descriptors of segments that a
 * compaction deleted; worker 0 also writes the hint files of segments that
 * became immutable and starts a compaction when the dead-data thresholds
 * say so.  POST /kv/compact starts one in whichever worker receives it.
 *
 * Each job has a kv_store_t of its own: descriptors are never shared
 * between a thread and the event loop.  Without thread support in nginx a
 * job runs in place, blocking.
 */


#include "ngx_http_kv_module.h"


/* how often worker 0 looks for maintenance work */
#define NGX_HTTP_KV_MAINTENANCE_INTERVAL  1000

/*
 * While writes wait for a flush, a timer that is not cancelable keeps a
 * gracefully exiting worker alive until they are answered: nginx ends an
 * exiting worker as soon as only cancelable timers are left.
 */
#define NGX_HTTP_KV_HOLD_INTERVAL         60000

/* how long writes wait for another worker's flush to say it ended */
#define NGX_HTTP_KV_FLUSH_RETRY           5

/*
 * After a failed compaction (a full disk, say), the thresholds wait this
 * long before trying again: each try logs an error and rolls the log.
 * POST /kv/compact does not wait.
 */
#define NGX_HTTP_KV_COMPACT_RETRY         60000


typedef struct {
    ngx_http_request_t      *request;
    ngx_http_kv_zone_t      *zone;
    uint64_t                 pos;         /* end of the write to flush */
    ngx_uint_t               status;      /* to answer once durable */
    ngx_queue_t              queue;
} ngx_http_kv_waiter_t;


static ngx_http_kv_job_t *ngx_http_kv_job_create(ngx_cycle_t *cycle,
    ngx_http_kv_zone_t *zone, void (*run)(ngx_http_kv_job_t *job),
    void (*done)(ngx_http_kv_job_t *job));
static ngx_int_t ngx_http_kv_job_post(ngx_http_kv_job_t *job);
#if (NGX_THREADS)
static void ngx_http_kv_job_thread(void *data, ngx_log_t *log);
static void ngx_http_kv_job_event(ngx_event_t *ev);
static void ngx_http_kv_pipes_close(void *data);
static ngx_int_t ngx_http_kv_flushed_watch(ngx_cycle_t *cycle,
    ngx_http_kv_zone_t *zone);
static void ngx_http_kv_flushed_say(ngx_http_kv_zone_t *zone);
static void ngx_http_kv_flushed_event(ngx_event_t *ev);
static void ngx_http_kv_flush_retry(ngx_event_t *ev);
static void ngx_http_kv_flushed_elsewhere(ngx_http_kv_zone_t *zone,
    ngx_uint_t force);
#endif
static ngx_int_t ngx_http_kv_sync_post(ngx_http_kv_zone_t *zone,
    ngx_uint_t force);

static void ngx_http_kv_sync_run(ngx_http_kv_job_t *job);
static void ngx_http_kv_sync_done(ngx_http_kv_job_t *job);
static void ngx_http_kv_flush_ended(ngx_http_kv_zone_t *zone,
    ngx_int_t failed, uint64_t durable, ngx_uint_t force);
static void ngx_http_kv_wake(ngx_http_kv_zone_t *zone, ngx_int_t failed,
    uint64_t durable);
static void ngx_http_kv_waiter_cleanup(void *data);
static void ngx_http_kv_hints_run(ngx_http_kv_job_t *job);
static void ngx_http_kv_compact_run(ngx_http_kv_job_t *job);
static void ngx_http_kv_job_logged(ngx_http_kv_job_t *job);
static void ngx_http_kv_flush_timer(ngx_event_t *ev);
static void ngx_http_kv_hold_timer(ngx_event_t *ev);
static void ngx_http_kv_maintenance_timer(ngx_event_t *ev);
static void ngx_http_kv_timer_init(ngx_event_t *ev, ngx_http_kv_zone_t *zone,
    ngx_event_handler_pt handler, ngx_msec_t period, ngx_log_t *log);


ngx_int_t
ngx_http_kv_threads_init(ngx_cycle_t *cycle, ngx_http_kv_zone_t *zone)
{
    ngx_queue_init(&zone->waiters);

    zone->sync = ngx_http_kv_job_create(cycle, zone, ngx_http_kv_sync_run,
                                        ngx_http_kv_sync_done);
    zone->hints = ngx_http_kv_job_create(cycle, zone, ngx_http_kv_hints_run,
                                         ngx_http_kv_job_logged);
    zone->compact = ngx_http_kv_job_create(cycle, zone,
                                           ngx_http_kv_compact_run,
                                           ngx_http_kv_job_logged);

    if (zone->sync == NULL || zone->hints == NULL || zone->compact == NULL) {
        return NGX_ERROR;
    }

#if (NGX_THREADS)
    if (ngx_http_kv_flushed_watch(cycle, zone) != NGX_OK) {
        return NGX_ERROR;
    }
#endif

    /* every worker flushes its own writes */

    if (zone->fsync == KV_FSYNC_INTERVAL) {
        ngx_http_kv_timer_init(&zone->flush_timer, zone,
                               ngx_http_kv_flush_timer, zone->fsync_interval,
                               cycle->log);
    }

    ngx_http_kv_timer_init(&zone->maintenance_timer, zone,
                           ngx_http_kv_maintenance_timer,
                           NGX_HTTP_KV_MAINTENANCE_INTERVAL, cycle->log);

    return NGX_OK;
}


void
ngx_http_kv_threads_exit(ngx_http_kv_zone_t *zone)
{
#if (NGX_THREADS)

    /* the thread pool has finished every task by now */

    if (zone->flushed_conn != NULL) {
        ngx_close_connection(zone->flushed_conn);
        zone->flushed_conn = NULL;
        zone->flushed[ngx_worker][0] = -1;
    }

#endif
}


/*
 * In the master, for the workers it forks: a pipe per worker, which every
 * other worker's flush writes a byte to.  Without them (one worker, fsync
 * not always, pipe() failing) each worker flushes for itself.
 */

void
ngx_http_kv_flushed_pipes(ngx_cycle_t *cycle, ngx_http_kv_zone_t *zone)
{
#if (NGX_THREADS)
    ngx_uint_t           i, n;
    ngx_core_conf_t     *ccf;
    ngx_pool_cleanup_t  *cln;

    zone->flushed = NULL;
    zone->nflushed = 0;

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);
    n = (ngx_uint_t) ccf->worker_processes;

    if (zone->fsync != KV_FSYNC_ALWAYS || !ccf->master || n < 2) {
        return;
    }

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    zone->flushed = ngx_palloc(cycle->pool, n * sizeof(ngx_fd_t[2]));

    if (cln == NULL || zone->flushed == NULL) {
        zone->flushed = NULL;
        return;
    }

    cln->handler = ngx_http_kv_pipes_close;
    cln->data = zone;

    for (i = 0; i < n; i++) {
        if (pipe(zone->flushed[i]) == -1) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                          "kv_zone \"%V\": pipe() failed: each worker "
                          "flushes its own writes", &zone->name);
            break;
        }

        zone->nflushed = i + 1;

        if (ngx_nonblocking(zone->flushed[i][0]) == -1
            || ngx_nonblocking(zone->flushed[i][1]) == -1)
        {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                          "kv_zone \"%V\": " ngx_nonblocking_n " on a "
                          "pipe failed: each worker flushes its own writes",
                          &zone->name);
            break;
        }
    }

    if (zone->nflushed < n) {
        ngx_http_kv_pipes_close(zone);
    }

#endif
}


/* cancelable: a graceful shutdown does not wait for them */

static void
ngx_http_kv_timer_init(ngx_event_t *ev, ngx_http_kv_zone_t *zone,
    ngx_event_handler_pt handler, ngx_msec_t period, ngx_log_t *log)
{
    ev->handler = handler;
    ev->data = zone;
    ev->log = log;
    ev->cancelable = 1;

    ngx_add_timer(ev, period);
}


static ngx_http_kv_job_t *
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

static ngx_int_t
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


static void
ngx_http_kv_pipes_close(void *data)
{
    ngx_uint_t           i, k;
    ngx_http_kv_zone_t  *zone = data;

    for (i = 0; i < zone->nflushed; i++) {
        for (k = 0; k < 2; k++) {
            if (zone->flushed[i][k] != -1 && close(zone->flushed[i][k]) == -1)
            {
                ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                              "kv_zone \"%V\": closing a pipe failed",
                              &zone->name);
            }
        }
    }

    zone->flushed = NULL;
    zone->nflushed = 0;
}


/* in a worker: its end of its pipe goes into the event loop */

static ngx_int_t
ngx_http_kv_flushed_watch(ngx_cycle_t *cycle, ngx_http_kv_zone_t *zone)
{
    ngx_connection_t  *c;

    zone->flush_retry.handler = ngx_http_kv_flush_retry;
    zone->flush_retry.data = zone;
    zone->flush_retry.log = cycle->log;

    if (zone->flushed == NULL || ngx_worker >= zone->nflushed) {
        return NGX_OK;
    }

    c = ngx_get_connection(zone->flushed[ngx_worker][0], cycle->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = zone;
    c->read->handler = ngx_http_kv_flushed_event;
    c->read->log = cycle->log;

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        c->fd = (ngx_socket_t) -1;
        ngx_free_connection(c);
        return NGX_ERROR;
    }

    zone->flushed_conn = c;

    return NGX_OK;
}


/* in the sync thread, after each flush: a byte for every other worker */

static void
ngx_http_kv_flushed_say(ngx_http_kv_zone_t *zone)
{
    ngx_uint_t  i;

    if (zone->flushed_conn == NULL) {
        return;
    }

    for (i = 0; i < zone->nflushed; i++) {
        if (i == ngx_worker) {
            continue;
        }

        /* EAGAIN: the pipe is full of bytes not read yet, which is enough */

        if (write(zone->flushed[i][1], "", 1) == -1 && ngx_errno != NGX_EAGAIN)
        {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                          "kv_zone \"%V\": writing to worker %ui's pipe "
                          "failed", &zone->name, i);
        }
    }
}


static void
ngx_http_kv_flushed_event(ngx_event_t *ev)
{
    u_char               buf[64];
    ngx_connection_t    *c = ev->data;
    ngx_http_kv_zone_t  *zone = c->data;

    while (read(c->fd, buf, sizeof(buf)) > 0) { /* void */ }

    ngx_http_kv_flushed_elsewhere(zone, 0);

    if (ngx_handle_read_event(ev, 0) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0,
                      "kv_zone \"%V\": cannot watch the flush pipe",
                      &zone->name);
    }
}


static void
ngx_http_kv_flush_retry(ngx_event_t *ev)
{
    ngx_http_kv_flushed_elsewhere(ev->data, 1);
}


/* another worker's flush ended, or did not say so in time */

static void
ngx_http_kv_flushed_elsewhere(ngx_http_kv_zone_t *zone, ngx_uint_t force)
{
    uint64_t   durable;
    ngx_int_t  failed;

    failed = (kv_synced(&zone->store, &durable) != KV_OK);

    ngx_http_kv_flush_ended(zone, failed, durable, force);
}

#endif


/*
 * A write is done: answer now, or (fsync=always) once it is durable.
 * Returns the response's rc, or NGX_DONE if the request now waits.
 */

ngx_int_t
ngx_http_kv_write_done(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    ngx_uint_t status)
{
    int                    rc;
    ngx_pool_cleanup_t    *cln;
    ngx_http_kv_waiter_t  *w;

    if (zone->fsync != KV_FSYNC_ALWAYS) {
        return ngx_http_kv_send(r, status, NULL, NULL, 0);
    }

    rc = kv_durable(&zone->store, zone->store.written);

    if (rc == 1) {
        return ngx_http_kv_send(r, status, NULL, NULL, 0);
    }

    if (rc != 0) {
        return ngx_http_kv_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "a flush to disk failed earlier, "
                                      "writes cannot be made durable");
    }

    w = ngx_palloc(r->pool, sizeof(ngx_http_kv_waiter_t));
    if (w == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    w->request = r;
    w->zone = zone;
    w->pos = zone->store.written;
    w->status = status;
    ngx_queue_insert_tail(&zone->waiters, &w->queue);

    cln->handler = ngx_http_kv_waiter_cleanup;
    cln->data = w;

    if (ngx_http_kv_sync_post(zone, 0) == NGX_ERROR) {
        ngx_queue_remove(&w->queue);
        ngx_queue_init(&w->queue);
        return ngx_http_kv_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "cannot start a flush to disk");
    }

    if (!zone->hold.timer_set) {
        zone->hold.handler = ngx_http_kv_hold_timer;
        zone->hold.data = zone;
        zone->hold.log = ngx_cycle->log;
        ngx_add_timer(&zone->hold, NGX_HTTP_KV_HOLD_INTERVAL);
    }

    r->main->count++;

    return NGX_DONE;
}


/*
 * Starts this worker's flush, unless it runs already or (force: 0) the
 * flush another worker claimed will cover these writes: its end is
 * reported through the pipe, or the retry timer starts ours.
 */

static ngx_int_t
ngx_http_kv_sync_post(ngx_http_kv_zone_t *zone, ngx_uint_t force)
{
    if (zone->sync->busy) {
        return NGX_BUSY;
    }

#if (NGX_THREADS)

    if (zone->flushed_conn != NULL && !kv_sync_claim(&zone->store)
        && !force)
    {
        if (!zone->flush_retry.timer_set) {
            ngx_add_timer(&zone->flush_retry, NGX_HTTP_KV_FLUSH_RETRY);
        }

        return NGX_BUSY;
    }

#endif

    return ngx_http_kv_job_post(zone->sync);
}


static void
ngx_http_kv_sync_run(ngx_http_kv_job_t *job)
{
    job->rc = kv_sync(&job->store, &job->durable);

#if (NGX_THREADS)
    ngx_http_kv_flushed_say(job->zone);
#endif
}


static void
ngx_http_kv_sync_done(ngx_http_kv_job_t *job)
{
    ngx_http_kv_flush_ended(job->zone, job->rc != KV_OK, job->durable, 0);
}


/*
 * A flush ended, this worker's or another's: answers the writes it made
 * durable; those that arrived during it share the next one.
 */

static void
ngx_http_kv_flush_ended(ngx_http_kv_zone_t *zone, ngx_int_t failed,
    uint64_t durable, ngx_uint_t force)
{
    ngx_http_kv_wake(zone, failed, durable);

    if (!ngx_queue_empty(&zone->waiters)
        && ngx_http_kv_sync_post(zone, force) == NGX_ERROR)
    {
        ngx_http_kv_wake(zone, 1, 0);
    }
}


/* answers the waiting writes that are durable now, or all if it failed */

static void
ngx_http_kv_wake(ngx_http_kv_zone_t *zone, ngx_int_t failed,
    uint64_t durable)
{
    ngx_int_t              rc;
    ngx_queue_t           *q, *next;
    ngx_connection_t      *c;
    ngx_http_request_t    *r;
    ngx_http_kv_waiter_t  *w;

    for (q = ngx_queue_head(&zone->waiters);
         q != ngx_queue_sentinel(&zone->waiters);
         q = next)
    {
        next = ngx_queue_next(q);
        w = ngx_queue_data(q, ngx_http_kv_waiter_t, queue);

        if (!failed && w->pos > durable) {
            continue;
        }

        ngx_queue_remove(q);
        ngx_queue_init(q);

        r = w->request;
        c = r->connection;

        if (failed) {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "kv_zone \"%V\": the write cannot be made "
                          "durable, answering 500", &zone->name);

            rc = ngx_http_kv_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                        "the flush to disk failed, the "
                                        "write may not be durable");

        } else {
            rc = ngx_http_kv_send(r, w->status, NULL, NULL, 0);
        }

        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }

    if (ngx_queue_empty(&zone->waiters) && zone->hold.timer_set) {
        ngx_del_timer(&zone->hold);
    }
}


/* a request freed while it waits leaves the queue */

static void
ngx_http_kv_waiter_cleanup(void *data)
{
    ngx_http_kv_waiter_t  *w = data;

    if (ngx_queue_next(&w->queue) != &w->queue) {
        ngx_queue_remove(&w->queue);
    }
}


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
 * NGX_BUSY if one is running anywhere, NGX_ERROR.  A requested one (POST
 * /kv/compact) stays due until it completes: a reload that cancels it
 * leaves it to the new workers.
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
ngx_http_kv_flush_timer(ngx_event_t *ev)
{
    ngx_http_kv_zone_t  *zone = ev->data;

    if (kv_durable(&zone->store, zone->store.written) == 0) {
        (void) ngx_http_kv_sync_post(zone, 1);
    }

    ngx_add_timer(ev, zone->fsync_interval);
}


static void
ngx_http_kv_hold_timer(ngx_event_t *ev)
{
    ngx_http_kv_zone_t  *zone = ev->data;

    if (!ngx_queue_empty(&zone->waiters)) {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "kv_zone \"%V\": writes have waited %M ms for a "
                      "flush to disk", &zone->name,
                      (ngx_msec_t) NGX_HTTP_KV_HOLD_INTERVAL);

        ngx_add_timer(ev, NGX_HTTP_KV_HOLD_INTERVAL);
    }
}


static void
ngx_http_kv_maintenance_timer(ngx_event_t *ev)
{
    uint32_t             segment;
    ngx_http_kv_zone_t  *zone = ev->data;

    if (ngx_exiting || !zone->store.sh->open) {
        return;
    }

    ngx_add_timer(ev, NGX_HTTP_KV_MAINTENANCE_INTERVAL);

    /* a thread may be using a busy job's handle */

    kv_store_sweep(&zone->store);

    if (!zone->sync->busy) {
        kv_store_sweep(&zone->sync->store);
    }

    if (ngx_worker != 0) {
        return;
    }

    /* a roll-over left a segment without its hint file */

    segment = zone->store.sh->segment;

    if (segment != zone->hinted && ngx_http_kv_job_post(zone->hints) == NGX_OK)
    {
        zone->hinted = segment;
    }

    if ((ngx_msec_int_t) (ngx_current_msec - zone->compact_after) >= 0
        && kv_compact_due(&zone->store))
    {
        (void) ngx_http_kv_start_compaction(zone, 0);
    }
}
