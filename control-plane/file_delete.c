/*
 * DELETE /v1/files/{id} (to the trash) and POST /v1/files/{id}/restore (out of it): DESIGN.md §4 "Delete",
 * docs/downloads.md "Delete, restore, retention".
 *
 * authorize (bearer token; the owner test is inside the SQL function, so someone else's file is the same 404 as a
 * missing one, as in files.c) → parse (the id) → act (one call of schema/006_trash.sql fm_file_trash or
 * fm_file_restore changes the row and tells what Redis must learn; then, one after the other, SET/DEL of the file's
 * revocation mark fm:revoked:{id} (fm-edge refuses every URL signed for a trashed file at once, edge_index.c),
 * SREM/SADD of the file's members in fm:public, HDEL/HSET of the hash in the owner's dedupe index fm:dedupe:{owner},
 * DEL fm:file:{id};
 * after a delete, the purge_edge job the function made goes on the stream) → answer (204; the restored row as
 * GET /v1/files/{id} answers it).
 *
 * A file already in the trash answers 404 to DELETE (it is gone from the owner's view) and a live one 409 not_deleted
 * to restore, but both still run the Redis commands first: Redis changes after PostgreSQL committed, so when it fails
 * the call answers 503 and the same call repeated puts Redis right. The purge job is made in the same transaction as
 * the change and the reconciler adds it to the stream if the XADD is lost.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"

/* A blob's keys: its storage_key and a few variants (thumb/preview × webp/jpeg today). */
#define BLOB_KEYS_MAX 32
#define REDIS_STEPS_MAX 4
#define REDIS_WORDS_MAX (REDIS_STEPS_MAX * 5 + BLOB_KEYS_MAX) /* a step has at most 5 words besides the keys */

typedef enum { TRASH_DELETE, TRASH_RESTORE } trash_op_t;

typedef struct {
    trash_op_t op;
    char id[37];
    int record_checked; /* the write-behind record (records.c) was brought in already */
    const fm_principal_t *principal;
    /* After the statement: Redis commands run in order (words owned), then the answer. */
    char *words[REDIS_WORDS_MAX];
    int word_count;
    int step_first[REDIS_STEPS_MAX], step_argc[REDIS_STEPS_MAX];
    int step_count, step_next;
    int answer_status; /* 204 trashed, 404 already in the trash, 200 restored, 409 not in the trash */
    char purge_job[40];
} trash_t;

static void trash_state_free(void *p)
{
    trash_t *t = p;
    for (int i = 0; i < t->word_count; ++i)
        free(t->words[i]);
}

static const char trash_sql[] =
    "SELECT outcome, coalesce(out_sha256, ''), out_keys::text, out_keep_public, out_owner_holds,"
    " coalesce(out_purge_job::text, '') FROM fm_file_trash($1::uuid, $2::uuid)";
static const char restore_sql[] =
    "SELECT outcome, coalesce(out_sha256, ''), out_keys::text, out_public, coalesce(out_ready_size::text, '')"
    " FROM fm_file_restore($1::uuid, $2::uuid, $3::integer)";

/* ---- the Redis commands ---- */

static void step_begin(trash_t *t)
{
    t->step_first[t->step_count] = t->word_count;
    t->step_argc[t->step_count] = 0;
}

static void step_word(trash_t *t, const char *word)
{
    char *copy = strdup(word);
    if (copy == NULL)
        h2o_fatal("out of memory");
    t->words[t->word_count++] = copy;
    t->step_argc[t->step_count]++;
}

static void step_end(trash_t *t)
{
    t->step_count++;
}

/* SADD/SREM fm:public and the file's members for the keys of the JSON array `keys_json` ("{file_id}/{key}",
 * edge_index.c). Returns -1 if it is not a list of keys. */
