/*
 * The reconciler (DESIGN.md §4: "missing the event never loses an upload"; §6 rule 3: no object a client PUT with
 * our URL is ever lost). Every FM_RECONCILE_INTERVAL_S, on one event-loop thread of one instance (a Redis lock that
 * lives a little less than that), it:
 *   1. puts on the stream the jobs whose XADD failed (enqueued_at NULL), and makes sure the consumer group exists;
 *   2. goes over what exists under incoming/ (incoming.c): lists it in pages of 1,000 keys from a cursor kept in
 *      Redis and matches the keys to uploads. An object whose upload is still PENDING (neither `complete` nor the
 *      event came) is HEADed and makes the upload UPLOADED with its job; one whose upload is finished is deleted; one
 *      no record names is an orphan, deleted once old. Its cost follows the objects that exist, never the presigns
 *      handed out;
 *   3. expires abandoned uploads: single PUTs in one UPDATE, without an S3 call each, once their URL ran out before
 *      the start of a listing of step 2 that went through every key (any object PUT with it would have been seen);
 *      multipart uploads one by one, as their S3 upload must be aborted;
 *   4. aborts, now and then while their URLs could still be used, the S3 multipart uploads of ABORTED uploads (the
 *      abort route's S3 call may have failed);
 *   5. deletes the rows of files trashed (file_delete.c) longer than FM_TRASH_RETENTION_S, except while an upload
 *      of theirs still needs steps 3 or 4, and puts on the stream a cleanup_blob job for each blob left without any
 *      file (schema/006_trash.sql fm_trash_purge; the worker deletes the object, its variants and the edges' copies),
 *      then the trashed folders past it that hold nothing any more (schema/016_trash_delta.sql).
 * Besides, each round deletes at most DELTA_PRUNE_BATCH changes older than FM_DELTA_RETENTION_S from the log of
 * GET /v1/files/delta (delta.c; schema 016 fm_tree_changes_prune), and recounts the quota figures of a slice of
 * the owners (quota.c fm_quota_recount_round), alongside the steps.
 * Each step's work per round is bounded (BATCH rows; step 2: 10 pages; step 3: 5 x 2,000 rows), so one round stays
 * short whatever the backlog. Besides, at start and with each round, it rebuilds what fm-edge reads from Redis
 * (edge_index.c: the set fm:public and the revocation marks) from PostgreSQL when Redis lost them.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "quota.h"
#include "reconcile_internal.h"

#define EXPIRE_BATCH 2000   /* single-PUT uploads expired per statement: short, well within FM_PG_TIMEOUT_MS */
#define EXPIRE_STATEMENTS 5 /* statements per round at most: 10,000 uploads a round */

static void step_start(reconcile_t *rc);
static void next_row(reconcile_t *rc);
static void expire_multipart(reconcile_t *rc);

void fm_reconcile_round_end(reconcile_t *rc)
{
    rc->running = 0;
}

void fm_reconcile_ignore_reply(redisReply *reply, const char *errstr, void *data) {}

void fm_reconcile_forget_file(reconcile_t *rc, const char *file_id)
{
    if (file_id[0] == '\0')
        return;
    fm_redis_command(ct(rc)->redis, fm_reconcile_ignore_reply, NULL, "DEL fm:file:{%s}", file_id);
    fm_tree_file_changed(ct(rc), file_id); /* its owner's listings show its status */
}

void fm_reconcile_step_next(reconcile_t *rc)
{
    if (rc->step == STEP_TRASH) {
        fm_metrics_counter_add("fm_reconcile_rounds_total", NULL, 1); /* every step ran: what "a round later" means */
        fm_reconcile_round_end(rc);
        return;
    }
    rc->step++;
    step_start(rc);
}

/* ---- 1. jobs not on the stream -------------------------------------------------------------------------------- */

static void on_job_recorded(PGresult *res, const char *errstr, void *data)
{
    next_row(data);
}

static void on_job_xadd(redisReply *reply, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    row_t *row = &rc->rows[rc->next_row - 1];
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        fm_warn("reconcile: XADD of job %s failed: %s", row->id, reply ? reply->str : errstr);
        fm_reconcile_round_end(rc); /* Redis is not taking them: the next round tries again */
        return;
    }
    const char *params[] = {row->id};
    fm_pg_query(ct(rc)->pg, on_job_recorded, rc, "UPDATE jobs SET enqueued_at = now() WHERE id = $1::uuid", 1, params);
}

