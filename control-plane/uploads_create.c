/*
 * POST /v1/uploads, whole (docs/uploads.md "Upload", "Dedupe"): the choice between a dedupe answer and a new upload,
 * and the making of a new upload (S3 multipart first if needed, the record, the 201 with presigned URLs).
 * fm_upload_validate and fm_upload_start are shared with Uppy's routes (uppy.c). Loop-thread only: the S3 call
 * (CreateMultipartUpload) runs on the offload pool.
 *
 * authorize (bearer token; viewers cannot upload) → parse (the body, fm_upload_validate) → act: the common case, a
 * single PUT outside any folder with records written behind, is one Redis script (records.c's probe: the owner's
 * dedupe index asked and the record stored together, or not stored when the backlog is at its bound: then the
 * record is written through to PostgreSQL); otherwise the index is asked first (HMGET) and PostgreSQL decides
 * whenever the index is missing, names the hash with another size, or a folder must be checked.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "control.h"
#include "log.h"
#include "mediatype.h"
#include "names.h"
#include "quota.h"
#include "uploads.h"

#define UPLOAD_BODY_MAX 16384
#define MIN_PART_SIZE (8ll * 1024 * 1024)
#define FIRST_PART_URLS 100

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

/* Matched on the essence (type/subtype, case-insensitive, common/mediatype.h): "text/plain; charset=utf-8" is a
 * text/plain. The value itself is kept as sent: it is signed into the PUT and S3 stores it (docs/decisions.md). */
static int content_type_allowed(const fm_media_type_t *type)
{
    const char *list = fm_control->config.allowed_content_types;
    size_t len = strlen(type->essence);
    if (strcmp(list, "*") == 0)
        return 1;
    for (const char *p = list; *p != '\0';) {
        const char *comma = strchr(p, ',');
        size_t item = comma ? (size_t)(comma - p) : strlen(p);
        if (item == len && strncasecmp(p, type->essence, len) == 0)
            return 1;
        p += item + (comma ? 1 : 0);
    }
    return 0;
}

/* S3: at most 10,000 parts of at least 5 MiB (the last may be smaller); a whole number of MiB keeps it simple. */
static long long choose_part_size(long long size)
{
    long long mib = 1024 * 1024, needed = (size + FM_UPLOAD_MAX_PARTS - 1) / FM_UPLOAD_MAX_PARTS;
    needed = (needed + mib - 1) / mib * mib;
    return needed > MIN_PART_SIZE ? needed : MIN_PART_SIZE;
}

/* ---- POST /v1/uploads ----------------------------------------------------------------------------------------- */

/* Adds "method": "PUT" and the presigned "url" of a single PUT to `body`; -1 (body deleted, 500 answered) if signing
 * failed. Both answers' shapes (ours and Companion's) share these two fields. */
static int add_put_url(fm_req_t *r, fm_upload_state_t *s, cJSON *body, long long ttl)
{
    char *url = fm_upload_presign(r, s->key, s->content_type, s->size, 0, NULL, ttl);
    if (url == NULL) {
        cJSON_Delete(body);
        fm_reply_error(r, 500, "internal_error", "could not sign the upload URL");
        return -1;
    }
    cJSON_AddStringToObject(body, "method", "PUT");
    cJSON_AddStringToObject(body, "url", url);
    free(url);
    return 0;
}

/* Uppy's @uppy/aws-s3 (Companion's routes, uppy.c) expects other shapes for the same two answers. */
static void answer_created_uppy(fm_req_t *r, fm_upload_state_t *s, long long ttl)
{
    cJSON *body = cJSON_CreateObject();
    if (s->mode == FM_UPLOAD_MODE_CLIENT_PARTS) {
        cJSON_AddStringToObject(body, "key", s->key);
        cJSON_AddStringToObject(body, "uploadId", s->s3_upload_id);
    } else {
        if (add_put_url(r, s, body, ttl) != 0)
            return;
        cJSON_AddObjectToObject(body, "fields");
        cJSON_AddStringToObject(cJSON_AddObjectToObject(body, "headers"), "Content-Type", s->content_type);
        cJSON_AddNumberToObject(body, "expires", (double)ttl);
        /* not Companion's, ignored by Uppy: lets the app follow the file (no complete call comes on this path) */
        cJSON_AddStringToObject(body, "file_id", s->file_id);
        cJSON_AddStringToObject(body, "upload_id", s->upload_id);
    }
    fm_reply_json(r, 200, body);
}

