/*
 * GET/HEAD /f/{key}?{signed query}: a CloudFront-style signed download (docs/downloads.md "fm-edge"). The parse, act
 * and answer steps are shared with the unsigned /p/ route of public keys (public.c), which authorizes differently.
 *
 * parse (the raw path: refuse `..`, `.`, empty segments, encoded '/', '\', NUL and control bytes, > 1024-byte keys)
 * and the variant parameters w/h/fit/format/q (variant.c) → authorize (fm_cf_verify_url on FM_EDGE_PUBLIC_BASE + the
 * path and query exactly as received, client IP = TCP peer) → act (cache hit, or join a coalesced origin fill: a
 * plain GET/HEAD is answered from the origin's headers and streamed by origin.c while the fill writes, a Range or
 * conditional request waits for the cached file; for a variant: its cached rendering, or the original (cached or
 * filled) then a coalesced render) → answer (conditional GET, one byte range, headers, an access event). Every
 * refusal happens before the cache or the origin is touched.
 *
 * A hot small object is sent from the cache's memory tier in one piece (cache.c). Other bytes are sent by a
 * generator that preads the cached file in 256 KiB pieces: h2o 2.2.5 has no sendfile(2) path
 * (its own file handler preads 64 KB at a time too), and h2o_file_send() handles neither Range nor conditional
 * requests when called from a handler, and caches open fds by path, which a purge and refill would defeat.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "edge.h"
#include "log.h"
#include "metrics.h"
#include "sigv4.h"

#define SEND_CHUNK (256 * 1024)
#define NAME_MAX_BYTES 255

/* ---- parse ---- */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Bytes allowed raw in a key's path: RFC 3986 unreserved, sub-delims, ':' '@', and '/' between segments. */
static int path_char_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("-._~!$&'()*+,;=:@/", c);
}

/*
 * Decodes the raw path after "/f/" into `key`. Returns NULL, or a static reason for a 400: the key must name one
 * object, so traversal (`.`/`..` segments, raw or encoded), encoded separators and control bytes are refused.
 */
