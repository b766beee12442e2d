/*
 * The reconciler (DESIGN.md §4: "missing the event never loses an upload"). Every FM_RECONCILE_INTERVAL_S, on one
 * event-loop thread of one instance (a Redis lock with that TTL), it:
 *   1. puts on the stream the jobs whose XADD failed (enqueued_at NULL), and makes sure the consumer group exists;
 *   2. HEADs the objects of single-PUT uploads still PENDING a while after they started (the client neither called
 *      `complete` nor was the event delivered): an object of the right size makes the upload UPLOADED and its job;
 *      each upload is looked at again only every 10 intervals;
 *   3. expires uploads older than FM_UPLOAD_EXPIRY_S: the multipart upload is aborted on S3, a stray object deleted,
 *      upload EXPIRED and file FAILED;
 *   4. sweeps the objects of ABORTED and FAILED uploads (a PUT may land after an abort while its URL lives; a size
 *      mismatch found by an event leaves the object), every 10 intervals while their URLs could still be used;
 *   5. deletes the rows of files trashed (file_delete.c) longer than FM_TRASH_RETENTION_S, except while an upload
 *      of theirs still needs steps 3 or 4, and puts on the stream a cleanup_blob job for each blob left without any
 *      file (schema/006_trash.sql fm_trash_purge; the worker deletes the object, its variants and the edges' copies);
 *   6. sweeps objects under incoming/ that no upload record names (orphans.c): Redis lost upload records the flusher
 *      had not written yet, and clients PUT with the URLs they held (issue 3);
 * Each step handles at most BATCH rows per round, so one round stays short whatever the backlog.
 * Besides, at start and with each round, it rebuilds what fm-edge reads from Redis (edge_index.c: the set fm:public and
 * the revocation marks) from PostgreSQL when Redis lost them.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "reconcile_internal.h"

static void step_start(reconcile_t *rc);
static void next_row(reconcile_t *rc);
static void expire_work(void *data);
static void on_swept(void *data);

void fm_reconcile_round_end(reconcile_t *rc)
{
    rc->running = 0;
}

void fm_reconcile_ignore_reply(redisReply *reply, const char *errstr, void *data) {}

/* The cached row of GET /v1/files/{id} (files.c) is stale once the reconciler changed the file. */
static void forget_file(reconcile_t *rc, const char *file_id)
{
    if (file_id[0] != '\0')
        fm_redis_command(ct(rc)->redis, fm_reconcile_ignore_reply, NULL, "DEL fm:file:{%s}", file_id);
}

