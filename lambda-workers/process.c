/*
 * process: one job, start to end (process.h fm_worker_process; DESIGN.md §4 "Processing (workers)"):
 *
 *   job_lock → job_load → (skip if done) → job_start → job_steps → one outcome:
 *     outcome_ready        staged bytes copied to blobs/{sha256} (unless a blob has them), blob registered (or found:
 *                          storage-level dedupe), file READY, staged and incoming objects deleted (schema 007
 *                          fm_job_ready)
 *     outcome_quarantine   staged bytes moved to quarantine/{upload_id}, file QUARANTINED      (fm_job_quarantine)
 *     outcome_failed       job RETRY + jobs:delayed, or FAILED + jobs:dead         (schema 010 fm_job_attempt_failed)
 *   → the entry acknowledged and deleted → job_unlock.
 *
 * Two kinds of failed attempt (DESIGN.md §6 rule 4): a step's FM_STEP_FAIL is the content's fault and uses one of
 * FM_JOB_MAX_ATTEMPTS; everything else -- a step's FM_STEP_RETRY (S3, clamd, the temp disk), an S3 error while moving
 * refused bytes, a cleanup's refused delete, an edge that is down, a stop at the end of the graceful delay -- is a
 * dependency's, uses none, and is retried with a capped, jittered backoff until it has lasted FM_JOB_TRANSIENT_MAX_S
 * (outcome "deferred"). PostgreSQL itself going away once a job's work is done does not even fail the attempt: the
 * worker keeps the job and waits for it (wait_for_postgresql), then records the outcome.
 *
 * A housekeeping job takes the same lock, load, start and failure path, and instead of the steps runs its module's
 * function, found in one table (RUNNERS, "the housekeeping jobs" below): cleanup_blob fm_cleanup_blob (cleanup.c;
 * outcome deleted, kept -- referenced again -- or skipped, already gone), purge_edge fm_purge_job (purge.c; outcome
 * purged, or skipped when there is no edge to purge; an edge that refuses or is down makes it a dependency's failed
 * attempt, retried with backoff), rekey_blob fm_rekey_blob (rekey.c; outcome moved, quarantined or skipped).
 *
 * PostgreSQL holds the truth and changes first; Redis (caches, dedupe index, notification) follows. A failure of
 * Redis, or of PostgreSQL before the job started, leaves the entry pending (outcome "left"): it is processed again
 * later, and no attempt was counted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "log.h"
#include "purge.h"
#include "rekey.h"
#include "metrics.h"
#include "process.h"

/* One job's working state. */
typedef struct {
    const fm_entry_t *entry;
    char lock_key[64];
    char type[32];
    char status[16];
    char etag[256];
    int attempts;   /* after job_start: this attempt's number */
    int have_file;  /* the file row still exists */
    int blob_known; /* a blob with this content was registered before (blob_key says where it is stored) */
    char blob_key[1024];
    const char *failed_step;
    fm_job_t job;
    int content_fault; /* the attempt failed on the content (FM_STEP_FAIL, a worker lost on every attempt): it counts
                        * toward FM_JOB_MAX_ATTEMPTS. 0, the default, is a dependency's fault: it does not */
} job_ctx_t;

#define LOG(level, c, ...) fm_log(level, (c)->entry->request_id[0] ? (c)->entry->request_id : NULL, __VA_ARGS__)

