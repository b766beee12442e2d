/*
 * Finishing uploads: POST /v1/uploads/{id}/complete and DELETE /v1/uploads/{id}, and fm_upload_mark(), the one
 * place (with the S3 event path in events.c and the reconciler) where an upload becomes UPLOADED and gets its job.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "uploads.h"

#define COMPLETE_BODY_MAX (1024 * 1024) /* 10,000 parts of {"part_number":…,"etag":"…"} */

/* ---- marking an upload UPLOADED ------------------------------------------------------------------------------- */

typedef struct {
    fm_req_t *r;
    fm_upload_marked_fn done;
    char outcome[16], job_id[40], file_id[40], upload_id[40];
} mark_t;

static void mark_finish(mark_t *m)
{
    fm_req_t *r = m->r;
    fm_upload_marked_fn done = m->done;
    char outcome[16], job_id[40], file_id[40];
    memcpy(outcome, m->outcome, sizeof(outcome));
    memcpy(job_id, m->job_id, sizeof(job_id));
    memcpy(file_id, m->file_id, sizeof(file_id));
    free(m);
    done(r, outcome, job_id, file_id);
}

static void on_mark_enqueued(fm_req_t *r, void *arg)
{
    mark_finish(arg);
}

static void ignore_reply(redisReply *reply, const char *errstr, void *data)
{
}

static void on_marked(PGresult *res, const char *errstr, void *data)
{
    mark_t *m = data;
    fm_req_t *r = m->r;
    if (fm_req_resume(r) != 0) {
        free(m);
        return;
    }
    if (fm_pg_failed(r, res, errstr)) {
        free(m);
        return;
    }
    snprintf(m->outcome, sizeof(m->outcome), "%s", PQgetvalue(res, 0, 0));
    snprintf(m->job_id, sizeof(m->job_id), "%s", PQgetvalue(res, 0, 1));
    snprintf(m->file_id, sizeof(m->file_id), "%s", PQgetvalue(res, 0, 2));
    if (m->file_id[0] != '\0') /* the cached file row (files.c) is stale now */
        fm_redis_command(fm_control_thread(r)->redis, ignore_reply, NULL, "DEL fm:file:{%s}", m->file_id);
    if (strcmp(m->outcome, "uploaded") == 0 && PQgetlength(res, 0, 3) == 36) /* its status shows in listings */
        fm_tree_changed(fm_control_thread(r), PQgetvalue(res, 0, 3));
    if (strcmp(m->outcome, "uploaded") != 0) {
        mark_finish(m);
        return;
    }
    fm_job_ref_t job = {.job_id = m->job_id, .type = "process_upload", .file_id = m->file_id,
                        .upload_id = m->upload_id};
    fm_jobs_enqueue(r, &job, on_mark_enqueued, m);
}

void fm_upload_mark(fm_req_t *r, const char *upload_id, long long size, const char *etag, const char *by,
                    fm_upload_marked_fn done)
{
    mark_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        h2o_fatal("out of memory");
    m->r = r;
    m->done = done;
    snprintf(m->upload_id, sizeof(m->upload_id), "%s", upload_id);
    char size_text[24];
    snprintf(size_text, sizeof(size_text), "%lld", size);
    const char *params[] = {upload_id, size >= 0 ? size_text : NULL, etag, by, fm_control->config.s3_bucket};
    if (fm_pg_call_with(r, m, on_marked,
                        "SELECT m.outcome, coalesce(m.job_id::text, ''), coalesce(m.file_id::text, ''),"
                        " coalesce(f.owner_id::text, '') "
                        "FROM fm_upload_mark_uploaded($1::uuid, $2::bigint, $3, $4, $5) m"
                        " LEFT JOIN files f ON f.id = m.file_id",
                        5, params) != 0) {
        free(m);
        fm_reply_unavailable(r, "the database");
    }
}

/* ---- POST /v1/uploads/{id}/complete --------------------------------------------------------------------------- */

