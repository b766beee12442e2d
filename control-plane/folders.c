/*
 * The folder routes (issue 11 item 1; DESIGN.md §5b; docs/files.md "Folders"; docs/decisions.md "Folders (issue 11
 * item 1)"): POST /v1/folders, GET/PATCH/DELETE /v1/folders/{id}, POST /v1/folders/{id}/restore.
 *
 * Each handler: authorize (bearer token) → parse (the id, the body, on_conflict) → act (one call of a function of
 * schema/013_folders.sql, which checks the owner through fm_folder_for — the one permission rule of these routes —
 * and makes the whole change in one transaction; then what Redis must learn) → answer (the folder as
 * {id, name, parent_id, path, created_at, updated_at}, or 204). Someone else's folder is the same 404
 * folder_not_found as a missing one.
 *
 * DELETE takes the whole subtree to the trash; the files it took get what DELETE /v1/files/{id} gives one file
 * (file_delete.c), in bulk: their revocation marks fm:revoked:{id} (one script), their members out of fm:public (one
 * SREM), the owner's dedupe index entries of the blobs the owner no longer holds live and READY (one HDEL), their
 * cached rows (one DEL), and the purge_edge jobs of the blobs no live file points at. Redis changes after PostgreSQL
 * committed: when it fails the call answers 503, and the same DELETE repeated (the folder is then in the trash: 404)
 * does the Redis part again. The restore does the reverse. The bounds (FM_FOLDER_TRASH_MAX) keep each command's
 * arguments bounded.
 *
 * Every change calls fm_tree_changed (tree.c) once committed, so the owner's cached listings are dropped.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "names.h"
#include "qs.h"

#define FOLDER_BODY_MAX 4096
/* A blob's keys: its storage_key and a few variants (file_delete.c's bound). */
#define BLOB_KEYS_MAX 32
/* purge_edge jobs put on the stream by the call itself; the others wait for the reconciler's next round
 * (enqueued_at NULL), so one DELETE of a large subtree does not make thousands of round trips. */
#define PURGE_JOBS_INLINE 64

typedef enum { OP_CREATE, OP_GET, OP_UPDATE, OP_TRASH, OP_RESTORE } folder_op_t;

/* One Redis command: words owned. */
typedef struct {
    char **words;
    int count, cap;
    int base; /* words before the first item: a command with no item is not sent */
} command_t;

enum { CMD_REVOKE, CMD_PUBLIC, CMD_DEDUPE, CMD_FORGET, CMD_COUNT };

typedef struct {
    folder_op_t op;
    const fm_principal_t *principal;
    char id[37];
    /* the body */
    char name[FM_NAME_MAX_BYTES + 1];
    int has_name;
    char parent[37]; /* "" = the root */
    int has_parent;  /* PATCH: parent_id given (a move) */
    int rename;      /* on_conflict=rename */
    /* after the statement */
    command_t commands[CMD_COUNT];
    int command_next;
    char (*jobs)[37];
    int job_count, job_next;
    cJSON *folder; /* the answer's folder (owned) */
    int answer_status;
} folder_t;

static void folder_state_free(void *p)
{
    folder_t *f = p;
    for (int c = 0; c < CMD_COUNT; ++c) {
        for (int i = 0; i < f->commands[c].count; ++i)
            free(f->commands[c].words[i]);
        free(f->commands[c].words);
    }
    free(f->jobs);
    cJSON_Delete(f->folder);
}

static void word(command_t *c, const char *text)
{
    if (c->count == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        if ((c->words = realloc(c->words, sizeof(char *) * (size_t)c->cap)) == NULL)
            h2o_fatal("out of memory");
    }
    if ((c->words[c->count++] = strdup(text)) == NULL)
        h2o_fatal("out of memory");
}

/* ---- parse ---- */

