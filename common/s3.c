/*
 * s3: blocking S3 calls on libcurl, signed by sigv4.c (see s3.h for the threading rules).
 *
 * Each call has one shape: sign (fm_sigv4_sign_headers) -> send (fm_s3_perform) -> read the answer (status, the few
 * headers we use, S3's XML error). The curl handle is reset between calls but kept, so its connection cache
 * gives keep-alive to the store.
 *
 * The calls are in s3_calls.c, the XML they read and write in s3_xml.c; s3_internal.h is what the three share.
 */
#include "s3.h"
#include "config.h"
#include "s3_internal.h"

#include "sigv4.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#define DEFAULT_CONNECT_TIMEOUT_MS 3000
#define DEFAULT_TIMEOUT_MS 30000
/* A streamed GET has no whole-request timeout: it fails when it moves under this many bytes a second for the
 * client's timeout_ms, so a GB object on a slow link completes and a stalled one does not hang a worker. */
#define STREAM_LOW_SPEED_BYTES 1024L

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init_once(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int fm_s3_global_init(void)
{
    pthread_once(&global_once, global_init_once);
    return global_rc == CURLE_OK ? 0 : -1;
}

__attribute__((format(printf, 3, 4))) static void set_text(char *out, size_t size, const char *fmt, ...)
{
    if (out == NULL || size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, size, fmt, ap);
    va_end(ap);
}

/* Copies at most size-1 bytes and always terminates (a truncated header is better than none in a log). */
static void copy_text(char *out, size_t size, const char *in, size_t len)
{
    if (len >= size)
        len = size - 1;
    memcpy(out, in, len);
    out[len] = '\0';
}

fm_s3_t *fm_s3_new(const fm_s3_config_t *cfg, char *err, size_t err_size)
{
    if (cfg == NULL || cfg->endpoint == NULL || cfg->bucket == NULL || *cfg->bucket == '\0') {
        set_text(err, err_size, "s3: endpoint and bucket are required");
        return NULL;
    }
    if (fm_s3_global_init() != 0) {
        set_text(err, err_size, "s3: curl_global_init failed");
        return NULL;
    }
    fm_sigv4_t *signer = fm_sigv4_new(cfg->access_key, cfg->secret_key, cfg->session_token,
                                      cfg->region != NULL ? cfg->region : "us-east-1", "s3");
    if (signer == NULL) {
        set_text(err, err_size, "s3: %s", fm_sigv4_last_error());
        return NULL;
    }
    fm_s3_t *s3 = calloc(1, sizeof(*s3));
    if (s3 == NULL)
        abort();
    s3->signer = signer;
    s3->bucket_name = strdup(cfg->bucket);
    if (s3->bucket_name == NULL)
        abort();
    if (cfg->virtual_hosted) {
        /* Virtual-hosted style: the bucket is the first label of the host, the path is just the key. */
        const char *sep = strstr(cfg->endpoint, "://");
        if (sep == NULL || strchr(cfg->bucket, '.') != NULL) {
            set_text(err, err_size, "s3: virtual-hosted style needs scheme://host and a bucket without '.'");
            fm_s3_free(s3);
            return NULL;
        }
        size_t n = strlen(cfg->endpoint) + strlen(cfg->bucket) + 2;
        s3->endpoint = malloc(n);
        if (s3->endpoint == NULL)
            abort();
        snprintf(s3->endpoint, n, "%.*s%s.%s", (int)(sep + 3 - cfg->endpoint), cfg->endpoint, cfg->bucket, sep + 3);
    } else {
        s3->endpoint = strdup(cfg->endpoint);
        s3->bucket = strdup(cfg->bucket);
        if (s3->endpoint == NULL || s3->bucket == NULL)
            abort();
    }
    /* Validate endpoint and bucket now rather than on the first call. */
    fm_sigv4_request_t probe = {.method = "HEAD", .endpoint = s3->endpoint, .bucket = s3->bucket};
    char *url = NULL;
    if (fm_sigv4_url(&probe, &url) != 0) {
        set_text(err, err_size, "s3: %s", fm_sigv4_last_error());
        fm_s3_free(s3);
        return NULL;
    }
    free(url);
    s3->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    s3->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    s3->body_limit = FM_S3_MAX_RESPONSE_BODY;
    s3->curl = curl_easy_init();
    if (s3->curl == NULL) {
        set_text(err, err_size, "s3: curl_easy_init failed");
        fm_s3_free(s3);
        return NULL;
    }
    return s3;
}

void fm_s3_free(fm_s3_t *s3)
{
    if (s3 == NULL)
        return;
    if (s3->curl != NULL)
        curl_easy_cleanup(s3->curl);
    fm_sigv4_free(s3->signer);
    free(s3->endpoint);
    free(s3->bucket);
    free(s3->bucket_name);
    free(s3->body);
    free(s3);
}

/* ---- one request ------------------------------------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    fm_s3_t *s3 = userdata;
    size_t n = size * nmemb;
    size_t keep = n;
    if (s3->body_len + keep > s3->body_limit) {
        keep = s3->body_limit - s3->body_len; /* the rest is read and dropped; error answers need only the start */
        s3->body_truncated = 1;
    }
    if (keep > 0) {
        char *body = realloc(s3->body, s3->body_len + keep + 1);
        if (body == NULL)
            abort();
        memcpy(body + s3->body_len, data, keep);
        s3->body = body;
        s3->body_len += keep;
        s3->body[s3->body_len] = '\0';
    }
    return n;
}

