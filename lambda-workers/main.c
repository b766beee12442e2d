/*
 * fm-worker: post-processing (DESIGN.md §1, §4 "Processing (workers)"; docs/workers.md).
 *
 *   fm-worker            the queue consumer (queue.c) + /healthz and /metrics on FM_WORKER_HEALTH_PORT
 *   fm-worker config     prints the worker's configuration table
 *   with AWS_LAMBDA_RUNTIME_API set: an AWS Lambda custom runtime (lambda.h, docs/lambda.md) whose handler runs
 *   the same per-job function for each `incoming/{upload_id}` object of the S3 event, synchronously.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "lambda.h"
#include "log.h"
#include "queue.h"
#include "server.h"
#include "uuid.h"

/* ---- Lambda mode ---------------------------------------------------------------------------------------------------
 */

/* The job of upload `upload_id` after its object `size` bytes (ETag `etag`) landed in `bucket`: marks the upload
 * UPLOADED if nobody did (schema 003 fm_upload_mark_uploaded). 0 with the job id, 1 when the upload has no job to run
 * (unknown, aborted, size mismatch), -1 when PostgreSQL failed. */
static int job_of_upload(fm_worker_t *w, const char *upload_id, long long size, const char *etag, const char *bucket,
                         char *job_id, size_t job_id_size)
{
    char size_text[24];
    snprintf(size_text, sizeof(size_text), "%lld", size);
    const char *params[] = {upload_id, size >= 0 ? size_text : NULL, etag[0] ? etag : NULL, bucket};
    /* The Lambda function takes the job itself: recorded as enqueued, so the control plane's reconciler does not
     * put it on the stream as well. */
    PGresult *res = fm_worker_sql(w,
                                  "WITH m AS (SELECT outcome, job_id FROM fm_upload_mark_uploaded($1::uuid, $2::bigint,"
                                  " $3, 'event', $4)), e AS (UPDATE jobs SET enqueued_at = coalesce(enqueued_at, now())"
                                  " WHERE id = (SELECT job_id FROM m) RETURNING id) "
                                  "SELECT outcome, coalesce(job_id::text, ''), (SELECT count(*) FROM e) FROM m",
                                  4, params);
    if (res == NULL)
        return -1;
    int rc = 1;
    if (PQntuples(res) == 1 && PQgetvalue(res, 0, 1)[0] != '\0') {
        snprintf(job_id, job_id_size, "%s", PQgetvalue(res, 0, 1));
        rc = 0;
    } else {
        fm_warn("lambda: upload %s has no job to run (%s)", upload_id, PQntuples(res) ? PQgetvalue(res, 0, 0) : "?");
    }
    PQclear(res);
    return rc;
}

typedef struct {
    fm_worker_t *worker;
    const char *request_id;
    int processed, failed;
} lambda_batch_t;

static int lambda_record(void *ud, const fm_s3event_record_t *record, size_t index, char *err, size_t err_size)
{
    lambda_batch_t *b = ud;
    /* incoming/{lowercase uuid} only, as events.c and the reconciler read it: "incoming/ABC…" is another object,
     * even though PostgreSQL would match its id to ours (uuid.h's one case rule). */
    const char *upload_id = fm_incoming_key_id(record->key, record->key_len);
    if (record->kind != FM_S3EVENT_CREATED || upload_id == NULL)
        return 0; /* not an upload of ours (variants/, quarantine/ …): nothing to do */
    char job_id[40];
    int rc = job_of_upload(b->worker, upload_id, record->size, record->etag, record->bucket, job_id, sizeof(job_id));
    if (rc < 0) {
        snprintf(err, err_size, "record %zu: PostgreSQL is unavailable", index);
        return -1;
    }
    if (rc > 0)
        return 0;
    fm_entry_t entry = {.reclaimed = 0};
    snprintf(entry.job_id, sizeof(entry.job_id), "%s", job_id);
    snprintf(entry.request_id, sizeof(entry.request_id), "%s", b->request_id);
    fm_outcome_t outcome = fm_worker_process(b->worker, &entry);
    b->processed++;
    if (outcome == FM_OUTCOME_LEFT || outcome == FM_OUTCOME_RETRY || outcome == FM_OUTCOME_DEFERRED) {
        /* Lambda retries the invocation (twice, 1 and 2 minutes later: docs/lambda.md "Retries"); processing is
         * idempotent, and a RETRY job is also on the delayed set, which a queue-mode worker serves beyond that. */
        snprintf(err, err_size, "record %zu: job %s %s", index, job_id,
                 outcome == FM_OUTCOME_LEFT       ? "could not be processed now"
                 : outcome == FM_OUTCOME_DEFERRED ? "waits for a dependency and will be retried"
                                                  : "failed and will be retried");
        b->failed++;
        return -1;
    }
    return 0;
}