static const char *decode_key(const char *raw, size_t raw_len, char *key, size_t *key_len)
{
    size_t out = 0;
    if (raw_len == 0)
        return "the key is empty";
    for (size_t i = 0; i < raw_len; ++i) {
        unsigned char c = (unsigned char)raw[i];
        if (c == '%') {
            int hi = i + 2 < raw_len ? hex_value(raw[i + 1]) : -1, lo = i + 2 < raw_len ? hex_value(raw[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return "bad percent-encoding in the path";
            c = (unsigned char)(hi * 16 + lo);
            if (c == '/' || c == '\\')
                return "encoded '/' or '\\' in the path";
            if (c < 0x20 || c == 0x7f)
                return "control characters in the path";
            i += 2;
        } else if (!path_char_ok(c)) {
            return "invalid characters in the path";
        }
        if (out >= FM_EDGE_KEY_MAX)
            return "the key is longer than 1024 bytes";
        key[out++] = (char)c;
    }
    key[out] = '\0';
    /* Segments are checked after decoding, so "%2e%2e" is the ".." it means. */
    for (size_t start = 0; start <= out;) {
        size_t end = start;
        while (end < out && key[end] != '/')
            ++end;
        size_t len = end - start;
        if (len == 0)
            return "empty path segment";
        if ((len == 1 && key[start] == '.') || (len == 2 && key[start] == '.' && key[start + 1] == '.'))
            return "'.' or '..' in the path";
        start = end + 1;
    }
    *key_len = out;
    return NULL;
}

/* The value of query parameter `name` (raw, still percent-encoded), or {NULL,0}. */
static h2o_iovec_t query_param(h2o_iovec_t query, const char *name)
{
    size_t name_len = strlen(name);
    const char *p = query.base, *end = query.base + query.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *item_end = amp ? amp : end;
        if ((size_t)(item_end - p) > name_len && memcmp(p, name, name_len) == 0 && p[name_len] == '=')
            return h2o_iovec_init(p + name_len + 1, (size_t)(item_end - p) - name_len - 1);
        p = item_end + 1;
    }
    return h2o_iovec_init(NULL, 0);
}

/* ---- Content-Disposition (RFC 6266 + RFC 8187) ---- */

/*
 * Builds `attachment; filename="ascii"; filename*=UTF-8''pct` from a percent-encoded UTF-8 name. The ASCII
 * fallback keeps printable ASCII but '"', '\\', '/', which become '_', as does each non-ASCII character; control
 * characters (CR/LF included) are dropped from both forms, so no header can be split. Returns NULL (400) for an
 * undecodable, non-UTF-8, empty or over-long name.
 */
static char *content_disposition(h2o_mem_pool_t *pool, const char *type, h2o_iovec_t raw)
{
    unsigned char name[NAME_MAX_BYTES];
    size_t len = 0;
    for (size_t i = 0; i < raw.len; ++i) {
        unsigned char c = (unsigned char)raw.base[i];
        if (c == '%') {
            int hi = i + 2 < raw.len ? hex_value(raw.base[i + 1]) : -1,
                lo = i + 2 < raw.len ? hex_value(raw.base[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return NULL;
            c = (unsigned char)(hi * 16 + lo);
            i += 2;
        }
        if (c < 0x20 || c == 0x7f)
            continue;
        if (len == sizeof(name))
            return NULL;
        name[len++] = c;
    }
    if (len == 0 || !fm_utf8_valid(name, len))
        return NULL;
    size_t cap = strlen(type) + 32 + len * 4;
    char *out = h2o_mem_alloc_pool(pool, cap), *p = out;
    p += sprintf(p, "%s; filename=\"", type);
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = name[i];
        if (c >= 0x80) {
            if ((c & 0xc0) != 0x80) /* one '_' per character, not per byte */
                *p++ = '_';
        } else {
            *p++ = (c == '"' || c == '\\' || c == '/') ? '_' : (char)c;
        }
    }
    p += sprintf(p, "\"; filename*=UTF-8''");
    static const char attr_chars[] = "!#$&+-.^_`|~";
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = name[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr(attr_chars, c))
            *p++ = (char)c;
        else
            p += sprintf(p, "%%%02X", c);
    }
    *p = '\0';
    return out;
}

/* ---- answer ---- */

typedef struct {
    h2o_generator_t super;
    int fd;
    off_t offset;
    uint64_t left;
    char *buf;
} file_gen_t;

static void gen_dispose(void *p)
{
    file_gen_t *gen = p;
    if (gen->fd != -1) {
        close(gen->fd);
        gen->fd = -1;
    }
}

static void gen_proceed(h2o_generator_t *self, h2o_req_t *req)
{
    file_gen_t *gen = (file_gen_t *)self;
    size_t want = gen->left > SEND_CHUNK ? SEND_CHUNK : (size_t)gen->left;
    ssize_t n;
    while ((n = pread(gen->fd, gen->buf, want, gen->offset)) == -1 && errno == EINTR)
        ;
    if (n <= 0) { /* the file is shorter than its metadata says: cut the response rather than send wrong bytes */
        fm_error("edge: read of a cached file failed: %s", n == 0 ? "unexpected end" : strerror(errno));
        req->http1_is_persistent = 0;
        gen_dispose(gen);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    gen->offset += n;
    gen->left -= (uint64_t)n;
    h2o_iovec_t vec = h2o_iovec_init(gen->buf, (size_t)n);
    int final = gen->left == 0;
    if (final)
        gen_dispose(gen);
    h2o_send(req, &vec, 1, final ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

static void gen_stop(h2o_generator_t *self, h2o_req_t *req)
{
    (void)req;
    gen_dispose(self);
}

/* An unsigned /p/ request (a public key) rather than a signed /f/ one. */
static int is_public_request(fm_req_t *r)
{
    return r->req->path.len >= 3 && memcmp(r->req->path.base, "/p/", 3) == 0;
}

/* http.c's accounting for answers that do not go through fm_reply_raw (streamed files, 304). */
static void account(fm_req_t *r, int status)
{
    r->answered = 1;
    r->status = status;
    double seconds = (double)(fm_now_ns() - r->started_ns) / 1e9;
    int is_public = is_public_request(r);
    const char *route = r->route != NULL ? r->route->pattern : is_public ? "/p/{key}" : "/f/{key}";
    fm_http_count(r, route, status, seconds);
    if (fm_log_enabled(fm_log_access_level(status))) {
        const char *method = r->req->method.len == 4 ? "HEAD" : "GET";
        fm_log_access(r->request_id, method, route, is_public ? "/p/…" : "/f/…", status, seconds * 1000, NULL);
    }
}

/* h2o keeps the pointer until the headers are written: the value is copied into the request's pool. */
static void add_header(h2o_req_t *req, const h2o_token_t *token, const char *value)
{
    h2o_iovec_t copy = h2o_strdup(&req->pool, value, SIZE_MAX);
    h2o_add_header(&req->pool, &req->res.headers, token, NULL, copy.base, copy.len);
}

/* Weak comparison (RFC 9110 §13.1.2) of one If-None-Match list against our ETag. */
static int etag_listed(h2o_iovec_t list, const char *etag)
{
    if (etag[0] == '\0')
        return 0;
    const char *tag = etag;
    if (strncmp(tag, "W/", 2) == 0)
        tag += 2;
    size_t tag_len = strlen(tag);
    const char *p = list.base, *end = list.base + list.len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            ++p;
        const char *start = p;
        while (p < end && *p != ',')
            ++p;
        const char *stop = p;
        while (stop > start && (stop[-1] == ' ' || stop[-1] == '\t'))
            --stop;
        if (stop - start == 1 && *start == '*')
            return 1;
        if (stop - start > 2 && memcmp(start, "W/", 2) == 0)
            start += 2;
        if ((size_t)(stop - start) == tag_len && memcmp(start, tag, tag_len) == 0)
            return 1;
    }
    return 0;
}

typedef enum { RANGE_NONE, RANGE_ONE, RANGE_UNSATISFIABLE } range_kind_t;

/* One byte range (RFC 9110 §14.1.2): "a-b", "a-", "-n". A list, or anything unparsable, is ignored (full 200). */
static range_kind_t parse_range(h2o_iovec_t value, uint64_t size, uint64_t *first, uint64_t *last)
{
    if (value.len < 7 || memcmp(value.base, "bytes=", 6) != 0 || memchr(value.base, ',', value.len) != NULL)
        return RANGE_NONE;
    const char *p = value.base + 6, *end = value.base + value.len;
    uint64_t a = 0, b = 0;
    int have_a = 0, have_b = 0;
    for (; p < end && *p >= '0' && *p <= '9'; ++p, have_a = 1) {
        if (a > (UINT64_MAX - 9) / 10)
            return RANGE_NONE;
        a = a * 10 + (uint64_t)(*p - '0');
    }
    if (p == end || *p++ != '-')
        return RANGE_NONE;
    for (; p < end && *p >= '0' && *p <= '9'; ++p, have_b = 1) {
        if (b > (UINT64_MAX - 9) / 10)
            b = UINT64_MAX / 10; /* absurdly large: clamped below */
        b = b * 10 + (uint64_t)(*p - '0');
    }
    if (p != end || (!have_a && !have_b))
        return RANGE_NONE;
    if (!have_a) { /* suffix: the last b bytes */
        if (b == 0 || size == 0)
            return RANGE_UNSATISFIABLE;
        *first = b >= size ? 0 : size - b;
        *last = size - 1;
        return RANGE_ONE;
    }
    if (have_b && b < a)
        return RANGE_NONE; /* invalid syntax: ignored */
    if (a >= size)
        return RANGE_UNSATISFIABLE;
    *first = a;
    *last = !have_b || b >= size ? size - 1 : b;
    return RANGE_ONE;
}

static int not_modified(fm_req_t *r, const fm_edge_meta_t *meta)
{
    h2o_iovec_t inm = fm_req_header(r, "if-none-match");
    if (inm.base != NULL)
        return etag_listed(inm, meta->etag);
    h2o_iovec_t ims = fm_req_header(r, "if-modified-since");
    struct tm tm;
    if (ims.base != NULL && h2o_time_parse_rfc1123(ims.base, ims.len, &tm) == 0)
        return meta->stored_at <= timegm(&tm);
    return 0;
}

/* Cache-Control: private (a signed URL is one person's), max-age bounded by the URL's own expiry when canned; a public
 * key's answer may be kept by shared caches. */
static void add_cache_control(fm_req_t *r)
{
    long long max_age = fm_edge.cfg->edge_max_age_s;
    h2o_iovec_t path = r->req->path;
    if (is_public_request(r)) {
        char value[64];
        snprintf(value, sizeof(value), "public, max-age=%lld", max_age);
        add_header(r->req, H2O_TOKEN_CACHE_CONTROL, value);
        return;
    }
    const char *q = memchr(path.base, '?', path.len);
    if (q != NULL) {
        h2o_iovec_t expires = query_param(h2o_iovec_init(q + 1, path.len - (size_t)(q + 1 - path.base)), "Expires");
        if (expires.base != NULL && expires.len < 20) {
            char text[24];
            memcpy(text, expires.base, expires.len);
            text[expires.len] = '\0';
            long long left = strtoll(text, NULL, 10) - (long long)time(NULL);
            if (left < max_age)
                max_age = left > 0 ? left : 0;
        }
    }
    char value[64];
    snprintf(value, sizeof(value), "private, max-age=%lld", max_age);
    add_header(r->req, H2O_TOKEN_CACHE_CONTROL, value);
}

/* An error after serve_file began adding headers: those were for the object, not for the error. */
static void reset_headers(fm_req_t *r)
{
    r->req->res.headers = (h2o_headers_t){NULL};
}

/*
 * The status and headers of an answer about `meta` (a cached object, or one a fill is still writing): conditional
 * GET, Content-Disposition, one byte range, the access event (`outcome`). Returns 1 with the body's part to send in
 * [*first, *first + *length), or 0 when it answered entirely (304, 400, 416, HEAD, an empty body).
 */
static int answer_headers(fm_req_t *r, const fm_edge_meta_t *meta, const char *outcome, uint64_t *first,
                          uint64_t *length)
{
    h2o_req_t *req = r->req;
    char last_modified[H2O_TIMESTR_RFC1123_LEN + 1];
    struct tm gmt;
    gmtime_r(&meta->stored_at, &gmt);
    h2o_time2str_rfc1123(last_modified, &gmt);

    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, r->request_id,
                          strlen(r->request_id));
    if (meta->etag[0] != '\0')
        add_header(req, H2O_TOKEN_ETAG, h2o_strdup(&req->pool, meta->etag, SIZE_MAX).base);
    add_header(req, H2O_TOKEN_LAST_MODIFIED, h2o_strdup(&req->pool, last_modified, SIZE_MAX).base);
    add_cache_control(r);

    char peer[64];
    fm_req_peer(r, peer, sizeof(peer));
    if (not_modified(r, meta)) {
        req->res.status = 304;
        req->res.reason = "Not Modified";
        account(r, 304);
        fm_edge_event(meta->key, outcome, 304, 0, peer);
        h2o_send_inline(req, NULL, 0);
        return 0;
    }

    /* Content-Disposition from the signed query: name=<percent-encoded UTF-8>, disposition=inline|attachment. */
    h2o_iovec_t path = req->path;
    const char *q = memchr(path.base, '?', path.len);
    h2o_iovec_t query = q ? h2o_iovec_init(q + 1, path.len - (size_t)(q + 1 - path.base)) : h2o_iovec_init("", 0);
    h2o_iovec_t name = query_param(query, "name"), disposition = query_param(query, "disposition");
    const char *type = "attachment";
    if (disposition.base != NULL) {
        if (h2o_memis(disposition.base, disposition.len, H2O_STRLIT("inline")))
            type = "inline";
        else if (!h2o_memis(disposition.base, disposition.len, H2O_STRLIT("attachment"))) {
            reset_headers(r);
            fm_reply_error(r, 400, "invalid_disposition", "disposition must be inline or attachment");
            return 0;
        }
    }
    if (name.base != NULL) {
        char *value = content_disposition(&req->pool, type, name);
        if (value == NULL) {
            reset_headers(r);
            fm_reply_error(r, 400, "invalid_name", "name must be 1..255 bytes of percent-encoded UTF-8");
            return 0;
        }
        add_header(req, H2O_TOKEN_CONTENT_DISPOSITION, value);
    } else if (disposition.base != NULL) {
        add_header(req, H2O_TOKEN_CONTENT_DISPOSITION, type);
    }
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0, NULL,
                          H2O_STRLIT("nosniff"));
    add_header(req, H2O_TOKEN_ACCEPT_RANGES, "bytes");
    add_header(req, H2O_TOKEN_CONTENT_TYPE,
               meta->content_type[0] ? h2o_strdup(&req->pool, meta->content_type, SIZE_MAX).base
                                     : "application/octet-stream");

    uint64_t last = meta->size ? meta->size - 1 : 0;
    *first = 0;
    *length = meta->size;
    int status = 200;
    h2o_iovec_t range = fm_req_header(r, "range");
    h2o_iovec_t if_range = fm_req_header(r, "if-range");
    /* If-Range with another (or a weak) validator: the representation changed, send it whole. */
    int range_allowed = if_range.base == NULL || (meta->etag[0] == '"' && h2o_memis(if_range.base, if_range.len,
                                                                                    meta->etag, strlen(meta->etag)));
    if (range.base != NULL && range_allowed) {
        switch (parse_range(range, meta->size, first, &last)) {
        case RANGE_NONE:
            break;
        case RANGE_UNSATISFIABLE: {
            char content_range[64];
            snprintf(content_range, sizeof(content_range), "bytes */%llu", (unsigned long long)meta->size);
            reset_headers(r);
            fm_req_add_header(r, "content-range", content_range);
            fm_reply_error(r, 416, "range_not_satisfiable", "the range is outside the object's %llu bytes",
                           (unsigned long long)meta->size);
            return 0;
        }
        case RANGE_ONE: {
            status = 206;
            *length = last - *first + 1;
            char *content_range = h2o_mem_alloc_pool(&req->pool, 80);
            snprintf(content_range, 80, "bytes %llu-%llu/%llu", (unsigned long long)*first, (unsigned long long)last,
                     (unsigned long long)meta->size);
            add_header(req, H2O_TOKEN_CONTENT_RANGE, content_range);
            break;
        }
        }
    }

    req->res.status = status;
    req->res.reason = status == 206 ? "Partial Content" : "OK";
    req->res.content_length = *length;
    account(r, status);
    int is_head = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    fm_edge_event(meta->key, outcome, status, is_head ? 0 : *length, peer);
    if (is_head || *length == 0) {
        static h2o_generator_t empty = {NULL, NULL};
        h2o_start_response(req, &empty);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
        return 0;
    }
    FM_METRICS_COUNT("fm_edge_bytes_served_total", NULL, (double)*length);
    return 1;
}

/* Answers from an open cached file (takes `fd`); `outcome` goes into the access event. */
static void serve_file(fm_req_t *r, int fd, const fm_edge_meta_t *meta, const char *outcome)
{
    h2o_req_t *req = r->req;
    file_gen_t *gen = h2o_mem_alloc_shared(&req->pool, sizeof(*gen), gen_dispose);
    *gen = (file_gen_t){.super = {gen_proceed, gen_stop}, .fd = fd};

    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != meta->size) {
        fm_reply_error(r, 503, "cache_unavailable", "the cached copy is unreadable, try again");
        return;
    }
    uint64_t first, length;
    if (!answer_headers(r, meta, outcome, &first, &length)) {
        gen_dispose(gen);
        return;
    }
    gen->offset = (off_t)first;
    gen->left = length;
    gen->buf = h2o_mem_alloc_pool(&req->pool, length < SEND_CHUNK ? (size_t)length : SEND_CHUNK);
    h2o_start_response(req, &gen->super);
    gen_proceed(&gen->super, req);
}

