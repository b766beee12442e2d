/* Request lifecycle and API replies: see http.h. */
#include "http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "b64.h"
#include "hash.h"
#include "json.h"
#include "log.h"
#include "metrics.h"

static __thread uint64_t id_state[2];

/* xorshift128+ seeded from the OS: request ids need to be unique, not secret. */
static uint64_t next_random(void)
{
    if (id_state[0] == 0 && id_state[1] == 0) {
        FILE *f = fopen("/dev/urandom", "rb");
        if (f == NULL || fread(id_state, sizeof(id_state), 1, f) != 1)
            id_state[0] = (uint64_t)fm_now_ns() | 1;
        if (f != NULL)
            fclose(f);
    }
    uint64_t s1 = id_state[0];
    const uint64_t s0 = id_state[1];
    id_state[0] = s0;
    s1 ^= s1 << 23;
    id_state[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return id_state[1] + s0;
}

void fm_http_request_id(char out[33])
{
    uint64_t random[2] = {next_random(), next_random()}; /* every answer carries one: no printf */
    fm_hex_encode(random, sizeof(random), out, 33);
}

/* An X-Request-Id from the client is honoured when it is short and plain (it goes into logs and JSON). */
static int request_id_acceptable(h2o_iovec_t id)
{
    if (id.len == 0 || id.len > 64)
        return 0;
    for (size_t i = 0; i < id.len; ++i) {
        char c = id.base[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
              c == '.' || c == ':'))
            return 0;
    }
    return 1;
}

static void req_free(fm_req_t *r)
{
    free(r->auth);
    free(r->state_aux);
    if (r->state != NULL) {
        if (r->state_free != NULL)
            r->state_free(r->state);
        free(r->state);
    }
    free(r);
}

static void on_pool_dispose(void *slot)
{
    fm_req_t *r = *(fm_req_t **)slot;
    r->thread->inflight--;
    r->req = NULL;
    if (r->pending == 0)
        req_free(r);
}

void *fm_req_state(fm_req_t *r, size_t size)
{
    if (r->state == NULL && (r->state = calloc(1, size)) == NULL)
        h2o_fatal("out of memory");
    return r->state;
}

void *fm_req_aux(fm_req_t *r, size_t size)
{
    free(r->state_aux);
    if ((r->state_aux = calloc(1, size)) == NULL)
        h2o_fatal("out of memory");
    return r->state_aux;
}

void fm_req_hold(fm_req_t *r)
{
    r->pending++;
}

int fm_req_resume(fm_req_t *r)
{
    r->pending--;
    if (r->req != NULL)
        return 0;
    if (r->pending == 0)
        req_free(r);
    return -1;
}

h2o_iovec_t fm_req_header(fm_req_t *r, const char *name)
{
    ssize_t i = h2o_find_header_by_str(&r->req->headers, name, strlen(name), -1);
    if (i < 0)
        return h2o_iovec_init(NULL, 0);
    return r->req->headers.entries[i].value;
}

h2o_iovec_t fm_req_query(fm_req_t *r)
{
    h2o_req_t *req = r->req;
    if (req->query_at == SIZE_MAX)
        return h2o_iovec_init(NULL, 0);
    return h2o_iovec_init(req->path.base + req->query_at + 1, req->path.len - req->query_at - 1);
}

void fm_req_peer(fm_req_t *r, char *out, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = r->req->conn->callbacks->get_peername(r->req->conn, (struct sockaddr *)&ss);
    out[0] = '\0';
    if (len == 0)
        return;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out, size);
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, out, size);
}

void fm_req_add_header(fm_req_t *r, const char *name, const char *value)
{
    if (r->req == NULL)
        return;
    h2o_mem_pool_t *pool = &r->req->pool;
    h2o_iovec_t n = h2o_strdup(pool, name, SIZE_MAX), v = h2o_strdup(pool, value, SIZE_MAX);
    h2o_add_header_by_str(pool, &r->req->res.headers, n.base, n.len, 1, NULL, v.base, v.len);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
    }
}