/* on_conflict from the query or the body ("fail" | "rename"); answers 422 and returns -1 otherwise. */
static int parse_on_conflict(fm_req_t *r, folder_t *f, const cJSON *body)
{
    char value[16] = "";
    int rc = fm_qs_get(fm_req_query(r), "on_conflict", 0, value, sizeof(value), NULL);
    const cJSON *item = body != NULL ? cJSON_GetObjectItemCaseSensitive(body, "on_conflict") : NULL;
    if (rc == FM_QS_ABSENT && item != NULL) {
        if (!cJSON_IsString(item) || strlen(item->valuestring) >= sizeof(value)) {
            fm_reply_error(r, 422, "invalid_on_conflict", "on_conflict must be \"fail\" or \"rename\"");
            return -1;
        }
        snprintf(value, sizeof(value), "%s", item->valuestring);
        rc = FM_PCT_OK;
    }
    if (rc == FM_QS_ABSENT)
        return 0;
    if (rc != FM_PCT_OK || (strcmp(value, "fail") != 0 && strcmp(value, "rename") != 0)) {
        fm_reply_error(r, 422, "invalid_on_conflict", "on_conflict must be \"fail\" or \"rename\"");
        return -1;
    }
    f->rename = strcmp(value, "rename") == 0;
    return 0;
}

static int parse_name(fm_req_t *r, folder_t *f, const cJSON *item)
{
    if (!cJSON_IsString(item)) {
        fm_reply_error(r, 422, "invalid_name", "name must be a string");
        return -1;
    }
    fm_name_error_t error = fm_name_check(item->valuestring, strlen(item->valuestring)); /* common/names.h */
    if (error != FM_NAME_OK) {
        fm_reply_error(r, 422, "invalid_name", "%s", fm_name_error_message(error));
        return -1;
    }
    snprintf(f->name, sizeof(f->name), "%s", item->valuestring);
    f->has_name = 1;
    return 0;
}

static int parse_parent(fm_req_t *r, folder_t *f, const cJSON *item)
{
    f->has_parent = 1;
    if (cJSON_IsNull(item))
        return 0;
    if (!cJSON_IsString(item) || !fm_uuid_valid(item->valuestring, strlen(item->valuestring))) {
        fm_reply_error(r, 422, "invalid_field", "parent_id must be a folder id (UUID) or null");
        return -1;
    }
    for (size_t i = 0; i < 36; ++i) { /* lowercase, as ids are answered */
        char c = item->valuestring[i];
        f->parent[i] = (char)(c >= 'A' && c <= 'F' ? c + 32 : c);
    }
    f->parent[36] = '\0';
    return 0;
}

/* The body of POST (name required) or PATCH (name and/or parent_id); answers and returns -1 when refused. */
static int parse_body(fm_req_t *r, folder_t *f)
{
    cJSON *body = fm_req_json_body(r, FOLDER_BODY_MAX);
    if (body == NULL)
        return -1;
    int rc = 0;
    for (cJSON *item = body->child; item != NULL && rc == 0; item = item->next) {
        if (strcmp(item->string, "name") == 0)
            rc = parse_name(r, f, item);
        else if (strcmp(item->string, "parent_id") == 0)
            rc = parse_parent(r, f, item);
        else if (strcmp(item->string, "on_conflict") != 0) {
            fm_reply_error(r, 422, "invalid_field", "unknown field %.64s (name, parent_id, on_conflict)", item->string);
            rc = -1;
        }
    }
    if (rc == 0)
        rc = parse_on_conflict(r, f, body);
    if (rc == 0 && f->op == OP_CREATE && !f->has_name) {
        fm_reply_error(r, 422, "missing_field", "name is required");
        rc = -1;
    }
    if (rc == 0 && f->op == OP_UPDATE && !f->has_name && !f->has_parent) {
        fm_reply_error(r, 422, "invalid_field", "nothing to change: give name and/or parent_id");
        rc = -1;
    }
    cJSON_Delete(body);
    return rc;
}

/* ---- answer ---- */

