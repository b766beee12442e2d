#include "jwt.h"
#include "b64.h"
#include "hash.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HS256_LEN 32
#define ES256_SIG_LEN 64
/* RSA-4096 is the largest provider key we expect; a longer signature cannot be valid for any key we load. */
#define RSA_SIG_MAX 512
#define SECRET_MAX 1024
#define PEM_MAX 16384
/* JSON parts decode to at most 3/4 of the token, plus a NUL for cJSON. */
#define PART_BUF_SIZE (FM_JWT_MAX_TOKEN_LEN / 4 * 3 + 4)
/* Past 2^53 a double no longer holds every integer second: such a date is not a real one. */
#define NUMERIC_DATE_MAX 9007199254740992.0

/* {"alg":"HS256","typ":"JWT"}, the only header we issue. */
static const char issued_header_b64[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

struct fm_jwt_verifier {
    uint8_t *secret;
    size_t secret_len;
    char issuer[FM_JWT_CLAIM_MAX + 1];
    bool has_external;
    char external_issuer[FM_JWT_CLAIM_MAX + 1];
    fm_jwt_alg_t external_alg;
    EVP_PKEY *external_key;
    bool has_audience;
    char external_audience[FM_JWT_CLAIM_MAX + 1];
};

/* A borrowed slice of the token. */
typedef struct {
    const char *base;
    size_t len;
} part_t;

static const char *const role_names[] = {NULL, "admin", "member", "viewer"};

const char *fm_jwt_role_name(fm_jwt_role_t role)
{
    if (role <= FM_JWT_ROLE_NONE || role > FM_JWT_ROLE_VIEWER)
        return NULL;
    return role_names[role];
}

const char *fm_jwt_error_code(fm_jwt_error_t error)
{
    switch (error) {
    case FM_JWT_OK:
        return "ok";
    case FM_JWT_ERR_MALFORMED:
        return "malformed";
    case FM_JWT_ERR_BAD_ALG:
        return "bad_alg";
    case FM_JWT_ERR_BAD_SIGNATURE:
        return "bad_signature";
    case FM_JWT_ERR_EXPIRED:
        return "expired";
    case FM_JWT_ERR_NOT_YET_VALID:
        return "not_yet_valid";
    case FM_JWT_ERR_BAD_ISSUER:
        return "bad_issuer";
    case FM_JWT_ERR_MISSING_CLAIM:
        return "missing_claim";
    case FM_JWT_ERR_TOO_LARGE:
        return "too_large";
    case FM_JWT_ERR_BAD_CLAIM:
        return "bad_claim";
    case FM_JWT_ERR_BAD_AUDIENCE:
        return "bad_audience";
    case FM_JWT_ERR_INTERNAL:
        return "internal";
    }
    return "unknown";
}

static const char *alg_name(fm_jwt_alg_t alg)
{
    switch (alg) {
    case FM_JWT_ALG_HS256:
        return "HS256";
    case FM_JWT_ALG_RS256:
        return "RS256";
    case FM_JWT_ALG_ES256:
        return "ES256";
    }
    return NULL;
}

/* ---- issuing ------------------------------------------------------------------------------------------- */

/* Issued strings are printable ASCII so that every JSON parser reads them the same way and the escaped payload
 * stays within FM_JWT_ISSUE_BUF_SIZE. */
static bool valid_issue_string(const char *s)
{
    if (s == NULL)
        return false;
    size_t len = strnlen(s, FM_JWT_CLAIM_MAX + 1);
    if (len == 0 || len > FM_JWT_CLAIM_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    return true;
}

static cJSON *build_payload(const fm_jwt_issue_t *claims, const char *jti)
{
    cJSON *payload = cJSON_CreateObject();
    if (payload == NULL)
        return NULL;
    double iat = (double)claims->issued_at;
    double exp = (double)(claims->issued_at + claims->ttl_seconds);
    if (!cJSON_AddStringToObject(payload, "iss", claims->issuer) ||
        !cJSON_AddStringToObject(payload, "sub", claims->subject) ||
        !cJSON_AddStringToObject(payload, "sid", claims->session_id) ||
        !cJSON_AddStringToObject(payload, "role", fm_jwt_role_name(claims->role)) ||
        !cJSON_AddNumberToObject(payload, "iat", iat) || !cJSON_AddNumberToObject(payload, "nbf", iat) ||
        !cJSON_AddNumberToObject(payload, "exp", exp) || !cJSON_AddStringToObject(payload, "jti", jti)) {
        cJSON_Delete(payload);
        return NULL;
    }
    return payload;
}

int fm_jwt_issue_hs256(const uint8_t *secret, size_t secret_len, const fm_jwt_issue_t *claims, char *out,
                       size_t out_size)
{
    if (secret == NULL || secret_len < FM_JWT_MIN_SECRET_LEN || secret_len > SECRET_MAX || claims == NULL ||
        out == NULL)
        return -1;
    if (!valid_issue_string(claims->issuer) || !valid_issue_string(claims->subject) ||
        !valid_issue_string(claims->session_id) || fm_jwt_role_name(claims->role) == NULL)
        return -1;
    if (claims->issued_at < 0 || claims->ttl_seconds <= 0 ||
        claims->issued_at > (int64_t)NUMERIC_DATE_MAX - claims->ttl_seconds)
        return -1;

    char jti[FM_JWT_CLAIM_MAX + 1];
    if (claims->jti != NULL) {
        if (!valid_issue_string(claims->jti))
            return -1;
        strcpy(jti, claims->jti);
    } else {
        uint8_t jti_bytes[16];
        if (RAND_bytes(jti_bytes, sizeof jti_bytes) != 1 ||
            fm_b64url_encode(jti_bytes, sizeof jti_bytes, jti, sizeof jti) != 0)
            return -1;
    }

    cJSON *payload = build_payload(claims, jti);
    char *payload_json = payload != NULL ? cJSON_PrintUnformatted(payload) : NULL;
    cJSON_Delete(payload);
    if (payload_json == NULL)
        return -1;

    int rc = -1;
    size_t header_len = sizeof issued_header_b64 - 1;
    size_t payload_json_len = strlen(payload_json);
    size_t signing_len = header_len + 1 + fm_b64url_encoded_len(payload_json_len);
    if (signing_len + 1 + fm_b64url_encoded_len(HS256_LEN) + 1 > out_size)
        goto done;
    memcpy(out, issued_header_b64, header_len);
    out[header_len] = '.';
    if (fm_b64url_encode(payload_json, payload_json_len, out + header_len + 1, out_size - header_len - 1) != 0)
        goto done;

    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (HMAC(EVP_sha256(), secret, (int)secret_len, (const uint8_t *)out, signing_len, mac, &mac_len) == NULL ||
        mac_len != HS256_LEN)
        goto done;
    out[signing_len] = '.';
    if (fm_b64url_encode(mac, HS256_LEN, out + signing_len + 1, out_size - signing_len - 1) != 0)
        goto done;
    rc = 0;
done:
    if (rc != 0 && out_size > 0)
        out[0] = '\0';
    cJSON_free(payload_json);
    return rc;
}

/* ---- verifier lifetime ------------------------------------------------------------------------------------ */

static bool copy_config_string(char *dst, const char *src)
{
    if (src == NULL)
        return false;
    size_t len = strnlen(src, FM_JWT_CLAIM_MAX + 1);
    if (len == 0 || len > FM_JWT_CLAIM_MAX)
        return false;
    memcpy(dst, src, len + 1);
    return true;
}

/* Refuses a key that does not fit the configured algorithm, so a P-384 or 1024-bit RSA key fails at startup
 * rather than on every request. */
static bool key_fits_alg(EVP_PKEY *key, fm_jwt_alg_t alg)
{
    if (alg == FM_JWT_ALG_RS256)
        return EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) >= 2048;
    if (alg == FM_JWT_ALG_ES256) {
        char group[64];
        size_t group_len = 0;
        if (!EVP_PKEY_is_a(key, "EC") || EVP_PKEY_get_group_name(key, group, sizeof group, &group_len) != 1)
            return false;
        int nid = OBJ_sn2nid(group);
        if (nid == NID_undef)
            nid = EC_curve_nist2nid(group);
        return nid == NID_X9_62_prime256v1;
    }
    return false;
}

static EVP_PKEY *load_public_pem(const char *pem, size_t pem_len)
{
    if (pem == NULL || pem_len == 0 || pem_len > PEM_MAX)
        return NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)pem_len);
    if (bio == NULL)
        return NULL;
    EVP_PKEY *key = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    return key;
}