static void blob_dispose(void *p)
{
    fm_edge_blob_release(*(fm_edge_blob_t **)p);
}

/* Answers from bytes of the memory tier (takes the reference): one send, the request's pool releases them. */
static void serve_blob(fm_req_t *r, fm_edge_blob_t *blob, const fm_edge_meta_t *meta, const char *outcome)
{
    h2o_req_t *req = r->req;
    fm_edge_blob_t **held = h2o_mem_alloc_shared(&req->pool, sizeof(*held), blob_dispose);
    *held = blob;
    FM_METRICS_COUNT("fm_edge_memory_hits_total", NULL, 1);
    uint64_t first, length;
    if (!answer_headers(r, meta, outcome, &first, &length))
        return;
    static h2o_generator_t whole = {NULL, NULL}; /* one final send: nothing to proceed or stop */
    h2o_iovec_t vec = h2o_iovec_init(fm_edge_blob_bytes(blob) + first, (size_t)length);
    h2o_start_response(req, &whole);
    h2o_send(req, &vec, 1, H2O_SEND_STATE_FINAL);
}

/* A hit found by fm_edge_cache_hit: from memory or from the open file. */
static void serve_hit(fm_req_t *r, int fd, fm_edge_blob_t *blob, const fm_edge_meta_t *meta, const char *outcome)
{
    if (blob != NULL)
        serve_blob(r, blob, meta, outcome);
    else
        serve_file(r, fd, meta, outcome);
}

