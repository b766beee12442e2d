/*
 * cfsign: CloudFront signed URLs, the signing side (fm_cf_sign_url; see cfsign.h for the contract and the specs
 * followed), and what signing and verification share: messages, the policy JSON exactly as botocore writes it,
 * "addr[/prefix]" parsing. Keys and signatures are in cfkeys.c, verification in cfverify.c.
 */
#include "cf_internal.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((format(printf, 3, 4))) void fm_cf_set_msg(char *out, size_t size, const char *format, ...)
{
    if (out == NULL || size == 0)
        return;
    va_list args;
    va_start(args, format);
    vsnprintf(out, size, format, args);
    va_end(args);
}

/* ---- buffers ------------------------------------------------------------------------------------------- */

static void put(buf_t *b, const void *data, size_t len)
{
    if (b->overflow || len > b->cap - 1 - b->len) {
        b->overflow = true;
        return;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

static void put_str(buf_t *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_int(buf_t *b, long long value)
{
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%lld", value);
    put(b, digits, (size_t)n);
}

/* ---- CloudFront base64 ------------------------------------------------------------------------------------ */

/* Standard base64 with '+' -> '-', '=' -> '_', '/' -> '~' ("Using Linux commands and OpenSSL for base64
 * encoding"): the padding stays, in its '_' form. */
static const char cf_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-~";

static void cf_b64_encode(buf_t *b, const uint8_t *in, size_t len)
{
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        char quad[4] = {cf_alphabet[(v >> 18) & 63], cf_alphabet[(v >> 12) & 63],
                        i + 1 < len ? cf_alphabet[(v >> 6) & 63] : '_', i + 2 < len ? cf_alphabet[v & 63] : '_'};
        put(b, quad, 4);
    }
}

/* ---- JSON the way Python writes it ------------------------------------------------------------------------- */

/* Next code point of UTF-8 at s[*i]; -1 on anything Python's strict UTF-8 decoder refuses (overlong forms,
 * surrogates, > U+10FFFF, truncation). */
static long next_code_point(const unsigned char *s, size_t len, size_t *i)
{
    unsigned char c = s[*i];
    if (c < 0x80) {
        (*i)++;
        return c;
    }
    size_t extra;
    long cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        extra = 1, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        extra = 2, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        extra = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    if (len - *i <= extra)
        return -1;
    for (size_t k = 1; k <= extra; k++) {
        unsigned char cc = s[*i + k];
        if ((cc & 0xc0) != 0x80)
            return -1;
        cp = cp << 6 | (cc & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    *i += extra + 1;
    return cp;
}

/* json.dumps(ensure_ascii=True) string body: '"' and '\' escaped, \b \f \n \r \t short, everything else outside
 * ' '..'~' as \uXXXX with lower-case hex (astral code points as a surrogate pair). Returns -1 on bad UTF-8. */
static int put_json_string(buf_t *b, const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        long cp = next_code_point(s, len, &i);
        if (cp < 0)
            return -1;
        char esc[32];
        switch (cp) {
        case '"':
            put_str(b, "\\\"");
            continue;
        case '\\':
            put_str(b, "\\\\");
            continue;
        case '\b':
            put_str(b, "\\b");
            continue;
        case '\f':
            put_str(b, "\\f");
            continue;
        case '\n':
            put_str(b, "\\n");
            continue;
        case '\r':
            put_str(b, "\\r");
            continue;
        case '\t':
            put_str(b, "\\t");
            continue;
        }
        if (cp >= 0x20 && cp <= 0x7e) {
            char c = (char)cp;
            put(b, &c, 1);
        } else if (cp < 0x10000) {
            snprintf(esc, sizeof esc, "\\u%04lx", cp);
            put_str(b, esc);
        } else {
            long v = cp - 0x10000;
            snprintf(esc, sizeof esc, "\\u%04lx\\u%04lx", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
            put_str(b, esc);
        }
    }
    return 0;
}

/* botocore CloudFrontSigner.build_policy: {"Statement":[{"Resource":R,"Condition":{"DateLessThan":{...},
 * "IpAddress":{...},"DateGreaterThan":{...}}}]} with separators (',', ':'). With neither optional condition this
 * is also the canned policy CloudFront rebuilds from Expires. `ip` is already in its final form. */
int fm_cf_build_policy(buf_t *b, const char *resource, size_t resource_len, long long date_less_than,
                       long long date_greater_than, const char *ip)
{
    put_str(b, "{\"Statement\":[{\"Resource\":\"");
    if (put_json_string(b, resource, resource_len) != 0)
        return -1;
    put_str(b, "\",\"Condition\":{\"DateLessThan\":{\"AWS:EpochTime\":");
    put_int(b, date_less_than);
    put_str(b, "}");
    if (ip != NULL) {
        put_str(b, ",\"IpAddress\":{\"AWS:SourceIp\":\"");
        if (put_json_string(b, ip, strlen(ip)) != 0)
            return -1;
        put_str(b, "\"}");
    }
    if (date_greater_than != 0) {
        put_str(b, ",\"DateGreaterThan\":{\"AWS:EpochTime\":");
        put_int(b, date_greater_than);
        put_str(b, "}");
    }
    put_str(b, "}}]}");
    return 0;
}

/* ---- addresses ------------------------------------------------------------------------------------------------ */

/* "addr[/prefix]" (IPv4 dotted quad or IPv6). A missing prefix means one host. Returns 0 or -1. */
int fm_cf_parse_cidr(const char *text, size_t len, cidr_t *out)
{
    const char *slash = memchr(text, '/', len);
    size_t addr_len = slash != NULL ? (size_t)(slash - text) : len;
    char addr[INET6_ADDRSTRLEN + 1];
    if (addr_len == 0 || addr_len >= sizeof addr)
        return -1;
    memcpy(addr, text, addr_len);
    addr[addr_len] = '\0';
    if (inet_pton(AF_INET, addr, out->addr) == 1)
        out->family = AF_INET, out->prefix = 32;
    else if (inet_pton(AF_INET6, addr, out->addr) == 1)
        out->family = AF_INET6, out->prefix = 128;
    else
        return -1;
    if (slash == NULL)
        return 0;
    const char *digits = slash + 1;
    size_t digit_count = len - addr_len - 1;
    if (digit_count == 0 || digit_count > 3 || (digits[0] == '0' && digit_count > 1))
        return -1;
    int prefix = 0;
    for (size_t i = 0; i < digit_count; i++) {
        if (digits[i] < '0' || digits[i] > '9')
            return -1;
        prefix = prefix * 10 + (digits[i] - '0');
    }
    if (prefix > out->prefix)
        return -1;
    out->prefix = prefix;
    return 0;
}

/* ---- signing ----------------------------------------------------------------------------------------------------- */

/* http(s), printable ASCII, no fragment, and none of CloudFront's own parameters in the query: the verifier
 * would take a second Signature= for an attack. */
static bool valid_url(const char *url, size_t len)
{
    if (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (url[i] <= ' ' || url[i] > '~' || url[i] == '#')
            return false;
    const char *qmark = memchr(url, '?', len);
    for (const char *token = qmark; token != NULL; token = strchr(token, '&')) {
        token++;
        if (fm_cf_param_index((slice_t){token, strcspn(token, "&")}) >= 0)
            return false;
    }
    return true;
}

/* The AWS:SourceIp value botocore writes: the caller's text, "/32" appended when it has no prefix. */
static int sign_ip(const char *ip_cidr, char *out, size_t out_size, char *err, size_t err_size)
{
    size_t len = strnlen(ip_cidr, INET6_ADDRSTRLEN + 5);
    cidr_t cidr;
    if (len > INET6_ADDRSTRLEN + 4 || fm_cf_parse_cidr(ip_cidr, len, &cidr) != 0) {
        fm_cf_set_msg(err, err_size, "ip_cidr is not an IPv4 or IPv6 address with an optional /prefix");
        return -1;
    }
    bool has_prefix = memchr(ip_cidr, '/', len) != NULL;
    /* botocore would turn "2001:db8::1" into "2001:db8::1/32", a /32 IPv6 network: make the caller say /128. */
    if (cidr.family == AF_INET6 && !has_prefix) {
        fm_cf_set_msg(err, err_size, "an IPv6 ip_cidr needs an explicit prefix (/128 for one address)");
        return -1;
    }
    snprintf(out, out_size, "%s%s", ip_cidr, has_prefix ? "" : "/32");
    return 0;
}

int fm_cf_sign_url(const fm_cf_keys_t *keys, const char *key_pair_id, const fm_cf_sign_req_t *req, char **out_url,
                   char *err, size_t err_size)
{
    if (out_url == NULL) {
        fm_cf_set_msg(err, err_size, "no place for the URL");
        return -1;
    }
    *out_url = NULL;
    if (keys == NULL || req == NULL || req->url == NULL) {
        fm_cf_set_msg(err, err_size, "missing key set, request or URL");
        return -1;
    }
    const key_entry_t *key = NULL;
    for (size_t i = 0; i < keys->count && key == NULL; i++)
        if (key_pair_id == NULL ? keys->entries[i].has_private : strcmp(keys->entries[i].id, key_pair_id) == 0)
            key = &keys->entries[i];
    if (key == NULL || !key->has_private) {
        fm_cf_set_msg(err, err_size, "no private key for Key-Pair-Id %s",
                      key_pair_id != NULL ? key_pair_id : "(current)");
        return -1;
    }

    size_t url_len = strnlen(req->url, FM_CF_MAX_URL + 1);
    if (url_len > FM_CF_MAX_URL || !valid_url(req->url, url_len)) {
        fm_cf_set_msg(
            err, err_size,
            "the URL must be http(s), printable ASCII without spaces, '#' or CloudFront parameters, at most %d bytes",
            FM_CF_MAX_URL);
        return -1;
    }
    if (req->date_less_than <= 0 || req->date_less_than > FM_CF_EPOCH_MAX || req->date_greater_than < 0 ||
        req->date_greater_than >= req->date_less_than) {
        fm_cf_set_msg(err, err_size, "need 0 <= date_greater_than < date_less_than <= %lld", FM_CF_EPOCH_MAX);
        return -1;
    }
    char ip[INET6_ADDRSTRLEN + 8];
    if (req->ip_cidr != NULL && sign_ip(req->ip_cidr, ip, sizeof ip, err, err_size) != 0)
        return -1;

    const char *resource = req->resource != NULL ? req->resource : req->url;
    size_t resource_len = strnlen(resource, FM_CF_MAX_POLICY + 1);
    if (resource_len > FM_CF_MAX_POLICY) {
        fm_cf_set_msg(err, err_size, "the resource is longer than %d bytes", FM_CF_MAX_POLICY);
        return -1;
    }
    bool custom = req->force_custom || req->date_greater_than != 0 || req->ip_cidr != NULL ||
                  strcmp(resource, req->url) != 0 || memchr(req->url, '*', url_len) != NULL;

    char policy_data[FM_CF_MAX_POLICY + 1];
    buf_t policy = {policy_data, 0, sizeof policy_data, false};
    policy_data[0] = '\0';
    if (fm_cf_build_policy(&policy, resource, resource_len, req->date_less_than, req->date_greater_than,
                           req->ip_cidr != NULL ? ip : NULL) != 0) {
        fm_cf_set_msg(err, err_size, "the resource is not valid UTF-8");
        return -1;
    }
    if (policy.overflow) {
        fm_cf_set_msg(err, err_size, "the policy would be longer than %d bytes", FM_CF_MAX_POLICY);
        return -1;
    }

    uint8_t sig[SIG_MAX];
    size_t sig_len = 0;
    if (fm_cf_sign_policy(key, req->hash_sha256 != 0, &policy, sig, &sig_len) != 0) {
        fm_cf_set_msg(err, err_size, "signing with key %s failed", key->id);
        return -1;
    }

    size_t cap = url_len + 64 + POLICY_B64_MAX + SIG_B64_MAX + FM_CF_KEY_ID_MAX;
    buf_t out = {malloc(cap), 0, cap, false};
    if (out.data == NULL) {
        fm_cf_set_msg(err, err_size, "out of memory");
        return -1;
    }
    /* botocore's _build_url: '&' if the URL holds a '?' anywhere, else '?'; then its parameters in order. */
    put(&out, req->url, url_len);
    put_str(&out, memchr(req->url, '?', url_len) != NULL ? "&" : "?");
    if (custom) {
        put_str(&out, "Policy=");
        cf_b64_encode(&out, (const uint8_t *)policy.data, policy.len);
    } else {
        put_str(&out, "Expires=");
        put_int(&out, req->date_less_than);
    }
    put_str(&out, "&Signature=");
    cf_b64_encode(&out, sig, sig_len);
    put_str(&out, "&Key-Pair-Id=");
    put_str(&out, key->id);
    /* The AWS examples put Hash-Algorithm last; it is not in the policy, the signature covers it by failing
     * under the other hash. */
    if (req->hash_sha256)
        put_str(&out, "&Hash-Algorithm=SHA256");
    const char *query = memchr(out.data, '?', out.len);
    if (out.overflow || query == NULL || out.len - (size_t)(query + 1 - out.data) > FM_CF_MAX_QUERY ||
        out.len > FM_CF_MAX_URL) {
        fm_cf_set_msg(err, err_size, "the signed URL would exceed %d bytes of query or %d bytes in all",
                      FM_CF_MAX_QUERY, FM_CF_MAX_URL);
        free(out.data);
        return -1;
    }
    *out_url = out.data;
    return 0;
}
