/*
 * lambda: the Lambda runtime API client (see lambda.h) and the S3 event helper.
 *
 * One shape per invocation: take (GET /next, headers checked) -> handle (the caller's handler) -> answer (POST
 * /response or /error). The runtime API is local to the execution environment, so a transport failure or a 500
 * is not retried: the function returns -1, the process exits, and Lambda starts a fresh environment.
 */
#include "lambda.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "log.h"
#include "s3.h"

#define API_VERSION "2018-06-01"
/* POSTs go to a local endpoint; a minute without an answer means the environment is broken. */
#define POST_TIMEOUT_MS 60000L
/* What is kept of a runtime API answer to a POST (its error document, for the log). */
#define POST_ANSWER_MAX 2048

/* An answer body being read: at most `limit` bytes; `too_large` when the peer sent more. */
typedef struct {
    char *data;
    size_t len, cap, limit;
    int too_large;
    int truncate; /* keep the first `limit` bytes and drop the rest instead of aborting the transfer */
} body_t;

/* The invocation headers of one /next answer (Lambda developer guide, "Next invocation"). */
typedef struct {
    char request_id[FM_LAMBDA_REQUEST_ID_MAX + 1];
    int request_id_seen, request_id_bad;
    char deadline_ms[32];
    char function_arn[512];
    char trace_id[1024];
    int trace_seen, trace_bad;
} invocation_headers_t;

typedef struct {
    CURL *curl;
    char base[512]; /* "http://{AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime" */
    char curl_err[CURL_ERROR_SIZE];
} runtime_t;

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    body_t *body = userdata;
    size_t n = size * nmemb;
    if (body->len + n > body->limit) {
        body->too_large = 1;
        if (!body->truncate)
            return 0; /* CURLE_WRITE_ERROR: stop reading what will not be used */
        n = body->limit - body->len;
    }
    if (body->len + n + 1 > body->cap) {
        size_t cap = body->cap == 0 ? 4096 : body->cap;
        while (cap < body->len + n + 1)
            cap *= 2;
        char *grown = realloc(body->data, cap);
        if (grown == NULL)
            abort();
        body->data = grown;
        body->cap = cap;
    }
    memcpy(body->data + body->len, data, n);
    body->len += n;
    body->data[body->len] = '\0';
    return size * nmemb;
}

/* A request id goes into the URL path: only the characters of a UUID-like token, so that no value can reach
 * another path ("..", "/", "?") or break the request line. */
static int request_id_ok(const char *id, size_t len)
{
    if (len == 0 || len > FM_LAMBDA_REQUEST_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)id[i]) && id[i] != '-' && id[i] != '_')
            return 0;
    return 1;
}

/* Copies a header value; 0 if it fits, -1 if it was too long (then `out` is ""). */
static int copy_value(char *out, size_t size, const char *value, size_t len)
{
    if (len >= size) {
        out[0] = '\0';
        return -1;
    }
    memcpy(out, value, len);
    out[len] = '\0';
    return 0;
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *userdata)
{
    invocation_headers_t *h = userdata;
    size_t n = size * nmemb, len = n;
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        memset(h, 0, sizeof(*h)); /* a new answer (after a 100 Continue): its headers only */
        return n;
    }
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    const char *colon = memchr(line, ':', len);
    if (colon == NULL)
        return n;
    size_t name_len = (size_t)(colon - line);
    const char *value = colon + 1;
    size_t value_len = len - name_len - 1;
    while (value_len > 0 && (*value == ' ' || *value == '\t')) {
        value++;
        value_len--;
    }
    while (value_len > 0 && (value[value_len - 1] == ' ' || value[value_len - 1] == '\t'))
        value_len--;

#define IS_HEADER(name) (name_len == sizeof(name) - 1 && strncasecmp(line, name, name_len) == 0)
    if (IS_HEADER("Lambda-Runtime-Aws-Request-Id")) {
        h->request_id_seen = 1;
        h->request_id_bad = !request_id_ok(value, value_len);
        copy_value(h->request_id, sizeof(h->request_id), value, h->request_id_bad ? 0 : value_len);
    } else if (IS_HEADER("Lambda-Runtime-Deadline-Ms")) {
        copy_value(h->deadline_ms, sizeof(h->deadline_ms), value, value_len);
    } else if (IS_HEADER("Lambda-Runtime-Invoked-Function-Arn")) {
        copy_value(h->function_arn, sizeof(h->function_arn), value, value_len);
    } else if (IS_HEADER("Lambda-Runtime-Trace-Id")) {
        h->trace_seen = 1;
        h->trace_bad = copy_value(h->trace_id, sizeof(h->trace_id), value, value_len) != 0;
    }
#undef IS_HEADER
    return n;
}

