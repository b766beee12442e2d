/*
 * cleanup: the scan that finds unreferenced blobs and the cleanup_blob job that deletes one (cleanup.h,
 * schema/005_cleanup.sql, docs/workers.md "Cleanup").
 */
#include "cleanup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define SCAN_BATCH "500" /* jobs made per round at most; the next round takes the rest */

/* ---- one cleanup_blob job -----------------------------------------------------------------------------------------
 */

static void rollback(fm_worker_t *w)
{
    if (w->pg != NULL)
        PQclear(PQexec(w->pg, "ROLLBACK"));
}

/* DELETE of one key; a key already gone is fine (S3 answers 204 anyway, some stores 404). 0, or -1 with `reason`. */
static int delete_key(fm_worker_t *w, const char *key, char *reason, size_t reason_size)
{
    fm_s3_result_t res;
    if (fm_s3_delete_object(w->s3, key, &res) == 0 || res.status == 404)
        return 0;
    snprintf(reason, reason_size, "delete of %.200s failed: %s (HTTP %ld)", key, res.code, res.status);
    return -1;
}

/* Every variant key of blobs.variants ({name: {format: {key, …}}}). Only keys under variants/{sha256}/ are taken:
 * variants are content-addressed, so anything else is not this blob's to delete. */
static int delete_variants(fm_worker_t *w, const char *sha256, const char *variants_json, char *reason,
                           size_t reason_size)
{
    cJSON *doc = cJSON_Parse(variants_json);
    char prefix[80];
    snprintf(prefix, sizeof(prefix), "variants/%s/", sha256);
    int rc = 0;
    const cJSON *by_name, *by_format;
    cJSON_ArrayForEach(by_name, doc)
    {
        cJSON_ArrayForEach(by_format, by_name)
        {
            const cJSON *key = cJSON_GetObjectItemCaseSensitive(by_format, "key");
            if (!cJSON_IsString(key) || strncmp(key->valuestring, prefix, strlen(prefix)) != 0) {
                fm_warn("cleanup: blob %s: variant %s/%s has no key of its own; skipped", sha256,
                        by_name->string ? by_name->string : "?", by_format->string ? by_format->string : "?");
                continue;
            }
            if (delete_key(w, key->valuestring, reason, reason_size) != 0) {
                rc = -1;
                goto out;
            }
        }
    }
out:
    cJSON_Delete(doc);
    return rc;
}

/* Marks the job DONE with payload.result = `result` and commits. 0, or -1 (PostgreSQL failed, rolled back). */
static int finish(fm_worker_t *w, const char *job_id, const char *result)
{
    const char *params[] = {job_id, result};
    PGresult *res = fm_worker_sql(w,
                                  "UPDATE jobs SET status = 'DONE', finished_at = now(), last_error = NULL,"
                                  " payload = payload || jsonb_build_object('result', $2::text)"
                                  " WHERE id = $1::uuid AND status = 'RUNNING'",
                                  2, params);
    if (res == NULL) {
        rollback(w);
        return -1;
    }
    PQclear(res);
    if ((res = fm_worker_sql(w, "COMMIT", 0, NULL)) == NULL)
        return -1;
    PQclear(res);
    return 0;
}