fm_jwt_verifier_t *fm_jwt_verifier_new(const fm_jwt_verifier_config_t *config)
{
    if (config == NULL || config->hs256_secret == NULL || config->hs256_secret_len < FM_JWT_MIN_SECRET_LEN ||
        config->hs256_secret_len > SECRET_MAX)
        return NULL;
    fm_jwt_verifier_t *verifier = calloc(1, sizeof *verifier);
    if (verifier == NULL)
        return NULL;
    verifier->secret = malloc(config->hs256_secret_len);
    if (verifier->secret == NULL || !copy_config_string(verifier->issuer, config->issuer))
        goto fail;
    memcpy(verifier->secret, config->hs256_secret, config->hs256_secret_len);
    verifier->secret_len = config->hs256_secret_len;

    if (config->external_issuer != NULL) {
        verifier->has_external = true;
        verifier->external_alg = config->external_alg;
        if (!copy_config_string(verifier->external_issuer, config->external_issuer) ||
            strcmp(verifier->external_issuer, verifier->issuer) == 0)
            goto fail;
        if (config->external_alg != FM_JWT_ALG_RS256 && config->external_alg != FM_JWT_ALG_ES256)
            goto fail;
        verifier->external_key = load_public_pem(config->external_public_pem, config->external_public_pem_len);
        if (verifier->external_key == NULL || !key_fits_alg(verifier->external_key, config->external_alg))
            goto fail;
        if (config->external_audience != NULL) {
            verifier->has_audience = true;
            if (!copy_config_string(verifier->external_audience, config->external_audience))
                goto fail;
        }
    }
    return verifier;
fail:
    ERR_clear_error();
    fm_jwt_verifier_free(verifier);
    return NULL;
}