static void answer_completed(fm_req_t *r, const char *job_id)
{
    fm_upload_state_t *s = r->state;
    cJSON *body = cJSON_CreateObject();
    if (s->uppy) { /* Companion's answer: where the object is */
        char location[512];
        snprintf(location, sizeof(location), "%s/%s/%s", fm_control->config.s3_public_endpoint,
                 fm_control->config.s3_bucket, s->key);
        cJSON_AddStringToObject(body, "location", location);
        cJSON_AddStringToObject(body, "file_id", s->file_id);
        cJSON_AddStringToObject(body, "job_id", job_id);
        fm_reply_json(r, 200, body);
        return;
    }
    cJSON_AddStringToObject(body, "upload_id", s->upload_id);
    cJSON_AddStringToObject(body, "file_id", s->file_id);
    cJSON_AddStringToObject(body, "status", "UPLOADED");
    cJSON_AddStringToObject(body, "job_id", job_id);
    fm_reply_json(r, 200, body);
}

static void delete_object_work(void *data)
{
    fm_req_t *r = data;
    fm_upload_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    fm_s3_result_t res;
    if (s3 == NULL || fm_s3_delete_object(s3, s->key, &res) != 0)
        fm_warn("s3: could not delete %s (the reconciler retries): %ld %s", s->key, s3 ? res.status : 0,
                s3 ? res.code : "no client");
}

static void on_mismatch_deleted(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    fm_upload_state_t *s = r->state;
    fm_reply_error(r, 409, "size_mismatch", "the object holds %lld bytes, %lld were announced; the upload failed",
                   s->s3.content_length, s->size);
}

static void on_complete_marked(fm_req_t *r, const char *outcome, const char *job_id, const char *file_id)
{
    fm_upload_state_t *s = r->state;
    if (strcmp(outcome, "uploaded") == 0 || strcmp(outcome, "already") == 0) {
        answer_completed(r, job_id);
    } else if (strcmp(outcome, "size_mismatch") == 0) {
        fm_offload_call(r, delete_object_work, on_mismatch_deleted, "the object store");
    } else {
        fm_reply_error(r, 409, "not_pending", "this upload can no longer be completed (%s)", s->status);
    }
}

static void head_work(void *data)
{
    fm_req_t *r = data;
    fm_upload_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    s->s3_ok = s3 != NULL && fm_s3_head_object(s3, s->key, &s->s3) == 0;
}

/* Multipart: CompleteMultipartUpload, then HEAD for the final ETag and size (RGW leaves the ETag of Complete's
 * answer empty, notes/local-s3-store.md). */
static void complete_multipart_work(void *data)
{
    fm_req_t *r = data;
    fm_upload_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    s->s3_ok = s3 != NULL && fm_s3_complete_multipart(s3, s->key, s->s3_upload_id, s->parts, s->part_count_given,
                                                      &s->s3) == 0;
    /* NoSuchUpload after an earlier, lost answer: the object may already be complete. */
    if (s->s3_ok || (s3 != NULL && strcmp(s->s3.code, "NoSuchUpload") == 0))
        s->s3_ok = fm_s3_head_object(s3, s->key, &s->s3) == 0;
}

static void on_object_checked(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    fm_upload_state_t *s = r->state;
    if (!s->s3_ok) {
        const char *code = s->s3.code;
        if (s->s3.status == 404 || strcmp(code, "NotFound") == 0 || strcmp(code, "NoSuchKey") == 0 ||
            strcmp(code, "NoSuchUpload") == 0) {
            fm_reply_error(r, 409, "object_missing", "the object store holds nothing for this upload yet");
        } else if (strcmp(code, "InvalidPart") == 0 || strcmp(code, "InvalidPartOrder") == 0 ||
                   strcmp(code, "EntityTooSmall") == 0 || strcmp(code, "InvalidArgument") == 0) {
            fm_reply_error(r, 422, "invalid_parts", "the object store refused the parts: %s", code);
        } else {
            fm_log(FM_LOG_WARN, r->request_id, "s3: complete/HEAD %s: %ld %s", s->key, s->s3.status, code);
            fm_reply_unavailable(r, "the object store");
        }
        return;
    }
    char etag[256];
    size_t len = strlen(s->s3.etag);
    if (len >= 2 && s->s3.etag[0] == '"' && s->s3.etag[len - 1] == '"')
        snprintf(etag, sizeof(etag), "%.*s", (int)(len - 2), s->s3.etag + 1);
    else
        snprintf(etag, sizeof(etag), "%s", s->s3.etag);
    fm_upload_mark(r, s->upload_id, s->s3.content_length, etag, "complete", on_complete_marked);
}

