#include "cfsign.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* RSA-4096 is the largest key we load; no valid signature is longer. */
#define SIG_MAX 512
#define PEM_MAX 16384
/* CloudFront base64 of the longest signature / policy we accept. */
#define SIG_B64_MAX ((SIG_MAX + 2) / 3 * 4)
#define POLICY_B64_MAX ((FM_CF_MAX_POLICY + 2) / 3 * 4)

enum { KEY_RSA = 1, KEY_EC };

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

static __attribute__((format(printf, 3, 4))) void set_msg(char *out, size_t size, const char *format, ...)
{
    if (out == NULL || size == 0)
        return;
    va_list args;
    va_start(args, format);
    vsnprintf(out, size, format, args);
    va_end(args);
}

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

static int cf_b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '~')
        return 63;
    return -1;
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
static int build_policy(buf_t *b, const char *resource, size_t resource_len, long long date_less_than,
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

typedef struct {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    int prefix;
} cidr_t;

/* "addr[/prefix]" (IPv4 dotted quad or IPv6). A missing prefix means one host. Returns 0 or -1. */
static int parse_cidr(const char *text, size_t len, cidr_t *out)
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

/* ---- keys ------------------------------------------------------------------------------------------------------ */

static bool valid_key_id(const char *id, size_t len)
{
    if (len == 0 || len > FM_CF_KEY_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return false;
    }
    return true;
}

fm_cf_keys_t *fm_cf_keys_new(void)
{
    fm_cf_keys_t *keys = calloc(1, sizeof *keys);
    if (keys != NULL)
        keys->rsa_min_bits = 2048;
    return keys;
}

void fm_cf_keys_allow_rsa1024(fm_cf_keys_t *keys)
{
    if (keys != NULL)
        keys->rsa_min_bits = 1024;
}

size_t fm_cf_keys_count(const fm_cf_keys_t *keys)
{
    return keys != NULL ? keys->count : 0;
}

void fm_cf_keys_free(fm_cf_keys_t *keys)
{
    if (keys == NULL)
        return;
    for (size_t i = 0; i < keys->count; i++)
        EVP_PKEY_free(keys->entries[i].pkey);
    free(keys);
}

/* Refuses every passphrase: without a callback OpenSSL would prompt on the terminal for an encrypted key. */
static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    return -1;
}

static EVP_PKEY *read_pem(const char *pem, size_t len, bool *has_private)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
        return NULL;
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    *has_private = pkey != NULL;
    if (pkey == NULL) {
        BIO_free(bio);
        bio = BIO_new_mem_buf(pem, (int)len);
        pkey = bio != NULL ? PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL) : NULL;
    }
    BIO_free(bio);
    return pkey;
}

int fm_cf_keys_add_pem(fm_cf_keys_t *keys, const char *key_pair_id, const char *pem, size_t len, char *err,
                       size_t err_size)
{
    if (keys == NULL || key_pair_id == NULL || pem == NULL) {
        set_msg(err, err_size, "missing key set, Key-Pair-Id or PEM");
        return -1;
    }
    size_t id_len = strnlen(key_pair_id, FM_CF_KEY_ID_MAX + 1);
    if (!valid_key_id(key_pair_id, id_len)) {
        set_msg(err, err_size, "a Key-Pair-Id is 1 to %d characters of A-Z, a-z, 0-9, '-' and '_'", FM_CF_KEY_ID_MAX);
        return -1;
    }
    if (keys->count == FM_CF_MAX_KEYS) {
        set_msg(err, err_size, "more than %d CloudFront key pairs", FM_CF_MAX_KEYS);
        return -1;
    }
    for (size_t i = 0; i < keys->count; i++) {
        if (strcmp(keys->entries[i].id, key_pair_id) == 0) {
            set_msg(err, err_size, "Key-Pair-Id %s is configured twice", key_pair_id);
            return -1;
        }
    }
    if (len == 0 || len > PEM_MAX) {
        set_msg(err, err_size, "key %s: the PEM is empty or longer than %d bytes", key_pair_id, PEM_MAX);
        return -1;
    }
    bool has_private = false;
    EVP_PKEY *pkey = read_pem(pem, len, &has_private);
    ERR_clear_error();
    if (pkey == NULL) {
        set_msg(err, err_size, "key %s: not an unencrypted PEM private key or PUBLIC KEY", key_pair_id);
        return -1;
    }
    int type = 0;
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        int bits = EVP_PKEY_get_bits(pkey);
        if (bits < keys->rsa_min_bits || bits > SIG_MAX * 8) {
            set_msg(err, err_size, "key %s: RSA keys must have %d to %d bits, not %d", key_pair_id, keys->rsa_min_bits,
                    SIG_MAX * 8, bits);
            EVP_PKEY_free(pkey);
            return -1;
        }
        type = KEY_RSA;
    } else if (EVP_PKEY_is_a(pkey, "EC")) {
        char group[64] = "";
        size_t group_len = 0;
        if (EVP_PKEY_get_group_name(pkey, group, sizeof group, &group_len) != 1 || strcmp(group, "prime256v1") != 0) {
            set_msg(err, err_size, "key %s: ECDSA keys must be on P-256 (prime256v1), not %s", key_pair_id,
                    group[0] != '\0' ? group : "an unnamed curve");
            EVP_PKEY_free(pkey);
            ERR_clear_error();
            return -1;
        }
        type = KEY_EC;
    } else {
        set_msg(err, err_size, "key %s: only RSA and ECDSA P-256 keys sign CloudFront URLs", key_pair_id);
        EVP_PKEY_free(pkey);
        return -1;
    }
    key_entry_t *entry = &keys->entries[keys->count++];
    memcpy(entry->id, key_pair_id, id_len + 1);
    entry->pkey = pkey;
    entry->type = type;
    entry->has_private = has_private;
    return 0;
}

