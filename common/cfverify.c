/*
 * cfverify: fm_cf_verify_url, fm-edge's check of a CloudFront signed URL (see cfsign.h for the contract and the
 * order of the checks): the query's CloudFront parameters, strict CloudFront base64, the signature over the custom
 * policy or the canned one rebuilt from the URL, then the policy's conditions (dates, AWS:SourceIp, the Resource
 * with its wildcards).
 */
#include "b64.h"
#include "cf_internal.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

const char *fm_cf_status_code(fm_cf_status_t status)
{
    switch (status) {
    case FM_CF_OK:
        return "ok";
    case FM_CF_MISSING_SIGNATURE:
        return "missing_signature";
    case FM_CF_MISSING_KEY_PAIR_ID:
        return "missing_key_pair_id";
    case FM_CF_MISSING_POLICY:
        return "missing_policy";
    case FM_CF_MALFORMED:
        return "malformed";
    case FM_CF_BAD_BASE64:
        return "bad_base64";
    case FM_CF_BAD_HASH_ALGORITHM:
        return "bad_hash_algorithm";
    case FM_CF_UNKNOWN_KEY:
        return "unknown_key";
    case FM_CF_BAD_SIGNATURE:
        return "bad_signature";
    case FM_CF_MALFORMED_POLICY:
        return "malformed_policy";
    case FM_CF_EXPIRED:
        return "expired";
    case FM_CF_NOT_YET_VALID:
        return "not_yet_valid";
    case FM_CF_IP_NOT_ALLOWED:
        return "ip_not_allowed";
    case FM_CF_RESOURCE_MISMATCH:
        return "resource_mismatch";
    case FM_CF_TOO_LONG:
        return "too_long";
    case FM_CF_INTERNAL:
        return "internal";
    }
    return "unknown";
}

/* ---- CloudFront base64 ------------------------------------------------------------------------------------ */

/* Standard base64 with '+' -> '-', '=' -> '_', '/' -> '~' ("Using Linux commands and OpenSSL for base64
 * encoding"): the padding stays, in its '_' form. */
static int cf_b64_value(unsigned char c)
{
    return fm_b64_value(c, '-', '~');
}

/* Strict: a multiple of 4 characters from the alphabet, '_' only as the last one or two, zero unused bits. One
 * text decodes to one byte string, so a signature cannot be re-spelled into a second accepted form. */
static int cf_b64_decode(slice_t in, uint8_t *out, size_t out_size, size_t *out_len)
{
    if (in.len % 4 != 0)
        return -1;
    size_t pad = 0;
    if (in.len >= 4 && in.base[in.len - 1] == '_')
        pad = in.base[in.len - 2] == '_' ? 2 : 1;
    size_t n = in.len / 4 * 3 - pad;
    if (n > out_size)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < in.len; i += 4) {
        bool last = i + 4 == in.len;
        int v[4];
        for (size_t j = 0; j < 4; j++) {
            if (last && j >= 4 - pad) {
                v[j] = 0;
                continue;
            }
            v[j] = cf_b64_value((unsigned char)in.base[i + j]);
            if (v[j] < 0)
                return -1;
        }
        uint32_t word = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        if (last && pad == 2 && (v[1] & 15) != 0)
            return -1;
        if (last && pad == 1 && (v[2] & 3) != 0)
            return -1;
        out[o++] = (uint8_t)(word >> 16);
        if (!last || pad < 2)
            out[o++] = (uint8_t)(word >> 8);
        if (!last || pad < 1)
            out[o++] = (uint8_t)word;
    }
    *out_len = o;
    return 0;
}

/* ---- addresses ------------------------------------------------------------------------------------------------ */