static const char LOCK_RELEASE_LUA[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/* ---- lock, acknowledgement, in-flight record -------------------------------------------------------------------- */

typedef enum { LOCK_TAKEN, LOCK_BUSY, LOCK_ERROR } lock_rc;

static lock_rc job_lock(fm_worker_t *w, job_ctx_t *c)
{
    char px[24];
    snprintf(px, sizeof(px), "%lld", (long long)w->cfg->job_visibility_ms);
    snprintf(c->lock_key, sizeof(c->lock_key), "fm:joblock:{%s}", c->entry->job_id);
    const char *argv[] = {"SET", c->lock_key, w->consumer, "NX", "PX", px};
    redisReply *reply = fm_worker_cmd(w, 6, argv);
    if (reply == NULL)
        return LOCK_ERROR;
    lock_rc rc = reply->type == REDIS_REPLY_STATUS ? LOCK_TAKEN
                 : reply->type == REDIS_REPLY_NIL  ? LOCK_BUSY
                                                   : LOCK_ERROR;
    if (rc == LOCK_ERROR)
        LOG(FM_LOG_WARN, c, "jobs: lock of %s: %s", c->entry->job_id,
            reply->type == REDIS_REPLY_ERROR ? reply->str : "?");
    freeReplyObject(reply);
    return rc;
}

static void job_unlock(fm_worker_t *w, job_ctx_t *c)
{
    const char *argv[] = {"EVAL", LOCK_RELEASE_LUA, "1", c->lock_key, w->consumer};
    freeReplyObject(fm_worker_cmd(w, 5, argv));
}

/* XACK + XDEL: the stream only keeps entries still to do. 0, or -1 when Redis failed (the entry stays pending and
 * comes back; the job is then found done and skipped). */
static int entry_ack(fm_worker_t *w, const fm_entry_t *e)
{
    if (e->id[0] == '\0')
        return 0;
    const char *ack[] = {"XACK", FM_QUEUE_STREAM, FM_QUEUE_GROUP, e->id};
    const char *del[] = {"XDEL", FM_QUEUE_STREAM, e->id};
    redisReply *a = fm_worker_cmd(w, 4, ack);
    redisReply *d = a != NULL ? fm_worker_cmd(w, 3, del) : NULL;
    int ok = a != NULL && a->type == REDIS_REPLY_INTEGER && d != NULL;
    freeReplyObject(a);
    freeReplyObject(d);
    return ok ? 0 : -1;
}

static void set_inflight(fm_worker_t *w, const fm_entry_t *e)
{
    pthread_mutex_lock(&w->inflight_lock);
    snprintf(w->inflight_job, sizeof(w->inflight_job), "%s", e ? e->job_id : "");
    snprintf(w->inflight_entry, sizeof(w->inflight_entry), "%s", e ? e->id : "");
    w->inflight_since_ms = e ? fm_wall_ms() : 0;
    if (e == NULL)
        w->jobs_done++;
    pthread_mutex_unlock(&w->inflight_lock);
}

/* ---- PostgreSQL: load and start ---------------------------------------------------------------------------------- */

/* 0 loaded, 1 no such job, -1 PostgreSQL failed. */
static int job_load(fm_worker_t *w, job_ctx_t *c)
{
    const char *params[] = {c->entry->job_id};
    PGresult *res = fm_worker_sql(
        w,
        "SELECT j.status, j.attempts, j.type, coalesce(j.file_id::text, ''), coalesce(j.upload_id::text, ''),"
        " coalesce(u.object_key, ''), coalesce(encode(u.claimed_sha256, 'hex'), ''), coalesce(u.content_type, ''),"
        " coalesce(u.size, -1), coalesce(u.owner_id::text, ''), coalesce(u.etag, ''), f.id IS NOT NULL "
        "FROM jobs j LEFT JOIN uploads u ON u.id = j.upload_id LEFT JOIN files f ON f.id = j.file_id "
        "WHERE j.id = $1::uuid",
        1, params);
    if (res == NULL)
        return -1;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return 1;
    }
    fm_job_t *job = &c->job;
    snprintf(c->status, sizeof(c->status), "%s", PQgetvalue(res, 0, 0));
    c->attempts = atoi(PQgetvalue(res, 0, 1));
    snprintf(c->type, sizeof(c->type), "%s", PQgetvalue(res, 0, 2));
    snprintf(job->job_id, sizeof(job->job_id), "%.36s", c->entry->job_id);
    snprintf(job->file_id, sizeof(job->file_id), "%s", PQgetvalue(res, 0, 3));
    snprintf(job->upload_id, sizeof(job->upload_id), "%s", PQgetvalue(res, 0, 4));
    snprintf(job->object_key, sizeof(job->object_key), "%s", PQgetvalue(res, 0, 5));
    snprintf(job->claimed_sha256, sizeof(job->claimed_sha256), "%s", PQgetvalue(res, 0, 6));
    snprintf(job->declared_type, sizeof(job->declared_type), "%s", PQgetvalue(res, 0, 7));
    job->declared_size = atoll(PQgetvalue(res, 0, 8));
    snprintf(job->owner_id, sizeof(job->owner_id), "%s", PQgetvalue(res, 0, 9));
    snprintf(c->etag, sizeof(c->etag), "%s", PQgetvalue(res, 0, 10));
    c->have_file = strcmp(PQgetvalue(res, 0, 11), "t") == 0;
    PQclear(res);
    return 0;
}

/* Job RUNNING (attempts + 1, started_at), file PROCESSING, in one statement. 0, 1 (the job moved on meanwhile), -1.
 * The attempt is counted now, so that one whose worker dies (a file that crashes it) counts; a dependency's failure
 * gives it back (fm_job_attempt_failed). A job that starts afresh (QUEUED: new, or an admin's retry) starts a new
 * streak of dependency errors. */
static int job_start(fm_worker_t *w, job_ctx_t *c)
{
    const char *params[] = {c->job.job_id};
    PGresult *res = fm_worker_sql(
        w,
        "WITH j AS (UPDATE jobs SET status = 'RUNNING', attempts = attempts + 1, started_at = now(),"
        "           transient_since = CASE WHEN status = 'QUEUED' THEN NULL ELSE transient_since END,"
        "           transient_retries = CASE WHEN status = 'QUEUED' THEN 0 ELSE transient_retries END"
        "           WHERE id = $1::uuid AND status IN ('QUEUED', 'RETRY', 'RUNNING') RETURNING attempts, file_id),"
        " f AS (UPDATE files SET status = 'PROCESSING', status_reason = NULL, updated_at = now(),"
        "       version = version + 1 WHERE id = (SELECT file_id FROM j) RETURNING id) "
        "SELECT attempts, (SELECT count(*) FROM f) FROM j",
        1, params);
    if (res == NULL)
        return -1;
    int rc = PQntuples(res) == 1 ? 0 : 1;
    if (rc == 0)
        c->attempts = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    c->job.attempt = c->attempts;
    return rc;
}

/* A job whose file or upload was deleted has nothing left to do. */
static void job_close_gone(fm_worker_t *w, job_ctx_t *c)
{
    const char *params[] = {c->entry->job_id};
    PQclear(fm_worker_sql(w,
                          "UPDATE jobs SET status = 'DONE', finished_at = now(), last_error = 'file or upload deleted'"
                          " WHERE id = $1::uuid AND status NOT IN ('DONE', 'FAILED')",
                          1, params));
}

/* ---- Redis after a change: caches, dedupe index, notification -----------------------------------------------------
 */