static void enqueue_row(reconcile_t *rc, row_t *row)
{
    /* rows of step 1: id = job id, key = file id, s3_upload_id = upload id, method = type */
    const char *argv[] = {"XADD",      FM_JOBS_STREAM,    "MAXLEN",     "~",         "1000000", "*",
                          "job_id",    row->id,           "type",       row->method, "file_id", row->key,
                          "upload_id", row->s3_upload_id, "request_id", "reconciler"};
    fm_redis_commandargv(ct(rc)->redis, on_job_xadd, rc, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL);
}

/* ---- 3. expiring abandoned uploads ---------------------------------------------------------------------------- */

static void expire_single_puts(reconcile_t *rc);

static void on_single_puts_expired(PGresult *res, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    int more = 0;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fm_warn("reconcile: expiring abandoned uploads failed: %s", res ? PQresultErrorMessage(res) : errstr);
    } else if (PQntuples(res) > 0) {
        for (int i = 0; i < PQntuples(res); ++i)
            fm_reconcile_forget_file(rc, PQgetvalue(res, i, 0));
        fm_info("reconcile: %d abandoned single-PUT upload(s) expired (no object under incoming/ since their URL ran "
                "out)",
                PQntuples(res));
        more = PQntuples(res) == EXPIRE_BATCH && ++rc->expire_statements < EXPIRE_STATEMENTS;
    }
    if (rc->thread->shutting_down) {
        fm_reconcile_round_end(rc);
        return;
    }
    if (more)
        expire_single_puts(rc);
    else
        expire_multipart(rc);
}

/* Single PUTs: UPDATEs of EXPIRE_BATCH rows (schema/009_reconcile.sql fm_uploads_expire), only once step 2 has been
 * through every key since their URL ran out; multipart uploads after them, one by one. */
static void expire_start(reconcile_t *rc)
{
    rc->expire_statements = 0;
    if (rc->covered <= 0) {
        expire_multipart(rc);
        return;
    }
    expire_single_puts(rc);
}

static void expire_single_puts(reconcile_t *rc)
{
    char expiry[24], covered[24], limit[16];
    snprintf(expiry, sizeof(expiry), "%lld", (long long)fm_control->config.upload_expiry_s);
    snprintf(covered, sizeof(covered), "%lld", rc->covered);
    snprintf(limit, sizeof(limit), "%d", EXPIRE_BATCH);
    const char *params[] = {expiry, covered, limit};
    fm_pg_query(ct(rc)->pg, on_single_puts_expired, rc,
                "SELECT coalesce(out_file::text, '') FROM fm_uploads_expire($1::integer, to_timestamp($2::bigint), "
                "$3::integer)",
                3, params);
}

/* A multipart upload's S3 upload is aborted before it is recorded EXPIRED. If S3 no longer knows it, it may have been
 * completed (by a `complete` whose mark failed): an object there is an upload to keep, which step 2 marks. */
static void expire_work(void *data)
{
    reconcile_t *rc = data;
    row_t *row = &rc->rows[rc->next_row - 1];
    fm_s3_t *s3 = fm_offload_s3();
    fm_s3_result_t res;
    row->done_ok = row->kept = 0;
    if (s3 == NULL)
        return;
    if (row->s3_upload_id[0] != '\0' && fm_s3_abort_multipart(s3, row->key, row->s3_upload_id, &res) != 0) {
        if (strcmp(res.code, "NoSuchUpload") != 0)
            return;
        if (fm_s3_head_object(s3, row->key, &res) == 0) {
            row->kept = 1;
            return;
        }
        if (res.status != 404)
            return;
    }
    row->done_ok = 1;
}

static void on_expired_recorded(PGresult *res, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        fm_reconcile_forget_file(rc, PQgetvalue(res, 0, 0));
    next_row(rc);
}

