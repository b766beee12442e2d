/*
 * rekey: blobs registered by an earlier version kept the key their first upload had, incoming/{upload_id}, which that
 * upload's presigned PUT could overwrite (issue 10 finding 1; docs/workers.md "Where verified bytes live"). A
 * rekey_blob job moves one such blob to blobs/{sha256} the way a new upload gets there, and proves the bytes first:
 *
 *   fm_rekey_scan   the housekeeping thread, every FM_CLEANUP_INTERVAL_S, one process of the fleet at a time (Redis
 *                   lock fm:lock:rekey): schema 007 fm_rekey_scan makes a rekey_blob job per blob whose key is not
 *                   under blobs/ (at most 500 a round), put on the `jobs` stream like every job.
 *   fm_rekey_blob   one job (from process.c, lock taken, job RUNNING): the old object copied to staging/rekey-{sha256},
 *                   that copy hashed; the same SHA-256 → copied to blobs/{sha256}, the row moved to it, the old object
 *                   deleted; another one → the bytes were replaced after they were verified: the READY files on the
 *                   blob are QUARANTINED ("the stored bytes changed after verification") and the replaced bytes go to
 *                   quarantine/rekey-{sha256}.
 */
#ifndef FM_REKEY_H
#define FM_REKEY_H

#include <stddef.h>

#include "handle.h"

#define FM_REKEY_LOCK "fm:lock:rekey"

/** What a rekey_blob job did. */
typedef enum {
    FM_REKEY_MOVED,    /* the bytes hashed to the blob's SHA-256: now at blobs/{sha256}; job DONE (result "moved") */
    FM_REKEY_REPLACED, /* they did not: the blob's READY files QUARANTINED, job DONE (result "replaced") */
    FM_REKEY_GONE,     /* nothing to do: no such blob, already under blobs/, or its object is missing; job DONE */
    FM_REKEY_RETRY,    /* S3 failed: nothing changed; `reason` says why (retried as a dependency's failure) */
    FM_REKEY_LEFT,     /* PostgreSQL failed: the entry stays pending */
} fm_rekey_rc;

/** Runs the rekey_blob job `job_id`, which the caller has locked and marked RUNNING. */
fm_rekey_rc fm_rekey_blob(fm_worker_t *w, const char *job_id, char *reason, size_t reason_size);

/** One scan round if this process gets fm:lock:rekey; the number of jobs put on the stream, or -1. */
int fm_rekey_scan(fm_worker_t *keeper);

/** DEL fm:file:{id} of every file on blob `sha256` (hex): the cached rows carry the blob's storage_key. */
void fm_blob_forget_rows(fm_worker_t *w, const char *sha256);

#endif /* FM_REKEY_H */