void fm_jwt_verifier_free(fm_jwt_verifier_t *verifier)
{
    if (verifier == NULL)
        return;
    if (verifier->secret != NULL) {
        OPENSSL_cleanse(verifier->secret, verifier->secret_len);
        free(verifier->secret);
    }
    EVP_PKEY_free(verifier->external_key);
    OPENSSL_cleanse(verifier, sizeof *verifier);
    free(verifier);
}

/* ---- parsing ------------------------------------------------------------------------------------------- */

static fm_jwt_error_t split_token(const char *token, size_t len, part_t parts[3])
{
    size_t start = 0, count = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && token[i] != '.')
            continue;
        if (count == 3)
            return FM_JWT_ERR_MALFORMED; /* a fourth part: JWE has five, nested tricks have more */
        parts[count].base = token + start;
        parts[count].len = i - start;
        count++;
        start = i + 1;
    }
    /* The signature may be empty here so that an `alg: none` token is reported as bad_alg, not malformed. */
    if (count != 3 || parts[0].len == 0 || parts[1].len == 0)
        return FM_JWT_ERR_MALFORMED;
    return FM_JWT_OK;
}

/* Decodes one base64url part into `buf` and parses it as a JSON object. */
static fm_jwt_error_t parse_json_part(part_t part, uint8_t *buf, cJSON **out)
{
    size_t len = 0;
    *out = NULL;
    if (fm_b64url_decode(part.base, part.len, buf, PART_BUF_SIZE - 1, &len) != 0)
        return FM_JWT_ERR_MALFORMED;
    /* cJSON strings are C strings: a NUL, raw or escaped, would silently cut a claim short ("1\u0000x" would
     * read as "1"). A legitimate token never contains one. */
    if (memchr(buf, '\0', len) != NULL)
        return FM_JWT_ERR_MALFORMED;
    buf[len] = '\0';
    if (strstr((const char *)buf, "\\u0000") != NULL)
        return FM_JWT_ERR_MALFORMED;
    /* Length + 1 with require_null_terminated: trailing bytes after the object are refused. */
    cJSON *json = cJSON_ParseWithLengthOpts((const char *)buf, len + 1, NULL, 1);
    if (json == NULL)
        return FM_JWT_ERR_MALFORMED;
    if (!cJSON_IsObject(json)) {
        cJSON_Delete(json);
        return FM_JWT_ERR_MALFORMED;
    }
    *out = json;
    return FM_JWT_OK;
}

/* cJSON returns the first of duplicate members while other parsers (PyJWT among them) return the last; a
 * token read differently by two parsers is refused outright. Only names we read matter. */
static bool has_duplicate(const cJSON *object, const char *const *names)
{
    for (const char *const *name = names; *name != NULL; name++) {
        int seen = 0;
        for (const cJSON *item = object->child; item != NULL; item = item->next)
            if (item->string != NULL && strcmp(item->string, *name) == 0 && ++seen > 1)
                return true;
    }
    return false;
}