/* The write callback of a streamed GET: the status is known once curl hands over body bytes, so the first call
 * decides whether the body is the object (to the caller's sink) or an error document (kept like any answer). */
static void read_answer_headers(fm_s3_t *s3, fm_s3_result_t *res);

/* A 2xx answer of a streamed GET: the caller's headers function, once. Returns its verdict (0 = go on). */
static int announce(fm_s3_t *s3)
{
    if (s3->sink_headers == NULL)
        return 0;
    fm_s3_result_t head;
    memset(&head, 0, sizeof(head));
    head.content_length = -1;
    read_answer_headers(s3, &head);
    fm_s3_headers_fn headers = s3->sink_headers;
    s3->sink_headers = NULL;
    return headers(s3->sink_ud, &head);
}

static size_t on_stream(char *data, size_t size, size_t nmemb, void *userdata)
{
    fm_s3_t *s3 = userdata;
    size_t n = size * nmemb;
    if (!s3->sink_status_known) {
        long status = 0;
        curl_easy_getinfo(s3->curl, CURLINFO_RESPONSE_CODE, &status);
        s3->sink_status_known = 1;
        s3->sink_pass = status >= 200 && status < 300;
        if (s3->sink_pass && announce(s3) != 0) {
            s3->sink_aborted = 1;
            return 0;
        }
    }
    if (!s3->sink_pass)
        return on_body(data, size, nmemb, userdata);
    if (n > 0 && s3->sink(s3->sink_ud, data, n) != 0) {
        s3->sink_aborted = 1;
        return 0; /* anything but n: curl stops with CURLE_WRITE_ERROR */
    }
    return n;
}

static void response_header(fm_s3_t *s3, const char *name, char *out, size_t size)
{
    struct curl_header *h = NULL;
    if (curl_easy_header(s3->curl, name, 0, CURLH_HEADER, -1, &h) == CURLHE_OK && h != NULL && h->value != NULL)
        copy_text(out, size, h->value, strlen(h->value));
}

static struct curl_slist *append_line(struct curl_slist *list, const char *line)
{
    struct curl_slist *next = curl_slist_append(list, line); /* copies the line */
    if (next == NULL)
        abort();
    return next;
}

