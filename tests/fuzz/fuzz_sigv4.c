/*
 * Fuzz target for common/sigv4.c: fm_sigv4_presign (the URLs handed to browsers), plus fm_sigv4_sign_headers and
 * fm_sigv4_url on the same request, with an arbitrary object key, query parameters and signed headers.
 *
 * Input layout (see README.md):
 *   byte 0  bits 0-1 endpoint (3: taken from the fields), bit 2 path-style bucket (with bit 7: the bucket name is
 *           taken from the fields), bit 3 signer with a session token, bits 4-6 method (6: "", 7: from the fields)
 *   byte 1  low nibble: number of query parameters (0-13; 14: 64, the most allowed; 15: 65), high nibble: number
 *           of headers (0-13; 14: 32, the most allowed; 15: 33)
 *   byte 2  bits 0-2 X-Amz-Expires (some out of range), bits 3-5 the signing time (two outside 1970-9999),
 *           bits 6-7 the payload hash for header signing (NULL, empty-body SHA-256, UNSIGNED-PAYLOAD, from the fields)
 *   then NUL-separated fields: [endpoint] [method] [bucket] key, name/value per parameter, name/value per header,
 *   [payload hash]. A missing field is NULL. The key is cut at 1100 bytes, a little over S3's 1024.
 *
 * Invariants when presigning succeeds: the URL is printable ASCII of RFC 3986's unreserved and reserved sets,
 * each '%' starts a %XX escape with upper-case hex; it starts with the endpoint; its path decodes to
 * /bucket/key; its query decodes to the request's parameters in order followed by the SigV4 ones in botocore's
 * order, X-Amz-Signature last with 64 lower-case hex; presigning again gives the same URL; and fm_sigv4_url's URL
 * is its prefix. On failure the URL is NULL and fm_sigv4_last_error() says why. Inputs outside the documented
 * limits (key > 1024 bytes, expires outside 1..604800, a method that is not upper-case letters, time outside
 * 1970-9999, more than 64 parameters or 32 headers, a bucket over 255 bytes or with '/') must fail, and header
 * signing must refuse a payload hash that is not 64 lower-case hex digits or UNSIGNED-PAYLOAD.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sigv4.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_sigv4: invariant failed at line %d: %s\n", __LINE__, #cond);                         \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

#define ACCESS_KEY "AKIAIOSFODNN7EXAMPLE"
#define REGION "us-east-1"
#define BUCKET "files-manager"
#define SESSION_TOKEN "FwoGZXIvYXdzEJr//////////wEaDEXAMPLETOKEN+/="
#define KEY_CUT 1100
#define PARAM_SLOTS 65
#define HEADER_SLOTS 33
#define MAX_FIELDS (2 + 1 + 2 * PARAM_SLOTS + 2 * HEADER_SLOTS)

static const char *const endpoints[] = {"http://127.0.0.1:7480", "https://s3.us-east-1.amazonaws.com:443/",
                                        "http://[::1]:80"};
static const char *const methods[] = {"GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", ""};
static const long expiries[] = {1, 60, 900, 604800, 0, -1, 604801, 3600};
static const time_t times[] = {1700000000, 1369353600, 0, 86399, 951782400, 253402300799, -1, 253402300800};

static fm_sigv4_t *signer_plain, *signer_token;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signer_plain = fm_sigv4_new(ACCESS_KEY, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", NULL, REGION, "s3");
    signer_token = fm_sigv4_new(ACCESS_KEY, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", SESSION_TOKEN, REGION, "s3");
    if (signer_plain == NULL || signer_token == NULL)
        abort();
    return 0;
}

static int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

static int is_upper_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

/* RFC 3986 §2: unreserved, gen-delims, sub-delims, and '%' only as the start of a %XX escape. */
static void check_url_charset(const char *url)
{
    for (const unsigned char *p = (const unsigned char *)url; *p != '\0'; p++) {
        if (*p == '%') {
            CHECK(is_upper_hex(p[1]) && is_upper_hex(p[2]));
            continue;
        }
        CHECK(is_unreserved(*p) || strchr(":/?#[]@!$&'()*+,;=", *p) != NULL);
    }
}

