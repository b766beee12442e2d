/*
 * GET/HEAD /f/{key}?{signed query}: a CloudFront-style signed download (docs/downloads.md "fm-edge"). The parse, act
 * and answer steps are shared with the unsigned /p/ route of public keys (public.c), which authorizes differently.
 *
 * parse (the raw path: refuse `..`, `.`, empty segments, encoded '/', '\', NUL and control bytes, > 1024-byte keys)
 * and the variant parameters w/h/fit/format/q (variant.c), the `file` (and `share`) ids → authorize (fm_cf_verify_url on
 * FM_EDGE_PUBLIC_BASE + the path and query exactly as received, client IP = TCP peer; then the signed `file` id, which
 * every URL we sign carries, and its share are checked against the revocation marks, revoke.c) → act (cache hit, or join a coalesced origin fill: a
 * plain GET/HEAD is answered from the origin's headers and streamed by origin.c while the fill writes, a Range or
 * conditional request waits for the cached file; for a variant: its cached rendering, or the original (cached or
 * filled) then a coalesced render) → answer (answer.c: conditional GET, one byte range, headers, the bytes, an access
 * event). Every refusal happens before the cache or the origin is touched.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "edge.h"
#include "metrics.h"
#include "qs.h"
#include "sigv4.h"
#include "uuid.h"

/* ---- parse ---- */

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
            int byte = fm_pct_escape(raw + i, raw_len - i);
            if (byte < 0)
                return "bad percent-encoding in the path";
            c = (unsigned char)byte;
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

/* ---- fills ---- */

/*
 * A cold miss that can take the body as it comes (can_stream): its answer from the origin's headers, as a hit's
 * would be; origin.c streams the body. HEAD and an empty object are answered here.
 */
static int on_stream_headers(fm_req_t *r, const fm_edge_meta_t *head)
{
    uint64_t first, length;
    return fm_edge_answer_headers(r, head, "miss", &first, &length);
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
        fm_edge_serve_file(r, res->fd, &res->meta, "miss");
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
    if (fm_qs_raw(query, "Policy", 0, NULL).base != NULL)
        return 0;
    h2o_iovec_t expires = fm_qs_raw(query, "Expires", 0, NULL);
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

/* The raw query, "" without one. */
static h2o_iovec_t request_query(fm_req_t *r)
{
    h2o_iovec_t query = fm_req_query(r);
    return query.base != NULL ? query : h2o_iovec_init("", 0);
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
        fm_edge_add_header(r->req, H2O_TOKEN_VARY, "Accept");
    fm_edge_serve_hit(r, fd, blob, meta, outcome);
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
    fm_edge_security_headers(req); /* every answer from here on, refusals included: answer.c "active content" */
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
    h2o_iovec_t query = request_query(r);
    const struct {
        const char *name;
        char *out;
    } ids[] = {{"file", t->file_id}, {"share", t->share_id}};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); ++i) {
        h2o_iovec_t id = fm_qs_raw(query, ids[i].name, 0, NULL);
        ids[i].out[0] = '\0';
        if (id.base == NULL)
            continue;
        if (!fm_uuid_lower_valid(id.base, id.len)) {
            fm_reply_error(r, 400, "invalid_path", "%s must be a lowercase UUID", ids[i].name);
            return -1;
        }
        memcpy(ids[i].out, id.base, 36);
        ids[i].out[36] = '\0';
    }
    t->cache_key_len = (size_t)snprintf(t->cache_key, sizeof(t->cache_key), "%s", t->key);
    if (t->file_id[0] != '\0')
        t->cache_key_len = (size_t)snprintf(t->cache_key, sizeof(t->cache_key), "%s%c" FM_EDGE_PARTITION "%s", t->key,
                                            FM_EDGE_VARIANT_SEP, t->file_id);
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
    /* everything below works on the file's partition of the cache (FM_EDGE_PARTITION); the origin is asked for the
     * object key it starts with */
    if (t->is_variant) {
        serve_variant(r, t->cache_key, t->cache_key_len, &t->variant);
        return;
    }
    /* a hit is served at once; a miss joins the (coalesced) origin fill, streamed when it can be */
    char hex[FM_EDGE_HEX_LEN + 1];
    fm_edge_cache_name(t->cache_key, t->cache_key_len, hex);
    fm_edge_meta_t meta;
    fm_edge_blob_t *blob;
    int fd;
    if (fm_edge_cache_hit(hex, &meta, &fd, &blob)) {
        FM_METRICS_COUNT("fm_edge_hits_total", NULL, 1);
        fm_edge_serve_hit(r, fd, blob, &meta, "hit");
        return;
    }
    if (fm_edge_origin_miss(r, t->cache_key, hex, on_filled, can_stream(r) ? on_stream_headers : NULL) != 0)
        fm_reply_unavailable(r, "the edge's origin queue");
}

void fm_edge_object_key(const char *cache_key, char *out, size_t size)
{
    const char *sep = strchr(cache_key, FM_EDGE_VARIANT_SEP);
    size_t len = sep != NULL ? (size_t)(sep - cache_key) : strlen(cache_key);
    snprintf(out, size, "%.*s", (int)len, cache_key);
}

static void on_revocation_checked(fm_req_t *r, fm_edge_revoke_t verdict)
{
    const fm_edge_target_t *t = r->state;
    switch (verdict) {
    case FM_EDGE_NOT_REVOKED:
        fm_edge_serve_target(r, t);
        return;
    case FM_EDGE_REVOKED:
        FM_METRICS_COUNT("fm_edge_refused_total", NULL, 1);
        fm_reply_error(r, 410, "revoked", "this download link was revoked (the file was deleted or the share ended)");
        return;
    case FM_EDGE_REVOKE_UNKNOWN:
    default:
        fm_reply_unavailable(r, "the revocation index");
        return;
    }
}

void fm_edge_handle_file(fm_req_t *r)
{
    h2o_req_t *req = r->req;
    fm_edge_target_t *target = fm_req_state(r, sizeof(fm_edge_target_t));
    if (fm_edge_parse_target(r, target) != 0)
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
    /* Many files share one blob key: what a URL may still fetch depends on the file (and share) it was signed for. */
    if (target->file_id[0] == '\0') {
        FM_METRICS_COUNT("fm_edge_refused_total", NULL, 1);
        fm_reply_error(r, 403, "unbound_url", "the signed URL names no file (file=)");
        return;
    }
    const char *ids[] = {target->file_id, target->share_id};
    fm_edge_check_revoked(r, ids, 2, on_revocation_checked);
}
