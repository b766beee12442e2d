/*
 * PATCH /v1/files/{id} {name?, folder_id?, visibility?} (+ on_conflict in the body or the query): renames, moves
 * (folder_id null = the root) and sets the visibility (docs/downloads.md "Public files") in one statement; any other
 * field is refused with 422 invalid_field. A name taken among the destination's live entries is 409 name_taken with
 * on_conflict=fail (the default), or fm_free_name's (schema/012_tree.sql) with rename (docs/uploads.md "Names and
 * on_conflict"). Only the owner; a file in the trash is 404; a folder that is not the caller's live one is 404
 * folder_not_found. Nothing is half-changed: either every field changes (and version/updated_at move), or none.
 *
 * authorize (bearer token; the owner test is inside the SQL statement, so someone else's file is the same 404 as a
 * missing one, as in files.c) → parse (the JSON body into update_t; after the token, so anonymous callers learn
 * nothing) → act (one statement updates the row and tells what fm-edge must learn; then SADD/SREM the file's members
 * in fm:public and DEL fm:file:{id}) → answer (the file row, read again through files.c like GET /v1/files/{id}, with
 * its visibility).
 *
 * fm:public holds what fm-edge may serve without a signature (/p/{key}?file={id}): "{file_id}/{key}" for the
 * storage_key and variant keys of the blob of each live, READY, public file (edge_index.c). Members name the file:
 * files share blobs, and making one private removes its members only, whatever the others are.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "names.h"
#include "qs.h"

#define UPDATE_BODY_MAX 4096
/* A blob's keys: its storage_key and at most a few variants (thumb/preview × webp/jpeg today). */
#define PUBLIC_KEYS_MAX 32

/* A rename that met a name another request took between fm_free_name and the update asks again, this many times. */

typedef struct {
    const char *visibility; /* static "public" | "private", NULL = unchanged */
    char name[FM_NAME_MAX_BYTES + 1]; /* "" = unchanged */
    int move;                         /* folder_id was given: folder ("" = the root) */
    char folder[37];
    int rename; /* on_conflict=rename */
    int name_tries;
    char id[37];
    int record_checked; /* the write-behind record (records.c) was brought in already */
    const fm_principal_t *principal;
} update_t;

/*
 * $1 file id, $2 owner, $3 visibility (NULL = unchanged), $4 name (NULL = unchanged), $5 'move' to move, $6 the
 * destination folder (NULL = the root), $7 on_conflict. `target` locks the row; `folder` the destination folder
 * against a concurrent trash (FOR SHARE: a trash waits for us, or we see its deleted_at); `dest` is where the file
 * goes and under which name (fm_free_name's with rename, unless the file keeps its own place); `changed` updates
 * it unless the folder is not the caller's live one or it would make a file that is not READY public. The
 * entry_names trigger refuses a taken name (23505 entry_names_pkey): the whole statement is then undone. Columns:
 * status, changed, storage_key, fm:public to be added, variant keys, the folder is fine.
 */
static const char update_sql[] =
    "WITH target AS ("
    "  SELECT id, status, blob_sha256, name, folder_id FROM files"
    "  WHERE id = $1::uuid AND owner_id = $2::uuid AND deleted_at IS NULL FOR UPDATE),"
    " folder AS ("
    "  SELECT id FROM folders WHERE $5::text = 'move' AND id = $6::uuid AND owner_id = $2::uuid AND deleted_at IS NULL"
    "  FOR SHARE),"
    " place AS ("
    "  SELECT t.id, CASE WHEN $5::text = 'move' THEN $6::uuid ELSE t.folder_id END AS folder_id,"
    "         coalesce($4::text, t.name) AS name, t.folder_id AS old_folder, t.name AS old_name,"
    "         ($5::text <> 'move' OR $6::uuid IS NULL OR EXISTS (SELECT 1 FROM folder)) AS folder_ok FROM target t),"
    " dest AS ("
    "  SELECT p.id, p.folder_id, p.folder_ok,"
    "    CASE WHEN $7::text = 'rename' AND (p.folder_id IS DISTINCT FROM p.old_folder OR p.name <> p.old_name)"
    "         THEN fm_free_name($2::uuid, p.folder_id, p.name) ELSE p.name END AS name FROM place p),"
    " changed AS ("
    "  UPDATE files f SET visibility = coalesce($3::text, f.visibility), name = d.name, folder_id = d.folder_id,"
    "    updated_at = now(), version = f.version + 1 FROM target t, dest d"
    "  WHERE f.id = t.id AND d.id = t.id AND d.folder_ok AND ($3::text IS NULL OR $3::text = 'private' OR t.status = 'READY')"
    "    AND (d.folder_id IS NOT DISTINCT FROM t.folder_id OR fm_folder_room($2::uuid, d.folder_id, $8::integer))"
    "  RETURNING f.id)"
    "SELECT t.status, EXISTS (SELECT 1 FROM changed),"
    " b.storage_key,"
    " EXISTS (SELECT 1 FROM changed) AND $3::text = 'public',"
    " coalesce((SELECT json_agg(v.value->>'key') FROM jsonb_each(b.variants) k, jsonb_each(k.value) v"
    "   WHERE jsonb_typeof(v.value) = 'object' AND v.value ? 'key'), '[]')::text,"
    " (SELECT folder_ok FROM dest) "
    "FROM target t LEFT JOIN blobs b ON b.sha256 = t.blob_sha256";

