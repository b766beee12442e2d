/*
 * sigv4: AWS Signature Version 4 for S3 (see sigv4.h for the contract and the specs followed).
 *
 * Both entry points share one pipeline: parse the endpoint, build the canonical URI, encode and sort the query,
 * canonicalise the headers, hash the canonical request, sign the string-to-sign with the day's cached key.
 */
#include "sigv4.h"
#include "b64.h"
#include "qs.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#define ALGORITHM "AWS4-HMAC-SHA256"
#define MAX_PARAMS 64
#define MAX_HEADERS 32
#define MAX_ACCESS_KEY 128
#define MAX_SECRET_KEY 256
#define MAX_SESSION_TOKEN 8192
#define MAX_SCOPE_PART 64
#define MAX_BUCKET 255
#define MAX_METHOD 16
#define MAX_HEADER_NAME 128
#define MAX_HEADER_VALUE 4096
#define MAX_PARAM_LEN 4096

struct fm_sigv4 {
    char *access_key;
    char *secret_key;
    char *session_token; /* NULL without one */
    char *region;
    char *service;
    pthread_mutex_t lock; /* guards the cache fields below */
    char cached_day[9];   /* "YYYYMMDD" of cached_key, "" before the first derivation */
    unsigned char cached_key[32];
    EVP_MAC_CTX *day_mac; /* HMAC keyed with cached_key: each signature dups it instead of re-keying */
    unsigned long derivations;
};

static _Thread_local char last_error[256];

__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return -1;
}

const char *fm_sigv4_last_error(void)
{
    return last_error;
}

/* ---- a growable string; out-of-memory aborts, as the style allows ------------------------------------------ */

typedef struct {
    char *buf;
    size_t len, cap;
} sb_t;

static void sb_reserve(sb_t *sb, size_t extra)
{
    if (sb->len + extra + 1 <= sb->cap)
        return;
    size_t cap = sb->cap ? sb->cap : 256;
    while (cap < sb->len + extra + 1)
        cap *= 2;
    char *buf = realloc(sb->buf, cap);
    if (buf == NULL)
        abort();
    sb->buf = buf;
    sb->cap = cap;
}

static void sb_add(sb_t *sb, const char *s, size_t n)
{
    sb_reserve(sb, n);
    memcpy(sb->buf + sb->len, s, n);
    sb->len += n;
    sb->buf[sb->len] = '\0';
}

static void sb_adds(sb_t *sb, const char *s)
{
    sb_add(sb, s, strlen(s));
}

static void sb_addc(sb_t *sb, char c)
{
    sb_add(sb, &c, 1);
}

/* Keeps the terminating NUL inside the buffer, so several strings can share one buffer (an arena). */
static void sb_nul(sb_t *sb)
{
    sb_reserve(sb, 1);
    sb->buf[sb->len++] = '\0';
}

/* SigV4 UriEncode: RFC 3986 unreserved bytes kept, every other byte (UTF-8 included) as %XX upper-case; '/' is
 * kept only in an S3 object key's path. Spaces are %20, never '+'. */
static void sb_add_encoded(sb_t *sb, const char *s, size_t n, int keep_slash)
{
    sb_reserve(sb, 3 * n);
    sb->len = (size_t)(fm_pct_encode(sb->buf + sb->len, s, n, keep_slash ? FM_PCT_KEEP_SLASH : 0) - sb->buf);
    sb->buf[sb->len] = '\0';
}

/* SHA-256 and HMAC fetched once: OpenSSL 3 otherwise looks them up (under a global lock) on every call, which
 * costs more than the hashing itself on a presign and is shared by every event-loop thread. */
static pthread_once_t crypto_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md;
static EVP_MAC *hmac_mac;

static void crypto_init(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    hmac_mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (sha256_md == NULL || hmac_mac == NULL)
        abort();
}

