/*
 * POST /v1/files/{id}/copy {folder_id?, name?} (+ on_conflict in the body or the query): a new file on the same blob
 * (issue 11 item 4; docs/uploads.md "Names and on_conflict"). No bytes move: the copy is a new files row pointing at
 * the source's verified blob, READY at once, so it shows the blob's metadata and variants as the source does. Only a
 * READY source can be copied (409 not_ready): before, there is no verified blob to share. The owner's dedupe index
 * (fm:dedupe:{owner}) already names the blob, since the source is a READY file of the same owner. The blob's
 * ref_count is the cleanup jobs' to keep (they count the files that use a blob), as for a dedupe hit.
 *
 * authorize (bearer token; only the owner: someone else's file is the same 404 as a missing one) → parse (the body:
 * folder_id null = the root, absent = the source's folder; name as common/names.h says, absent = the source's) →
 * act (one statement: the source locked against a concurrent trash, the destination folder checked live and the
 * caller's, the name fm_free_name's with rename; a taken name is 23505 on entry_names_pkey, 409 name_taken with
 * fail) → answer (201, the new file as GET /v1/files/{id} answers it). Loop-thread only.
 *
 * Quota (issue 11 item 6, quota.c): a copy counts its whole size; the insert itself checks it (fm_quota_take, the
 * owner's row locked), so a copy past the quota is 413 quota_exceeded and nothing is inserted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "names.h"
#include "quota.h"
#include "qs.h"

#define COPY_BODY_MAX 4096
/* A rename that met a name another request took between fm_free_name and the insert asks again, this many times. */

typedef struct {
    char id[37], copy_id[37];
    char name[FM_NAME_MAX_BYTES + 1]; /* "" = the source's */
    int move;                         /* folder_id was given: folder ("" = the root) */
    char folder[37];
    int rename;
    int name_tries;
    int record_checked; /* the source's write-behind record (records.c) was brought in already */
    const fm_principal_t *principal;
} copy_t;

/*
 * $1 source id, $2 owner, $3 'move' when folder_id was given, $4 that folder (NULL = the root), $5 the name (NULL =
 * the source's), $6 on_conflict, $7 the copy's id. Columns: the source's status, the folder is fine, the copy's id
 * (NULL when nothing was inserted).
 */
static const char copy_sql[] =
    "WITH src AS ("
    "  SELECT id, name, folder_id, size, content_type, claimed_sha256, blob_sha256, status FROM files"
    "  WHERE id = $1::uuid AND owner_id = $2::uuid AND deleted_at IS NULL FOR SHARE),"
    " folder AS ("
    "  SELECT id FROM folders WHERE $3::text = 'move' AND id = $4::uuid AND owner_id = $2::uuid AND deleted_at IS NULL"
    "  FOR SHARE),"
    " place AS ("
    "  SELECT s.*, CASE WHEN $3::text = 'move' THEN $4::uuid ELSE s.folder_id END AS dest_folder,"
    "         coalesce($5::text, s.name) AS dest_name,"
    "         ($3::text <> 'move' OR $4::uuid IS NULL OR EXISTS (SELECT 1 FROM folder)) AS folder_ok FROM src s),"
    " copied AS ("
    "  INSERT INTO files (id, owner_id, folder_id, name, size, content_type, claimed_sha256, blob_sha256, status)"
    "  SELECT $7::uuid, $2::uuid, p.dest_folder,"
    "    CASE WHEN $6::text = 'rename' THEN fm_free_name($2::uuid, p.dest_folder, p.dest_name) ELSE p.dest_name END,"
    "    p.size, p.content_type, p.claimed_sha256, p.blob_sha256, 'READY'"
    "  FROM place p WHERE p.folder_ok AND p.status = 'READY' AND p.blob_sha256 IS NOT NULL"
    "    AND fm_quota_take($2::uuid, p.size) AND fm_folder_room($2::uuid, p.dest_folder, $8::integer) RETURNING id)"
    "SELECT p.status, p.folder_ok, (SELECT id FROM copied) FROM place p";

/* ---- parse ---- */