/*
 * A cold miss that can take the body as it comes (can_stream): its answer from the origin's headers, as a hit's
 * would be; origin.c streams the body. HEAD and an empty object are answered here.
 */
static int on_stream_headers(fm_req_t *r, const fm_edge_meta_t *head)
{
    uint64_t first, length;
    return answer_headers(r, head, "miss", &first, &length);
}

/*
 * Whether a cold miss streams: a plain GET or HEAD of an original. A Range or a condition (If-None-Match,
 * If-Modified-Since) on a miss waits for the complete object and is answered from the cache, as a variant's
 * original is: rare on a miss (a client revalidating or resuming mostly meets a hit), and simpler to get right on
 * a whole file than on one being written.
 */
static int can_stream(fm_req_t *r)
{
    return fm_req_header(r, "range").base == NULL && fm_req_header(r, "if-none-match").base == NULL &&
           fm_req_header(r, "if-modified-since").base == NULL;
}

/* A failed fill or render: the error it carries. Returns 1 if it answered. */
static int reply_fill_error(fm_req_t *r, fm_edge_fill_result_t *res)
{
    if (res->status == 0)
        return 0;
    if (res->fd != -1)
        close(res->fd);
    if (res->message[0] != '\0')
        fm_reply_error(r, res->status, res->code, "%s", res->message);
    else if (res->status == 404)
        fm_reply_error(r, 404, "not_found", "no such object");
    else if (res->status == 502)
        fm_reply_error(r, 502, res->code, "the origin failed, try again");
    else
        fm_reply_unavailable(r, "the edge cache");
    return 1;
}

