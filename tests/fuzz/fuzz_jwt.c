/*
 * Fuzz target for fm_jwt_verify (common/jwt.c): every request's bearer token goes through it.
 *
 * Two verifiers share our HS256 secret and issuer; one trusts an external ES256 provider (with an audience), the
 * other an RS256 one (without). Their keys are fixed test keys below, so runs are reproducible.
 *
 * Input: byte 0 picks the mode (its value % 4, so the seeds start with '0'..'3'):
 *   0  raw: the rest is the token, verified by both verifiers (byte 0 '4': also padded past FM_JWT_MAX_TOKEN_LEN,
 *      which must be too_large);
 *   1  ours: the rest is "header JSON\npayload JSON" (no newline: the payload, under {"alg":"HS256"}), encoded
 *      and signed HS256 with our secret, so the claim checks behind the signature are reached;
 *   2  external: the same, signed ES256 with the provider's test private key;
 *   3  confused: the same, signed HS256 keyed with the provider's public PEM (RFC 8725 §2.1): must never verify.
 * Tokens are passed in buffers of their exact length without a NUL, so a read past `len` is an ASan report.
 *
 * Invariants: rc is 0 exactly when out->error is FM_JWT_OK; on failure every other field is zero and the error is
 * one a client can cause (never FM_JWT_ERR_INTERNAL); on success the string claims are NUL-terminated inside
 * their arrays, sub is non-empty, the source agrees with iss and with the key that signed, local tokens carry a
 * role and a sid, external ones no role, the times hold at NOW, and the same token with one signature bit
 * flipped is refused.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "b64.h"
#include "jwt.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_jwt: invariant failed at line %d: %s\n", __LINE__, #cond);                           \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

#define NOW INT64_C(1700000000) /* 2023-11-14T22:13:20Z; the seeds' exp values are after it */
#define OUR_ISS "https://files.example/auth"
#define EXT_ISS "https://idp.example"
#define AUDIENCE "files-manager-api"
#define SIG_MAX 64

static const char secret[] = "fuzz-secret-0123456789abcdef-0123456789"; /* 39 bytes */

/* Test keys, made for this fuzzer with `openssl ecparam -name prime256v1 -genkey` and `openssl genpkey -algorithm
 * RSA`; they protect nothing. */
static const char ec_private_pem[] = "-----BEGIN PRIVATE KEY-----\n"
                                     "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQglIPbq5F4nTncx3ZV\n"
                                     "qDoG7LIOEqVXiRI44HGF3bKgc82hRANCAARu3YLZPhZPPoBOjWdBYLzcb016FzWu\n"
                                     "szH5JGAvreF8ePWdks8SYdTwJswy7uPiWrsgo35BO7570Eyr4cxrdOAH\n"
                                     "-----END PRIVATE KEY-----\n";
static const char ec_public_pem[] = "-----BEGIN PUBLIC KEY-----\n"
                                    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEbt2C2T4WTz6ATo1nQWC83G9Nehc1\n"
                                    "rrMx+SRgL63hfHj1nZLPEmHU8CbMMu7j4lq7IKN+QTu+e9BMq+HMa3TgBw==\n"
                                    "-----END PUBLIC KEY-----\n";
static const char rsa_public_pem[] = "-----BEGIN PUBLIC KEY-----\n"
                                     "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtR36yKgRbkMJfJ8HBH1+\n"
                                     "emmb1Fq8BP9YaRcixQ4G+W09zS5jAA1DDVRyEpiINjY8ssOo/FdgIDTa2A/hhjuW\n"
                                     "aOrL9sB5uuensjgdj+B3tRfrxtPctFJVyqJ4wfwmiZ+zX+DYp92dBPhCPiJnWhRS\n"
                                     "eIwbWk64FiTUyh2a1zXM7yAgpBQpeMgODiGxFHYWrF/ylcwkpEcDuGkhHyHKKxDp\n"
                                     "rxMdy+0Z0Qljf/Enbh3un0oZF5nKq4bhJp5qqX1qsWxqfdQMhM06uMlK0Ctoohil\n"
                                     "PXwqC4ZnC3oL5bAuf1YfEIqHJUHiYiQqpmGpwU6wevC73hJalaMWTQILaS8R9jUC\n"
                                     "xwIDAQAB\n"
                                     "-----END PUBLIC KEY-----\n";

enum { MODE_RAW, MODE_OURS, MODE_EXTERNAL, MODE_CONFUSED };

static fm_jwt_verifier_t *verifier_es, *verifier_rs;
static EVP_PKEY *ec_private;