static const key_entry_t *find_key(const fm_cf_keys_t *keys, const char *id, size_t id_len)
{
    for (size_t i = 0; i < keys->count; i++)
        if (strlen(keys->entries[i].id) == id_len && memcmp(keys->entries[i].id, id, id_len) == 0)
            return &keys->entries[i];
    return NULL;
}

/* ---- signatures ---------------------------------------------------------------------------------------------- */

/* RSA: PKCS#1 v1.5 ("openssl sha1 -sign"); ECDSA: the DER ECDSA-Sig-Value OpenSSL writes. The shared EVP_PKEY
 * is only read; each call has its own contexts, so threads may sign and verify with one key at once. */
static int sign_policy(const key_entry_t *key, bool sha256, const buf_t *policy, uint8_t *sig, size_t *sig_len)
{
    int rc = -1;
    EVP_PKEY_CTX *key_ctx = NULL; /* owned by md_ctx */
    EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
    if (md_ctx == NULL ||
        EVP_DigestSignInit(md_ctx, &key_ctx, sha256 ? EVP_sha256() : EVP_sha1(), NULL, key->pkey) != 1)
        goto done;
    if (key->type == KEY_RSA && EVP_PKEY_CTX_set_rsa_padding(key_ctx, RSA_PKCS1_PADDING) != 1)
        goto done;
    size_t len = 0;
    if (EVP_DigestSign(md_ctx, NULL, &len, (const uint8_t *)policy->data, policy->len) != 1 || len > SIG_MAX)
        goto done;
    if (EVP_DigestSign(md_ctx, sig, &len, (const uint8_t *)policy->data, policy->len) != 1)
        goto done;
    *sig_len = len;
    rc = 0;
done:
    EVP_MD_CTX_free(md_ctx);
    ERR_clear_error();
    return rc;
}

static fm_cf_status_t verify_signature(const key_entry_t *key, bool sha256, const uint8_t *policy, size_t policy_len,
                                       const uint8_t *sig, size_t sig_len)
{
    size_t max = (size_t)EVP_PKEY_get_size(key->pkey);
    if (key->type == KEY_RSA ? sig_len != max : sig_len > max)
        return FM_CF_BAD_SIGNATURE;
    fm_cf_status_t result = FM_CF_INTERNAL;
    EVP_PKEY_CTX *key_ctx = NULL;
    EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
    if (md_ctx == NULL ||
        EVP_DigestVerifyInit(md_ctx, &key_ctx, sha256 ? EVP_sha256() : EVP_sha1(), NULL, key->pkey) != 1)
        goto done;
    if (key->type == KEY_RSA && EVP_PKEY_CTX_set_rsa_padding(key_ctx, RSA_PKCS1_PADDING) != 1)
        goto done;
    result = EVP_DigestVerify(md_ctx, sig, sig_len, policy, policy_len) == 1 ? FM_CF_OK : FM_CF_BAD_SIGNATURE;
done:
    EVP_MD_CTX_free(md_ctx);
    /* A failed verify leaves entries on this thread's error queue; drop them so they do not surface elsewhere. */
    ERR_clear_error();
    return result;
}

/* ---- CloudFront query parameters ---------------------------------------------------------------------------- */

