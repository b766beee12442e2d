/*
 * lambda: fm-worker as an AWS Lambda custom runtime (DESIGN.md §4 "Processing (workers)"; docs/lambda.md).
 *
 * When the binary runs as `bootstrap` with AWS_LAMBDA_RUNTIME_API set, fm_lambda_run() speaks the Lambda runtime
 * API (version 2018-06-01, AWS Lambda developer guide, "Using the Lambda runtime API for custom runtimes"):
 *
 *   POST /2018-06-01/runtime/init/error                        once, if the function's init fails
 *   GET  /2018-06-01/runtime/invocation/next                   long poll: the next event and its headers
 *   POST /2018-06-01/runtime/invocation/{AwsRequestId}/response the handler's JSON answer
 *   POST /2018-06-01/runtime/invocation/{AwsRequestId}/error    {"errorMessage","errorType","stackTrace":[]}
 *
 * One invocation at a time on the calling thread, with one libcurl handle (kept-alive connection to the local
 * runtime API). fm_lambda_s3_records() turns an S3 event payload into fm_s3event records with the same parser as
 * POST /v1/events/s3, so the Lambda handler and the queue worker process the same records.
 */
#ifndef FM_LAMBDA_H
#define FM_LAMBDA_H

#include <stddef.h>

#include "s3event.h"

/** Largest event payload read from /next and largest response posted (Lambda's synchronous limit, 6 MB). */
#define FM_LAMBDA_MAX_PAYLOAD (6 * 1024 * 1024)
/** Longest Lambda-Runtime-Aws-Request-Id accepted (real ones are 36-character UUIDs). */
#define FM_LAMBDA_REQUEST_ID_MAX 128
/** Error type reported by the handler when processing fails. */
#define FM_LAMBDA_ERROR_PROCESSING "Files.ProcessingError"
/** Error type reported to /init/error when the init callback fails. */
#define FM_LAMBDA_ERROR_INIT "Files.InitError"

/**
 * Handles one invocation. `payload` is the event (JSON, `len` bytes, NUL-terminated for convenience), borrowed
 * for the call; `deadline_ms` is Lambda-Runtime-Deadline-Ms (Unix time in ms), 0 when the header was missing or
 * not a number. Returns 0 and a malloc'd JSON document in *response (NULL is sent as `null`), or -1 with a
 * NUL-terminated error type in `error_type` (e.g. FM_LAMBDA_ERROR_PROCESSING; "" means that one) and a malloc'd
 * message in *error_message (may be left NULL). fm_lambda_run() frees both strings.
 */
typedef int (*fm_lambda_handler_fn)(void *ud, const char *request_id, const char *payload, size_t len,
                                    long long deadline_ms, char **response, char *error_type, size_t error_type_size,
                                    char **error_message);

/**
 * Runs the runtime loop against `runtime_api` (the value of AWS_LAMBDA_RUNTIME_API, "host:port").
 *
 * First `init(ud, err, err_size)` (may be NULL): if it returns non-zero, its message is posted to /init/error
 * with error type FM_LAMBDA_ERROR_INIT and -1 is returned (the caller exits non-zero; Lambda then reports the
 * init failure). Then, until `max_invocations` events have been taken from /next (0 = forever): GET /next with
 * no timeout, export Lambda-Runtime-Trace-Id as _X_AMZN_TRACE_ID (unset when absent), call `handler` and post its
 * response or error. An event whose request id header is missing or malformed is logged and skipped (it cannot
 * be answered); a payload over FM_LAMBDA_MAX_PAYLOAD is answered with an error without calling the handler.
 *
 * Returns 0 after `max_invocations` events, -1 when init failed or the runtime API is unusable (unreachable,
 * /next not answering 200, or any call answering 500, which the runtime API documents as "exit promptly").
 * Never exits the process. Not thread-safe: it sets an environment variable.
 */
int fm_lambda_run(const char *runtime_api, fm_lambda_handler_fn handler, void *ud,
                  int (*init)(void *ud, char *err, size_t err_size), int max_invocations /* 0 = forever */);

/**
 * Called once per record of an S3 event, in order. `record` (decoded key, bucket, size, etag, kind, sequencer,
 * …) is borrowed for the call. Every kind is passed; the worker processes FM_S3EVENT_CREATED and ignores the
 * rest. Returns 0, or -1 with a sentence in `err` to stop at this record.
 */
typedef int (*fm_lambda_s3_record_fn)(void *ud, const fm_s3event_record_t *record, size_t index, char *err,
                                      size_t err_size);

/**
 * Parses an S3 event notification payload (`len` bytes) with fm_s3event_parse() (AWS and RGW shapes, keys
 * decoded) and calls `on_record` for each record. Returns 0 when every record was handed over and accepted, 1
 * for s3:TestEvent (no calls), -1 with a sentence in `err` (may be NULL) when the payload is refused (nothing
 * called) or a callback failed (the records before it were handled; the Lambda retry redoes them, and
 * processing is idempotent).
 */
int fm_lambda_s3_records(const char *payload, size_t len, fm_lambda_s3_record_fn on_record, void *ud, char *err,
                         size_t err_size);

#endif /* FM_LAMBDA_H */
