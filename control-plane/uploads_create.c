/*
 * POST /v1/uploads, up to the choice between a dedupe answer and a new upload (uploads.c makes the upload, signs and
 * answers; docs/uploads.md "Dedupe").
 *
 * authorize (bearer token; viewers cannot upload) → parse (the body, upload_validate) → act: the common case, a
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
#include "uploads.h"

#define UPLOAD_BODY_MAX 16384

/* Dedupe: a new file record on a blob this owner already holds, verified by a worker. PostgreSQL decides (the
 * Redis index only says whether asking is worthwhile), and the size must match the blob's. The blob row is only
 * read, not updated: a popular blob must not serialise every dedupe on its row lock (blobs.ref_count is kept by the
 * cleanup jobs, which count the files that point at a blob). */
static void on_dedupe_inserted(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    upload_state_t *s = r->state;
    if (PQntuples(res) == 0) { /* the index was stale, or the size differs: upload the bytes */
        upload_start(r, s);
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "file_id", PQgetvalue(res, 0, 0));
    cJSON_AddBoolToObject(body, "deduplicated", 1);
    cJSON_AddStringToObject(body, "status", "READY");
    fm_reply_json(r, 200, body);
}

static void try_dedupe(fm_req_t *r, upload_state_t *s);

static void on_dedupe_stored(fm_req_t *r, fm_record_outcome_t outcome)
{
    upload_state_t *s = r->state;
    if (outcome == FM_RECORD_FULL_DEDUPE) { /* the backlog is at its bound: PostgreSQL decides now, as below */
        if (fm_records_through(r))
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
static void dedupe_behind(fm_req_t *r, upload_state_t *s)
{
    upload_new_id(s->file_id);
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

static void try_dedupe(fm_req_t *r, upload_state_t *s)
{
    char size[24];
    snprintf(size, sizeof(size), "%lld", s->size);
    const char *params[] = {s->principal->user_id, s->folder[0] ? s->folder : NULL, s->name, size, s->content_type,
                            s->sha256};
    fm_pg_call(r, on_dedupe_inserted,
               "WITH b AS ("
               "  SELECT sha256 FROM blobs"
               "  WHERE sha256 = decode($6, 'hex') AND size = $4::bigint AND EXISTS ("
               "    SELECT 1 FROM files WHERE owner_id = $1::uuid AND blob_sha256 = decode($6, 'hex')"
               "    AND status = 'READY' AND deleted_at IS NULL)"
               "  AND ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM folders WHERE id = $2::uuid AND owner_id = $1::uuid))) "
               "INSERT INTO files (owner_id, folder_id, name, size, content_type, claimed_sha256, blob_sha256, status)"
               "  SELECT $1::uuid, $2::uuid, $3, $4::bigint, $5, b.sha256, b.sha256, 'READY' FROM b "
               "RETURNING id",
               6, params);
}

static void on_dedupe_index_rebuilt(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        fm_log(FM_LOG_WARN, r->request_id, "redis: dedupe index not rebuilt: %s", reply ? reply->str : errstr);
    upload_state_t *s = r->state;
    if (s->s3_ok) /* (reused as "the rebuilt index has our hash") */
        try_dedupe(r, s);
    else
        upload_start(r, s);
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
    upload_state_t *s = r->state;
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

static void rebuild_index(fm_req_t *r, upload_state_t *s)
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
    upload_state_t *s = r->state;
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
    if (have_hash && strcmp(hash->str, size) == 0 && fm_control->config.record_flush_ms > 0 && s->folder[0] == '\0') {
        dedupe_behind(r, s);
    } else if (have_hash) { /* another size, a folder to check, or no write-behind: PostgreSQL decides */
        try_dedupe(r, s);
    } else if (built) {
        upload_start(r, s);
    } else {
        rebuild_index(r, s);
    }
}

static void on_probed(fm_req_t *r, fm_record_outcome_t outcome)
{
    upload_state_t *s = r->state;
    switch (outcome) {
    case FM_RECORD_UPLOAD:
        upload_answer_created(r, s);
        break;
    case FM_RECORD_DEDUPE:
    case FM_RECORD_FULL_DEDUPE:
        on_dedupe_stored(r, outcome);
        break;
    case FM_RECORD_FULL: /* the backlog is at its bound: the upload's rows go to PostgreSQL before the answer */
        if (fm_records_through(r))
            upload_record_through(r, s);
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
static void probe_and_record(fm_req_t *r, upload_state_t *s, const char *index_key)
{
    upload_new_id(s->upload_id);
    snprintf(s->key, sizeof(s->key), "incoming/%s", s->upload_id);
    upload_new_id(s->file_id);
    fm_record_t rec = upload_record(s);
    fm_records_put_or_dedupe(r, &rec, index_key, on_probed);
}

/* Reads and checks the body of POST /v1/uploads into s; answers and returns -1 on bad input. */
static int parse_upload_request(fm_req_t *r, upload_state_t *s)
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
    rc = upload_validate(r, s, name, size->valuedouble, type, sha, cJSON_IsString(folder) ? folder->valuestring : NULL);
done:
    cJSON_Delete(body);
    return rc;
}

static void upload_create_authorized(fm_req_t *r, const fm_principal_t *p)
{
    upload_state_t *s = upload_state(r);
    s->principal = p;
    if (p->role == FM_JWT_ROLE_VIEWER) {
        fm_reply_error(r, 403, "forbidden", "viewers cannot upload");
        return;
    }
    if (parse_upload_request(r, s) != 0)
        return;
    char key[80];
    dedupe_key(key, sizeof(key), p->user_id);
    if (fm_control->config.record_flush_ms > 0 && s->folder[0] == '\0' && s->mode == UPLOAD_MODE_AUTO &&
        s->size <= fm_control->config.multipart_threshold) {
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