/* A fixed set of method labels: a client inventing methods must not grow the metrics registry. */
static const char *const method_labels[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"};
#define METHOD_KNOWN (sizeof(method_labels) / sizeof(method_labels[0]) - 1)

static unsigned method_index(h2o_iovec_t method)
{
    unsigned i;
    for (i = 0; i < METHOD_KNOWN; ++i)
        if (h2o_memis(method.base, method.len, method_labels[i], strlen(method_labels[i])))
            break;
    return i; /* METHOD_KNOWN is "other" */
}

/* The two series one answer updates. */
typedef struct {
    fm_metric_series_t *requests, *duration;
} request_series_t;

static request_series_t lookup_request_series(const char *service, const char *route, unsigned method, int status)
{
    char labels[200];
    request_series_t found;
    snprintf(labels, sizeof(labels), "service=\"%s\",route=\"%s\",method=\"%s\",status=\"%d\"", service, route,
             method_labels[method], status);
    found.requests = fm_metrics_series("fm_http_requests_total", FM_METRIC_COUNTER, labels);
    snprintf(labels, sizeof(labels), "service=\"%s\",route=\"%s\"", service, route);
    found.duration = fm_metrics_series("fm_http_request_duration_seconds", FM_METRIC_HISTOGRAM, labels);
    return found;
}

/* Formatting the labels and finding series by name (under the registry's mutex) cost more than the rest of an
 * answer's bookkeeping, so each event-loop thread remembers the handles per (service, route, method, status).
 * The keys are pointers to the service name and the route label (a pattern of a static route table or a string
 * literal), which outlive the threads: fm_http_count's callers must pass such labels only. Open
 * addressing with a short probe; when that finds no room the lookup goes by name, so the table stays bounded. */
#define SERIES_CACHE_SLOTS 512 /* a power of two */
#define SERIES_CACHE_PROBES 8

typedef struct {
    struct {
        const char *service;
        const char *route; /* the route label: a pattern of the static route table, or a literal */
        int32_t status;
        uint32_t method;
    } key; /* no padding: hashed as bytes */
    request_series_t series; /* series.requests == NULL: the slot is free */
} series_slot_t;

static _Thread_local series_slot_t series_cache[SERIES_CACHE_SLOTS];

static request_series_t request_series(fm_req_t *r, const char *route, unsigned method, int status)
{
    series_slot_t probe;
    memset(&probe.key, 0, sizeof(probe.key));
    probe.key.service = r->thread->spec->service;
    probe.key.route = route;
    probe.key.status = status;
    probe.key.method = method;
    uint64_t hash = fm_fnv1a(&probe.key, sizeof(probe.key), 0);
    for (unsigned i = 0; i < SERIES_CACHE_PROBES; ++i) {
        series_slot_t *slot = &series_cache[(hash + i) & (SERIES_CACHE_SLOTS - 1)];
        if (slot->series.requests == NULL) {
            slot->key = probe.key;
            slot->series = lookup_request_series(probe.key.service, route, method, status);
            return slot->series;
        }
        if (memcmp(&slot->key, &probe.key, sizeof(probe.key)) == 0)
            return slot->series;
    }
    return lookup_request_series(probe.key.service, route, method, status);
}

void fm_http_count(fm_req_t *r, const char *route, int status, double seconds)
{
    request_series_t series = request_series(r, route, method_index(r->req->method), status);
    fm_metrics_series_add(series.requests, 1);
    fm_metrics_series_observe(series.duration, seconds);
}

static void account(fm_req_t *r)
{
    double seconds = (double)(fm_now_ns() - r->started_ns) / 1e9;
    const char *route = r->route != NULL ? r->route->pattern : "unmatched";
    fm_http_count(r, route, r->status, seconds);

    /* The copies below exist only for the access line; under FM_LOG_LEVEL=warn or FM_ACCESS_LOG=off most answers
     * write none (a sampled-out answer is dropped inside fm_log_access). */
    if (!fm_log_access_enabled(r->status))
        return;
    char method[9], path[256];
    snprintf(method, sizeof(method), "%.*s", (int)(r->req->method.len > 8 ? 8 : r->req->method.len),
             r->req->method.base);
    snprintf(path, sizeof(path), "%.*s", (int)(r->req->path_normalized.len > 255 ? 255 : r->req->path_normalized.len),
             r->req->path_normalized.base);
    fm_log_access(r->request_id, method, route, path, r->status, seconds * 1000, r->error_code);
}

void fm_reply_raw(fm_req_t *r, int status, const char *content_type, const char *body, size_t len)
{
    if (r->req == NULL || r->answered)
        return;
    h2o_req_t *req = r->req;
    r->answered = 1;
    r->status = status;
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type, strlen(content_type));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, r->request_id,
                          strlen(r->request_id));
    if (status >= 400)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    req->res.content_length = len;
    account(r);
    h2o_send_inline(req, body, len);
}

