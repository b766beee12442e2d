/*
 * Direct-to-S3 uploads (DESIGN.md §4 "Upload", docs/uploads.md): the control plane validates, dedupes, records and
 * signs; the bytes go from the client to S3. Object keys are ours (`incoming/{upload_id}`), never the client's.
 *
 *   POST   /v1/uploads                  dedupe answer, presigned PUT, or multipart with part URLs
 *   POST   /v1/uploads/{id}/parts       more part URLs        GET /v1/uploads/{id}/parts   what S3 holds
 *   POST   /v1/uploads/{id}/complete    finish (idempotent)   DELETE /v1/uploads/{id}      abort
 *
 * POST /v1/uploads enters in uploads_create.c (the dedupe decision, one Redis script in the common case) and comes
 * here through upload_start when the answer is a new upload.
 *
 * S3 calls (CreateMultipartUpload, HEAD, ListParts, Complete, Abort, Delete) block, so they run on the offload
 * pool; presigning is CPU only and runs on the loop. Completion converges with the S3 event path (events.c) in
 * fm_upload_mark_uploaded (schema/003_uploads.sql): whichever comes first makes the one job.
 */
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "control.h"
#include "log.h"
#include "names.h"
#include "uploads.h"

#define UPLOAD_BODY_MAX 16384
#define COMPLETE_BODY_MAX (1024 * 1024) /* 10,000 parts × ~80 bytes of JSON */
#define MIN_PART_SIZE (8ll * 1024 * 1024)
#define FIRST_PART_URLS 100
#define MAX_PART_URLS_PER_CALL 1000

static void upload_state_free(void *p)
{
    upload_state_t *s = p;
    free(s->parts);
}

upload_state_t *upload_state(fm_req_t *r)
{
    upload_state_t *s = fm_req_state(r, sizeof(upload_state_t));
    r->state_free = upload_state_free;
    return s;
}

/* ---- validation ----------------------------------------------------------------------------------------------- */

/* A file name is shown and downloaded, never used as a path: no separators, NUL or control characters. */
static int sha256_normalize(const char *in, char out[65])
{
    if (strlen(in) != 64)
        return 0;
    for (int i = 0; i < 64; ++i) {
        char c = in[i];
        if (c >= 'A' && c <= 'F')
            c = (char)(c - 'A' + 'a');
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
        out[i] = c;
    }
    out[64] = '\0';
    return 1;
}

static int content_type_allowed(const char *type)
{
    const char *list = fm_control->config.allowed_content_types;
    size_t len = strlen(type);
    if (strcmp(list, "*") == 0)
        return len > 0 && len < 128 && strchr(type, '/') != NULL;
    for (const char *p = list; *p != '\0';) {
        const char *comma = strchr(p, ',');
        size_t item = comma ? (size_t)(comma - p) : strlen(p);
        if (item == len && strncasecmp(p, type, len) == 0)
            return 1;
        p += item + (comma ? 1 : 0);
    }
    return 0;
}

/* A version 4 UUID: the upload id is ours, so the object key is known before the row exists. The random bytes come
 * from OpenSSL's generator a few hundred at a time: one RAND_bytes call per id (its locks and checks) cost as much as
 * the rest of the id. The digits are written by hand for the same reason (16 × %02x). */
