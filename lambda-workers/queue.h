/*
 * queue: fm-worker's job consumer (DESIGN.md §4 "Processing (workers)", docs/workers.md).
 *
 * FM_WORKER_THREADS worker threads read the Redis Stream `jobs` as consumers of the group `workers`; each has its
 * own blocking connections (hiredis sync, libpq sync, an fm_s3_t) and works one job at a time through
 * fm_worker_process() (process.c). One housekeeping thread per process keeps the in-flight jobs alive (heartbeat:
 * their stream entries' idle time and their locks), shows live workers (`fm:worker:{consumer}`), moves due retries
 * from the delayed set back onto the stream, samples the queue gauges and, every FM_CLEANUP_INTERVAL_S, runs the
 * cleanup and rekey scans (cleanup.h, rekey.h; one process of the fleet per round).
 *
 * The worker handle and its connections are handle.h, one job process.h; this file is only the loop above them.
 *
 * Redis keys (all in the database of FM_REDIS_URL):
 *   jobs                     stream, group `workers`; entry fields job_id, type, file_id, upload_id, request_id, …
 *   jobs:delayed             sorted set job_id → due time (Unix ms) of its next attempt
 *   jobs:dead                stream of the jobs that FAILED for good: job_id, type, file_id, upload_id, error, attempts,
 *                            transient (dependency errors in a row)
 *   fm:joblock:{job_id}      the consumer working on a job (SET NX PX visibility, refreshed by the heartbeat)
 *   fm:worker:{consumer}     a live worker thread: JSON {host, pid, thread, job_id, entry_id, since_ms, jobs}, EX 30
 *   fm:jobs:mover            short lock: one process at a time moves due retries
 *   fm:lock:cleanup          lock held for FM_CLEANUP_INTERVAL_S by the process whose housekeeper scans (cleanup.h)
 */
#ifndef FM_QUEUE_H
#define FM_QUEUE_H

#include <hiredis/hiredis.h>
#include <stdint.h>

#include "config.h"
#include "process.h"

/** The process-wide consumer (queue.c). Opaque. */
typedef struct fm_queue fm_queue_t;

/**
 * Reads one stream entry as XREADGROUP / XAUTOCLAIM answer it, `[id, [field, value, …]]`, into `e` (zeroed first):
 * the id, and the `job_id` and `request_id` fields (the last one that fits with its NUL and has no NUL inside; other
 * fields are ignored). 0, or -1 when the entry is malformed or nil (deleted meanwhile), or its id empty, too long
 * or holding a NUL. The job id is not checked here (fm_uuid_text_valid).
 */
int fm_job_entry_parse(const redisReply *item, fm_entry_t *e);

/** Starts the worker threads and the housekeeper (describes the metrics too). NULL on failure (logged). */
fm_queue_t *fm_queue_start(const fm_config_t *cfg);

/**
 * Stops taking jobs and waits up to `graceful_ms` for the in-flight ones (they stop between steps after that,
 * left pending for another worker), then joins and frees everything. Returns 0 when every thread ended, -1 when
 * one is still inside a step (the caller should then leave with _exit: the job's entry stays pending).
 */
int fm_queue_stop(fm_queue_t *q, uint64_t graceful_ms);

/** Deadline (fm_mono_ms) after which in-flight jobs are abandoned; 0 while running. */
uint64_t fm_queue_abandon_at(fm_queue_t *q);

#endif /* FM_QUEUE_H */