void fm_iso8601(long long t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void fm_reply_json(fm_req_t *r, int status, cJSON *body)
{
    if (body == NULL) {
        fm_reply_raw(r, status, "application/json", "{}", 2);
        return;
    }
    char *text = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    if (text == NULL)
        h2o_fatal("out of memory");
    fm_reply_raw(r, status, "application/json", text, strlen(text));
    cJSON_free(text);
}

void fm_reply_error(fm_req_t *r, int status, const char *code, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    r->error_code = code;
    cJSON *body = cJSON_CreateObject(), *error = cJSON_AddObjectToObject(body, "error");
    cJSON_AddStringToObject(error, "code", code);
    cJSON_AddStringToObject(error, "message", message);
    cJSON_AddStringToObject(error, "request_id", r->request_id);
    fm_reply_json(r, status, body);
}

void fm_reply_unavailable(fm_req_t *r, const char *dependency)
{
    fm_req_add_header(r, "retry-after", "1");
    fm_reply_error(r, 503, "unavailable", "%s is unavailable, try again shortly", dependency);
}

/* Media type equality ignoring parameters (charset) and case. */
static int is_json_content_type(h2o_iovec_t ct)
{
    size_t n = 0;
    while (n < ct.len && ct.base[n] != ';' && ct.base[n] != ' ')
        ++n;
    return h2o_lcstris(ct.base, n, H2O_STRLIT("application/json"));
}

/* RFC 8259 §8.1: JSON text is UTF-8. Checked here because cJSON passes any bytes through, and PostgreSQL (and
 * every client reading our answers back) would then meet them. Overlongs, surrogates and > U+10FFFF are refused. */
int fm_utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        unsigned min;
        unsigned cp;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1, min = 0x80, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, min = 0x800, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return 0;
        }
        if (len - i <= n)
            return 0;
        for (size_t k = 1; k <= n; ++k) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += n + 1;
    }
    return 1;
}

/* C strings end at NUL: a "\u0000" escape would let "a@b.c\u0000junk" be read as "a@b.c" (returns 2). Raw control
 * characters other than whitespace, NUL included, are invalid JSON, though cJSON is lenient there (returns 1). */
static int has_nul_or_control(const char *s, size_t len)
{
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            return 1;
        if (c == '\\' && i + 1 < len) {
            if (s[i + 1] == 'u' && i + 5 < len && memcmp(s + i + 2, "0000", 4) == 0)
                return 2;
            ++i; /* skip the escaped character: JSON "\\u0000" is a backslash, then the text u0000 */
        }
    }
    return 0;
}

cJSON *fm_req_json_body(fm_req_t *r, size_t max_bytes)
{
    h2o_req_t *req = r->req;
    if (!is_json_content_type(fm_req_header(r, "content-type"))) {
        fm_reply_error(r, 415, "unsupported_media_type", "the body must be application/json");
        return NULL;
    }
    if (req->entity.len > max_bytes) {
        fm_reply_error(r, 413, "payload_too_large", "the body is larger than %zu bytes", max_bytes);
        return NULL;
    }
    if (req->entity.base == NULL || req->entity.len == 0) {
        fm_reply_error(r, 400, "invalid_json", "the body is empty");
        return NULL;
    }
    if (!fm_utf8_valid((const unsigned char *)req->entity.base, req->entity.len)) {
        fm_reply_error(r, 400, "invalid_json", "the body is not valid UTF-8");
        return NULL;
    }
    switch (has_nul_or_control(req->entity.base, req->entity.len)) {
    case 1:
        fm_reply_error(r, 400, "invalid_json", "the body holds raw control characters");
        return NULL;
    case 2: /* valid JSON, but no field of ours may hold a NUL */
        fm_reply_error(r, 422, "invalid_field", "strings must not contain NUL (\\u0000)");
        return NULL;
    }
    const char *end = NULL;
    cJSON *json = cJSON_ParseWithLengthOpts(req->entity.base, req->entity.len, &end, 0);
    if (json == NULL) {
        fm_reply_error(r, 400, "invalid_json", "the body is not valid JSON");
        return NULL;
    }
    /* Trailing bytes after the value (other than whitespace) make it invalid too. */
    while (end < req->entity.base + req->entity.len && strchr(" \t\r\n", *end) != NULL)
        ++end;
    if (end != req->entity.base + req->entity.len || !cJSON_IsObject(json)) {
        cJSON_Delete(json);
        fm_reply_error(r, 400, "invalid_json", "the body must be one JSON object");
        return NULL;
    }
    const char *duplicate = fm_json_duplicate_key(json);
    if (duplicate != NULL) {
        fm_reply_error(r, 422, "duplicate_key", "the member \"%.64s\" appears twice in one object", duplicate);
        cJSON_Delete(json);
        return NULL;
    }
    return json;
}

