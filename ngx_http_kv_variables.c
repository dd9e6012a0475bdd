
/*
 * ngx_http_kv_module: kv_var, variables whose value is the current value of
 * a key, for if, map, return, add_header, proxy_pass, set, limit_req_zone
 * keys and logs:
 *
 *     kv_var $name KEY zone=NAME;
 *
 * KEY is a complex value ("flag:$host", $cookie_session).  A missing or
 * expired key, an empty KEY and a value over NGX_HTTP_KV_VAR_MAX bytes
 * (logged) make the variable "not found", an empty value that "if" takes
 * as false.  Like map, the value is looked up when the variable is first
 * used in a request, and kept for the rest of it.
 */


#include "ngx_http_kv_module.h"


/* values up to this size become variables; larger ones are an error */
#define NGX_HTTP_KV_VAR_MAX  65536


typedef struct {
    ngx_http_complex_value_t   key;
    ngx_shm_zone_t            *shm_zone;
    ngx_str_t                  name;      /* of the variable, for the log */
} ngx_http_kv_var_t;


static ngx_int_t ngx_http_kv_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


char *
ngx_http_kv_var(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_kv_main_conf_t *kmcf = conf;

    ngx_str_t                         *value, zone;
    ngx_shm_zone_t                   **zonep;
    ngx_http_variable_t               *var;
    ngx_http_kv_var_t                 *kv;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (value[1].len < 2 || value[1].data[0] != '$') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid variable name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (value[3].len <= 5 || ngx_strncmp(value[3].data, "zone=", 5) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\", it must be "
                           "\"zone=NAME\"", &value[3]);
        return NGX_CONF_ERROR;
    }

    kv = ngx_pcalloc(cf->pool, sizeof(ngx_http_kv_var_t));
    if (kv == NULL) {
        return NGX_CONF_ERROR;
    }

    kv->name.data = value[1].data + 1;
    kv->name.len = value[1].len - 1;

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[2];
    ccv.complex_value = &kv->key;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    zone.data = value[3].data + 5;
    zone.len = value[3].len - 5;

    /* kv_zone may come later: ngx_http_kv_postconfiguration() checks */

    kv->shm_zone = ngx_shared_memory_add(cf, &zone, 0, &ngx_http_kv_module);
    if (kv->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    zonep = ngx_array_push(&kmcf->var_zones);
    if (zonep == NULL) {
        return NGX_CONF_ERROR;
    }

    *zonep = kv->shm_zone;

    /* changeable, as map's are: "set" may override it */

    var = ngx_http_add_variable(cf, &kv->name, NGX_HTTP_VAR_CHANGEABLE);
    if (var == NULL) {
        return NGX_CONF_ERROR;
    }

    if (var->get_handler != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "variable \"%V\" is already defined", &value[1]);
        return NGX_CONF_ERROR;
    }

    var->get_handler = ngx_http_kv_variable;
    var->data = (uintptr_t) kv;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_kv_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_http_kv_var_t *kv = (ngx_http_kv_var_t *) data;

    int                  rc;
    u_char              *value;
    kv_loc_t             loc;
    ngx_str_t            key;
    ngx_http_kv_zone_t  *zone;

    zone = kv->shm_zone->data;

    if (ngx_http_complex_value(r, &kv->key, &key) != NGX_OK) {
        return NGX_ERROR;
    }

    v->not_found = 1;

    if (key.len == 0) {
        return NGX_OK;
    }

    switch (ngx_http_kv_fetch(zone, r->pool, &key, &loc, &value,
                              NGX_HTTP_KV_VAR_MAX, &rc))
    {
    case NGX_OK:
        break;

    case NGX_ABORT:
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "kv_var $%V: the value of key \"%V\" of kv_zone "
                      "\"%V\" is %uD bytes, more than the %d a variable "
                      "may hold; the variable is empty", &kv->name, &key,
                      &zone->name, loc.vlen, NGX_HTTP_KV_VAR_MAX);
        return NGX_OK;

    case NGX_DECLINED:
        if (rc != KV_NOTFOUND) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "kv_var $%V: reading key \"%V\" of kv_zone "
                          "\"%V\" failed: %s", &kv->name, &key, &zone->name,
                          kv_strerror(rc));
        }

        return NGX_OK;

    default:
        return NGX_ERROR;
    }

    v->data = value;
    v->len = loc.vlen;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}