void fm_sha256(const void *data, size_t len, unsigned char digest[32])
{
    pthread_once(&crypto_once, crypto_init);
    unsigned int md_len = 0;
    if (EVP_Digest(data, len, digest, &md_len, sha256_md, NULL) != 1 || md_len != 32)
        abort(); /* only fails on allocation failure */
}

void fm_sigv4_sha256_hex(const void *data, size_t len, char hex[65])
{
    unsigned char md[32];
    fm_sha256(data, len, md);
    fm_hex_encode(md, 32, hex, 65);
}

/* Crypto calls below fail only when out of memory: abort, as the style allows. */
static EVP_MAC_CTX *hmac_new(const void *key, size_t key_len)
{
    pthread_once(&crypto_once, crypto_init);
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
                           OSSL_PARAM_construct_end()};
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(hmac_mac);
    if (ctx == NULL || EVP_MAC_init(ctx, key, key_len, params) != 1)
        abort();
    return ctx;
}

/* Feeds `msg` to a keyed context, writes the MAC and frees the context. */
static void hmac_finish(EVP_MAC_CTX *ctx, const void *msg, size_t msg_len, unsigned char out[32])
{
    size_t out_len = 0;
    if (EVP_MAC_update(ctx, msg, msg_len) != 1 || EVP_MAC_final(ctx, out, &out_len, 32) != 1 || out_len != 32)
        abort();
    EVP_MAC_CTX_free(ctx);
}

static void hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len, unsigned char out[32])
{
    hmac_finish(hmac_new(key, key_len), msg, msg_len, out);
}

/* ---- the signer -------------------------------------------------------------------------------------------- */

/* Printable ASCII without the characters that would split the Credential field or a header. */
static int valid_credential(const char *s, size_t max_len, int allow_slash)
{
    size_t n = strlen(s);
    if (n == 0 || n > max_len)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == ',' || c == ';' || (!allow_slash && c == '/'))
            return 0;
    }
    return 1;
}

/* Region and service are scope components: keep them to what AWS and Ceph use. */
static int valid_scope_part(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_SCOPE_PART)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
            return 0;
    return 1;
}

fm_sigv4_t *fm_sigv4_new(const char *access_key, const char *secret_key, const char *session_token, const char *region,
                         const char *service)
{
    if (access_key == NULL || !valid_credential(access_key, MAX_ACCESS_KEY, 0)) {
        fail("access key must be 1-%d printable characters without '/', ',' or ';'", MAX_ACCESS_KEY);
        return NULL;
    }
    if (secret_key == NULL || *secret_key == '\0' || strlen(secret_key) > MAX_SECRET_KEY) {
        fail("secret key must be 1-%d bytes", MAX_SECRET_KEY);
        return NULL;
    }
    if (session_token != NULL && *session_token != '\0' && !valid_credential(session_token, MAX_SESSION_TOKEN, 1)) {
        fail("session token must be at most %d printable characters", MAX_SESSION_TOKEN);
        return NULL;
    }
    if (region == NULL || !valid_scope_part(region) || service == NULL || !valid_scope_part(service)) {
        fail("region and service must be 1-%d characters of [A-Za-z0-9_-]", MAX_SCOPE_PART);
        return NULL;
    }
    fm_sigv4_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    s->access_key = strdup(access_key);
    s->secret_key = strdup(secret_key);
    s->session_token = session_token != NULL && *session_token != '\0' ? strdup(session_token) : NULL;
    s->region = strdup(region);
    s->service = strdup(service);
    if (s->access_key == NULL || s->secret_key == NULL || s->region == NULL || s->service == NULL ||
        (session_token != NULL && *session_token != '\0' && s->session_token == NULL))
        abort();
    pthread_mutex_init(&s->lock, NULL);
    return s;
}