/* ---- parse ---- */

/* Fills u from the body; answers (400/413/415/422) and returns -1 otherwise. */
static int parse_update(fm_req_t *r, update_t *u)
{
    cJSON *body = fm_req_json_body(r, UPDATE_BODY_MAX);
    if (body == NULL)
        return -1;
    int rc = 0;
    const char *on_conflict = NULL;
    for (cJSON *item = body->child; item != NULL && rc == 0; item = item->next) {
        if (strcmp(item->string, "name") == 0) {
            fm_name_error_t error = cJSON_IsString(item) ? fm_name_check(item->valuestring, strlen(item->valuestring))
                                                         : FM_NAME_OK;
            if (!cJSON_IsString(item)) {
                fm_reply_error(r, 422, "invalid_field", "name must be a string");
                rc = -1;
            } else if (error != FM_NAME_OK) { /* common/names.h: the one rule for names */
                fm_reply_error(r, 422, "invalid_name", "%s", fm_name_error_message(error));
                rc = -1;
            } else {
                snprintf(u->name, sizeof(u->name), "%s", item->valuestring);
            }
        } else if (strcmp(item->string, "folder_id") == 0) {
            u->move = 1;
            if (cJSON_IsString(item) && fm_uuid_valid(item->valuestring, strlen(item->valuestring))) {
                snprintf(u->folder, sizeof(u->folder), "%s", item->valuestring);
            } else if (!cJSON_IsNull(item)) {
                fm_reply_error(r, 422, "invalid_folder", "folder_id must be a folder id (UUID) or null (the root)");
                rc = -1;
            }
        } else if (strcmp(item->string, "on_conflict") == 0) {
            if (!cJSON_IsString(item)) {
                fm_reply_error(r, 422, "invalid_field", "on_conflict must be \"fail\" or \"rename\"");
                rc = -1;
            } else {
                on_conflict = item->valuestring;
            }
        } else if (strcmp(item->string, "visibility") != 0) {
            fm_reply_error(r, 422, "invalid_field", "%.64s cannot be changed (name, folder_id, visibility)",
                           item->string);
            rc = -1;
        } else if (cJSON_IsString(item) && strcmp(item->valuestring, "public") == 0) {
            u->visibility = "public";
        } else if (cJSON_IsString(item) && strcmp(item->valuestring, "private") == 0) {
            u->visibility = "private";
        } else {
            fm_reply_error(r, 422, "invalid_field", "visibility must be \"public\" or \"private\"");
            rc = -1;
        }
    }
    /* on_conflict in the query too (?on_conflict=rename), as DESIGN.md §5b writes it; the body's wins */
    char query_value[16];
    int q = fm_qs_get(fm_req_query(r), "on_conflict", FM_PCT_FORM, query_value, sizeof(query_value), NULL);
    if (rc == 0 && on_conflict == NULL && q != FM_QS_ABSENT)
        on_conflict = q == FM_PCT_OK ? query_value : "";
    if (rc == 0 && on_conflict != NULL && strcmp(on_conflict, "fail") != 0 && strcmp(on_conflict, "rename") != 0) {
        fm_reply_error(r, 422, "invalid_field", "on_conflict must be \"fail\" or \"rename\"");
        rc = -1;
    }
    u->rename = on_conflict != NULL && strcmp(on_conflict, "rename") == 0;
    if (rc == 0 && u->visibility == NULL && u->name[0] == '\0' && !u->move) {
        fm_reply_error(r, 422, "invalid_field", "nothing to change: give name, folder_id or visibility");
        rc = -1;
    }
    cJSON_Delete(body);
    return rc;
}

/* ---- answer ---- */

/* GET /v1/files/{id}'s answer, plus the visibility just set (GET keeps it among its internal fields). */
static void answer_row(fm_req_t *r, const cJSON *row, void *arg)
{
    (void)arg;
    cJSON *shown = fm_file_answer(row); /* the row is borrowed */
    const cJSON *visibility = cJSON_GetObjectItemCaseSensitive(row, "visibility");
    if (cJSON_IsString(visibility))
        cJSON_AddStringToObject(shown, "visibility", visibility->valuestring);
    fm_reply_json(r, 200, shown);
}

/* The row as GET /v1/files/{id} answers it, read again (and cached again) through files.c. fm_file_row keeps its own
 * handler state, so ours is released first; the principal lives in r->auth and the id in the route's capture. */
static void answer(fm_req_t *r)
{
    update_t *u = r->state;
    const fm_principal_t *p = u->principal;
    free(r->state);
    r->state = NULL;
    fm_file_row(r, p, r->params[0].base, r->params[0].len, answer_row, NULL);
}

/* ---- act ---- */

static void on_row_forgotten(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_redis_failed(r, reply, errstr))
        return;
    answer(r);
}

