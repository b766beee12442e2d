/*
 * Direct-to-S3 uploads (DESIGN.md §4 "Upload", docs/uploads.md): the control plane validates, dedupes, records and
 * signs; the bytes go from the client to S3. Object keys are ours (`incoming/{upload_id}`), never the client's.
 *
 *   POST   /v1/uploads                  dedupe answer, presigned PUT, or multipart with part URLs
 *   POST   /v1/uploads/{id}/parts       more part URLs        GET /v1/uploads/{id}/parts   what S3 holds
 *   POST   /v1/uploads/{id}/complete    finish (idempotent)   DELETE /v1/uploads/{id}      abort
 *
 * POST /v1/uploads lives whole in uploads_create.c, completion and abort in uploads_complete.c; this file holds what
 * the family shares (the state, loading an upload, presigning) and the two /parts routes.
 *
 * S3 calls (CreateMultipartUpload, HEAD, ListParts, Complete, Abort, Delete) block, so they run on the offload
 * pool; presigning is CPU only and runs on the loop. Completion converges with the S3 event path (events.c) in
 * fm_upload_mark_uploaded (schema/003_uploads.sql): whichever comes first makes the one job.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "control.h"
#include "log.h"
#include "uploads.h"

#define UPLOAD_BODY_MAX 16384
#define MAX_PART_URLS_PER_CALL 1000

static void upload_state_free(void *p)
{
    fm_upload_state_t *s = p;
    free(s->parts);
}

fm_upload_state_t *fm_upload_state(fm_req_t *r)
{
    fm_upload_state_t *s = fm_req_state(r, sizeof(fm_upload_state_t));
    r->state_free = upload_state_free;
    return s;
}


/* ---- presigning ----------------------------------------------------------------------------------------------- */

/* Content-Length is signed (SigV4 canonical headers), so the store refuses a body of any other size with
 * SignatureDoesNotMatch: the declared size is what S3 accepts (quota and size limits hold), and a later PUT to the same
 * URL can only bring as many bytes. Content-Type is signed too, so the object's type is the one declared. */
char *fm_upload_presign(fm_req_t *r, const char *key, const char *content_type, long long content_length,
                        int part_number, const char *s3_upload_id, long long ttl)
{
    const fm_config_t *cfg = &fm_control->config;
    char part[16], length[24];
    snprintf(part, sizeof(part), "%d", part_number);
    snprintf(length, sizeof(length), "%lld", content_length);
    fm_sigv4_param_t params[] = {{"partNumber", part}, {"uploadId", s3_upload_id}};
    fm_sigv4_header_t headers[2];
    size_t header_count = 0;
    if (content_length >= 0)
        headers[header_count++] = (fm_sigv4_header_t){"Content-Length", length};
    if (content_type != NULL)
        headers[header_count++] = (fm_sigv4_header_t){"Content-Type", content_type};
    fm_sigv4_request_t req = {
        .method = "PUT",
        .endpoint = cfg->s3_public_endpoint,
        .bucket = cfg->s3_bucket,
        .key = key,
        .params = part_number > 0 ? params : NULL,
        .param_count = part_number > 0 ? 2 : 0,
        .headers = header_count > 0 ? headers : NULL,
        .header_count = header_count,
    };
    char *url = NULL;
    if (fm_sigv4_presign(fm_control_thread(r)->signer, &req, (long)ttl, time(NULL), &url) != 0) {
        fm_log(FM_LOG_ERROR, r->request_id, "presign: %s", fm_sigv4_last_error());
        return NULL;
    }
    return url;
}

/* The size of part `number` when the parts are ours to size (the last one holds the rest), else -1 (Uppy's client
 * sizes its parts: the size is checked as a whole when the upload completes). */
static long long part_length(const fm_upload_state_t *s, int number)
{
    if (s->part_size <= 0 || s->part_count <= 0 || number < 1 || number > s->part_count)
        return -1;
    return number < s->part_count ? s->part_size : s->size - (long long)(s->part_count - 1) * s->part_size;
}

int fm_upload_add_part_urls(fm_req_t *r, fm_upload_state_t *s, cJSON *array, const int *numbers, size_t count,
                            long long ttl)
{
    for (size_t i = 0; i < count; ++i) {
        char *url = fm_upload_presign(r, s->key, NULL, part_length(s, numbers[i]), numbers[i], s->s3_upload_id, ttl);
        if (url == NULL) {
            fm_reply_error(r, 500, "internal_error", "could not sign the part URLs");
            return -1;
        }
        cJSON *part = cJSON_CreateObject();
        cJSON_AddNumberToObject(part, "part_number", numbers[i]);
        cJSON_AddStringToObject(part, "url", url);
        cJSON_AddItemToArray(array, part);
        free(url);
    }
    return 0;
}