static void answer_created(fm_req_t *r, fm_upload_state_t *s)
{
    long long ttl = fm_control->config.upload_url_ttl_s;
    if (s->uppy) {
        answer_created_uppy(r, s, ttl);
        return;
    }
    char expires[32];
    fm_iso8601((long long)time(NULL) + ttl, expires);
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "upload_id", s->upload_id);
    cJSON_AddStringToObject(body, "file_id", s->file_id);
    cJSON_AddBoolToObject(body, "deduplicated", 0);
    if (s->name_settled)
        cJSON_AddStringToObject(body, "name", s->name);
    cJSON_AddStringToObject(body, "expires_at", expires);
    if (s->s3_upload_id[0] == '\0') {
        if (add_put_url(r, s, body, ttl) != 0)
            return;
        cJSON_AddStringToObject(cJSON_AddObjectToObject(body, "headers"), "Content-Type", s->content_type);
    } else {
        cJSON_AddStringToObject(body, "method", "MULTIPART");
        cJSON *multipart = cJSON_AddObjectToObject(body, "multipart");
        cJSON_AddNumberToObject(multipart, "part_size", (double)s->part_size);
        cJSON_AddNumberToObject(multipart, "part_count", s->part_count);
        int numbers[FIRST_PART_URLS];
        size_t count = (size_t)(s->part_count < FIRST_PART_URLS ? s->part_count : FIRST_PART_URLS);
        for (size_t i = 0; i < count; ++i)
            numbers[i] = (int)i + 1;
        if (fm_upload_add_part_urls(r, s, cJSON_AddArrayToObject(multipart, "parts"), numbers, count, ttl) != 0) {
            cJSON_Delete(body);
            return;
        }
    }
    fm_reply_json(r, 201, body);
}

static void abort_orphan_work(void *data)
{
    fm_req_t *r = data;
    fm_upload_state_t *s = r->state;
    fm_s3_t *s3 = fm_offload_s3();
    if (s3 != NULL)
        fm_s3_abort_multipart(s3, s->key, s->s3_upload_id, &s->s3);
}

static void on_orphan_aborted(void *data)
{
    fm_req_t *r = data;
    fm_req_resume(r);
}

static void record_upload(fm_req_t *r, fm_upload_state_t *s);

/* The statement of a charge is over (`charged`: its row is in PostgreSQL): ends the quota hold, once. */
static void quota_settle(fm_req_t *r, fm_upload_state_t *s, int charged)
{
    if (s->quota_hold == 0)
        return;
    fm_quota_settle(fm_control_thread(r), s->principal->user_id, s->size, (fm_quota_hold_t)(s->quota_hold - 1),
                    charged);
    s->quota_hold = 0;
}

/* Past the backlog's bound (s->through): whether PostgreSQL can take the row now (fm_records_through: else 503 and
 * the hold ends). Asked right before the statement is queued, after the quota hold's round trip, so that the bound on
 * waiting statements counts every request let through (asked earlier, all those in the hold step would pass it). */
static int through_allowed(fm_req_t *r, fm_upload_state_t *s)
{
    if (!s->through)
        return 1;
    s->through = 0;
    if (fm_records_through(r))
        return 1;
    quota_settle(r, s, 0);
    return 0;
}

/* A write-through insert met a name taken among the live siblings: with rename, fm_free_name chose a name another
 * request took meanwhile, so it asks again (a few times); with fail, 409. Returns 1 when it handled `res`. */
static int name_taken(fm_req_t *r, fm_upload_state_t *s, PGresult *res, void (*again)(fm_req_t *, fm_upload_state_t *),
                      int *failed)
{
    if (!fm_pg_name_taken(res))
        return 0;
    if (fm_name_retry(r, s->rename, &s->name_tries)) {
        again(r, s);
        return 1;
    }
    *failed = 1;
    return 0;
}

