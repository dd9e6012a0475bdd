
/*
 * ngx_http_kv_module: when a write is answered.
 *
 * fsync=always (group commit): a write is answered once a flush covers
 * it.  Each worker keeps one flush in flight; every write that arrives
 * meanwhile waits for the next one, so all writes waiting at a moment
 * share one fdatasync().  A flush by any process advances the store's
 * durable position for all of them.  With several workers, one flush at a
 * time covers the writes of all: a worker whose writes wait while another
 * worker's claimed flush runs does not start its own; that flush's end
 * comes through a pipe, and a short timer starts ours anyway if it does
 * not come (a worker that died, one of another cycle).
 *
 * fsync=interval: a write is answered at once, and each worker flushes its
 * own writes every interval.  fsync=off: answered at once, never flushed.
 *
 * The flush runs as a job of ngx_http_kv_jobs.c, in the thread pool.
 */


#include "ngx_http_kv_module.h"


/*
 * While writes wait for a flush, a timer that is not cancelable keeps a
 * gracefully exiting worker alive until they are answered: nginx ends an
 * exiting worker as soon as only cancelable timers are left.
 */
#define NGX_HTTP_KV_HOLD_INTERVAL         60000

/* how long writes wait for another worker's flush to say it ended */
#define NGX_HTTP_KV_FLUSH_RETRY           5


typedef struct {
    ngx_http_request_t      *request;
    ngx_http_kv_zone_t      *zone;
    uint64_t                 pos;         /* end of the write to flush */
    uint64_t                 start_us;    /* when the write was made */
    ngx_uint_t               status;      /* to answer once durable */
    ngx_queue_t              queue;
} ngx_http_kv_waiter_t;


#if (NGX_THREADS)
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
static ngx_int_t ngx_http_kv_acknowledge(ngx_http_request_t *r,
    ngx_http_kv_zone_t *zone, ngx_uint_t status, uint64_t start_us);
static void ngx_http_kv_waiter_cleanup(void *data);
static void ngx_http_kv_flush_timer(ngx_event_t *ev);
static void ngx_http_kv_hold_timer(ngx_event_t *ev);


ngx_int_t
ngx_http_kv_sync_init(ngx_cycle_t *cycle, ngx_http_kv_zone_t *zone)
{
    ngx_queue_init(&zone->waiters);

    zone->sync = ngx_http_kv_job_create(cycle, zone, ngx_http_kv_sync_run,
                                        ngx_http_kv_sync_done);
    if (zone->sync == NULL) {
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

    return NGX_OK;
}


void
ngx_http_kv_sync_exit(ngx_http_kv_zone_t *zone)
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


#if (NGX_THREADS)

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
    ngx_uint_t status, uint64_t start_us)
{
    int                    rc;
    ngx_pool_cleanup_t    *cln;
    ngx_http_kv_waiter_t  *w;

    if (zone->fsync != KV_FSYNC_ALWAYS) {
        return ngx_http_kv_acknowledge(r, zone, status, start_us);
    }

    rc = kv_durable(&zone->store, zone->store.written);

    if (rc == 1) {
        return ngx_http_kv_acknowledge(r, zone, status, start_us);
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
    w->start_us = start_us;
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
            rc = ngx_http_kv_acknowledge(r, zone, w->status, w->start_us);
        }

        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }

    if (ngx_queue_empty(&zone->waiters) && zone->hold.timer_set) {
        ngx_del_timer(&zone->hold);
    }
}


/* answers a write that is as durable as the zone promises */

static ngx_int_t
ngx_http_kv_acknowledge(ngx_http_request_t *r, ngx_http_kv_zone_t *zone,
    ngx_uint_t status, uint64_t start_us)
{
    kv_hist_add(&zone->shctx->ack_latency, ngx_http_kv_now_us() - start_us);

    return ngx_http_kv_send(r, status, NULL, NULL, 0);
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
