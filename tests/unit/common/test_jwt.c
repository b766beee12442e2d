/*
 * Tests for common/jwt.c and common/b64.c: issuing, verification and refusals. The per-thread memo of verified
 * tokens and the costs are in test_jwt_memo.c.
 *
 * Hand-made tokens cover every refusal reason; PyJWT (an independent implementation, via jwt_vectors.py run
 * with Debian's /usr/bin/python3) signs RS256/ES256/HS256 tokens we must accept or refuse, and decodes a token
 * we issued. If PyJWT is missing the PyJWT tests fail; they never skip.
 */
#include "jwt_test_keys.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdbool.h>

#define HEADER_HS256 "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
/* Our claims without times; `extra` (a format fragment) appends members. */
#define OUR_CLAIMS(extra) "{\"iss\":\"" OUR_ISS "\",\"sub\":\"42\",\"sid\":\"s1\",\"role\":\"member\"" extra "}"

/* ---- helpers ------------------------------------------------------------------------------------------- */

/* Builds header.payload.HMAC-SHA256(key) from JSON texts, with our own encoder but OpenSSL's HMAC. */
static void sign_hs256_key(char *out, size_t size, const char *header, const char *payload, const void *key,
                           size_t key_len)
{
    size_t header_b64 = fm_b64url_encoded_len(strlen(header));
    size_t payload_b64 = fm_b64url_encoded_len(strlen(payload));
    assert_true(header_b64 + payload_b64 + 2 + 43 + 1 <= size);
    assert_int_equal(fm_b64url_encode(header, strlen(header), out, size), 0);
    out[header_b64] = '.';
    assert_int_equal(fm_b64url_encode(payload, strlen(payload), out + header_b64 + 1, size - header_b64 - 1), 0);
    size_t signing_len = header_b64 + 1 + payload_b64;
    uint8_t mac[32];
    unsigned int mac_len = 0;
    assert_non_null(HMAC(EVP_sha256(), key, (int)key_len, (const uint8_t *)out, signing_len, mac, &mac_len));
    out[signing_len] = '.';
    assert_int_equal(fm_b64url_encode(mac, sizeof mac, out + signing_len + 1, size - signing_len - 1), 0);
}

static void sign_hs256(char *out, size_t size, const char *header, const char *payload)
{
    sign_hs256_key(out, size, header, payload, secret, SECRET_LEN);
}

/* Verifies and checks the reason; a refused token must leave no claims behind. */
static void expect_result(const fm_jwt_verifier_t *verifier, const char *token, size_t len, int64_t now,
                          fm_jwt_error_t expected, const char *what)
{
    fm_jwt_claims_t claims;
    memset(&claims, 0x5a, sizeof claims);
    int rc = fm_jwt_verify(verifier, token, len, now, &claims);
    if (claims.error != expected)
        fail_msg("%s: got %s, want %s", what, fm_jwt_error_code(claims.error), fm_jwt_error_code(expected));
    assert_int_equal(rc, expected == FM_JWT_OK ? 0 : -1);
    if (expected != FM_JWT_OK) {
        assert_string_equal(claims.sub, "");
        assert_string_equal(claims.iss, "");
        assert_int_equal(claims.exp, 0);
        assert_int_equal(claims.role, FM_JWT_ROLE_NONE);
    }
}

static void expect_error(const fm_jwt_verifier_t *verifier, const char *token, int64_t now, fm_jwt_error_t expected,
                         const char *what)
{
    expect_result(verifier, token, strlen(token), now, expected, what);
}

/* Signs `payload` (a format with one or two time values) with our secret and checks the result at NOW. */
__attribute__((format(printf, 4, 5))) static void expect_ours(const fm_jwt_verifier_t *verifier,
                                                              fm_jwt_error_t expected, const char *what,
                                                              const char *payload_format, ...)
{
    char payload[4096], token[TOKEN_BUF];
    va_list args;
    va_start(args, payload_format);
    vsnprintf(payload, sizeof payload, payload_format, args);
    va_end(args);
    sign_hs256(token, sizeof token, HEADER_HS256, payload);
    expect_error(verifier, token, NOW, expected, what);
}

/* ---- b64 ---------------------------------------------------------------------------------------------------- */

static void test_b64url_rfc4648_vectors(void **state)
{
    /* RFC 4648 §10, without the padding JWS drops. */
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const encoded[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
        char text[16];
        uint8_t bytes[16];
        size_t len = 0;
        assert_int_equal(fm_b64url_encode(plain[i], strlen(plain[i]), text, sizeof text), 0);
        assert_string_equal(text, encoded[i]);
        assert_int_equal(fm_b64url_decode(encoded[i], strlen(encoded[i]), bytes, sizeof bytes, &len), 0);
        assert_int_equal(len, strlen(plain[i]));
        assert_memory_equal(bytes, plain[i], len);
    }
    /* The URL alphabet: 0xfb 0xff encodes to "-_8", where standard base64 would write "+/8". */
    char text[8];
    uint8_t bytes[8];
    size_t len = 0;
    assert_int_equal(fm_b64url_encode("\xfb\xff", 2, text, sizeof text), 0);
    assert_string_equal(text, "-_8");
    assert_int_equal(fm_b64url_encode("foo", 3, text, 4), -1); /* no room for the NUL */

    assert_int_equal(fm_b64url_decode("+/8", 3, bytes, sizeof bytes, &len), -1);
    assert_int_equal(fm_b64url_decode("Zg==", 4, bytes, sizeof bytes, &len), -1);
    assert_int_equal(fm_b64url_decode("Zm9v Yg", 7, bytes, sizeof bytes, &len), -1);
    assert_int_equal(fm_b64url_decode("Zm9vY", 5, bytes, sizeof bytes, &len), -1); /* 1 mod 4 */
    /* "Zh" and "Zm9" with unused bits set decode to the same bytes as "Zg"/"Zm8" in lax decoders: refused. */
    assert_int_equal(fm_b64url_decode("Zh", 2, bytes, sizeof bytes, &len), -1);
    assert_int_equal(fm_b64url_decode("Zm9", 3, bytes, sizeof bytes, &len), -1);
    assert_int_equal(fm_b64url_decode("Zm9vYmFy", 8, bytes, 5, &len), -1); /* output too small */

    char hex[9];
    assert_int_equal(fm_hex_encode("\x00\x9f\xff\x10", 4, hex, sizeof hex), 0);
    assert_string_equal(hex, "009fff10");
    assert_int_equal(fm_hex_encode("\x00\x9f\xff\x10", 4, hex, 8), -1);
}