static const char *const header_names[] = {"alg", "crit", "typ", "kid", NULL};
static const char *const payload_names[] = {"iss", "sub", "sid", "role", "exp", "nbf", "iat", "jti", "aud", NULL};

/* ---- signatures ------------------------------------------------------------------------------------------ */

static fm_jwt_error_t verify_hs256(const fm_jwt_verifier_t *verifier, part_t signing_input, const uint8_t *sig,
                                   size_t sig_len)
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (HMAC(EVP_sha256(), verifier->secret, (int)verifier->secret_len, (const uint8_t *)signing_input.base,
             signing_input.len, mac, &mac_len) == NULL ||
        mac_len != HS256_LEN)
        return FM_JWT_ERR_INTERNAL;
    if (sig_len != HS256_LEN)
        return FM_JWT_ERR_BAD_SIGNATURE;
    /* Constant time: a byte-by-byte early exit would let a client find a valid MAC one byte at a time. */
    fm_jwt_error_t result = CRYPTO_memcmp(mac, sig, HS256_LEN) == 0 ? FM_JWT_OK : FM_JWT_ERR_BAD_SIGNATURE;
    OPENSSL_cleanse(mac, sizeof mac);
    return result;
}

/* JWS ES256 signatures are R || S, 32 bytes each (RFC 7518 §3.4); OpenSSL wants a DER ECDSA-Sig-Value. */
static int es256_raw_to_der(const uint8_t *sig, uint8_t *der, size_t der_size, size_t *der_len)
{
    int rc = -1;
    ECDSA_SIG *ecdsa = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, ES256_SIG_LEN / 2, NULL);
    BIGNUM *s = BN_bin2bn(sig + ES256_SIG_LEN / 2, ES256_SIG_LEN / 2, NULL);
    if (ecdsa == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(ecdsa, r, s) != 1)
        goto done;
    r = s = NULL; /* owned by ecdsa now */
    int len = i2d_ECDSA_SIG(ecdsa, NULL);
    if (len <= 0 || (size_t)len > der_size)
        goto done;
    uint8_t *cursor = der;
    if (i2d_ECDSA_SIG(ecdsa, &cursor) != len)
        goto done;
    *der_len = (size_t)len;
    rc = 0;
done:
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(ecdsa);
    return rc;
}

static fm_jwt_error_t verify_external(const fm_jwt_verifier_t *verifier, part_t signing_input, const uint8_t *sig,
                                      size_t sig_len)
{
    uint8_t der[80];
    if (verifier->external_alg == FM_JWT_ALG_ES256) {
        if (sig_len != ES256_SIG_LEN)
            return FM_JWT_ERR_BAD_SIGNATURE;
        if (es256_raw_to_der(sig, der, sizeof der, &sig_len) != 0)
            return FM_JWT_ERR_INTERNAL;
        sig = der;
    } else if (sig_len != (size_t)EVP_PKEY_get_size(verifier->external_key)) {
        return FM_JWT_ERR_BAD_SIGNATURE;
    }

    fm_jwt_error_t result = FM_JWT_ERR_INTERNAL;
    EVP_PKEY_CTX *key_ctx = NULL; /* owned by md_ctx */
    EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
    /* The shared EVP_PKEY is only read here; each call has its own contexts, so threads may verify at once. */
    if (md_ctx == NULL || EVP_DigestVerifyInit(md_ctx, &key_ctx, EVP_sha256(), NULL, verifier->external_key) != 1)
        goto done;
    if (verifier->external_alg == FM_JWT_ALG_RS256 && EVP_PKEY_CTX_set_rsa_padding(key_ctx, RSA_PKCS1_PADDING) != 1)
        goto done;
    int verified = EVP_DigestVerify(md_ctx, sig, sig_len, (const uint8_t *)signing_input.base, signing_input.len);
    result = verified == 1 ? FM_JWT_OK : FM_JWT_ERR_BAD_SIGNATURE;
done:
    EVP_MD_CTX_free(md_ctx);
    /* A failed verify leaves entries on this thread's error queue; drop them so they do not surface elsewhere. */
    ERR_clear_error();
    return result;
}

/* ---- claims ---------------------------------------------------------------------------------------------- */