static void answer(fm_req_t *r)
{
    folder_t *f = r->state;
    switch (f->answer_status) {
    case 200:
    case 201: {
        cJSON *folder = f->folder;
        f->folder = NULL;
        fm_reply_json(r, f->answer_status, folder);
        return;
    }
    case 204:
        fm_reply_raw(r, 204, "application/json", "", 0);
        return;
    default:
        fm_reply_error(r, 404, "folder_not_found", "no such folder");
        return;
    }
}

/* Answers an outcome of the SQL functions that is a refusal; 0 when `outcome` is none of them. */
static int answer_refusal(fm_req_t *r, const char *outcome)
{
    static const struct {
        const char *outcome;
        int status;
        const char *code, *message;
    } refusals[] = {
        {"not_found", 404, "folder_not_found", "no such folder"},
        {"parent_not_found", 404, "folder_not_found", "the parent is not a folder of yours (or it is in the trash)"},
        {"name_taken", 409, "name_taken", "an entry of that name already exists in that folder"},
        {"cycle", 409, "folder_cycle", "a folder cannot move into itself or one of its descendants"},
        {"too_deep", 422, "folder_too_deep", "folders nest at most 32 deep"},
        {"too_large", 422, "subtree_too_large", "the folder holds too many entries for one change"},
        {"full", 422, "folder_full", "the target folder holds as many entries as a folder may"},
        {"not_deleted", 409, "not_deleted", "the folder is not in the trash"},
        {"expired", 409, "expired", "the folder has been in the trash longer than it can be restored"},
    };
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); ++i)
        if (strcmp(outcome, refusals[i].outcome) == 0) {
            fm_reply_error(r, refusals[i].status, refusals[i].code, "%s", refusals[i].message);
            return 1;
        }
    return 0;
}

/* ---- Redis after a trash or a restore ---- */

static void run_commands(fm_req_t *r);

static void on_job_enqueued(fm_req_t *r, void *arg)
{
    (void)arg;
    run_commands(r);
}

static void on_command(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_redis_failed(r, reply, errstr)) /* PostgreSQL has the change; a repeated DELETE repairs Redis */
        return;
    run_commands(r);
}

/* The commands one after the other (each skipped when it has nothing to carry), then the first purge jobs. */
static void run_commands(fm_req_t *r)
{
    folder_t *f = r->state;
    while (f->command_next < CMD_COUNT) {
        command_t *c = &f->commands[f->command_next++];
        if (c->count > c->base) {
            fm_redis_call(r, on_command, c->count, (const char **)c->words);
            return;
        }
    }
    if (f->job_next < f->job_count && f->job_next < PURGE_JOBS_INLINE) {
        fm_job_ref_t job = {.job_id = f->jobs[f->job_next++], .type = "purge_edge", .file_id = "", .upload_id = ""};
        fm_jobs_enqueue(r, &job, on_job_enqueued, NULL);
        return;
    }
    answer(r);
}

static void begin_commands(folder_t *f, int trash)
{
    char owner_index[80];
    snprintf(owner_index, sizeof(owner_index), "fm:dedupe:{%s}", f->principal->user_id);
    if (trash) {
        /* SET key 1 EX ttl for each key: no variadic command sets expiring keys */
        word(&f->commands[CMD_REVOKE], "EVAL");
        word(&f->commands[CMD_REVOKE],
             "for i = 2, #ARGV do redis.call('SET', ARGV[i], '1', 'EX', ARGV[1]) end return #ARGV - 1");
        word(&f->commands[CMD_REVOKE], "0");
        char ttl[24];
        snprintf(ttl, sizeof(ttl), "%lld", fm_revocation_ttl_s());
        word(&f->commands[CMD_REVOKE], ttl);
    } else {
        word(&f->commands[CMD_REVOKE], "DEL");
    }
    word(&f->commands[CMD_PUBLIC], trash ? "SREM" : "SADD");
    word(&f->commands[CMD_PUBLIC], "fm:public");
    word(&f->commands[CMD_DEDUPE], trash ? "HDEL" : "HSET");
    word(&f->commands[CMD_DEDUPE], owner_index);
    word(&f->commands[CMD_FORGET], "DEL");
    for (int c = 0; c < CMD_COUNT; ++c)
        f->commands[c].base = f->commands[c].count;
}

