/*
 * handle: one worker's state and its blocking connections (handle.h). Used by every layer of fm-worker -- the
 * stream loop (queue.c), one job (process.c), the jobs' runners (cleanup.c, purge.c, rekey.c) and Lambda mode --
 * and calling none of them.
 */
#include "handle.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "uuid.h"

uint64_t fm_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t fm_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

const char *fm_outcome_name(fm_outcome_t outcome)
{
    static const char *const names[] = {"ready",   "quarantined", "retry",  "failed",   "skipped", "left",
                                        "deleted", "kept",        "purged", "deferred", "moved"};
    return (unsigned)outcome < sizeof(names) / sizeof(names[0]) ? names[outcome] : "left";
}

int fm_uuid_text_valid(const char *s)
{
    return s != NULL && fm_uuid_valid(s, strlen(s));
}

/* ---- connections ------------------------------------------------------------------------------------------------ */

static struct timeval ms_timeval(int64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

fm_worker_t *fm_worker_new(const fm_config_t *cfg, const char *consumer, int index, char *err, size_t err_size)
{
    fm_worker_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        abort();
    w->cfg = cfg;
    w->index = index;
    snprintf(w->consumer, sizeof(w->consumer), "%s", consumer);
    pthread_mutex_init(&w->inflight_lock, NULL);
    w->limits = (fm_worker_limits_t){
        .tmp_dir = cfg->worker_tmp_dir,
        .clamd_host = cfg->clamd_host,
        .clamd_port = (int)cfg->clamd_port,
        .clamd_timeout_ms = (int)cfg->clamd_timeout_ms,
        .clamd_chunk_bytes = 64 * 1024,
        .max_pixels = cfg->max_image_pixels,
        .text_max_bytes = cfg->text_max_bytes,
        .thumb_px = (int)cfg->thumb_px,
        .preview_px = (int)cfg->preview_px,
        .copy_part_bytes = cfg->s3_copy_part_bytes,
    };
    /* 60 s: small calls (PUT of a variant, copy); the streamed GET has no whole-request cap */
    fm_s3_config_t s3c = fm_s3_config_from(cfg, 3000, 60000);
    if ((w->s3 = fm_s3_new(&s3c, err, err_size)) == NULL) {
        fm_worker_free(w);
        return NULL;
    }
    return w;
}

void fm_worker_free(fm_worker_t *w)
{
    if (w == NULL)
        return;
    if (w->redis != NULL)
        redisFree(w->redis);
    if (w->pg != NULL)
        PQfinish(w->pg);
    fm_s3_free(w->s3);
    pthread_mutex_destroy(&w->inflight_lock);
    free(w);
}

void fm_worker_redis_lost(fm_worker_t *w)
{
    if (w->redis != NULL)
        redisFree(w->redis);
    w->redis = NULL;
}

void fm_worker_pg_lost(fm_worker_t *w)
{
    if (w->pg != NULL)
        PQfinish(w->pg);
    w->pg = NULL;
}

int fm_worker_redis(fm_worker_t *w)
{
    if (w->redis != NULL && w->redis->err == 0)
        return 0;
    fm_worker_redis_lost(w);
    char host[256], password[256];
    int port, db;
    if (fm_redis_url_parse(w->cfg->redis_url, host, sizeof(host), &port, password, sizeof(password), &db) != 0) {
        fm_error("redis: FM_REDIS_URL does not parse");
        return -1;
    }
    redisContext *c = redisConnectWithTimeout(host, port, ms_timeval(w->cfg->redis_timeout_ms));
    if (c == NULL || c->err != 0) {
        fm_warn("redis: cannot connect to %s:%d: %s", host, port, c ? c->errstr : "out of memory");
        if (c != NULL)
            redisFree(c);
        return -1;
    }
    /* Every command is bounded; the longest one is the blocking XREADGROUP. */
    redisSetTimeout(c, ms_timeval(FM_QUEUE_READ_BLOCK_MS + w->cfg->redis_timeout_ms));
    w->redis = c;
    char dbtext[16];
    snprintf(dbtext, sizeof(dbtext), "%d", db);
    const char *auth[] = {"AUTH", password};
    const char *select[] = {"SELECT", dbtext};
    redisReply *reply = NULL;
    if (password[0] != '\0' && ((reply = fm_worker_cmd(w, 2, auth)) == NULL || reply->type == REDIS_REPLY_ERROR))
        goto failed;
    freeReplyObject(reply);
    reply = NULL;
    if (db != 0 && ((reply = fm_worker_cmd(w, 2, select)) == NULL || reply->type == REDIS_REPLY_ERROR))
        goto failed;
    freeReplyObject(reply);
    return 0;
failed:
    fm_warn("redis: AUTH/SELECT refused: %s", reply ? reply->str : "connection lost");
    freeReplyObject(reply);
    fm_worker_redis_lost(w);
    return -1;
}

redisReply *fm_worker_cmd(fm_worker_t *w, int argc, const char **argv)
{
    if (w->redis == NULL && fm_worker_redis(w) != 0)
        return NULL;
    redisReply *reply = redisCommandArgv(w->redis, argc, argv, NULL);
    if (reply == NULL) {
        fm_warn("redis: %s failed: %s", argv[0], w->redis->errstr[0] ? w->redis->errstr : "connection lost");
        fm_worker_redis_lost(w);
    }
    return reply;
}

void fm_worker_tree_changed(fm_worker_t *w, const char *owner_id)
{
    if (owner_id == NULL || owner_id[0] == '\0')
        return;
    char key[64];
    snprintf(key, sizeof(key), "fm:tgen:{%s}", owner_id);
    const char *argv[] = {"INCR", key};
    freeReplyObject(fm_worker_cmd(w, 2, argv));
}

int fm_worker_pg(fm_worker_t *w)
{
    if (w->pg != NULL && PQstatus(w->pg) == CONNECTION_OK)
        return 0;
    fm_worker_pg_lost(w);
    PGconn *pg = PQconnectdb(w->cfg->database_url);
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        fm_warn("postgresql: cannot connect: %s", pg ? PQerrorMessage(pg) : "out of memory");
        if (pg != NULL)
            PQfinish(pg);
        w->pg_unavailable = 1;
        return -1;
    }
    char sql[96];
    snprintf(sql, sizeof(sql), "SET statement_timeout = %lld", (long long)w->cfg->pg_timeout_ms);
    PGresult *res = PQexec(pg, sql);
    PQclear(res);
    w->pg = pg;
    return 0;
}

