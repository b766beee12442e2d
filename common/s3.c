/*
 * s3: blocking S3 calls on libcurl, signed by sigv4.c (see s3.h for the threading rules).
 *
 * Each call has one shape: sign (fm_sigv4_sign_headers) -> send (perform) -> read the answer (status, the few
 * headers we use, S3's XML error). The curl handle is reset between calls but kept, so its connection cache
 * gives keep-alive to the store.
 */
#include "s3.h"

#include "sigv4.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#define DEFAULT_CONNECT_TIMEOUT_MS 3000
#define DEFAULT_TIMEOUT_MS 30000
/* S3 answers we read (errors, InitiateMultipartUploadResult) are well under a few KiB. */
#define MAX_RESPONSE_BODY (64 * 1024)
/* A ListParts page of LIST_PARTS_PAGE parts is ~200 bytes a part on AWS and RGW: room for four times that. */
#define LIST_PARTS_PAGE 1000
#define MAX_LIST_PARTS_BODY (1024 * 1024)
/* A streamed GET has no whole-request timeout: it fails when it moves under this many bytes a second for the
 * client's timeout_ms, so a GB object on a slow link completes and a stalled one does not hang a worker. */
#define STREAM_LOW_SPEED_BYTES 1024L

struct fm_s3 {
    fm_sigv4_t *signer;
    char *endpoint; /* as signed: with the bucket in the host name when virtual-hosted */
    char *bucket;   /* path-style bucket, NULL when virtual-hosted */
    long connect_timeout_ms, timeout_ms;
    /* The bucket in both styles (x-amz-copy-source names it). */
    char *bucket_name;
    CURL *curl;
    char curl_error[CURL_ERROR_SIZE];
    char *body; /* the last answer's body, at most body_limit bytes */
    size_t body_len;
    size_t body_limit;  /* MAX_RESPONSE_BODY but while a call that reads larger answers runs */
    int body_truncated; /* the answer was longer than body_limit: its end was dropped */
    /* A streamed GET (fm_s3_get_object) while `sink` is set: a 2xx body goes to sink, any other to `body`. */
    fm_s3_write_fn sink;
    fm_s3_headers_fn sink_headers; /* fm_s3_get_object_announced: told the 2xx answer before its body */
    void *sink_ud;
    int sink_status_known; /* the answer's status was looked at, on its first body bytes */
    int sink_pass;         /* ... and it is 2xx: the body is the object's */
    int sink_aborted;      /* the sink returned non-zero */
};

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
    s3->body_limit = MAX_RESPONSE_BODY;
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

/* ---- minimal XML ------------------------------------------------------------------------------------------- */

/* Appends code point `cp` as UTF-8; returns bytes written or 0 if it does not fit or is not a scalar value. */
static size_t put_utf8(char *out, size_t room, unsigned long cp)
{
    unsigned char b[4];
    size_t n;
    if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
        return 0;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | (cp >> 18));
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    if (n > room)
        return 0;
    memcpy(out, b, n);
    return n;
}

static const char *find_bytes(const char *hay, size_t hay_len, const char *needle, size_t needle_len)
{
    if (needle_len == 0 || needle_len > hay_len)
        return NULL;
    for (size_t i = 0; i + needle_len <= hay_len; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, needle_len) == 0)
            return hay + i;
    return NULL;
}

/* The first complete <tag>…</tag> at or after `from`: its content is [*start, *end), *after follows the end tag. */
static int find_element(const char *xml, size_t len, const char *tag, size_t from, const char **start, const char **end,
                        size_t *after)
{
    char open[80], close[80];
    int open_len = snprintf(open, sizeof(open), "<%s>", tag);
    int close_len = snprintf(close, sizeof(close), "</%s>", tag);
    if (xml == NULL || tag == NULL || open_len <= 2 || (size_t)close_len >= sizeof(close) || from > len)
        return -1;
    const char *s = find_bytes(xml + from, len - from, open, (size_t)open_len);
    if (s == NULL)
        return -1;
    s += open_len;
    const char *e = find_bytes(s, len - (size_t)(s - xml), close, (size_t)close_len);
    if (e == NULL)
        return -1;
    *start = s;
    *end = e;
    *after = (size_t)(e - xml) + (size_t)close_len;
    return 0;
}

