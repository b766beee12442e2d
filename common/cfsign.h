/*
 * cfsign: CloudFront-compatible signed URLs, signing (control plane) and verification (fm-edge).
 *
 * Specs: CloudFront Developer Guide, "Create a signed URL using a canned policy" / "... a custom policy" and
 * "Code examples for creating a signature". The signed bytes are the policy JSON exactly as botocore's
 * CloudFrontSigner.build_policy writes it (json.dumps, separators (',', ':'), ensure_ascii, key order
 * Resource, Condition; DateLessThan, IpAddress, DateGreaterThan), so a URL we sign is byte for byte the URL
 * botocore signs for the same inputs and works against real CloudFront. RSA signatures are PKCS#1 v1.5, ECDSA
 * P-256 signatures DER; the hash is SHA-1 unless the URL carries Hash-Algorithm=SHA256. Signatures and policies
 * use CloudFront's base64 ('+' -> '-', '=' -> '_', '/' -> '~', padding kept).
 * tests/unit/common/test_cfsign.c and test_cfverify.c check this module against botocore, `cryptography` and
 * AWS's published example.
 *
 * What is signed (docs/downloads.md): the canned policy's Resource is the URL as requested with the CloudFront
 * parameters (Expires, Policy, Signature, Key-Pair-Id, Hash-Algorithm) removed and every other query parameter
 * kept, in place; so adding, dropping or changing any other parameter breaks a canned signature. A custom policy
 * names its Resource itself (wildcards '*' = any run, '?' = one character) and that pattern is matched against
 * the same string.
 *
 * Keys (fm_cf_keys_t) are key pairs by Key-Pair-Id, each parsed from PEM once. Rotation: sign with the current id,
 * verify against every configured one. Add every key before sharing the set; after that it is immutable and
 * every function may be called on it from any number of threads at once (each call has its own EVP_MD_CTX).
 */
#ifndef FM_CFSIGN_H
#define FM_CFSIGN_H

#include <stddef.h>

/** Most key pairs one fm_cf_keys_t holds (current + a few being rotated out). */
#define FM_CF_MAX_KEYS 16
/** Longest Key-Pair-Id, bytes of [A-Za-z0-9_-] (CloudFront's are 14-20 upper-case characters). */
#define FM_CF_KEY_ID_MAX 64
/** Longest query string fm_cf_verify_url looks at (everything after the first '?'), in bytes. */
#define FM_CF_MAX_QUERY 8192
/** Longest URL fm_cf_verify_url looks at, and longest URL fm_cf_sign_url signs, in bytes. */
#define FM_CF_MAX_URL 16384
/** Longest policy JSON, decoded; both the signer and the verifier refuse longer ones. */
#define FM_CF_MAX_POLICY 4096
/** Largest epoch second accepted in a policy or as Expires: 9999-12-31T23:59:59Z. */
#define FM_CF_EPOCH_MAX 253402300799LL

/** A set of key pairs by Key-Pair-Id. Opaque; one owner frees it with fm_cf_keys_free after all users stop. */
typedef struct fm_cf_keys fm_cf_keys_t;

/** Creates an empty key set; NULL only when out of memory. */
fm_cf_keys_t *fm_cf_keys_new(void);

/**
 * Adds the key pair `key_pair_id` from `len` bytes of PEM: a private key ("PRIVATE KEY", "RSA PRIVATE KEY",
 * "EC PRIVATE KEY"; unencrypted) signs and verifies, a public key ("PUBLIC KEY") only verifies. Accepted keys:
 * RSA 2048..4096 bits and ECDSA on P-256, as CloudFront accepts. The id is 1..FM_CF_KEY_ID_MAX bytes of
 * [A-Za-z0-9_-] and must not be in the set yet. Returns 0, or -1 with a sentence in `err` (may be NULL).
 */
int fm_cf_keys_add_pem(fm_cf_keys_t *keys, const char *key_pair_id, const char *pem, size_t len, char *err,
                       size_t err_size);

/**
 * Lets later fm_cf_keys_add_pem calls accept RSA-1024 keys. Only for AWS's published 2012 example key pair
 * (PK12345EXAMPLE) in the tests: CloudFront itself no longer accepts keys under 2048 bits.
 */
void fm_cf_keys_allow_rsa1024(fm_cf_keys_t *keys);

/** Number of key pairs in the set. */
size_t fm_cf_keys_count(const fm_cf_keys_t *keys);

/**
 * Adds the key list `spec` of configuration variable `var` (FM_CF_KEYS, FM_EDGE_CF_PUBLIC_KEYS) to `keys`:
 * "Key-Pair-Id=file.pem" items separated by ',', spaces before an item ignored; each file read once (at most 16 KiB)
 * and wiped from memory after. `item_form` names an item's shape in the message for a malformed one (e.g.
 * "Key-Pair-Id=private.pem"). Every bad item is logged with fm_error, naming `var`, and the others are still
 * tried, so one start shows every mistake. `first_id` (FM_CF_KEY_ID_MAX + 1 bytes, or NULL) gets the first key
 * pair added. Returns 0, or -1 if any item failed (or out of memory). Startup only: it reads files.
 */
int fm_cf_keys_load(fm_cf_keys_t *keys, const char *var, const char *item_form, const char *spec, char *first_id);