void fm_reconcile_step_next(reconcile_t *rc)
{
    if (rc->step == STEP_ORPHANS) {
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

/* ---- 2. probing pending single PUTs --------------------------------------------------------------------------- */

static void on_probe_marked(PGresult *res, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    row_t *row = &rc->rows[rc->next_row - 1];
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        fm_warn("reconcile: marking %s failed: %s", row->id, res ? PQresultErrorMessage(res) : errstr);
        next_row(rc);
        return;
    }
    const char *outcome = PQgetvalue(res, 0, 0);
    fm_info("reconcile: upload %s: %s (its object was found without complete or event)", row->id, outcome);
    forget_file(rc, PQgetvalue(res, 0, 2));
    if (strcmp(outcome, "size_mismatch") == 0) { /* FAILED now: the object goes at once */
        if (fm_offload_run(rc->thread->offload, expire_work, on_swept, rc) == 0)
            rc->offload_pending = 1;
        else
            next_row(rc);
        return;
    }
    if (strcmp(outcome, "uploaded") == 0) {
        /* the job row exists; reuse step 1's path for the stream entry */
        memcpy(row->s3_upload_id, row->id, sizeof(row->id)); /* the upload id moves over; id becomes the job id */
        snprintf(row->id, sizeof(row->id), "%s", PQgetvalue(res, 0, 1));
        snprintf(row->key, sizeof(row->key), "%s", PQgetvalue(res, 0, 2));
        snprintf(row->method, sizeof(row->method), "process_upload");
        enqueue_row(rc, row);
        return;
    }
    next_row(rc);
}

static void probe_work(void *data)
{
    reconcile_t *rc = data;
    row_t *row = &rc->rows[rc->next_row - 1];
    fm_s3_t *s3 = fm_offload_s3();
    fm_s3_result_t res;
    row->found = s3 != NULL && fm_s3_head_object(s3, row->key, &res) == 0;
    if (row->found) {
        row->found_size = res.content_length;
        size_t len = strlen(res.etag);
        if (len >= 2 && res.etag[0] == '"')
            snprintf(row->etag, sizeof(row->etag), "%.*s", (int)(len - 2), res.etag + 1);
        else
            snprintf(row->etag, sizeof(row->etag), "%s", res.etag);
    }
}

static void on_probed(void *data)
{
    reconcile_t *rc = data;
    rc->offload_pending = 0;
    row_t *row = &rc->rows[rc->next_row - 1];
    if (!row->found) {
        next_row(rc);
        return;
    }
    char size[24];
    snprintf(size, sizeof(size), "%lld", row->found_size);
    const char *params[] = {row->id, size, row->etag, fm_control->config.s3_bucket};
    fm_pg_query(ct(rc)->pg, on_probe_marked, rc,
                "SELECT outcome, coalesce(job_id::text, ''), coalesce(file_id::text, '') "
                "FROM fm_upload_mark_uploaded($1::uuid, $2::bigint, $3, 'reconciler', $4)",
                4, params);
}

/* ---- 3. expiring abandoned uploads ---------------------------------------------------------------------------- */

static void expire_work(void *data)
{
    reconcile_t *rc = data;
    row_t *row = &rc->rows[rc->next_row - 1];
    fm_s3_t *s3 = fm_offload_s3();
    fm_s3_result_t res;
    if (s3 == NULL) {
        row->done_ok = 0;
        return;
    }
    row->done_ok = 1;
    if (strcmp(row->method, "MULTIPART") == 0 && row->s3_upload_id[0] != '\0' &&
        fm_s3_abort_multipart(s3, row->key, row->s3_upload_id, &res) != 0 && strcmp(res.code, "NoSuchUpload") != 0)
        row->done_ok = 0;
    if (fm_s3_delete_object(s3, row->key, &res) != 0 && res.status != 404)
        row->done_ok = 0;
}

static void on_expired_recorded(PGresult *res, const char *errstr, void *data)
{
    reconcile_t *rc = data;
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        forget_file(rc, PQgetvalue(res, 0, 0));
    next_row(rc);
}

static void on_swept(void *data)
{
    reconcile_t *rc = data;
    rc->offload_pending = 0;
    row_t *row = &rc->rows[rc->next_row - 1];
    if (!row->done_ok)
        fm_warn("reconcile: could not clean %s on S3; retried later", row->key);
    next_row(rc);
}

static void on_expired(void *data)
{
    reconcile_t *rc = data;
    rc->offload_pending = 0;
    row_t *row = &rc->rows[rc->next_row - 1];
    if (!row->done_ok) {
        fm_warn("reconcile: could not clean %s on S3; retried next round", row->key);
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
        forget_file(rc, rc->rows[rc->next_row++].key);
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
    case STEP_PROBE:
        queued = fm_offload_run(rc->thread->offload, probe_work, on_probed, rc) == 0;
        break;
    case STEP_EXPIRE:
        queued = fm_offload_run(rc->thread->offload, expire_work, on_expired, rc) == 0;
        break;
    case STEP_SWEEP:
        queued = fm_offload_run(rc->thread->offload, expire_work, on_swept, rc) == 0;
        break;
    case STEP_ORPHANS: /* works on its own page (orphans_t), not on rows */
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
    char interval[24], recheck[24], expiry[24];
    snprintf(interval, sizeof(interval), "%lld", (long long)cfg->reconcile_interval_s);
    snprintf(recheck, sizeof(recheck), "%lld", (long long)cfg->reconcile_interval_s * 10);
    snprintf(expiry, sizeof(expiry), "%lld", (long long)cfg->upload_expiry_s);
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
    case STEP_PROBE: {
        const char *params[] = {interval, recheck, expiry};
        fm_pg_query(ct(rc)->pg, on_rows, rc,
                    "UPDATE uploads SET checked_at = now() WHERE id IN ("
                    "  SELECT id FROM uploads WHERE status = 'PENDING' AND method = 'PUT'"
                    "  AND created_at < now() - make_interval(secs => $1::integer)"
                    "  AND created_at > now() - make_interval(secs => $3::integer)"
                    "  AND (checked_at IS NULL OR checked_at < now() - make_interval(secs => $2::integer))"
                    /* never-looked-at uploads first: a backlog of rechecks must not delay a fresh one */
                    "  ORDER BY checked_at NULLS FIRST, created_at LIMIT 50 FOR UPDATE SKIP LOCKED) "
                    "RETURNING id, object_key, method, '', size",
                    3, params);
        break;
    }
    case STEP_SWEEP: {
        /* Aborted and failed (size mismatch) uploads: their object may land or stay after the fact, as long as the
         * presigned URL lives; delete it (and abort the multipart upload) now and then within that window. */
        char window[24];
        snprintf(window, sizeof(window), "%lld",
                 (long long)cfg->upload_url_ttl_s + (long long)cfg->reconcile_interval_s * 20);
        const char *params[] = {window, recheck};
        fm_pg_query(ct(rc)->pg, on_rows, rc,
                    "UPDATE uploads SET checked_at = now() WHERE id IN ("
                    "  SELECT id FROM uploads WHERE status IN ('ABORTED', 'FAILED')"
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
    case STEP_ORPHANS:
        fm_orphans_start(rc);
        break;
    case STEP_EXPIRE: {
        const char *params[] = {expiry};
        fm_pg_query(ct(rc)->pg, on_rows, rc,
                    "SELECT id, object_key, method, coalesce(s3_upload_id, ''), size FROM uploads "
                    "WHERE status = 'PENDING' AND created_at < now() - make_interval(secs => $1::integer) "
                    "ORDER BY created_at LIMIT 50",
                    1, params);
        break;
    }
    }
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
    char ttl[24], owner[32];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)fm_control->config.reconcile_interval_s);
    snprintf(owner, sizeof(owner), "%ld", (long)getpid());
    const char *argv[] = {"SET", "fm:lock:reconcile", owner, "NX", "EX", ttl};
    fm_redis_commandargv(ct(rc)->redis, on_lock, rc, 6, argv, NULL);
}

reconcile_t *fm_reconcile_start(fm_thread_t *thread)
{
    reconcile_t *rc = calloc(1, sizeof(*rc));
    if (rc == NULL)
        return NULL;
    rc->thread = thread;
    if ((rc->orphans = fm_orphans_new(rc)) == NULL) {
        free(rc);
        return NULL;
    }
    fm_metrics_describe("fm_reconcile_orphans_deleted_total", FM_METRIC_COUNTER,
                        "Objects under incoming/ deleted because no upload record, in Redis or PostgreSQL, names them");
    fm_metrics_describe("fm_reconcile_orphan_keys_listed_total", FM_METRIC_COUNTER,
                        "Keys under incoming/ looked at by the orphan sweep");
    h2o_timeout_init(thread->ctx.loop, &rc->interval, (uint64_t)fm_control->config.reconcile_interval_s * 1000);
    rc->entry.cb = on_tick;
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
        free(rc->orphans);
        free(rc);
    }
}