enum { P_EXPIRES, P_POLICY, P_SIGNATURE, P_KEY_PAIR_ID, P_HASH_ALGORITHM, P_COUNT };
static const char *const param_names[P_COUNT] = {"Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm"};

/* The name=value pair `token` if it is one of CloudFront's parameters (names are case-sensitive). */
static int param_index(slice_t token)
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
        if (param_index((slice_t){token, strcspn(token, "&")}) >= 0)
            return false;
    }
    return true;
}

/* The AWS:SourceIp value botocore writes: the caller's text, "/32" appended when it has no prefix. */
static int sign_ip(const char *ip_cidr, char *out, size_t out_size, char *err, size_t err_size)
{
    size_t len = strnlen(ip_cidr, INET6_ADDRSTRLEN + 5);
    cidr_t cidr;
    if (len > INET6_ADDRSTRLEN + 4 || parse_cidr(ip_cidr, len, &cidr) != 0) {
        set_msg(err, err_size, "ip_cidr is not an IPv4 or IPv6 address with an optional /prefix");
        return -1;
    }
    bool has_prefix = memchr(ip_cidr, '/', len) != NULL;
    /* botocore would turn "2001:db8::1" into "2001:db8::1/32", a /32 IPv6 network: make the caller say /128. */
    if (cidr.family == AF_INET6 && !has_prefix) {
        set_msg(err, err_size, "an IPv6 ip_cidr needs an explicit prefix (/128 for one address)");
        return -1;
    }
    snprintf(out, out_size, "%s%s", ip_cidr, has_prefix ? "" : "/32");
    return 0;
}

int fm_cf_sign_url(const fm_cf_keys_t *keys, const char *key_pair_id, const fm_cf_sign_req_t *req, char **out_url,
                   char *err, size_t err_size)
{
    if (out_url == NULL) {
        set_msg(err, err_size, "no place for the URL");
        return -1;
    }
    *out_url = NULL;
    if (keys == NULL || req == NULL || req->url == NULL) {
        set_msg(err, err_size, "missing key set, request or URL");
        return -1;
    }
    const key_entry_t *key = NULL;
    for (size_t i = 0; i < keys->count && key == NULL; i++)
        if (key_pair_id == NULL ? keys->entries[i].has_private : strcmp(keys->entries[i].id, key_pair_id) == 0)
            key = &keys->entries[i];
    if (key == NULL || !key->has_private) {
        set_msg(err, err_size, "no private key for Key-Pair-Id %s", key_pair_id != NULL ? key_pair_id : "(current)");
        return -1;
    }

    size_t url_len = strnlen(req->url, FM_CF_MAX_URL + 1);
    if (url_len > FM_CF_MAX_URL || !valid_url(req->url, url_len)) {
        set_msg(
            err, err_size,
            "the URL must be http(s), printable ASCII without spaces, '#' or CloudFront parameters, at most %d bytes",
            FM_CF_MAX_URL);
        return -1;
    }
    if (req->date_less_than <= 0 || req->date_less_than > FM_CF_EPOCH_MAX || req->date_greater_than < 0 ||
        req->date_greater_than >= req->date_less_than) {
        set_msg(err, err_size, "need 0 <= date_greater_than < date_less_than <= %lld", FM_CF_EPOCH_MAX);
        return -1;
    }
    char ip[INET6_ADDRSTRLEN + 8];
    if (req->ip_cidr != NULL && sign_ip(req->ip_cidr, ip, sizeof ip, err, err_size) != 0)
        return -1;

    const char *resource = req->resource != NULL ? req->resource : req->url;
    size_t resource_len = strnlen(resource, FM_CF_MAX_POLICY + 1);
    if (resource_len > FM_CF_MAX_POLICY) {
        set_msg(err, err_size, "the resource is longer than %d bytes", FM_CF_MAX_POLICY);
        return -1;
    }
    bool custom = req->force_custom || req->date_greater_than != 0 || req->ip_cidr != NULL ||
                  strcmp(resource, req->url) != 0 || memchr(req->url, '*', url_len) != NULL;

    char policy_data[FM_CF_MAX_POLICY + 1];
    buf_t policy = {policy_data, 0, sizeof policy_data, false};
    policy_data[0] = '\0';
    if (build_policy(&policy, resource, resource_len, req->date_less_than, req->date_greater_than,
                     req->ip_cidr != NULL ? ip : NULL) != 0) {
        set_msg(err, err_size, "the resource is not valid UTF-8");
        return -1;
    }
    if (policy.overflow) {
        set_msg(err, err_size, "the policy would be longer than %d bytes", FM_CF_MAX_POLICY);
        return -1;
    }

    uint8_t sig[SIG_MAX];
    size_t sig_len = 0;
    if (sign_policy(key, req->hash_sha256 != 0, &policy, sig, &sig_len) != 0) {
        set_msg(err, err_size, "signing with key %s failed", key->id);
        return -1;
    }

    size_t cap = url_len + 64 + POLICY_B64_MAX + SIG_B64_MAX + FM_CF_KEY_ID_MAX;
    buf_t out = {malloc(cap), 0, cap, false};
    if (out.data == NULL) {
        set_msg(err, err_size, "out of memory");
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
        set_msg(err, err_size, "the signed URL would exceed %d bytes of query or %d bytes in all", FM_CF_MAX_QUERY,
                FM_CF_MAX_URL);
        free(out.data);
        return -1;
    }
    *out_url = out.data;
    return 0;
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
            int p = param_index(token);
            if (p >= 0) {
                if (out->present[p]) {
                    set_msg(reason, reason_size, "%s appears twice", param_names[p]);
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
            parse_cidr(source->valuestring, strlen(source->valuestring), &out->ip) != 0)
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
        set_msg(reason, reason_size, "expired at %lld (now %lld)", c->date_less_than, now);
        return FM_CF_EXPIRED;
    }
    if (c->has_date_greater_than && now <= c->date_greater_than) {
        set_msg(reason, reason_size, "valid only after %lld (now %lld)", c->date_greater_than, now);
        return FM_CF_NOT_YET_VALID;
    }
    if (c->has_ip && !client_in_cidr(client_ip, &c->ip)) {
        set_msg(reason, reason_size, "client address is outside the policy's AWS:SourceIp");
        return FM_CF_IP_NOT_ALLOWED;
    }
    if (c->resource != NULL && !wildcard_match(c->resource, strlen(c->resource), su->resource, su->resource_len)) {
        set_msg(reason, reason_size, "the URL does not match the policy's Resource");
        return FM_CF_RESOURCE_MISMATCH;
    }
    return FM_CF_OK;
}