int fm_s3_xml_next(const char *xml, size_t len, const char *tag, size_t *offset, const char **inner, size_t *inner_len)
{
    const char *start, *end;
    size_t after;
    if (offset == NULL || find_element(xml, len, tag, *offset, &start, &end, &after) != 0)
        return -1;
    *inner = start;
    *inner_len = (size_t)(end - start);
    *offset = after;
    return 0;
}

int fm_s3_xml_text(const char *xml, size_t len, const char *tag, char *out, size_t out_size)
{
    if (out_size == 0)
        return -1;
    out[0] = '\0';
    const char *start, *end;
    size_t after;
    if (find_element(xml, len, tag, 0, &start, &end, &after) != 0)
        return -1;
    static const struct {
        const char *name;
        char c;
    } entities[] = {{"amp;", '&'}, {"lt;", '<'}, {"gt;", '>'}, {"quot;", '"'}, {"apos;", '\''}};
    size_t o = 0;
    for (const char *p = start; p < end;) {
        size_t room = out_size - 1 - o;
        if (*p == '&') {
            size_t rest = (size_t)(end - p - 1);
            int done = 0;
            for (size_t i = 0; i < sizeof(entities) / sizeof(entities[0]) && !done; i++) {
                size_t n = strlen(entities[i].name);
                if (n <= rest && memcmp(p + 1, entities[i].name, n) == 0) {
                    if (room < 1)
                        goto too_long;
                    out[o++] = entities[i].c;
                    p += 1 + n;
                    done = 1;
                }
            }
            if (!done && rest >= 3 && p[1] == '#') {
                /* &#NNN; or &#xHHH; character reference */
                int hex = p[2] == 'x' || p[2] == 'X';
                const char *q = p + 2 + hex;
                unsigned long cp = 0;
                size_t digits = 0;
                for (; q < end && *q != ';' && digits < 8; q++, digits++) {
                    int d = (*q >= '0' && *q <= '9')          ? *q - '0'
                            : hex && (*q >= 'a' && *q <= 'f') ? *q - 'a' + 10
                            : hex && (*q >= 'A' && *q <= 'F') ? *q - 'A' + 10
                                                              : -1;
                    if (d < 0)
                        break;
                    cp = cp * (hex ? 16 : 10) + (unsigned long)d;
                }
                if (digits > 0 && q < end && *q == ';') {
                    size_t n = put_utf8(out + o, room, cp);
                    if (n == 0)
                        goto too_long;
                    o += n;
                    p = q + 1;
                    done = 1;
                }
            }
            if (done)
                continue;
        }
        if (room < 1)
            goto too_long;
        out[o++] = *p++;
    }
    out[o] = '\0';
    return 0;
too_long:
    out[0] = '\0';
    return -1;
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
static void read_error_document(fm_s3_t *s3, fm_s3_result_t *res)
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
static int perform(fm_s3_t *s3, const char *method, const char *key, const fm_sigv4_param_t *params, size_t param_count,
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
    read_error_document(s3, res);
    return -1;
}

/* A call refused before anything is sent: "InvalidArgument" and why. */
__attribute__((format(printf, 2, 3))) static int refuse(fm_s3_result_t *res, const char *fmt, ...)
{
    memset(res, 0, sizeof(*res));
    res->content_length = -1;
    strcpy(res->code, "InvalidArgument");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof(res->message), fmt, ap);
    va_end(ap);
    return -1;
}

static int need_key(const char *key, fm_s3_result_t *res)
{
    if (key != NULL && *key != '\0')
        return 0;
    return refuse(res, "an object key is required");
}

static int need_upload(const char *key, const char *upload_id, fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    if (upload_id == NULL || *upload_id == '\0')
        return refuse(res, "an upload id is required");
    return 0;
}

