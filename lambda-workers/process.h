/*
 * process: one job, start to end (process.c; DESIGN.md §4 "Processing (workers)"). Called by the stream loop
 * (queue.c) and by Lambda mode (main.c); calls down only (the jobs' runners, the steps, handle.h).
 */
#ifndef FM_PROCESS_H
#define FM_PROCESS_H

#include "handle.h"

/** Where a job to process comes from. */
typedef struct fm_entry {
    char id[64];         /* its stream entry id; "" when it came from elsewhere (a Lambda invocation) */
    char job_id[40];     /* a UUID (checked by the reader) */
    char request_id[80]; /* of the request that made the job, for the logs ("" if unknown) */
    int reclaimed;       /* taken over from a dead consumer (XAUTOCLAIM) */
} fm_entry_t;

/**
 * Processes one job: lock, load, skip when done, steps (or the runner of a housekeeping job: cleanup_blob,
 * purge_edge, rekey_blob), outcome in PostgreSQL/Redis/S3, then the entry is acknowledged and deleted. A lock held by
 * another consumer makes a fresh entry a duplicate delivery (acknowledged, skipped) but leaves a reclaimed one
 * pending: its holder may be the worker that died.
 */
fm_outcome_t fm_worker_process(fm_worker_t *w, const fm_entry_t *entry);

#endif /* FM_PROCESS_H */
