/*
 * handle: one worker's state and its connections (DESIGN.md §4 "Processing (workers)", docs/workers.md), the bottom
 * layer of fm-worker. Every layer above uses it -- the stream loop and housekeeper (queue.c), one job (process.c),
 * the jobs' runners (cleanup.c, purge.c, rekey.c), Lambda mode (main.c, lambda.c) -- and it calls none of them:
 *
 *   main.c → queue.c → process.c → cleanup.c, purge.c, rekey.c, the steps (worker.h) → handle.c
 *   (Lambda mode: main.c → process.c; lambda.c, the runtime API client, uses no worker)
 *
 * Each worker thread (or the Lambda handler) owns one fm_worker_t with its own blocking connections (hiredis sync,
 * libpq sync, an fm_s3_t), opened on first use and reopened after a failure. The stream's Redis keys are listed in
 * queue.h.
 */
#ifndef FM_HANDLE_H
#define FM_HANDLE_H

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdint.h>

#include "config.h"
#include "s3.h"
#include "worker.h"

#define FM_QUEUE_STREAM "jobs"
#define FM_QUEUE_GROUP "workers"
#define FM_QUEUE_DELAYED "jobs:delayed"
#define FM_QUEUE_DEAD "jobs:dead"
#define FM_QUEUE_READ_BLOCK_MS 2000 /* XREADGROUP BLOCK: how long an idle worker waits for an entry (queue.c) */

/** What became of one job (the `outcome` label of fm_worker_jobs_total). */
typedef enum {
    FM_OUTCOME_READY,       /* processed: file READY */
    FM_OUTCOME_QUARANTINED, /* refused content: file QUARANTINED, job DONE */
    FM_OUTCOME_RETRY,       /* failed attempt: job RETRY, on the delayed set */
    FM_OUTCOME_FAILED,      /* last attempt failed: job FAILED, on jobs:dead */
    FM_OUTCOME_SKIPPED,     /* duplicate delivery, already done, or nothing to do: acknowledged */
    FM_OUTCOME_LEFT,        /* not finished (PostgreSQL/Redis down, shutdown): the entry stays pending */
    FM_OUTCOME_DELETED,     /* cleanup_blob: the blob's object, variants and row deleted (cleanup.h) */
    FM_OUTCOME_KEPT,        /* cleanup_blob: the blob is referenced again, nothing deleted */
    FM_OUTCOME_PURGED,      /* purge_edge: every edge of FM_EDGE_PURGE_URLS dropped the keys (purge.h) */
    FM_OUTCOME_DEFERRED,    /* a dependency failed (S3, clamd, an edge, the temp disk) or the worker stopped: job
                             * RETRY on the delayed set, no attempt used (docs/workers.md "Retries and dead letters") */
    FM_OUTCOME_MOVED,       /* rekey_blob: a blob of an earlier version moved to blobs/{sha256} (rekey.h) */
} fm_outcome_t;

/** "ready", "quarantined", "retry", "failed", "skipped", "left", "deleted", "kept", "purged", "deferred", "moved". */
const char *fm_outcome_name(fm_outcome_t outcome);

struct fm_queue; /* the stream consumer that owns a worker (queue.h); opaque here */

/**
 * One worker thread's state: its connections and its in-flight job. Owned by its thread (or by the Lambda
 * handler); `inflight_*` is also read by the heartbeat under `inflight_lock`.
 */
typedef struct fm_worker {
    const fm_config_t *cfg; /* borrowed for the worker's life */
    fm_worker_limits_t limits;
    char consumer[160]; /* hostname-pid-thread: the stream consumer and the lock holder */
    int index;
    redisContext *redis; /* NULL while disconnected */
    PGconn *pg;          /* NULL while disconnected */
    fm_s3_t *s3;
    struct fm_queue *queue; /* the owner (queue.c); NULL in Lambda mode */
    /* Set with `queue` by its owner (fm_queue_abandon_at): the deadline (fm_mono_ms) after which in-flight jobs are
     * abandoned, 0 while running. A pointer, so that this layer asks the one above without calling up into it. */
    uint64_t (*abandon_at)(struct fm_queue *queue);
    /* the job being worked on, for the heartbeat */
    pthread_mutex_t inflight_lock;
    char inflight_job[40], inflight_entry[64];
    uint64_t inflight_since_ms;
    unsigned long long jobs_done;
    /* Set by fm_worker_sql/fm_worker_pg: the last statement failed for want of PostgreSQL (no connection, a server
     * shutting down, a timeout, a deadlock), not because of the statement; cleared by the next success. */
    int pg_unavailable;
    /* Lambda mode: the invocation's deadline (Unix ms, Lambda-Runtime-Deadline-Ms), 0 when unknown. */
    long long deadline_ms;
} fm_worker_t;