/* A 2xx answer that is not what the call needs. */
__attribute__((format(printf, 2, 3))) static int invalid_response(fm_s3_result_t *res, const char *fmt, ...)
{
    strcpy(res->code, "InvalidResponse");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof(res->message), fmt, ap);
    va_end(ap);
    res->etag[0] = res->content_type[0] = '\0';
    res->content_length = -1;
    return -1;
}

/* ---- the calls --------------------------------------------------------------------------------------------- */

int fm_s3_head_bucket(fm_s3_t *s3, fm_s3_result_t *res)
{
    return perform(s3, "HEAD", NULL, NULL, 0, NULL, 0, NULL, 0, res);
}

int fm_s3_head_object(fm_s3_t *s3, const char *key, fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    return perform(s3, "HEAD", key, NULL, 0, NULL, 0, NULL, 0, res);
}

int fm_s3_put_object(fm_s3_t *s3, const char *key, const void *data, size_t len, const char *content_type,
                     fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    /* Content-MD5 (RFC 1864, base64 of the MD5): the store checks the body and answers BadDigest if it differs. */
    unsigned char md5[16];
    unsigned int md5_len = 0;
    if (EVP_Digest(data != NULL ? data : "", data != NULL ? len : 0, md5, &md5_len, EVP_md5(), NULL) != 1)
        abort();
    char md5_b64[32];
    EVP_EncodeBlock((unsigned char *)md5_b64, md5, 16);
    fm_sigv4_header_t headers[2] = {{"Content-MD5", md5_b64}, {"Content-Type", content_type}};
    size_t header_count = content_type != NULL && *content_type != '\0' ? 2 : 1;
    return perform(s3, "PUT", key, NULL, 0, headers, header_count, data != NULL ? data : "", len, res);
}

int fm_s3_delete_object(fm_s3_t *s3, const char *key, fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    return perform(s3, "DELETE", key, NULL, 0, NULL, 0, NULL, 0, res);
}

int fm_s3_create_multipart(fm_s3_t *s3, const char *key, const char *content_type, fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    fm_sigv4_param_t params[1] = {{"uploads", ""}};
    fm_sigv4_header_t headers[1] = {{"Content-Type", content_type}};
    size_t header_count = content_type != NULL && *content_type != '\0' ? 1 : 0;
    if (perform(s3, "POST", key, params, 1, headers, header_count, "", 0, res) != 0)
        return -1;
    if (s3->body == NULL ||
        fm_s3_xml_text(s3->body, s3->body_len, "UploadId", res->upload_id, sizeof(res->upload_id)) != 0 ||
        res->upload_id[0] == '\0')
        return invalid_response(res, "CreateMultipartUpload answered without an UploadId");
    return 0;
}

int fm_s3_abort_multipart(fm_s3_t *s3, const char *key, const char *upload_id, fm_s3_result_t *res)
{
    if (need_upload(key, upload_id, res) != 0)
        return -1;
    fm_sigv4_param_t params[1] = {{"uploadId", upload_id}};
    return perform(s3, "DELETE", key, params, 1, NULL, 0, NULL, 0, res);
}

/* ---- multipart: list parts, complete ----------------------------------------------------------------------- */

static int body_has(const fm_s3_t *s3, const char *text)
{
    return s3->body != NULL && find_bytes(s3->body, s3->body_len, text, strlen(text)) != NULL;
}

/* A decimal number of 1..max_digits digits and nothing else, as S3 writes them; -1 if not. */
static long long parse_count(const char *text, size_t max_digits)
{
    size_t n = strlen(text);
    if (n == 0 || n > max_digits || strspn(text, "0123456789") != n)
        return -1;
    return strtoll(text, NULL, 10);
}

/*
 * Appends the <Part> elements of one ListParts page to parts[*count..max_parts). They must be ascending and above
 * `marker` (the page asked for parts after it). Returns 0, or -1 with res->code set.
 */