static void on_upload_recorded(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    fm_upload_state_t *s = r->state;
    int failed = 0;
    if (fm_pg_quota_exceeded(res)) {
        fm_quota_refuse(r, s->size);
        failed = 1;
    } else if (fm_pg_folder_full(r, res)) {
        failed = 1;
    } else if (name_taken(r, s, res, record_upload, &failed)) {
        return;
    }
    if (!failed)
        failed = fm_pg_failed(r, res, errstr);
    if (!failed && PQntuples(res) == 0) {
        fm_reply_error(r, 404, "folder_not_found", "no folder %s of yours", s->folder);
        failed = 1;
    }
    quota_settle(r, s, !failed);
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
    snprintf(s->name, sizeof(s->name), "%s", PQgetvalue(res, 0, 1));
    s->name_settled = 1;
    fm_tree_changed(fm_control_thread(r), s->principal->user_id);
    answer_created(r, s);
}

static void on_upload_held(fm_req_t *r, fm_quota_hold_t outcome, void *arg)
{
    fm_upload_state_t *s = r->state;
    s->quota_hold = 1 + (int)outcome;
    if (outcome != FM_QUOTA_OVER) {
        record_upload(r, s);
        return;
    }
    fm_quota_refuse(r, s->size);
    if (s->s3_upload_id[0] != '\0') { /* no multipart upload left on S3 for a record that will not exist */
        fm_req_hold(r);
        if (fm_offload_run(r->thread->offload, abort_orphan_work, on_orphan_aborted, r) != 0)
            fm_req_resume(r);
    }
}

static void record_upload(fm_req_t *r, fm_upload_state_t *s)
{
    if (s->quota_hold == 0) { /* first the quota (quota.h), then the rows */
        fm_quota_hold(r, s->principal->user_id, s->size, on_upload_held, NULL);
        return;
    }
    if (!through_allowed(r, s))
        return;
    char size[24], part_size[24], part_count[16], ttl[24], entries_max[24];
    snprintf(entries_max, sizeof(entries_max), "%lld", (long long)fm_control->config.folder_entries_max);
    snprintf(size, sizeof(size), "%lld", s->size);
    snprintf(part_size, sizeof(part_size), "%lld", s->part_size);
    snprintf(part_count, sizeof(part_count), "%d", s->part_count);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)fm_control->config.upload_url_ttl_s);
    int multipart = s->s3_upload_id[0] != '\0';
    const char *params[] = {s->principal->user_id, s->folder[0] ? s->folder : NULL, s->name, size, s->content_type,
                            s->sha256, s->upload_id, multipart ? "MULTIPART" : "PUT",
                            s->part_count > 0 ? part_size : NULL, s->part_count > 0 ? part_count : NULL, ttl,
                            multipart ? s->s3_upload_id : NULL, s->key, s->rename ? "rename" : "fail", entries_max};
    /* A folder in the trash takes no upload (404 folder_not_found, as someone else's). With rename the name is
     * fm_free_name's (schema/012_tree.sql); the entry_names trigger still refuses one taken meanwhile (23505). */
    fm_pg_call(r, on_upload_recorded,
               "WITH f AS ("
               "  INSERT INTO files (owner_id, folder_id, name, size, content_type, claimed_sha256, status)"
               "  SELECT $1::uuid, $2::uuid, CASE WHEN $14 = 'rename' THEN fm_free_name($1::uuid, $2::uuid, $3) ELSE $3 END,"
               "         $4::bigint, $5, decode($6, 'hex'), 'PENDING_UPLOAD'"
               "  WHERE ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM folders WHERE id = $2::uuid AND owner_id = $1::uuid"
               "                                     AND deleted_at IS NULL))"
               "    AND fm_quota_take($1::uuid, $4::bigint) AND fm_folder_room($1::uuid, $2::uuid, $15::integer)"
               "  RETURNING id, name), "
               "u AS ("
               "  INSERT INTO uploads (id, file_id, owner_id, object_key, size, content_type, claimed_sha256, method,"
               "                       part_size, part_count, expires_at, s3_upload_id)"
               "  SELECT $7::uuid, f.id, $1::uuid, $13, $4::bigint, $5, decode($6, 'hex'), $8, $9::bigint,"
               "         $10::integer, now() + make_interval(secs => $11::integer), $12 FROM f"
               "  RETURNING file_id) "
               "SELECT u.file_id, f.name FROM u JOIN f ON f.id = u.file_id",
               15, params);
}

