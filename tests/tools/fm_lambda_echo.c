/*
 * fm_lambda_echo: a Lambda custom runtime built on lambda-workers/lambda.c, for tests/integration/
 * test_lambda_runtime.py. It answers each S3 event with what fm_lambda_s3_records() read:
 *
 *   {"records":[{"bucket","key","size","etag","kind"}…], "test_event":false, "request_id", "deadline_ms",
 *    "trace_id"}
 *
 * and fails (Files.ProcessingError) on a payload {"fail": true} or one the S3 event parser refuses.
 *
 *   AWS_LAMBDA_RUNTIME_API=host:port fm_lambda_echo [MAX-INVOCATIONS]
 *
 * With FM_TEST_INIT_FAIL=1 its init fails (reported to /init/error). Exit status 0 after MAX-INVOCATIONS events
 * (default: run forever), 1 when fm_lambda_run() fails, 2 on a usage error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "lambda.h"
#include "log.h"

static int init_echo(void *ud, char *err, size_t err_size)
{
    const char *fail = getenv("FM_TEST_INIT_FAIL");
    if (fail != NULL && strcmp(fail, "1") == 0) {
        snprintf(err, err_size, "FM_TEST_INIT_FAIL=1: init refused on purpose");
        return -1;
    }
    return 0;
}

static int add_record(void *ud, const fm_s3event_record_t *record, size_t index, char *err, size_t err_size)
{
    cJSON *item = cJSON_CreateObject();
    if (item == NULL || cJSON_AddStringToObject(item, "bucket", record->bucket) == NULL ||
        cJSON_AddStringToObject(item, "key", record->key) == NULL ||
        cJSON_AddNumberToObject(item, "size", (double)record->size) == NULL ||
        cJSON_AddStringToObject(item, "etag", record->etag) == NULL ||
        cJSON_AddStringToObject(item, "kind", fm_s3event_kind_name(record->kind)) == NULL)
        abort();
    cJSON_AddItemToArray(ud, item);
    return 0;
}

static int asked_to_fail(const char *payload, size_t len)
{
    cJSON *doc = cJSON_ParseWithLength(payload, len);
    int fail = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "fail"));
    cJSON_Delete(doc);
    return fail;
}

static int handle_echo(void *ud, const char *request_id, const char *payload, size_t len, long long deadline_ms,
                       char **response, char *error_type, size_t error_type_size, char **error_message)
{
    if (asked_to_fail(payload, len)) {
        snprintf(error_type, error_type_size, "%s", FM_LAMBDA_ERROR_PROCESSING);
        *error_message = strdup("the event asked to fail");
        return -1;
    }
    cJSON *doc = cJSON_CreateObject();
    cJSON *records = cJSON_AddArrayToObject(doc, "records");
    if (records == NULL)
        abort();
    char err[1024];
    int rc = fm_lambda_s3_records(payload, len, add_record, records, err, sizeof(err));
    if (rc < 0) {
        cJSON_Delete(doc);
        snprintf(error_type, error_type_size, "%s", FM_LAMBDA_ERROR_PROCESSING);
        *error_message = strdup(err);
        return -1;
    }
    const char *trace = getenv("_X_AMZN_TRACE_ID");
    if (cJSON_AddBoolToObject(doc, "test_event", rc == 1) == NULL ||
        cJSON_AddStringToObject(doc, "request_id", request_id) == NULL ||
        cJSON_AddNumberToObject(doc, "deadline_ms", (double)deadline_ms) == NULL ||
        (trace != NULL ? cJSON_AddStringToObject(doc, "trace_id", trace) : cJSON_AddNullToObject(doc, "trace_id")) ==
            NULL)
        abort();
    *response = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    return *response != NULL ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *api = getenv("AWS_LAMBDA_RUNTIME_API");
    if (argc > 2 || api == NULL || *api == '\0') {
        fprintf(stderr, "usage: AWS_LAMBDA_RUNTIME_API=host:port %s [MAX-INVOCATIONS]\n", argv[0]);
        return 2;
    }
    long max_invocations = 0;
    if (argc == 2) {
        char *end = NULL;
        errno = 0;
        max_invocations = strtol(argv[1], &end, 10);
        if (errno != 0 || end == argv[1] || *end != '\0' || max_invocations < 0 || max_invocations > 1000000) {
            fprintf(stderr, "%s: MAX-INVOCATIONS must be a whole number\n", argv[0]);
            return 2;
        }
    }
    fm_log_init("fm_lambda_echo", "debug");
    return fm_lambda_run(api, handle_echo, NULL, init_echo, (int)max_invocations) == 0 ? 0 : 1;
}