static void on_filled(fm_req_t *r, fm_edge_fill_result_t *res)
{
    if (!reply_fill_error(r, res))
        serve_file(r, res->fd, &res->meta, "miss");
}

/* ---- verified-URL cache ----
 * An RSA verify is most of a cache hit's CPU. A canned-policy URL's verdict depends only on its bytes and the clock
 * (no IP or start-time condition), so each thread remembers the SHA-256 of URLs it verified, until their signed
 * Expires: a repeat is accepted without the RSA work, never past its expiry. Custom policies are always verified. */
#define VERIFIED_SLOTS 4096

typedef struct {
    unsigned char digest[32];
    long long expires;
} verified_t;

static __thread verified_t *verified;

static long long canned_expires(h2o_iovec_t query)
{
    if (query_param(query, "Policy").base != NULL)
        return 0;
    h2o_iovec_t expires = query_param(query, "Expires");
    if (expires.base == NULL || expires.len == 0 || expires.len > 12)
        return 0;
    long long value = 0;
    for (size_t i = 0; i < expires.len; ++i) {
        if (expires.base[i] < '0' || expires.base[i] > '9')
            return 0;
        value = value * 10 + (expires.base[i] - '0');
    }
    return value;
}

static verified_t *verified_slot(const char *url, size_t len, unsigned char digest[32])
{
    fm_sha256(url, len, digest);
    if (verified == NULL && (verified = calloc(VERIFIED_SLOTS, sizeof(*verified))) == NULL)
        return NULL;
    size_t index = ((size_t)digest[0] << 8 | digest[1]) % VERIFIED_SLOTS;
    return &verified[index];
}