static int read_parts_page(const char *xml, size_t len, int marker, fm_s3_part_t *parts, size_t max_parts,
                           size_t *count, fm_s3_result_t *res)
{
    int last = marker;
    size_t offset = 0;
    const char *inner;
    size_t inner_len;
    while (fm_s3_xml_next(xml, len, "Part", &offset, &inner, &inner_len) == 0) {
        char number[16], size[32];
        fm_s3_part_t part;
        if (fm_s3_xml_text(inner, inner_len, "PartNumber", number, sizeof(number)) != 0 ||
            fm_s3_xml_text(inner, inner_len, "Size", size, sizeof(size)) != 0 ||
            fm_s3_xml_text(inner, inner_len, "ETag", part.etag, sizeof(part.etag)) != 0)
            return invalid_response(res, "ListParts: a <Part> without PartNumber, Size or a short ETag");
        long long part_number = parse_count(number, 5);
        part.size = parse_count(size, 18);
        if (part_number < 1 || part_number > FM_S3_MAX_PARTS || part.size < 0)
            return invalid_response(res, "ListParts: bad part number '%s' or size '%s'", number, size);
        part.part_number = (int)part_number;
        if (part.part_number <= last)
            return invalid_response(res, "ListParts: part %d listed after part %d", part.part_number, last);
        last = part.part_number;
        if (*count >= max_parts) {
            strcpy(res->code, "TooManyParts");
            snprintf(res->message, sizeof(res->message), "the upload has more than the %zu parts asked for", max_parts);
            return -1;
        }
        parts[(*count)++] = part;
    }
    return 0;
}

int fm_s3_list_parts(fm_s3_t *s3, const char *key, const char *upload_id, fm_s3_part_t *parts, size_t max_parts,
                     size_t *count, fm_s3_result_t *res)
{
    if (count != NULL)
        *count = 0;
    if (need_upload(key, upload_id, res) != 0)
        return -1;
    if (parts == NULL || count == NULL || max_parts == 0)
        return refuse(res, "no room for parts");
    int marker = 0;
    char page_size[16], marker_text[16];
    snprintf(page_size, sizeof(page_size), "%d", LIST_PARTS_PAGE);
    /* Every page must move the marker forward and markers stop at 10000: at most 10000 pages, however it answers. */
    for (;;) {
        snprintf(marker_text, sizeof(marker_text), "%d", marker);
        fm_sigv4_param_t params[3] = {
            {"uploadId", upload_id}, {"max-parts", page_size}, {"part-number-marker", marker_text}};
        s3->body_limit = MAX_LIST_PARTS_BODY;
        int rc = perform(s3, "GET", key, params, marker > 0 ? 3 : 2, NULL, 0, NULL, 0, res);
        s3->body_limit = MAX_RESPONSE_BODY;
        if (rc != 0)
            break;
        /* A cut page would silently lose the parts after the cut, and IsTruncated with them. */
        if (s3->body == NULL || s3->body_truncated || !body_has(s3, "</ListPartsResult>")) {
            invalid_response(res, "ListParts: the answer is not a whole ListPartsResult");
            break;
        }
        if (read_parts_page(s3->body, s3->body_len, marker, parts, max_parts, count, res) != 0)
            break;
        char truncated[16] = "", next[16] = "";
        fm_s3_xml_text(s3->body, s3->body_len, "IsTruncated", truncated, sizeof(truncated));
        if (strcmp(truncated, "true") != 0)
            return 0;
        long long next_marker = -1;
        if (fm_s3_xml_text(s3->body, s3->body_len, "NextPartNumberMarker", next, sizeof(next)) == 0)
            next_marker = parse_count(next, 5);
        if (next_marker <= marker || next_marker >= FM_S3_MAX_PARTS ||
            (*count > 0 && next_marker < parts[*count - 1].part_number)) {
            invalid_response(res, "ListParts: truncated page with NextPartNumberMarker '%s' after %d", next, marker);
            break;
        }
        marker = (int)next_marker;
    }
    *count = 0;
    return -1;
}

/* ---- ListObjectsV2 ----------------------------------------------------------------------------------------- */

/* A page of FM_S3_LIST_MAX_KEYS keys URL-encoded at their longest (3 x 1024 bytes) with RGW's ~350 bytes a <Contents>
 * fits in 4 MiB. */
