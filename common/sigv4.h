/*
 * sigv4: AWS Signature Version 4 for S3, both as a presigned URL (query-string auth, what browsers PUT to) and as
 * Authorization headers (what our own server-side S3 calls send).
 *
 * Specs: "Authenticating Requests: Using Query Parameters" and "... Using the Authorization Header" of the S3 API
 * reference. S3 differs from other services in two ways that matter here: the path is URI-encoded once (never
 * twice) and is not normalised ("a//b", "./" are part of the key), and presigned URLs carry UNSIGNED-PAYLOAD.
 * tests/unit/common/test_sigv4.c checks this file against the AWS examples and against botocore.
 *
 * A signer (fm_sigv4_t) owns copies of the credentials and caches the derived signing key of the current UTC day
 * (kSigning = HMAC chain over date, region, service, "aws4_request"), so one presign costs one SHA-256 and one
 * HMAC. Every function is safe to call from several threads on one signer (the cache is behind a mutex held for
 * a day compare and a copy of the keyed HMAC context), though giving each event-loop thread its own signer avoids
 * even that.
 */
#ifndef FM_SIGV4_H
#define FM_SIGV4_H

#include <stddef.h>
#include <time.h>

/** x-amz-content-sha256 / canonical payload when the body is not hashed (always the case for presigned URLs). */
#define FM_SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"
/** SHA-256 of the empty string: the payload hash of a body-less request (GET, HEAD, DELETE). */
#define FM_SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/** Longest X-Amz-Expires S3 accepts for SigV4 presigned URLs: 7 days. */
#define FM_SIGV4_MAX_EXPIRES 604800
/** Longest object key S3 accepts, in bytes of UTF-8. */
#define FM_SIGV4_MAX_KEY 1024
/** Size of fm_sigv4_auth_t.authorization, terminating NUL included. */
#define FM_SIGV4_AUTHORIZATION_MAX 2048

/** A signer: credentials, region, service and the cached signing key. Opaque; see fm_sigv4_new(). */
typedef struct fm_sigv4 fm_sigv4_t;

/** One query parameter, raw (not URI-encoded): the signer encodes it. A NULL value is sent as "name=". */
typedef struct fm_sigv4_param {
    const char *name;
    const char *value;
} fm_sigv4_param_t;

/** One header to sign, besides the ones the signer adds itself (host, x-amz-*). The name's case is ignored. */
typedef struct fm_sigv4_header {
    const char *name;
    const char *value;
} fm_sigv4_header_t;

/**
 * What is being signed. Every pointer is borrowed for the call only.
 * `endpoint` is "scheme://host[:port]" with no path ("http://127.0.0.1:7480"). URLs start with it as given; the
 * signed Host leaves out a port that is the scheme's default, as HTTP clients leave it out of the Host header.
 * With `bucket` set the path is path-style "/bucket/key"; with `bucket` NULL the bucket is taken to be in the
 * host name (virtual-hosted style) and the path is "/key". `key` NULL or "" addresses the bucket itself.
 */
typedef struct fm_sigv4_request {
    const char *method;
    const char *endpoint;
    const char *bucket;
    const char *key;
    const fm_sigv4_param_t *params;
    size_t param_count;
    const fm_sigv4_header_t *headers;
    size_t header_count;
} fm_sigv4_request_t;

/** The headers fm_sigv4_sign_headers() produces; the caller sends each of them verbatim. */
typedef struct fm_sigv4_auth {
    /** Host header value that was signed (default port dropped); send it as Host. */
    char host[256];
    /** Authorization header value. */
    char authorization[FM_SIGV4_AUTHORIZATION_MAX];
    /** x-amz-date header value, "YYYYMMDDTHHMMSSZ". */
    char amz_date[17];
    /** x-amz-content-sha256 header value: the payload hash given, or UNSIGNED-PAYLOAD. */
    char content_sha256[65];
    /** x-amz-security-token header value, or NULL without a session token. Borrowed from the signer. */
    const char *security_token;
} fm_sigv4_auth_t;