/* Copies a string claim; over-long is refused, never truncated. */
static fm_jwt_error_t read_string(const cJSON *payload, const char *name, bool required, char out[FM_JWT_CLAIM_MAX + 1])
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(payload, name);
    if (item == NULL)
        return required ? FM_JWT_ERR_MISSING_CLAIM : FM_JWT_OK;
    if (!cJSON_IsString(item) || item->valuestring == NULL)
        return FM_JWT_ERR_BAD_CLAIM;
    size_t len = strlen(item->valuestring);
    if ((required && len == 0) || len > FM_JWT_CLAIM_MAX)
        return FM_JWT_ERR_BAD_CLAIM;
    memcpy(out, item->valuestring, len + 1);
    return FM_JWT_OK;
}

/* NumericDate (RFC 7519 §2): seconds, possibly fractional. Fractions round towards refusing: exp down,
 * nbf and iat up. */
static fm_jwt_error_t read_time(const cJSON *payload, const char *name, bool required, bool round_up, int64_t *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(payload, name);
    *out = 0;
    if (item == NULL)
        return required ? FM_JWT_ERR_MISSING_CLAIM : FM_JWT_OK;
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble) || item->valuedouble < 0 ||
        item->valuedouble > NUMERIC_DATE_MAX)
        return FM_JWT_ERR_BAD_CLAIM;
    *out = (int64_t)(round_up ? ceil(item->valuedouble) : floor(item->valuedouble));
    return FM_JWT_OK;
}

/* The time checks on claims already read: also what a remembered token is held to at every use (fm_jwt_memo_t). */
static fm_jwt_error_t time_error(const fm_jwt_claims_t *claims, int64_t now)
{
    /* RFC 7519 §4.1.4: valid strictly before exp; the leeway absorbs clock skew between hosts. */
    if (now >= claims->exp + FM_JWT_LEEWAY_SECONDS)
        return FM_JWT_ERR_EXPIRED;
    if (claims->nbf != 0 && now + FM_JWT_LEEWAY_SECONDS < claims->nbf)
        return FM_JWT_ERR_NOT_YET_VALID;
    /* A token issued in the future comes from a broken clock or a forged date: refuse it like nbf. */
    if (claims->iat != 0 && now + FM_JWT_LEEWAY_SECONDS < claims->iat)
        return FM_JWT_ERR_NOT_YET_VALID;
    return FM_JWT_OK;
}

static fm_jwt_error_t check_times(const cJSON *payload, int64_t now, fm_jwt_claims_t *claims)
{
    fm_jwt_error_t err;
    if ((err = read_time(payload, "exp", true, false, &claims->exp)) != FM_JWT_OK ||
        (err = read_time(payload, "nbf", false, true, &claims->nbf)) != FM_JWT_OK ||
        (err = read_time(payload, "iat", false, true, &claims->iat)) != FM_JWT_OK)
        return err;
    return time_error(claims, now);
}

static fm_jwt_error_t read_role(const cJSON *payload, fm_jwt_role_t *role)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(payload, "role");
    if (item == NULL)
        return FM_JWT_ERR_MISSING_CLAIM;
    if (!cJSON_IsString(item) || item->valuestring == NULL)
        return FM_JWT_ERR_BAD_CLAIM;
    for (int r = FM_JWT_ROLE_ADMIN; r <= FM_JWT_ROLE_VIEWER; r++) {
        if (strcmp(item->valuestring, role_names[r]) == 0) {
            *role = (fm_jwt_role_t)r;
            return FM_JWT_OK;
        }
    }
    return FM_JWT_ERR_BAD_CLAIM;
}

/* RFC 7519 §4.1.3: `aud` is a string or an array of strings; ours must be among them. */
static fm_jwt_error_t check_audience(const fm_jwt_verifier_t *verifier, const cJSON *payload)
{
    const cJSON *aud = cJSON_GetObjectItemCaseSensitive(payload, "aud");
    if (aud == NULL)
        return FM_JWT_ERR_MISSING_CLAIM;
    if (cJSON_IsString(aud))
        return strcmp(aud->valuestring, verifier->external_audience) == 0 ? FM_JWT_OK : FM_JWT_ERR_BAD_AUDIENCE;
    if (!cJSON_IsArray(aud))
        return FM_JWT_ERR_BAD_CLAIM;
    fm_jwt_error_t result = FM_JWT_ERR_BAD_AUDIENCE;
    for (const cJSON *item = aud->child; item != NULL; item = item->next) {
        if (!cJSON_IsString(item))
            return FM_JWT_ERR_BAD_CLAIM;
        if (strcmp(item->valuestring, verifier->external_audience) == 0)
            result = FM_JWT_OK;
    }
    return result;
}

