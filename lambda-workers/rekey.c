/*
 * rekey: moves a blob of an earlier version from the key its first upload had (incoming/{upload_id}, writable by that
 * upload's URL) to blobs/{sha256}, after proving the bytes are still the verified ones (rekey.h, schema 007).
 */
#include "rekey.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "worker.h"

#define SCAN_BATCH "500"
#define REPLACED_REASON "the stored bytes changed after verification"

void fm_blob_forget_rows(fm_worker_t *w, const char *sha256)
{
    const char *params[] = {sha256};
    PGresult *res = fm_worker_sql(w, "SELECT id::text, owner_id::text FROM files WHERE blob_sha256 = decode($1, 'hex')",
                                  1, params);
    for (int i = 0; res != NULL && i < PQntuples(res); ++i) {
        char file_key[64];
        snprintf(file_key, sizeof(file_key), "fm:file:{%s}", PQgetvalue(res, i, 0));
        const char *argv[] = {"DEL", file_key};
        freeReplyObject(fm_worker_cmd(w, 2, argv));
        fm_worker_tree_changed(w, PQgetvalue(res, i, 1));
    }
    PQclear(res);
}

/* The job DONE with payload.result; FM_REKEY_LEFT when PostgreSQL failed, else `rc`. */
static fm_rekey_rc finish(fm_worker_t *w, const char *job_id, const char *result, fm_rekey_rc rc)
{
    const char *params[] = {job_id, result};
    PGresult *res = fm_worker_sql(w,
                                  "UPDATE jobs SET status = 'DONE', finished_at = now(), last_error = NULL,"
                                  " payload = payload || jsonb_build_object('result', $2::text)"
                                  " WHERE id = $1::uuid AND status = 'RUNNING'",
                                  2, params);
    if (res == NULL)
        return FM_REKEY_LEFT;
    PQclear(res);
    return rc;
}

static void delete_key(fm_worker_t *w, const char *key)
{
    fm_s3_result_t res;
    if (fm_s3_delete_object(w->s3, key, &res) != 0 && res.status != 404)
        fm_warn("rekey: %s not deleted: %s (HTTP %ld); the orphan sweep takes it", key, res.code, res.status);
}

/* The bytes at the old key did not hash to the blob's SHA-256: its READY files can no longer be served as verified. */
static fm_rekey_rc quarantine_files(fm_worker_t *w, const char *job_id, const char *sha256, const char *staging,
                                    const char *old_key, char *reason, size_t reason_size)
{
    char dst[96];
    snprintf(dst, sizeof(dst), "quarantine/rekey-%s", sha256);
    fm_s3_copy_opts_t opts = {.part_bytes = w->limits.copy_part_bytes};
    fm_s3_result_t res;
    if (fm_s3_copy(w->s3, staging, dst, &opts, &res) != 0) {
        snprintf(reason, reason_size, "copy of %s to %s failed: %s (HTTP %ld)", staging, dst, res.code, res.status);
        return FM_REKEY_RETRY;
    }
    const char *params[] = {sha256, REPLACED_REASON};
    PGresult *q = fm_worker_sql(w,
                                "UPDATE files SET status = 'QUARANTINED', status_reason = $2, updated_at = now(),"
                                " version = version + 1 WHERE blob_sha256 = decode($1, 'hex') AND status = 'READY'"
                                " RETURNING id",
                                2, params);
    if (q == NULL)
        return FM_REKEY_LEFT;
    fm_error("rekey: blob %s: the bytes at %s are not the ones verified; %d file(s) QUARANTINED, the bytes kept at %s",
             sha256, old_key, PQntuples(q), dst);
    PQclear(q);
    fm_blob_forget_rows(w, sha256);
    delete_key(w, staging);
    delete_key(w, old_key);
    return finish(w, job_id, "replaced", FM_REKEY_REPLACED);
}

