/*
 * The answer step of /f/ and /p/ (serve.c): conditional requests (If-None-Match, If-Modified-Since, If-Range), one
 * byte range, Content-Disposition from the signed query, the response headers, the body, the request's accounting
 * and its access event.
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
#include "mediatype.h"
#include "qs.h"
#include "metrics.h"

#define SEND_CHUNK (256 * 1024)
#define NAME_MAX_BYTES 255

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
            int byte = fm_pct_escape(raw.base + i, raw.len - i);
            if (byte < 0)
                return NULL;
            c = (unsigned char)byte;
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
void fm_edge_add_header(h2o_req_t *req, const h2o_token_t *token, const char *value)
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
 * key's answer may be kept by shared caches, briefly and revalidated after (FM_EDGE_PUBLIC_MAX_AGE_S): making the file
 * private or trashing it must reach them soon, and a revalidation is a 304 while it stays public. */
static void add_cache_control(fm_req_t *r)
{
    long long max_age = fm_edge.cfg->edge_max_age_s;
    h2o_iovec_t path = r->req->path;
    if (is_public_request(r)) {
        char value[64];
        snprintf(value, sizeof(value), "public, max-age=%lld, must-revalidate",
                 (long long)fm_edge.cfg->edge_public_max_age_s);
        fm_edge_add_header(r->req, H2O_TOKEN_CACHE_CONTROL, value);
        return;
    }
    const char *q = memchr(path.base, '?', path.len);
    if (q != NULL) {
        h2o_iovec_t expires =
            fm_qs_raw(h2o_iovec_init(q + 1, path.len - (size_t)(q + 1 - path.base)), "Expires", 0, NULL);
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
    fm_edge_add_header(r->req, H2O_TOKEN_CACHE_CONTROL, value);
}

/* ---- active content (docs/downloads.md "Active types") ----
 *
 * The edge serves what users uploaded from one origin, so a file must never become a live document there (stored XSS:
 * an SVG, an HTML page or an XML file with a script, opened by a link to the edge). Decided on the type served, never
 * on the URL: `disposition=inline` is honoured only for the types below, which a browser shows without running
 * anything of the file's (raster images, audio, video, plain text, PDF in the browser's own sandboxed viewer); every
 * other type is an attachment, kept from other sites' <script>/<link> by Cross-Origin-Resource-Policy, and every
 * answer carries a CSP that forbids scripts, plugins and every fetch, with `sandbox` (an opaque origin) for all but
 * audio and video. Measured in Chromium 156 (docs/decisions.md): `sandbox` keeps images and PDFs viewable but stops a
 * top-level <video>/<audio> document from loading its own URL (the opaque origin turns it into a CORS request), and
 * `default-src 'none'` alone blocks it too, hence `media-src 'self'` and no sandbox there; 'unsafe-inline' styles
 * are the browser's own image-document styles (a document without scripts gains nothing from them). */

/* Every answer of /f/ and /p/ (errors included) until an object's own headers replace it. */
static const char csp_sandboxed[] = "default-src 'none'; style-src 'unsafe-inline'; sandbox";
/* Audio and video: playable at the top level (see above); scripts stay forbidden by default-src. */
static const char csp_media[] = "default-src 'none'; media-src 'self'; style-src 'unsafe-inline'";

typedef enum { TYPE_ACTIVE, TYPE_PASSIVE, TYPE_MEDIA } type_class_t;

/* An allowlist, not a list of dangerous types: a type nobody thought of (text/xsl, application/vnd.…+xml,
 * multipart/x-mixed-replace, a malformed "image/png, text/html") is an attachment. */
static type_class_t classify(const char *content_type)
{
    static const char *const passive[] = {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "image/tiff",
        "image/heic",
        "image/heif",
        "image/x-icon",
        "image/vnd.microsoft.icon",
        "text/plain",
        "application/pdf",
    };
    /* One valid media type (common/mediatype.h) or the worst case: a browser reads a Content-Type as a comma-separated
     * list and takes the LAST type it can parse (Fetch "extract a MIME type"), so "text/plain; charset=utf-8,
     * text/html" renders as HTML; a comma even inside a quoted parameter is not worth the risk of a reader that
     * splits first. Parameters never make a type passive: "TEXT/HTML ;charset=utf-8" is text/html. */
    char type[FM_MEDIA_TYPE_MAX_BYTES + 1];
    if (strchr(content_type, ',') != NULL || fm_media_type_essence(content_type, type, sizeof(type)) != 0)
        return TYPE_ACTIVE;
    for (size_t i = 0; i < sizeof(passive) / sizeof(passive[0]); ++i)
        if (strcmp(type, passive[i]) == 0)
            return TYPE_PASSIVE;
    if (strncmp(type, "audio/", 6) == 0 || strncmp(type, "video/", 6) == 0) /* the subtype is a token (parsed) */
        return TYPE_MEDIA;
    return TYPE_ACTIVE;
}

static void set_header(h2o_req_t *req, const char *name, size_t name_len, const char *value, size_t value_len)
{
    h2o_set_header_by_str(&req->pool, &req->res.headers, name, name_len, 0, value, value_len, 1);
}

/* Added, not set: called on an answer without headers yet (the handler's first step, or after reset_headers). */
void fm_edge_security_headers(h2o_req_t *req)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("content-security-policy"), 0, NULL,
                          H2O_STRLIT(csp_sandboxed));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0, NULL,
                          H2O_STRLIT("nosniff"));
}