/* ---- loading an upload (every /v1/uploads/{id}/… route) -------------------------------------------------------- */

static void on_upload_loaded(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    if (PQntuples(res) != 1) {
        /* Someone else's upload is answered like a missing one: ids are not to be probed. */
        fm_reply_error(r, 404, "upload_not_found", "no such upload");
        return;
    }
    fm_upload_state_t *s = r->state;
    snprintf(s->upload_id, sizeof(s->upload_id), "%s", PQgetvalue(res, 0, 0));
    snprintf(s->file_id, sizeof(s->file_id), "%s", PQgetvalue(res, 0, 1));
    snprintf(s->key, sizeof(s->key), "%s", PQgetvalue(res, 0, 2));
    s->size = atoll(PQgetvalue(res, 0, 3));
    snprintf(s->content_type, sizeof(s->content_type), "%s", PQgetvalue(res, 0, 4));
    snprintf(s->method, sizeof(s->method), "%s", PQgetvalue(res, 0, 5));
    snprintf(s->s3_upload_id, sizeof(s->s3_upload_id), "%s", PQgetvalue(res, 0, 6));
    s->part_size = atoll(PQgetvalue(res, 0, 7));
    s->part_count = atoi(PQgetvalue(res, 0, 8));
    snprintf(s->status, sizeof(s->status), "%s", PQgetvalue(res, 0, 9));
    s->loaded(r, s);
}

static void load_upload_row(fm_req_t *r, void *arg);

void fm_upload_load(fm_req_t *r, const fm_principal_t *p, fm_upload_loaded_fn next)
{
    fm_upload_state_t *s = fm_upload_state(r);
    s->principal = p;
    h2o_iovec_t id = r->params[0];
    if (!fm_uuid_valid(id.base, id.len)) {
        fm_reply_error(r, 404, "upload_not_found", "no such upload");
        return;
    }
    snprintf(s->upload_id, sizeof(s->upload_id), "%.*s", (int)id.len, id.base);
    s->loaded = next;
    fm_records_ensure(r, s->upload_id, load_upload_row, NULL);
}

static void load_upload_row(fm_req_t *r, void *arg)
{
    fm_upload_state_t *s = r->state;
    const char *params[] = {s->upload_id, s->principal->user_id};
    fm_pg_call_prepared(r, on_upload_loaded,
               "SELECT id, file_id, object_key, size, content_type, method, coalesce(s3_upload_id, ''),"
               " coalesce(part_size, 0), coalesce(part_count, 0), status "
               "FROM uploads WHERE id = $1::uuid AND owner_id = $2::uuid",
               2, params);
}

/* ---- POST /v1/uploads/{id}/parts ------------------------------------------------------------------------------ */

static void part_urls_loaded(fm_req_t *r, fm_upload_state_t *s)
{
    if (strcmp(s->method, "MULTIPART") != 0) {
        fm_reply_error(r, 409, "not_multipart", "this upload is a single PUT");
        return;
    }
    if (strcmp(s->status, "PENDING") != 0) {
        fm_reply_error(r, 409, "not_pending", "this upload is %s", s->status);
        return;
    }
    cJSON *body = fm_req_json_body(r, UPLOAD_BODY_MAX);
    if (body == NULL)
        return;
    cJSON *numbers = cJSON_GetObjectItemCaseSensitive(body, "part_numbers");
    int count = cJSON_GetArraySize(numbers);
    if (!cJSON_IsArray(numbers) || count < 1 || count > MAX_PART_URLS_PER_CALL) {
        cJSON_Delete(body);
        fm_reply_error(r, 422, "invalid_parts", "part_numbers must be a list of 1 to %d part numbers",
                       MAX_PART_URLS_PER_CALL);
        return;
    }
    int *list = calloc((size_t)count, sizeof(int));
    if (list == NULL)
        h2o_fatal("out of memory");
    int i = 0;
    cJSON *item;
    cJSON_ArrayForEach(item, numbers)
    {
        if (!cJSON_IsNumber(item) || !(item->valuedouble >= 1 && item->valuedouble <= s->part_count) ||
            item->valuedouble != (double)(int)item->valuedouble) {
            free(list);
            cJSON_Delete(body);
            fm_reply_error(r, 422, "invalid_parts", "part numbers go from 1 to %d", s->part_count);
            return;
        }
        list[i++] = (int)item->valuedouble;
    }
    cJSON_Delete(body);
    long long ttl = fm_control->config.upload_url_ttl_s;
    char expires[32];
    fm_iso8601((long long)time(NULL) + ttl, expires);
    cJSON *answer = cJSON_CreateObject();
    if (fm_upload_add_part_urls(r, s, cJSON_AddArrayToObject(answer, "parts"), list, (size_t)count, ttl) != 0) {
        free(list);
        cJSON_Delete(answer);
        return;
    }
    free(list);
    cJSON_AddStringToObject(answer, "expires_at", expires);
    fm_reply_json(r, 200, answer);
}