static void on_expired(void *data)
{
    reconcile_t *rc = data;
    rc->offload_pending = 0;
    row_t *row = &rc->rows[rc->next_row - 1];
    if (row->kept) {
        fm_warn("reconcile: multipart upload %s is complete on S3 but still PENDING: kept for step 2", row->id);
        next_row(rc);
        return;
    }
    if (!row->done_ok) {
        fm_warn("reconcile: could not abort the multipart upload of %s; retried next round", row->key);
        next_row(rc);
        return;
    }
    const char *params[] = {row->id};
    fm_pg_query(ct(rc)->pg, on_expired_recorded, rc,
                "WITH u AS (UPDATE uploads SET status = 'EXPIRED', status_reason = 'abandoned'"
                "           WHERE id = $1::uuid AND status = 'PENDING' RETURNING file_id) "
                "UPDATE files SET status = 'FAILED', status_reason = 'upload expired', updated_at = now(),"
                "                 version = version + 1 WHERE id IN (SELECT file_id FROM u) RETURNING id",
                1, params);
}

/* ---- 4. the S3 multipart uploads of aborted uploads ------------------------------------------------------------ */

static void sweep_work(void *data)
{
    reconcile_t *rc = data;
    row_t *row = &rc->rows[rc->next_row - 1];
    fm_s3_t *s3 = fm_offload_s3();
    fm_s3_result_t res;
    row->done_ok = s3 != NULL &&
                   (row->s3_upload_id[0] == '\0' || fm_s3_abort_multipart(s3, row->key, row->s3_upload_id, &res) == 0 ||
                    strcmp(res.code, "NoSuchUpload") == 0);
}

static void on_swept(void *data)
{
    reconcile_t *rc = data;
    rc->offload_pending = 0;
    row_t *row = &rc->rows[rc->next_row - 1];
    if (!row->done_ok)
        fm_warn("reconcile: could not abort the multipart upload of %s on S3; retried later", row->key);
    next_row(rc);
}

/* ---- 5. files past their time in the trash -------------------------------------------------------------------- */

/* Rows of step 5: a deleted file (id "", key = file id) or a cleanup_blob job to put on the stream (id = job id, key
 * ""). Passes over the file rows up to the next job row; the first call of a round tells what was deleted. */
static void trash_rows_skip(reconcile_t *rc)
{
    if (rc->next_row == 0 && rc->row_count > 0) {
        int files = 0;
        for (int i = 0; i < rc->row_count; ++i)
            files += rc->rows[i].id[0] == '\0';
        fm_info("reconcile: %d file(s) trashed longer than FM_TRASH_RETENTION_S deleted; %d cleanup job(s) for "
                "their blobs",
                files, rc->row_count - files);
    }
    while (rc->next_row < rc->row_count && rc->rows[rc->next_row].id[0] == '\0')
        fm_reconcile_forget_file(rc, rc->rows[rc->next_row++].key);
}

/* ---- the round ------------------------------------------------------------------------------------------------ */

static void next_row(reconcile_t *rc)
{
    if (rc->thread->shutting_down) { /* the pools are going away: no new calls */
        fm_reconcile_round_end(rc);
        return;
    }
    if (rc->step == STEP_TRASH)
        trash_rows_skip(rc);
    if (rc->next_row >= rc->row_count) {
        fm_reconcile_step_next(rc);
        return;
    }
    row_t *row = &rc->rows[rc->next_row++];
    int queued = 0;
    switch (rc->step) {
    case STEP_JOBS:
    case STEP_TRASH:
        enqueue_row(rc, row);
        return;
    case STEP_EXPIRE:
        queued = fm_offload_run(rc->thread->offload, expire_work, on_expired, rc) == 0;
        break;
    case STEP_SWEEP:
        queued = fm_offload_run(rc->thread->offload, sweep_work, on_swept, rc) == 0;
        break;
    case STEP_INCOMING: /* works on its own pages (incoming.c), not on rows */
        break;
    }
    if (queued)
        rc->offload_pending = 1;
    else
        fm_reconcile_round_end(rc);
}

static void on_rows(PGresult *res, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fm_warn("reconcile: query failed: %s", res ? PQresultErrorMessage(res) : errstr);
        fm_reconcile_round_end(rc);
        return;
    }
    rc->row_count = PQntuples(res) > BATCH ? BATCH : PQntuples(res);
    rc->next_row = 0;
    for (int i = 0; i < rc->row_count; ++i) {
        row_t *row = &rc->rows[i];
        memset(row, 0, sizeof(*row));
        snprintf(row->id, sizeof(row->id), "%s", PQgetvalue(res, i, 0));
        snprintf(row->key, sizeof(row->key), "%s", PQgetvalue(res, i, 1));
        snprintf(row->method, sizeof(row->method), "%s", PQgetvalue(res, i, 2));
        snprintf(row->s3_upload_id, sizeof(row->s3_upload_id), "%s", PQgetvalue(res, i, 3));
        row->size = atoll(PQgetvalue(res, i, 4));
    }
    next_row(rc);
}

