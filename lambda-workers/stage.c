/*
 * step_stage: the client's object copied, server-side, out of its reach before anything looks at it
 * (docs/workers.md "Where verified bytes live", DESIGN.md §6 rule 1).
 *
 * The client PUT its bytes to incoming/{upload_id} with a presigned URL that stays valid until it expires, so the
 * object there can change at any moment, also between the worker reading it and anything using what was read. The
 * copy at staging/{upload_id} is a key no presigned URL ever names: what step_fetch hashes, step_scan scans and
 * outcome_ready copies to blobs/{sha256} is that copy, so the bytes that were verified are the bytes that are served.
 * (The other way, a copy conditioned on the ETag of what was read, trusts an MD5 ETag against a client who chooses
 * the bytes: two contents with one MD5 are cheap to make.)
 *
 * HEAD first: the object's size against the declared one (a larger object is refused before it is copied anywhere),
 * and whether the copy needs UploadPartCopy parts (above limits->copy_part_bytes).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "worker.h"

__attribute__((format(printf, 3, 4))) static fm_step_rc stop(fm_job_t *job, fm_step_rc rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(job->reason, sizeof(job->reason), fmt, ap);
    va_end(ap);
    return rc;
}

fm_step_rc step_stage(fm_job_t *job, fm_s3_t *s3, const fm_worker_limits_t *limits)
{
    char staging[sizeof(job->staging_key)];
    snprintf(staging, sizeof(staging), "staging/%s", job->upload_id);
    job->staging_key[0] = '\0';
    fm_s3_result_t head;
    if (fm_s3_head_object(s3, job->object_key, &head) != 0) {
        if (head.status != 404)
            return stop(job, FM_STEP_RETRY, "S3 HEAD %s: %s (HTTP %ld)", job->object_key, head.code, head.status);
        /* Gone from incoming/: an earlier attempt staged it and the object was deleted since (a finished upload's
         * incoming object goes); its staged copy is still ours to use. */
        fm_s3_result_t staged;
        if (fm_s3_head_object(s3, staging, &staged) == 0) {
            snprintf(job->staging_key, sizeof(job->staging_key), "%s", staging);
            job->reason[0] = '\0';
            return FM_STEP_OK;
        }
        if (staged.status != 404)
            return stop(job, FM_STEP_RETRY, "S3 HEAD %s: %s (HTTP %ld)", staging, staged.code, staged.status);
        return stop(job, FM_STEP_FAIL, "object %s is gone (S3 %s)", job->object_key, head.code);
    }
    if (job->declared_size >= 0 && head.content_length != job->declared_size)
        return stop(job, FM_STEP_QUARANTINE, "declared %lld bytes, object has %lld", job->declared_size,
                    head.content_length);
    fm_s3_copy_opts_t opts = {.size = head.content_length, .part_bytes = limits->copy_part_bytes};
    fm_s3_result_t copy;
    if (fm_s3_copy(s3, job->object_key, staging, &opts, &copy) != 0) {
        if (copy.status == 404 || strcmp(copy.code, "NoSuchKey") == 0) /* deleted between the HEAD and the copy */
            return stop(job, FM_STEP_FAIL, "object %s is gone (S3 %s)", job->object_key, copy.code);
        return stop(job, FM_STEP_RETRY, "S3 copy %s to %s: %s (HTTP %ld): %s", job->object_key, staging, copy.code,
                    copy.status, copy.message);
    }
    snprintf(job->staging_key, sizeof(job->staging_key), "%s", staging);
    job->reason[0] = '\0';
    return FM_STEP_OK;
}

/* worker.h: the refused bytes out of every reader's reach (outcome_quarantine, process.c). */
int fm_stage_quarantine(fm_s3_t *s3, const fm_worker_limits_t *limits, const fm_job_t *job, char *why, size_t why_size)
{
    char dst[96];
    snprintf(dst, sizeof(dst), "quarantine/%s", job->upload_id);
    const char *src = job->staging_key[0] != '\0' ? job->staging_key : job->object_key;
    fm_s3_copy_opts_t opts = {.part_bytes = limits->copy_part_bytes};
    fm_s3_result_t res;
    if (fm_s3_copy(s3, src, dst, &opts, &res) != 0) {
        fm_s3_result_t head;
        /* gone already: an earlier attempt moved it and stopped before recording the outcome */
        if (!(res.status == 404 && fm_s3_head_object(s3, dst, &head) == 0)) {
            snprintf(why, why_size, "quarantine copy to %s failed: %s (HTTP %ld)", dst, res.code, res.status);
            return -1;
        }
    }
    const char *keys[] = {job->object_key, job->staging_key};
    for (size_t i = 0; i < 2; ++i) {
        if (keys[i][0] != '\0' && fm_s3_delete_object(s3, keys[i], &res) != 0 && res.status != 404) {
            snprintf(why, why_size, "delete of %.100s failed: %s (HTTP %ld)", keys[i], res.code, res.status);
            return -1;
        }
    }
    return 0;
}