/* "{file_id}/{key}" into fm:public's command for each key of the JSON array; -1 if it is not a list of keys. */
static int add_public_members(folder_t *f, const char *file_id, const char *keys_json)
{
    cJSON *keys = cJSON_Parse(keys_json);
    int count = cJSON_GetArraySize(keys);
    int ok = cJSON_IsArray(keys) && count > 0 && count <= BLOB_KEYS_MAX;
    for (cJSON *k = ok ? keys->child : NULL; k != NULL; k = k->next)
        if (!cJSON_IsString(k) || k->valuestring[0] == '\0')
            ok = 0;
    for (cJSON *k = ok ? keys->child : NULL; k != NULL; k = k->next) {
        char member[40 + 1024 + 1];
        snprintf(member, sizeof(member), "%s/%.1024s", file_id, k->valuestring);
        word(&f->commands[CMD_PUBLIC], member);
    }
    cJSON_Delete(keys);
    return ok ? 0 : -1;
}

/* The revocation mark and the cached row of one file (and the thread's local copy of the row). */
static void add_file(fm_req_t *r, folder_t *f, const char *file_id)
{
    char key[64];
    snprintf(key, sizeof(key), "fm:revoked:{%s}", file_id);
    word(&f->commands[CMD_REVOKE], key);
    snprintf(key, sizeof(key), "fm:file:{%s}", file_id);
    word(&f->commands[CMD_FORGET], key);
    fm_rcache_forget(fm_control_thread(r)->rcache, key);
}

/* Columns: outcome, file, sha256, keys, owner_holds, purge_job; a file's row (file set) or a blob's (file "", sha256
 * set), as fm_folder_trash returns them. */
static int plan_trash(fm_req_t *r, folder_t *f, PGresult *res)
{
    int rows = PQntuples(res);
    begin_commands(f, 1);
    if ((f->jobs = calloc((size_t)rows + 1, sizeof(*f->jobs))) == NULL)
        h2o_fatal("out of memory");
    for (int i = 0; i < rows; ++i) {
        const char *file_id = PQgetvalue(res, i, 1), *sha256 = PQgetvalue(res, i, 2);
        if (file_id[0] != '\0') {
            add_file(r, f, file_id);
            if (sha256[0] != '\0' && add_public_members(f, file_id, PQgetvalue(res, i, 3)) != 0)
                return -1;
        } else if (sha256[0] != '\0') {
            /* without a live READY file on the blob the owner no longer holds it: uploads must not dedupe onto it */
            if (strcmp(PQgetvalue(res, i, 4), "t") != 0)
                word(&f->commands[CMD_DEDUPE], sha256);
            if (PQgetvalue(res, i, 5)[0] != '\0')
                snprintf(f->jobs[f->job_count++], sizeof(f->jobs[0]), "%s", PQgetvalue(res, i, 5));
        }
    }
    return 0;
}

/* Columns: outcome, folder, file, sha256, keys, public, ready_size; a file's row (file set), a blob's (file "",
 * sha256 and ready_size set) or the folder's, as fm_folder_restore returns them. */
static int plan_restore(fm_req_t *r, folder_t *f, PGresult *res)
{
    begin_commands(f, 0);
    for (int i = 0; i < PQntuples(res); ++i) {
        const char *file_id = PQgetvalue(res, i, 2), *sha256 = PQgetvalue(res, i, 3), *size = PQgetvalue(res, i, 6);
        if (file_id[0] != '\0') {
            add_file(r, f, file_id);
            if (strcmp(PQgetvalue(res, i, 5), "t") == 0 && add_public_members(f, file_id, PQgetvalue(res, i, 4)) != 0)
                return -1;
        } else if (sha256[0] != '\0' && size[0] != '\0') {
            word(&f->commands[CMD_DEDUPE], sha256);
            word(&f->commands[CMD_DEDUPE], size);
        }
    }
    return 0;
}