static fm_cf_status_t verify(const fm_cf_keys_t *keys, const char *url, size_t len, const char *client_ip,
                             long long now, signed_url_t *su, char *reason, size_t reason_size)
{
    if (len > FM_CF_MAX_URL) {
        set_msg(reason, reason_size, "URL longer than %d bytes", FM_CF_MAX_URL);
        return FM_CF_TOO_LONG;
    }
    const char *qmark = memchr(url, '?', len);
    if (qmark != NULL && len - (size_t)(qmark + 1 - url) > FM_CF_MAX_QUERY) {
        set_msg(reason, reason_size, "query longer than %d bytes", FM_CF_MAX_QUERY);
        return FM_CF_TOO_LONG;
    }
    if (memchr(url, '\0', len) != NULL) {
        set_msg(reason, reason_size, "NUL byte in the URL");
        return FM_CF_MALFORMED;
    }
    fm_cf_status_t status = parse_url(url, len, su, reason, reason_size);
    if (status != FM_CF_OK)
        return status;

    if (!su->present[P_SIGNATURE] || su->value[P_SIGNATURE].len == 0) {
        set_msg(reason, reason_size, "no Signature parameter");
        return FM_CF_MISSING_SIGNATURE;
    }
    if (!su->present[P_KEY_PAIR_ID]) {
        set_msg(reason, reason_size, "no Key-Pair-Id parameter");
        return FM_CF_MISSING_KEY_PAIR_ID;
    }
    bool custom = su->present[P_POLICY];
    if (!custom && !su->present[P_EXPIRES]) {
        set_msg(reason, reason_size, "neither Expires nor Policy");
        return FM_CF_MISSING_POLICY;
    }
    if (custom && su->present[P_EXPIRES]) {
        set_msg(reason, reason_size, "both Expires and Policy");
        return FM_CF_MALFORMED;
    }
    bool sha256 = false;
    if (su->present[P_HASH_ALGORITHM]) {
        slice_t h = su->value[P_HASH_ALGORITHM];
        if (h.len == 6 && memcmp(h.base, "SHA256", 6) == 0) {
            sha256 = true;
        } else if (!(h.len == 4 && memcmp(h.base, "SHA1", 4) == 0)) {
            set_msg(reason, reason_size, "Hash-Algorithm must be SHA1 or SHA256");
            return FM_CF_BAD_HASH_ALGORITHM;
        }
    }

    uint8_t sig[SIG_MAX];
    size_t sig_len = 0;
    slice_t sig_text = su->value[P_SIGNATURE];
    if (sig_text.len > SIG_B64_MAX) {
        set_msg(reason, reason_size, "Signature longer than any key's signature");
        return FM_CF_BAD_SIGNATURE;
    }
    if (cf_b64_decode(sig_text, sig, sizeof sig, &sig_len) != 0) {
        set_msg(reason, reason_size, "Signature is not CloudFront base64");
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
            set_msg(reason, reason_size, "Policy longer than %d bytes", FM_CF_MAX_POLICY);
            return FM_CF_TOO_LONG;
        }
        if (text.len == 0 || cf_b64_decode(text, policy, sizeof policy, &policy_len) != 0) {
            set_msg(reason, reason_size, "Policy is not CloudFront base64");
            return FM_CF_BAD_BASE64;
        }
        if (policy_len > FM_CF_MAX_POLICY) {
            set_msg(reason, reason_size, "Policy longer than %d bytes", FM_CF_MAX_POLICY);
            return FM_CF_TOO_LONG;
        }
    } else {
        if (parse_epoch(su->value[P_EXPIRES], &expires) != 0) {
            set_msg(reason, reason_size, "Expires is not an epoch second");
            return FM_CF_MALFORMED;
        }
        buf_t b = {(char *)policy, 0, FM_CF_MAX_POLICY + 1, false};
        if (build_policy(&b, su->resource, su->resource_len, expires, 0, NULL) != 0) {
            set_msg(reason, reason_size, "the URL is not valid UTF-8");
            return FM_CF_MALFORMED;
        }
        if (b.overflow) {
            set_msg(reason, reason_size, "canned policy longer than %d bytes", FM_CF_MAX_POLICY);
            return FM_CF_TOO_LONG;
        }
        policy_len = b.len;
    }

    slice_t id = su->value[P_KEY_PAIR_ID];
    const key_entry_t *key = valid_key_id(id.base, id.len) ? find_key(keys, id.base, id.len) : NULL;
    if (key == NULL) {
        set_msg(reason, reason_size, "Key-Pair-Id is not one of ours");
        return FM_CF_UNKNOWN_KEY;
    }
    status = verify_signature(key, sha256, policy, policy_len, sig, sig_len);
    if (status != FM_CF_OK) {
        set_msg(reason, reason_size,
                status == FM_CF_BAD_SIGNATURE ? "signature does not verify with key %s" : "cannot verify with key %s",
                key->id);
        return status;
    }

    conditions_t conditions = {.resource = NULL, .date_less_than = expires};
    if (!custom)
        return check_conditions(&conditions, su, client_ip, now, reason, reason_size);

    /* cJSON strings are C strings: a NUL, raw or escaped, would cut the Resource short. We never sign one. */
    if (memchr(policy, '\0', policy_len) != NULL) {
        set_msg(reason, reason_size, "NUL in the policy");
        return FM_CF_MALFORMED_POLICY;
    }
    policy[policy_len] = '\0';
    if (has_nul_escape((const char *)policy)) {
        set_msg(reason, reason_size, "NUL in the policy");
        return FM_CF_MALFORMED_POLICY;
    }
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)policy, policy_len + 1, NULL, 1);
    if (root == NULL) {
        set_msg(reason, reason_size, "the policy is not JSON");
        return FM_CF_MALFORMED_POLICY;
    }
    status = read_policy(root, &conditions);
    if (status != FM_CF_OK)
        set_msg(reason, reason_size, "the policy is not one statement with Resource and known conditions");
    else
        status = check_conditions(&conditions, su, client_ip, now, reason, reason_size);
    cJSON_Delete(root);
    return status;
}

fm_cf_status_t fm_cf_verify_url(const fm_cf_keys_t *keys, const char *url, size_t len, const char *client_ip,
                                long long now, char *reason, size_t reason_size)
{
    set_msg(reason, reason_size, "ok");
    if (keys == NULL || url == NULL) {
        set_msg(reason, reason_size, "no keys or no URL");
        return FM_CF_INTERNAL;
    }
    signed_url_t *su = calloc(1, sizeof *su);
    if (su == NULL) {
        set_msg(reason, reason_size, "out of memory");
        return FM_CF_INTERNAL;
    }
    fm_cf_status_t status = verify(keys, url, len, client_ip, now, su, reason, reason_size);
    free(su);
    return status;
}