const char *fm_json_require_string(fm_req_t *r, cJSON *obj, const char *name, size_t min_len, size_t max_len)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (item == NULL || cJSON_IsNull(item)) {
        fm_reply_error(r, 422, "missing_field", "%s is required", name);
        return NULL;
    }
    if (!cJSON_IsString(item)) {
        fm_reply_error(r, 422, "invalid_field", "%s must be a string", name);
        return NULL;
    }
    size_t len = strlen(item->valuestring);
    if (len < min_len || len > max_len) {
        fm_reply_error(r, 422, "invalid_field", "%s must be %zu to %zu bytes long", name, min_len, max_len);
        return NULL;
    }
    return item->valuestring;
}

/* ---- HTTP/1 message framing ---------------------------------------------------------------------------------- */

static int name_is(const char *name, size_t len, const char *want)
{
    size_t want_len = strlen(want);
    if (len != want_len)
        return 0;
    for (size_t i = 0; i < len; ++i)
        if (tolower((unsigned char)name[i]) != want[i])
            return 0;
    return 1;
}

fm_http1_framing_t fm_http1_framing_check(const char *head, size_t len)
{
    size_t pos = 0;
    while (pos < len && (head[pos] == '\r' || head[pos] == '\n')) /* picohttpparser skips an empty first line */
        ++pos;
    const char *eol = memchr(head + pos, '\n', len - pos); /* the request line */
    if (eol == NULL)
        return FM_HTTP1_FRAMING_UNREADABLE;
    pos = (size_t)(eol - head) + 1;
    unsigned lengths = 0, encodings = 0;
    for (;;) {
        if ((eol = memchr(head + pos, '\n', len - pos)) == NULL)
            return FM_HTTP1_FRAMING_UNREADABLE; /* the head never ended */
        size_t line_len = (size_t)(eol - head) - pos;
        const char *line = head + pos;
        pos += line_len + 1;
        if (line_len > 0 && line[line_len - 1] == '\r')
            --line_len;
        if (line_len == 0)
            break; /* the empty line that ends the head */
        if (line[0] == ' ' || line[0] == '\t')
            continue; /* obs-fold: the value of the line before, not a header of its own */
        const char *colon = memchr(line, ':', line_len);
        if (colon == NULL)
            continue;
        size_t name_len = (size_t)(colon - line);
        if (name_is(line, name_len, "content-length"))
            ++lengths;
        else if (name_is(line, name_len, "transfer-encoding"))
            ++encodings;
    }
    if (lengths > 0 && encodings > 0)
        return FM_HTTP1_FRAMING_LENGTH_AND_ENCODING;
    if (lengths > 1)
        return FM_HTTP1_FRAMING_DUPLICATE_LENGTH;
    if (encodings > 1)
        return FM_HTTP1_FRAMING_DUPLICATE_ENCODING;
    return FM_HTTP1_FRAMING_OK;
}

/*
 * h2o keeps Content-Length and Transfer-Encoding out of req->headers, so the head is read again where h2o parsed it:
 * while an HTTP/1 request is being handled, its connection's input buffer starts with that request's head (h2o
 * consumes a request's bytes only once its answer is sent; tests/integration/test_http_framing.py pins this). The
 * buffer must start with this request's method, else nothing is judged. HTTP/2 frames its messages itself.
 */
static int framing_refused(fm_req_t *r)
{
    h2o_req_t *req = r->req;
    if (req->version >= 0x200 || req->conn->callbacks->get_socket == NULL)
        return 0;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    if (sock == NULL || sock->input == NULL)
        return 0;
    const char *bytes = sock->input->bytes;
    size_t len = sock->input->size, start = 0;
    while (start < len && (bytes[start] == '\r' || bytes[start] == '\n'))
        ++start;
    if (len - start <= req->method.len || memcmp(bytes + start, req->method.base, req->method.len) != 0 ||
        bytes[start + req->method.len] != ' ')
        return 0;
    static const char *const reasons[] = {
        [FM_HTTP1_FRAMING_DUPLICATE_LENGTH] = "Content-Length appears more than once",
        [FM_HTTP1_FRAMING_DUPLICATE_ENCODING] = "Transfer-Encoding appears more than once",
        [FM_HTTP1_FRAMING_LENGTH_AND_ENCODING] = "both Content-Length and Transfer-Encoding are present",
    };
    fm_http1_framing_t framing = fm_http1_framing_check(bytes, len);
    if (framing == FM_HTTP1_FRAMING_OK || framing == FM_HTTP1_FRAMING_UNREADABLE)
        return 0;
    /* Where this request ends is in doubt, so nothing after it on this connection can be trusted: answer, close. */
    req->http1_is_persistent = 0;
    fm_reply_error(r, 400, "ambiguous_framing", "the request's length is ambiguous: %s", reasons[framing]);
    return 1;
}