/* ---- act ---- */

static const char create_sql[] =
    "SELECT outcome, coalesce(out_folder::text, '') FROM fm_folder_create($1::uuid, $2::uuid, $3, $4::boolean,"
    " $5::integer)";
static const char get_sql[] = "SELECT coalesce(fm_folder_get($1::uuid, $2::uuid)::text, '')";
static const char update_sql[] =
    "SELECT outcome, coalesce(out_folder::text, '') FROM fm_folder_update($1::uuid, $2::uuid, $3, $4::boolean,"
    " $5::uuid, $6::boolean, $7::integer, $8::integer)";
static const char trash_sql[] =
    "SELECT outcome, coalesce(out_file::text, ''), coalesce(out_sha256, ''), coalesce(out_keys::text, ''),"
    " coalesce(out_owner_holds, false), coalesce(out_purge_job::text, '') FROM fm_folder_trash($1::uuid, $2::uuid,"
    " $3::integer)";
static const char restore_sql[] =
    "SELECT outcome, coalesce(out_folder::text, ''), coalesce(out_file::text, ''), coalesce(out_sha256, ''),"
    " coalesce(out_keys::text, ''), coalesce(out_public, false), coalesce(out_ready_size::text, '')"
    " FROM fm_folder_restore($1::uuid, $2::uuid, $3::integer)";

/* The folder's JSON from the statement into f->folder; -1 (after a 500) when it is not JSON. */
static int take_folder(fm_req_t *r, folder_t *f, const char *json)
{
    if ((f->folder = cJSON_Parse(json)) == NULL || !cJSON_IsObject(f->folder)) {
        fm_log(FM_LOG_ERROR, r->request_id, "folder %s: the database answered no folder", f->id);
        fm_reply_error(r, 500, "internal_error", "the request could not be completed");
        return -1;
    }
    return 0;
}

static void on_statement(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    folder_t *f = r->state;
    int rows = PQntuples(res);
    if (f->op == OP_GET) {
        if (rows != 1 || PQgetvalue(res, 0, 0)[0] == '\0') {
            fm_reply_error(r, 404, "folder_not_found", "no such folder");
            return;
        }
        if (take_folder(r, f, PQgetvalue(res, 0, 0)) == 0) {
            f->answer_status = 200;
            answer(r);
        }
        return;
    }
    const char *outcome = rows > 0 ? PQgetvalue(res, 0, 0) : "not_found";
    /* fm_folder_restore answers 'not_deleted' with the folder; it is a refusal all the same */
    if (answer_refusal(r, outcome))
        return;
    fm_control_thread_t *thread = fm_control_thread(r);
    const char *owner = f->principal->user_id;
    switch (f->op) {
    case OP_CREATE:
    case OP_UPDATE:
        if (take_folder(r, f, PQgetvalue(res, 0, 1)) != 0)
            return;
        fm_tree_changed(thread, owner);
        f->answer_status = f->op == OP_CREATE ? 201 : 200;
        answer(r);
        return;
    case OP_TRASH:
        if (plan_trash(r, f, res) != 0)
            break;
        f->answer_status = strcmp(outcome, "trashed") == 0 ? 204 : 404; /* 'in_trash': repair Redis, then 404 */
        if (f->answer_status == 204) {
            fm_tree_changed(thread, owner);
            fm_log(FM_LOG_INFO, r->request_id, "folder %s trashed with %d file(s); %d edge purge job(s)", f->id,
                   f->commands[CMD_FORGET].count - f->commands[CMD_FORGET].base, f->job_count);
        }
        run_commands(r);
        return;
    case OP_RESTORE:
        for (int i = 0; i < rows && f->folder == NULL; ++i)
            if (PQgetvalue(res, i, 1)[0] != '\0' && take_folder(r, f, PQgetvalue(res, i, 1)) != 0)
                return;
        if (f->folder == NULL || plan_restore(r, f, res) != 0)
            break;
        fm_tree_changed(thread, owner);
        f->answer_status = 200;
        run_commands(r);
        return;
    default:
        break;
    }
    fm_log(FM_LOG_ERROR, r->request_id, "folder %s: the database's answer is not usable", f->id);
    fm_reply_error(r, 500, "internal_error", "the request could not be completed");
}