static fm_jwt_error_t check_claims(const fm_jwt_verifier_t *verifier, const cJSON *payload, int64_t now,
                                   fm_jwt_claims_t *claims)
{
    fm_jwt_error_t err;
    if ((err = check_times(payload, now, claims)) != FM_JWT_OK)
        return err;
    bool local = claims->source == FM_JWT_SOURCE_LOCAL;
    if ((err = read_string(payload, "sub", true, claims->sub)) != FM_JWT_OK ||
        (err = read_string(payload, "sid", local, claims->sid)) != FM_JWT_OK ||
        (err = read_string(payload, "jti", false, claims->jti)) != FM_JWT_OK)
        return err;
    if (local)
        return read_role(payload, &claims->role);
    /* A provider's own role claims mean nothing here: the caller maps `sub` to a local user and its role. */
    if (verifier->has_audience)
        return check_audience(verifier, payload);
    return FM_JWT_OK;
}

/* ---- verify ---------------------------------------------------------------------------------------------- */

static fm_jwt_error_t verify_token(const fm_jwt_verifier_t *verifier, const char *token, size_t len, int64_t now,
                                   fm_jwt_claims_t *claims, cJSON **header, cJSON **payload)
{
    if (len > FM_JWT_MAX_TOKEN_LEN)
        return FM_JWT_ERR_TOO_LARGE;
    part_t parts[3];
    fm_jwt_error_t err = split_token(token, len, parts);
    if (err != FM_JWT_OK)
        return err;

    uint8_t buf[PART_BUF_SIZE];
    if ((err = parse_json_part(parts[0], buf, header)) != FM_JWT_OK ||
        (err = parse_json_part(parts[1], buf, payload)) != FM_JWT_OK)
        return err;
    if (has_duplicate(*header, header_names) || has_duplicate(*payload, payload_names))
        return FM_JWT_ERR_MALFORMED;
    /* RFC 7515 §4.1.11: extensions listed in `crit` must be understood; we understand none. */
    if (cJSON_GetObjectItemCaseSensitive(*header, "crit") != NULL)
        return FM_JWT_ERR_MALFORMED;
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(*header, "alg");
    if (!cJSON_IsString(alg) || alg->valuestring == NULL || strcasecmp(alg->valuestring, "none") == 0)
        return FM_JWT_ERR_BAD_ALG;

    /* The key is chosen by `iss`, the algorithm by that key's configuration: the token's `alg` only has to agree
     * (RFC 8725 §3.1). This is what stops an HS256 token keyed with the provider's public PEM. */
    if ((err = read_string(*payload, "iss", true, claims->iss)) != FM_JWT_OK)
        return err;
    fm_jwt_alg_t pinned;
    if (strcmp(claims->iss, verifier->issuer) == 0) {
        claims->source = FM_JWT_SOURCE_LOCAL;
        pinned = FM_JWT_ALG_HS256;
    } else if (verifier->has_external && strcmp(claims->iss, verifier->external_issuer) == 0) {
        claims->source = FM_JWT_SOURCE_EXTERNAL;
        pinned = verifier->external_alg;
    } else {
        return FM_JWT_ERR_BAD_ISSUER;
    }
    if (strcmp(alg->valuestring, alg_name(pinned)) != 0)
        return FM_JWT_ERR_BAD_ALG;

    uint8_t sig[RSA_SIG_MAX];
    size_t sig_len = 0;
    if (parts[2].len == 0 || fm_b64url_decode(parts[2].base, parts[2].len, sig, sizeof sig, &sig_len) != 0)
        return FM_JWT_ERR_BAD_SIGNATURE;
    part_t signing_input = {token, parts[0].len + 1 + parts[1].len};
    err = pinned == FM_JWT_ALG_HS256 ? verify_hs256(verifier, signing_input, sig, sig_len)
                                     : verify_external(verifier, signing_input, sig, sig_len);
    if (err != FM_JWT_OK)
        return err;
    return check_claims(verifier, *payload, now, claims);
}