/* ---- Strict-Transport-Security ------------------------------------------------------------------------------- */

static h2o_iovec_t hsts_value; /* empty: no header; set once by fm_http_configure before the threads start */

/* A per-request prefilter runs when the answer's headers are final, whoever sends the answer (fm_reply_*, the
 * edge's streamed files, after a handler reset the headers), so every answer on a TLS connection carries it. */
static void hsts_setup(h2o_req_prefilter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_STRICT_TRANSPORT_SECURITY, hsts_value.base, hsts_value.len,
                   1);
    h2o_setup_next_prefilter(self, req, slot);
}

/* TLS is a property of the connection, not of what the request says (an h2c request may claim :scheme https). */
static int over_tls(h2o_req_t *req)
{
    if (req->conn->callbacks->get_socket == NULL)
        return 0;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    return sock != NULL && sock->ssl != NULL;
}

void fm_http_configure(const fm_config_t *cfg)
{
    static char value[48];
    if (cfg->hsts_max_age_s > 0) {
        int len = snprintf(value, sizeof(value), "max-age=%lld", (long long)cfg->hsts_max_age_s);
        hsts_value = h2o_iovec_init(value, (size_t)len);
    } else {
        hsts_value = h2o_iovec_init(NULL, 0);
    }
    fm_log_access_init(cfg->access_log, (unsigned)cfg->access_log_sample);
}

static void handle_healthz(fm_req_t *r)
{
    static const char body[] = "{\"status\":\"ok\"}";
    fm_reply_raw(r, 200, "application/json", body, sizeof(body) - 1);
}

static void handle_metrics(fm_req_t *r)
{
    size_t len;
    char *text = fm_metrics_render(&len);
    fm_reply_raw(r, 200, "text/plain; version=0.0.4", text, len);
    free(text);
}

static const fm_route_t builtin_routes[] = {
    {"GET", "/healthz", handle_healthz},
    {"GET", "/metrics", handle_metrics},
};

void fm_http_dispatch(fm_thread_t *thread, h2o_req_t *req)
{
    fm_req_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        h2o_fatal("out of memory");
    r->req = req;
    r->thread = thread;
    r->started_ns = fm_now_ns();
    fm_req_t **slot = h2o_mem_alloc_shared(&req->pool, sizeof(*slot), on_pool_dispose);
    *slot = r;
    thread->inflight++;

    h2o_iovec_t id = fm_req_header(r, "x-request-id");
    if (request_id_acceptable(id))
        snprintf(r->request_id, sizeof(r->request_id), "%.*s", (int)id.len, id.base);
    else
        fm_http_request_id(r->request_id);

    if (hsts_value.len != 0 && over_tls(req)) {
        h2o_req_prefilter_t *hsts = h2o_add_prefilter(req, sizeof(*hsts));
        hsts->on_setup_ostream = hsts_setup;
    }
    if (framing_refused(r))
        return;

    char allow[64];
    fm_route_result_t found = fm_router_match(builtin_routes, sizeof(builtin_routes) / sizeof(builtin_routes[0]),
                                              req->method, req->path_normalized, &r->route, r->params,
                                              &r->param_count, allow, sizeof(allow));
    if (found == FM_ROUTE_NOT_FOUND)
        found = fm_router_match(thread->spec->routes, thread->spec->route_count, req->method, req->path_normalized,
                                &r->route, r->params, &r->param_count, allow, sizeof(allow));
    switch (found) {
    case FM_ROUTE_FOUND:
        r->route->handler(r);
        break;
    case FM_ROUTE_METHOD_NOT_ALLOWED:
        fm_req_add_header(r, "allow", allow);
        fm_reply_error(r, 405, "method_not_allowed", "this path accepts %s", allow);
        break;
    case FM_ROUTE_NOT_FOUND:
        if (thread->spec->fallback != NULL && (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) ||
                                               h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"))))
            thread->spec->fallback(r);
        else
            fm_reply_error(r, 404, "not_found", "no such route");
        break;
    }
}
