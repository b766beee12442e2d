/*
 * step_verify: the SHA-256 step_fetch computed over the bytes against the one the client claimed when it created
 * the upload. A mismatch is content that is not what was announced (corrupted or swapped in transit, or a client
 * lying to be deduplicated against someone else's blob): it is quarantined, never retried.
 */
#include <stdio.h>
#include <string.h>

#include "worker.h"

int fm_sha256_hex_valid(const char *text)
{
    return text != NULL && strlen(text) == 64 && strspn(text, "0123456789abcdef") == 64;
}

fm_step_rc step_verify(fm_job_t *job)
{
    if (!fm_sha256_hex_valid(job->sha256)) {
        snprintf(job->reason, sizeof(job->reason), "no content hash to verify (step_fetch did not complete)");
        return FM_STEP_FAIL;
    }
    /* Both are lowercase hex by contract (PostgreSQL's encode(…, 'hex') of the stored claim, fm_hex_encode of the
     * digest). A claim in upper case -- which would only come from elsewhere -- is lowered first, as the case says
     * nothing about the content: the one rule of fm_sha256_hex_valid, and the same answer as before for any case. */
    for (char *p = job->claimed_sha256; *p != '\0'; p++)
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
    if (!fm_sha256_hex_valid(job->claimed_sha256) || strcmp(job->claimed_sha256, job->sha256) != 0) {
        snprintf(job->reason, sizeof(job->reason), "sha256 mismatch: claimed %.64s, content %s",
                 job->claimed_sha256[0] != '\0' ? job->claimed_sha256 : "(none)", job->sha256);
        return FM_STEP_QUARANTINE;
    }
    job->reason[0] = '\0';
    return FM_STEP_OK;
}