/* ---- issue + verify -------------------------------------------------------------------------------------------- */

static void test_issue_verify_round_trip(void **state)
{
    fm_jwt_verifier_t *verifier = make_verifier(0, NULL);
    assert_non_null(verifier);
    static const fm_jwt_role_t roles[] = {FM_JWT_ROLE_ADMIN, FM_JWT_ROLE_MEMBER, FM_JWT_ROLE_VIEWER};
    for (size_t i = 0; i < 3; i++) {
        fm_jwt_issue_t issue = {
            .issuer = OUR_ISS,
            .subject = "1234",
            .session_id = "sess-abc",
            .role = roles[i],
            .issued_at = NOW,
            .ttl_seconds = 900,
        };
        char token[FM_JWT_ISSUE_BUF_SIZE];
        assert_int_equal(fm_jwt_issue_hs256((const uint8_t *)secret, SECRET_LEN, &issue, token, sizeof token), 0);
        /* Our fixed header, byte for byte. */
        assert_memory_equal(token, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.", 37);

        fm_jwt_claims_t claims;
        assert_int_equal(fm_jwt_verify(verifier, token, strlen(token), NOW + 10, &claims), 0);
        assert_int_equal(claims.error, FM_JWT_OK);
        assert_int_equal(claims.source, FM_JWT_SOURCE_LOCAL);
        assert_int_equal(claims.role, roles[i]);
        assert_string_equal(claims.iss, OUR_ISS);
        assert_string_equal(claims.sub, "1234");
        assert_string_equal(claims.sid, "sess-abc");
        assert_int_equal(strlen(claims.jti), 22); /* 128 random bits */
        assert_int_equal(claims.iat, NOW);
        assert_int_equal(claims.nbf, NOW);
        assert_int_equal(claims.exp, NOW + 900);

        /* The ttl holds up to the leeway, then not. */
        expect_error(verifier, token, NOW + 900 + FM_JWT_LEEWAY_SECONDS - 1, FM_JWT_OK, "ttl end within leeway");
        expect_error(verifier, token, NOW + 900 + FM_JWT_LEEWAY_SECONDS, FM_JWT_ERR_EXPIRED, "ttl end + leeway");
        expect_error(verifier, token, NOW - FM_JWT_LEEWAY_SECONDS - 1, FM_JWT_ERR_NOT_YET_VALID, "before nbf");
    }

    /* Two tokens issued in the same second differ by their random jti; a given jti is carried through. */
    fm_jwt_issue_t issue = {OUR_ISS, "7", "s", FM_JWT_ROLE_VIEWER, NOW, 60, NULL};
    char first[FM_JWT_ISSUE_BUF_SIZE], second[FM_JWT_ISSUE_BUF_SIZE];
    assert_int_equal(fm_jwt_issue_hs256((const uint8_t *)secret, SECRET_LEN, &issue, first, sizeof first), 0);
    assert_int_equal(fm_jwt_issue_hs256((const uint8_t *)secret, SECRET_LEN, &issue, second, sizeof second), 0);
    assert_string_not_equal(first, second);
    issue.jti = "my-jti";
    assert_int_equal(fm_jwt_issue_hs256((const uint8_t *)secret, SECRET_LEN, &issue, first, sizeof first), 0);
    fm_jwt_claims_t claims;
    assert_int_equal(fm_jwt_verify(verifier, first, strlen(first), NOW, &claims), 0);
    assert_string_equal(claims.jti, "my-jti");

    /* Longest accepted strings, quotes and backslashes included, fit the documented buffer and verify. */
    char longest[FM_JWT_CLAIM_MAX + 1];
    memset(longest, '"', FM_JWT_CLAIM_MAX);
    longest[FM_JWT_CLAIM_MAX] = '\0';
    longest[0] = '\\';
    fm_jwt_issue_t big = {OUR_ISS, longest, longest, FM_JWT_ROLE_ADMIN, NOW, 60, longest};
    char token[FM_JWT_ISSUE_BUF_SIZE];
    assert_int_equal(fm_jwt_issue_hs256((const uint8_t *)secret, SECRET_LEN, &big, token, sizeof token), 0);
    assert_int_equal(fm_jwt_verify(verifier, token, strlen(token), NOW, &claims), 0);
    assert_string_equal(claims.sub, longest);
    assert_string_equal(claims.sid, longest);
    fm_jwt_verifier_free(verifier);
}

static void test_issue_rejects_bad_input(void **state)
{
    char token[FM_JWT_ISSUE_BUF_SIZE];
    const uint8_t *key = (const uint8_t *)secret;
    fm_jwt_issue_t good = {OUR_ISS, "42", "s1", FM_JWT_ROLE_MEMBER, NOW, 60, NULL};
    assert_int_equal(fm_jwt_issue_hs256(key, SECRET_LEN, &good, token, sizeof token), 0);

    assert_int_equal(fm_jwt_issue_hs256(key, FM_JWT_MIN_SECRET_LEN - 1, &good, token, sizeof token), -1);
    assert_int_equal(fm_jwt_issue_hs256(NULL, SECRET_LEN, &good, token, sizeof token), -1);
    assert_int_equal(fm_jwt_issue_hs256(key, SECRET_LEN, &good, token, 100), -1); /* buffer too small */
    assert_string_equal(token, "");

    char too_long[FM_JWT_CLAIM_MAX + 2];
    memset(too_long, 'a', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    const fm_jwt_issue_t refused[] = {
        {OUR_ISS, "42", "s1", FM_JWT_ROLE_NONE, NOW, 60, NULL},
        {OUR_ISS, "42", "s1", (fm_jwt_role_t)99, NOW, 60, NULL},
        {OUR_ISS, "", "s1", FM_JWT_ROLE_MEMBER, NOW, 60, NULL},
        {OUR_ISS, "42", NULL, FM_JWT_ROLE_MEMBER, NOW, 60, NULL},
        {OUR_ISS, "4\n2", "s1", FM_JWT_ROLE_MEMBER, NOW, 60, NULL},
        {OUR_ISS, "42", "s1", FM_JWT_ROLE_MEMBER, NOW, 0, NULL},
        {OUR_ISS, too_long, "s1", FM_JWT_ROLE_MEMBER, NOW, 60, NULL},
        {NULL, "42", "s1", FM_JWT_ROLE_MEMBER, NOW, 60, NULL},
        {OUR_ISS, "42", "s1", FM_JWT_ROLE_MEMBER, -1, 60, NULL},
        {OUR_ISS, "42", "s1", FM_JWT_ROLE_MEMBER, NOW, 60, ""},
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        if (fm_jwt_issue_hs256(key, SECRET_LEN, &refused[i], token, sizeof token) != -1)
            fail_msg("issue case %zu accepted", i);
}

static char *public_pem_of(EVP_PKEY *key)
{
    BIO *bio = BIO_new(BIO_s_mem());
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_PUBKEY(bio, key), 1);
    char *data = NULL;
    long len = BIO_get_mem_data(bio, &data);
    char *pem = strndup(data, (size_t)len);
    BIO_free(bio);
    EVP_PKEY_free(key);
    return pem;
}

static void test_verifier_config(void **state)
{
    load_vectors();
    fm_jwt_verifier_config_t config = {
        .hs256_secret = (const uint8_t *)secret,
        .hs256_secret_len = SECRET_LEN,
        .issuer = OUR_ISS,
    };
    fm_jwt_verifier_t *verifier = fm_jwt_verifier_new(&config);
    assert_non_null(verifier);
    fm_jwt_verifier_free(verifier);
    fm_jwt_verifier_free(NULL);

    config.hs256_secret_len = FM_JWT_MIN_SECRET_LEN - 1;
    assert_null(fm_jwt_verifier_new(&config));
    config.hs256_secret_len = SECRET_LEN;
    config.issuer = "";
    assert_null(fm_jwt_verifier_new(&config));
    config.issuer = OUR_ISS;

    config.external_issuer = EXT_ISS;
    config.external_alg = FM_JWT_ALG_RS256;
    config.external_public_pem = vectors.rs_pem;
    config.external_public_pem_len = strlen(vectors.rs_pem);
    verifier = fm_jwt_verifier_new(&config);
    assert_non_null(verifier);
    fm_jwt_verifier_free(verifier);

    config.external_issuer = OUR_ISS; /* one issuer cannot have two keys */
    assert_null(fm_jwt_verifier_new(&config));
    config.external_issuer = EXT_ISS;
    config.external_alg = FM_JWT_ALG_HS256; /* the provider key is asymmetric */
    assert_null(fm_jwt_verifier_new(&config));
    config.external_alg = FM_JWT_ALG_ES256; /* RSA key for ES256 */
    assert_null(fm_jwt_verifier_new(&config));
    config.external_alg = FM_JWT_ALG_RS256;
    config.external_public_pem = vectors.es_pem; /* EC key for RS256 */
    config.external_public_pem_len = strlen(vectors.es_pem);
    assert_null(fm_jwt_verifier_new(&config));
    config.external_public_pem = "-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n";
    config.external_public_pem_len = strlen(config.external_public_pem);
    assert_null(fm_jwt_verifier_new(&config));

    char *small_rsa = public_pem_of(EVP_RSA_gen(1024));
    config.external_public_pem = small_rsa;
    config.external_public_pem_len = strlen(small_rsa);
    assert_null(fm_jwt_verifier_new(&config)); /* RSA-1024 is too weak */
    free(small_rsa);

    char *p384 = public_pem_of(EVP_EC_gen("P-384"));
    config.external_alg = FM_JWT_ALG_ES256;
    config.external_public_pem = p384;
    config.external_public_pem_len = strlen(p384);
    assert_null(fm_jwt_verifier_new(&config)); /* ES256 means P-256 */
    free(p384);
}

/* ---- refusals --------------------------------------------------------------------------------------------- */

static void test_malformed_tokens(void **state)
{
    fm_jwt_verifier_t *verifier = make_verifier(0, NULL);
    char token[TOKEN_BUF], payload[512];
    snprintf(payload, sizeof payload, OUR_CLAIMS(",\"exp\":%lld"), (long long)NOW + 60);
    sign_hs256(token, sizeof token, HEADER_HS256, payload);
    expect_error(verifier, token, NOW, FM_JWT_OK, "baseline");

    expect_error(verifier, "", NOW, FM_JWT_ERR_MALFORMED, "empty");
    expect_error(verifier, "garbage", NOW, FM_JWT_ERR_MALFORMED, "garbage");
    expect_error(verifier, "\xff\xfe\x00", NOW, FM_JWT_ERR_MALFORMED, "binary");
    expect_error(verifier, "...", NOW, FM_JWT_ERR_MALFORMED, "dots only");

    char *first_dot = strchr(token, '.'), *last_dot = strrchr(token, '.');
    char variant[2 * TOKEN_BUF + 8]; /* room for token + token: no truncation (gcc -Wformat-truncation) */
    snprintf(variant, sizeof variant, "%.*s", (int)(last_dot - token), token); /* header.payload */
    expect_error(verifier, variant, NOW, FM_JWT_ERR_MALFORMED, "2 parts");
    snprintf(variant, sizeof variant, "%s.%s", token, last_dot + 1);
    expect_error(verifier, variant, NOW, FM_JWT_ERR_MALFORMED, "4 parts");
    snprintf(variant, sizeof variant, "%s.", token);
    expect_error(verifier, variant, NOW, FM_JWT_ERR_MALFORMED, "4 parts, last empty");
    snprintf(variant, sizeof variant, "%s", first_dot); /* .payload.sig */
    expect_error(verifier, variant, NOW, FM_JWT_ERR_MALFORMED, "empty header");
    snprintf(variant, sizeof variant, "%s=", token);
    expect_error(verifier, variant, NOW, FM_JWT_ERR_BAD_SIGNATURE, "padded signature");
    snprintf(variant, sizeof variant, "%.*s=%s", (int)(first_dot - token), token, first_dot);
    expect_error(verifier, variant, NOW, FM_JWT_ERR_MALFORMED, "padded header");
    snprintf(variant, sizeof variant, " %s", token);
    expect_error(verifier, variant, NOW, FM_JWT_ERR_MALFORMED, "leading space");
    /* The length, not a NUL, ends the token: a NUL inside the given length is just a bad character. */
    memcpy(variant, token, strlen(token) + 1);
    expect_result(verifier, variant, strlen(token) + 1, NOW, FM_JWT_ERR_BAD_SIGNATURE, "trailing NUL in length");
    variant[5] = '\0';
    expect_result(verifier, variant, strlen(token), NOW, FM_JWT_ERR_MALFORMED, "NUL in header");
    /* ...and bytes after the given length are ignored. */
    expect_result(verifier, token, strlen(token) - 1, NOW, FM_JWT_ERR_BAD_SIGNATURE, "one short");

    sign_hs256(token, sizeof token, "not json", payload);
    expect_error(verifier, token, NOW, FM_JWT_ERR_MALFORMED, "header not JSON");
    sign_hs256(token, sizeof token, "[\"HS256\"]", payload);
    expect_error(verifier, token, NOW, FM_JWT_ERR_MALFORMED, "header an array");
    sign_hs256(token, sizeof token, HEADER_HS256, "\"just a string\"");
    expect_error(verifier, token, NOW, FM_JWT_ERR_MALFORMED, "payload a string");
    snprintf(variant, sizeof variant, "%s x", payload);
    sign_hs256(token, sizeof token, HEADER_HS256, variant);
    expect_error(verifier, token, NOW, FM_JWT_ERR_MALFORMED, "payload with trailing bytes");
    sign_hs256(token, sizeof token, "{\"alg\":\"HS256\",\"crit\":[\"b64\"],\"b64\":false}", payload);
    expect_error(verifier, token, NOW, FM_JWT_ERR_MALFORMED, "crit header");
    sign_hs256(token, sizeof token, "{\"alg\":\"HS256\",\"alg\":\"none\"}", payload);
    expect_error(verifier, token, NOW, FM_JWT_ERR_MALFORMED, "duplicate alg");

    /* Duplicate claims: cJSON would read the first sub, PyJWT the last. */
    expect_ours(verifier, FM_JWT_ERR_MALFORMED, "duplicate sub", OUR_CLAIMS(",\"sub\":\"1\",\"exp\":%lld"),
                (long long)NOW + 60);
    /* An escaped NUL would cut "42\u0000admin" to "42" in a C string. */
    expect_ours(verifier, FM_JWT_ERR_MALFORMED, "escaped NUL",
                "{\"iss\":\"" OUR_ISS "\",\"sub\":\"4\\u0000x\",\"sid\":\"s\",\"role\":\"admin\",\"exp\":%lld}",
                (long long)NOW + 60);
    fm_jwt_verifier_free(verifier);
}

static void test_size_limit(void **state)
{
    fm_jwt_verifier_t *verifier = make_verifier(0, NULL);
    /* A correctly signed token just under the limit verifies: the bound is on size, not on content. */
    char payload[FM_JWT_MAX_TOKEN_LEN], token[TOKEN_BUF];
    int prefix = snprintf(payload, sizeof payload, OUR_CLAIMS(",\"exp\":%lld,\"pad\":\""), (long long)NOW + 60);
    size_t pad = (FM_JWT_MAX_TOKEN_LEN - 37 - 44) / 4 * 3 - (size_t)prefix - 2;
    memset(payload + prefix, 'x', pad);
    strcpy(payload + prefix + pad, "\"}");
    sign_hs256(token, sizeof token, HEADER_HS256, payload);
    assert_true(strlen(token) <= FM_JWT_MAX_TOKEN_LEN);
    assert_true(strlen(token) > FM_JWT_MAX_TOKEN_LEN - 8);
    expect_error(verifier, token, NOW, FM_JWT_OK, "just under the limit");

    /* One byte over is refused before any parsing, even though the rest would be valid. */
    strcpy(payload + prefix + pad, "xxxx\"}");
    sign_hs256(token, sizeof token, HEADER_HS256, payload);
    assert_true(strlen(token) > FM_JWT_MAX_TOKEN_LEN);
    expect_error(verifier, token, NOW, FM_JWT_ERR_TOO_LARGE, "over the limit");

    char *huge = malloc(1 << 20);
    assert_non_null(huge);
    memset(huge, 'A', 1 << 20);
    expect_result(verifier, huge, 1 << 20, NOW, FM_JWT_ERR_TOO_LARGE, "1 MiB");
    expect_result(verifier, huge, FM_JWT_MAX_TOKEN_LEN + 1, NOW, FM_JWT_ERR_TOO_LARGE, "limit + 1");
    expect_result(verifier, huge, FM_JWT_MAX_TOKEN_LEN, NOW, FM_JWT_ERR_MALFORMED, "limit, no dots");
    free(huge);
    fm_jwt_verifier_free(verifier);
}

static void test_alg_none_and_other_algs(void **state)
{
    fm_jwt_verifier_t *verifier = make_verifier(0, NULL);
    char payload[512], token[TOKEN_BUF], b64_header[128], b64_payload[1024];
    snprintf(payload, sizeof payload, OUR_CLAIMS(",\"exp\":%lld"), (long long)NOW + 60);

    /* The classic unsigned token: header.payload. with an empty signature. */
    const char *none = "{\"alg\":\"none\",\"typ\":\"JWT\"}";
    fm_b64url_encode(none, strlen(none), b64_header, sizeof b64_header);
    fm_b64url_encode(payload, strlen(payload), b64_payload, sizeof b64_payload);
    snprintf(token, sizeof token, "%s.%s.", b64_header, b64_payload);
    expect_error(verifier, token, NOW, FM_JWT_ERR_BAD_ALG, "alg none, empty signature");
    /* `none` is refused before the issuer is even looked at. */
    char unknown_iss[256];
    snprintf(unknown_iss, sizeof unknown_iss, "{\"iss\":\"https://evil.example\",\"sub\":\"1\",\"exp\":%lld}",
             (long long)NOW + 60);
    fm_b64url_encode(unknown_iss, strlen(unknown_iss), b64_payload, sizeof b64_payload);
    snprintf(token, sizeof token, "%s.%s.", b64_header, b64_payload);
    expect_error(verifier, token, NOW, FM_JWT_ERR_BAD_ALG, "alg none, unknown issuer");
    fm_b64url_encode(payload, strlen(payload), b64_payload, sizeof b64_payload);
    /* ...and with our valid HMAC attached, in case a verifier computes "none" as an empty MAC. */
    static const char *const refused[] = {
        "{\"alg\":\"none\"}",  "{\"alg\":\"None\"}",  "{\"alg\":\"NONE\"}",  "{\"alg\":\"hs256\"}",
        "{\"alg\":\"HS512\"}", "{\"alg\":\"HS384\"}", "{\"alg\":\"RS256\"}", "{\"alg\":\"HS256 \"}",
        "{\"alg\":\"\"}",      "{\"alg\":null}",      "{\"alg\":256}",       "{\"typ\":\"JWT\"}",
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        sign_hs256(token, sizeof token, refused[i], payload);
        expect_error(verifier, token, NOW, FM_JWT_ERR_BAD_ALG, refused[i]);
    }
    /* A minimal header without typ is fine: typ is optional (RFC 7519 §5.1). */
    sign_hs256(token, sizeof token, "{\"alg\":\"HS256\"}", payload);
    expect_error(verifier, token, NOW, FM_JWT_OK, "header without typ");
    fm_jwt_verifier_free(verifier);
}

static void test_bad_signature(void **state)
{
    fm_jwt_verifier_t *verifier = make_verifier(0, NULL);
    char payload[512], token[TOKEN_BUF], other[TOKEN_BUF], spliced[2 * TOKEN_BUF + 8];
    snprintf(payload, sizeof payload, OUR_CLAIMS(",\"exp\":%lld"), (long long)NOW + 60);
    sign_hs256(token, sizeof token, HEADER_HS256, payload);
    expect_error(verifier, token, NOW, FM_JWT_OK, "baseline");

    static const char wrong[] = "0123456789abcdef0123456789abcdef-secret?";
    sign_hs256_key(other, sizeof other, HEADER_HS256, payload, wrong, sizeof wrong - 1);
    expect_error(verifier, other, NOW, FM_JWT_ERR_BAD_SIGNATURE, "wrong secret");

    /* Our signature on another payload (sub 42 -> 43): an escalation attempt. */
    snprintf(payload, sizeof payload,
             "{\"iss\":\"" OUR_ISS "\",\"sub\":\"43\",\"sid\":\"s1\",\"role\":\"member\","
             "\"exp\":%lld}",
             (long long)NOW + 60);
    sign_hs256(other, sizeof other, HEADER_HS256, payload);
    snprintf(spliced, sizeof spliced, "%.*s%s", (int)(strrchr(other, '.') - other), other, strrchr(token, '.'));
    expect_error(verifier, spliced, NOW, FM_JWT_ERR_BAD_SIGNATURE, "signature from another payload");

    size_t len = strlen(token);
    char *sig = strrchr(token, '.') + 1;
    assert_int_equal(strlen(sig), 43);
    snprintf(spliced, sizeof spliced, "%.*s", (int)(len - 1), token);
    expect_error(verifier, spliced, NOW, FM_JWT_ERR_BAD_SIGNATURE, "signature one char short");
    snprintf(spliced, sizeof spliced, "%.*s", (int)(len - 4), token);
    expect_error(verifier, spliced, NOW, FM_JWT_ERR_BAD_SIGNATURE, "signature 3 bytes short");
    snprintf(spliced, sizeof spliced, "%.*s", (int)(sig - token), token);
    expect_error(verifier, spliced, NOW, FM_JWT_ERR_BAD_SIGNATURE, "empty signature");
    snprintf(spliced, sizeof spliced, "%sAAAA", token);
    expect_error(verifier, spliced, NOW, FM_JWT_ERR_BAD_SIGNATURE, "signature with 3 extra bytes");

    /* Every single-character change of the signature fails, including the last character, whose 2 low bits
     * carry no data (a lax base64 decoder would accept 3 of its 4 spellings). */
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (size_t pos = 0; pos < 43; pos++) {
        memcpy(spliced, token, len + 1);
        char *c = strrchr(spliced, '.') + 1 + pos;
        for (size_t a = 0; a < 64; a++) {
            if (alphabet[a] == sig[pos])
                continue;
            *c = alphabet[a];
            fm_jwt_claims_t claims;
            if (fm_jwt_verify(verifier, spliced, len, NOW, &claims) == 0)
                fail_msg("signature with char %zu changed to %c verified", pos, alphabet[a]);
            assert_int_equal(claims.error, FM_JWT_ERR_BAD_SIGNATURE);
        }
    }
    fm_jwt_verifier_free(verifier);
}

/* One claims case: `payload` is a printf format given NOW + first and NOW + second (either may go unused). */
typedef struct {
    fm_jwt_error_t expected;
    const char *what;
    const char *payload;
    long long first, second;
} claims_case_t;

#define ISS "\"iss\":\"" OUR_ISS "\""
#define ALL ISS ",\"sub\":\"1\",\"sid\":\"s\",\"role\":\"admin\"" /* every claim but the times */
#define EXP ",\"exp\":%lld}"
static const claims_case_t claims_cases[] = {
    {FM_JWT_OK, "exp = now", "{" ALL EXP, 0, 0},
    {FM_JWT_OK, "exp = now - 29", "{" ALL EXP, -29, 0},
    {FM_JWT_ERR_EXPIRED, "exp = now - 30", "{" ALL EXP, -30, 0},
    {FM_JWT_ERR_EXPIRED, "exp long ago", "{" ALL EXP, -86400, 0},
    {FM_JWT_ERR_EXPIRED, "exp = 0", "{" ALL ",\"exp\":0}", 0, 0},
    /* Fractions round towards refusal: now - 29.5 counts as now - 30, nbf now + 30.2 as now + 31. */
    {FM_JWT_ERR_EXPIRED, "exp = now - 29.5", "{" ALL ",\"exp\":%lld.5}", -30, 0},
    {FM_JWT_ERR_MISSING_CLAIM, "no exp", "{" ALL "}", 0, 0},
    {FM_JWT_ERR_BAD_CLAIM, "exp a string", "{" ALL ",\"exp\":\"%lld\"}", 60, 0},
    {FM_JWT_ERR_BAD_CLAIM, "exp negative", "{" ALL ",\"exp\":-1}", 0, 0},
    {FM_JWT_ERR_BAD_CLAIM, "exp huge", "{" ALL ",\"exp\":1e300}", 0, 0},
    {FM_JWT_ERR_BAD_CLAIM, "exp null", "{" ALL ",\"exp\":null}", 0, 0},
    {FM_JWT_OK, "nbf = now + 30", "{" ALL ",\"exp\":%lld,\"nbf\":%lld}", 60, 30},
    {FM_JWT_ERR_NOT_YET_VALID, "nbf = now + 31", "{" ALL ",\"exp\":%lld,\"nbf\":%lld}", 60, 31},
    {FM_JWT_ERR_NOT_YET_VALID, "nbf = now + 30.2", "{" ALL ",\"exp\":%lld,\"nbf\":%lld.2}", 60, 30},
    {FM_JWT_ERR_BAD_CLAIM, "nbf a bool", "{" ALL ",\"exp\":%lld,\"nbf\":true}", 60, 0},
    {FM_JWT_OK, "iat = now + 30", "{" ALL ",\"exp\":%lld,\"iat\":%lld}", 60, 30},
    {FM_JWT_ERR_NOT_YET_VALID, "iat = now + 31", "{" ALL ",\"exp\":%lld,\"iat\":%lld}", 60, 31},
    {FM_JWT_OK, "iat in the past", "{" ALL ",\"exp\":%lld,\"iat\":%lld}", 60, -3600},

    {FM_JWT_OK, "viewer", "{" ISS ",\"sub\":\"1\",\"sid\":\"s\",\"role\":\"viewer\"" EXP, 60, 0},
    {FM_JWT_ERR_MISSING_CLAIM, "no iss", "{\"sub\":\"1\",\"sid\":\"s\",\"role\":\"admin\"" EXP, 60, 0},
    {FM_JWT_ERR_BAD_CLAIM, "iss a number", "{\"iss\":7,\"sub\":\"1\",\"sid\":\"s\",\"role\":\"admin\"" EXP, 60, 0},
    {FM_JWT_ERR_BAD_ISSUER, "other iss", "{\"iss\":\"https://evil.example\",\"sub\":\"1\"" EXP, 60, 0},
    {FM_JWT_ERR_BAD_ISSUER, "prefix of our iss", "{\"iss\":\"https://files.example\",\"sub\":\"1\"" EXP, 60, 0},
    /* Without an external provider configured, its issuer is just unknown. */
    {FM_JWT_ERR_BAD_ISSUER, "external iss, none set", "{\"iss\":\"" EXT_ISS "\",\"sub\":\"1\"" EXP, 60, 0},
    {FM_JWT_ERR_MISSING_CLAIM, "no sub", "{" ISS ",\"sid\":\"s\",\"role\":\"admin\"" EXP, 60, 0},
    {FM_JWT_ERR_BAD_CLAIM, "empty sub", "{" ISS ",\"sub\":\"\",\"sid\":\"s\",\"role\":\"admin\"" EXP, 60, 0},
    {FM_JWT_ERR_BAD_CLAIM, "sub a number", "{" ISS ",\"sub\":42,\"sid\":\"s\",\"role\":\"admin\"" EXP, 60, 0},
    {FM_JWT_ERR_MISSING_CLAIM, "no sid", "{" ISS ",\"sub\":\"1\",\"role\":\"admin\"" EXP, 60, 0},
    {FM_JWT_ERR_BAD_CLAIM, "sid an object", "{" ISS ",\"sub\":\"1\",\"sid\":{},\"role\":\"admin\"" EXP, 60, 0},
    {FM_JWT_ERR_MISSING_CLAIM, "no role", "{" ISS ",\"sub\":\"1\",\"sid\":\"s\"" EXP, 60, 0},
    {FM_JWT_ERR_BAD_CLAIM, "role Admin", "{" ISS ",\"sub\":\"1\",\"sid\":\"s\",\"role\":\"Admin\"" EXP, 60, 0},
    {FM_JWT_ERR_BAD_CLAIM, "role owner", "{" ISS ",\"sub\":\"1\",\"sid\":\"s\",\"role\":\"owner\"" EXP, 60, 0},
    {FM_JWT_ERR_BAD_CLAIM, "role array", "{" ISS ",\"sub\":\"1\",\"sid\":\"s\",\"role\":[\"admin\"]" EXP, 60, 0},
    {FM_JWT_ERR_BAD_CLAIM, "jti a number", "{" ALL ",\"jti\":5" EXP, 60, 0},
};
#undef ISS
#undef ALL
#undef EXP

static void test_claims(void **state)
{
    fm_jwt_verifier_t *verifier = make_verifier(0, NULL);
    for (size_t i = 0; i < sizeof claims_cases / sizeof *claims_cases; i++) {
        const claims_case_t *c = &claims_cases[i];
        expect_ours(verifier, c->expected, c->what, c->payload, (long long)NOW + c->first, (long long)NOW + c->second);
    }

    /* Strings are bounded, not truncated: 255 bytes pass, 256 are refused. */
    char sub[FM_JWT_CLAIM_MAX + 2], format[1024];
    for (size_t len = FM_JWT_CLAIM_MAX; len <= FM_JWT_CLAIM_MAX + 1; len++) {
        memset(sub, '7', len);
        sub[len] = '\0';
        snprintf(format, sizeof format,
                 "{\"iss\":\"" OUR_ISS "\",\"sub\":\"%s\",\"sid\":\"s\",\"role\":\"admin\",\"exp\":%%lld}", sub);
        expect_ours(verifier, len == FM_JWT_CLAIM_MAX ? FM_JWT_OK : FM_JWT_ERR_BAD_CLAIM, "long sub", format,
                    (long long)NOW + 60);
    }
    fm_jwt_verifier_free(verifier);
}

/* The libjwt 1.10 hole (notes/libraries.md): an HS256 token whose HMAC key is the provider's public PEM. */
static void test_alg_confusion(void **state)
{
    load_vectors();
    fm_jwt_verifier_t *verifier = make_verifier(FM_JWT_ALG_RS256, vectors.rs_pem);
    assert_non_null(verifier);
    const char *pem = vectors.rs_pem;
    char payload[512], token[TOKEN_BUF];

    snprintf(payload, sizeof payload,
             "{\"iss\":\"" EXT_ISS "\",\"sub\":\"attacker\",\"aud\":\"" AUDIENCE "\",\"exp\":%lld}",
             (long long)NOW + 60);
    sign_hs256_key(token, sizeof token, HEADER_HS256, payload, pem, strlen(pem));
    expect_error(verifier, token, NOW, FM_JWT_ERR_BAD_ALG, "HS256 keyed with the PEM, external iss");

    /* With our issuer it reaches HMAC with our secret, not the PEM, and fails there. */
    snprintf(payload, sizeof payload, OUR_CLAIMS(",\"exp\":%lld"), (long long)NOW + 60);
    sign_hs256_key(token, sizeof token, HEADER_HS256, payload, pem, strlen(pem));
    expect_error(verifier, token, NOW, FM_JWT_ERR_BAD_SIGNATURE, "HS256 keyed with the PEM, our iss");

    /* The header cannot pick the key either: RS256 header on our issuer is refused before any RSA work. */
    sign_hs256(token, sizeof token, "{\"alg\":\"RS256\",\"typ\":\"JWT\"}", payload);
    expect_error(verifier, token, NOW, FM_JWT_ERR_BAD_ALG, "RS256 header, our iss");
    fm_jwt_verifier_free(verifier);
}

/* ---- PyJWT --------------------------------------------------------------------------------------------------- */

static void test_pyjwt_vectors(void **state)
{
    load_vectors();
    int count = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, vectors.cases)
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(item, "name"));
        const char *which = cJSON_GetStringValue(cJSON_GetObjectItem(item, "verifier"));
        const char *token = cJSON_GetStringValue(cJSON_GetObjectItem(item, "token"));
        const char *expect = cJSON_GetStringValue(cJSON_GetObjectItem(item, "expect"));
        assert_non_null(name);
        assert_non_null(which);
        assert_non_null(token);
        assert_non_null(expect);
        const fm_jwt_verifier_t *verifier = strcmp(which, "es256") == 0 ? vectors.es : vectors.rs;
        fm_jwt_claims_t claims;
        int rc = fm_jwt_verify(verifier, token, strlen(token), vectors.now, &claims);
        printf("  pyjwt %-22s -> %s\n", name, fm_jwt_error_code(claims.error));
        if (strcmp(fm_jwt_error_code(claims.error), expect) != 0)
            fail_msg("PyJWT vector %s: got %s, want %s", name, fm_jwt_error_code(claims.error), expect);
        if (strcmp(expect, "ok") == 0) {
            assert_int_equal(rc, 0);
            assert_string_equal(claims.sub, cJSON_GetStringValue(cJSON_GetObjectItem(item, "sub")));
            bool external = strncmp(name, "hs_", 3) != 0;
            assert_int_equal(claims.source, external ? FM_JWT_SOURCE_EXTERNAL : FM_JWT_SOURCE_LOCAL);
            assert_string_equal(claims.iss, external ? EXT_ISS : OUR_ISS);
            if (external)
                assert_int_equal(claims.role, FM_JWT_ROLE_NONE);
        } else {
            assert_int_equal(rc, -1);
        }
        count++;
    }
    assert_true(count >= 30);
}