/* Lambda-Runtime-Deadline-Ms: a whole number of ms since the epoch; 0 when missing or malformed. */
static long long parse_deadline(const char *text)
{
    if (*text == '\0' || !isdigit((unsigned char)*text))
        return 0;
    char *end = NULL;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    return errno == 0 && *end == '\0' ? value : 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Options every call shares; curl_easy_reset keeps the live connection, so the runtime API sees keep-alive. */
static void request_setup(runtime_t *rt, const char *url)
{
    curl_easy_reset(rt->curl);
    rt->curl_err[0] = '\0';
    curl_easy_setopt(rt->curl, CURLOPT_URL, url);
    curl_easy_setopt(rt->curl, CURLOPT_ERRORBUFFER, rt->curl_err);
    curl_easy_setopt(rt->curl, CURLOPT_NOSIGNAL, 1L);
    /* The runtime API is in the execution environment: an http_proxy variable must never capture it. */
    curl_easy_setopt(rt->curl, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(rt->curl, CURLOPT_FOLLOWLOCATION, 0L);
}

/* SIGTERM (Lambda's shutdown, or an operator's stop) and SIGINT are blocked in every thread of fm-worker (main.c,
 * before libvips starts its threads): they stay pending, and the loop looks for them between invocations and,
 * through curl's progress callback (called about once a second while nothing arrives), while it waits on /next.
 * A pending one ends the loop there; an invocation being handled is answered first. */
static int stop_pending(void)
{
    sigset_t pending;
    return sigpending(&pending) == 0 && (sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1);
}

static int on_wait_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    return stop_pending(); /* non-zero: curl ends the transfer with CURLE_ABORTED_BY_CALLBACK */
}

static const char *curl_reason(runtime_t *rt, CURLcode code)
{
    return rt->curl_err[0] != '\0' ? rt->curl_err : curl_easy_strerror(code);
}

/*
 * GET /next. "Do not set a timeout on the GET request": the environment may be frozen between the call and the
 * event. Returns 0 with the HTTP status in *status (body and headers filled), 1 when a stop signal came while it
 * waited, or -1 on a transport failure other than a payload over the limit (then 0 with body->too_large).
 */
static int get_next(runtime_t *rt, body_t *body, invocation_headers_t *headers, long *status)
{
    char url[sizeof(rt->base) + 32];
    snprintf(url, sizeof(url), "%s/invocation/next", rt->base);
    request_setup(rt, url);
    curl_easy_setopt(rt->curl, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(rt->curl, CURLOPT_TIMEOUT_MS, 0L);
    curl_easy_setopt(rt->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(rt->curl, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(rt->curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(rt->curl, CURLOPT_HEADERDATA, headers);
    curl_easy_setopt(rt->curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(rt->curl, CURLOPT_XFERINFOFUNCTION, on_wait_progress);
    CURLcode code = curl_easy_perform(rt->curl);
    *status = 0;
    curl_easy_getinfo(rt->curl, CURLINFO_RESPONSE_CODE, status);
    if (code == CURLE_OK || (code == CURLE_WRITE_ERROR && body->too_large))
        return 0;
    if (code == CURLE_ABORTED_BY_CALLBACK)
        return 1;
    fm_error("lambda: GET %s failed: %s", url, curl_reason(rt, code));
    return -1;
}

/* POSTs a JSON document; returns the HTTP status, or -1 on a transport failure. `error_type` adds the
 * Lambda-Runtime-Function-Error-Type header (for /error and /init/error). */
static long post_json(runtime_t *rt, const char *url, const char *json, size_t len, const char *error_type,
                      const char *request_id)
{
    body_t answer = {.limit = POST_ANSWER_MAX, .truncate = 1};
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    /* curl would send "Expect: 100-continue" above 1 MiB and wait for the go-ahead: a round trip for nothing. */
    headers = curl_slist_append(headers, "Expect:");
    if (error_type != NULL) {
        char line[160];
        snprintf(line, sizeof(line), "Lambda-Runtime-Function-Error-Type: %s", error_type);
        headers = curl_slist_append(headers, line);
    }
    if (headers == NULL)
        abort();
    request_setup(rt, url);
    curl_easy_setopt(rt->curl, CURLOPT_POST, 1L);
    curl_easy_setopt(rt->curl, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(rt->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(rt->curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(rt->curl, CURLOPT_TIMEOUT_MS, POST_TIMEOUT_MS);
    curl_easy_setopt(rt->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(rt->curl, CURLOPT_WRITEDATA, &answer);
    CURLcode code = curl_easy_perform(rt->curl);
    long status = -1;
    if (code == CURLE_OK) {
        curl_easy_getinfo(rt->curl, CURLINFO_RESPONSE_CODE, &status);
        if (status != 202)
            fm_log(FM_LOG_ERROR, request_id, "lambda: POST %s answered %ld: %s", url, status,
                   answer.data != NULL ? answer.data : "");
    } else {
        fm_log(FM_LOG_ERROR, request_id, "lambda: POST %s failed: %s", url, curl_reason(rt, code));
    }
    curl_slist_free_all(headers);
    free(answer.data);
    return status;
}

/* An error type goes into a header and Lambda shows it as is: a dotted token ("Files.ProcessingError") only. */
static const char *error_type_or_default(const char *type)
{
    if (type == NULL || *type == '\0' || strlen(type) > 100)
        return FM_LAMBDA_ERROR_PROCESSING;
    for (const char *c = type; *c != '\0'; c++)
        if (!isalnum((unsigned char)*c) && *c != '.' && *c != '_' && *c != '-')
            return FM_LAMBDA_ERROR_PROCESSING;
    return type;
}

/* The error document of /error and /init/error: {"errorMessage","errorType","stackTrace":[]}. */
static long post_error(runtime_t *rt, const char *url, const char *request_id, const char *type, const char *message)
{
    type = error_type_or_default(type);
    cJSON *doc = cJSON_CreateObject();
    if (doc == NULL || cJSON_AddStringToObject(doc, "errorMessage", message != NULL ? message : "") == NULL ||
        cJSON_AddStringToObject(doc, "errorType", type) == NULL || cJSON_AddArrayToObject(doc, "stackTrace") == NULL)
        abort();
    char *json = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    if (json == NULL)
        abort();
    long status = post_json(rt, url, json, strlen(json), type, request_id);
    cJSON_free(json);
    return status;
}

/* Runs the handler on one taken event and posts its answer. Returns the status of the POST (or -1). */
static long answer_invocation(runtime_t *rt, const invocation_headers_t *h, const body_t *event,
                              fm_lambda_handler_fn handler, void *ud)
{
    const char *rid = h->request_id;
    char url[sizeof(rt->base) + FM_LAMBDA_REQUEST_ID_MAX + 32];
    if (event->too_large) {
        snprintf(url, sizeof(url), "%s/invocation/%s/error", rt->base, rid);
        fm_log(FM_LOG_ERROR, rid, "lambda: event payload over %d bytes, not handled", FM_LAMBDA_MAX_PAYLOAD);
        return post_error(rt, url, rid, "Files.PayloadTooLarge", "the event payload is over 6 MB");
    }

    long long deadline_ms = parse_deadline(h->deadline_ms);
    if (deadline_ms == 0)
        fm_log(FM_LOG_WARN, rid, "lambda: Lambda-Runtime-Deadline-Ms missing or malformed (\"%s\")", h->deadline_ms);
    fm_log(FM_LOG_DEBUG, rid, "lambda: invocation of %s, %zu bytes, %lld ms left", h->function_arn, event->len,
           deadline_ms != 0 ? deadline_ms - now_ms() : -1);

    char *response = NULL, *error_message = NULL, error_type[128] = "";
    long long started = now_ms();
    int rc = handler(ud, rid, event->data != NULL ? event->data : "", event->len, deadline_ms, &response, error_type,
                     sizeof(error_type), &error_message);
    error_type[sizeof(error_type) - 1] = '\0';
    long status;
    if (rc == 0 && response != NULL && strlen(response) > FM_LAMBDA_MAX_PAYLOAD) {
        snprintf(url, sizeof(url), "%s/invocation/%s/error", rt->base, rid);
        fm_log(FM_LOG_ERROR, rid, "lambda: response of %zu bytes is over the 6 MB limit", strlen(response));
        status = post_error(rt, url, rid, "Files.ResponseTooLarge", "the response is over 6 MB");
    } else if (rc == 0) {
        snprintf(url, sizeof(url), "%s/invocation/%s/response", rt->base, rid);
        const char *json = response != NULL ? response : "null";
        status = post_json(rt, url, json, strlen(json), NULL, rid);
        fm_log(FM_LOG_INFO, rid, "lambda: invocation answered in %lld ms", now_ms() - started);
    } else {
        snprintf(url, sizeof(url), "%s/invocation/%s/error", rt->base, rid);
        const char *message = error_message != NULL ? error_message : "the handler failed without a message";
        fm_log(FM_LOG_WARN, rid, "lambda: invocation failed (%s): %s", error_type_or_default(error_type), message);
        status = post_error(rt, url, rid, error_type, message);
    }
    free(response);
    free(error_message);
    return status;
}

/* Takes one event and answers it. Returns 0 to go on, 1 when a stop signal came, -1 when the runtime API is
 * unusable. */
static int invoke_once(runtime_t *rt, fm_lambda_handler_fn handler, void *ud)
{
    body_t event = {.limit = FM_LAMBDA_MAX_PAYLOAD};
    invocation_headers_t headers = {0};
    long status = 0;
    int rc = stop_pending() ? 1 : get_next(rt, &event, &headers, &status);
    if (rc != 0) /* 1: a stop signal, -1: the runtime API unreachable; fm_lambda_run tells them apart */
        goto out;
    rc = -1;
    if (status != 200) {
        fm_error("lambda: GET /invocation/next answered %ld: %.300s", status, event.data != NULL ? event.data : "");
        goto out;
    }
    rc = 0;
    if (!headers.request_id_seen || headers.request_id_bad) {
        /* Nothing can be posted without the id; Lambda times the invocation out and retries it. */
        fm_error("lambda: /next answered without a usable Lambda-Runtime-Aws-Request-Id (%s); event dropped",
                 headers.request_id_seen ? "malformed" : "missing");
        goto out;
    }
    /* X-Ray: the SDKs read the trace header of the current invocation from this variable. */
    if (headers.trace_seen && !headers.trace_bad && headers.trace_id[0] != '\0')
        setenv("_X_AMZN_TRACE_ID", headers.trace_id, 1);
    else
        unsetenv("_X_AMZN_TRACE_ID");

    long answered = answer_invocation(rt, &headers, &event, handler, ud);
    if (answered == 500) {
        fm_log(FM_LOG_ERROR, headers.request_id, "lambda: the runtime API is in an unrecoverable state, exiting");
        rc = -1;
    }
out:
    free(event.data);
    return rc;
}

static int runtime_open(runtime_t *rt, const char *runtime_api)
{
    memset(rt, 0, sizeof(*rt));
    if (runtime_api == NULL || *runtime_api == '\0' || strlen(runtime_api) > 256 ||
        strpbrk(runtime_api, "/?#@ \t\r\n") != NULL) {
        fm_error("lambda: AWS_LAMBDA_RUNTIME_API must be host:port, got \"%.300s\"",
                 runtime_api != NULL ? runtime_api : "");
        return -1;
    }
    if (fm_s3_global_init() != 0 || (rt->curl = curl_easy_init()) == NULL) {
        fm_error("lambda: libcurl could not be initialised");
        return -1;
    }
    snprintf(rt->base, sizeof(rt->base), "http://%s/" API_VERSION "/runtime", runtime_api);
    return 0;
}

int fm_lambda_run(const char *runtime_api, fm_lambda_handler_fn handler, void *ud,
                  int (*init)(void *ud, char *err, size_t err_size), int max_invocations)
{
    runtime_t rt;
    if (handler == NULL || runtime_open(&rt, runtime_api) != 0)
        return -1;
    int rc = 0;
    if (init != NULL) {
        char err[1024] = "";
        if (init(ud, err, sizeof(err)) != 0) {
            if (err[0] == '\0')
                snprintf(err, sizeof(err), "initialisation failed");
            fm_error("lambda: init failed: %s", err);
            char url[sizeof(rt.base) + 16];
            snprintf(url, sizeof(url), "%s/init/error", rt.base);
            post_error(&rt, url, NULL, FM_LAMBDA_ERROR_INIT, err);
            rc = -1;
        }
    }
    for (int taken = 0; rc == 0 && (max_invocations <= 0 || taken < max_invocations); taken++)
        rc = invoke_once(&rt, handler, ud);
    if (rc == 1) {
        fm_info("lambda: stop signal: no more invocations taken; exiting");
        rc = 0;
    }
    curl_easy_cleanup(rt.curl);
    return rc;
}

/* --- S3 events ----------------------------------------------------------------------------------------- */

int fm_lambda_s3_records(const char *payload, size_t len, fm_lambda_s3_record_fn on_record, void *ud, char *err,
                         size_t err_size)
{
    if (err != NULL && err_size > 0)
        err[0] = '\0';
    if (payload == NULL || on_record == NULL) {
        if (err != NULL && err_size > 0)
            snprintf(err, err_size, "no payload");
        return -1;
    }
    /* S3 sends one record per Lambda event; room for the parser's whole batch anyway (about 2 MB). */
    fm_s3event_record_t *records = malloc(sizeof(*records) * FM_S3EVENT_MAX_RECORDS);
    if (records == NULL)
        abort();
    size_t count = 0;
    int rc = fm_s3event_parse(payload, len, records, FM_S3EVENT_MAX_RECORDS, &count, err, err_size);
    for (size_t i = 0; rc == 0 && i < count; i++) {
        char record_err[512] = "";
        if (on_record(ud, &records[i], i, record_err, sizeof(record_err)) != 0) {
            if (err != NULL && err_size > 0)
                snprintf(err, err_size, "record %zu (s3://%s/%.*s): %s", i, records[i].bucket,
                         (int)min_size(records[i].key_len, 300), records[i].key,
                         record_err[0] != '\0' ? record_err : "processing failed");
            rc = -1;
        }
    }
    free(records);
    return rc;
}
