/*
 * The job queue (DESIGN.md §5): a Redis Stream `jobs` read by the consumer group `workers` (fm-worker). PostgreSQL's
 * `jobs` table is the truth and decides uniqueness (dedupe_key); the stream only carries job ids. A job whose XADD
 * failed keeps enqueued_at NULL and the reconciler (reconcile.c) adds it later, so Redis being down never loses one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"

/* The enqueue's own state (not the request's state, which belongs to the handler that asked). */
typedef struct {
    fm_req_t *r;
    void (*done)(fm_req_t *r, void *arg);
    void *arg;
    char job_id[40];
} enqueue_t;

/* Ends the enqueue: 0 to go on, -1 if the request went away meanwhile (then nothing more is done). */
static int enqueue_resume(enqueue_t *e)
{
    if (fm_req_resume(e->r) != 0) {
        free(e->arg); /* the caller's malloc'd continuation state, see control.h */
        free(e);
        return -1;
    }
    return 0;
}

static void enqueue_finish(enqueue_t *e)
{
    fm_req_t *r = e->r;
    void (*done)(fm_req_t *, void *) = e->done;
    void *arg = e->arg;
    free(e);
    done(r, arg);
}

static void on_enqueued_recorded(PGresult *res, const char *errstr, void *data)
{
    enqueue_t *e = data;
    if (enqueue_resume(e) != 0)
        return;
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
        fm_log(FM_LOG_WARN, e->r->request_id, "jobs: enqueued_at not recorded: %s",
               res ? PQresultErrorMessage(res) : errstr);
    enqueue_finish(e);
}

static void on_xadd(redisReply *reply, const char *errstr, void *data)
{
    enqueue_t *e = data;
    if (enqueue_resume(e) != 0)
        return;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        fm_log(FM_LOG_WARN, e->r->request_id, "jobs: XADD of %s failed (the reconciler retries): %s", e->job_id,
               reply ? reply->str : errstr);
        enqueue_finish(e);
        return;
    }
    const char *params[] = {e->job_id};
    if (fm_pg_call_with(e->r, e, on_enqueued_recorded,
                        "UPDATE jobs SET enqueued_at = now() WHERE id = $1::uuid AND enqueued_at IS NULL", 1,
                        params) != 0)
        enqueue_finish(e); /* refused at once (shutting down): the reconciler records it later */
}

void fm_jobs_enqueue(fm_req_t *r, const fm_job_ref_t *job, void (*done)(fm_req_t *r, void *arg), void *arg)
{
    enqueue_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        h2o_fatal("out of memory");
    e->r = r;
    e->done = done;
    e->arg = arg;
    snprintf(e->job_id, sizeof(e->job_id), "%s", job->job_id);
    h2o_iovec_t trace = fm_req_header(r, "traceparent");
    char traceparent[64] = "";
    if (trace.len == 55) /* W3C trace context, version 00: passed through to the worker */
        snprintf(traceparent, sizeof(traceparent), "%.*s", (int)trace.len, trace.base);
    const char *argv[] = {"XADD",      FM_JOBS_STREAM,  "MAXLEN",     "~",           "1000000",     "*",
                          "job_id",    job->job_id,     "type",       job->type,     "file_id",     job->file_id,
                          "upload_id", job->upload_id,  "request_id", r->request_id, "traceparent", traceparent};
    if (fm_redis_call_with(r, e, on_xadd, (int)(sizeof(argv) / sizeof(argv[0])), argv) != 0)
        enqueue_finish(e); /* refused at once (shutting down): the reconciler adds it later */
}

static void on_group_created(redisReply *reply, const char *errstr, void *data)
{
    /* BUSYGROUP: it exists already, which is the normal case after the first start. */
    if (reply == NULL)
        fm_warn("jobs: cannot create the consumer group (retried at the next reconcile): %s", errstr);
    else if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "BUSYGROUP", 9) != 0)
        fm_warn("jobs: XGROUP CREATE: %s", reply->str);
}

void fm_jobs_ensure_group(fm_redis_t *redis)
{
    fm_redis_command(redis, on_group_created, NULL, "XGROUP CREATE %s %s 0 MKSTREAM", FM_JOBS_STREAM, FM_JOBS_GROUP);
}
