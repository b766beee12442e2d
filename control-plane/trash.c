/*
 * The trash view (issue 11 item 5; DESIGN.md §5b; docs/downloads.md "Delete, restore, retention"):
 *
 *   GET    /v1/trash?limit&cursor   the caller's entries trashed on their own (a trashed folder stands for what it
 *                                   took), newest deleted first: {items:[{kind, id, name, size?, folder_id |
 *                                   parent_id, deleted_at, purge_at}], next_cursor}
 *   DELETE /v1/trash/{id}           one entry purged for good (a folder with everything under it) → 204
 *   DELETE /v1/trash                one bounded round of emptying the trash → 204 when nothing purgeable is left,
 *                                   202 {purged, more: true} when the bound was reached (call again)
 *
 * authorize (bearer token; ownership is inside the SQL: someone else's entry is the same 404 as a missing one) →
 * parse (limit, the signed cursor of common/cursor.c scoped "trash:{owner}", the id) → act (one statement of
 * schema/016_trash_delta.sql: fm_trash_list, fm_trash_purge_item, fm_trash_empty; a purge deletes the rows and
 * makes a cleanup_blob job per blob left unreferenced, the worker's cleanup then deletes its objects and purges the
 * edges) → after a purge: the purged files' cached rows dropped, the jobs put on the stream (at most
 * ENQUEUE_MAX here; the reconciler adds any other, as for every job whose XADD did not happen), the owner's
 * listings invalidated (fm_tree_changed) → answer.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "cursor.h"
#include "log.h"
#include "qs.h"

#define LIMIT_DEFAULT 50
#define LIMIT_MAX 200
/* Files purged by one DELETE /v1/trash (each a row delete, maybe a blob's job): a round stays well under a second. */
#define EMPTY_BATCH 1000
/* Jobs put on the stream by the request; the reconciler enqueues the rest (jobs with enqueued_at NULL). */
#define ENQUEUE_MAX 64
#define DEL_KEYS_PER_CALL 256

typedef struct {
    const fm_principal_t *principal;
    char id[37];
    int empty; /* DELETE /v1/trash (else one item) */
    int limit;
    /* after a purge */
    char (*jobs)[37];
    int job_count, job_next, files_purged, more;
} trash_view_t;

static void trash_view_free(void *p)
{
    trash_view_t *t = p;
    free(t->jobs);
}

static long long upload_window_s(void)
{
    /* the reconciler's own window (reconcile.c STEP_TRASH): an upload that may still put an object keeps its row */
    const fm_config_t *cfg = &fm_control->config;
    return (long long)cfg->upload_url_ttl_s + (long long)cfg->reconcile_interval_s * 20;
}

static void cursor_scope(const fm_principal_t *p, char *out, size_t size)
{
    snprintf(out, size, "trash:%s", p->user_id);
}

/* ---- GET /v1/trash ---------------------------------------------------------------------------------------------- */

/* Keyset payload: deleted_at (µs since the epoch, 8 bytes big-endian) | id (36 ASCII). */
#define KEYSET_LEN (8 + 36)

static void on_listed(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    trash_view_t *t = r->state;
    int rows = PQntuples(res), shown = rows > t->limit ? t->limit : rows;
    cJSON *body = cJSON_CreateObject(), *items = cJSON_AddArrayToObject(body, "items");
    for (int i = 0; i < shown; ++i) {
        cJSON *it = cJSON_CreateObject();
        int file = strcmp(PQgetvalue(res, i, 0), "file") == 0;
        cJSON_AddStringToObject(it, "kind", PQgetvalue(res, i, 0));
        cJSON_AddStringToObject(it, "id", PQgetvalue(res, i, 1));
        cJSON_AddStringToObject(it, "name", PQgetvalue(res, i, 2));
        if (file)
            cJSON_AddNumberToObject(it, "size", (double)strtoll(PQgetvalue(res, i, 3), NULL, 10));
        const char *parent = PQgetvalue(res, i, 4);
        if (PQgetisnull(res, i, 4))
            cJSON_AddNullToObject(it, file ? "folder_id" : "parent_id");
        else
            cJSON_AddStringToObject(it, file ? "folder_id" : "parent_id", parent);
        cJSON_AddStringToObject(it, "deleted_at", PQgetvalue(res, i, 6));
        cJSON_AddStringToObject(it, "purge_at", PQgetvalue(res, i, 7));
        cJSON_AddItemToArray(items, it);
    }
    if (rows > t->limit) {
        uint8_t keyset[KEYSET_LEN];
        uint64_t us = (uint64_t)strtoll(PQgetvalue(res, shown - 1, 5), NULL, 10);
        for (int b = 0; b < 8; ++b)
            keyset[b] = (uint8_t)(us >> (56 - 8 * b));
        memcpy(keyset + 8, PQgetvalue(res, shown - 1, 1), 36);
        char scope[64], text[FM_CURSOR_TEXT_MAX];
        cursor_scope(t->principal, scope, sizeof(scope));
        const fm_config_t *cfg = &fm_control->config;
        if (fm_cursor_sign(cfg->jwt_secret, strlen(cfg->jwt_secret), scope, keyset, sizeof(keyset), text,
                           sizeof(text)) != 0) {
            cJSON_Delete(body);
            fm_reply_error(r, 500, "internal_error", "the request could not be completed");
            return;
        }
        cJSON_AddStringToObject(body, "next_cursor", text);
    } else {
        cJSON_AddNullToObject(body, "next_cursor");
    }
    fm_reply_json(r, 200, body);
}