static void forget_cached_rows(fm_worker_t *w, const fm_job_t *job)
{
    char file_key[64], job_key[64];
    snprintf(file_key, sizeof(file_key), "fm:file:{%s}", job->file_id);
    snprintf(job_key, sizeof(job_key), "fm:job:{%s}", job->job_id);
    const char *argv[] = {"DEL", file_key, job_key};
    freeReplyObject(fm_worker_cmd(w, 3, argv));
    fm_worker_tree_changed(w, job->owner_id);
}

/* PUBLISH fm:events:{owner} {"type":"file.status","file_id","job_id","status"[,"reason"]}: the owner's channel. */
static void notify_owner(fm_worker_t *w, const char *owner_id, const fm_job_t *job, const char *status,
                         const char *reason)
{
    if (owner_id[0] == '\0')
        return;
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "type", "file.status");
    cJSON_AddStringToObject(doc, "file_id", job->file_id);
    cJSON_AddStringToObject(doc, "job_id", job->job_id);
    cJSON_AddStringToObject(doc, "status", status);
    if (reason != NULL)
        cJSON_AddStringToObject(doc, "reason", reason);
    char *json = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    char channel[80];
    snprintf(channel, sizeof(channel), "fm:events:{%s}", owner_id);
    const char *argv[] = {"PUBLISH", channel, json ? json : "{}"};
    freeReplyObject(fm_worker_cmd(w, 3, argv));
    free(json);
}

/* ---- the steps ----------------------------------------------------------------------------------------------------
 */

static int put_variant(void *ud, const char *key, const char *content_type, const void *data, size_t len)
{
    fm_worker_t *w = ud;
    fm_s3_result_t res;
    if (fm_s3_put_object(w->s3, key, data, len, content_type, &res) != 0) {
        fm_warn("s3: PUT %s: %s (HTTP %ld): %s", key, res.code, res.status, res.message);
        return -1;
    }
    return 0;
}

static void observe_step(const char *step, uint64_t started_ms)
{
    char labels[48];
    snprintf(labels, sizeof(labels), "step=\"%s\"", step);
    fm_metrics_observe("fm_worker_step_seconds", labels, (double)(fm_mono_ms() - started_ms) / 1000.0);
}

/* Whether verified content with this hash is registered already (then the file just points at it), and its object's
 * key into `key` (may be NULL). FOR KEY SHARE waits for a cleanup_blob job holding the row (cleanup.c) and then finds
 * it gone: this job renders the variants and copies the bytes again rather than pointing its file at a blob whose
 * bytes are being deleted. Past this point no cleanup takes the blob: this job's upload, UPLOADED with the verified
 * hash, references it (schema 005 fm_blob_referenced). */
