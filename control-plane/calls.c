/*
 * Asynchronous calls made on behalf of a request (PostgreSQL, Redis, the offload pool), with the bookkeeping of
 * http.h: each holds the request, and each callback must start with `if (fm_req_resume(r) != 0) return;`.
 */
#include "control.h"
#include "log.h"

static int pg_call(fm_req_t *r, void *ctx, fm_pg_cb cb, const char *sql, int nparams, const char *const *params,
                   int prepared)
{
    fm_pg_t *pg = fm_control_thread(r)->pg;
    fm_req_hold(r);
    if ((prepared ? fm_pg_query_prepared(pg, cb, ctx, sql, nparams, params)
                  : fm_pg_query(pg, cb, ctx, sql, nparams, params)) != 0) {
        fm_req_resume(r); /* refused at once (shutting down): no callback will come */
        return -1;
    }
    return 0;
}

int fm_pg_call_with(fm_req_t *r, void *ctx, fm_pg_cb cb, const char *sql, int nparams, const char *const *params)
{
    return pg_call(r, ctx, cb, sql, nparams, params, 0);
}

int fm_pg_call_prepared_with(fm_req_t *r, void *ctx, fm_pg_cb cb, const char *sql, int nparams,
                             const char *const *params)
{
    return pg_call(r, ctx, cb, sql, nparams, params, 1);
}

int fm_redis_call_with(fm_req_t *r, void *ctx, fm_redis_cb cb, int argc, const char **argv)
{
    fm_req_hold(r);
    if (fm_redis_commandargv(fm_control_thread(r)->redis, cb, ctx, argc, argv, NULL) != 0) {
        fm_req_resume(r);
        return -1;
    }
    return 0;
}

void fm_pg_call(fm_req_t *r, fm_pg_cb cb, const char *sql, int nparams, const char *const *params)
{
    if (fm_pg_call_with(r, r, cb, sql, nparams, params) != 0)
        fm_reply_unavailable(r, "the database");
}

void fm_pg_call_prepared(fm_req_t *r, fm_pg_cb cb, const char *sql, int nparams, const char *const *params)
{
    if (pg_call(r, r, cb, sql, nparams, params, 1) != 0)
        fm_reply_unavailable(r, "the database");
}

void fm_redis_call(fm_req_t *r, fm_redis_cb cb, int argc, const char **argv)
{
    if (fm_redis_call_with(r, r, cb, argc, argv) != 0)
        fm_reply_unavailable(r, "the session store");
}

void fm_redis_get_cached(fm_req_t *r, fm_redis_cb cb, const char *key)
{
    fm_rcache_t *cache = fm_control_thread(r)->rcache;
    const char *value;
    size_t len;
    fm_req_hold(r);
    if (cache != NULL && fm_rcache_get(cache, key, &value, &len)) {
        /* what Redis would answer now: the callback runs at once, as if the GET had come back */
        redisReply reply = {.type = REDIS_REPLY_STRING, .str = (char *)value, .len = len};
        cb(&reply, NULL, r);
        return;
    }
    if (cache != NULL ? fm_rcache_fetch(cache, key, cb, r) != 0
                      : fm_redis_commandargv(fm_control_thread(r)->redis, cb, r, 2, (const char *[]){"GET", key}, NULL) != 0) {
        fm_req_resume(r);
        fm_reply_unavailable(r, "the session store");
    }
}

static void call_on(fm_req_t *r, fm_offload_port_t *port, void (*work)(void *), void (*done)(void *), const char *what)
{
    fm_req_hold(r);
    if (fm_offload_run(port, work, done, r) != 0) {
        fm_req_resume(r);
        fm_reply_unavailable(r, what);
    }
}

void fm_offload_call(fm_req_t *r, void (*work)(void *), void (*done)(void *), const char *what)
{
    call_on(r, r->thread->offload, work, done, what);
}

void fm_hash_call(fm_req_t *r, void (*work)(void *), void (*done)(void *))
{
    call_on(r, r->thread->hash != NULL ? r->thread->hash : r->thread->offload, work, done, "the password hasher");
}

int fm_pg_failed(fm_req_t *r, PGresult *res, const char *errstr)
{
    if (res == NULL) {
        fm_log(FM_LOG_WARN, r->request_id, "postgres: %s", errstr);
        fm_reply_unavailable(r, "the database");
        return 1;
    }
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return 0;
    fm_log(FM_LOG_ERROR, r->request_id, "postgres: %s", PQresultErrorMessage(res));
    fm_reply_error(r, 500, "internal_error", "the request could not be completed");
    return 1;
}

int fm_redis_failed(fm_req_t *r, redisReply *reply, const char *errstr)
{
    if (reply != NULL && reply->type != REDIS_REPLY_ERROR)
        return 0;
    fm_log(FM_LOG_WARN, r->request_id, "redis: %s", reply != NULL ? reply->str : errstr);
    fm_reply_unavailable(r, "the session store");
    return 1;
}