static void create_multipart_work(void *data)
{
    fm_req_t *r = data;
    fm_upload_state_t *s = r->state;
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
    fm_upload_state_t *s = r->state;
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
    if (outcome == FM_RECORD_QUOTA) { /* the quota copy cannot tell: PostgreSQL decides */
        record_upload(r, r->state);
        return;
    }
    if (outcome != FM_RECORD_FULL) {
        answer_created(r, r->state);
        return;
    }
    /* The backlog of records only in Redis is at its bound: this one goes to PostgreSQL before the answer. */
    ((fm_upload_state_t *)r->state)->through = 1;
    record_upload(r, r->state);
}

static fm_record_t record_of(const fm_upload_state_t *s)
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
static void record_upload_behind(fm_req_t *r, fm_upload_state_t *s)
{
    fm_uuid_new(s->file_id);
    fm_record_t rec = record_of(s);
    fm_records_put(r, &rec, on_record_stored);
}

void fm_upload_start(fm_req_t *r, fm_upload_state_t *s)
{
    fm_uuid_new(s->upload_id);
    snprintf(s->key, sizeof(s->key), "incoming/%s", s->upload_id);
    if (s->mode == FM_UPLOAD_MODE_CLIENT_PARTS) {
        /* The client (Uppy) chooses its part size: part_size/part_count stay unknown (NULL) until complete. */
        s->part_size = 0;
        s->part_count = 0;
        fm_offload_call(r, create_multipart_work, on_multipart_created, "the object store");
    } else if (s->mode == FM_UPLOAD_MODE_AUTO && s->size > fm_control->config.multipart_threshold) {
        s->part_size = choose_part_size(s->size);
        s->part_count = (int)((s->size + s->part_size - 1) / s->part_size);
        fm_offload_call(r, create_multipart_work, on_multipart_created, "the object store");
    } else if (fm_control->config.record_flush_ms > 0 && s->folder[0] == '\0' && s->rename) {
        record_upload_behind(r, s);
    } else {
        record_upload(r, s); /* a folder's ownership is PostgreSQL's to check */
    }
}

int fm_upload_validate(fm_req_t *r, fm_upload_state_t *s, const char *name, double size, const char *type,
                       const char *sha, const char *folder)
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
    /* 415 for a malformed value too, as before parameters were read: either way the type is not one we take */
    fm_media_type_t media_type;
    fm_media_type_error_t type_error = fm_media_type_parse(type, strlen(type), &media_type);
    if (type_error != FM_MEDIA_TYPE_OK) {
        fm_reply_error(r, 415, "content_type_not_allowed", "%s", fm_media_type_error_message(type_error));
        return -1;
    }
    if (!content_type_allowed(&media_type)) {
        fm_reply_error(r, 415, "content_type_not_allowed", "content type %.100s is not accepted here",
                       media_type.essence);
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

int fm_upload_on_conflict(fm_req_t *r, fm_upload_state_t *s, const char *value)
{
    if (value == NULL || strcmp(value, "fail") == 0) {
        s->rename = 0;
    } else if (strcmp(value, "rename") == 0) {
        s->rename = 1;
    } else {
        fm_reply_error(r, 422, "invalid_field", "on_conflict must be \"fail\" or \"rename\"");
        return -1;
    }
    return 0;
}

/* ---- the dedupe decision -------------------------------------------------------------------------------------- */

/* Dedupe: a new file record on a blob this owner already holds, verified by a worker. PostgreSQL decides (the
 * Redis index only says whether asking is worthwhile), and the size must match the blob's. The blob row is only
 * read, not updated: a popular blob must not serialise every dedupe on its row lock (blobs.ref_count is kept by the
 * cleanup jobs, which count the files that point at a blob). */
static void try_dedupe(fm_req_t *r, fm_upload_state_t *s);

static void on_dedupe_inserted(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    fm_upload_state_t *s = r->state;
    int failed = 0;
    if (fm_pg_quota_exceeded(res)) {
        quota_settle(r, s, 0);
        fm_quota_refuse(r, s->size);
        return;
    }
    if (fm_pg_folder_full(r, res)) {
        quota_settle(r, s, 0);
        return;
    }
    if (name_taken(r, s, res, try_dedupe, &failed))
        return;
    if (failed || fm_pg_failed(r, res, errstr)) {
        quota_settle(r, s, 0);
        return;
    }
    if (PQntuples(res) == 0) { /* the index was stale, or the size differs: upload the bytes (the hold goes on) */
        fm_upload_start(r, s);
        return;
    }
    quota_settle(r, s, 1);
    fm_tree_changed(fm_control_thread(r), s->principal->user_id);
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "file_id", PQgetvalue(res, 0, 0));
    cJSON_AddStringToObject(body, "name", PQgetvalue(res, 0, 1));
    cJSON_AddBoolToObject(body, "deduplicated", 1);
    cJSON_AddStringToObject(body, "status", "READY");
    fm_reply_json(r, 200, body);
}