static int step_public_keys(trash_t *t, const char *command, const char *keys_json)
{
    cJSON *keys = cJSON_Parse(keys_json);
    int count = cJSON_GetArraySize(keys);
    int ok = cJSON_IsArray(keys) && count > 0 && count <= BLOB_KEYS_MAX;
    for (cJSON *k = ok ? keys->child : NULL; k != NULL; k = k->next)
        if (!cJSON_IsString(k) || k->valuestring[0] == '\0')
            ok = 0;
    if (ok) {
        step_begin(t);
        step_word(t, command);
        step_word(t, "fm:public");
        for (cJSON *k = keys->child; k != NULL; k = k->next) {
            char member[40 + 1024 + 1];
            snprintf(member, sizeof(member), "%s/%.1024s", t->id, k->valuestring);
            step_word(t, member);
        }
        step_end(t);
    }
    cJSON_Delete(keys);
    return ok ? 0 : -1;
}

static void step_dedupe_index(trash_t *t, const char *sha256, const char *size)
{
    char key[80];
    snprintf(key, sizeof(key), "fm:dedupe:{%s}", t->principal->user_id);
    step_begin(t);
    step_word(t, size != NULL ? "HSET" : "HDEL");
    step_word(t, key);
    step_word(t, sha256);
    if (size != NULL)
        step_word(t, size);
    step_end(t);
}

/* The file's revocation mark: set for as long as a URL signed before the trash can live, or deleted on restore. */
static void step_revocation(trash_t *t, int revoked)
{
    char key[64], ttl[24];
    snprintf(key, sizeof(key), "fm:revoked:{%s}", t->id);
    snprintf(ttl, sizeof(ttl), "%lld", fm_revocation_ttl_s());
    step_begin(t);
    step_word(t, revoked ? "SET" : "DEL");
    step_word(t, key);
    if (revoked) {
        step_word(t, "1");
        step_word(t, "EX");
        step_word(t, ttl);
    }
    step_end(t);
}

static void step_forget_row(trash_t *t)
{
    char key[64];
    snprintf(key, sizeof(key), "fm:file:{%s}", t->id);
    step_begin(t);
    step_word(t, "DEL");
    step_word(t, key);
    step_end(t);
}

/* ---- answer ---- */

static void answer(fm_req_t *r, void *arg)
{
    (void)arg;
    trash_t *t = r->state;
    switch (t->answer_status) {
    case 204:
        fm_reply_raw(r, 204, "application/json", "", 0);
        return;
    case 409:
        fm_reply_error(r, 409, "not_deleted", "the file is not in the trash");
        return;
    case 200: {
        /* The row as GET /v1/files/{id} answers it, read again (and cached again) through files.c, which keeps its
         * own handler state: ours goes first. The principal lives in r->auth and the id in the route's capture. */
        const fm_principal_t *p = t->principal;
        trash_state_free(t);
        free(r->state);
        r->state = NULL;
        r->state_free = NULL;
        fm_file_row(r, p, r->params[0].base, r->params[0].len, NULL, NULL); /* no `next`: GET's own answer */
        return;
    }
    default:
        fm_reply_error(r, 404, "not_found", "no such file");
        return;
    }
}

static void run_steps(fm_req_t *r);

static void on_step(redisReply *reply, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_redis_failed(r, reply, errstr)) /* PostgreSQL has the change; the same call again repairs Redis */
        return;
    run_steps(r);
}

static void run_steps(fm_req_t *r)
{
    trash_t *t = r->state;
    if (t->step_next < t->step_count) {
        int step = t->step_next++;
        fm_redis_call(r, on_step, t->step_argc[step], (const char **)t->words + t->step_first[step]);
        return;
    }
    if (t->purge_job[0] != '\0') {
        fm_job_ref_t job = {.job_id = t->purge_job, .type = "purge_edge", .file_id = "", .upload_id = ""};
        fm_jobs_enqueue(r, &job, answer, NULL);
        return;
    }
    answer(r, NULL);
}

/* ---- act ---- */

static void run_statement(fm_req_t *r, void *arg);

/* Plans the Redis commands from the trash statement's row: 0, or -1 when the blob's keys are unusable. */
static int plan_trash(trash_t *t, PGresult *res)
{
    const char *sha256 = PQgetvalue(res, 0, 1);
    t->answer_status = strcmp(PQgetvalue(res, 0, 0), "trashed") == 0 ? 204 : 404;
    step_revocation(t, 1);
    if (sha256[0] != '\0') {
        /* the file's own members leave fm:public; other files on the blob keep theirs */
        if (step_public_keys(t, "SREM", PQgetvalue(res, 0, 2)) != 0)
            return -1;
        /* without a live READY file on the blob the owner no longer holds it: uploads.c must not dedupe onto it */
        if (strcmp(PQgetvalue(res, 0, 4), "t") != 0)
            step_dedupe_index(t, sha256, NULL);
    }
    step_forget_row(t);
    if (t->answer_status == 204)
        snprintf(t->purge_job, sizeof(t->purge_job), "%s", PQgetvalue(res, 0, 5));
    return 0;
}