static int lambda_handler(void *ud, const char *request_id, const char *payload, size_t len, long long deadline_ms,
                          char **response, char *error_type, size_t error_type_size, char **error_message)
{
    lambda_batch_t batch = {.worker = ud, .request_id = request_id};
    /* How long a finished job may wait for PostgreSQL (fm_worker_pause); no header, no waiting. */
    batch.worker->deadline_ms = deadline_ms;
    char err[256] = "";
    int rc = fm_lambda_s3_records(payload, len, lambda_record, &batch, err, sizeof(err));
    if (rc < 0) {
        snprintf(error_type, error_type_size, "%s", FM_LAMBDA_ERROR_PROCESSING);
        *error_message = strdup(err[0] ? err : "the event could not be processed");
        return -1;
    }
    char body[64];
    snprintf(body, sizeof(body), "{\"processed\":%d}", batch.processed);
    *response = strdup(body);
    return 0;
}

static int lambda_init(void *ud, char *err, size_t err_size)
{
    fm_worker_t *w = ud;
    if (fm_worker_pg(w) != 0 || fm_worker_redis(w) != 0) {
        snprintf(err, err_size, "cannot reach PostgreSQL or Redis");
        return -1;
    }
    return 0;
}

static int run_lambda(const fm_config_t *cfg, const char *runtime_api)
{
    char host[128] = "", consumer[160], err[256] = "";
    gethostname(host, sizeof(host) - 1);
    snprintf(consumer, sizeof(consumer), "%.100s-%d-lambda", host, (int)getpid());
    fm_worker_t *w = fm_worker_new(cfg, consumer, 0, err, sizeof(err));
    if (w == NULL) {
        fm_error("lambda: %s", err);
        return 1;
    }
    int rc = fm_lambda_run(runtime_api, lambda_handler, w, lambda_init, 0);
    fm_worker_free(w);
    return rc == 0 ? 0 : 1;
}

/* ---- queue mode
 * ------------------------------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "config") == 0) {
        fm_config_print_table(FM_SVC_WORKER, stdout);
        return 0;
    }
    static fm_config_t cfg;
    if (fm_config_load(&cfg, FM_SVC_WORKER, stderr) != 0) {
        fprintf(stderr, "fm-worker: fix the configuration above (see `fm-worker config`)\n");
        return 2;
    }
    fm_log_init("fm-worker", cfg.log_level);
    fm_log_access_init(cfg.access_log, (unsigned)cfg.access_log_sample); /* its health port */
    signal(SIGPIPE, SIG_IGN); /* hiredis and libpq write to sockets whose peer may be gone */

    fm_server_block_stop_signals(); /* before libvips starts its worker threads */
    if (fm_s3_global_init() != 0 || fm_media_init(argv[0]) != 0) {
        fm_error("worker: cannot initialise libcurl or libvips");
        return 1;
    }
    const char *runtime_api = getenv("AWS_LAMBDA_RUNTIME_API");
    if (runtime_api != NULL && runtime_api[0] != '\0')
        return run_lambda(&cfg, runtime_api);

    fm_queue_t *queue = fm_queue_start(&cfg);
    if (queue == NULL)
        return 1;
    fm_server_spec_t spec = {
        .service = "fm-worker",
        .bind = cfg.bind,
        .http_port = (int)cfg.worker_health_port,
        .threads = 1,
        .offload_threads = 1,
        .max_body_bytes = 65536,
        .graceful_timeout_ms = 1000, /* only /healthz and /metrics: the jobs have their own delay below */
    };
    int rc = fm_server_run(&spec); /* until SIGTERM/SIGINT */
    if (fm_queue_stop(queue, (uint64_t)cfg.graceful_timeout_ms) != 0)
        _exit(rc); /* a job thread is inside a step: its job stays pending and is reclaimed; nothing half-marked */
    return rc;
}