static fm_jwt_verifier_t *make_verifier(fm_jwt_alg_t alg, const char *pem, const char *audience)
{
    fm_jwt_verifier_config_t config = {
        .hs256_secret = (const uint8_t *)secret,
        .hs256_secret_len = sizeof secret - 1,
        .issuer = OUR_ISS,
        .external_issuer = EXT_ISS,
        .external_alg = alg,
        .external_public_pem = pem,
        .external_public_pem_len = strlen(pem),
        .external_audience = audience,
    };
    return fm_jwt_verifier_new(&config);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    verifier_es = make_verifier(FM_JWT_ALG_ES256, ec_public_pem, AUDIENCE);
    verifier_rs = make_verifier(FM_JWT_ALG_RS256, rsa_public_pem, NULL);
    BIO *bio = BIO_new_mem_buf(ec_private_pem, -1);
    ec_private = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (verifier_es == NULL || verifier_rs == NULL || ec_private == NULL) {
        fprintf(stderr, "fuzz_jwt: cannot set up the verifiers or the test key\n");
        abort();
    }
    return 0;
}

/* JWS ES256 signature: R || S, 32 bytes each (RFC 7518 §3.4), from OpenSSL's DER. */
static size_t sign_es256(const char *input, size_t len, uint8_t sig[SIG_MAX])
{
    uint8_t der[128];
    size_t der_len = sizeof der;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    CHECK(ctx != NULL && EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, ec_private) == 1);
    CHECK(EVP_DigestSign(ctx, der, &der_len, (const uint8_t *)input, len) == 1);
    EVP_MD_CTX_free(ctx);
    const uint8_t *cursor = der;
    ECDSA_SIG *ecdsa = d2i_ECDSA_SIG(NULL, &cursor, (long)der_len);
    CHECK(ecdsa != NULL);
    CHECK(BN_bn2binpad(ECDSA_SIG_get0_r(ecdsa), sig, 32) == 32);
    CHECK(BN_bn2binpad(ECDSA_SIG_get0_s(ecdsa), sig + 32, 32) == 32);
    ECDSA_SIG_free(ecdsa);
    return 64;
}

static size_t sign_hmac(const void *key, size_t key_len, const char *input, size_t len, uint8_t sig[SIG_MAX])
{
    unsigned int mac_len = 0;
    CHECK(HMAC(EVP_sha256(), key, (int)key_len, (const uint8_t *)input, len, sig, &mac_len) != NULL);
    CHECK(mac_len == 32);
    return 32;
}

/* A token being built: "b64(header).b64(payload)" then ".b64(signature)". */
typedef struct {
    char *text;
    size_t signing_len; /* length of header.payload */
    size_t len;         /* whole token, no NUL counted */
} token_t;

static void token_begin(token_t *t, const uint8_t *header, size_t header_len, const uint8_t *payload,
                        size_t payload_len)
{
    size_t header_b64 = fm_b64url_encoded_len(header_len), payload_b64 = fm_b64url_encoded_len(payload_len);
    t->signing_len = header_b64 + 1 + payload_b64;
    /* Room for the signature part and the encoder's NUL; t->len excludes that NUL. */
    t->text = malloc(t->signing_len + 1 + fm_b64url_encoded_len(SIG_MAX) + 1);
    CHECK(fm_b64url_encode(header, header_len, t->text, header_b64 + 1) == 0);
    t->text[header_b64] = '.';
    CHECK(fm_b64url_encode(payload, payload_len, t->text + header_b64 + 1, payload_b64 + 1) == 0);
}

/* Appends the signature and returns an exact-size copy (no NUL), which the caller frees. */
static char *token_finish(token_t *t, const uint8_t *sig, size_t sig_len)
{
    t->text[t->signing_len] = '.';
    size_t sig_b64 = fm_b64url_encoded_len(sig_len);
    CHECK(fm_b64url_encode(sig, sig_len, t->text + t->signing_len + 1, sig_b64 + 1) == 0);
    t->len = t->signing_len + 1 + sig_b64;
    char *exact = malloc(t->len);
    memcpy(exact, t->text, t->len);
    return exact;
}

static int string_ok(const char *s, size_t size)
{
    return memchr(s, '\0', size) != NULL;
}