fm_cleanup_rc fm_cleanup_blob(fm_worker_t *w, const char *job_id, char *reason, size_t reason_size)
{
    reason[0] = '\0';
    const char *job_param[] = {job_id};
    PGresult *res =
        fm_worker_sql(w, "SELECT coalesce(payload->>'sha256', '') FROM jobs WHERE id = $1::uuid", 1, job_param);
    if (res == NULL)
        return FM_CLEANUP_LEFT;
    char sha256[65] = "";
    if (PQntuples(res) == 1)
        snprintf(sha256, sizeof(sha256), "%.64s", PQgetvalue(res, 0, 0));
    int valid = PQntuples(res) == 1 && strlen(PQgetvalue(res, 0, 0)) == 64 && fm_sha256_hex_valid(sha256);
    PQclear(res);
    if (!valid) { /* made by hand or by another version: nothing this job can name */
        fm_warn("cleanup: job %s has no valid payload.sha256; closed", job_id);
        PQclear(fm_worker_sql(w, "BEGIN", 0, NULL));
        return finish(w, job_id, "invalid") == 0 ? FM_CLEANUP_GONE : FM_CLEANUP_LEFT;
    }

    if ((res = fm_worker_sql(w, "BEGIN", 0, NULL)) == NULL)
        return FM_CLEANUP_LEFT;
    PQclear(res);
    /* The row lock is the point: from here to COMMIT, a file that would start pointing at the blob (its foreign key
     * check takes FOR KEY SHARE) waits, and a worker's blob lookup (process.c) too. The re-check is a statement of its
     * own so that it sees what was committed while we waited for the lock. */
    const char *sha_param[] = {sha256};
    res = fm_worker_sql(w, "SELECT storage_key, variants::text FROM blobs WHERE sha256 = decode($1, 'hex') FOR UPDATE",
                        1, sha_param);
    if (res == NULL) {
        rollback(w);
        return FM_CLEANUP_LEFT;
    }
    if (PQntuples(res) != 1) {
        PQclear(res);
        return finish(w, job_id, "gone") == 0 ? FM_CLEANUP_GONE : FM_CLEANUP_LEFT;
    }
    char *storage_key = strdup(PQgetvalue(res, 0, 0));
    char *variants = strdup(PQgetvalue(res, 0, 1));
    PQclear(res);
    if (storage_key == NULL || variants == NULL)
        abort();
    fm_cleanup_rc rc;

    res = fm_worker_sql(w, "SELECT fm_blob_referenced(decode($1, 'hex'))", 1, sha_param);
    if (res == NULL) {
        rollback(w);
        rc = FM_CLEANUP_LEFT;
        goto out;
    }
    int referenced = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (referenced) { /* an upload deduplicated onto it, or a file was restored: the next scan starts over */
        res = fm_worker_sql(w, "UPDATE blobs SET unreferenced_since = NULL WHERE sha256 = decode($1, 'hex')", 1,
                            sha_param);
        if (res == NULL) {
            rollback(w);
            rc = FM_CLEANUP_LEFT;
            goto out;
        }
        PQclear(res);
        rc = finish(w, job_id, "kept") == 0 ? FM_CLEANUP_KEPT : FM_CLEANUP_LEFT;
        if (rc == FM_CLEANUP_KEPT)
            fm_info("cleanup: blob %s is referenced again; kept", sha256);
        goto out;
    }

    /* The bytes first, the row last: a failure leaves the row (and the job to retry), never an object that nothing
     * names. While the row is still there a reader may be sent to a deleted object; no file names it, so no one is. */
    if (delete_variants(w, sha256, variants, reason, reason_size) != 0 ||
        delete_key(w, storage_key, reason, reason_size) != 0) {
        rollback(w);
        rc = FM_CLEANUP_RETRY;
        goto out;
    }
    /* With the row, in the same transaction, a purge_edge job (purge.h): the edges may still hold the bytes (a signed
     * URL handed out before the last file was deleted can refill them until it expires), and they must drop them
     * once the origin has none. Made here, it cannot be lost between the commit and the purge. */
    const char *purge_params[] = {sha256, storage_key};
    res = fm_worker_sql(w,
                        "WITH gone AS (DELETE FROM blobs WHERE sha256 = decode($1, 'hex') RETURNING sha256) "
                        "SELECT fm_purge_job(sha256, $2, 'cleanup', NULL)::text FROM gone",
                        2, purge_params);
    if (res == NULL) {
        rollback(w);
        rc = FM_CLEANUP_LEFT;
        goto out;
    }
    char purge_job[40] = "";
    if (PQntuples(res) == 1)
        snprintf(purge_job, sizeof(purge_job), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    rc = finish(w, job_id, "deleted") == 0 ? FM_CLEANUP_DELETED : FM_CLEANUP_LEFT;
    if (rc == FM_CLEANUP_DELETED) {
        fm_info("cleanup: blob %s deleted (object %s and its variants); edge purge job %s", sha256, storage_key,
                purge_job[0] ? purge_job : "none");
        if (purge_job[0] != '\0')
            fm_worker_enqueue(w, purge_job, "purge_edge", "cleanup");
    }
out:
    free(storage_key);
    free(variants);
    return rc;
}

/* ---- the scan -----------------------------------------------------------------------------------------------------
 */

int fm_cleanup_scan(fm_worker_t *keeper)
{
    char grace[24];
    snprintf(grace, sizeof(grace), "%lld", (long long)keeper->cfg->blob_grace_s);
    const char *params[] = {grace, SCAN_BATCH};
    int made, added = fm_worker_scan_jobs(keeper, FM_CLEANUP_LOCK,
                                          "SELECT out_job, out_sha256 FROM fm_cleanup_scan($1::integer, $2::integer)",
                                          2, params, "cleanup_blob", &made);
    if (made > 0)
        fm_info("cleanup: %d unreferenced blobs past their grace period; %d cleanup jobs on the stream", made,
                added < 0 ? 0 : added);
    return added;
}