/* Percent-decodes `len` bytes of `s` into a malloc'd NUL-terminated string; the encoder never emits a NUL. */
static char *decode(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            CHECK(i + 2 < len);
            char hex[3] = {s[i + 1], s[i + 2], '\0'};
            out[o++] = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* The next "name=value" of the query at *q; checks that its decoded name is `name` and returns the decoded value. */
static char *next_pair(const char **q, const char *name)
{
    const char *amp = strchr(*q, '&'), *end = amp != NULL ? amp : *q + strlen(*q);
    const char *eq = memchr(*q, '=', (size_t)(end - *q));
    CHECK(eq != NULL);
    char *got = decode(*q, (size_t)(eq - *q));
    CHECK(strcmp(got, name) == 0);
    free(got);
    char *value = decode(eq + 1, (size_t)(end - eq - 1));
    *q = amp != NULL ? amp + 1 : end;
    return value;
}

static void expect_pair(const char **q, const char *name, const char *value)
{
    char *got = next_pair(q, name);
    CHECK(strcmp(got, value) == 0);
    free(got);
}

/* Checks a presigned URL against the request it was made from. */
static void check_presigned(const char *url, const fm_sigv4_request_t *req, int with_token, long expires)
{
    check_url_charset(url);

    /* The endpoint as given, minus an optional trailing '/'. */
    size_t base_len = strlen(req->endpoint);
    if (base_len > 0 && req->endpoint[base_len - 1] == '/')
        base_len--;
    CHECK(strncmp(url, req->endpoint, base_len) == 0);

    const char *path = url + base_len, *query = strchr(path, '?');
    CHECK(path[0] == '/' && query != NULL);
    char *decoded_path = decode(path, (size_t)(query - path));
    const char *key = req->key != NULL ? req->key : "";
    size_t want_size = strlen(key) + (req->bucket != NULL ? strlen(req->bucket) : 0) + 3;
    char *want_path = malloc(want_size);
    if (req->bucket != NULL && *req->bucket != '\0')
        snprintf(want_path, want_size, "/%s%s%s", req->bucket, *key != '\0' ? "/" : "", key);
    else
        snprintf(want_path, want_size, "/%s", key);
    CHECK(strcmp(decoded_path, want_path) == 0);
    free(want_path);
    free(decoded_path);

    const char *q = query + 1;
    for (size_t i = 0; i < req->param_count; i++)
        expect_pair(&q, req->params[i].name, req->params[i].value != NULL ? req->params[i].value : "");
    expect_pair(&q, "X-Amz-Algorithm", "AWS4-HMAC-SHA256");
    char *credential = next_pair(&q, "X-Amz-Credential");
    CHECK(strncmp(credential, ACCESS_KEY "/", strlen(ACCESS_KEY) + 1) == 0);
    CHECK(strcmp(credential + strlen(ACCESS_KEY) + 9, "/" REGION "/s3/aws4_request") == 0);
    char *date = next_pair(&q, "X-Amz-Date");
    CHECK(strlen(date) == 16 && date[8] == 'T' && date[15] == 'Z');
    CHECK(memcmp(date, credential + strlen(ACCESS_KEY) + 1, 8) == 0);
    free(date);
    free(credential);
    char expires_text[24];
    snprintf(expires_text, sizeof expires_text, "%ld", expires);
    expect_pair(&q, "X-Amz-Expires", expires_text);
    char *signed_headers = next_pair(&q, "X-Amz-SignedHeaders");
    /* Lower-case, sorted, no repeats, host among them. */
    int has_host = 0;
    char *save = NULL, *previous = NULL;
    for (char *h = strtok_r(signed_headers, ";", &save); h != NULL; h = strtok_r(NULL, ";", &save)) {
        for (const char *c = h; *c != '\0'; c++)
            CHECK(!(*c >= 'A' && *c <= 'Z'));
        CHECK(previous == NULL || strcmp(previous, h) < 0);
        has_host |= strcmp(h, "host") == 0;
        previous = h;
    }
    CHECK(has_host);
    free(signed_headers);
    if (with_token)
        expect_pair(&q, "X-Amz-Security-Token", SESSION_TOKEN);
    char *signature = next_pair(&q, "X-Amz-Signature");
    CHECK(strlen(signature) == 64 && strspn(signature, "0123456789abcdef") == 64);
    free(signature);
    CHECK(*q == '\0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    uint8_t flags = data[0], counts = data[1], when = data[2];
    static const size_t param_counts[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 64, PARAM_SLOTS};
    static const size_t header_counts[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 32, HEADER_SLOTS};
    size_t param_count = param_counts[counts & 15], header_count = header_counts[counts >> 4];
    long expires = expiries[when & 7];
    time_t now = times[(when >> 3) & 7];
    int with_token = (flags >> 3) & 1;

    /* NUL-separated fields, copied so that each one is a C string. */
    char *text = malloc(size - 3 + 1);
    memcpy(text, data + 3, size - 3);
    text[size - 3] = '\0';
    const char *fields[MAX_FIELDS];
    size_t field_count = 0;
    for (char *p = text; p <= text + (size - 3) && field_count < MAX_FIELDS; p += strlen(p) + 1)
        fields[field_count++] = p;
    size_t next = 0;
#define FIELD() (next < field_count ? fields[next++] : NULL)

    fm_sigv4_request_t req = {0};
    req.endpoint = (flags & 3) == 3 ? FIELD() : endpoints[flags & 3];
    size_t method_index = (flags >> 4) & 7;
    req.method = method_index == 7 ? FIELD() : methods[method_index];
    req.bucket = !(flags & 4) ? NULL : (flags & 0x80) ? FIELD() : BUCKET;
    char *key = NULL;
    const char *key_field = FIELD();
    if (key_field != NULL)
        key = strndup(key_field, KEY_CUT);
    req.key = key;
    fm_sigv4_param_t params[PARAM_SLOTS];
    for (size_t i = 0; i < param_count; i++) {
        params[i].name = FIELD();
        params[i].value = FIELD();
    }
    fm_sigv4_header_t headers[HEADER_SLOTS];
    for (size_t i = 0; i < header_count; i++) {
        headers[i].name = FIELD();
        headers[i].value = FIELD();
    }
    static const char *const payload_hashes[] = {NULL, FM_SIGV4_EMPTY_SHA256, FM_SIGV4_UNSIGNED_PAYLOAD};
    const char *payload_hash = (when >> 6) == 3 ? FIELD() : payload_hashes[when >> 6];
#undef FIELD
    req.params = params;
    req.param_count = param_count;
    req.headers = headers;
    req.header_count = header_count;
    fm_sigv4_t *signer = with_token ? signer_token : signer_plain;

    char *url = (char *)"unset";
    int rc = fm_sigv4_presign(signer, &req, expires, now, &url);
    CHECK(rc == 0 || rc == -1);

    /* Documented limits: outside them presigning must fail. */
    int method_ok = req.method != NULL && *req.method != '\0' && strlen(req.method) <= 16 &&
                    strspn(req.method, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == strlen(req.method);
    if ((key != NULL && strlen(key) > FM_SIGV4_MAX_KEY) || expires < 1 || expires > FM_SIGV4_MAX_EXPIRES ||
        !method_ok || now < 0 || now > (time_t)253402300799 || param_count > 64 || header_count > 32 ||
        (req.bucket != NULL && (strlen(req.bucket) > 255 || strchr(req.bucket, '/') != NULL)))
        CHECK(rc == -1);

    if (rc != 0) {
        CHECK(url == NULL);
        CHECK(fm_sigv4_last_error()[0] != '\0');
    } else {
        CHECK(url != NULL);
        check_presigned(url, &req, with_token, expires);
        char *again = NULL;
        CHECK(fm_sigv4_presign(signer, &req, expires, now, &again) == 0);
        CHECK(strcmp(again, url) == 0);
        free(again);
    }

    /* The header-signing mode and the plain URL take the same request (X-Amz-* parameters are allowed there). */
    fm_sigv4_auth_t auth;
    int hash_ok = payload_hash == NULL || strcmp(payload_hash, FM_SIGV4_UNSIGNED_PAYLOAD) == 0 ||
                  (strlen(payload_hash) == 64 && strspn(payload_hash, "0123456789abcdef") == 64);
    int signed_ok = fm_sigv4_sign_headers(signer, &req, payload_hash, now, &auth) == 0;
    CHECK(hash_ok || !signed_ok);
    if (signed_ok) {
        CHECK(strnlen(auth.host, sizeof auth.host) < sizeof auth.host);
        CHECK(strnlen(auth.authorization, sizeof auth.authorization) < sizeof auth.authorization);
        CHECK(strncmp(auth.authorization, "AWS4-HMAC-SHA256 Credential=" ACCESS_KEY "/", 29 + strlen(ACCESS_KEY)) == 0);
        CHECK(strlen(auth.amz_date) == 16);
        CHECK(strcmp(auth.content_sha256, payload_hash != NULL ? payload_hash : FM_SIGV4_UNSIGNED_PAYLOAD) == 0);
        CHECK(with_token ? auth.security_token != NULL && strcmp(auth.security_token, SESSION_TOKEN) == 0
                         : auth.security_token == NULL);
        for (const char *c = auth.authorization; *c != '\0'; c++)
            CHECK(*c >= 0x20 && *c < 0x7f);
    } else {
        CHECK(fm_sigv4_last_error()[0] != '\0');
    }
    char *plain = NULL;
    if (fm_sigv4_url(&req, &plain) == 0) {
        check_url_charset(plain);
        if (rc == 0) {
            size_t plain_len = strlen(plain);
            CHECK(strncmp(url, plain, plain_len) == 0);
            CHECK(url[plain_len] == (param_count > 0 ? '&' : '?'));
        }
        free(plain);
    } else {
        CHECK(plain == NULL);
    }

    if (rc == 0)
        free(url);
    free(key);
    free(text);
    return 0;
}
