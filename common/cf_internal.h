/*
 * cf_internal: what the parts of the CloudFront signed-URL module share; private to common/cf*.c (the API and
 * the specs followed are in cfsign.h).
 *
 *   cfsign.c    signing (fm_cf_sign_url) and what both sides need: messages, the policy JSON as botocore writes
 *               it, "addr[/prefix]" parsing
 *   cfkeys.c    the key set (fm_cf_keys_*: PEM reading, the key checks, lookup by Key-Pair-Id) and the signatures
 *               made and checked with its keys
 *   cfverify.c  verification (fm_cf_verify_url): the query, CloudFront base64 decoding, the custom policy,
 *               wildcards and conditions
 */
#ifndef FM_CF_INTERNAL_H
#define FM_CF_INTERNAL_H

#include "cfsign.h"

#include <openssl/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RSA-4096 is the largest key we load; no valid signature is longer. */
#define SIG_MAX 512
/* CloudFront base64 of the longest signature / policy we accept. */
#define SIG_B64_MAX ((SIG_MAX + 2) / 3 * 4)
#define POLICY_B64_MAX ((FM_CF_MAX_POLICY + 2) / 3 * 4)

/* The key set: cfkeys.c fills it, the signer and the verifier only read it. `type` is cfkeys.c's KEY_RSA or KEY_EC. */
typedef struct {
    char id[FM_CF_KEY_ID_MAX + 1];
    EVP_PKEY *pkey;
    int type;
    bool has_private;
} key_entry_t;

struct fm_cf_keys {
    key_entry_t entries[FM_CF_MAX_KEYS];
    size_t count;
    int rsa_min_bits;
};

/* A bounded output buffer: an overflow is remembered and reported once at the end. */
typedef struct {
    char *data;
    size_t len;
    size_t cap; /* includes room for the NUL */
    bool overflow;
} buf_t;

/* A borrowed slice of the URL. */
typedef struct {
    const char *base;
    size_t len;
} slice_t;

/* A parsed AWS:SourceIp (fm_cf_parse_cidr). */
typedef struct {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    int prefix;
} cidr_t;

/** snprintf into `out` unless it is NULL or of size 0 (cfsign.c). */
__attribute__((format(printf, 3, 4))) void fm_cf_set_msg(char *out, size_t size, const char *format, ...);

/** Appends botocore's policy JSON for these conditions to `b` (`ip` NULL and `date_greater_than` 0 for none: the
 *  canned policy); -1 when `resource` or `ip` is not valid UTF-8, overflow left in `b` (cfsign.c). */
int fm_cf_build_policy(buf_t *b, const char *resource, size_t resource_len, long long date_less_than,
                       long long date_greater_than, const char *ip);

/** Parses `len` bytes of "addr[/prefix]" (IPv4 dotted quad or IPv6) into `out`; 0, or -1 (cfsign.c). */
int fm_cf_parse_cidr(const char *text, size_t len, cidr_t *out);

/** Which CloudFront query parameter the name=value `token` is, or -1 for any other token (cfverify.c). */
int fm_cf_param_index(slice_t token);

/** Whether `len` bytes are a Key-Pair-Id: 1..FM_CF_KEY_ID_MAX of [A-Za-z0-9_-] (cfkeys.c). */
bool fm_cf_valid_key_id(const char *id, size_t len);

/** The key pair `id` (`id_len` bytes, no NUL needed), or NULL (cfkeys.c). */
const key_entry_t *fm_cf_find_key(const fm_cf_keys_t *keys, const char *id, size_t id_len);

/** Signs `policy` with `key` (SHA-256 or SHA-1) into `sig`, SIG_MAX bytes; 0, or -1 (cfkeys.c). */
int fm_cf_sign_policy(const key_entry_t *key, bool sha256, const buf_t *policy, uint8_t *sig, size_t *sig_len);

/** FM_CF_OK if `sig` is `key`'s signature of `policy`, FM_CF_BAD_SIGNATURE if not, FM_CF_INTERNAL (cfkeys.c). */
fm_cf_status_t fm_cf_verify_signature(const key_entry_t *key, bool sha256, const uint8_t *policy, size_t policy_len,
                                      const uint8_t *sig, size_t sig_len);

#endif /* FM_CF_INTERNAL_H */