#define MAX_LIST_OBJECTS_BODY (4 * 1024 * 1024)
/* Room for a <Key>'s text once its XML entities are undone: a URL-encoded key of 1024 bytes takes 3 bytes a byte. */
#define KEY_TEXT_MAX (3 * (FM_S3_KEY_MAX - 1) + 1)

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static long long days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

/* `n` decimal digits at `p`; -1 if one is not a digit. */
static int digits(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* ISO 8601 as S3 writes <LastModified>: "YYYY-MM-DDTHH:MM:SS[.fff]Z" (UTC), to Unix seconds; -1 if it is not one. */
static long long parse_iso8601(const char *text)
{
    static const unsigned char month_days[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    size_t n = strlen(text);
    if (n < 20 || text[4] != '-' || text[7] != '-' || text[10] != 'T' || text[13] != ':' || text[16] != ':' ||
        text[n - 1] != 'Z')
        return -1;
    if (n > 20 && (text[19] != '.' || n == 21 || n > 30 || strspn(text + 20, "0123456789") != n - 21))
        return -1;
    int year = digits(text, 4), month = digits(text + 5, 2), day = digits(text + 8, 2);
    int hour = digits(text + 11, 2), minute = digits(text + 14, 2), second = digits(text + 17, 2);
    if (year < 1970 || month < 1 || month > 12 || day < 1 || day > month_days[month - 1] || hour > 23 || minute > 59 ||
        second > 60 || hour < 0 || minute < 0 || second < 0)
        return -1;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (month == 2 && day == 29 && !leap)
        return -1;
    return days_from_civil(year, (unsigned)month, (unsigned)day) * 86400 + hour * 3600 + minute * 60 + second;
}

static int hex_value(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Undoes encoding-type=url (S3 encodes as a form does: '+' is a space, a '+' in the key is %2B) into
 * out[FM_S3_KEY_MAX]; 0, or -1 for a bad escape, a NUL or a key over 1024 bytes. */
static int url_decode_key(const char *in, char *out)
{
    size_t o = 0;
    for (const char *p = in; *p != '\0'; p++) {
        int c = (unsigned char)*p;
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int hi = hex_value(p[1]), lo = hi < 0 ? -1 : hex_value(p[2]);
            if (lo < 0)
                return -1;
            c = hi * 16 + lo;
            p += 2;
        }
        if (c == 0 || o >= FM_S3_KEY_MAX - 1)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

/* Reads one <Contents> into `object`; 0, or -1 with res set. */
static int read_listed_object(const char *inner, size_t inner_len, int url_encoded, fm_s3_object_t *object,
                              fm_s3_result_t *res)
{
    char text[KEY_TEXT_MAX], size[32], date[40];
    /* A raw NUL would cut the key short and make it another key. */
    if (memchr(inner, '\0', inner_len) != NULL)
        return invalid_response(res, "ListObjectsV2: a NUL byte in a <Contents>");
    if (fm_s3_xml_text(inner, inner_len, "Key", text, sizeof(text)) != 0 ||
        fm_s3_xml_text(inner, inner_len, "Size", size, sizeof(size)) != 0 ||
        fm_s3_xml_text(inner, inner_len, "LastModified", date, sizeof(date)) != 0)
        return invalid_response(res, "ListObjectsV2: a <Contents> without Key, Size or LastModified, or too long");
    if (url_encoded) {
        if (url_decode_key(text, object->key) != 0)
            return invalid_response(res, "ListObjectsV2: a key that is not URL-encoded as asked");
    } else {
        size_t n = strlen(text);
        if (n >= FM_S3_KEY_MAX)
            return invalid_response(res, "ListObjectsV2: a key of %zu bytes", n);
        memcpy(object->key, text, n + 1);
    }
    if (object->key[0] == '\0')
        return invalid_response(res, "ListObjectsV2: an empty key");
    object->size = parse_count(size, 18);
    object->last_modified = parse_iso8601(date);
    if (object->size < 0 || object->last_modified < 0)
        return invalid_response(res, "ListObjectsV2: bad size '%s' or LastModified '%s'", size, date);
    return 0;
}

/* strcmp compares as unsigned char (C17 7.24.4): S3 lists keys in that (UTF-8 binary) order. */
int fm_s3_list_objects_parse(const char *xml, size_t len, const char *prefix, const char *start_after,
                             fm_s3_object_t *objects, size_t max, size_t *count, int *truncated, fm_s3_result_t *res)
{
    *count = 0;
    *truncated = 0;
    if (prefix == NULL)
        prefix = "";
    if (start_after == NULL)
        start_after = "";
    if (xml == NULL || find_bytes(xml, len, "</ListBucketResult>", 19) == NULL)
        return invalid_response(res, "ListObjectsV2: the answer is not a whole ListBucketResult");
    char encoding[16] = "", more[16] = "";
    size_t offset = 0, inner_len, found = 0;
    const char *inner;
    /* Present, it must say url (too long to read is not "absent": the keys would be taken as plain). */
    int url_encoded = fm_s3_xml_next(xml, len, "EncodingType", &offset, &inner, &inner_len) == 0;
    if (url_encoded &&
        (fm_s3_xml_text(xml, len, "EncodingType", encoding, sizeof(encoding)) != 0 || strcmp(encoding, "url") != 0))
        return invalid_response(res, "ListObjectsV2: EncodingType '%s' is not url", encoding);
    if (fm_s3_xml_text(xml, len, "IsTruncated", more, sizeof(more)) != 0 ||
        (strcmp(more, "true") != 0 && strcmp(more, "false") != 0))
        return invalid_response(res, "ListObjectsV2: IsTruncated is not true or false");
    size_t prefix_len = strlen(prefix);
    offset = 0;
    while (fm_s3_xml_next(xml, len, "Contents", &offset, &inner, &inner_len) == 0) {
        if (found >= max)
            return invalid_response(res, "ListObjectsV2: more than the %zu keys asked for", max);
        fm_s3_object_t *object = &objects[found];
        if (read_listed_object(inner, inner_len, url_encoded, object, res) != 0)
            return -1;
        const char *after = found > 0 ? objects[found - 1].key : start_after;
        if (strncmp(object->key, prefix, prefix_len) != 0 || strcmp(object->key, after) <= 0)
            return invalid_response(res, "ListObjectsV2: key %zu is outside the prefix or not after the previous",
                                    found);
        found++;
    }
    /* A truncated page must move the listing forward, or a broken store could keep us at one place forever. */
    if (strcmp(more, "true") == 0 && found == 0)
        return invalid_response(res, "ListObjectsV2: truncated page without a key");
    *count = found;
    *truncated = strcmp(more, "true") == 0;
    return 0;
}

int fm_s3_list_objects(fm_s3_t *s3, const char *prefix, const char *start_after, int max_keys, fm_s3_object_t *objects,
                       size_t max, size_t *count, int *truncated, fm_s3_result_t *res)
{
    if (count != NULL)
        *count = 0;
    if (truncated != NULL)
        *truncated = 0;
    if (objects == NULL || count == NULL || truncated == NULL || max_keys < 1 || max_keys > FM_S3_LIST_MAX_KEYS ||
        (size_t)max_keys > max)
        return refuse(res, "1 to %d keys, with room for them, are required", FM_S3_LIST_MAX_KEYS);
    if ((prefix != NULL && strlen(prefix) >= FM_S3_KEY_MAX) ||
        (start_after != NULL && strlen(start_after) >= FM_S3_KEY_MAX))
        return refuse(res, "a prefix or start-after longer than a key");
    char max_text[16];
    snprintf(max_text, sizeof(max_text), "%d", max_keys);
    fm_sigv4_param_t params[5] = {{"list-type", "2"},
                                  {"encoding-type", "url"},
                                  {"max-keys", max_text},
                                  {"prefix", prefix != NULL ? prefix : ""},
                                  {"start-after", start_after}};
    size_t param_count = start_after != NULL && *start_after != '\0' ? 5 : 4;
    s3->body_limit = MAX_LIST_OBJECTS_BODY;
    int rc = perform(s3, "GET", NULL, params, param_count, NULL, 0, NULL, 0, res);
    s3->body_limit = MAX_RESPONSE_BODY;
    if (rc != 0)
        return -1;
    /* A cut page would lose its last keys and IsTruncated with them. */
    if (s3->body == NULL || s3->body_truncated)
        return invalid_response(res, "ListObjectsV2: the answer is not a whole ListBucketResult");
    return fm_s3_list_objects_parse(s3->body, s3->body_len, prefix, start_after, objects, max, count, truncated, res);
}

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const char *text, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap > 0 ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *data = realloc(b->data, cap);
        if (data == NULL)
            abort();
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, text, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_str(buf_t *b, const char *text)
{
    buf_add(b, text, strlen(text));
}

/*
 * The ETag's opaque text without its quotes into out[FM_S3_ETAG_MAX]; 0, or -1 if it is not an RFC 7232
 * entity-tag: etagc = %x21 / %x23-7E / obs-text, so no space, quote or control character can reach the XML.
 */
static int etag_opaque(const char *etag, char *out)
{
    size_t n = strlen(etag);
    if (n >= 2 && etag[0] == '"' && etag[n - 1] == '"') {
        etag++;
        n -= 2;
    }
    if (n == 0 || n >= FM_S3_ETAG_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)etag[i];
        if (c < 0x21 || c == '"' || c == 0x7F)
            return -1;
    }
    memcpy(out, etag, n);
    out[n] = '\0';
    return 0;
}

/* Text for XML element content: the five special characters as entities. */
static void buf_xml_text(buf_t *b, const char *text)
{
    static const char specials[] = "&<>\"'";
    static const char *const entities[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};
    for (const char *p = text; *p != '\0'; p++) {
        const char *special = strchr(specials, *p);
        if (special != NULL)
            buf_str(b, entities[special - specials]);
        else
            buf_add(b, p, 1);
    }
}

int fm_s3_complete_multipart(fm_s3_t *s3, const char *key, const char *upload_id, const fm_s3_part_t *parts,
                             size_t count, fm_s3_result_t *res)
{
    if (need_upload(key, upload_id, res) != 0)
        return -1;
    if (parts == NULL || count == 0 || count > FM_S3_MAX_PARTS)
        return refuse(res, "1 to %d parts are required, not %zu", FM_S3_MAX_PARTS, parts == NULL ? 0 : count);
    /* S3 API reference, CompleteMultipartUpload: <Part><PartNumber/><ETag/></Part> per part, in the given order. */
    buf_t body = {0};
    buf_str(&body, "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (size_t i = 0; i < count; i++) {
        char opaque[FM_S3_ETAG_MAX], number[32];
        if (parts[i].part_number < 1 || parts[i].part_number > FM_S3_MAX_PARTS ||
            etag_opaque(parts[i].etag, opaque) != 0) {
            free(body.data);
            return refuse(res, "part %zu: number %d or its ETag is not valid", i + 1, parts[i].part_number);
        }
        /* S3 answers InvalidPartOrder for numbers not strictly ascending; Ceph RGW 16 sorts them itself (a part
         * given twice counts once), so the same request would complete there: refuse it here for both. */
        if (i > 0 && parts[i].part_number <= parts[i - 1].part_number) {
            free(body.data);
            refuse(res, "part %d is given after part %d: parts must be ascending, each once", parts[i].part_number,
                   parts[i - 1].part_number);
            strcpy(res->code, "InvalidPartOrder");
            return -1;
        }
        snprintf(number, sizeof(number), "%d", parts[i].part_number);
        buf_str(&body, "<Part><PartNumber>");
        buf_str(&body, number);
        buf_str(&body, "</PartNumber><ETag>\"");
        buf_xml_text(&body, opaque);
        buf_str(&body, "\"</ETag></Part>");
    }
    buf_str(&body, "</CompleteMultipartUpload>");

    fm_sigv4_param_t params[1] = {{"uploadId", upload_id}};
    fm_sigv4_header_t headers[1] = {{"Content-Type", "application/xml"}};
    int rc = perform(s3, "POST", key, params, 1, headers, 1, body.data, body.len, res);
    free(body.data);
    if (rc != 0)
        return -1;
    /* The 200 is sent when S3 starts work; a failure after it comes as an <Error> body (with whitespace before). */
    const char *inner;
    size_t inner_len, offset = 0;
    if (s3->body != NULL && fm_s3_xml_next(s3->body, s3->body_len, "Error", &offset, &inner, &inner_len) == 0) {
        read_error_document(s3, res);
        return -1;
    }
    if (!body_has(s3, "</CompleteMultipartUploadResult>"))
        return invalid_response(res, "CompleteMultipartUpload answered %ld without a result", res->status);
    /* The header ETag of this answer is not the object's: report the document's (RGW's may be empty). */
    res->etag[0] = '\0';
    fm_s3_xml_text(s3->body, s3->body_len, "ETag", res->etag, sizeof(res->etag));
    res->content_type[0] = '\0';
    res->content_length = -1;
    return 0;
}

/* ---- streamed GET, copy ------------------------------------------------------------------------------------ */

int fm_s3_get_object_announced(fm_s3_t *s3, const char *key, fm_s3_headers_fn headers, fm_s3_write_fn write, void *ud,
                               fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    if (write == NULL)
        return refuse(res, "a write function is required");
    s3->sink = write;
    s3->sink_headers = headers;
    s3->sink_ud = ud;
    int rc = perform(s3, "GET", key, NULL, 0, NULL, 0, NULL, 0, res);
    s3->sink = NULL;
    s3->sink_headers = NULL;
    s3->sink_ud = NULL;
    return rc;
}

int fm_s3_get_object(fm_s3_t *s3, const char *key, fm_s3_write_fn write, void *ud, fm_s3_result_t *res)
{
    return fm_s3_get_object_announced(s3, key, NULL, write, ud, res);
}

/* x-amz-copy-source: "bucket/key", URL-encoded as S3 requires (RFC 3986 unreserved characters and '/' kept). */
static char *copy_source(const char *bucket, const char *key)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t bucket_len = strlen(bucket), key_len = strlen(key);
    char *out = malloc(bucket_len + 1 + key_len * 3 + 1);
    if (out == NULL)
        abort();
    memcpy(out, bucket, bucket_len);
    char *o = out + bucket_len;
    *o++ = '/';
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~/", *p) != NULL) {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

int fm_s3_copy_object(fm_s3_t *s3, const char *src_key, const char *dst_key, fm_s3_result_t *res)
{
    if (need_key(src_key, res) != 0 || need_key(dst_key, res) != 0)
        return -1;
    char *source = copy_source(s3->bucket_name, src_key);
    fm_sigv4_header_t headers[1] = {{"x-amz-copy-source", source}};
    int rc = perform(s3, "PUT", dst_key, NULL, 0, headers, 1, "", 0, res);
    free(source);
    if (rc != 0)
        return -1;
    /* As with CompleteMultipartUpload, S3 may send the 200 before the copy fails and put the <Error> in the body. */
    const char *inner;
    size_t inner_len, offset = 0;
    if (s3->body != NULL && fm_s3_xml_next(s3->body, s3->body_len, "Error", &offset, &inner, &inner_len) == 0) {
        read_error_document(s3, res);
        return -1;
    }
    if (!body_has(s3, "</CopyObjectResult>"))
        return invalid_response(res, "CopyObject answered %ld without a result", res->status);
    /* The answer's headers describe the answer, not the copy: its ETag is in the document, quoted by AWS and
     * bare by Ceph RGW. Quote it as HEAD would send it, so the two compare equal. */
    char etag[sizeof(res->etag) - 2] = "";
    fm_s3_xml_text(s3->body, s3->body_len, "ETag", etag, sizeof(etag));
    if (etag[0] != '\0' && etag[0] != '"')
        snprintf(res->etag, sizeof(res->etag), "\"%s\"", etag);
    else
        snprintf(res->etag, sizeof(res->etag), "%s", etag);
    res->content_type[0] = '\0';
    res->content_length = -1;
    return 0;
}