/* One changed character anywhere in a PyJWT-signed token must make it fail. */
static void test_pyjwt_tampered(void **state)
{
    load_vectors();
    static const char *const names[] = {"rs_ok", "es_ok", "hs_ok"};
    for (size_t n = 0; n < 3; n++) {
        const char *original = case_token(names[n]);
        const fm_jwt_verifier_t *verifier = n == 1 ? vectors.es : vectors.rs;
        size_t len = strlen(original);
        const char *sig = strrchr(original, '.') + 1;
        size_t sig_start = (size_t)(sig - original), payload_start = (size_t)(strchr(original, '.') - original) + 1;
        size_t positions[] = {
            0, payload_start + 3, payload_start + 20, sig_start, sig_start + (len - sig_start) / 2, len - 1};
        char tampered[TOKEN_BUF];
        for (size_t p = 0; p < sizeof positions / sizeof *positions; p++) {
            for (const char *replacement = "AB_w"; *replacement != '\0'; replacement++) {
                memcpy(tampered, original, len + 1);
                if (tampered[positions[p]] == *replacement)
                    continue;
                tampered[positions[p]] = *replacement;
                fm_jwt_claims_t claims;
                if (fm_jwt_verify(verifier, tampered, len, vectors.now, &claims) == 0)
                    fail_msg("%s tampered at %zu (%c) still verified", names[n], positions[p], *replacement);
                assert_int_not_equal(claims.error, FM_JWT_OK);
            }
        }
        expect_error(verifier, original, vectors.now, FM_JWT_OK, names[n]);
    }
}