/**
 * Creates a signer holding copies of the credentials. `session_token` may be NULL or "" (long-term keys);
 * `service` is "s3" for S3. Returns NULL (fm_sigv4_last_error() says why) on a missing or oversized argument.
 * The caller owns the signer and frees it with fm_sigv4_free(); the secret is wiped on free.
 */
fm_sigv4_t *fm_sigv4_new(const char *access_key, const char *secret_key, const char *session_token, const char *region,
                         const char *service);

/** Frees a signer (NULL is fine). No call on it may be in progress. */
void fm_sigv4_free(fm_sigv4_t *signer);

/**
 * The message of this thread's last failed fm_sigv4_* call ("" if none): a human sentence naming the bad input,
 * fit for an API error's message. Thread-local, valid until the thread's next failing call.
 */
const char *fm_sigv4_last_error(void);

/**
 * Writes the 32-byte SigV4 signing key for the UTC day of `now` (also what a presigned POST policy is signed
 * with). Derived once per day and cached; a `now` on another day re-derives it. Returns 0, or -1 if `now` is
 * before 1970 or after 9999.
 */
int fm_sigv4_signing_key(fm_sigv4_t *signer, time_t now, unsigned char key[32]);

/** How many times this signer has derived a signing key (the cache's misses); for tests and metrics. */
unsigned long fm_sigv4_key_derivations(fm_sigv4_t *signer);

/**
 * SigV4 query auth (presigned URL), as botocore's S3SigV4QueryAuth builds it: the request's own parameters in
 * the order given, then X-Amz-Algorithm, -Credential, -Date, -Expires, -SignedHeaders, -Security-Token
 * (when the signer has one) and -Signature. The payload is UNSIGNED-PAYLOAD; `host` and the request's headers
 * are signed, so the client must send those headers with exactly those values (e.g. Content-Type).
 * `expires` is X-Amz-Expires in seconds, 1 … FM_SIGV4_MAX_EXPIRES; `now` is the signing time.
 * On success stores a malloc'd NUL-terminated URL in *url (the caller frees it) and returns 0; else returns -1,
 * leaves *url NULL and sets fm_sigv4_last_error().
 */
int fm_sigv4_presign(fm_sigv4_t *signer, const fm_sigv4_request_t *req, long expires, time_t now, char **url);

/**
 * SigV4 header auth for one request: fills `out` with the Host, Authorization, x-amz-date, x-amz-content-sha256
 * and (with a session token) x-amz-security-token values to send. Signed headers are host, the request's headers,
 * x-amz-content-sha256, x-amz-date and x-amz-security-token. `payload_sha256` is the lowercase hex SHA-256 of
 * the body (fm_sigv4_sha256_hex), or NULL / FM_SIGV4_UNSIGNED_PAYLOAD for an unsigned body.
 * Returns 0, or -1 with fm_sigv4_last_error() set.
 */
int fm_sigv4_sign_headers(fm_sigv4_t *signer, const fm_sigv4_request_t *req, const char *payload_sha256, time_t now,
                          fm_sigv4_auth_t *out);

/**
 * The URL of a header-signed request: endpoint, the canonical (encoded) path and the encoded parameters in the
 * order given, i.e. the path and query that fm_sigv4_sign_headers() signs. Malloc'd into *url (caller frees);
 * returns 0, or -1 with fm_sigv4_last_error() set.
 */
int fm_sigv4_url(const fm_sigv4_request_t *req, char **url);

/** Writes the lowercase hex SHA-256 of `len` bytes of `data` (a payload hash) into `hex`, NUL-terminated. */
void fm_sigv4_sha256_hex(const void *data, size_t len, char hex[65]);

/** SHA-256 of `len` bytes, with the algorithm fetched once per process (EVP_sha256() is looked up on every call). */
void fm_sha256(const void *data, size_t len, unsigned char digest[32]);

#endif /* FM_SIGV4_H */