static int blob_exists(fm_worker_t *w, const fm_job_t *job, char *key, size_t key_size)
{
    const char *params[] = {job->sha256};
    PGresult *res =
        fm_worker_sql(w, "SELECT storage_key FROM blobs WHERE sha256 = decode($1, 'hex') FOR KEY SHARE", 1, params);
    int exists = res != NULL && PQntuples(res) == 1;
    if (key != NULL)
        snprintf(key, key_size, "%s", exists ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    return exists;
}

#define RUN_STEP(label, call)                                                                                          \
    do {                                                                                                               \
        if (fm_worker_must_abandon(w))                                                                                 \
            return -1;                                                                                                 \
        uint64_t started = fm_mono_ms();                                                                               \
        fm_step_rc step_rc = (call);                                                                                   \
        observe_step(label, started);                                                                                  \
        if (step_rc != FM_STEP_OK) {                                                                                   \
            c->failed_step = label;                                                                                    \
            *rc = step_rc;                                                                                             \
            return 0;                                                                                                  \
        }                                                                                                              \
    } while (0)

/* Runs the steps in order until one does not say OK. 0 with the decision in *rc, or -1 when the process is stopping
 * and the graceful delay is over (the job is left as it is, for another worker). */
static int job_steps(fm_worker_t *w, job_ctx_t *c, fm_step_rc *rc)
{
    fm_job_t *job = &c->job;
    *rc = FM_STEP_OK;
    RUN_STEP("stage", step_stage(job, w->s3, &w->limits));
    RUN_STEP("fetch", step_fetch(job, w->s3, &w->limits));
    RUN_STEP("verify", step_verify(job));
    RUN_STEP("sniff", step_sniff(job));
    RUN_STEP("scan", step_scan(job, &w->limits));
    /* Known content is described and rendered all the same: skipping it would make READY come sooner for bytes that
     * another account holds, which tells an uploader what others store (the variants' keys are content-addressed, so
     * the same bytes are written again). */
    c->blob_known = blob_exists(w, job, c->blob_key, sizeof(c->blob_key));
    RUN_STEP("describe", step_describe(job, &w->limits));
    RUN_STEP("variants", step_variants(job, &w->limits, put_variant, w));
    RUN_STEP("text", step_text(job, &w->limits));
    return 0;
}

/* ---- outcomes ------------------------------------------------------------------------------------------------------
 */

/* Deletes the variants this attempt wrote when no blob owns them (a refused or failed job must not leave them). */
static void drop_orphan_variants(fm_worker_t *w, job_ctx_t *c)
{
    const cJSON *v;
    if (c->job.variants == NULL || c->job.sha256[0] == '\0' || blob_exists(w, &c->job, NULL, 0))
        return;
    cJSON_ArrayForEach(v, c->job.variants)
    {
        const cJSON *key = cJSON_GetObjectItemCaseSensitive(v, "key");
        fm_s3_result_t res;
        if (cJSON_IsString(key) && fm_s3_delete_object(w->s3, key->valuestring, &res) != 0)
            fm_warn("s3: DELETE %s: %s", key->valuestring, res.code);
    }
}

static fm_outcome_t outcome_failed(fm_worker_t *w, job_ctx_t *c, const char *reason);

/* DELETE of `key`; a failure is only logged: an incoming/ object left behind is swept by the reconciler's orphan step,
 * and a staged one is copied over by the next job of the same upload. */
static void delete_quietly(fm_worker_t *w, job_ctx_t *c, const char *key)
{
    fm_s3_result_t res;
    if (key[0] != '\0' && fm_s3_delete_object(w->s3, key, &res) != 0 && res.status != 404)
        LOG(FM_LOG_WARN, c, "s3: %s not deleted: %s (HTTP %ld)", key, res.code, res.status);
}

/* The job's objects once its outcome is recorded: the staged copy and the client's object (which its presigned URL
 * could still overwrite, never to be served: events.c and the orphan sweep delete later PUTs). */
static void drop_job_objects(fm_worker_t *w, job_ctx_t *c)
{
    delete_quietly(w, c, c->job.staging_key);
    delete_quietly(w, c, c->job.object_key);
}

/* The verified bytes at `key` (blobs/{sha256}): the staged copy, which no client URL can write, copied with the type
 * the bytes really have. Nothing to do when the blob already stores them there. 0 with the copy's ETag in `etag`, or
 * -1 with the reason in `why`. */
static int store_blob(fm_worker_t *w, job_ctx_t *c, const char *key, const char *type, char *etag, size_t etag_size,
                      char *why, size_t why_size)
{
    fm_job_t *job = &c->job;
    etag[0] = '\0';
    if (c->blob_known && strcmp(c->blob_key, key) == 0)
        return 0;
    if (job->staging_key[0] == '\0') {
        snprintf(why, why_size, "no staged copy to store (step_stage did not run)");
        return -1;
    }
    fm_s3_copy_opts_t opts = {.content_type = type, .size = job->size, .part_bytes = w->limits.copy_part_bytes};
    fm_s3_result_t res;
    if (fm_s3_copy(w->s3, job->staging_key, key, &opts, &res) != 0) {
        snprintf(why, why_size, "copy of %.60s to %.80s failed: %.60s (HTTP %ld)", job->staging_key, key, res.code,
                 res.status);
        return -1;
    }
    snprintf(etag, etag_size, "%s", res.etag);
    return 0;
}

static fm_outcome_t outcome_ready(fm_worker_t *w, job_ctx_t *c)
{
    fm_job_t *job = &c->job;
    const char *type = job->real_type[0] ? job->real_type : job->declared_type;
    char key[80], etag[256], why[256];
    snprintf(key, sizeof(key), "blobs/%s", job->sha256);
    if (store_blob(w, c, key, type, etag, sizeof(etag), why, sizeof(why)) != 0) {
        LOG(FM_LOG_WARN, c, "jobs: %s: %s", job->job_id, why);
        return outcome_failed(w, c, why);
    }
    char size[24];
    snprintf(size, sizeof(size), "%lld", job->size);
    char *meta = job->meta ? cJSON_PrintUnformatted(job->meta) : NULL;
    char *variants = fm_variants_json(job->variants);
    const char *params[] = {job->job_id, job->sha256, size, key, etag[0] ? etag : NULL, type, meta, variants, job->text};
    PGresult *res = fm_worker_sql(w,
                                  "SELECT out_created, out_key, coalesce(out_owner::text, ''),"
                                  " coalesce(out_old_key, '') FROM fm_job_ready("
                                  "$1::uuid, $2, $3::bigint, $4, $5, $6, $7::jsonb, $8::jsonb, $9)",
                                  9, params);
    free(meta);
    free(variants);
    if (res == NULL)
        return FM_OUTCOME_LEFT;
    if (PQntuples(res) != 1) {
        PQclear(res);
        LOG(FM_LOG_WARN, c, "jobs: %s was no longer RUNNING when it became ready; nothing recorded", job->job_id);
        return FM_OUTCOME_SKIPPED;
    }
    int created = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    char owner[40];
    snprintf(owner, sizeof(owner), "%s", PQgetvalue(res, 0, 2));
    /* A blob registered by an earlier version kept its bytes at the key its first upload had (incoming/{id}, which
     * that upload's URL could overwrite): fm_job_ready moved it to this copy, and the old object goes. */
    if (PQgetvalue(res, 0, 3)[0] != '\0') {
        LOG(FM_LOG_INFO, c, "jobs: blob %s moved from %s to %s", job->sha256, PQgetvalue(res, 0, 3), key);
        fm_blob_forget_rows(w, job->sha256); /* cached rows still name the old key: read again, not sent to a 404 */
        delete_quietly(w, c, PQgetvalue(res, 0, 3));
    }
    PQclear(res);
    char index_key[80];
    snprintf(index_key, sizeof(index_key), "fm:dedupe:{%s}", owner);
    const char *hset[] = {"HSET", index_key, job->sha256, size};
    if (owner[0] != '\0')
        freeReplyObject(fm_worker_cmd(w, 4, hset));
    forget_cached_rows(w, job);
    notify_owner(w, owner, job, "READY", NULL);
    LOG(FM_LOG_INFO, c, "jobs: %s READY (file %s, %lld bytes, %s%s)", job->job_id, job->file_id, job->size, type,
        created ? "" : ", deduplicated");
    drop_job_objects(w, c); /* last: the owner, the caches and the index know the outcome first */
    return FM_OUTCOME_READY;
}

static fm_outcome_t outcome_quarantine(fm_worker_t *w, job_ctx_t *c)
{
    fm_job_t *job = &c->job;
    char why[256];
    if (fm_stage_quarantine(w->s3, &w->limits, job, why, sizeof(why)) != 0) {
        /* Not marked: the refused bytes are still where readers could be pointed at them. Retry the move: the store's
         * fault, not the content's (c->content_fault stays 0). */
        LOG(FM_LOG_WARN, c, "jobs: %s: %s", job->job_id, why);
        c->failed_step = "quarantine";
        return outcome_failed(w, c, why);
    }
    drop_orphan_variants(w, c);
    const char *params[] = {job->job_id, job->reason};
    PGresult *res =
        fm_worker_sql(w, "SELECT coalesce(out_owner::text, '') FROM fm_job_quarantine($1::uuid, $2)", 2, params);
    if (res == NULL)
        return FM_OUTCOME_LEFT;
    char owner[40] = "";
    int recorded = PQntuples(res) == 1;
    if (recorded)
        snprintf(owner, sizeof(owner), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!recorded)
        return FM_OUTCOME_SKIPPED;
    forget_cached_rows(w, job);
    notify_owner(w, owner, job, "QUARANTINED", job->reason);
    LOG(FM_LOG_WARN, c, "jobs: %s QUARANTINED at step %s: %s", job->job_id, c->failed_step ? c->failed_step : "?",
        job->reason);
    return FM_OUTCOME_QUARANTINED;
}

/* Delay before the next attempt, in ms. After a content failure: base × 2^attempts (2 s, 4 s with the 1 s default),
 * as DESIGN.md §4 says. After the n-th dependency error in a row: "equal jitter" over base × 2^n -- half of it plus a
 * random part of the other half -- so that the jobs one outage failed together do not all come back in the same
 * instant, yet each waits longer than the last. Both capped at FM_JOB_BACKOFF_MAX_MS: an outage is retried at least
 * that often, so a file is processed at most that long after its dependency came back. */
static unsigned long long retry_delay_ms(const fm_worker_t *w, int exponent, int jitter)
{
    int shift = exponent < 0 ? 0 : exponent > 30 ? 30 : exponent;
    unsigned long long cap = (unsigned long long)w->cfg->job_backoff_max_ms;
    unsigned long long delay = (unsigned long long)w->cfg->job_backoff_base_ms << shift; /* ≤ 3.6e6 × 2^30 */
    if (delay > cap)
        delay = cap;
    if (jitter && delay >= 2) /* the cap is at most a day: half of it fits 32 bits */
        delay = delay / 2 + arc4random_uniform((uint32_t)(delay / 2) + 1);
    return delay;
}

/* PostgreSQL went away while a started job's outcome was to be recorded. Its work is done: rather than let the job
 * be reclaimed and run again from the start (its attempt counted as if its worker had died), keep it -- the heartbeat
 * refreshes its entry and lock -- and wait for PostgreSQL. 0 once a statement goes through again, -1 when the job must
 * be let go (the graceful delay of a stop is over; Lambda's deadline is near). */
static int wait_for_postgresql(fm_worker_t *w, job_ctx_t *c)
{
    uint64_t since = fm_mono_ms(), pause = 250;
    LOG(FM_LOG_WARN, c, "jobs: %s: PostgreSQL is unavailable; the job waits for it and is not run again",
        c->entry->job_id);
    fm_metrics_counter_add("fm_worker_postgresql_waits_total", NULL, 1);
    for (;;) {
        if (fm_worker_pause(w, pause) != 0) {
            LOG(FM_LOG_WARN, c, "jobs: %s: stopped waiting for PostgreSQL after %llu ms; left pending",
                c->entry->job_id, (unsigned long long)(fm_mono_ms() - since));
            return -1;
        }
        PGresult *res = fm_worker_sql(w, "SELECT 1", 0, NULL);
        if (res != NULL) {
            PQclear(res);
            LOG(FM_LOG_INFO, c, "jobs: %s: PostgreSQL is back after %llu ms", c->entry->job_id,
                (unsigned long long)(fm_mono_ms() - since));
            return 0;
        }
        pause = pause * 2 > 5000 ? 5000 : pause * 2;
    }
}

/* Runs an outcome; when PostgreSQL was missing to record it, waits for it and runs the outcome again. Every outcome
 * acts only on a RUNNING job, so a second run after a first one whose commit did go through finds nothing to do. */
static fm_outcome_t settle(fm_worker_t *w, job_ctx_t *c, fm_outcome_t (*outcome)(fm_worker_t *, job_ctx_t *))
{
    fm_outcome_t result;
    while ((result = outcome(w, c)) == FM_OUTCOME_LEFT && w->pg_unavailable && wait_for_postgresql(w, c) == 0)
        ;
    return result;
}

/* A failed attempt: c->content_fault says whose fault (see the top of this file). fm_job_attempt_failed decides, on the
 * locked row, between RETRY (then the job goes on jobs:delayed) and FAILED (then on jobs:dead). */
static fm_outcome_t outcome_failed(fm_worker_t *w, job_ctx_t *c, const char *reason)
{
    fm_job_t *job = &c->job;
    int transient = !c->content_fault;
    const char *step = c->failed_step ? c->failed_step : "outcome";
    char max_attempts[24], transient_max[24];
    snprintf(max_attempts, sizeof(max_attempts), "%lld", (long long)w->cfg->job_max_attempts);
    snprintf(transient_max, sizeof(transient_max), "%lld", (long long)w->cfg->job_transient_max_s);
    const char *params[] = {job->job_id, reason, transient ? "true" : "false", max_attempts, transient_max};
    static const char sql[] = "SELECT out_final, coalesce(out_owner::text, ''), out_type, coalesce(out_file::text, ''),"
                              " coalesce(out_upload::text, ''), out_attempts, out_transient_retries, out_reason"
                              " FROM fm_job_attempt_failed($1::uuid, $2, $3::boolean, $4::integer, $5::integer)";
    PGresult *res;
    while ((res = fm_worker_sql(w, sql, 5, params)) == NULL && w->pg_unavailable && wait_for_postgresql(w, c) == 0)
        ;
    if (res == NULL)
        return FM_OUTCOME_LEFT;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return FM_OUTCOME_SKIPPED;
    }
    int final = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    char owner[40];
    snprintf(owner, sizeof(owner), "%s", PQgetvalue(res, 0, 1));
    int attempts = atoi(PQgetvalue(res, 0, 5)), transient_retries = atoi(PQgetvalue(res, 0, 6));
    const char *final_reason = PQgetvalue(res, 0, 7);
    fm_outcome_t outcome;
    if (!final) {
        unsigned long long delay = transient ? retry_delay_ms(w, transient_retries, 1) : retry_delay_ms(w, attempts, 0);
        char due[24];
        snprintf(due, sizeof(due), "%llu", (unsigned long long)fm_wall_ms() + delay);
        const char *zadd[] = {"ZADD", FM_QUEUE_DELAYED, due, job->job_id};
        redisReply *reply = fm_worker_cmd(w, 4, zadd);
        int ok = reply != NULL && reply->type == REDIS_REPLY_INTEGER;
        freeReplyObject(reply);
        if (!ok) { /* RETRY in PostgreSQL but not scheduled: keep the entry, it is reclaimed and run again */
            PQclear(res);
            return FM_OUTCOME_LEFT;
        }
        char labels[96];
        snprintf(labels, sizeof(labels), "cause=\"%s\",step=\"%s\"", transient ? "dependency" : "content", step);
        fm_metrics_counter_add("fm_worker_retries_total", labels, 1);
        if (transient)
            LOG(FM_LOG_WARN, c,
                "jobs: %s: dependency error at step %s (%d in a row, no attempt used), retried in %llu ms: %s",
                job->job_id, step, transient_retries, delay, reason);
        else
            LOG(FM_LOG_WARN, c, "jobs: %s attempt %d of %lld failed at step %s, retried in %llu ms: %s", job->job_id,
                attempts, (long long)w->cfg->job_max_attempts, step, delay, reason);
        outcome = transient ? FM_OUTCOME_DEFERRED : FM_OUTCOME_RETRY;
    } else {
        if (!transient && attempts > w->cfg->job_max_attempts) /* the attempt of a worker lost on every one */
            attempts = (int)w->cfg->job_max_attempts;
        char attempts_text[16], transient_text[16];
        snprintf(attempts_text, sizeof(attempts_text), "%d", attempts);
        snprintf(transient_text, sizeof(transient_text), "%d", transient_retries);
        const char *xadd[] = {"XADD",      FM_QUEUE_DEAD,
                              "MAXLEN",    "~",
                              "100000",    "*",
                              "job_id",    job->job_id,
                              "type",      PQgetvalue(res, 0, 2),
                              "file_id",   PQgetvalue(res, 0, 3),
                              "upload_id", PQgetvalue(res, 0, 4),
                              "error",     final_reason,
                              "attempts",  attempts_text,
                              "transient", transient_text};
        redisReply *reply = fm_worker_cmd(w, 20, xadd);
        if (reply == NULL || reply->type != REDIS_REPLY_STRING) /* FAILED in PostgreSQL, which is what admins list */
            LOG(FM_LOG_WARN, c, "jobs: %s not added to %s", job->job_id, FM_QUEUE_DEAD);
        freeReplyObject(reply);
        drop_orphan_variants(w, c);
        fm_metrics_counter_add("fm_worker_dead_letters_total", NULL, 1);
        notify_owner(w, owner, job, "FAILED", final_reason);
        LOG(FM_LOG_ERROR, c, "jobs: %s FAILED at step %s after %d attempts and %d dependency errors in a row: %s",
            job->job_id, step, attempts, transient_retries, final_reason);
        outcome = FM_OUTCOME_FAILED;
    }
    PQclear(res);
    forget_cached_rows(w, job);
    return outcome;
}