void fm_edge_serve_thread_dispose(void)
{
    free(verified);
    verified = NULL;
}

/* ---- variants ---- */

static h2o_iovec_t request_query(fm_req_t *r)
{
    h2o_iovec_t path = r->req->path;
    const char *q = memchr(path.base, '?', path.len);
    return q ? h2o_iovec_init(q + 1, path.len - (size_t)(q + 1 - path.base)) : h2o_iovec_init("", 0);
}

/* The request's variant again (a callback has only r; parsing is cheap and gives the same answer). */
static int request_variant(fm_req_t *r, fm_edge_variant_t *v)
{
    char reason[160];
    return fm_edge_variant_parse(request_query(r), fm_req_header(r, "accept"), v, reason, sizeof(reason)) == 1 ? 0 : -1;
}

static void serve_variant_file(fm_req_t *r, int fd, fm_edge_blob_t *blob, const fm_edge_meta_t *meta,
                               const fm_edge_variant_t *v, const char *outcome)
{
    if (v->negotiated) /* the same URL answers WebP or JPEG by Accept: shared caches must key on it */
        add_header(r->req, H2O_TOKEN_VARY, "Accept");
    serve_hit(r, fd, blob, meta, outcome);
}

static void on_rendered(fm_req_t *r, fm_edge_fill_result_t *res)
{
    fm_edge_variant_t v;
    if (reply_fill_error(r, res))
        return;
    if (request_variant(r, &v) != 0) { /* cannot happen: the handler parsed the same request */
        close(res->fd);
        fm_reply_error(r, 400, "invalid_variant", "bad variant parameters");
        return;
    }
    serve_variant_file(r, res->fd, NULL, &res->meta, &v, "variant_render");
}