/* `limit` into *out (default when absent); -1 when it is not an integer in 1..LIMIT_MAX. */
static int limit_param(fm_req_t *r, int *out)
{
    char value[16];
    int rc = fm_qs_get(fm_req_query(r), "limit", 0, value, sizeof(value), NULL);
    *out = LIMIT_DEFAULT;
    if (rc == FM_QS_ABSENT)
        return 0;
    if (rc != FM_PCT_OK)
        return -1;
    char *end;
    long v = strtol(value, &end, 10);
    if (end == value || *end != '\0' || value[0] == '+' || value[0] == '-' || v < 1 || v > LIMIT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

static void list_authorized(fm_req_t *r, const fm_principal_t *p)
{
    trash_view_t *t = fm_req_state(r, sizeof(trash_view_t));
    r->state_free = trash_view_free;
    t->principal = p;
    if (limit_param(r, &t->limit) != 0) {
        fm_reply_error(r, 422, "invalid_limit", "limit must be an integer from 1 to %d", LIMIT_MAX);
        return;
    }
    char after_us[24] = "", after_id[37] = ""; /* none: the first page (NULL) */
    char text[FM_CURSOR_TEXT_MAX];
    int rc = fm_qs_get(fm_req_query(r), "cursor", 0, text, sizeof(text), NULL);
    if (rc != FM_QS_ABSENT) {
        uint8_t keyset[FM_CURSOR_PAYLOAD_MAX];
        size_t len = 0;
        char scope[64];
        cursor_scope(p, scope, sizeof(scope));
        const fm_config_t *cfg = &fm_control->config;
        if (rc != FM_PCT_OK ||
            fm_cursor_open(cfg->jwt_secret, strlen(cfg->jwt_secret), scope, text, strlen(text), keyset, sizeof(keyset),
                           &len) != 0 ||
            len != KEYSET_LEN || !fm_uuid_valid((const char *)keyset + 8, 36)) {
            fm_reply_error(r, 400, "invalid_cursor", "the cursor is not one this server gave you");
            return;
        }
        uint64_t us = 0;
        for (int b = 0; b < 8; ++b)
            us = us << 8 | keyset[b];
        snprintf(after_us, sizeof(after_us), "%" PRId64, (int64_t)us);
        memcpy(after_id, keyset + 8, 36);
        after_id[36] = '\0';
    }
    char limit[16], retention[24];
    snprintf(limit, sizeof(limit), "%d", t->limit);
    snprintf(retention, sizeof(retention), "%lld", (long long)fm_control->config.trash_retention_s);
    const char *params[] = {p->user_id, after_us[0] ? after_us : NULL, after_id[0] ? after_id : NULL, limit, retention};
    fm_pg_call(r, on_listed,
               "SELECT kind, id, name, size, parent, deleted_us, deleted_at, purge_at"
               " FROM fm_trash_list($1::uuid, $2::bigint, $3::uuid, $4::integer, $5::integer)",
               5, params);
}

void handle_trash_list(fm_req_t *r)
{
    fm_auth_require(r, list_authorized);
}

/* ---- DELETE /v1/trash/{id}, DELETE /v1/trash ----------------------------------------------------------------------
 */

static void ignore_reply(redisReply *reply, const char *errstr, void *data) {}

static void purge_answer(fm_req_t *r, void *arg)
{
    (void)arg;
    trash_view_t *t = r->state;
    fm_tree_changed(fm_control_thread(r), t->principal->user_id);
    if (t->empty && t->more) {
        cJSON *body = cJSON_CreateObject();
        cJSON_AddNumberToObject(body, "purged", t->files_purged);
        cJSON_AddBoolToObject(body, "more", 1);
        fm_reply_json(r, 202, body);
        return;
    }
    fm_reply_raw(r, 204, "application/json", "", 0);
}

static void enqueue_next(fm_req_t *r, void *arg)
{
    (void)arg;
    trash_view_t *t = r->state;
    if (t->job_next >= t->job_count) {
        purge_answer(r, NULL);
        return;
    }
    fm_job_ref_t job = {.job_id = t->jobs[t->job_next++], .type = "cleanup_blob", .file_id = "", .upload_id = ""};
    fm_jobs_enqueue(r, &job, enqueue_next, NULL);
}

/* The purged files' cached rows go (fire and forget: a trashed file's row is not cached as live anyway). */
static void forget_files(fm_req_t *r, PGresult *res)
{
    fm_control_thread_t *ct = fm_control_thread(r);
    const char *argv[1 + DEL_KEYS_PER_CALL];
    char keys[DEL_KEYS_PER_CALL][48];
    int argc = 1;
    argv[0] = "DEL";
    for (int i = 0, n = PQntuples(res); i <= n; ++i) {
        if (i < n && strcmp(PQgetvalue(res, i, 0), "file") == 0) {
            snprintf(keys[argc - 1], sizeof(keys[0]), "fm:file:{%s}", PQgetvalue(res, i, 1));
            if (ct->rcache != NULL)
                fm_rcache_forget(ct->rcache, keys[argc - 1]);
            argv[argc] = keys[argc - 1];
            argc++;
        }
        if ((argc == 1 + DEL_KEYS_PER_CALL || i == n) && argc > 1) {
            fm_redis_commandargv(ct->redis, ignore_reply, NULL, argc, argv, NULL);
            argc = 1;
        }
    }
}

static void on_purged(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    trash_view_t *t = r->state;
    const char *outcome = "not_found";
    int n = PQntuples(res);
    t->jobs = calloc(ENQUEUE_MAX, sizeof(*t->jobs));
    if (t->jobs == NULL)
        h2o_fatal("out of memory");
    for (int i = 0; i < n; ++i) {
        const char *kind = PQgetvalue(res, i, 0), *value = PQgetvalue(res, i, 1);
        if (strcmp(kind, "outcome") == 0)
            outcome = value;
        else if (strcmp(kind, "file") == 0)
            t->files_purged++;
        else if (strcmp(kind, "job") == 0 && t->job_count < ENQUEUE_MAX)
            snprintf(t->jobs[t->job_count++], sizeof(t->jobs[0]), "%s", value);
    }
    if (t->empty) {
        t->more = strcmp(outcome, "more") == 0;
    } else if (strcmp(outcome, "purged") != 0) {
        if (strcmp(outcome, "busy") == 0)
            fm_reply_error(r, 409, "upload_in_progress",
                           "an upload of this entry may still be running; it can be purged once it ended");
        else if (strcmp(outcome, "not_empty") == 0)
            fm_reply_error(r, 409, "folder_not_empty", "an entry under this folder is not in the trash");
        else
            fm_reply_error(r, 404, "not_found", "no such entry in the trash");
        return;
    }
    fm_log(FM_LOG_INFO, r->request_id, "trash: %s purged %d file(s); %d cleanup job(s)", t->empty ? "emptying" : t->id,
           t->files_purged, t->job_count);
    forget_files(r, res);
    enqueue_next(r, NULL);
}

static void purge_authorized(fm_req_t *r, const fm_principal_t *p)
{
    trash_view_t *t = r->state;
    t->principal = p;
    char window[24];
    snprintf(window, sizeof(window), "%lld", upload_window_s());
    if (t->empty) {
        char limit[16];
        snprintf(limit, sizeof(limit), "%d", EMPTY_BATCH);
        const char *params[] = {p->user_id, window, limit};
        fm_pg_call(r, on_purged, "SELECT out_kind, out_id FROM fm_trash_empty($1::uuid, $2::integer, $3::integer)", 3,
                   params);
        return;
    }
    h2o_iovec_t id = r->params[0];
    if (fm_id_param(r, "entry in the trash", id.base, id.len, t->id) != 0)
        return;
    const char *params[] = {p->user_id, t->id, window};
    fm_pg_call(r, on_purged, "SELECT out_kind, out_id FROM fm_trash_purge_item($1::uuid, $2::uuid, $3::integer)", 3,
               params);
}

static void purge_start(fm_req_t *r, int empty)
{
    trash_view_t *t = fm_req_state(r, sizeof(trash_view_t));
    r->state_free = trash_view_free;
    t->empty = empty;
    fm_auth_require(r, purge_authorized);
}

void handle_trash_purge(fm_req_t *r)
{
    purge_start(r, 0);
}

void handle_trash_empty(fm_req_t *r)
{
    purge_start(r, 1);
}