/* ---- one job --------------------------------------------------------------------------------------------------------
 */

/* ---- the housekeeping jobs: one runner, driven by a table ----------------------------------------------------------
 *
 * A cleanup_blob (cleanup.h), purge_edge (purge.h) or rekey_blob (rekey.h) job takes the same lock, attempts, retries
 * and dead letters as an upload's job, and runs one function of its module instead of the steps. Its failures are a
 * dependency's (S3 refusing a delete or a copy, an edge that is down, slow or misconfigured: retried with backoff, no
 * attempt used), except an edge that refuses the request itself (FM_PURGE_FAIL), which would refuse it again: that
 * counts. PostgreSQL going away is waited for, then the run (one transaction, rolled back) starts again at once.
 */

/* What a runner's answer means here: left (PostgreSQL failed: nothing committed, the entry stays pending; also any
 * answer the table does not list), done with an outcome, or a failed attempt (a dependency's, or the content's). */
typedef enum { RUN_LEFT = 0, RUN_DONE, RUN_RETRY, RUN_FAIL } run_rc;
typedef struct {
    run_rc rc;
    fm_outcome_t outcome; /* of RUN_DONE */
} run_result_t;

typedef struct {
    const char *type; /* jobs.type */
    const char *step; /* the step label of its metrics and failures, and its logs' prefix */
    int (*run)(fm_worker_t *w, const char *job_id, char *reason, size_t reason_size); /* the module's rc */
    const run_result_t *results; /* indexed by the module's rc */
    size_t nresults;
    size_t reason_size;      /* the reason buffer its module has always had */
    const char *lost_reason; /* why a job whose worker died on every attempt FAILED; NULL: not checked (a rekey's
                              * attempts count as they always did) */
} runner_t;