static void run_statement(fm_req_t *r)
{
    folder_t *f = r->state;
    const fm_config_t *cfg = &fm_control->config;
    const char *owner = f->principal->user_id;
    const char *parent = f->parent[0] ? f->parent : NULL;
    const char *rename = f->rename ? "true" : "false";
    char entries_max[24], move_max[24], trash_max[24], retention[24];
    snprintf(entries_max, sizeof(entries_max), "%lld", (long long)cfg->folder_entries_max);
    snprintf(move_max, sizeof(move_max), "%lld", (long long)cfg->folder_move_max);
    snprintf(trash_max, sizeof(trash_max), "%lld", (long long)cfg->folder_trash_max);
    snprintf(retention, sizeof(retention), "%lld", (long long)cfg->trash_retention_s);
    switch (f->op) {
    case OP_CREATE: {
        const char *params[] = {owner, parent, f->name, rename, entries_max};
        fm_pg_call(r, on_statement, create_sql, 5, params);
        return;
    }
    case OP_GET: {
        const char *params[] = {owner, f->id};
        fm_pg_call(r, on_statement, get_sql, 2, params);
        return;
    }
    case OP_UPDATE: {
        const char *params[] = {
            owner,    f->id,      f->has_name ? f->name : NULL, f->has_parent ? "true" : "false", parent, rename,
            move_max, entries_max};
        fm_pg_call(r, on_statement, update_sql, 8, params);
        return;
    }
    case OP_TRASH: {
        const char *params[] = {owner, f->id, trash_max};
        fm_pg_call(r, on_statement, trash_sql, 3, params);
        return;
    }
    case OP_RESTORE: {
        const char *params[] = {owner, f->id, retention};
        fm_pg_call(r, on_statement, restore_sql, 3, params);
        return;
    }
    }
}

/* ---- authorize, parse ---- */

static void folder_authorized(fm_req_t *r, const fm_principal_t *p)
{
    folder_t *f = r->state;
    f->principal = p;
    if (f->op == OP_CREATE && p->role == FM_JWT_ROLE_VIEWER) { /* viewers add nothing, as they upload nothing */
        fm_reply_error(r, 403, "forbidden", "viewers cannot create folders");
        return;
    }
    if (f->op != OP_CREATE) {
        h2o_iovec_t id = r->params[0];
        if (!fm_uuid_valid(id.base, id.len)) {
            fm_reply_error(r, 404, "folder_not_found", "no such folder");
            return;
        }
        for (size_t i = 0; i < 36; ++i)
            f->id[i] = (char)(id.base[i] >= 'A' && id.base[i] <= 'F' ? id.base[i] + 32 : id.base[i]);
    }
    if ((f->op == OP_CREATE || f->op == OP_UPDATE) && parse_body(r, f) != 0)
        return;
    run_statement(r);
}

static void folder_start(fm_req_t *r, folder_op_t op)
{
    folder_t *f = fm_req_state(r, sizeof(folder_t));
    r->state_free = folder_state_free;
    f->op = op;
    fm_auth_require(r, folder_authorized);
}

void handle_folder_create(fm_req_t *r)
{
    folder_start(r, OP_CREATE);
}

void handle_folder_get(fm_req_t *r)
{
    folder_start(r, OP_GET);
}

void handle_folder_update(fm_req_t *r)
{
    folder_start(r, OP_UPDATE);
}

void handle_folder_delete(fm_req_t *r)
{
    folder_start(r, OP_TRASH);
}

void handle_folder_restore(fm_req_t *r)
{
    folder_start(r, OP_RESTORE);
}