/* Whether a failed statement's SQLSTATE says PostgreSQL could not serve it now, rather than that the statement is
 * wrong (PostgreSQL manual, appendix A): 08 connection exception, 53 insufficient resources, 57 operator intervention
 * (57P01 admin shutdown on a restart, 57014 statement timeout), 40 transaction rollback (serialization, deadlock),
 * 55P03 lock not available. No SQLSTATE at all is a client-side failure: the connection. */
static int sqlstate_unavailable(const char *state)
{
    if (state == NULL || strlen(state) != 5)
        return 1;
    return strncmp(state, "08", 2) == 0 || strncmp(state, "53", 2) == 0 || strncmp(state, "57", 2) == 0 ||
           strncmp(state, "40", 2) == 0 || strcmp(state, "55P03") == 0;
}

PGresult *fm_worker_sql(fm_worker_t *w, const char *sql, int nparams, const char *const *params)
{
    if (fm_worker_pg(w) != 0)
        return NULL;
    PGresult *res = PQexecParams(w->pg, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        w->pg_unavailable = 0;
        return res;
    }
    fm_warn("postgresql: %s", res ? PQresultErrorMessage(res) : PQerrorMessage(w->pg));
    w->pg_unavailable = PQstatus(w->pg) != CONNECTION_OK ||
                        sqlstate_unavailable(res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL);
    PQclear(res);
    if (PQstatus(w->pg) != CONNECTION_OK)
        fm_worker_pg_lost(w);
    return NULL;
}

/* ---- the stream ------------------------------------------------------------------------------------------------- */

int fm_worker_scan_jobs(fm_worker_t *keeper, const char *lock, const char *sql, int nparams,
                        const char *const *params, const char *type, int *made)
{
    *made = 0;
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)keeper->cfg->cleanup_interval_s);
    const char *set[] = {"SET", lock, keeper->consumer, "NX", "EX", ttl};
    redisReply *got = fm_worker_cmd(keeper, 6, set);
    if (got == NULL)
        return -1;
    int mine = got->type == REDIS_REPLY_STATUS;
    freeReplyObject(got);
    if (!mine)
        return 0;
    PGresult *res = fm_worker_sql(keeper, sql, nparams, params);
    if (res == NULL)
        return -1;
    char labels[64];
    snprintf(labels, sizeof(labels), "type=\"%s\"", type);
    fm_metrics_counter_add("fm_worker_scans_total", labels, 1); /* what "a scan later" means to an operator or test */
    int added = 0;
    *made = PQntuples(res);
    for (int i = 0; i < *made; i++) {
        if (fm_worker_enqueue(keeper, PQgetvalue(res, i, 0), type, type) != 0)
            break;
        added++;
    }
    PQclear(res);
    return added == *made ? added : -1;
}

int fm_worker_enqueue(fm_worker_t *w, const char *job_id, const char *type, const char *request_id)
{
    const char *xadd[] = {"XADD",       FM_QUEUE_STREAM, "MAXLEN",      "~",       "1000000", "*",         "job_id",
                          job_id,       "type",          type,          "file_id", "",        "upload_id", "",
                          "request_id", request_id,      "traceparent", ""};
    redisReply *added = fm_worker_cmd(w, (int)(sizeof(xadd) / sizeof(xadd[0])), xadd);
    int ok = added != NULL && added->type == REDIS_REPLY_STRING;
    if (added != NULL && !ok)
        fm_warn("jobs: XADD of %s job %s: %s", type, job_id, added->type == REDIS_REPLY_ERROR ? added->str : "?");
    freeReplyObject(added);
    if (!ok)
        return -1;
    const char *params[] = {job_id};
    PQclear(fm_worker_sql(w, "UPDATE jobs SET enqueued_at = now() WHERE id = $1::uuid", 1, params));
    return 0;
}

int fm_worker_must_abandon(const fm_worker_t *w)
{
    if (w->queue == NULL)
        return 0;
    uint64_t at = w->abandon_at(w->queue); /* the owner's clock: fm_queue_abandon_at, never called up from here */
    return at != 0 && fm_mono_ms() >= at;
}

int fm_worker_pause(fm_worker_t *w, uint64_t ms)
{
    if (w->queue == NULL) { /* Lambda mode: never past the invocation's deadline, with time left to answer */
        if (w->deadline_ms <= 0 || (long long)(fm_wall_ms() + ms) + 5000 > w->deadline_ms)
            return -1;
        struct timespec pause = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
        while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
            ;
        return 0;
    }
    /* In slices, so that the end of the graceful delay is seen within 100 ms. */
    for (uint64_t until = fm_mono_ms() + ms;;) {
        if (fm_worker_must_abandon(w))
            return -1;
        uint64_t now = fm_mono_ms();
        if (now >= until)
            return 0;
        uint64_t slice = until - now < 100 ? until - now : 100;
        struct timespec pause = {.tv_sec = 0, .tv_nsec = (long)slice * 1000000L};
        nanosleep(&pause, NULL);
    }
}