static int run_cleanup(fm_worker_t *w, const char *job_id, char *reason, size_t reason_size)
{
    return (int)fm_cleanup_blob(w, job_id, reason, reason_size);
}

static int run_purge(fm_worker_t *w, const char *job_id, char *reason, size_t reason_size)
{
    return (int)fm_purge_job(w, job_id, reason, reason_size);
}

static int run_rekey(fm_worker_t *w, const char *job_id, char *reason, size_t reason_size)
{
    return (int)fm_rekey_blob(w, job_id, reason, reason_size);
}

static const run_result_t CLEANUP_RESULTS[] = {
    [FM_CLEANUP_DELETED] = {RUN_DONE, FM_OUTCOME_DELETED}, [FM_CLEANUP_KEPT] = {RUN_DONE, FM_OUTCOME_KEPT},
    [FM_CLEANUP_GONE] = {RUN_DONE, FM_OUTCOME_SKIPPED},    [FM_CLEANUP_RETRY] = {RUN_RETRY, FM_OUTCOME_LEFT},
    [FM_CLEANUP_LEFT] = {RUN_LEFT, FM_OUTCOME_LEFT}};
static const run_result_t PURGE_RESULTS[] = {
    [FM_PURGE_DONE] = {RUN_DONE, FM_OUTCOME_PURGED},   [FM_PURGE_NO_EDGES] = {RUN_DONE, FM_OUTCOME_SKIPPED},
    [FM_PURGE_RETRY] = {RUN_RETRY, FM_OUTCOME_LEFT},  [FM_PURGE_LEFT] = {RUN_LEFT, FM_OUTCOME_LEFT},
    [FM_PURGE_FAIL] = {RUN_FAIL, FM_OUTCOME_LEFT}};