/* Reads {"parts":[{"part_number","etag"}…]} (ascending, 1..part_count); answers and returns -1 if bad. */
static int parse_parts(fm_req_t *r, fm_upload_state_t *s)
{
    cJSON *body = fm_req_json_body(r, COMPLETE_BODY_MAX);
    if (body == NULL)
        return -1;
    cJSON *parts = cJSON_GetObjectItemCaseSensitive(body, "parts"), *item;
    int count = cJSON_GetArraySize(parts), previous = 0;
    /* Parts sized by the client (Uppy): their number is known only now. */
    int most = s->part_count > 0 ? s->part_count : FM_UPLOAD_MAX_PARTS;
    const char *number_field = s->uppy ? "PartNumber" : "part_number", *etag_field = s->uppy ? "ETag" : "etag";
    if (!cJSON_IsArray(parts) || count < 1 || count > most) {
        cJSON_Delete(body);
        fm_reply_error(r, 422, "invalid_parts", "parts must list 1 to %d parts", most);
        return -1;
    }
    s->parts = calloc((size_t)count, sizeof(fm_s3_part_t));
    if (s->parts == NULL)
        h2o_fatal("out of memory");
    cJSON_ArrayForEach(item, parts)
    {
        cJSON *number = cJSON_GetObjectItemCaseSensitive(item, number_field);
        cJSON *etag = cJSON_GetObjectItemCaseSensitive(item, etag_field);
        /* range first: converting an out-of-range double to int is undefined */
        if (!cJSON_IsNumber(number) || !(number->valuedouble >= 1 && number->valuedouble <= most) ||
            number->valuedouble != (double)(int)number->valuedouble || (int)number->valuedouble <= previous ||
            !cJSON_IsString(etag) ||
            strlen(etag->valuestring) == 0 || strlen(etag->valuestring) >= sizeof(s->parts[0].etag)) {
            cJSON_Delete(body);
            fm_reply_error(r, 422, "invalid_parts",
                           "each part needs a %s (ascending, 1 to %d) and the %s S3 answered", number_field, most,
                           etag_field);
            return -1;
        }
        fm_s3_part_t *part = &s->parts[s->part_count_given++];
        part->part_number = previous = (int)number->valuedouble;
        snprintf(part->etag, sizeof(part->etag), "%s", etag->valuestring);
    }
    cJSON_Delete(body);
    if (s->part_count > 0 && (int)s->part_count_given != s->part_count) {
        fm_reply_error(r, 422, "invalid_parts", "all %d parts must be listed, %zu were", s->part_count,
                       s->part_count_given);
        return -1;
    }
    return 0;
}

void fm_upload_complete_loaded(fm_req_t *r, fm_upload_state_t *s)
{
    if (strcmp(s->status, "UPLOADED") == 0 || strcmp(s->status, "COMPLETED") == 0) {
        /* Idempotent: the same answer, the same job. */
        fm_upload_mark(r, s->upload_id, -1, NULL, "complete", on_complete_marked);
        return;
    }
    if (strcmp(s->status, "PENDING") != 0) {
        fm_reply_error(r, 409, "not_pending", "this upload is %s", s->status);
        return;
    }
    if (strcmp(s->method, "MULTIPART") == 0) {
        if (parse_parts(r, s) != 0)
            return;
        fm_offload_call(r, complete_multipart_work, on_object_checked, "the object store");
    } else {
        fm_offload_call(r, head_work, on_object_checked, "the object store");
    }
}