/** Frees the set and its keys (NULL is fine). No call on it may be in progress. */
void fm_cf_keys_free(fm_cf_keys_t *keys);

/** What to sign. Strings are borrowed for the call only. */
typedef struct fm_cf_sign_req {
    /** The URL to sign: "http(s)://host/path[?query]", printable ASCII (percent-encode the rest), no '#',
     *  without CloudFront parameters. The signing parameters are appended after '&' if it holds a '?', else '?'. */
    const char *url;
    /** DateLessThan / Expires: epoch seconds, 1..FM_CF_EPOCH_MAX; the URL works while now < this. */
    long long date_less_than;
    /** DateGreaterThan: epoch seconds, 0 for none; the URL works once now > this. Forces a custom policy. */
    long long date_greater_than;
    /** AWS:SourceIp: "a.b.c.d[/n]" (botocore appends /32 to a bare IPv4 address) or "v6addr/n" (the prefix is
     *  required: botocore would append /32 to a bare IPv6 address); NULL for none. Forces a custom policy. */
    const char *ip_cidr;
    /** The policy Resource: NULL for `url` itself; otherwise any UTF-8 string, '*' and '?' being wildcards.
     *  A resource other than `url` forces a custom policy. */
    const char *resource;
    /** Non-zero: hash with SHA-256 and append Hash-Algorithm=SHA256; zero: SHA-1 (CloudFront's default). */
    int hash_sha256;
    /** Non-zero: a custom policy even when a canned one would do. A `url` holding '*' is always custom. */
    int force_custom;
} fm_cf_sign_req_t;

/**
 * Signs `req` with the private key of `key_pair_id` (NULL: the first key added that has a private part, i.e.
 * the current one). Canned policy: appends Expires, Signature, Key-Pair-Id; custom: Policy, Signature,
 * Key-Pair-Id; both then Hash-Algorithm=SHA256 when asked (the order of botocore and the AWS examples).
 * On success stores a malloc'd NUL-terminated URL in *out_url (the caller frees it) and returns 0; else
 * returns -1, leaves *out_url NULL and writes a sentence into `err` (may be NULL).
 */
int fm_cf_sign_url(const fm_cf_keys_t *keys, const char *key_pair_id, const fm_cf_sign_req_t *req, char **out_url,
                   char *err, size_t err_size);

/** Outcome of fm_cf_verify_url; fm_cf_status_code() gives the stable string for a 403 body and logs. */
typedef enum {
    FM_CF_OK = 0,
    FM_CF_MISSING_SIGNATURE,   /**< no (or an empty) Signature parameter */
    FM_CF_MISSING_KEY_PAIR_ID, /**< no Key-Pair-Id parameter */
    FM_CF_MISSING_POLICY,      /**< neither Expires nor Policy */
    FM_CF_MALFORMED,           /**< a repeated CloudFront parameter, both Expires and Policy, a bad Expires,
                                    NUL bytes or invalid UTF-8 in the URL */
    FM_CF_BAD_BASE64,          /**< Signature or Policy is not CloudFront base64 */
    FM_CF_BAD_HASH_ALGORITHM,  /**< Hash-Algorithm other than SHA1 or SHA256 */
    FM_CF_UNKNOWN_KEY,         /**< Key-Pair-Id is not configured */
    FM_CF_BAD_SIGNATURE,       /**< the signature does not verify over the policy with that key */
    FM_CF_MALFORMED_POLICY,    /**< signed policy that is not the one-statement JSON we understand */
    FM_CF_EXPIRED,             /**< now >= DateLessThan (Expires) */
    FM_CF_NOT_YET_VALID,       /**< now <= DateGreaterThan */
    FM_CF_IP_NOT_ALLOWED,      /**< client address outside AWS:SourceIp (or no usable client address) */
    FM_CF_RESOURCE_MISMATCH,   /**< the URL does not match the custom policy's Resource */
    FM_CF_TOO_LONG,            /**< URL > FM_CF_MAX_URL, query > FM_CF_MAX_QUERY, policy > FM_CF_MAX_POLICY */
    FM_CF_INTERNAL,            /**< out of memory or OpenSSL failure: not the client's fault */
} fm_cf_status_t;

/**
 * Verifies a signed URL as the client sent it: `len` bytes (no NUL needed) of "scheme://host/path?query" with
 * the query exactly as received (not percent-decoded), `client_ip` the peer address as text (IPv4, IPv6 or
 * IPv4-mapped IPv6; NULL fails any IpAddress condition) and `now` in epoch seconds.
 * Checks, in order: sizes; the query's CloudFront parameters; CloudFront base64; the key; the signature over the
 * custom policy, or over the canned policy rebuilt from the URL; then DateLessThan, DateGreaterThan, IpAddress
 * and the Resource. Writes a human sentence into `reason` (may be NULL) and returns the status.
 */
fm_cf_status_t fm_cf_verify_url(const fm_cf_keys_t *keys, const char *url, size_t len, const char *client_ip,
                                long long now, char *reason, size_t reason_size);

/** Stable snake_case code of a status ("ok", "expired", "bad_signature", ...). */
const char *fm_cf_status_code(fm_cf_status_t status);

#endif /* FM_CFSIGN_H */