void fm_sigv4_free(fm_sigv4_t *s)
{
    if (s == NULL)
        return;
    OPENSSL_cleanse(s->secret_key, strlen(s->secret_key));
    OPENSSL_cleanse(s->cached_key, sizeof(s->cached_key));
    EVP_MAC_CTX_free(s->day_mac);
    free(s->access_key);
    free(s->secret_key);
    free(s->session_token);
    free(s->region);
    free(s->service);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* "YYYYMMDDTHHMMSSZ" (ISO 8601 basic, UTC), the X-Amz-Date format; its first 8 characters are the scope day. */
static int format_amz_date(time_t now, char out[17])
{
    struct tm tm;
    if (now < 0 || gmtime_r(&now, &tm) == NULL || tm.tm_year + 1900 > 9999 ||
        strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) != 16)
        return fail("signing time %lld is outside 1970-9999", (long long)now);
    return 0;
}

/* kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, day), region), service), "aws4_request"), cached for the day:
 * only the day changes it, so a presign costs one HMAC instead of five. Called with the lock held. */
static void refresh_day_key(fm_sigv4_t *s, const char *day)
{
    if (strcmp(s->cached_day, day) != 0) {
        char secret[4 + MAX_SECRET_KEY];
        size_t secret_len = strlen(s->secret_key);
        memcpy(secret, "AWS4", 4);
        memcpy(secret + 4, s->secret_key, secret_len);
        unsigned char k[32];
        hmac_sha256(secret, 4 + secret_len, day, 8, k);
        hmac_sha256(k, 32, s->region, strlen(s->region), k);
        hmac_sha256(k, 32, s->service, strlen(s->service), k);
        hmac_sha256(k, 32, "aws4_request", 12, s->cached_key);
        OPENSSL_cleanse(secret, sizeof(secret));
        OPENSSL_cleanse(k, sizeof(k));
        EVP_MAC_CTX_free(s->day_mac);
        s->day_mac = hmac_new(s->cached_key, 32);
        memcpy(s->cached_day, day, 8);
        s->cached_day[8] = '\0';
        s->derivations++;
    }
}

static void day_signing_key(fm_sigv4_t *s, const char *day, unsigned char key[32])
{
    pthread_mutex_lock(&s->lock);
    refresh_day_key(s, day);
    memcpy(key, s->cached_key, 32);
    pthread_mutex_unlock(&s->lock);
}

/* HMAC of `msg` with the day's signing key: a copy of the keyed context, so the lock covers only the copy. */
static void sign_with_day_key(fm_sigv4_t *s, const char *day, const char *msg, size_t msg_len, unsigned char out[32])
{
    pthread_mutex_lock(&s->lock);
    refresh_day_key(s, day);
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(s->day_mac);
    pthread_mutex_unlock(&s->lock);
    if (ctx == NULL)
        abort();
    hmac_finish(ctx, msg, msg_len, out);
}

int fm_sigv4_signing_key(fm_sigv4_t *s, time_t now, unsigned char key[32])
{
    char amz_date[17];
    if (format_amz_date(now, amz_date) != 0)
        return -1;
    amz_date[8] = '\0';
    day_signing_key(s, amz_date, key);
    return 0;
}