static void step_start(reconcile_t *rc)
{
    const fm_config_t *cfg = &fm_control->config;
    if (rc->thread->shutting_down) {
        fm_reconcile_round_end(rc);
        return;
    }
    char interval[24], recheck[24];
    snprintf(interval, sizeof(interval), "%lld", (long long)cfg->reconcile_interval_s);
    snprintf(recheck, sizeof(recheck), "%lld", (long long)cfg->reconcile_interval_s * 10);
    switch (rc->step) {
    case STEP_JOBS: {
        const char *params[] = {interval};
        fm_pg_query(ct(rc)->pg, on_rows, rc,
                    "SELECT id, coalesce(file_id::text, ''), type, coalesce(upload_id::text, ''), 0 FROM jobs "
                    "WHERE enqueued_at IS NULL AND status = 'QUEUED' "
                    "AND created_at < now() - make_interval(secs => $1::integer) ORDER BY created_at LIMIT 50",
                    1, params);
        break;
    }
    case STEP_INCOMING:
        fm_incoming_start(rc);
        break;
    case STEP_EXPIRE:
        expire_start(rc);
        break;
    case STEP_SWEEP: {
        /* Aborted multipart uploads: the abort route records first and then aborts on S3; if that call failed, the
         * parts stay until aborted here, now and then while the upload's URLs could still be used. (Objects under
         * incoming/ of finished uploads, single PUTs landing late among them, are step 2's.) */
        char window[24];
        snprintf(window, sizeof(window), "%lld",
                 (long long)cfg->upload_url_ttl_s + (long long)cfg->reconcile_interval_s * 20);
        const char *params[] = {window, recheck};
        fm_pg_query(ct(rc)->pg, on_rows, rc,
                    "UPDATE uploads SET checked_at = now() WHERE id IN ("
                    "  SELECT id FROM uploads WHERE status = 'ABORTED' AND method = 'MULTIPART'"
                    "  AND created_at > now() - make_interval(secs => $1::integer)"
                    "  AND (checked_at IS NULL OR checked_at < now() - make_interval(secs => $2::integer))"
                    "  ORDER BY created_at LIMIT 50 FOR UPDATE SKIP LOCKED) "
                    "RETURNING id, object_key, method, coalesce(s3_upload_id, ''), size",
                    2, params);
        break;
    }
    case STEP_TRASH: {
        /* an upload of the file that may still get an object keeps the row (see STEP_SWEEP's window) */
        char retention[24], window[24], limit[16];
        snprintf(retention, sizeof(retention), "%lld", (long long)cfg->trash_retention_s);
        snprintf(window, sizeof(window), "%lld",
                 (long long)cfg->upload_url_ttl_s + (long long)cfg->reconcile_interval_s * 20);
        snprintf(limit, sizeof(limit), "%d", BATCH / 2); /* a file row and a job row each: BATCH rows at most */
        const char *params[] = {retention, window, limit};
        fm_pg_query(ct(rc)->pg, on_rows, rc,
                    "SELECT coalesce(out_job::text, ''), coalesce(out_file::text, ''), 'cleanup_blob', '', 0 "
                    "FROM fm_trash_purge($1::integer, $2::integer, $3::integer)",
                    3, params);
        break;
    }
    }
}

/* Step 3, after the single PUTs: multipart uploads older than FM_UPLOAD_EXPIRY_S, BATCH a round. */
static void expire_multipart(reconcile_t *rc)
{
    char expiry[24];
    snprintf(expiry, sizeof(expiry), "%lld", (long long)fm_control->config.upload_expiry_s);
    const char *params[] = {expiry};
    fm_pg_query(ct(rc)->pg, on_rows, rc,
                "SELECT id, object_key, method, coalesce(s3_upload_id, ''), size FROM uploads "
                "WHERE status = 'PENDING' AND method = 'MULTIPART' "
                "AND created_at < now() - make_interval(secs => $1::integer) ORDER BY created_at LIMIT 50",
                1, params);
}