/* After the statement committed: the cached row of files.c is stale. */
static void forget_row(fm_req_t *r)
{
    update_t *u = r->state;
    char cache_key[64];
    snprintf(cache_key, sizeof(cache_key), "fm:file:{%s}", u->id);
    const char *argv[] = {"DEL", cache_key};
    fm_rcache_forget(fm_control_thread(r)->rcache, cache_key); /* the answer reads the row back */
    fm_redis_call(r, on_row_forgotten, 2, argv);
}

static void on_public_set(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_redis_failed(r, reply, errstr)) /* PostgreSQL has it; a retried PATCH sets the keys again */
        return;
    forget_row(r);
}

static void on_updated(PGresult *res, const char *errstr, void *data);
static void run_update(fm_req_t *r, void *arg);

/* The file's fm:public members ("{file_id}/{key}" for the blob's storage_key and variant keys) from the statement's
 * row, allocated in the request's pool. Returns how many, or -1. */
static int public_members(fm_req_t *r, const char *file_id, PGresult *res, const char **members)
{
    const char *keys[PUBLIC_KEYS_MAX];
    int count = 0;
    if (!PQgetisnull(res, 0, 2))
        keys[count++] = PQgetvalue(res, 0, 2);
    cJSON *variants = cJSON_Parse(PQgetvalue(res, 0, 4));
    int ok = cJSON_IsArray(variants);
    for (cJSON *v = ok ? variants->child : NULL; v != NULL && ok; v = v->next) {
        if (!cJSON_IsString(v) || v->valuestring[0] == '\0' || count == PUBLIC_KEYS_MAX)
            ok = 0;
        else
            keys[count++] = v->valuestring;
    }
    for (int i = 0; ok && i < count; ++i) {
        size_t len = strlen(file_id) + 1 + strlen(keys[i]) + 1;
        char *member = h2o_mem_alloc_pool(&r->req->pool, len);
        snprintf(member, len, "%s/%s", file_id, keys[i]);
        members[i] = member;
    }
    cJSON_Delete(variants);
    return ok ? count : -1;
}

static void on_updated(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    update_t *u = r->state;
    if (fm_pg_folder_full(r, res)) /* undone whole as well */
        return;
    if (fm_pg_name_taken(res)) { /* the statement was undone whole: nothing changed */
        if (fm_name_retry(r, u->rename, &u->name_tries))
            run_update(r, NULL);
        return;
    }
    if (fm_pg_failed(r, res, errstr))
        return;
    if (PQntuples(res) != 1 && fm_records_retry_file(r, u->id, &u->record_checked, run_update))
        return;
    if (PQntuples(res) != 1) {
        fm_reply_error(r, 404, "not_found", "no such file");
        return;
    }
    const char *status = PQgetvalue(res, 0, 0);
    if (strcmp(PQgetvalue(res, 0, 5), "t") != 0) {
        fm_reply_error(r, 404, "folder_not_found", "no folder %s of yours", u->folder);
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 1), "t") != 0) {
        fm_reply_error(r, 409, "not_ready", "only a READY file can be made public (it is %s)", status);
        return;
    }
    fm_tree_changed(fm_control_thread(r), u->principal->user_id); /* committed: listings show the change */
    if (u->visibility == NULL) { /* fm:public stays as it is: its members name the file and its keys, not its name */
        forget_row(r);
        return;
    }

    const char *argv[2 + PUBLIC_KEYS_MAX] = {NULL, "fm:public"};
    int count = public_members(r, u->id, res, argv + 2);
    if (count < 0) {
        fm_log(FM_LOG_ERROR, r->request_id, "file %s: its blob's variants are not a list of keys", u->id);
        fm_reply_error(r, 500, "internal_error", "the request could not be completed");
        return;
    }
    if (count == 0) { /* no blob yet (a private file not verified): nothing for the edge */
        forget_row(r);
        return;
    }
    argv[0] = strcmp(PQgetvalue(res, 0, 3), "t") == 0 ? "SADD" : "SREM";
    fm_redis_call(r, on_public_set, 2 + count, argv);
}

static void run_update(fm_req_t *r, void *arg)
{
    (void)arg;
    update_t *u = r->state;
    char entries_max[24];
    snprintf(entries_max, sizeof(entries_max), "%lld", (long long)fm_control->config.folder_entries_max);
    const char *params[] = {u->id,           u->principal->user_id,
                            u->visibility,   u->name[0] ? u->name : NULL,
                            u->move ? "move" : "stay", u->folder[0] ? u->folder : NULL,
                            u->rename ? "rename" : "fail", entries_max};
    fm_pg_call(r, on_updated, update_sql, 8, params);
}

/* ---- authorize ---- */

static void update_authorized(fm_req_t *r, const fm_principal_t *p)
{
    update_t *u = r->state;
    u->principal = p;
    h2o_iovec_t id = r->params[0];
    if (fm_id_param(r, "file", id.base, id.len, u->id) != 0)
        return;
    if (parse_update(r, u) != 0)
        return;
    run_update(r, NULL);
}

void handle_file_update(fm_req_t *r)
{
    fm_req_state(r, sizeof(update_t));
    fm_auth_require(r, update_authorized);
}
