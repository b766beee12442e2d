#include "password.h"
#include "b64.h"

#include <argon2.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <string.h>

#define SALT_LEN 16
#define TAG_LEN 32
/* Stored strings longer than this are not ours and not anything we would verify. */
#define ENCODED_MAX 256

static const char phc_prefix[] = "$argon2id$v=19$m=";

fm_password_params_t fm_password_default_params(void)
{
    return (fm_password_params_t){
        .memory_kib = FM_PASSWORD_DEFAULT_MEMORY_KIB,
        .iterations = FM_PASSWORD_DEFAULT_ITERATIONS,
        .parallelism = FM_PASSWORD_DEFAULT_PARALLELISM,
    };
}

static bool params_in_bounds(const fm_password_params_t *params)
{
    /* argon2 needs at least 8 KiB per lane (RFC 9106 §3.1). */
    return params->parallelism >= 1 && params->parallelism <= FM_PASSWORD_MAX_PARALLELISM && params->iterations >= 1 &&
           params->iterations <= FM_PASSWORD_MAX_ITERATIONS && params->memory_kib >= 8 * params->parallelism &&
           params->memory_kib <= FM_PASSWORD_MAX_MEMORY_KIB;
}

/* A stored argon2id v=19 PHC string, split. The base64 parts are only measured: libargon2 decodes them. */
typedef struct {
    fm_password_params_t params;
    size_t salt_chars;
    size_t tag_chars;
} phc_t;

/* Reads a decimal number without sign or leading zeros, at most 4294967295. */
static bool parse_u32(const char **cursor, uint32_t *out)
{
    const char *p = *cursor;
    uint64_t value = 0;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9'))
        return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        value = value * 10 + (uint64_t)(*p - '0');
        if (value > UINT32_MAX)
            return false;
    }
    *out = (uint32_t)value;
    *cursor = p;
    return true;
}

static bool expect(const char **cursor, const char *literal)
{
    size_t len = strlen(literal);
    if (strncmp(*cursor, literal, len) != 0)
        return false;
    *cursor += len;
    return true;
}

/* Standard base64 without padding, as the PHC string format writes salt and tag. */
static size_t base64_run(const char *p)
{
    size_t n = 0;
    while ((p[n] >= 'A' && p[n] <= 'Z') || (p[n] >= 'a' && p[n] <= 'z') || (p[n] >= '0' && p[n] <= '9') ||
           p[n] == '+' || p[n] == '/')
        n++;
    return n;
}

/* Parses `$argon2id$v=19$m=M,t=T,p=P$salt$tag`. Older v=16 strings are refused: we never wrote any. */
static bool parse_phc(const char *encoded, phc_t *phc)
{
    if (encoded == NULL || strnlen(encoded, ENCODED_MAX + 1) > ENCODED_MAX)
        return false;
    const char *p = encoded;
    if (!expect(&p, phc_prefix) || !parse_u32(&p, &phc->params.memory_kib) || !expect(&p, ",t=") ||
        !parse_u32(&p, &phc->params.iterations) || !expect(&p, ",p=") || !parse_u32(&p, &phc->params.parallelism) ||
        !expect(&p, "$"))
        return false;
    phc->salt_chars = base64_run(p);
    p += phc->salt_chars;
    if (!expect(&p, "$"))
        return false;
    phc->tag_chars = base64_run(p);
    p += phc->tag_chars;
    return *p == '\0' && phc->salt_chars > 0 && phc->tag_chars > 0;
}

int fm_password_hash(const char *password, size_t len, const fm_password_params_t *params,
                     char out[FM_PASSWORD_HASH_BUF_SIZE])
{
    fm_password_params_t defaults = fm_password_default_params();
    if (params == NULL)
        params = &defaults;
    if (out == NULL)
        return -1;
    out[0] = '\0';
    if (password == NULL || len < FM_PASSWORD_MIN_LEN || len > FM_PASSWORD_MAX_LEN || !params_in_bounds(params))
        return -1;
    if (argon2_encodedlen(params->iterations, params->memory_kib, params->parallelism, SALT_LEN, TAG_LEN, Argon2_id) >
        FM_PASSWORD_HASH_BUF_SIZE)
        return -1;

    uint8_t salt[SALT_LEN];
    if (RAND_bytes(salt, sizeof salt) != 1)
        return -1;
    int rc = argon2id_hash_encoded(params->iterations, params->memory_kib, params->parallelism, password, len, salt,
                                   sizeof salt, TAG_LEN, out, FM_PASSWORD_HASH_BUF_SIZE);
    if (rc != ARGON2_OK) {
        out[0] = '\0';
        return -1;
    }
    return 0;
}

int fm_password_verify(const char *encoded, const char *password, size_t len)
{
    phc_t phc;
    if (password == NULL || len > FM_PASSWORD_MAX_LEN || !parse_phc(encoded, &phc) || !params_in_bounds(&phc.params))
        return -1;
    /* argon2id_verify re-derives with the string's own salt and parameters and compares in constant time. */
    return argon2id_verify(encoded, password, len) == ARGON2_OK ? 0 : -1;
}

int fm_password_needs_rehash(const char *encoded, const fm_password_params_t *params)
{
    fm_password_params_t defaults = fm_password_default_params();
    if (params == NULL)
        params = &defaults;
    phc_t phc;
    if (!parse_phc(encoded, &phc))
        return 1;
    bool current = phc.params.memory_kib == params->memory_kib && phc.params.iterations == params->iterations &&
                   phc.params.parallelism == params->parallelism && phc.salt_chars == fm_b64url_encoded_len(SALT_LEN) &&
                   phc.tag_chars == fm_b64url_encoded_len(TAG_LEN);
    return current ? 0 : 1;
}

int fm_token_random(char *out, size_t out_size, size_t bytes)
{
    uint8_t random[FM_TOKEN_MAX_BYTES];
    if (out == NULL || bytes < FM_TOKEN_MIN_BYTES || bytes > FM_TOKEN_MAX_BYTES ||
        out_size < fm_b64url_encoded_len(bytes) + 1)
        return -1;
    int rc = -1;
    if (RAND_bytes(random, (int)bytes) == 1)
        rc = fm_b64url_encode(random, bytes, out, out_size);
    OPENSSL_cleanse(random, bytes);
    if (rc != 0)
        out[0] = '\0';
    return rc;
}

int fm_token_hash(const char *token, size_t len, char out[FM_TOKEN_HASH_BUF_SIZE])
{
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    if (out == NULL)
        return -1;
    out[0] = '\0';
    if (token == NULL || len == 0 || len > FM_TOKEN_MAX_LEN)
        return -1;
    if (EVP_Digest(token, len, digest, &digest_len, EVP_sha256(), NULL) != 1 || digest_len != 32)
        return -1;
    return fm_hex_encode(digest, digest_len, out, FM_TOKEN_HASH_BUF_SIZE);
}