static int plan_restore(trash_t *t, PGresult *res)
{
    const char *outcome = PQgetvalue(res, 0, 0), *sha256 = PQgetvalue(res, 0, 1);
    if (strcmp(outcome, "expired") == 0) { /* past retention: the reconciler deletes it at its next round */
        t->answer_status = 404;
        return 0;
    }
    t->answer_status = strcmp(outcome, "restored") == 0 ? 200 : 409;
    step_revocation(t, 0);
    if (sha256[0] != '\0') {
        if (strcmp(PQgetvalue(res, 0, 3), "t") == 0 && step_public_keys(t, "SADD", PQgetvalue(res, 0, 2)) != 0)
            return -1;
        if (PQgetvalue(res, 0, 4)[0] != '\0')
            step_dedupe_index(t, sha256, PQgetvalue(res, 0, 4));
    }
    step_forget_row(t);
    return 0;
}

static void on_statement(PGresult *res, const char *errstr, void *data)
{
    fm_req_t *r = data;
    if (fm_req_resume(r) != 0)
        return;
    if (fm_pg_failed(r, res, errstr))
        return;
    trash_t *t = r->state;
    if (PQntuples(res) != 1 && fm_records_retry_file(r, t->id, &t->record_checked, run_statement))
        return;
    if (PQntuples(res) != 1) {
        fm_reply_error(r, 404, "not_found", "no such file");
        return;
    }
    if ((t->op == TRASH_DELETE ? plan_trash(t, res) : plan_restore(t, res)) != 0) {
        fm_log(FM_LOG_ERROR, r->request_id, "file %s: its blob's keys are not a list of keys", t->id);
        fm_reply_error(r, 500, "internal_error", "the request could not be completed");
        return;
    }
    if (t->op == TRASH_DELETE && t->answer_status == 204)
        fm_log(FM_LOG_INFO, r->request_id, "file %s trashed%s%s", t->id, t->purge_job[0] ? "; edge purge job " : "",
               t->purge_job);
    char row_key[64];
    snprintf(row_key, sizeof(row_key), "fm:file:{%s}", t->id);
    fm_rcache_forget(fm_control_thread(r)->rcache, row_key); /* restore's answer reads the row back */
    fm_tree_changed(fm_control_thread(r), t->principal->user_id); /* committed: the owner's listings change */
    run_steps(r);
}

static void run_statement(fm_req_t *r, void *arg)
{
    (void)arg;
    trash_t *t = r->state;
    if (t->op == TRASH_DELETE) {
        const char *params[] = {t->id, t->principal->user_id};
        fm_pg_call(r, on_statement, trash_sql, 2, params);
    } else {
        char retention[24];
        snprintf(retention, sizeof(retention), "%lld", (long long)fm_control->config.trash_retention_s);
        const char *params[] = {t->id, t->principal->user_id, retention};
        fm_pg_call(r, on_statement, restore_sql, 3, params);
    }
}

/* ---- parse, authorize ---- */

static void trash_authorized(fm_req_t *r, const fm_principal_t *p)
{
    trash_t *t = r->state;
    t->principal = p;
    h2o_iovec_t id = r->params[0];
    if (fm_id_param(r, "file", id.base, id.len, t->id) != 0)
        return;
    run_statement(r, NULL);
}

static void trash_start(fm_req_t *r, trash_op_t op)
{
    trash_t *t = fm_req_state(r, sizeof(trash_t));
    r->state_free = trash_state_free;
    t->op = op;
    fm_auth_require(r, trash_authorized);
}

void handle_file_delete(fm_req_t *r)
{
    trash_start(r, TRASH_DELETE);
}

void handle_file_restore(fm_req_t *r)
{
    trash_start(r, TRASH_RESTORE);
}