/* The request's Range as it applies to `meta` (RFC 9110 §13.1.5: If-Range with another, or a weak, validator sends the
 * whole representation). */
static fm_edge_range_t choose_range(fm_req_t *r, const fm_edge_meta_t *meta, uint64_t *first, uint64_t *last)
{
    h2o_iovec_t range = fm_req_header(r, "range");
    if (range.base == NULL)
        return FM_EDGE_RANGE_NONE;
    h2o_iovec_t if_range = fm_req_header(r, "if-range");
    if (if_range.base != NULL &&
        !(meta->etag[0] == '"' && h2o_memis(if_range.base, if_range.len, meta->etag, strlen(meta->etag))))
        return FM_EDGE_RANGE_NONE;
    return fm_edge_range_parse(range.base, range.len, meta->size, first, last);
}

static h2o_iovec_t request_query(h2o_req_t *req)
{
    const char *q = memchr(req->path.base, '?', req->path.len);
    return q ? h2o_iovec_init(q + 1, req->path.len - (size_t)(q + 1 - req->path.base)) : h2o_iovec_init("", 0);
}

int fm_edge_answer_plan(fm_req_t *r, const fm_edge_meta_t *meta, uint64_t *first, uint64_t *length)
{
    h2o_req_t *req = r->req;
    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD")) || not_modified(r, meta))
        return 0;
    h2o_iovec_t query = request_query(req);
    h2o_iovec_t name = fm_qs_raw(query, "name", 0, NULL), disposition = fm_qs_raw(query, "disposition", 0, NULL);
    if (disposition.base != NULL && !h2o_memis(disposition.base, disposition.len, H2O_STRLIT("inline")) &&
        !h2o_memis(disposition.base, disposition.len, H2O_STRLIT("attachment")))
        return 0;
    if (name.base != NULL && content_disposition(&req->pool, "inline", name) == NULL)
        return 0;
    uint64_t last = 0;
    switch (choose_range(r, meta, first, &last)) {
    case FM_EDGE_RANGE_UNSATISFIABLE:
        return 0;
    case FM_EDGE_RANGE_ONE:
        *length = last - *first + 1;
        return 1;
    case FM_EDGE_RANGE_NONE:
    default:
        *first = 0;
        *length = meta->size;
        return meta->size > 0;
    }
}

/* An error after fm_edge_serve_file began adding headers: those were for the object, not for the error. */
static void reset_headers(fm_req_t *r)
{
    r->req->res.headers = (h2o_headers_t){NULL};
    fm_edge_security_headers(r->req);
}

/* The generator of an answer sent in one final h2o_send (or none): nothing to proceed or stop. */
static h2o_generator_t one_send = {NULL, NULL};

/*
 * The status and headers of an answer about `meta` (a cached object, or one a fill is still writing): conditional
 * GET, Content-Disposition, one byte range, the access event (`outcome`). Returns 1 with the body's part to send in
 * [*first, *first + *length), or 0 when it answered entirely (304, 400, 416, HEAD, an empty body).
 */