static void test_pyjwt_decodes_our_token(void **state)
{
    int64_t now = (int64_t)time(NULL);
    fm_jwt_issue_t issue = {OUR_ISS, "user-981", "sess-77", FM_JWT_ROLE_ADMIN, now, 600, NULL};
    char token[FM_JWT_ISSUE_BUF_SIZE], secret_hex[2 * SECRET_LEN + 1], args[FM_JWT_ISSUE_BUF_SIZE + 256];
    assert_int_equal(fm_jwt_issue_hs256((const uint8_t *)secret, SECRET_LEN, &issue, token, sizeof token), 0);
    assert_int_equal(fm_hex_encode(secret, SECRET_LEN, secret_hex, sizeof secret_hex), 0);
    snprintf(args, sizeof args, "decode '%s' %s '%s'", token, secret_hex, OUR_ISS);
    char *output = run_vectors_script(args);
    cJSON *decoded = cJSON_Parse(output);
    free(output);
    assert_non_null(decoded);
    const cJSON *header = cJSON_GetObjectItem(decoded, "header");
    const cJSON *claims = cJSON_GetObjectItem(decoded, "claims");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(header, "alg")), "HS256");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(header, "typ")), "JWT");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(claims, "iss")), OUR_ISS);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(claims, "sub")), "user-981");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(claims, "sid")), "sess-77");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(claims, "role")), "admin");
    assert_int_equal(strlen(cJSON_GetStringValue(cJSON_GetObjectItem(claims, "jti"))), 22);
    assert_int_equal((int64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(claims, "iat")), now);
    assert_int_equal((int64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(claims, "nbf")), now);
    assert_int_equal((int64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(claims, "exp")), now + 600);
    cJSON_Delete(decoded);

    /* The same script must refuse the token under another secret, or this test could not fail. */
    snprintf(args, sizeof args, "decode '%s' %s '%s' 2>/dev/null", token, "00", OUR_ISS);
    char path[PATH_MAX], command[sizeof args + PATH_MAX + 64];
    test_script_path("jwt_vectors.py", path, sizeof path);
    snprintf(command, sizeof command, "/usr/bin/python3 -I '%s' %s >/dev/null", path, args);
    assert_int_not_equal(system(command), 0);
}