static bool prefix_equal(const uint8_t *a, const uint8_t *b, int prefix)
{
    int full = prefix / 8, rest = prefix % 8;
    if (memcmp(a, b, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}

/* An IPv4 client reached over an IPv6 socket shows up as ::ffff:a.b.c.d; it is the same client to a v4 CIDR. */
static bool client_in_cidr(const char *client_ip, const cidr_t *cidr)
{
    if (client_ip == NULL || strlen(client_ip) > INET6_ADDRSTRLEN)
        return false;
    static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint8_t v4[4], v6[16];
    if (inet_pton(AF_INET, client_ip, v4) == 1) {
        if (cidr->family == AF_INET)
            return prefix_equal(v4, cidr->addr, cidr->prefix);
        memcpy(v6, mapped_prefix, 12);
        memcpy(v6 + 12, v4, 4);
        return prefix_equal(v6, cidr->addr, cidr->prefix);
    }
    if (inet_pton(AF_INET6, client_ip, v6) != 1)
        return false;
    if (cidr->family == AF_INET6)
        return prefix_equal(v6, cidr->addr, cidr->prefix);
    return memcmp(v6, mapped_prefix, 12) == 0 && prefix_equal(v6 + 12, cidr->addr, cidr->prefix);
}

/* ---- CloudFront query parameters ---------------------------------------------------------------------------- */

enum { P_EXPIRES, P_POLICY, P_SIGNATURE, P_KEY_PAIR_ID, P_HASH_ALGORITHM, P_COUNT };
static const char *const param_names[P_COUNT] = {"Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm"};

/* The name=value pair `token` if it is one of CloudFront's parameters (names are case-sensitive). */
int fm_cf_param_index(slice_t token)
{
    const char *eq = memchr(token.base, '=', token.len);
    if (eq == NULL)
        return -1;
    size_t name_len = (size_t)(eq - token.base);
    for (int p = 0; p < P_COUNT; p++)
        if (strlen(param_names[p]) == name_len && memcmp(param_names[p], token.base, name_len) == 0)
            return p;
    return -1;
}

/* ---- verification: the query ------------------------------------------------------------------------------------ */

typedef struct {
    slice_t value[P_COUNT];
    bool present[P_COUNT];
    /* The URL minus the CloudFront parameters: what a canned policy names and a custom Resource must match. */
    char resource[FM_CF_MAX_URL + 1];
    size_t resource_len;
} signed_url_t;

/* Splits the query on '&'. CloudFront parameters are taken out wherever they are; every other token stays, in
 * order and byte for byte, so the resource is exactly the URL botocore was given (it appended the parameters). */
static fm_cf_status_t parse_url(const char *url, size_t len, signed_url_t *out, char *reason, size_t reason_size)
{
    const char *qmark = memchr(url, '?', len);
    size_t base_len = qmark != NULL ? (size_t)(qmark - url) : len;
    memcpy(out->resource, url, base_len);
    size_t rlen = base_len;
    bool kept_any = false;
    if (qmark != NULL) {
        const char *cursor = qmark + 1, *end = url + len;
        while (true) {
            const char *amp = memchr(cursor, '&', (size_t)(end - cursor));
            slice_t token = {cursor, (size_t)((amp != NULL ? amp : end) - cursor)};
            int p = fm_cf_param_index(token);
            if (p >= 0) {
                if (out->present[p]) {
                    fm_cf_set_msg(reason, reason_size, "%s appears twice", param_names[p]);
                    return FM_CF_MALFORMED;
                }
                size_t name_len = strlen(param_names[p]) + 1;
                out->present[p] = true;
                out->value[p] = (slice_t){token.base + name_len, token.len - name_len};
            } else {
                out->resource[rlen++] = kept_any ? '&' : '?';
                memcpy(out->resource + rlen, token.base, token.len);
                rlen += token.len;
                kept_any = true;
            }
            if (amp == NULL)
                break;
            cursor = amp + 1;
        }
    }
    out->resource[rlen] = '\0';
    out->resource_len = rlen;
    return FM_CF_OK;
}

/* Expires: decimal seconds as botocore writes them (no sign, no leading zero), at most FM_CF_EPOCH_MAX. */
static int parse_epoch(slice_t text, long long *out)
{
    if (text.len == 0 || text.len > 12 || (text.base[0] == '0' && text.len > 1))
        return -1;
    long long value = 0;
    for (size_t i = 0; i < text.len; i++) {
        if (text.base[i] < '0' || text.base[i] > '9')
            return -1;
        value = value * 10 + (text.base[i] - '0');
    }
    if (value > FM_CF_EPOCH_MAX)
        return -1;
    *out = value;
    return 0;
}

/* ---- verification: the custom policy ----------------------------------------------------------------------------- */

typedef struct {
    const char *resource;
    long long date_less_than;
    long long date_greater_than;
    bool has_date_greater_than;
    bool has_ip;
    cidr_t ip;
} conditions_t;

/* Every member of `object` is one of `names` (NULL-terminated) and none repeats; cJSON keeps duplicates and
 * returns the first, another parser the last, so a policy read two ways is refused outright. */
static bool only_members(const cJSON *object, const char *const *names)
{
    if (!cJSON_IsObject(object))
        return false;
    unsigned seen = 0;
    for (const cJSON *item = object->child; item != NULL; item = item->next) {
        int found = -1;
        for (int i = 0; names[i] != NULL; i++)
            if (item->string != NULL && strcmp(item->string, names[i]) == 0)
                found = i;
        if (found < 0 || (seen & (1u << found)))
            return false;
        seen |= 1u << found;
    }
    return true;
}

static int read_epoch_condition(const cJSON *condition, long long *out)
{
    static const char *const names[] = {"AWS:EpochTime", NULL};
    if (!only_members(condition, names))
        return -1;
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(condition, "AWS:EpochTime");
    if (!cJSON_IsNumber(value) || !isfinite(value->valuedouble) || value->valuedouble < 0 ||
        value->valuedouble > (double)FM_CF_EPOCH_MAX || floor(value->valuedouble) != value->valuedouble)
        return -1;
    *out = (long long)value->valuedouble;
    return 0;
}

/* The only shape CloudFront documents for a signed URL: one statement, a Resource and a Condition with
 * DateLessThan and optionally DateGreaterThan and IpAddress. Anything else (another condition, a second
 * statement) is refused rather than ignored: a condition we skipped would be a restriction we failed to apply. */
static fm_cf_status_t read_policy(const cJSON *root, conditions_t *out)
{
    static const char *const root_names[] = {"Statement", NULL};
    static const char *const statement_names[] = {"Resource", "Condition", NULL};
    static const char *const condition_names[] = {"DateLessThan", "DateGreaterThan", "IpAddress", NULL};
    static const char *const ip_names[] = {"AWS:SourceIp", NULL};
    if (!only_members(root, root_names))
        return FM_CF_MALFORMED_POLICY;
    const cJSON *statements = cJSON_GetObjectItemCaseSensitive(root, "Statement");
    if (!cJSON_IsArray(statements) || cJSON_GetArraySize(statements) != 1)
        return FM_CF_MALFORMED_POLICY;
    const cJSON *statement = statements->child;
    if (!only_members(statement, statement_names))
        return FM_CF_MALFORMED_POLICY;
    const cJSON *resource = cJSON_GetObjectItemCaseSensitive(statement, "Resource");
    const cJSON *condition = cJSON_GetObjectItemCaseSensitive(statement, "Condition");
    /* CloudFront reads a missing Resource as "every file": we require one. */
    if (!cJSON_IsString(resource) || resource->valuestring == NULL || !only_members(condition, condition_names))
        return FM_CF_MALFORMED_POLICY;
    out->resource = resource->valuestring;

    const cJSON *less = cJSON_GetObjectItemCaseSensitive(condition, "DateLessThan");
    if (less == NULL || read_epoch_condition(less, &out->date_less_than) != 0)
        return FM_CF_MALFORMED_POLICY;
    const cJSON *greater = cJSON_GetObjectItemCaseSensitive(condition, "DateGreaterThan");
    if (greater != NULL) {
        if (read_epoch_condition(greater, &out->date_greater_than) != 0)
            return FM_CF_MALFORMED_POLICY;
        out->has_date_greater_than = true;
    }
    const cJSON *ip = cJSON_GetObjectItemCaseSensitive(condition, "IpAddress");
    if (ip != NULL) {
        if (!only_members(ip, ip_names))
            return FM_CF_MALFORMED_POLICY;
        const cJSON *source = cJSON_GetObjectItemCaseSensitive(ip, "AWS:SourceIp");
        if (!cJSON_IsString(source) || source->valuestring == NULL ||
            fm_cf_parse_cidr(source->valuestring, strlen(source->valuestring), &out->ip) != 0)
            return FM_CF_MALFORMED_POLICY;
        out->has_ip = true;
    }
    return FM_CF_OK;
}

/* A JSON "\u0000" escape, counting backslashes: in "\\u0000" the backslash is escaped and "u0000" is text
 * (a URL holding a literal backslash-u0000 signs that way). */
static bool has_nul_escape(const char *json)
{
    for (const char *c = json; *c != '\0'; c++) {
        if (*c != '\\')
            continue;
        if (c[1] == 'u' && strncmp(c + 2, "0000", 4) == 0)
            return true;
        if (c[1] != '\0')
            c++; /* skip the escaped character, a backslash included */
    }
    return false;
}

/* CloudFront's Resource wildcards: '*' any run of characters (none included, '/' and '?' included), '?' exactly
 * one; everything else literal and case-sensitive. Greedy with one backtrack point: O(pattern * text) at worst,
 * and both are bounded (FM_CF_MAX_POLICY, FM_CF_MAX_URL). */
static bool wildcard_match(const char *pattern, size_t pattern_len, const char *text, size_t text_len)
{
    size_t p = 0, t = 0, star = SIZE_MAX, star_t = 0;
    while (t < text_len) {
        if (p < pattern_len && pattern[p] == '*') {
            star = p++;
            star_t = t;
        } else if (p < pattern_len && (pattern[p] == '?' || pattern[p] == text[t])) {
            p++;
            t++;
        } else if (star != SIZE_MAX) {
            p = star + 1;
            t = ++star_t;
        } else {
            return false;
        }
    }
    while (p < pattern_len && pattern[p] == '*')
        p++;
    return p == pattern_len;
}

/* ---- verification -------------------------------------------------------------------------------------------- */

static fm_cf_status_t check_conditions(const conditions_t *c, const signed_url_t *su, const char *client_ip,
                                       long long now, char *reason, size_t reason_size)
{
    if (now >= c->date_less_than) {
        fm_cf_set_msg(reason, reason_size, "expired at %lld (now %lld)", c->date_less_than, now);
        return FM_CF_EXPIRED;
    }
    if (c->has_date_greater_than && now <= c->date_greater_than) {
        fm_cf_set_msg(reason, reason_size, "valid only after %lld (now %lld)", c->date_greater_than, now);
        return FM_CF_NOT_YET_VALID;
    }
    if (c->has_ip && !client_in_cidr(client_ip, &c->ip)) {
        fm_cf_set_msg(reason, reason_size, "client address is outside the policy's AWS:SourceIp");
        return FM_CF_IP_NOT_ALLOWED;
    }
    if (c->resource != NULL && !wildcard_match(c->resource, strlen(c->resource), su->resource, su->resource_len)) {
        fm_cf_set_msg(reason, reason_size, "the URL does not match the policy's Resource");
        return FM_CF_RESOURCE_MISMATCH;
    }
    return FM_CF_OK;
}

static fm_cf_status_t verify(const fm_cf_keys_t *keys, const char *url, size_t len, const char *client_ip,
                             long long now, signed_url_t *su, char *reason, size_t reason_size)
{
    if (len > FM_CF_MAX_URL) {
        fm_cf_set_msg(reason, reason_size, "URL longer than %d bytes", FM_CF_MAX_URL);
        return FM_CF_TOO_LONG;
    }
    const char *qmark = memchr(url, '?', len);
    if (qmark != NULL && len - (size_t)(qmark + 1 - url) > FM_CF_MAX_QUERY) {
        fm_cf_set_msg(reason, reason_size, "query longer than %d bytes", FM_CF_MAX_QUERY);
        return FM_CF_TOO_LONG;
    }
    if (memchr(url, '\0', len) != NULL) {
        fm_cf_set_msg(reason, reason_size, "NUL byte in the URL");
        return FM_CF_MALFORMED;
    }
    fm_cf_status_t status = parse_url(url, len, su, reason, reason_size);
    if (status != FM_CF_OK)
        return status;

    if (!su->present[P_SIGNATURE] || su->value[P_SIGNATURE].len == 0) {
        fm_cf_set_msg(reason, reason_size, "no Signature parameter");
        return FM_CF_MISSING_SIGNATURE;
    }
    if (!su->present[P_KEY_PAIR_ID]) {
        fm_cf_set_msg(reason, reason_size, "no Key-Pair-Id parameter");
        return FM_CF_MISSING_KEY_PAIR_ID;
    }
    bool custom = su->present[P_POLICY];
    if (!custom && !su->present[P_EXPIRES]) {
        fm_cf_set_msg(reason, reason_size, "neither Expires nor Policy");
        return FM_CF_MISSING_POLICY;
    }
    if (custom && su->present[P_EXPIRES]) {
        fm_cf_set_msg(reason, reason_size, "both Expires and Policy");
        return FM_CF_MALFORMED;
    }
    bool sha256 = false;
    if (su->present[P_HASH_ALGORITHM]) {
        slice_t h = su->value[P_HASH_ALGORITHM];
        if (h.len == 6 && memcmp(h.base, "SHA256", 6) == 0) {
            sha256 = true;
        } else if (!(h.len == 4 && memcmp(h.base, "SHA1", 4) == 0)) {
            fm_cf_set_msg(reason, reason_size, "Hash-Algorithm must be SHA1 or SHA256");
            return FM_CF_BAD_HASH_ALGORITHM;
        }
    }

    uint8_t sig[SIG_MAX];
    size_t sig_len = 0;
    slice_t sig_text = su->value[P_SIGNATURE];
    if (sig_text.len > SIG_B64_MAX) {
        fm_cf_set_msg(reason, reason_size, "Signature longer than any key's signature");
        return FM_CF_BAD_SIGNATURE;
    }
    if (cf_b64_decode(sig_text, sig, sizeof sig, &sig_len) != 0) {
        fm_cf_set_msg(reason, reason_size, "Signature is not CloudFront base64");
        return FM_CF_BAD_BASE64;
    }

    /* The signed bytes: the Policy as sent, or the canned policy rebuilt from the URL. One extra byte for the
     * NUL cJSON needs. */
    uint8_t policy[FM_CF_MAX_POLICY + 4];
    size_t policy_len = 0;
    long long expires = 0;
    if (custom) {
        slice_t text = su->value[P_POLICY];
        if (text.len > POLICY_B64_MAX) {
            fm_cf_set_msg(reason, reason_size, "Policy longer than %d bytes", FM_CF_MAX_POLICY);
            return FM_CF_TOO_LONG;
        }
        if (text.len == 0 || cf_b64_decode(text, policy, sizeof policy, &policy_len) != 0) {
            fm_cf_set_msg(reason, reason_size, "Policy is not CloudFront base64");
            return FM_CF_BAD_BASE64;
        }
        if (policy_len > FM_CF_MAX_POLICY) {
            fm_cf_set_msg(reason, reason_size, "Policy longer than %d bytes", FM_CF_MAX_POLICY);
            return FM_CF_TOO_LONG;
        }
    } else {
        if (parse_epoch(su->value[P_EXPIRES], &expires) != 0) {
            fm_cf_set_msg(reason, reason_size, "Expires is not an epoch second");
            return FM_CF_MALFORMED;
        }
        buf_t b = {(char *)policy, 0, FM_CF_MAX_POLICY + 1, false};
        if (fm_cf_build_policy(&b, su->resource, su->resource_len, expires, 0, NULL) != 0) {
            fm_cf_set_msg(reason, reason_size, "the URL is not valid UTF-8");
            return FM_CF_MALFORMED;
        }
        if (b.overflow) {
            fm_cf_set_msg(reason, reason_size, "canned policy longer than %d bytes", FM_CF_MAX_POLICY);
            return FM_CF_TOO_LONG;
        }
        policy_len = b.len;
    }

    slice_t id = su->value[P_KEY_PAIR_ID];
    const key_entry_t *key = fm_cf_valid_key_id(id.base, id.len) ? fm_cf_find_key(keys, id.base, id.len) : NULL;
    if (key == NULL) {
        fm_cf_set_msg(reason, reason_size, "Key-Pair-Id is not one of ours");
        return FM_CF_UNKNOWN_KEY;
    }
    status = fm_cf_verify_signature(key, sha256, policy, policy_len, sig, sig_len);
    if (status != FM_CF_OK) {
        fm_cf_set_msg(reason, reason_size,
                      status == FM_CF_BAD_SIGNATURE ? "signature does not verify with key %s"
                                                    : "cannot verify with key %s",
                      key->id);
        return status;
    }

    conditions_t conditions = {.resource = NULL, .date_less_than = expires};
    if (!custom)
        return check_conditions(&conditions, su, client_ip, now, reason, reason_size);

    /* cJSON strings are C strings: a NUL, raw or escaped, would cut the Resource short. We never sign one. */
    if (memchr(policy, '\0', policy_len) != NULL) {
        fm_cf_set_msg(reason, reason_size, "NUL in the policy");
        return FM_CF_MALFORMED_POLICY;
    }
    policy[policy_len] = '\0';
    if (has_nul_escape((const char *)policy)) {
        fm_cf_set_msg(reason, reason_size, "NUL in the policy");
        return FM_CF_MALFORMED_POLICY;
    }
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)policy, policy_len + 1, NULL, 1);
    if (root == NULL) {
        fm_cf_set_msg(reason, reason_size, "the policy is not JSON");
        return FM_CF_MALFORMED_POLICY;
    }
    status = read_policy(root, &conditions);
    if (status != FM_CF_OK)
        fm_cf_set_msg(reason, reason_size, "the policy is not one statement with Resource and known conditions");
    else
        status = check_conditions(&conditions, su, client_ip, now, reason, reason_size);
    cJSON_Delete(root);
    return status;
}

fm_cf_status_t fm_cf_verify_url(const fm_cf_keys_t *keys, const char *url, size_t len, const char *client_ip,
                                long long now, char *reason, size_t reason_size)
{
    fm_cf_set_msg(reason, reason_size, "ok");
    if (keys == NULL || url == NULL) {
        fm_cf_set_msg(reason, reason_size, "no keys or no URL");
        return FM_CF_INTERNAL;
    }
    signed_url_t *su = calloc(1, sizeof *su);
    if (su == NULL) {
        fm_cf_set_msg(reason, reason_size, "out of memory");
        return FM_CF_INTERNAL;
    }
    fm_cf_status_t status = verify(keys, url, len, client_ip, now, su, reason, reason_size);
    free(su);
    return status;
}