int fm_jwt_verify(const fm_jwt_verifier_t *verifier, const char *token, size_t len, int64_t now, fm_jwt_claims_t *out)
{
    if (out == NULL)
        return -1;
    memset(out, 0, sizeof *out);
    if (verifier == NULL || token == NULL) {
        out->error = FM_JWT_ERR_MALFORMED;
        return -1;
    }
    cJSON *header = NULL, *payload = NULL;
    fm_jwt_error_t err = verify_token(verifier, token, len, now, out, &header, &payload);
    cJSON_Delete(header);
    cJSON_Delete(payload);
    if (err != FM_JWT_OK) {
        memset(out, 0, sizeof *out);
        out->error = err;
        return -1;
    }
    out->error = FM_JWT_OK;
    return 0;
}

/* ---- memo of verified tokens ---------------------------------------------------------------------------- */

/* A client sends the same access token with every request until it expires (15 min by default), and verifying it
 * (two base64 + JSON parses and an HMAC, or an RSA/EC verify) was a fifth of a cached GET's CPU. A thread keeps the
 * claims of tokens it verified, keyed by the token's exact bytes: the same bytes always verify the same way with one
 * verifier, except for the times, which are checked again at every use. Longer tokens are verified every time. */
#define MEMO_SLOTS 64
#define MEMO_TOKEN_MAX 1024

typedef struct {
    size_t len;
    char token[MEMO_TOKEN_MAX];
    fm_jwt_claims_t claims;
} memo_entry_t;

struct fm_jwt_memo {
    const fm_jwt_verifier_t *verifier; /* whose results the entries are */
    uint64_t seed;                     /* keeps slot choice unpredictable to a client */
    memo_entry_t *slots[MEMO_SLOTS];   /* made on first use */
    uint64_t hits, misses;
};

fm_jwt_memo_t *fm_jwt_memo_new(void)
{
    fm_jwt_memo_t *memo = calloc(1, sizeof *memo);
    if (memo != NULL && RAND_bytes((unsigned char *)&memo->seed, sizeof memo->seed) != 1) {
        free(memo);
        return NULL;
    }
    return memo;
}

static void memo_clear(fm_jwt_memo_t *memo)
{
    for (size_t i = 0; i < MEMO_SLOTS; i++) {
        if (memo->slots[i] != NULL) {
            OPENSSL_cleanse(memo->slots[i], sizeof *memo->slots[i]); /* tokens are credentials */
            free(memo->slots[i]);
            memo->slots[i] = NULL;
        }
    }
}

void fm_jwt_memo_free(fm_jwt_memo_t *memo)
{
    if (memo == NULL)
        return;
    memo_clear(memo);
    free(memo);
}

void fm_jwt_memo_stats(const fm_jwt_memo_t *memo, uint64_t *hits, uint64_t *misses)
{
    *hits = memo != NULL ? memo->hits : 0;
    *misses = memo != NULL ? memo->misses : 0;
}

int fm_jwt_verify_memo(const fm_jwt_verifier_t *verifier, fm_jwt_memo_t *memo, const char *token, size_t len,
                       int64_t now, fm_jwt_claims_t *out)
{
    if (memo == NULL || verifier == NULL || token == NULL || out == NULL || len == 0 || len > MEMO_TOKEN_MAX) {
        if (memo != NULL)
            memo->misses++;
        return fm_jwt_verify(verifier, token, len, now, out);
    }
    if (memo->verifier != verifier) {
        memo_clear(memo);
        memo->verifier = verifier;
    }
    /* The seeded hash picks a slot, never decides a match: the bytes are compared. */
    size_t slot = (size_t)(fm_fnv1a(token, len, memo->seed) % MEMO_SLOTS);
    memo_entry_t *e = memo->slots[slot];
    /* CRYPTO_memcmp: how long a prefix of a remembered token matches must not show in the time taken. */
    if (e != NULL && e->len == len && CRYPTO_memcmp(e->token, token, len) == 0) {
        memo->hits++;
        fm_jwt_error_t err = time_error(&e->claims, now);
        if (err != FM_JWT_OK) {
            memset(out, 0, sizeof *out);
            out->error = err;
            return -1;
        }
        *out = e->claims;
        return 0;
    }
    memo->misses++;
    if (fm_jwt_verify(verifier, token, len, now, out) != 0)
        return -1;
    if (e == NULL && (e = memo->slots[slot] = malloc(sizeof *e)) == NULL)
        return 0; /* verified; only not remembered */
    e->len = len;
    memcpy(e->token, token, len);
    e->claims = *out;
    return 0;
}