fm_rekey_rc fm_rekey_blob(fm_worker_t *w, const char *job_id, char *reason, size_t reason_size)
{
    reason[0] = '\0';
    const char *job_param[] = {job_id};
    PGresult *res = fm_worker_sql(w,
                                  "SELECT b.storage_key, b.content_type, b.size, encode(b.sha256, 'hex') FROM jobs j"
                                  " JOIN blobs b ON b.sha256 = decode(j.payload->>'sha256', 'hex') WHERE j.id = $1::uuid"
                                  " AND j.payload->>'sha256' ~ '^[0-9a-f]{64}$'",
                                  1, job_param);
    if (res == NULL)
        return FM_REKEY_LEFT;
    if (PQntuples(res) != 1 || strncmp(PQgetvalue(res, 0, 0), "blobs/", 6) == 0) {
        PQclear(res);
        return finish(w, job_id, "nothing", FM_REKEY_GONE); /* deleted meanwhile, or moved by a new upload of it */
    }
    char old_key[1024], type[256], sha256[65], staging[96], blob_key[80];
    snprintf(old_key, sizeof(old_key), "%s", PQgetvalue(res, 0, 0));
    snprintf(type, sizeof(type), "%s", PQgetvalue(res, 0, 1));
    long long size = atoll(PQgetvalue(res, 0, 2));
    snprintf(sha256, sizeof(sha256), "%s", PQgetvalue(res, 0, 3));
    PQclear(res);
    snprintf(staging, sizeof(staging), "staging/rekey-%s", sha256);
    snprintf(blob_key, sizeof(blob_key), "blobs/%s", sha256);

    /* The same order as an upload's job: a copy no client URL can write, then the hash of that copy. */
    fm_s3_copy_opts_t opts = {.part_bytes = w->limits.copy_part_bytes};
    fm_s3_result_t s3res;
    if (fm_s3_copy(w->s3, old_key, staging, &opts, &s3res) != 0) {
        if (s3res.status == 404 || strcmp(s3res.code, "NoSuchKey") == 0) {
            fm_error("rekey: blob %s: its object %s is missing; nothing to move", sha256, old_key);
            return finish(w, job_id, "missing", FM_REKEY_GONE);
        }
        snprintf(reason, reason_size, "copy of %.300s to %s failed: %s (HTTP %ld)", old_key, staging, s3res.code,
                 s3res.status);
        return FM_REKEY_RETRY;
    }
    fm_job_t job = {.declared_size = size};
    snprintf(job.staging_key, sizeof(job.staging_key), "%s", staging);
    fm_step_rc fetched = step_fetch(&job, w->s3, &w->limits);
    fm_job_clear(&job);
    if (fetched == FM_STEP_RETRY || fetched == FM_STEP_FAIL) {
        snprintf(reason, reason_size, "%s", job.reason);
        return FM_REKEY_RETRY;
    }
    if (fetched == FM_STEP_QUARANTINE || strcmp(job.sha256, sha256) != 0) /* another size, or other bytes */
        return quarantine_files(w, job_id, sha256, staging, old_key, reason, reason_size);

    fm_s3_copy_opts_t to_blob = {.content_type = type, .size = size, .part_bytes = w->limits.copy_part_bytes};
    if (fm_s3_copy(w->s3, staging, blob_key, &to_blob, &s3res) != 0) {
        snprintf(reason, reason_size, "copy of %s to %s failed: %s (HTTP %ld)", staging, blob_key, s3res.code,
                 s3res.status);
        return FM_REKEY_RETRY;
    }
    const char *params[] = {sha256, old_key, blob_key};
    res = fm_worker_sql(w,
                        "UPDATE blobs SET storage_key = $3 WHERE sha256 = decode($1, 'hex') AND storage_key = $2"
                        " RETURNING 1",
                        3, params);
    if (res == NULL)
        return FM_REKEY_LEFT;
    int moved = PQntuples(res) == 1;
    PQclear(res);
    /* Not moved: the blob was deleted meanwhile (its copy at blobs/ is then nobody's: it goes too) or a new upload
     * of the same bytes moved it there first. */
    if (!moved) {
        const char *check[] = {sha256};
        PGresult *exists = fm_worker_sql(w, "SELECT 1 FROM blobs WHERE sha256 = decode($1, 'hex')", 1, check);
        if (exists == NULL)
            return FM_REKEY_LEFT;
        if (PQntuples(exists) == 0)
            delete_key(w, blob_key);
        PQclear(exists);
    }
    fm_blob_forget_rows(w, sha256);
    delete_key(w, staging);
    delete_key(w, old_key);
    if (moved)
        fm_info("rekey: blob %s moved from %s to %s", sha256, old_key, blob_key);
    return finish(w, job_id, moved ? "moved" : "nothing", moved ? FM_REKEY_MOVED : FM_REKEY_GONE);
}

int fm_rekey_scan(fm_worker_t *keeper)
{
    const char *params[] = {SCAN_BATCH};
    int made, added = fm_worker_scan_jobs(keeper, FM_REKEY_LOCK, "SELECT out_job FROM fm_rekey_scan($1::integer)", 1,
                                          params, "rekey_blob", &made);
    if (made > 0)
        fm_info("rekey: %d blob(s) at a key an upload URL could write; %d rekey jobs on the stream", made,
                added < 0 ? 0 : added);
    return added;
}