/* Change-log rows deleted per round: one indexed DELETE, well under a second. */
#define DELTA_PRUNE_BATCH 50000

static void on_delta_pruned(PGresult *res, const char *errstr, void *data)
{
    (void)data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
        fm_warn("reconcile: pruning the change log failed: %s", res ? PQresultErrorMessage(res) : errstr);
    else if (atoi(PQgetvalue(res, 0, 0)) > 0)
        fm_info("reconcile: %s change(s) older than FM_DELTA_RETENTION_S deleted", PQgetvalue(res, 0, 0));
}

static void prune_delta(reconcile_t *rc)
{
    char retention[24], limit[16];
    snprintf(retention, sizeof(retention), "%lld", (long long)fm_control->config.delta_retention_s);
    snprintf(limit, sizeof(limit), "%d", DELTA_PRUNE_BATCH);
    const char *params[] = {retention, limit};
    fm_pg_query(ct(rc)->pg, on_delta_pruned, NULL, "SELECT fm_tree_changes_prune($1::integer, $2::integer)", 2, params);
}

static void on_lock(redisReply *reply, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    if (reply == NULL || reply->type != REDIS_REPLY_STATUS) { /* nil: another instance has this round */
        fm_reconcile_round_end(rc);
        return;
    }
    fm_jobs_ensure_group(ct(rc)->redis);
    fm_edge_index_check(rc);
    prune_delta(rc);
    fm_quota_recount_round(ct(rc), rc->quota_after);
    rc->step = STEP_JOBS;
    step_start(rc);
}

static void on_tick(h2o_timeout_entry_t *entry)
{
    reconcile_t *rc = H2O_STRUCT_FROM_MEMBER(reconcile_t, entry, entry);
    h2o_timeout_link(rc->thread->ctx.loop, &rc->interval, &rc->entry);
    if (rc->running || rc->thread->shutting_down)
        return;
    rc->running = 1;
    /* The lock lives a little less than an interval: with exactly one, this instance's next tick could come a
     * moment before it expired (the lock is set a round trip after the tick) and lose that round, making the period
     * two intervals. */
    long long interval_ms = (long long)fm_control->config.reconcile_interval_s * 1000;
    long long margin_ms = interval_ms / 10 < 500 ? interval_ms / 10 : 500;
    char ttl[24], owner[32];
    snprintf(ttl, sizeof(ttl), "%lld", interval_ms - margin_ms);
    snprintf(owner, sizeof(owner), "%ld", (long)getpid());
    const char *argv[] = {"SET", "fm:lock:reconcile", owner, "NX", "PX", ttl};
    fm_redis_commandargv(ct(rc)->redis, on_lock, rc, 6, argv, NULL);
}

reconcile_t *fm_reconcile_start(fm_thread_t *thread)
{
    reconcile_t *rc = calloc(1, sizeof(*rc));
    if (rc == NULL)
        return NULL;
    rc->thread = thread;
    if ((rc->incoming = fm_incoming_new(rc)) == NULL) {
        free(rc);
        return NULL;
    }
    h2o_timeout_init(thread->ctx.loop, &rc->interval, (uint64_t)fm_control->config.reconcile_interval_s * 1000);
    rc->entry.cb = on_tick;
    fm_metrics_describe("fm_reconcile_rounds_total", FM_METRIC_COUNTER,
                        "Reconciler rounds this instance ran through every step (a round another instance held is "
                        "not counted)");
    fm_metrics_counter_add("fm_reconcile_rounds_total", NULL, 0);
    h2o_timeout_link(thread->ctx.loop, &rc->interval, &rc->entry);
    fm_jobs_ensure_group(ct(rc)->redis);
    fm_edge_index_check(rc);
    return rc;
}

void fm_reconcile_stop(reconcile_t *rc)
{
    if (rc == NULL)
        return;
    if (h2o_timeout_is_linked(&rc->entry))
        h2o_timeout_unlink(&rc->entry);
    h2o_timeout_dispose(rc->thread->ctx.loop, &rc->interval);
    /* Called after the pools were destroyed (their callbacks have run). An S3 call that outlived the graceful
     * timeout will still call back into rc: then rc is left to the process exit. */
    if (rc->offload_pending)
        fm_warn("reconcile: an S3 call is still running at exit");
    else {
        fm_incoming_free(rc->incoming);
        free(rc);
    }
}