/* Renders (or joins the render of) the request's variant from the original open on `src_fd` (taken). */
static void start_render(fm_req_t *r, const char *key, size_t key_len, const fm_edge_variant_t *v, int src_fd,
                         const fm_edge_meta_t *src)
{
    char vkey[FM_EDGE_CACHE_KEY_MAX + 1], vhex[FM_EDGE_HEX_LEN + 1];
    fm_edge_variant_cache_key(key, key_len, v, vkey, sizeof(vkey));
    fm_edge_cache_name(vkey, strlen(vkey), vhex);
    if (fm_edge_origin_render(r, vkey, vhex, v, src_fd, src, on_rendered) != 0)
        fm_reply_unavailable(r, "the edge's render queue");
}

/* The original is now cached (filled for this variant): render from it. */
static void on_original_filled(fm_req_t *r, fm_edge_fill_result_t *res)
{
    fm_edge_variant_t v;
    if (reply_fill_error(r, res))
        return;
    if (request_variant(r, &v) != 0) {
        close(res->fd);
        fm_reply_error(r, 400, "invalid_variant", "bad variant parameters");
        return;
    }
    start_render(r, res->meta.key, strlen(res->meta.key), &v, res->fd, &res->meta);
}

/* act for a variant: its cached rendering; else the original from the cache or the origin, then a render. */
static void serve_variant(fm_req_t *r, const char *key, size_t key_len, const fm_edge_variant_t *v)
{
    char vkey[FM_EDGE_CACHE_KEY_MAX + 1], hex[FM_EDGE_HEX_LEN + 1];
    fm_edge_variant_cache_key(key, key_len, v, vkey, sizeof(vkey));
    fm_edge_cache_name(vkey, strlen(vkey), hex);
    fm_edge_meta_t meta;
    fm_edge_blob_t *blob;
    int fd;
    if (fm_edge_cache_hit(hex, &meta, &fd, &blob)) {
        FM_METRICS_COUNT("fm_edge_variant_hits_total", NULL, 1);
        serve_variant_file(r, fd, blob, &meta, v, "variant_hit");
        return;
    }
    fm_edge_cache_name(key, key_len, hex);
    if (fm_edge_cache_hit(hex, &meta, &fd, NULL)) { /* the render reads the original from its file */
        start_render(r, key, key_len, v, fd, &meta);
        return;
    }
    if (fm_edge_origin_fill(r, key, hex, on_original_filled, NULL) != 0)
        fm_reply_unavailable(r, "the edge's origin queue");
}

/* ---- the handlers ---- */

