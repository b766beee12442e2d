/*
 * GET /readyz: ready when PostgreSQL, Redis and the S3 bucket all answer (DESIGN.md §4 "Cross-cutting"). The three
 * checks run at once; the S3 HEAD goes to the offload pool since libcurl's easy API blocks.
 */
#include <stdio.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "s3.h"

typedef struct {
    int waiting;
    const char *postgres, *redis, *s3;
    char s3_detail[160];
} ready_state_t;

static void answer_if_done(fm_req_t *r)
{
    ready_state_t *s = r->state;
    if (--s->waiting > 0)
        return;
    int ok = strcmp(s->postgres, "ok") == 0 && strcmp(s->redis, "ok") == 0 && strcmp(s->s3, "ok") == 0;
    cJSON *body = cJSON_CreateObject(), *checks = cJSON_AddObjectToObject(body, "checks");
    cJSON_AddStringToObject(body, "status", ok ? "ready" : "not_ready");
    cJSON_AddStringToObject(checks, "postgres", s->postgres);
    cJSON_AddStringToObject(checks, "redis", s->redis);
    cJSON_AddStringToObject(checks, "s3", s->s3);
    if (!ok) {
        fm_req_add_header(r, "retry-after", "1");
        if (s->s3_detail[0] != '\0')
            cJSON_AddStringToObject(checks, "s3_detail", s->s3_detail);
    }
    fm_reply_json(r, ok ? 200 : 503, body);
}

static void on_pg(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    ready_state_t *s = r->state;
    s->postgres = res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK ? "ok" : "unavailable";
    answer_if_done(r);
}

static void on_redis(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    ready_state_t *s = r->state;
    s->redis = reply != NULL && reply->type == REDIS_REPLY_STATUS ? "ok" : "unavailable";
    answer_if_done(r);
}

static void s3_check_work(void *data)
{
    fm_req_t *r = data;
    ready_state_t *s = r->state;
    /* Its own client with short timeouts: a hanging store must make /readyz answer 503, not wait. */
    fm_s3_config_t s3cfg = fm_s3_config(1000, 2000);
    fm_s3_result_t res;
    fm_s3_t *s3 = fm_s3_new(&s3cfg, s->s3_detail, sizeof(s->s3_detail));
    if (s3 != NULL && fm_s3_head_bucket(s3, &res) == 0) {
        s->s3 = "ok";
    } else {
        s->s3 = "unavailable";
        if (s3 != NULL)
            snprintf(s->s3_detail, sizeof(s->s3_detail), "HEAD bucket: status %ld %s", res.status, res.code);
    }
    fm_s3_free(s3);
}

static void on_s3(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    answer_if_done(r);
}

void handle_readyz(fm_req_t *r)
{
    ready_state_t *s = fm_req_state(r, sizeof(ready_state_t));
    s->waiting = 3;
    s->postgres = s->redis = s->s3 = "unavailable";
    /* a call refused at once (shutting down) has no callback: it counts as answered, "unavailable" */
    if (fm_pg_call_with(r, r, on_pg, "SELECT 1", 0, NULL) != 0)
        answer_if_done(r);
    if (fm_redis_call_with(r, r, on_redis, 1, (const char *[]){"PING"}) != 0)
        answer_if_done(r);
    fm_req_hold(r);
    if (fm_offload_run(r->thread->offload, s3_check_work, on_s3, r) != 0) {
        fm_req_resume(r);
        snprintf(s->s3_detail, sizeof(s->s3_detail), "offload queue full");
        answer_if_done(r);
    }
}