/* Verifies and checks the invariants; returns the error. `signer_source` is who signed (0: unknown). */
static fm_jwt_error_t verify(const fm_jwt_verifier_t *verifier, const char *token, size_t len, int signer_source)
{
    fm_jwt_claims_t claims;
    memset(&claims, 0x5a, sizeof claims);
    int rc = fm_jwt_verify(verifier, token, len, NOW, &claims);
    CHECK(rc == 0 || rc == -1);
    CHECK((rc == 0) == (claims.error == FM_JWT_OK));
    CHECK(strcmp(fm_jwt_error_code(claims.error), "unknown") != 0);
    if (rc != 0) {
        /* Nothing but the reason survives a refusal, and a client never causes an internal error. */
        fm_jwt_claims_t zero;
        memset(&zero, 0, sizeof zero);
        zero.error = claims.error;
        CHECK(memcmp(&claims, &zero, sizeof claims) == 0);
        CHECK(claims.error != FM_JWT_ERR_INTERNAL);
        CHECK(len <= FM_JWT_MAX_TOKEN_LEN || claims.error == FM_JWT_ERR_TOO_LARGE);
        return claims.error;
    }

    CHECK(len <= FM_JWT_MAX_TOKEN_LEN);
    CHECK(string_ok(claims.iss, sizeof claims.iss) && string_ok(claims.sub, sizeof claims.sub));
    CHECK(string_ok(claims.sid, sizeof claims.sid) && string_ok(claims.jti, sizeof claims.jti));
    CHECK(claims.sub[0] != '\0');
    CHECK(signer_source == 0 || (int)claims.source == signer_source);
    if (claims.source == FM_JWT_SOURCE_LOCAL) {
        CHECK(strcmp(claims.iss, OUR_ISS) == 0);
        CHECK(fm_jwt_role_name(claims.role) != NULL);
        CHECK(claims.sid[0] != '\0');
    } else {
        CHECK(claims.source == FM_JWT_SOURCE_EXTERNAL);
        CHECK(strcmp(claims.iss, EXT_ISS) == 0);
        CHECK(claims.role == FM_JWT_ROLE_NONE);
    }
    CHECK(NOW < claims.exp + FM_JWT_LEEWAY_SECONDS);
    CHECK(claims.nbf >= 0 && claims.nbf <= NOW + FM_JWT_LEEWAY_SECONDS);
    CHECK(claims.iat >= 0 && claims.iat <= NOW + FM_JWT_LEEWAY_SECONDS);
    return FM_JWT_OK;
}

/* Splits "header\npayload"; without a newline the whole input is the payload under `default_header`. */
static void split_input(const uint8_t *data, size_t size, const char *default_header, const uint8_t **header,
                        size_t *header_len, const uint8_t **payload, size_t *payload_len)
{
    const uint8_t *newline = memchr(data, '\n', size);
    if (newline == NULL) {
        *header = (const uint8_t *)default_header;
        *header_len = strlen(default_header);
        *payload = data;
        *payload_len = size;
    } else {
        *header = data;
        *header_len = (size_t)(newline - data);
        *payload = newline + 1;
        *payload_len = size - *header_len - 1;
    }
}

static void run_structured(int mode, const uint8_t *data, size_t size)
{
    static const char *const default_headers[] = {NULL, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
                                                  "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"k1\"}",
                                                  "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"};
    const uint8_t *header, *payload;
    size_t header_len, payload_len;
    split_input(data, size, default_headers[mode], &header, &header_len, &payload, &payload_len);

    token_t t;
    token_begin(&t, header, header_len, payload, payload_len);
    uint8_t sig[SIG_MAX];
    size_t sig_len;
    if (mode == MODE_OURS)
        sig_len = sign_hmac(secret, sizeof secret - 1, t.text, t.signing_len, sig);
    else if (mode == MODE_EXTERNAL)
        sig_len = sign_es256(t.text, t.signing_len, sig);
    else
        sig_len = sign_hmac(ec_public_pem, strlen(ec_public_pem), t.text, t.signing_len, sig);

    char *token = token_finish(&t, sig, sig_len);
    int source = mode == MODE_OURS ? FM_JWT_SOURCE_LOCAL : FM_JWT_SOURCE_EXTERNAL;
    fm_jwt_error_t err = verify(verifier_es, token, t.len, source);
    if (mode == MODE_CONFUSED) {
        CHECK(err != FM_JWT_OK);
        /* The same trick against the RS256 verifier, keyed with its PEM. */
        free(token);
        sig_len = sign_hmac(rsa_public_pem, strlen(rsa_public_pem), t.text, t.signing_len, sig);
        token = token_finish(&t, sig, sig_len);
        CHECK(verify(verifier_rs, token, t.len, 0) != FM_JWT_OK);
    } else if (err == FM_JWT_OK) {
        /* A verified token must stop verifying when any one signature bit changes. */
        size_t bit = (size + (size > 0 ? data[size - 1] : 0)) % (sig_len * 8);
        sig[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        free(token);
        token = token_finish(&t, sig, sig_len);
        CHECK(verify(verifier_es, token, t.len, source) == FM_JWT_ERR_BAD_SIGNATURE);
    }
    free(token);
    free(t.text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    int mode = flags % 4;
    data++;
    size--;
    if (mode == MODE_RAW && (flags & 4)) {
        /* Any token, valid or not, is refused as too large once it has more than FM_JWT_MAX_TOKEN_LEN bytes. */
        size_t long_len = FM_JWT_MAX_TOKEN_LEN + 1 + size;
        char *long_token = malloc(long_len);
        memcpy(long_token, data, size);
        memset(long_token + size, 'A', long_len - size);
        CHECK(verify(verifier_es, long_token, long_len, 0) == FM_JWT_ERR_TOO_LARGE);
        free(long_token);
    }
    if (mode == MODE_RAW) {
        verify(verifier_es, (const char *)data, size, 0);
        verify(verifier_rs, (const char *)data, size, 0);
    } else {
        run_structured(mode, data, size);
    }
    ERR_clear_error();
    return 0;
}