int fm_edge_parse_target(fm_req_t *r, fm_edge_target_t *t)
{
    h2o_req_t *req = r->req;
    /* the raw path, not path_normalized, which has already resolved ".." and decoded escapes */
    h2o_iovec_t path = req->path;
    const char *q = memchr(path.base, '?', path.len);
    size_t path_len = q ? (size_t)(q - path.base) : path.len;
    if (path_len < 3 || path.base[0] != '/' || path.base[2] != '/') {
        fm_reply_error(r, 400, "invalid_path", "the path must be /f/{object key} or /p/{object key}");
        return -1;
    }
    if (path.len > FM_CF_MAX_URL - strlen(fm_edge.public_base)) {
        fm_reply_error(r, 400, "invalid_path", "the URL is longer than %d bytes", FM_CF_MAX_URL);
        return -1;
    }
    if (memchr(path.base, '\0', path.len) != NULL) {
        fm_reply_error(r, 400, "invalid_path", "NUL in the URL");
        return -1;
    }
    const char *bad = decode_key(path.base + 3, path_len - 3, t->key, &t->key_len);
    if (bad != NULL) {
        fm_reply_error(r, 400, "invalid_path", "%s", bad);
        return -1;
    }
    char variant_reason[160];
    t->is_variant = fm_edge_variant_parse(request_query(r), fm_req_header(r, "accept"), &t->variant, variant_reason,
                                          sizeof(variant_reason));
    if (t->is_variant < 0) {
        FM_METRICS_COUNT("fm_edge_variant_refused_total", NULL, 1);
        fm_reply_error(r, 400, "invalid_variant", "%s", variant_reason);
        return -1;
    }
    return 0;
}

void fm_edge_serve_target(fm_req_t *r, const fm_edge_target_t *t)
{
    if (t->is_variant) {
        serve_variant(r, t->key, t->key_len, &t->variant);
        return;
    }
    /* a hit is served at once; a miss joins the (coalesced) origin fill, streamed when it can be */
    char hex[FM_EDGE_HEX_LEN + 1];
    fm_edge_cache_name(t->key, t->key_len, hex);
    fm_edge_meta_t meta;
    fm_edge_blob_t *blob;
    int fd;
    if (fm_edge_cache_hit(hex, &meta, &fd, &blob)) {
        FM_METRICS_COUNT("fm_edge_hits_total", NULL, 1);
        serve_hit(r, fd, blob, &meta, "hit");
        return;
    }
    if (fm_edge_origin_fill(r, t->key, hex, on_filled, can_stream(r) ? on_stream_headers : NULL) != 0)
        fm_reply_unavailable(r, "the edge's origin queue");
}

void fm_edge_handle_file(fm_req_t *r)
{
    h2o_req_t *req = r->req;
    fm_edge_target_t target;
    if (fm_edge_parse_target(r, &target) != 0)
        return;

    /* authorize: the URL as the client sent it, behind the public base */
    h2o_iovec_t path = req->path;
    size_t base_len = strlen(fm_edge.public_base);
    char *url = h2o_mem_alloc_pool(&req->pool, base_len + path.len + 1);
    memcpy(url, fm_edge.public_base, base_len);
    memcpy(url + base_len, path.base, path.len);
    url[base_len + path.len] = '\0';
    char peer[64], reason[256];
    fm_req_peer(r, peer, sizeof(peer));
    long long now = (long long)time(NULL);
    long long expires = canned_expires(request_query(r));
    unsigned char digest[32];
    verified_t *slot = expires > now ? verified_slot(url, base_len + path.len, digest) : NULL;
    fm_cf_status_t verdict = FM_CF_OK;
    if (slot != NULL && slot->expires > now && memcmp(slot->digest, digest, sizeof(digest)) == 0) {
        /* verified before, and still before its signed expiry */
    } else {
        verdict = fm_cf_verify_url(fm_edge.keys, url, base_len + path.len, peer[0] ? peer : NULL, now, reason,
                                   sizeof(reason));
        if (verdict == FM_CF_OK && slot != NULL) {
            memcpy(slot->digest, digest, sizeof(digest));
            slot->expires = expires;
        }
    }
    if (verdict != FM_CF_OK) {
        FM_METRICS_COUNT("fm_edge_refused_total", NULL, 1);
        if (verdict == FM_CF_INTERNAL)
            fm_reply_unavailable(r, "signature verification");
        else
            fm_reply_error(r, 403, fm_cf_status_code(verdict), "%s", reason);
        return;
    }
    fm_edge_serve_target(r, &target);
}
