
/*
 * ngx_http_kv_module: nginx as a persistent key-value store.
 *
 * ngx_http_kv_module.c  directives, the shared zone, start-up recovery
 * ngx_http_kv_handler.c the HTTP API, health and readiness handlers
 * kvstore/              the storage engine (no nginx code)
 */


#ifndef _NGX_HTTP_KV_MODULE_H_INCLUDED_
#define _NGX_HTTP_KV_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "kvstore.h"


typedef struct {
    ngx_str_t                name;
    ngx_str_t                path;        /* absolute, null-terminated */
    size_t                   max_key;
    size_t                   max_value;
    ngx_shm_zone_t          *shm_zone;
    ngx_slab_pool_t         *shpool;
    kv_host_t                host;
    kv_store_t               store;       /* this process's handle */
    ngx_flag_t               reused;      /* index kept from the last cycle */
} ngx_http_kv_zone_t;


typedef struct {
    ngx_shm_zone_t          *shm_zone;    /* kv NAME */
    ngx_shm_zone_t          *ready_zone;  /* kv_ready NAME */
} ngx_http_kv_loc_conf_t;


ngx_int_t ngx_http_kv_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kv_health_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_kv_ready_handler(ngx_http_request_t *r);
void ngx_http_kv_install_body_filter(void);


extern ngx_module_t  ngx_http_kv_module;


#endif /* _NGX_HTTP_KV_MODULE_H_INCLUDED_ */