unsigned long fm_sigv4_key_derivations(fm_sigv4_t *s)
{
    pthread_mutex_lock(&s->lock);
    unsigned long n = s->derivations;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* ---- request canonicalisation ------------------------------------------------------------------------------ */

typedef struct {
    char base[300]; /* "scheme://authority" as given: what URLs start with */
    char host[256]; /* the authority as signed and sent in Host: a default port dropped */
} endpoint_t;

/* Accepts "http(s)://host[:port]" with an optional trailing '/': no userinfo, path, query or fragment, since
 * the signed path is built from bucket and key alone. */
static int parse_endpoint(const char *endpoint, endpoint_t *ep)
{
    if (endpoint == NULL)
        return fail("endpoint is missing");
    const char *rest;
    int https;
    if (strncasecmp(endpoint, "http://", 7) == 0) {
        rest = endpoint + 7;
        https = 0;
    } else if (strncasecmp(endpoint, "https://", 8) == 0) {
        rest = endpoint + 8;
        https = 1;
    } else {
        return fail("endpoint must start with http:// or https://");
    }
    size_t n = strcspn(rest, "/");
    if (n == 0 || n >= sizeof(ep->host) || (rest[n] == '/' && rest[n + 1] != '\0'))
        return fail("endpoint must be scheme://host[:port] without a path");
    const char *port = NULL;
    int in_brackets = 0;
    for (size_t i = 0; i < n; i++) {
        char c = rest[i];
        if (c == '[')
            in_brackets = 1;
        else if (c == ']')
            in_brackets = 0;
        else if (c == ':' && !in_brackets)
            port = rest + i + 1;
        else if (!isalnum((unsigned char)c) && c != '-' && c != '.' && c != '_' && !(in_brackets && c == ':'))
            return fail("endpoint host has a character outside [A-Za-z0-9._-]");
    }
    if (port != NULL) {
        size_t port_len = (size_t)(rest + n - port);
        if (port_len == 0 || port_len > 5 || strspn(port, "0123456789") < port_len)
            return fail("endpoint port must be 1-5 digits");
        /* Clients leave the scheme's default port out of Host, so it must be left out of what is signed. */
        if ((!https && port_len == 2 && memcmp(port, "80", 2) == 0) ||
            (https && port_len == 3 && memcmp(port, "443", 3) == 0))
            n = (size_t)(port - 1 - rest);
    }
    size_t base_len = (size_t)(rest - endpoint) + strcspn(rest, "/");
    memcpy(ep->base, endpoint, base_len);
    ep->base[base_len] = '\0';
    memcpy(ep->host, rest, n);
    ep->host[n] = '\0';
    return 0;
}

/* S3 canonical URI: "/bucket/key" path-style or "/key" virtual-hosted, each part URI-encoded once with '/' kept
 * in the key. S3 does not normalise the path: "a//b" and "./" are part of the key and signed as such. */
static int add_canonical_uri(sb_t *sb, const fm_sigv4_request_t *req)
{
    const char *bucket = req->bucket != NULL && *req->bucket != '\0' ? req->bucket : NULL;
    size_t key_len = req->key != NULL ? strlen(req->key) : 0;
    if (key_len > FM_SIGV4_MAX_KEY)
        return fail("object key is longer than %d bytes", FM_SIGV4_MAX_KEY);
    sb_addc(sb, '/');
    if (bucket != NULL) {
        size_t bucket_len = strlen(bucket);
        if (bucket_len > MAX_BUCKET || strchr(bucket, '/') != NULL)
            return fail("bucket name must be 1-%d characters without '/'", MAX_BUCKET);
        sb_add_encoded(sb, bucket, bucket_len, 0);
        if (key_len > 0)
            sb_addc(sb, '/');
    }
    sb_add_encoded(sb, req->key != NULL ? req->key : "", key_len, 1);
    return 0;
}

static int valid_method(const char *method)
{
    size_t n = method != NULL ? strlen(method) : 0;
    if (n == 0 || n > MAX_METHOD)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (method[i] < 'A' || method[i] > 'Z')
            return 0;
    return 1;
}

/* An encoded query pair. Its strings live in an arena (one buffer that may move while it grows), so they are
 * addressed by offset until the arena is complete and then resolved to pointers. */
typedef struct {
    size_t name_off, value_off;
    const char *name, *value;
} qpair_t;

static int qpair_cmp(const void *a, const void *b)
{
    const qpair_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c != 0 ? c : strcmp(x->value, y->value);
}

/* Adds "name" and "value" URI-encoded (no '/' kept), each NUL-terminated, to the arena. */
static void arena_pair(sb_t *arena, qpair_t *pair, const char *name, size_t name_len, const char *value,
                       size_t value_len)
{
    pair->name_off = arena->len;
    sb_add_encoded(arena, name, name_len, 0);
    sb_nul(arena);
    pair->value_off = arena->len;
    sb_add_encoded(arena, value, value_len, 0);
    sb_nul(arena);
}

/* Headers the signer writes itself; a caller's copy would be signed twice or contradict ours. */
static int reserved_header(const char *lname, int header_auth)
{
    return strcmp(lname, "host") == 0 || strcmp(lname, "authorization") == 0 || strcmp(lname, "x-amz-date") == 0 ||
           strcmp(lname, "x-amz-security-token") == 0 || (header_auth && strcmp(lname, "x-amz-content-sha256") == 0);
}

/* A signed header: lower-case name and canonical value in the header arena; `order` keeps repeats in order. */
typedef struct {
    size_t name_off, value_off;
    size_t order;
    const char *name, *value;
} hpair_t;

static int hpair_cmp(const void *a, const void *b)
{
    const hpair_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c != 0 ? c : (x->order < y->order ? -1 : x->order > y->order);
}

static int is_tchar(unsigned char c)
{
    return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Canonical header value: leading/trailing blanks trimmed and inner runs of blanks collapsed to one space (the
 * SigV4 "Trimall"). Control characters are refused: a CR/LF would inject a header. */
static int arena_header(sb_t *arena, hpair_t *h, const char *name, const char *value, size_t order, int header_auth)
{
    size_t name_len = name != NULL ? strlen(name) : 0;
    if (name_len == 0 || name_len > MAX_HEADER_NAME)
        return fail("header name must be 1-%d characters", MAX_HEADER_NAME);
    for (size_t i = 0; i < name_len; i++)
        if (!is_tchar((unsigned char)name[i]))
            return fail("header name has a character that is not an HTTP token character");
    if (value == NULL || strlen(value) > MAX_HEADER_VALUE)
        return fail("header %s needs a value of at most %d bytes", name, MAX_HEADER_VALUE);
    h->order = order;
    h->name_off = arena->len;
    for (size_t i = 0; i < name_len; i++)
        sb_addc(arena, (char)tolower((unsigned char)name[i]));
    sb_nul(arena);
    const char *lname = arena->buf + h->name_off;
    if (reserved_header(lname, header_auth))
        return fail("header %s is set by the signer", lname);
    for (const unsigned char *p = (const unsigned char *)value; *p != '\0'; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return fail("header %s has a control character in its value", lname);
    h->value_off = arena->len;
    int pending_space = 0;
    for (const char *p = value; *p != '\0'; p++) {
        if (*p == ' ' || *p == '\t') {
            pending_space = arena->len > h->value_off;
            continue;
        }
        if (pending_space)
            sb_addc(arena, ' ');
        pending_space = 0;
        sb_addc(arena, *p);
    }
    sb_nul(arena);
    return 0;
}

/* Everything both signing modes derive from a request before the signature. */
typedef struct {
    endpoint_t ep;
    char amz_date[17];
    char day[9];
    sb_t uri;    /* canonical URI */
    sb_t parena; /* encoded query names and values */
    qpair_t params[MAX_PARAMS + 8];
    size_t param_count;    /* the request's own params first, then the presign auth params */
    size_t op_param_count; /* how many of them are the request's own */
    sb_t harena;           /* lower-case header names and canonical values */
    hpair_t headers[MAX_HEADERS + 4];
    size_t header_count;
    sb_t signed_headers; /* "content-type;host" */
} canon_t;

static void canon_free(canon_t *c)
{
    free(c->uri.buf);
    free(c->parena.buf);
    free(c->harena.buf);
    free(c->signed_headers.buf);
}

static int reserved_param(const char *name)
{
    static const char *const ours[] = {"Algorithm",     "Credential", "Date",          "Expires",
                                       "SignedHeaders", "Signature",  "Security-Token"};
    if (strncasecmp(name, "X-Amz-", 6) != 0)
        return 0;
    for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
        if (strcasecmp(name + 6, ours[i]) == 0)
            return 1;
    return 0;
}

/* Validates and encodes the request; `header_auth` selects which headers and params are reserved. */
static int canon_begin(canon_t *c, const fm_sigv4_request_t *req, time_t now, int header_auth)
{
    memset(c, 0, sizeof(*c));
    if (req == NULL)
        return fail("request is missing");
    if (!valid_method(req->method))
        return fail("method must be 1-%d upper-case letters", MAX_METHOD);
    if (format_amz_date(now, c->amz_date) != 0 || parse_endpoint(req->endpoint, &c->ep) != 0 ||
        add_canonical_uri(&c->uri, req) != 0)
        return -1;
    memcpy(c->day, c->amz_date, 8);
    if (req->param_count > MAX_PARAMS || (req->param_count > 0 && req->params == NULL))
        return fail("at most %d query parameters", MAX_PARAMS);
    if (req->header_count > MAX_HEADERS || (req->header_count > 0 && req->headers == NULL))
        return fail("at most %d signed headers", MAX_HEADERS);
    for (size_t i = 0; i < req->param_count; i++) {
        const char *name = req->params[i].name, *value = req->params[i].value ? req->params[i].value : "";
        if (name == NULL || *name == '\0' || strlen(name) > MAX_PARAM_LEN || strlen(value) > MAX_PARAM_LEN)
            return fail("query parameter names must be 1-%d bytes and values at most %d", MAX_PARAM_LEN, MAX_PARAM_LEN);
        /* The presign auth parameters are ours; a caller's copy would be a second, conflicting value. */
        if (!header_auth && reserved_param(name))
            return fail("query parameter %s is set by the signer", name);
        arena_pair(&c->parena, &c->params[c->param_count++], name, strlen(name), value, strlen(value));
    }
    c->op_param_count = c->param_count;
    for (size_t i = 0; i < req->header_count; i++)
        if (arena_header(&c->harena, &c->headers[c->header_count++], req->headers[i].name, req->headers[i].value, i,
                         header_auth) != 0)
            return -1;
    return 0;
}

/* A header the signer adds itself (its name is lower-case and its value canonical already). */
static void canon_own_header(canon_t *c, const char *name, const char *value)
{
    hpair_t *h = &c->headers[c->header_count];
    h->order = MAX_HEADERS + c->header_count++;
    h->name_off = c->harena.len;
    sb_adds(&c->harena, name);
    sb_nul(&c->harena);
    h->value_off = c->harena.len;
    sb_adds(&c->harena, value);
    sb_nul(&c->harena);
}

/* All headers are in: resolve, sort by name (repeats in the order given) and build SignedHeaders. */
static void canon_end_headers(canon_t *c)
{
    for (size_t i = 0; i < c->header_count; i++) {
        c->headers[i].name = c->harena.buf + c->headers[i].name_off;
        c->headers[i].value = c->harena.buf + c->headers[i].value_off;
    }
    qsort(c->headers, c->header_count, sizeof(hpair_t), hpair_cmp);
    sb_add(&c->signed_headers, "", 0);
    for (size_t i = 0; i < c->header_count; i++) {
        if (i > 0 && strcmp(c->headers[i].name, c->headers[i - 1].name) == 0)
            continue;
        if (c->signed_headers.len > 0)
            sb_addc(&c->signed_headers, ';');
        sb_adds(&c->signed_headers, c->headers[i].name);
    }
}

/* All params are in: resolve them. They stay in the order given, which is the URL's order. */
static void canon_end_params(canon_t *c)
{
    for (size_t i = 0; i < c->param_count; i++) {
        c->params[i].name = c->parena.buf + c->params[i].name_off;
        c->params[i].value = c->parena.buf + c->params[i].value_off;
    }
}

/* Joins pairs as "a=1&b=2"; a parameter without a value is still "name=" (the SigV4 canonical form). */
static void add_query(sb_t *sb, const qpair_t *pairs, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (i > 0)
            sb_addc(sb, '&');
        sb_adds(sb, pairs[i].name);
        sb_addc(sb, '=');
        sb_adds(sb, pairs[i].value);
    }
}

/* SigV4 canonical request -> string to sign -> HMAC with the day's key; writes the 64-hex signature. */
static void canon_sign(fm_sigv4_t *s, const canon_t *c, const char *method, const char *payload_hash,
                       char signature[65])
{
    sb_t cr = {0};
    sb_adds(&cr, method);
    sb_addc(&cr, '\n');
    sb_add(&cr, c->uri.buf, c->uri.len);
    sb_addc(&cr, '\n');
    /* Canonical query: every parameter, auth ones included, sorted by encoded name, then encoded value. */
    qpair_t sorted[MAX_PARAMS + 8];
    memcpy(sorted, c->params, c->param_count * sizeof(qpair_t));
    qsort(sorted, c->param_count, sizeof(qpair_t), qpair_cmp);
    add_query(&cr, sorted, c->param_count);
    sb_addc(&cr, '\n');
    for (size_t i = 0; i < c->header_count; i++) {
        const hpair_t *h = &c->headers[i];
        if (i > 0 && strcmp(h->name, c->headers[i - 1].name) == 0) {
            cr.len--; /* a repeated header: values joined by ',' in the order given */
            sb_addc(&cr, ',');
        } else {
            sb_adds(&cr, h->name);
            sb_addc(&cr, ':');
        }
        sb_adds(&cr, h->value);
        sb_addc(&cr, '\n');
    }
    sb_addc(&cr, '\n');
    sb_add(&cr, c->signed_headers.buf, c->signed_headers.len);
    sb_addc(&cr, '\n');
    sb_adds(&cr, payload_hash);

    char cr_hash[65];
    fm_sigv4_sha256_hex(cr.buf, cr.len, cr_hash);
    free(cr.buf);

    char sts[256];
    int sts_len = snprintf(sts, sizeof(sts), ALGORITHM "\n%s\n%s/%s/%s/aws4_request\n%s", c->amz_date, c->day,
                           s->region, s->service, cr_hash);
    unsigned char mac[32];
    sign_with_day_key(s, c->day, sts, (size_t)sts_len, mac);
    fm_hex_encode(mac, 32, signature, 65);
}

/* scheme://authority/path, the start of every URL we hand out. */
static void add_base_url(sb_t *sb, const canon_t *c)
{
    sb_adds(sb, c->ep.base);
    sb_add(sb, c->uri.buf, c->uri.len);
}

/* ---- the two signing modes --------------------------------------------------------------------------------- */

int fm_sigv4_presign(fm_sigv4_t *s, const fm_sigv4_request_t *req, long expires, time_t now, char **url)
{
    *url = NULL;
    if (expires < 1 || expires > FM_SIGV4_MAX_EXPIRES)
        return fail("expiry must be 1-%d seconds (7 days), got %ld", FM_SIGV4_MAX_EXPIRES, expires);
    canon_t c;
    if (canon_begin(&c, req, now, 0) != 0) {
        canon_free(&c);
        return -1;
    }
    canon_own_header(&c, "host", c.ep.host);
    canon_end_headers(&c);

    /* SigV4 query auth parameters, in botocore's order; the URL has them after the request's own params. */
    char credential[MAX_ACCESS_KEY + 2 * MAX_SCOPE_PART + 32];
    int credential_len = snprintf(credential, sizeof(credential), "%s/%s/%s/%s/aws4_request", s->access_key, c.day,
                                  s->region, s->service);
    char expires_str[24];
    int expires_len = snprintf(expires_str, sizeof(expires_str), "%ld", expires);
    arena_pair(&c.parena, &c.params[c.param_count++], "X-Amz-Algorithm", 15, ALGORITHM, strlen(ALGORITHM));
    arena_pair(&c.parena, &c.params[c.param_count++], "X-Amz-Credential", 16, credential, (size_t)credential_len);
    arena_pair(&c.parena, &c.params[c.param_count++], "X-Amz-Date", 10, c.amz_date, 16);
    arena_pair(&c.parena, &c.params[c.param_count++], "X-Amz-Expires", 13, expires_str, (size_t)expires_len);
    arena_pair(&c.parena, &c.params[c.param_count++], "X-Amz-SignedHeaders", 19, c.signed_headers.buf,
               c.signed_headers.len);
    /* A session token goes into the signed query (as botocore does), not into a header the browser must send. */
    if (s->session_token != NULL)
        arena_pair(&c.parena, &c.params[c.param_count++], "X-Amz-Security-Token", 20, s->session_token,
                   strlen(s->session_token));
    canon_end_params(&c);

    char signature[65];
    canon_sign(s, &c, req->method, FM_SIGV4_UNSIGNED_PAYLOAD, signature);

    sb_t out = {0};
    add_base_url(&out, &c);
    sb_addc(&out, '?');
    add_query(&out, c.params, c.op_param_count);
    if (c.op_param_count > 0)
        sb_addc(&out, '&');
    add_query(&out, c.params + c.op_param_count, c.param_count - c.op_param_count);
    sb_adds(&out, "&X-Amz-Signature=");
    sb_adds(&out, signature);
    canon_free(&c);
    *url = out.buf;
    return 0;
}

static int valid_payload_hash(const char *h)
{
    if (strcmp(h, FM_SIGV4_UNSIGNED_PAYLOAD) == 0)
        return 1;
    if (strlen(h) != 64)
        return 0;
    for (size_t i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
            return 0;
    return 1;
}

int fm_sigv4_sign_headers(fm_sigv4_t *s, const fm_sigv4_request_t *req, const char *payload_sha256, time_t now,
                          fm_sigv4_auth_t *out)
{
    memset(out, 0, sizeof(*out));
    const char *payload = payload_sha256 != NULL ? payload_sha256 : FM_SIGV4_UNSIGNED_PAYLOAD;
    if (!valid_payload_hash(payload))
        return fail("payload hash must be 64 lower-case hex digits or UNSIGNED-PAYLOAD");
    canon_t c;
    if (canon_begin(&c, req, now, 1) != 0) {
        canon_free(&c);
        return -1;
    }
    canon_own_header(&c, "host", c.ep.host);
    canon_own_header(&c, "x-amz-content-sha256", payload);
    canon_own_header(&c, "x-amz-date", c.amz_date);
    if (s->session_token != NULL)
        canon_own_header(&c, "x-amz-security-token", s->session_token);
    canon_end_headers(&c);
    canon_end_params(&c);

    char signature[65];
    canon_sign(s, &c, req->method, payload, signature);
    /* botocore's layout, ", " between the parts (the AWS examples omit the space; S3 takes both). */
    int n = snprintf(out->authorization, sizeof(out->authorization),
                     ALGORITHM " Credential=%s/%s/%s/%s/aws4_request, SignedHeaders=%s, Signature=%s", s->access_key,
                     c.day, s->region, s->service, c.signed_headers.buf, signature);
    if (n < 0 || (size_t)n >= sizeof(out->authorization)) {
        canon_free(&c);
        memset(out, 0, sizeof(*out));
        return fail("Authorization header would exceed %d bytes", FM_SIGV4_AUTHORIZATION_MAX - 1);
    }
    memcpy(out->host, c.ep.host, sizeof(out->host));
    memcpy(out->amz_date, c.amz_date, sizeof(out->amz_date));
    memcpy(out->content_sha256, payload, strlen(payload) + 1);
    out->security_token = s->session_token;
    canon_free(&c);
    return 0;
}

int fm_sigv4_url(const fm_sigv4_request_t *req, char **url)
{
    *url = NULL;
    canon_t c;
    if (canon_begin(&c, req, 0, 1) != 0) {
        canon_free(&c);
        return -1;
    }
    canon_end_params(&c);
    sb_t out = {0};
    add_base_url(&out, &c);
    if (c.param_count > 0) {
        sb_addc(&out, '?');
        add_query(&out, c.params, c.param_count);
    }
    canon_free(&c);
    *url = out.buf;
    return 0;
}