static int parse_copy(fm_req_t *r, copy_t *c)
{
    cJSON *body = fm_req_json_body(r, COPY_BODY_MAX);
    if (body == NULL)
        return -1;
    int rc = 0;
    const char *on_conflict = NULL;
    for (cJSON *item = body->child; item != NULL && rc == 0; item = item->next) {
        if (strcmp(item->string, "name") == 0) {
            fm_name_error_t error =
                cJSON_IsString(item) ? fm_name_check(item->valuestring, strlen(item->valuestring)) : FM_NAME_OK;
            if (!cJSON_IsString(item)) {
                fm_reply_error(r, 422, "invalid_field", "name must be a string");
                rc = -1;
            } else if (error != FM_NAME_OK) {
                fm_reply_error(r, 422, "invalid_name", "%s", fm_name_error_message(error));
                rc = -1;
            } else {
                snprintf(c->name, sizeof(c->name), "%s", item->valuestring);
            }
        } else if (strcmp(item->string, "folder_id") == 0) {
            c->move = 1;
            if (cJSON_IsString(item) && fm_uuid_valid(item->valuestring, strlen(item->valuestring))) {
                snprintf(c->folder, sizeof(c->folder), "%s", item->valuestring);
            } else if (!cJSON_IsNull(item)) {
                fm_reply_error(r, 422, "invalid_folder", "folder_id must be a folder id (UUID) or null (the root)");
                rc = -1;
            }
        } else if (strcmp(item->string, "on_conflict") == 0 && cJSON_IsString(item)) {
            on_conflict = item->valuestring;
        } else {
            fm_reply_error(r, 422, "invalid_field", "%.64s is not a field of a copy (folder_id, name, on_conflict)",
                           item->string);
            rc = -1;
        }
    }
    char query_value[16];
    int q = fm_qs_get(fm_req_query(r), "on_conflict", FM_PCT_FORM, query_value, sizeof(query_value), NULL);
    if (rc == 0 && on_conflict == NULL && q != FM_QS_ABSENT)
        on_conflict = q == FM_PCT_OK ? query_value : "";
    if (rc == 0 && on_conflict != NULL && strcmp(on_conflict, "fail") != 0 && strcmp(on_conflict, "rename") != 0) {
        fm_reply_error(r, 422, "invalid_field", "on_conflict must be \"fail\" or \"rename\"");
        rc = -1;
    }
    c->rename = on_conflict != NULL && strcmp(on_conflict, "rename") == 0;
    cJSON_Delete(body);
    return rc;
}

/* ---- answer ---- */

static void answer_row(fm_req_t *r, const cJSON *row, void *arg)
{
    (void)arg;
    fm_reply_json(r, 201, fm_file_answer(row)); /* the row is borrowed */
}

/* The copy as GET /v1/files/{id} answers it, read through files.c (whose handler state replaces ours). */
static void answer(fm_req_t *r)
{
    copy_t *c = r->state;
    const fm_principal_t *p = c->principal;
    char copy_id[37];
    snprintf(copy_id, sizeof(copy_id), "%s", c->copy_id);
    free(r->state);
    r->state = NULL;
    char *id = h2o_mem_alloc_pool(&r->req->pool, sizeof(copy_id));
    memcpy(id, copy_id, sizeof(copy_id));
    fm_file_row(r, p, id, strlen(id), answer_row, NULL);
}

/* ---- act ---- */

static void run_copy(fm_req_t *r, void *arg);

static void on_copied(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    copy_t *c = r->state;
    if (fm_pg_folder_full(r, res)) /* the statement was undone whole: no copy */
        return;
    if (fm_pg_quota_exceeded(res)) { /* the statement was undone whole: no copy */
        fm_reply_error(r, 413, "quota_exceeded",
                       "a copy counts its whole size against your quota, and it would pass it (GET /v1/me)");
        fm_quota_refresh(fm_control_thread(r), c->principal->user_id);
        return;
    }
    if (fm_pg_name_taken(res)) { /* the statement was undone whole: no copy */
        if (fm_name_retry(r, c->rename, &c->name_tries))
            run_copy(r, NULL);
        return;
    }
    if (fm_pg_failed(r, res, errstr))
        return;
    if (PQntuples(res) != 1 && fm_records_retry_file(r, c->id, &c->record_checked, run_copy))
        return;
    if (PQntuples(res) != 1) {
        fm_reply_error(r, 404, "not_found", "no such file");
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 1), "t") != 0) {
        fm_reply_error(r, 404, "folder_not_found", "no folder %s of yours", c->folder);
        return;
    }
    if (PQgetisnull(res, 0, 2)) {
        fm_reply_error(r, 409, "not_ready", "only a READY file can be copied (it is %s)", PQgetvalue(res, 0, 0));
        return;
    }
    fm_tree_changed(fm_control_thread(r), c->principal->user_id);
    fm_quota_refresh(fm_control_thread(r), c->principal->user_id);
    answer(r);
}

static void run_copy(fm_req_t *r, void *arg)
{
    (void)arg;
    copy_t *c = r->state;
    char entries_max[24];
    snprintf(entries_max, sizeof(entries_max), "%lld", (long long)fm_control->config.folder_entries_max);
    const char *params[] = {c->id,
                            c->principal->user_id,
                            c->move ? "move" : "stay",
                            c->folder[0] ? c->folder : NULL,
                            c->name[0] ? c->name : NULL,
                            c->rename ? "rename" : "fail",
                            c->copy_id,
                            entries_max};
    fm_pg_call(r, on_copied, copy_sql, 8, params);
}

/* ---- authorize ---- */

static void copy_authorized(fm_req_t *r, const fm_principal_t *p)
{
    copy_t *c = r->state;
    c->principal = p;
    h2o_iovec_t id = r->params[0];
    if (fm_id_param(r, "file", id.base, id.len, c->id) != 0)
        return;
    if (p->role == FM_JWT_ROLE_VIEWER) {
        fm_reply_error(r, 403, "forbidden", "viewers cannot create files");
        return;
    }
    if (parse_copy(r, c) != 0)
        return;
    fm_uuid_new(c->copy_id); /* v7, as every file id fm-control makes (docs/decisions.md) */
    run_copy(r, NULL);
}

void handle_file_copy(fm_req_t *r)
{
    fm_req_state(r, sizeof(copy_t));
    fm_auth_require(r, copy_authorized);
}