static struct curl_slist *add_header(struct curl_slist *list, const char *name, const char *value)
{
    size_t name_len = strlen(name), value_len = strlen(value);
    char *line = malloc(name_len + value_len + 3);
    if (line == NULL)
        abort();
    memcpy(line, name, name_len);
    memcpy(line + name_len, ": ", 2);
    memcpy(line + name_len + 2, value, value_len + 1);
    struct curl_slist *next = append_line(list, line);
    free(line);
    return next;
}

static void fail_transport(fm_s3_result_t *res, CURLcode rc, const char *detail)
{
    res->status = 0;
    const char *code = rc == CURLE_OPERATION_TIMEDOUT                                    ? "Timeout"
                       : rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ? "ConnectFailed"
                                                                                         : "NetworkError";
    copy_text(res->code, sizeof(res->code), code, strlen(code));
    set_text(res->message, sizeof(res->message), "%s", detail[0] != '\0' ? detail : curl_easy_strerror(rc));
}

/* An answer without S3's XML error (HEAD has no body): name the status instead. */
static const char *status_code_name(long status)
{
    return status == 404 ? "NotFound" : status == 403 ? "Forbidden" : "HttpError";
}

/* Fills res->code/message/request_id from S3's <Error> document in s3->body (or from the status without one). */
void fm_s3_read_error_document(fm_s3_t *s3, fm_s3_result_t *res)
{
    /* The object fields describe an error document here, not an object: clear them so nobody uses them. */
    res->etag[0] = res->content_type[0] = '\0';
    res->content_length = -1;
    if (s3->body == NULL || fm_s3_xml_text(s3->body, s3->body_len, "Code", res->code, sizeof(res->code)) != 0 ||
        res->code[0] == '\0') {
        const char *name = status_code_name(res->status);
        copy_text(res->code, sizeof(res->code), name, strlen(name));
    }
    /* RGW sends no <Message>: fall back to the status and code, so logs still say something. */
    if (s3->body == NULL ||
        fm_s3_xml_text(s3->body, s3->body_len, "Message", res->message, sizeof(res->message)) != 0 ||
        res->message[0] == '\0')
        set_text(res->message, sizeof(res->message), "S3 answered HTTP %ld %s", res->status, res->code);
    if (res->request_id[0] == '\0' && s3->body != NULL)
        fm_s3_xml_text(s3->body, s3->body_len, "RequestId", res->request_id, sizeof(res->request_id));
}

/* Status and the headers a result reports, from the answer just received. */
static void read_answer_headers(fm_s3_t *s3, fm_s3_result_t *res)
{
    curl_easy_getinfo(s3->curl, CURLINFO_RESPONSE_CODE, &res->status);
    response_header(s3, "x-amz-request-id", res->request_id, sizeof(res->request_id));
    response_header(s3, "ETag", res->etag, sizeof(res->etag));
    response_header(s3, "Content-Type", res->content_type, sizeof(res->content_type));
    char length[32] = "";
    response_header(s3, "Content-Length", length, sizeof(length));
    if (length[0] != '\0' && strspn(length, "0123456789") == strlen(length) && strlen(length) <= 18)
        res->content_length = strtoll(length, NULL, 10);
}

/*
 * Signs and sends one request; `headers` are extra signed headers, sent as given. Returns 0 on a 2xx answer,
 * else -1 with res->code/message set. s3->body holds the answer's body.
 */