static void on_dedupe_stored(fm_req_t *r, fm_record_outcome_t outcome)
{
    fm_upload_state_t *s = r->state;
    if (outcome == FM_RECORD_QUOTA_DEDUPE) { /* the quota copy cannot tell: PostgreSQL decides */
        try_dedupe(r, s);
        return;
    }
    if (outcome == FM_RECORD_FULL_DEDUPE) { /* the backlog is at its bound: PostgreSQL decides now, as below */
        s->through = 1;
        try_dedupe(r, s);
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "file_id", s->file_id);
    cJSON_AddBoolToObject(body, "deduplicated", 1);
    cJSON_AddStringToObject(body, "status", "READY");
    fm_reply_json(r, 200, body);
}

/* The index names this hash with this size: the new file is written behind, READY on the blob (records.c checks
 * again in PostgreSQL that the owner still holds it). */
static void dedupe_behind(fm_req_t *r, fm_upload_state_t *s)
{
    fm_uuid_new(s->file_id);
    fm_record_t rec = {
        .file_id = s->file_id,
        .owner_id = s->principal->user_id,
        .name = s->name,
        .content_type = s->content_type,
        .sha256 = s->sha256,
        .size = s->size,
    };
    fm_records_put(r, &rec, on_dedupe_stored);
}

static void on_dedupe_held(fm_req_t *r, fm_quota_hold_t outcome, void *arg)
{
    fm_upload_state_t *s = r->state;
    s->quota_hold = 1 + (int)outcome;
    if (outcome == FM_QUOTA_OVER)
        fm_quota_refuse(r, s->size);
    else
        try_dedupe(r, s);
}

static void try_dedupe(fm_req_t *r, fm_upload_state_t *s)
{
    if (s->quota_hold == 0) { /* first the quota (quota.h), then the row */
        fm_quota_hold(r, s->principal->user_id, s->size, on_dedupe_held, NULL);
        return;
    }
    if (!through_allowed(r, s))
        return;
    char size[24], entries_max[24];
    snprintf(size, sizeof(size), "%lld", s->size);
    snprintf(entries_max, sizeof(entries_max), "%lld", (long long)fm_control->config.folder_entries_max);
    const char *params[] = {s->principal->user_id, s->folder[0] ? s->folder : NULL, s->name, size, s->content_type,
                            s->sha256, s->rename ? "rename" : "fail", entries_max};
    /* No row (a folder not the caller's live one, or no blob): fm_upload_start decides, answering 404 for the folder. */
    fm_pg_call(r, on_dedupe_inserted,
               "WITH b AS ("
               "  SELECT sha256 FROM blobs"
               "  WHERE sha256 = decode($6, 'hex') AND size = $4::bigint AND EXISTS ("
               "    SELECT 1 FROM files WHERE owner_id = $1::uuid AND blob_sha256 = decode($6, 'hex')"
               "    AND status = 'READY' AND deleted_at IS NULL)"
               "  AND ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM folders WHERE id = $2::uuid AND owner_id = $1::uuid"
               "                                   AND deleted_at IS NULL))) "
               "INSERT INTO files (owner_id, folder_id, name, size, content_type, claimed_sha256, blob_sha256, status)"
               "  SELECT $1::uuid, $2::uuid, CASE WHEN $7 = 'rename' THEN fm_free_name($1::uuid, $2::uuid, $3) ELSE $3 END,"
               "         $4::bigint, $5, b.sha256, b.sha256, 'READY' FROM b"
               "  WHERE fm_quota_take($1::uuid, $4::bigint) AND fm_folder_room($1::uuid, $2::uuid, $8::integer) "
               "RETURNING id, name",
               8, params);
}

