/*
 * step_verify: the SHA-256 step_fetch computed over the bytes against the one the client claimed when it created
 * the upload. A mismatch is content that is not what was announced (corrupted or swapped in transit, or a client
 * lying to be deduplicated against someone else's blob): it is quarantined, never retried.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "worker.h"

static int is_sha256_hex(const char *text)
{
    return strlen(text) == 64 && strspn(text, "0123456789abcdefABCDEF") == 64;
}

fm_step_rc step_verify(fm_job_t *job)
{
    if (!is_sha256_hex(job->sha256)) {
        snprintf(job->reason, sizeof(job->reason), "no content hash to verify (step_fetch did not complete)");
        return FM_STEP_FAIL;
    }
    /* Both are lowercase hex by contract; the case is ignored anyway, as it says nothing about the content. */
    if (!is_sha256_hex(job->claimed_sha256) || strcasecmp(job->claimed_sha256, job->sha256) != 0) {
        snprintf(job->reason, sizeof(job->reason), "sha256 mismatch: claimed %.64s, content %s",
                 job->claimed_sha256[0] != '\0' ? job->claimed_sha256 : "(none)", job->sha256);
        return FM_STEP_QUARANTINE;
    }
    job->reason[0] = '\0';
    return FM_STEP_OK;
}