int fm_edge_answer_headers(fm_req_t *r, const fm_edge_meta_t *meta, const char *outcome, uint64_t *first,
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
        fm_edge_add_header(req, H2O_TOKEN_ETAG, meta->etag); /* fm_edge_add_header copies into the pool */
    fm_edge_add_header(req, H2O_TOKEN_LAST_MODIFIED, last_modified);
    add_cache_control(r);
    /* Set, not added: the handler put the strict policy on the answer first (fm_edge_security_headers). Before the
     * 304 too, whose headers replace those a browser cached with the body (RFC 9111 §4.3.4). */
    const char *content_type = meta->content_type[0] ? meta->content_type : "application/octet-stream";
    type_class_t type_class = classify(content_type);
    set_header(req, H2O_STRLIT("content-security-policy"), type_class == TYPE_MEDIA ? csp_media : csp_sandboxed,
               type_class == TYPE_MEDIA ? sizeof(csp_media) - 1 : sizeof(csp_sandboxed) - 1);
    set_header(req, H2O_STRLIT("x-content-type-options"), H2O_STRLIT("nosniff"));

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
    h2o_iovec_t query = request_query(req);
    h2o_iovec_t name = fm_qs_raw(query, "name", 0, NULL), disposition = fm_qs_raw(query, "disposition", 0, NULL);
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
    /* The served type decides, whatever the URL asks (a /p/ URL's disposition is anybody's to change). */
    int forced = type_class == TYPE_ACTIVE;
    if (forced)
        type = "attachment";
    if (name.base != NULL) {
        char *value = content_disposition(&req->pool, type, name);
        if (value == NULL) {
            reset_headers(r);
            fm_reply_error(r, 400, "invalid_name", "name must be 1..255 bytes of percent-encoded UTF-8");
            return 0;
        }
        fm_edge_add_header(req, H2O_TOKEN_CONTENT_DISPOSITION, value);
    } else if (disposition.base != NULL || forced) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_DISPOSITION, NULL, type, strlen(type));
    }
    if (forced) /* no other site may pull it in as a script or a style sheet either */
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("cross-origin-resource-policy"), 0, NULL,
                              H2O_STRLIT("same-origin"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ACCEPT_RANGES, NULL, H2O_STRLIT("bytes"));
    fm_edge_add_header(req, H2O_TOKEN_CONTENT_TYPE, content_type);

    uint64_t last = meta->size ? meta->size - 1 : 0;
    *first = 0;
    *length = meta->size;
    int status = 200;
    switch (choose_range(r, meta, first, &last)) {
    case FM_EDGE_RANGE_NONE:
        break;
    case FM_EDGE_RANGE_UNSATISFIABLE: {
        char content_range[64];
        snprintf(content_range, sizeof(content_range), "bytes */%llu", (unsigned long long)meta->size);
        reset_headers(r);
        fm_req_add_header(r, "content-range", content_range);
        fm_reply_error(r, 416, "range_not_satisfiable", "the range is outside the object's %llu bytes",
                       (unsigned long long)meta->size);
        return 0;
    }
    case FM_EDGE_RANGE_ONE: {
        status = 206;
        *length = last - *first + 1;
        char *content_range = h2o_mem_alloc_pool(&req->pool, 80);
        snprintf(content_range, 80, "bytes %llu-%llu/%llu", (unsigned long long)*first, (unsigned long long)last,
                 (unsigned long long)meta->size);
        fm_edge_add_header(req, H2O_TOKEN_CONTENT_RANGE, content_range);
        break;
    }
    }

    req->res.status = status;
    req->res.reason = status == 206 ? "Partial Content" : "OK";
    req->res.content_length = *length;
    account(r, status);
    int is_head = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    fm_edge_event(meta->key, outcome, status, is_head ? 0 : *length, peer);
    if (is_head || *length == 0) {
        h2o_start_response(req, &one_send);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
        return 0;
    }
    FM_METRICS_COUNT("fm_edge_bytes_served_total", NULL, (double)*length);
    return 1;
}

/* Answers from an open cached file (takes `fd`); `outcome` goes into the access event. */
void fm_edge_serve_file(fm_req_t *r, int fd, const fm_edge_meta_t *meta, const char *outcome)
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
    if (!fm_edge_answer_headers(r, meta, outcome, &first, &length)) {
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
    if (!fm_edge_answer_headers(r, meta, outcome, &first, &length))
        return;
    h2o_iovec_t vec = h2o_iovec_init(fm_edge_blob_bytes(blob) + first, (size_t)length);
    h2o_start_response(req, &one_send);
    h2o_send(req, &vec, 1, H2O_SEND_STATE_FINAL);
}

/* A hit found by fm_edge_cache_hit: from memory or from the open file. */
void fm_edge_serve_hit(fm_req_t *r, int fd, fm_edge_blob_t *blob, const fm_edge_meta_t *meta, const char *outcome)
{
    if (blob != NULL)
        serve_blob(r, blob, meta, outcome);
    else
        fm_edge_serve_file(r, fd, meta, outcome);
}
