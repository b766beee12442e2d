/*
 * cleanup: deletes the blobs no file references any more (DESIGN.md §4 "Delete", issue 4 item 4; docs/workers.md
 * "Cleanup"), on the same machinery as the processing jobs:
 *
 *   fm_cleanup_scan   the housekeeping thread, every FM_CLEANUP_INTERVAL_S, in one process of the fleet at a time
 *                     (Redis lock fm:lock:cleanup): schema 005 fm_cleanup_scan marks unreferenced blobs and makes a
 *                     cleanup_blob job for each one unreferenced longer than FM_BLOB_GRACE_S; each is put on the
 *                     `jobs` stream like the control plane's jobs (control-plane/jobs.c).
 *   fm_cleanup_blob   one cleanup_blob job (from process.c, lock taken, job RUNNING): in one transaction the blob row
 *                     is locked, found still unreferenced, its object and variants deleted from S3, the row deleted
 *                     and a purge_edge job made (purge.h), which goes on the stream after the commit.
 */
#ifndef FM_CLEANUP_H
#define FM_CLEANUP_H

#include <stddef.h>

#include "handle.h"

#define FM_CLEANUP_LOCK "fm:lock:cleanup"

/** What a cleanup_blob job did. */
typedef enum {
    FM_CLEANUP_DELETED, /* object, variants and row deleted, edge purge job made; job DONE (payload.result "deleted") */
    FM_CLEANUP_KEPT,    /* referenced again meanwhile: nothing deleted, unreferenced_since cleared; job DONE */
    FM_CLEANUP_GONE,    /* no such blob (an earlier attempt deleted it): job DONE */
    FM_CLEANUP_RETRY,   /* S3 refused a delete: nothing committed; `reason` says why (the caller retries the job) */
    FM_CLEANUP_LEFT,    /* PostgreSQL failed: nothing committed, the entry stays pending */
} fm_cleanup_rc;

/**
 * Runs the cleanup_blob job `job_id` (a UUID), which the caller has locked and marked RUNNING. The blob's row stays
 * locked (FOR UPDATE) from the re-check to the commit, so a file cannot start pointing at it meanwhile: a
 * concurrent dedupe waits and then finds it gone. On FM_CLEANUP_RETRY `reason` holds the S3 error.
 */
fm_cleanup_rc fm_cleanup_blob(fm_worker_t *w, const char *job_id, char *reason, size_t reason_size);

/**
 * One scan round, if this process gets fm:lock:cleanup (held for FM_CLEANUP_INTERVAL_S, so the fleet scans once
 * per interval). Runs on the housekeeper's connections; returns the number of jobs put on the stream, -1 when
 * PostgreSQL or Redis failed (the next round tries again).
 */
int fm_cleanup_scan(fm_worker_t *keeper);

#endif /* FM_CLEANUP_H */