void upload_new_id(char out[37])
{
    static _Thread_local unsigned char pool[512];
    static _Thread_local size_t left;
    if (left < 16) {
        if (RAND_bytes(pool, sizeof(pool)) != 1)
            h2o_fatal("RAND_bytes failed");
        left = sizeof(pool);
    }
    unsigned char b[16];
    memcpy(b, pool + sizeof(pool) - left, sizeof(b));
    OPENSSL_cleanse(pool + sizeof(pool) - left, sizeof(b)); /* each byte is handed out once */
    left -= sizeof(b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    for (int i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    *p = '\0';
}

/* S3: at most 10,000 parts of at least 5 MiB (the last may be smaller); a whole number of MiB keeps it simple. */
static long long choose_part_size(long long size)
{
    long long mib = 1024 * 1024, needed = (size + MAX_PARTS - 1) / MAX_PARTS;
    needed = (needed + mib - 1) / mib * mib;
    return needed > MIN_PART_SIZE ? needed : MIN_PART_SIZE;
}

void iso8601(long long t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- presigning ----------------------------------------------------------------------------------------------- */

/* Content-Length is signed (SigV4 canonical headers), so the store refuses a body of any other size with
 * SignatureDoesNotMatch: the declared size is what S3 accepts (quota and size limits hold), and a later PUT to the same
 * URL can only bring as many bytes. Content-Type is signed too, so the object's type is the one declared. */
char *upload_presign(fm_req_t *r, const char *key, const char *content_type, long long content_length,
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
static long long part_length(const upload_state_t *s, int number)
{
    if (s->part_size <= 0 || s->part_count <= 0 || number < 1 || number > s->part_count)
        return -1;
    return number < s->part_count ? s->part_size : s->size - (long long)(s->part_count - 1) * s->part_size;
}

/* Adds {part_number, url} for each number to `array`; returns -1 (after answering 500) if signing failed. */
static int add_part_urls(fm_req_t *r, upload_state_t *s, cJSON *array, const int *numbers, size_t count, long long ttl)
{
    for (size_t i = 0; i < count; ++i) {
        char *url = upload_presign(r, s->key, NULL, part_length(s, numbers[i]), numbers[i], s->s3_upload_id, ttl);
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

/* ---- POST /v1/uploads ----------------------------------------------------------------------------------------- */

/* Uppy's @uppy/aws-s3 (Companion's routes, uppy.c) expects other shapes for the same two answers. */
static void answer_created_uppy(fm_req_t *r, upload_state_t *s, long long ttl)
{
    cJSON *body = cJSON_CreateObject();
    if (s->mode == UPLOAD_MODE_CLIENT_PARTS) {
        cJSON_AddStringToObject(body, "key", s->key);
        cJSON_AddStringToObject(body, "uploadId", s->s3_upload_id);
    } else {
        char *url = upload_presign(r, s->key, s->content_type, s->size, 0, NULL, ttl);
        if (url == NULL) {
            cJSON_Delete(body);
            fm_reply_error(r, 500, "internal_error", "could not sign the upload URL");
            return;
        }
        cJSON_AddStringToObject(body, "method", "PUT");
        cJSON_AddStringToObject(body, "url", url);
        cJSON_AddObjectToObject(body, "fields");
        cJSON_AddStringToObject(cJSON_AddObjectToObject(body, "headers"), "Content-Type", s->content_type);
        cJSON_AddNumberToObject(body, "expires", (double)ttl);
        /* not Companion's, ignored by Uppy: lets the app follow the file (no complete call comes on this path) */
        cJSON_AddStringToObject(body, "file_id", s->file_id);
        cJSON_AddStringToObject(body, "upload_id", s->upload_id);
        free(url);
    }
    fm_reply_json(r, 200, body);
}

void upload_answer_created(fm_req_t *r, upload_state_t *s)
{
    long long ttl = fm_control->config.upload_url_ttl_s;
    if (s->uppy) {
        answer_created_uppy(r, s, ttl);
        return;
    }
    char expires[32];
    iso8601((long long)time(NULL) + ttl, expires);
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "upload_id", s->upload_id);
    cJSON_AddStringToObject(body, "file_id", s->file_id);
    cJSON_AddBoolToObject(body, "deduplicated", 0);
    cJSON_AddStringToObject(body, "expires_at", expires);
    if (s->s3_upload_id[0] == '\0') {
        char *url = upload_presign(r, s->key, s->content_type, s->size, 0, NULL, ttl);
        if (url == NULL) {
            cJSON_Delete(body);
            fm_reply_error(r, 500, "internal_error", "could not sign the upload URL");
            return;
        }
        cJSON_AddStringToObject(body, "method", "PUT");
        cJSON_AddStringToObject(body, "url", url);
        cJSON_AddStringToObject(cJSON_AddObjectToObject(body, "headers"), "Content-Type", s->content_type);
        free(url);
    } else {
        cJSON_AddStringToObject(body, "method", "MULTIPART");
        cJSON *multipart = cJSON_AddObjectToObject(body, "multipart");
        cJSON_AddNumberToObject(multipart, "part_size", (double)s->part_size);
        cJSON_AddNumberToObject(multipart, "part_count", s->part_count);
        int numbers[FIRST_PART_URLS];
        size_t count = (size_t)(s->part_count < FIRST_PART_URLS ? s->part_count : FIRST_PART_URLS);
        for (size_t i = 0; i < count; ++i)
            numbers[i] = (int)i + 1;
        if (add_part_urls(r, s, cJSON_AddArrayToObject(multipart, "parts"), numbers, count, ttl) != 0) {
            cJSON_Delete(body);
            return;
        }
    }
    fm_reply_json(r, 201, body);
}

static void abort_orphan_work(void *data)
{
    fm_req_t *r = data;
    upload_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    if (s3 != NULL)
        fm_s3_abort_multipart(s3, s->key, s->s3_upload_id, &s->s3);
}

static void on_orphan_aborted(void *data)
{
    fm_req_t *r = data;
    fm_req_resume(r);
}

static void on_upload_recorded(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    upload_state_t *s = r->state;
    int failed = fm_pg_failed(r, res, errstr);
    if (!failed && PQntuples(res) == 0) {
        fm_reply_error(r, 404, "folder_not_found", "no folder %s of yours", s->folder);
        failed = 1;
    }
    if (failed) {
        /* Do not leave a multipart upload behind on S3 for a record that does not exist. */
        if (s->s3_upload_id[0] != '\0') {
            fm_req_hold(r);
            if (fm_offload_run(r->thread->offload, abort_orphan_work, on_orphan_aborted, r) != 0)
                fm_req_resume(r);
        }
        return;
    }
    snprintf(s->file_id, sizeof(s->file_id), "%s", PQgetvalue(res, 0, 0));
    upload_answer_created(r, s);
}

static void record_upload(fm_req_t *r, upload_state_t *s)
{
    char size[24], part_size[24], part_count[16], ttl[24];
    snprintf(size, sizeof(size), "%lld", s->size);
    snprintf(part_size, sizeof(part_size), "%lld", s->part_size);
    snprintf(part_count, sizeof(part_count), "%d", s->part_count);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)fm_control->config.upload_url_ttl_s);
    int multipart = s->s3_upload_id[0] != '\0';
    const char *params[] = {s->principal->user_id, s->folder[0] ? s->folder : NULL, s->name, size, s->content_type,
                            s->sha256, s->upload_id, multipart ? "MULTIPART" : "PUT",
                            s->part_count > 0 ? part_size : NULL, s->part_count > 0 ? part_count : NULL, ttl,
                            multipart ? s->s3_upload_id : NULL, s->key};
    fm_pg_call(r, on_upload_recorded,
               "WITH f AS ("
               "  INSERT INTO files (owner_id, folder_id, name, size, content_type, claimed_sha256, status)"
               "  SELECT $1::uuid, $2::uuid, $3, $4::bigint, $5, decode($6, 'hex'), 'PENDING_UPLOAD'"
               "  WHERE $2::uuid IS NULL OR EXISTS (SELECT 1 FROM folders WHERE id = $2::uuid AND owner_id = $1::uuid)"
               "  RETURNING id), "
               "u AS ("
               "  INSERT INTO uploads (id, file_id, owner_id, object_key, size, content_type, claimed_sha256, method,"
               "                       part_size, part_count, expires_at, s3_upload_id)"
               "  SELECT $7::uuid, f.id, $1::uuid, $13, $4::bigint, $5, decode($6, 'hex'), $8, $9::bigint,"
               "         $10::integer, now() + make_interval(secs => $11::integer), $12 FROM f"
               "  RETURNING file_id) "
               "SELECT file_id FROM u",
               13, params);
}

static void create_multipart_work(void *data)
{
    fm_req_t *r = data;
    upload_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    s->s3_ok = s3 != NULL && fm_s3_create_multipart(s3, s->key, s->content_type, &s->s3) == 0;
    if (s->s3_ok)
        snprintf(s->s3_upload_id, sizeof(s->s3_upload_id), "%s", s->s3.upload_id);
}

static void on_multipart_created(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    upload_state_t *s = r->state;
    if (!s->s3_ok) {
        fm_log(FM_LOG_WARN, r->request_id, "s3: CreateMultipartUpload: %ld %s %s", s->s3.status, s->s3.code,
               s->s3.message);
        fm_reply_unavailable(r, "the object store");
        return;
    }
    record_upload(r, s);
}

static void on_record_stored(fm_req_t *r, fm_record_outcome_t outcome)
{
    if (outcome != FM_RECORD_FULL) {
        upload_answer_created(r, r->state);
        return;
    }
    /* The backlog of records only in Redis is at its bound: this one goes to PostgreSQL before the answer. */
    if (fm_records_through(r))
        record_upload(r, r->state);
}

fm_record_t upload_record(const upload_state_t *s)
{
    return (fm_record_t){
        .upload_id = s->upload_id,
        .file_id = s->file_id,
        .owner_id = s->principal->user_id,
        .name = s->name,
        .content_type = s->content_type,
        .sha256 = s->sha256,
        .object_key = s->key,
        .size = s->size,
        .expires_at = (long long)time(NULL) + fm_control->config.upload_url_ttl_s,
    };
}

/* A single PUT outside any folder: the record is written behind (records.c), nothing waits for PostgreSQL, unless
 * the backlog is at its bound. */
static void record_upload_behind(fm_req_t *r, upload_state_t *s)
{
    upload_new_id(s->file_id);
    fm_record_t rec = upload_record(s);
    fm_records_put(r, &rec, on_record_stored);
}

void upload_record_through(fm_req_t *r, upload_state_t *s)
{
    record_upload(r, s);
}

void upload_start(fm_req_t *r, upload_state_t *s)
{
    upload_new_id(s->upload_id);
    snprintf(s->key, sizeof(s->key), "incoming/%s", s->upload_id);
    if (s->mode == UPLOAD_MODE_CLIENT_PARTS) {
        /* The client (Uppy) chooses its part size: part_size/part_count stay unknown (NULL) until complete. */
        s->part_size = 0;
        s->part_count = 0;
        fm_offload_call(r, create_multipart_work, on_multipart_created, "the object store");
    } else if (s->mode == UPLOAD_MODE_AUTO && s->size > fm_control->config.multipart_threshold) {
        s->part_size = choose_part_size(s->size);
        s->part_count = (int)((s->size + s->part_size - 1) / s->part_size);
        fm_offload_call(r, create_multipart_work, on_multipart_created, "the object store");
    } else if (fm_control->config.record_flush_ms > 0 && s->folder[0] == '\0') {
        record_upload_behind(r, s);
    } else {
        record_upload(r, s); /* a folder's ownership is PostgreSQL's to check */
    }
}

int upload_validate(fm_req_t *r, upload_state_t *s, const char *name, double size, const char *type, const char *sha,
                    const char *folder)
{
    fm_name_error_t name_error = fm_name_check(name, strlen(name)); /* common/names.h: the one rule for names */
    if (name_error != FM_NAME_OK) {
        fm_reply_error(r, 422, "invalid_name", "%s", fm_name_error_message(name_error));
        return -1;
    }
    /* range first: converting an out-of-range double to an integer is undefined */
    if (size > (double)fm_control->config.max_upload_bytes) {
        fm_reply_error(r, 413, "too_large", "files may be at most %lld bytes",
                       (long long)fm_control->config.max_upload_bytes);
        return -1;
    }
    if (!(size >= 0) || size != (double)(long long)size) {
        fm_reply_error(r, 422, "invalid_size", "size must be a whole number of bytes, 0 or more");
        return -1;
    }
    if (!content_type_allowed(type)) {
        fm_reply_error(r, 415, "content_type_not_allowed", "content type %.100s is not accepted here", type);
        return -1;
    }
    if (!sha256_normalize(sha, s->sha256)) {
        fm_reply_error(r, 422, "invalid_sha256", "sha256 must be 64 hexadecimal digits");
        return -1;
    }
    if (folder != NULL) {
        if (!fm_uuid_valid(folder, strlen(folder))) {
            fm_reply_error(r, 422, "invalid_folder", "folder must be a folder id (UUID) or null");
            return -1;
        }
        snprintf(s->folder, sizeof(s->folder), "%s", folder);
    }
    snprintf(s->name, sizeof(s->name), "%s", name);
    snprintf(s->content_type, sizeof(s->content_type), "%s", type);
    s->size = (long long)size;
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
    upload_state_t *s = r->state;
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

void load_upload(fm_req_t *r, const fm_principal_t *p, upload_loaded_fn next)
{
    upload_state_t *s = upload_state(r);
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
    upload_state_t *s = r->state;
    const char *params[] = {s->upload_id, s->principal->user_id};
    fm_pg_call(r, on_upload_loaded,
               "SELECT id, file_id, object_key, size, content_type, method, coalesce(s3_upload_id, ''),"
               " coalesce(part_size, 0), coalesce(part_count, 0), status "
               "FROM uploads WHERE id = $1::uuid AND owner_id = $2::uuid",
               2, params);
}

/* ---- POST /v1/uploads/{id}/parts ------------------------------------------------------------------------------ */

static void part_urls_loaded(fm_req_t *r, upload_state_t *s)
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
    iso8601((long long)time(NULL) + ttl, expires);
    cJSON *answer = cJSON_CreateObject();
    if (add_part_urls(r, s, cJSON_AddArrayToObject(answer, "parts"), list, (size_t)count, ttl) != 0) {
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
    load_upload(r, p, part_urls_loaded);
}

void handle_upload_part_urls(fm_req_t *r)
{
    fm_auth_require(r, part_urls_authorized);
}

/* ---- GET /v1/uploads/{id}/parts ------------------------------------------------------------------------------- */

static void list_parts_work(void *data)
{
    fm_req_t *r = data;
    upload_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    s->parts = calloc(MAX_PARTS, sizeof(fm_s3_part_t));
    s->s3_ok = s3 != NULL && s->parts != NULL &&
               fm_s3_list_parts(s3, s->key, s->s3_upload_id, s->parts, MAX_PARTS, &s->part_count_given, &s->s3) == 0;
}

static void on_parts_listed(void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    upload_state_t *s = r->state;
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

void upload_list_parts_loaded(fm_req_t *r, upload_state_t *s)
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
    load_upload(r, p, upload_list_parts_loaded);
}

void handle_upload_parts_list(fm_req_t *r)
{
    fm_auth_require(r, list_parts_authorized);
}