static void complete_authorized(fm_req_t *r, const fm_principal_t *p)
{
    fm_upload_load(r, p, fm_upload_complete_loaded);
}

void handle_upload_complete(fm_req_t *r)
{
    fm_auth_require(r, complete_authorized);
}

/* ---- DELETE /v1/uploads/{id} ---------------------------------------------------------------------------------- */

static void answer_aborted(fm_req_t *r)
{
    fm_upload_state_t *s = r->state;
    if (s->uppy)
        fm_reply_raw(r, 200, "application/json", "{}", 2); /* Companion answers an empty object */
    else
        fm_reply_raw(r, 204, "application/json", "", 0);
}

/* The abort is recorded first, then S3 is cleaned: the other order lets a `complete` or an event that wins the race
 * record an upload whose object the abort has just deleted. If the S3 clean-up fails, the reconciler's sweep of
 * ABORTED uploads finishes it. */
static void abort_work(void *data)
{
    fm_req_t *r = data;
    fm_upload_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    if (s3 == NULL) {
        s->s3_ok = 0;
        return;
    }
    s->s3_ok = 1;
    if (strcmp(s->method, "MULTIPART") == 0 && fm_s3_abort_multipart(s3, s->key, s->s3_upload_id, &s->s3) != 0 &&
        strcmp(s->s3.code, "NoSuchUpload") != 0)
        s->s3_ok = 0;
    /* A single PUT may have landed. */
    fm_s3_result_t res;
    if (fm_s3_delete_object(s3, s->key, &res) != 0 && res.status != 404)
        s->s3_ok = 0;
}

static void on_aborted(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    fm_upload_state_t *s = r->state;
    if (!s->s3_ok)
        fm_log(FM_LOG_WARN, r->request_id, "s3: abort %s: %ld %s (the reconciler sweeps it later)", s->key,
               s->s3.status, s->s3.code);
    answer_aborted(r);
}

static void on_abort_recorded(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    if (PQntuples(res) == 0) { /* completed meanwhile (an event or a complete won the race): the object stays */
        fm_reply_error(r, 409, "already_completed", "this upload was completed");
        return;
    }
    fm_upload_state_t *s = r->state;
    fm_redis_command(fm_control_thread(r)->redis, ignore_reply, NULL, "DEL fm:file:{%s}", s->file_id);
    fm_tree_changed(fm_control_thread(r), s->principal->user_id); /* the file left the owner's listings */
    fm_offload_call(r, abort_work, on_aborted, "the object store");
}

void fm_upload_abort_loaded(fm_req_t *r, fm_upload_state_t *s)
{
    if (strcmp(s->status, "UPLOADED") == 0 || strcmp(s->status, "COMPLETED") == 0) {
        fm_reply_error(r, 409, "already_completed", "this upload was completed; delete the file instead");
        return;
    }
    if (strcmp(s->status, "PENDING") != 0) {
        answer_aborted(r); /* aborted or expired already */
        return;
    }
    const char *params[] = {s->upload_id};
    fm_pg_call(r, on_abort_recorded,
               "WITH u AS (UPDATE uploads SET status = 'ABORTED', status_reason = 'aborted by the owner'"
               "           WHERE id = $1::uuid AND status = 'PENDING' RETURNING file_id) "
               "UPDATE files SET status = 'FAILED', status_reason = 'aborted', deleted_at = now(),"
               "                 updated_at = now(), version = version + 1 "
               "WHERE id IN (SELECT file_id FROM u) RETURNING id",
               1, params);
}

static void abort_authorized(fm_req_t *r, const fm_principal_t *p)
{
    fm_upload_load(r, p, fm_upload_abort_loaded);
}

void handle_upload_abort(fm_req_t *r)
{
    fm_auth_require(r, abort_authorized);
}