/** Makes a worker's state (connections are opened on first use). NULL with `err` set on a bad S3 setting. */
fm_worker_t *fm_worker_new(const fm_config_t *cfg, const char *consumer, int index, char *err, size_t err_size);
void fm_worker_free(fm_worker_t *w);

/** Connects Redis/PostgreSQL if they are not (or no longer) connected; 0, or -1 with the reason logged. */
int fm_worker_redis(fm_worker_t *w);
int fm_worker_pg(fm_worker_t *w);
/** Drops a connection after an error, so the next use reconnects. */
void fm_worker_redis_lost(fm_worker_t *w);
void fm_worker_pg_lost(fm_worker_t *w);

/** One Redis command on the worker's connection; NULL when the connection failed (logged, dropped). An error
 *  answer is a reply (REDIS_REPLY_ERROR). The caller frees the reply with freeReplyObject. */
redisReply *fm_worker_cmd(fm_worker_t *w, int argc, const char **argv);
/** After a committed change to a file of `owner_id`: INCR fm:tgen:{owner}, the owner's tree generation that keys
 *  every cached listing page of the owner (control-plane/tree.c, files_list.c). "" is ignored; a failure is logged
 *  by fm_worker_cmd and costs at most the pages' TTL. */
void fm_worker_tree_changed(fm_worker_t *w, const char *owner_id);

/** One SQL statement on the worker's connection; the result when it succeeded (the caller PQclear()s it), NULL
 *  on any failure (logged; the connection is dropped when it broke). */
PGresult *fm_worker_sql(fm_worker_t *w, const char *sql, int nparams, const char *const *params);

/**
 * Puts job `job_id` of `type` on the `jobs` stream with the fields of control-plane/jobs.c (file_id and upload_id
 * empty: the job row has the rest) and records enqueued_at. 0, or -1 when Redis failed: enqueued_at stays NULL and
 * the control plane's reconciler adds the entry later. `request_id` tags the entry for the logs.
 */
int fm_worker_enqueue(fm_worker_t *w, const char *job_id, const char *type, const char *request_id);

/**
 * One round of a housekeeping scan that makes jobs (cleanup.c, rekey.c): when this process takes `lock` (SET NX, for
 * FM_CLEANUP_INTERVAL_S and never released, so the fleet scans once per interval, whoever comes first), runs `sql`,
 * whose first column is the id of each job it made, and puts each on the stream as `type`. Returns how many went on
 * the stream (0 without the lock), -1 when Redis or PostgreSQL failed (the next round tries again); *made is the
 * number the statement made (a job not put on the stream keeps enqueued_at NULL: the reconciler adds it).
 */
int fm_worker_scan_jobs(fm_worker_t *keeper, const char *lock, const char *sql, int nparams,
                        const char *const *params, const char *type, int *made);

/** True when s is a UUID in its 8-4-4-4-12 hex form, either case (common/uuid.h fm_uuid_valid). */
int fm_uuid_text_valid(const char *s);

/** True once the process was asked to stop and its graceful delay is over: a job stops between steps, unmarked. */
int fm_worker_must_abandon(const fm_worker_t *w);

/**
 * Waits `ms` for a dependency to come back, while the job in hand may still be kept: in queue mode until the process
 * must abandon its jobs (the heartbeat keeps the job's entry and lock meanwhile); in Lambda mode while the wait ends
 * 5 s before `deadline_ms` (never without one). 0 after the wait, -1 (at once) when the job must be let go.
 */
int fm_worker_pause(fm_worker_t *w, uint64_t ms);

/** Milliseconds since the Unix epoch / a monotonic clock. */
uint64_t fm_wall_ms(void);
uint64_t fm_mono_ms(void);

#endif /* FM_HANDLE_H */