static void part_urls_authorized(fm_req_t *r, const fm_principal_t *p)
{
    /* Part URLs are upload rights: a member demoted to viewer keeps its pending uploads but gets no new URLs. */
    if (p->role == FM_JWT_ROLE_VIEWER) {
        fm_reply_error(r, 403, "forbidden", "viewers cannot upload");
        return;
    }
    fm_upload_load(r, p, part_urls_loaded);
}

void handle_upload_part_urls(fm_req_t *r)
{
    fm_auth_require(r, part_urls_authorized);
}

/* ---- GET /v1/uploads/{id}/parts ------------------------------------------------------------------------------- */

static void list_parts_work(void *data)
{
    fm_req_t *r = data;
    fm_upload_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    s->parts = calloc(FM_UPLOAD_MAX_PARTS, sizeof(fm_s3_part_t));
    s->s3_ok = s3 != NULL && s->parts != NULL &&
               fm_s3_list_parts(s3, s->key, s->s3_upload_id, s->parts, FM_UPLOAD_MAX_PARTS, &s->part_count_given,
                                &s->s3) == 0;
}

static void on_parts_listed(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    fm_upload_state_t *s = r->state;
    if (!s->s3_ok) {
        /* AWS says NoSuchUpload; Ceph RGW NoSuchKey */
        if (strcmp(s->s3.code, "NoSuchUpload") == 0 || strcmp(s->s3.code, "NoSuchKey") == 0) {
            fm_reply_error(r, 409, "not_pending", "the object store no longer holds this upload");
            return;
        }
        fm_log(FM_LOG_WARN, r->request_id, "s3: ListParts: %ld %s", s->s3.status, s->s3.code);
        fm_reply_unavailable(r, "the object store");
        return;
    }
    if (s->uppy) { /* Companion answers a bare array of S3's own field names */
        cJSON *list = cJSON_CreateArray();
        for (size_t i = 0; i < s->part_count_given; ++i) {
            cJSON *part = cJSON_CreateObject();
            cJSON_AddNumberToObject(part, "PartNumber", s->parts[i].part_number);
            cJSON_AddNumberToObject(part, "Size", (double)s->parts[i].size);
            cJSON_AddStringToObject(part, "ETag", s->parts[i].etag);
            cJSON_AddItemToArray(list, part);
        }
        fm_reply_json(r, 200, list);
        return;
    }
    cJSON *body = cJSON_CreateObject(), *parts = cJSON_AddArrayToObject(body, "parts");
    for (size_t i = 0; i < s->part_count_given; ++i) {
        cJSON *part = cJSON_CreateObject();
        cJSON_AddNumberToObject(part, "part_number", s->parts[i].part_number);
        cJSON_AddStringToObject(part, "etag", s->parts[i].etag);
        cJSON_AddNumberToObject(part, "size", (double)s->parts[i].size);
        cJSON_AddItemToArray(parts, part);
    }
    cJSON_AddNumberToObject(body, "part_size", (double)s->part_size);
    cJSON_AddNumberToObject(body, "part_count", s->part_count);
    fm_reply_json(r, 200, body);
}

void fm_upload_list_parts_loaded(fm_req_t *r, fm_upload_state_t *s)
{
    if (strcmp(s->method, "MULTIPART") != 0) {
        fm_reply_error(r, 409, "not_multipart", "this upload is a single PUT");
        return;
    }
    if (strcmp(s->status, "PENDING") != 0) {
        fm_reply_error(r, 409, "not_pending", "this upload is %s", s->status);
        return;
    }
    fm_offload_call(r, list_parts_work, on_parts_listed, "the object store");
}

static void list_parts_authorized(fm_req_t *r, const fm_principal_t *p)
{
    fm_upload_load(r, p, fm_upload_list_parts_loaded);
}

void handle_upload_parts_list(fm_req_t *r)
{
    fm_auth_require(r, list_parts_authorized);
}