static void on_dedupe_index_rebuilt(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        fm_log(FM_LOG_WARN, r->request_id, "redis: dedupe index not rebuilt: %s", reply ? reply->str : errstr);
    fm_upload_state_t *s = r->state;
    if (s->s3_ok) /* (reused as "the rebuilt index has our hash") */
        try_dedupe(r, s);
    else
        fm_upload_start(r, s);
}

static void dedupe_key(char *out, size_t size, const char *owner)
{
    snprintf(out, size, "fm:dedupe:{%s}", owner);
}

/* The owner's index was missing from Redis (first use, or Redis lost its data): rebuild it from PostgreSQL. */
static void on_verified_hashes(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    fm_upload_state_t *s = r->state;
    int rows = PQntuples(res);
    const char **argv = calloc((size_t)rows * 2 + 4, sizeof(char *));
    if (argv == NULL)
        h2o_fatal("out of memory");
    char key[80];
    dedupe_key(key, sizeof(key), s->principal->user_id);
    int argc = 0;
    argv[argc++] = "HSET";
    argv[argc++] = key;
    argv[argc++] = "_built";
    argv[argc++] = "1";
    s->s3_ok = 0;
    for (int i = 0; i < rows; ++i) {
        argv[argc++] = PQgetvalue(res, i, 0);
        argv[argc++] = PQgetvalue(res, i, 1); /* the blob's size: a hit with another size is no hit */
        if (strcmp(PQgetvalue(res, i, 0), s->sha256) == 0)
            s->s3_ok = 1;
    }
    fm_redis_call(r, on_dedupe_index_rebuilt, argc, argv);
    free(argv);
}

static void rebuild_index(fm_req_t *r, fm_upload_state_t *s)
{
    const char *params[] = {s->principal->user_id};
    fm_pg_call(r, on_verified_hashes,
               "SELECT DISTINCT encode(f.blob_sha256, 'hex'), b.size FROM files f JOIN blobs b ON b.sha256 = f.blob_sha256 "
               "WHERE f.owner_id = $1::uuid AND f.status = 'READY' AND f.deleted_at IS NULL",
               1, params);
}

static void on_dedupe_index(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    fm_upload_state_t *s = r->state;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        /* Redis cannot tell: PostgreSQL alone decides (one more query, no wrong answer). */
        fm_log(FM_LOG_WARN, r->request_id, "redis: dedupe index unavailable: %s",
               reply && reply->type == REDIS_REPLY_ERROR ? reply->str : errstr ? errstr : "unexpected reply");
        try_dedupe(r, s);
        return;
    }
    const redisReply *hash = reply->element[0];
    int have_hash = hash->type == REDIS_REPLY_STRING;
    int built = reply->element[1]->type == REDIS_REPLY_STRING;
    char size[24];
    snprintf(size, sizeof(size), "%lld", s->size);
    if (have_hash && strcmp(hash->str, size) == 0 && fm_control->config.record_flush_ms > 0 && s->folder[0] == '\0' &&
        s->rename) {
        dedupe_behind(r, s);
    } else if (have_hash) { /* another size, a folder to check, or no write-behind: PostgreSQL decides */
        try_dedupe(r, s);
    } else if (built) {
        fm_upload_start(r, s);
    } else {
        rebuild_index(r, s);
    }
}