static const run_result_t REKEY_RESULTS[] = {
    [FM_REKEY_MOVED] = {RUN_DONE, FM_OUTCOME_MOVED}, [FM_REKEY_REPLACED] = {RUN_DONE, FM_OUTCOME_QUARANTINED},
    [FM_REKEY_GONE] = {RUN_DONE, FM_OUTCOME_SKIPPED}, [FM_REKEY_RETRY] = {RUN_RETRY, FM_OUTCOME_LEFT},
    [FM_REKEY_LEFT] = {RUN_LEFT, FM_OUTCOME_LEFT}};

#define RESULTS(a) a, sizeof(a) / sizeof(a[0])
static const runner_t RUNNERS[] = {
    {"cleanup_blob", "cleanup", run_cleanup, RESULTS(CLEANUP_RESULTS), 256,
     "the worker stopped while cleaning this blob, on every attempt"},
    {"purge_edge", "purge", run_purge, RESULTS(PURGE_RESULTS), 256,
     "the worker stopped while purging the edges, on every attempt"},
    {"rekey_blob", "rekey", run_rekey, RESULTS(REKEY_RESULTS), 512, NULL},
};

static const runner_t *runner_of(const char *type)
{
    for (size_t i = 0; i < sizeof(RUNNERS) / sizeof(RUNNERS[0]); i++)
        if (strcmp(RUNNERS[i].type, type) == 0)
            return &RUNNERS[i];
    return NULL;
}

static fm_outcome_t job_run_housekeeping(fm_worker_t *w, job_ctx_t *c, const runner_t *r)
{
    int was_running = strcmp(c->status, "RUNNING") == 0;
    int started = job_start(w, c);
    if (started != 0)
        return started < 0 ? FM_OUTCOME_LEFT : FM_OUTCOME_SKIPPED;
    c->failed_step = r->step;
    if (r->lost_reason != NULL && was_running && c->attempts > w->cfg->job_max_attempts) {
        c->attempts = (int)w->cfg->job_max_attempts;
        c->content_fault = 1;
        return outcome_failed(w, c, r->lost_reason);
    }
    char reason[512] = "";
    run_result_t res;
    uint64_t started_ms = fm_mono_ms();
    for (;;) {
        int rc = r->run(w, c->job.job_id, reason, r->reason_size);
        res = rc >= 0 && (size_t)rc < r->nresults ? r->results[rc] : (run_result_t){RUN_LEFT, FM_OUTCOME_LEFT};
        if (res.rc != RUN_LEFT || !w->pg_unavailable || wait_for_postgresql(w, c) != 0)
            break;
    }
    observe_step(r->step, started_ms);
    switch (res.rc) {
    case RUN_DONE:
        return res.outcome;
    case RUN_FAIL:
        c->content_fault = 1;
        /* fall through */
    case RUN_RETRY:
        LOG(FM_LOG_WARN, c, "%s: job %s: %s", r->step, c->job.job_id, reason);
        return outcome_failed(w, c, reason);
    case RUN_LEFT:
    default:
        return FM_OUTCOME_LEFT;
    }
}