/* ---- sharing --------------------------------------------------------------------------------------------------- */

typedef struct {
    const fm_jwt_verifier_t *verifier;
    const char *token;
    int64_t now;
    int failures;
} thread_job_t;

static void *verify_many(void *arg)
{
    thread_job_t *job = arg;
    for (int i = 0; i < 300; i++) {
        fm_jwt_claims_t claims;
        if (fm_jwt_verify(job->verifier, job->token, strlen(job->token), job->now, &claims) != 0)
            job->failures++;
    }
    return NULL;
}

/* One verifier shared by threads without locks, as the services use it. */
static void test_verifier_shared_by_threads(void **state)
{
    load_vectors();
    thread_job_t jobs[6] = {
        {vectors.rs, case_token("rs_ok"), vectors.now, 0},
        {vectors.rs, case_token("hs_ok"), vectors.now, 0},
        {vectors.es, case_token("es_ok"), vectors.now, 0},
        {vectors.rs, case_token("rs_ok"), vectors.now, 0},
        {vectors.es, case_token("es_ok"), vectors.now, 0},
        {vectors.es, case_token("hs_ok_es_verifier"), vectors.now, 0},
    };
    pthread_t threads[6];
    for (int i = 0; i < 6; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, verify_many, &jobs[i]), 0);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(pthread_join(threads[i], NULL), 0);
        assert_int_equal(jobs[i].failures, 0);
    }
}

int main(void)
{
    // clang-format off
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_rfc4648_vectors),
        cmocka_unit_test(test_issue_verify_round_trip),
        cmocka_unit_test(test_issue_rejects_bad_input),
        cmocka_unit_test(test_verifier_config),
        cmocka_unit_test(test_malformed_tokens),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_alg_none_and_other_algs),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_claims),
        cmocka_unit_test(test_alg_confusion),
        cmocka_unit_test(test_pyjwt_vectors),
        cmocka_unit_test(test_pyjwt_tampered),
        cmocka_unit_test(test_pyjwt_decodes_our_token),
        cmocka_unit_test(test_verifier_shared_by_threads),
    };
    // clang-format on
    return cmocka_run_group_tests(tests, NULL, teardown_group);
}