static void on_probed(fm_req_t *r, fm_record_outcome_t outcome)
{
    fm_upload_state_t *s = r->state;
    switch (outcome) {
    case FM_RECORD_UPLOAD:
        answer_created(r, s);
        break;
    case FM_RECORD_DEDUPE:
    case FM_RECORD_FULL_DEDUPE:
    case FM_RECORD_QUOTA_DEDUPE:
        on_dedupe_stored(r, outcome);
        break;
    case FM_RECORD_QUOTA: /* the quota copy is missing or says no: PostgreSQL decides (and refreshes it) */
        record_upload(r, s);
        break;
    case FM_RECORD_FULL: /* the backlog is at its bound: the upload's rows go to PostgreSQL before the answer */
        s->through = 1;
        record_upload(r, s);
        break;
    case FM_RECORD_OTHER_SIZE: /* PostgreSQL decides, as above; nothing was stored */
        try_dedupe(r, s);
        break;
    case FM_RECORD_INDEX_MISSING:
        rebuild_index(r, s);
        break;
    }
}

/* The common case in one Redis round trip (records.c's probe script): a single PUT outside any folder, written
 * behind. The ids are made first; the script keeps the upload record, or a dedupe record, or nothing. */
static void probe_and_record(fm_req_t *r, fm_upload_state_t *s, const char *index_key)
{
    fm_uuid_new(s->upload_id);
    snprintf(s->key, sizeof(s->key), "incoming/%s", s->upload_id);
    fm_uuid_new(s->file_id);
    fm_record_t rec = record_of(s);
    fm_records_put_or_dedupe(r, &rec, index_key, on_probed);
}

/* Reads and checks the body of POST /v1/uploads into s; answers and returns -1 on bad input. */
static int parse_upload_request(fm_req_t *r, fm_upload_state_t *s)
{
    cJSON *body = fm_req_json_body(r, UPLOAD_BODY_MAX);
    if (body == NULL)
        return -1;
    int rc = -1;
    const char *name = fm_json_require_string(r, body, "name", 1, 10240), *type = NULL, *sha = NULL;
    cJSON *size = cJSON_GetObjectItemCaseSensitive(body, "size");
    cJSON *folder = cJSON_GetObjectItemCaseSensitive(body, "folder");
    if (name == NULL)
        goto done;
    if (!cJSON_IsNumber(size)) {
        fm_reply_error(r, 422, "invalid_size", "size must be a whole number of bytes, 0 or more");
        goto done;
    }
    if ((type = fm_json_require_string(r, body, "content_type", 1, 127)) == NULL ||
        (sha = fm_json_require_string(r, body, "sha256", 1, 128)) == NULL)
        goto done;
    if (folder != NULL && !cJSON_IsNull(folder) && !cJSON_IsString(folder)) {
        fm_reply_error(r, 422, "invalid_folder", "folder must be a folder id (UUID) or null");
        goto done;
    }
    cJSON *on_conflict = cJSON_GetObjectItemCaseSensitive(body, "on_conflict");
    if (on_conflict != NULL && !cJSON_IsString(on_conflict)) {
        fm_reply_error(r, 422, "invalid_field", "on_conflict must be \"fail\" or \"rename\"");
        goto done;
    }
    if (fm_upload_on_conflict(r, s, on_conflict != NULL ? on_conflict->valuestring : NULL) != 0)
        goto done;
    rc = fm_upload_validate(r, s, name, size->valuedouble, type, sha,
                            cJSON_IsString(folder) ? folder->valuestring : NULL);
done:
    cJSON_Delete(body);
    return rc;
}

static void upload_create_authorized(fm_req_t *r, const fm_principal_t *p)
{
    fm_upload_state_t *s = fm_upload_state(r);
    s->principal = p;
    if (p->role == FM_JWT_ROLE_VIEWER) {
        fm_reply_error(r, 403, "forbidden", "viewers cannot upload");
        return;
    }
    if (parse_upload_request(r, s) != 0)
        return;
    char key[80];
    dedupe_key(key, sizeof(key), p->user_id);
    /* Written behind only with on_conflict=rename: with fail the name must be checked before the answer. */
    if (fm_control->config.record_flush_ms > 0 && s->folder[0] == '\0' && s->mode == FM_UPLOAD_MODE_AUTO &&
        s->size <= fm_control->config.multipart_threshold && s->rename) {
        probe_and_record(r, s, key);
        return;
    }
    const char *argv[] = {"HMGET", key, s->sha256, "_built"};
    fm_redis_call(r, on_dedupe_index, 4, argv);
}

void handle_upload_create(fm_req_t *r)
{
    fm_auth_require(r, upload_create_authorized);
}
