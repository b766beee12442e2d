/*
 * Admin routes of the job queue (DESIGN.md §5; docs/workers.md "Retries and dead letters"):
 *
 *   GET  /v1/admin/jobs?status=failed    the newest 100 jobs in a status (failed by default)
 *   POST /v1/admin/jobs/{id}/retry       a FAILED job gets a fresh set of attempts → 202 {job_id, status}
 *
 * Admins only (the token's role); anyone else gets 403. The retry is one statement (schema 004 fm_job_requeue),
 * then the same XADD as every other job (jobs.c); if that XADD is lost, the reconciler adds the job later.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "control.h"
#include "log.h"
#include "qs.h"

#define LIST_LIMIT "100"

typedef struct {
    char job_id[40], type[32], file_id[40], upload_id[40];
} retry_state_t;

static const char *const statuses[] = {"queued", "running", "retry", "done", "failed", "dead"};

static int require_admin(fm_req_t *r, const fm_principal_t *p)
{
    if (p->role != FM_JWT_ROLE_ADMIN) {
        fm_reply_error(r, 403, "forbidden", "this route is for administrators");
        return -1;
    }
    return 0;
}

/* The `status` query parameter as the enum's value (uppercase) into out; "FAILED" when absent. -1 if unknown. */
static int status_param(fm_req_t *r, char *out, size_t size)
{
    snprintf(out, size, "FAILED");
    h2o_iovec_t value = fm_qs_raw(fm_req_query(r), "status", FM_QS_SKIP_EMPTY, NULL);
    if (value.base == NULL)
        return 0;
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        if (strlen(statuses[i]) == value.len && strncasecmp(statuses[i], value.base, value.len) == 0) {
            for (size_t k = 0; k <= value.len && k < size; k++)
                out[k] = k < value.len ? (char)(statuses[i][k] - 32) : '\0';
            return 0;
        }
    }
    return -1;
}

/* ---- GET /v1/admin/jobs ------------------------------------------------------------------------------------------ */

static void on_jobs_listed(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    cJSON *jobs = PQntuples(res) == 1 ? cJSON_Parse(PQgetvalue(res, 0, 0)) : NULL;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddItemToObject(body, "jobs", jobs ? jobs : cJSON_CreateArray());
    fm_reply_json(r, 200, body);
}

static void admin_jobs_authorized(fm_req_t *r, const fm_principal_t *p)
{
    if (require_admin(r, p) != 0)
        return;
    char status[16];
    if (status_param(r, status, sizeof(status)) != 0) {
        fm_reply_error(r, 422, "invalid_status", "status must be one of queued, running, retry, done, failed, dead");
        return;
    }
    const char *params[] = {status};
    fm_pg_call(r, on_jobs_listed,
               "SELECT coalesce(json_agg(to_jsonb(x) - 'sort' ORDER BY x.sort DESC, x.id), '[]')::text FROM ("
               " SELECT j.id, j.type, j.status, j.attempts, j.last_error, j.file_id, j.upload_id,"
               " to_char(j.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at,"
               " to_char(j.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS finished_at,"
               " j.created_at AS sort"
               " FROM jobs j WHERE j.status = $1::job_status ORDER BY j.created_at DESC LIMIT " LIST_LIMIT ") x",
               1, params);
}

void handle_admin_jobs(fm_req_t *r)
{
    fm_auth_require(r, admin_jobs_authorized);
}

/* ---- POST /v1/admin/jobs/{id}/retry --------------------------------------------------------------------------------
 */

static void ignore_reply(redisReply *reply, const char *errstr, void *data) {}

static void on_retry_enqueued(fm_req_t *r, void *arg)
{
    retry_state_t *s = r->state;
    fm_redis_command(fm_control_thread(r)->redis, ignore_reply, NULL, "DEL fm:file:{%s} fm:job:{%s}", s->file_id,
                     s->job_id);
    fm_tree_file_changed(fm_control_thread(r), s->file_id); /* its status shows in its owner's listings */
    fm_log(FM_LOG_INFO, r->request_id, "admin: job %s requeued", s->job_id);
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "job_id", s->job_id);
    cJSON_AddStringToObject(body, "status", "QUEUED");
    fm_reply_json(r, 202, body);
}

static void on_requeued(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    retry_state_t *s = r->state;
    const char *outcome = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "unknown";
    if (strcmp(outcome, "requeued") != 0) {
        if (strcmp(outcome, "not_failed") == 0)
            fm_reply_error(r, 409, "job_not_failed", "only a FAILED job can be retried");
        else
            fm_reply_error(r, 404, "not_found", "no such job");
        return;
    }
    snprintf(s->type, sizeof(s->type), "%s", PQgetvalue(res, 0, 1));
    snprintf(s->file_id, sizeof(s->file_id), "%s", PQgetvalue(res, 0, 2));
    snprintf(s->upload_id, sizeof(s->upload_id), "%s", PQgetvalue(res, 0, 3));
    fm_job_ref_t ref = {.job_id = s->job_id, .type = s->type, .file_id = s->file_id, .upload_id = s->upload_id};
    fm_jobs_enqueue(r, &ref, on_retry_enqueued, NULL);
}

static void admin_retry_authorized(fm_req_t *r, const fm_principal_t *p)
{
    if (require_admin(r, p) != 0)
        return;
    if (!fm_uuid_valid(r->params[0].base, r->params[0].len)) {
        fm_reply_error(r, 404, "not_found", "no such job");
        return;
    }
    retry_state_t *s = fm_req_state(r, sizeof(retry_state_t));
    for (size_t i = 0; i < 36; ++i) /* lowercase: the stream and the cache keys use one spelling */
        s->job_id[i] = (char)(r->params[0].base[i] >= 'A' && r->params[0].base[i] <= 'F' ? r->params[0].base[i] + 32
                                                                                         : r->params[0].base[i]);
    const char *params[] = {s->job_id};
    fm_pg_call(r, on_requeued,
               "SELECT outcome, coalesce(out_type, ''), coalesce(out_file::text, ''), coalesce(out_upload::text, '')"
               " FROM fm_job_requeue($1::uuid)",
               1, params);
}

void handle_admin_job_retry(fm_req_t *r)
{
    fm_auth_require(r, admin_retry_authorized);
}