static fm_outcome_t job_run(fm_worker_t *w, job_ctx_t *c)
{
    int loaded = job_load(w, c);
    if (loaded < 0)
        return FM_OUTCOME_LEFT;
    if (loaded > 0) {
        LOG(FM_LOG_WARN, c, "jobs: no job %s in PostgreSQL; entry dropped", c->entry->job_id);
        return FM_OUTCOME_SKIPPED;
    }
    if (strcmp(c->status, "DONE") == 0 || strcmp(c->status, "FAILED") == 0 || strcmp(c->status, "DEAD") == 0)
        return FM_OUTCOME_SKIPPED; /* a duplicate delivery, or an entry whose acknowledgement was lost */
    const runner_t *runner = runner_of(c->type);
    if (runner != NULL)
        return job_run_housekeeping(w, c, runner);
    if (strcmp(c->type, "process_upload") != 0) {
        LOG(FM_LOG_WARN, c, "jobs: %s has type %s, which this worker does not run; left QUEUED", c->entry->job_id,
            c->type);
        return FM_OUTCOME_SKIPPED;
    }
    if (!c->have_file || c->job.upload_id[0] == '\0' || c->job.object_key[0] == '\0') {
        job_close_gone(w, c);
        return FM_OUTCOME_SKIPPED;
    }
    int was_running = strcmp(c->status, "RUNNING") == 0;
    int started = job_start(w, c);
    if (started != 0)
        return started < 0 ? FM_OUTCOME_LEFT : FM_OUTCOME_SKIPPED;
    forget_cached_rows(w, &c->job);
    if (was_running && c->attempts > w->cfg->job_max_attempts) {
        /* every earlier attempt died with its worker (kill, crash, OOM): this content is not tried again. A worker
         * that stops (SIGTERM) or loses PostgreSQL records its attempt as a dependency's and never gets here. */
        c->attempts = (int)w->cfg->job_max_attempts;
        c->content_fault = 1;
        return outcome_failed(w, c, "the worker stopped while processing this file, on every attempt");
    }
    fm_step_rc rc;
    if (job_steps(w, c, &rc) != 0) {
        /* The graceful delay of a stop is over: the job stops between steps. Not the content's doing: recorded as a
         * dependency's failed attempt, due again in a moment for another worker. */
        LOG(FM_LOG_WARN, c, "jobs: %s stopped at shutdown; another worker takes it again", c->job.job_id);
        c->failed_step = "shutdown";
        return outcome_failed(w, c, "the worker stopped (shutdown) before the job was finished");
    }
    switch (rc) {
    case FM_STEP_OK:
        return settle(w, c, outcome_ready);
    case FM_STEP_QUARANTINE:
        return settle(w, c, outcome_quarantine);
    case FM_STEP_FAIL:
        c->content_fault = 1;
        /* fall through */
    case FM_STEP_RETRY:
    default:
        return outcome_failed(w, c, c->job.reason[0] ? c->job.reason : "processing failed");
    }
}

fm_outcome_t fm_worker_process(fm_worker_t *w, const fm_entry_t *entry)
{
    job_ctx_t c = {.entry = entry};
    snprintf(c.type, sizeof(c.type), "unknown");
    fm_outcome_t outcome;
    switch (job_lock(w, &c)) {
    case LOCK_BUSY:
        /* A fresh entry while another consumer holds the job is a duplicate delivery; a reclaimed one may be the
         * very entry of a worker that died with the lock still alive: it waits for the lock to expire. */
        if (entry->reclaimed)
            return FM_OUTCOME_LEFT;
        outcome = entry_ack(w, entry) == 0 ? FM_OUTCOME_SKIPPED : FM_OUTCOME_LEFT;
        fm_metrics_counter_add("fm_worker_jobs_total", "type=\"process_upload\",outcome=\"skipped\"", 1);
        return outcome;
    case LOCK_ERROR:
        return FM_OUTCOME_LEFT;
    case LOCK_TAKEN:
        break;
    }
    set_inflight(w, entry);
    outcome = job_run(w, &c);
    if (outcome == FM_OUTCOME_FAILED) /* the client's object stays for an admin retry, which stages it again */
        delete_quietly(w, &c, c.job.staging_key);
    fm_job_clear(&c.job);
    if (outcome != FM_OUTCOME_LEFT && entry_ack(w, entry) != 0)
        LOG(FM_LOG_WARN, &c, "jobs: entry %s of %s not acknowledged; it comes back and is skipped", entry->id,
            entry->job_id);
    set_inflight(w, NULL); /* before the release: the heartbeat may take an expired lock back while the job is ours */
    job_unlock(w, &c);
    if (outcome != FM_OUTCOME_LEFT) {
        char labels[96];
        snprintf(labels, sizeof(labels), "type=\"%s\",outcome=\"%s\"",
                 strcmp(c.type, "unknown") == 0 ? "process_upload" : c.type, fm_outcome_name(outcome));
        fm_metrics_counter_add("fm_worker_jobs_total", labels, 1);
    }
    return outcome;
}