int fm_s3_perform(fm_s3_t *s3, const char *method, const char *key, const fm_sigv4_param_t *params, size_t param_count,
                  const fm_sigv4_header_t *headers, size_t header_count, const void *body, size_t body_len,
                  fm_s3_result_t *res)
{
    memset(res, 0, sizeof(*res));
    res->content_length = -1;
    free(s3->body);
    s3->body = NULL;
    s3->body_len = 0;
    s3->body_truncated = 0;
    s3->sink_status_known = s3->sink_pass = s3->sink_aborted = 0;

    fm_sigv4_request_t req = {.method = method,
                              .endpoint = s3->endpoint,
                              .bucket = s3->bucket,
                              .key = key,
                              .params = params,
                              .param_count = param_count,
                              .headers = headers,
                              .header_count = header_count};
    char payload_hash[65];
    fm_sigv4_sha256_hex(body != NULL ? body : "", body != NULL ? body_len : 0, payload_hash);
    fm_sigv4_auth_t auth;
    char *url = NULL;
    if (fm_sigv4_sign_headers(s3->signer, &req, payload_hash, time(NULL), &auth) != 0 ||
        fm_sigv4_url(&req, &url) != 0) {
        strcpy(res->code, "InvalidArgument");
        set_text(res->message, sizeof(res->message), "%s", fm_sigv4_last_error());
        return -1;
    }

    /* Host is set to exactly what was signed; "Expect:" stops curl's 100-continue round trip on larger bodies. */
    struct curl_slist *list = NULL;
    list = add_header(list, "Host", auth.host);
    list = add_header(list, "Authorization", auth.authorization);
    list = add_header(list, "x-amz-date", auth.amz_date);
    list = add_header(list, "x-amz-content-sha256", auth.content_sha256);
    if (auth.security_token != NULL)
        list = add_header(list, "x-amz-security-token", auth.security_token);
    int has_content_type = 0;
    for (size_t i = 0; i < header_count; i++) {
        list = add_header(list, headers[i].name, headers[i].value);
        has_content_type |= strcasecmp(headers[i].name, "content-type") == 0;
    }
    list = append_line(list, "Expect:");
    /* Without this, curl labels a PUT/POST body application/x-www-form-urlencoded, and S3 would keep that. */
    if (!has_content_type)
        list = append_line(list, "Content-Type:");

    CURL *c = s3->curl;
    curl_easy_reset(c); /* options only: the connection cache (keep-alive) survives */
    s3->curl_error[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* timeouts without SIGALRM: we run on pool threads */
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, s3->connect_timeout_ms);
    if (s3->sink != NULL) {
        long stall_s = (s3->timeout_ms + 999) / 1000;
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, STREAM_LOW_SPEED_BYTES);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, stall_s);
    } else {
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, s3->timeout_ms);
    }
    /* S3 keys are not normalised: "a/../b" must reach the store as signed. */
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, s3->curl_error);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s3->sink != NULL ? on_stream : on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s3);
    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "PUT") == 0 || strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body != NULL ? body_len : 0));
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body != NULL ? (const char *)body : "");
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    }

    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(list);
    free(url);
    if (rc == CURLE_WRITE_ERROR && s3->sink_aborted) {
        /* The caller stopped a 2xx body: the answer's headers are there (its size tells it how much it refused). */
        read_answer_headers(s3, res);
        strcpy(res->code, "Aborted");
        set_text(res->message, sizeof(res->message), "the write function stopped the transfer");
        return -1;
    }
    if (rc != CURLE_OK) {
        fail_transport(res, rc, s3->curl_error);
        return -1;
    }
    read_answer_headers(s3, res);
    if (res->status >= 200 && res->status < 300) {
        if (s3->sink != NULL && !s3->sink_status_known && announce(s3) != 0) { /* an empty object: no body call */
            strcpy(res->code, "Aborted");
            set_text(res->message, sizeof(res->message), "the headers function stopped the transfer");
            return -1;
        }
        return 0;
    }
    fm_s3_read_error_document(s3, res);
    return -1;
}

fm_s3_config_t fm_s3_config_from(const struct fm_config *cfg, long connect_timeout_ms, long timeout_ms)
{
    return (fm_s3_config_t){
        .endpoint = cfg->s3_endpoint,
        .region = cfg->s3_region,
        .bucket = cfg->s3_bucket,
        .access_key = cfg->s3_access_key,
        .secret_key = cfg->s3_secret_key,
        .session_token = cfg->s3_session_token,
        .connect_timeout_ms = connect_timeout_ms,
        .timeout_ms = timeout_ms,
    };
}
