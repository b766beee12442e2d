/*
 * Tests for common/password.c: argon2id PHC hashes (checked against the RFC 9106 and phc-winner-argon2
 * reference vectors) and opaque refresh tokens.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "b64.h"
#include "password.h"

#include <argon2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Cheap parameters for tests that are about behaviour, not cost. */
static const fm_password_params_t fast = {.memory_kib = 64, .iterations = 1, .parallelism = 1};

/* phc-winner-argon2 src/test.c: argon2id v=19, "password" / "somesalt". */
static const char reference_m65536[] =
    "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";
static const char reference_m256[] =
    "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_default_params(void **state)
{
    fm_password_params_t params = fm_password_default_params();
    /* OWASP's argon2id baseline; changing it is a deliberate decision that shows up here. */
    assert_int_equal(params.memory_kib, 19456);
    assert_int_equal(params.iterations, 2);
    assert_int_equal(params.parallelism, 1);
}

static void test_hash_verify_and_mismatch(void **state)
{
    static const char password[] = "correct horse battery staple";
    char encoded[FM_PASSWORD_HASH_BUF_SIZE], again[FM_PASSWORD_HASH_BUF_SIZE];
    assert_int_equal(fm_password_hash(password, strlen(password), NULL, encoded), 0);
    assert_int_equal(fm_password_verify(encoded, password, strlen(password)), 0);

    assert_int_equal(fm_password_verify(encoded, "correct horse battery stapld", strlen(password)), -1);
    assert_int_equal(fm_password_verify(encoded, password, strlen(password) - 1), -1);
    assert_int_equal(fm_password_verify(encoded, "Correct horse battery staple", strlen(password)), -1);
    assert_int_equal(fm_password_verify(encoded, "", 0), -1);

    /* A fresh salt each time: same password, different strings, both verify. */
    assert_int_equal(fm_password_hash(password, strlen(password), NULL, again), 0);
    assert_string_not_equal(encoded, again);
    assert_int_equal(fm_password_verify(again, password, strlen(password)), 0);

    /* Passwords are bytes: an embedded NUL and non-ASCII count. */
    static const char binary[] = "pass\0word\xc3\xa9";
    assert_int_equal(fm_password_hash(binary, sizeof binary - 1, &fast, encoded), 0);
    assert_int_equal(fm_password_verify(encoded, binary, sizeof binary - 1), 0);
    assert_int_equal(fm_password_verify(encoded, binary, 4), -1);
}

/* `$argon2id$v=19$m=19456,t=2,p=1$<22 chars salt>$<43 chars tag>`, standard base64 without padding. */
static void test_phc_string_format(void **state)
{
    char encoded[FM_PASSWORD_HASH_BUF_SIZE];
    assert_int_equal(fm_password_hash("hunter22", 8, NULL, encoded), 0);
    static const char prefix[] = "$argon2id$v=19$m=19456,t=2,p=1$";
    assert_memory_equal(encoded, prefix, sizeof prefix - 1);
    const char *salt = encoded + sizeof prefix - 1;
    const char *dollar = strchr(salt, '$');
    assert_non_null(dollar);
    assert_int_equal(dollar - salt, 22);      /* 16 bytes */
    assert_int_equal(strlen(dollar + 1), 43); /* 32 bytes */
    for (const char *c = salt; *c != '\0'; c++) {
        if (c == dollar)
            continue;
        assert_true((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '+' ||
                    *c == '/');
    }
    assert_int_equal(strlen(encoded), sizeof prefix - 1 + 22 + 1 + 43);

    fm_password_params_t custom = {.memory_kib = 1024, .iterations = 3, .parallelism = 2};
    assert_int_equal(fm_password_hash("hunter22", 8, &custom, encoded), 0);
    assert_memory_equal(encoded, "$argon2id$v=19$m=1024,t=3,p=2$", 30);
    assert_int_equal(fm_password_verify(encoded, "hunter22", 8), 0);
}

static void test_length_and_param_bounds(void **state)
{
    char encoded[FM_PASSWORD_HASH_BUF_SIZE];
    char *long_password = malloc(FM_PASSWORD_MAX_LEN + 1);
    assert_non_null(long_password);
    memset(long_password, 'p', FM_PASSWORD_MAX_LEN + 1);

    assert_int_equal(fm_password_hash(long_password, FM_PASSWORD_MIN_LEN - 1, &fast, encoded), -1);
    assert_string_equal(encoded, "");
    assert_int_equal(fm_password_hash(long_password, FM_PASSWORD_MIN_LEN, &fast, encoded), 0);
    assert_int_equal(fm_password_hash(long_password, FM_PASSWORD_MAX_LEN, &fast, encoded), 0);
    assert_int_equal(fm_password_verify(encoded, long_password, FM_PASSWORD_MAX_LEN), 0);
    assert_int_equal(fm_password_verify(encoded, long_password, FM_PASSWORD_MAX_LEN + 1), -1);
    assert_int_equal(fm_password_hash(long_password, FM_PASSWORD_MAX_LEN + 1, &fast, encoded), -1);
    assert_int_equal(fm_password_hash(NULL, 8, &fast, encoded), -1);
    free(long_password);

    fm_password_params_t bad = fast;
    bad.memory_kib = 7; /* below 8 KiB per lane */
    assert_int_equal(fm_password_hash("password", 8, &bad, encoded), -1);
    bad = fast;
    bad.parallelism = 0;
    assert_int_equal(fm_password_hash("password", 8, &bad, encoded), -1);
    bad = fast;
    bad.iterations = 0;
    assert_int_equal(fm_password_hash("password", 8, &bad, encoded), -1);
    bad = fast;
    bad.memory_kib = FM_PASSWORD_MAX_MEMORY_KIB + 1;
    assert_int_equal(fm_password_hash("password", 8, &bad, encoded), -1);
    bad = fast;
    bad.parallelism = FM_PASSWORD_MAX_PARALLELISM + 1;
    bad.memory_kib = 8 * bad.parallelism;
    assert_int_equal(fm_password_hash("password", 8, &bad, encoded), -1);
}

static void test_needs_rehash(void **state)
{
    char current[FM_PASSWORD_HASH_BUF_SIZE], cheap[FM_PASSWORD_HASH_BUF_SIZE];
    assert_int_equal(fm_password_hash("password1", 9, NULL, current), 0);
    assert_int_equal(fm_password_hash("password1", 9, &fast, cheap), 0);
    fm_password_params_t defaults = fm_password_default_params();

    assert_int_equal(fm_password_needs_rehash(current, NULL), 0);
    assert_int_equal(fm_password_needs_rehash(current, &defaults), 0);
    assert_int_equal(fm_password_needs_rehash(cheap, NULL), 1);
    assert_int_equal(fm_password_needs_rehash(cheap, &fast), 0);

    fm_password_params_t stronger = defaults;
    stronger.memory_kib = 47104;
    assert_int_equal(fm_password_needs_rehash(current, &stronger), 1);
    stronger = defaults;
    stronger.iterations = 3;
    assert_int_equal(fm_password_needs_rehash(current, &stronger), 1);
    stronger = defaults;
    stronger.parallelism = 2;
    assert_int_equal(fm_password_needs_rehash(current, &stronger), 1);

    /* Strings we would not write: 8-byte salt, other variants and versions, garbage. */
    fm_password_params_t reference_params = {.memory_kib = 65536, .iterations = 2, .parallelism = 1};
    assert_int_equal(fm_password_needs_rehash(reference_m65536, &reference_params), 1);
    assert_int_equal(fm_password_needs_rehash("$argon2i$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$abc", NULL), 1);
    assert_int_equal(fm_password_needs_rehash("$argon2id$v=16$m=19456,t=2,p=1$c29tZXNhbHQ$abc", NULL), 1);
    assert_int_equal(fm_password_needs_rehash("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", NULL), 1);
    assert_int_equal(fm_password_needs_rehash("", NULL), 1);
    assert_int_equal(fm_password_needs_rehash(NULL, NULL), 1);
}

/* Stored strings are input too: a planted or corrupted row must fail fast, not allocate gigabytes. */
static void test_verify_refuses_hostile_strings(void **state)
{
    static const char *const refused[] = {
        "$argon2id$v=19$m=4294967295,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
        "$argon2id$v=19$m=65536,t=4294967295,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
        "$argon2id$v=19$m=65536,t=2,p=255$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
        "$argon2id$v=19$m=99999999999,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
        "$argon2id$v=19$m=065536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
        "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc$",
        "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc ",
        "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ",
        "$argon2id$v=19$m=65536,t=2,p=1$$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
        /* argon2i, correct for "password": only argon2id is accepted. */
        "$argon2i$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA",
        "",
        "plaintext-password",
    };
    double start = seconds_now();
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        if (fm_password_verify(refused[i], "password", 8) != -1)
            fail_msg("accepted %s", refused[i]);
    }
    assert_int_equal(fm_password_verify(NULL, "password", 8), -1);
    /* None of them reached argon2 with their huge costs. */
    assert_true(seconds_now() - start < 1.0);

    char too_long[400];
    memset(too_long, 'A', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    memcpy(too_long, "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$", 41);
    assert_int_equal(fm_password_verify(too_long, "password", 8), -1);
}

static void test_reference_vectors(void **state)
{
    /* phc-winner-argon2 reference: argon2id, t=2, m=65536, p=1, "password", "somesalt". */
    static const uint8_t expected_raw[32] = {0x09, 0x31, 0x61, 0x15, 0xd5, 0xcf, 0x24, 0xed, 0x5a, 0x15, 0xa3,
                                             0x1a, 0x3b, 0xa3, 0x26, 0xe5, 0xcf, 0x32, 0xed, 0xc2, 0x47, 0x02,
                                             0x98, 0x7c, 0x02, 0xb6, 0x56, 0x6f, 0x61, 0x91, 0x3c, 0xf7};
    uint8_t raw[32];
    char encoded[FM_PASSWORD_HASH_BUF_SIZE];
    assert_int_equal(argon2id_hash_raw(2, 65536, 1, "password", 8, "somesalt", 8, raw, sizeof raw), ARGON2_OK);
    assert_memory_equal(raw, expected_raw, sizeof raw);
    assert_int_equal(argon2id_hash_encoded(2, 65536, 1, "password", 8, "somesalt", 8, 32, encoded, sizeof encoded),
                     ARGON2_OK);
    assert_string_equal(encoded, reference_m65536);

    /* Our verify accepts strings minted elsewhere, whatever their parameters and salt length. */
    assert_int_equal(fm_password_verify(reference_m65536, "password", 8), 0);
    assert_int_equal(fm_password_verify(reference_m65536, "passwore", 8), -1);
    assert_int_equal(fm_password_verify(reference_m256, "password", 8), 0);
    assert_int_equal(fm_password_verify(reference_m256, "Password", 8), -1);

    /* RFC 9106 §5.3: argon2id with secret and associated data, 4 lanes, 32 KiB, 3 passes. */
    static const uint8_t rfc_tag[32] = {0x0d, 0x64, 0x0d, 0xf5, 0x8d, 0x78, 0x76, 0x6c, 0x08, 0xc0, 0x37,
                                        0xa3, 0x4a, 0x8b, 0x53, 0xc9, 0xd0, 0x1e, 0xf0, 0x45, 0x2d, 0x75,
                                        0xb6, 0x5e, 0xb5, 0x25, 0x20, 0xe9, 0x6b, 0x01, 0xe6, 0x59};
    uint8_t password[32], salt[16], secret[8], ad[12], tag[32];
    memset(password, 0x01, sizeof password);
    memset(salt, 0x02, sizeof salt);
    memset(secret, 0x03, sizeof secret);
    memset(ad, 0x04, sizeof ad);
    argon2_context context = {
        .out = tag,
        .outlen = sizeof tag,
        .pwd = password,
        .pwdlen = sizeof password,
        .salt = salt,
        .saltlen = sizeof salt,
        .secret = secret,
        .secretlen = sizeof secret,
        .ad = ad,
        .adlen = sizeof ad,
        .t_cost = 3,
        .m_cost = 32,
        .lanes = 4,
        .threads = 1,
        .version = ARGON2_VERSION_13,
        .flags = ARGON2_DEFAULT_FLAGS,
    };
    assert_int_equal(argon2_ctx(&context, Argon2_id), ARGON2_OK);
    assert_memory_equal(tag, rfc_tag, sizeof tag);
}

/* The cost a login pays; printed so a regression in the parameters or the library is visible in CI logs. */
static void test_hash_cost_at_defaults(void **state)
{
    char encoded[FM_PASSWORD_HASH_BUF_SIZE];
    const int rounds = 5;
    double start = seconds_now();
    for (int i = 0; i < rounds; i++)
        assert_int_equal(fm_password_hash("timing-password", 15, NULL, encoded), 0);
    double hash_ms = (seconds_now() - start) / rounds * 1e3;
    start = seconds_now();
    for (int i = 0; i < rounds; i++)
        assert_int_equal(fm_password_verify(encoded, "timing-password", 15), 0);
    double verify_ms = (seconds_now() - start) / rounds * 1e3;
    printf("  argon2id m=%u KiB t=%u p=%u: %.1f ms per hash, %.1f ms per verify\n", FM_PASSWORD_DEFAULT_MEMORY_KIB,
           FM_PASSWORD_DEFAULT_ITERATIONS, FM_PASSWORD_DEFAULT_PARALLELISM, hash_ms, verify_ms);
}

static void test_token_random(void **state)
{
    char token[FM_TOKEN_MAX_LEN + 1], other[FM_TOKEN_MAX_LEN + 1];
    assert_int_equal(fm_token_random(token, sizeof token, FM_TOKEN_DEFAULT_BYTES), 0);
    assert_int_equal(strlen(token), 43);
    uint8_t bytes[64];
    size_t len = 0;
    assert_int_equal(fm_b64url_decode(token, strlen(token), bytes, sizeof bytes, &len), 0);
    assert_int_equal(len, FM_TOKEN_DEFAULT_BYTES);
    assert_int_equal(fm_token_random(other, sizeof other, FM_TOKEN_DEFAULT_BYTES), 0);
    assert_string_not_equal(token, other);

    assert_int_equal(fm_token_random(token, sizeof token, FM_TOKEN_MAX_BYTES), 0);
    assert_int_equal(strlen(token), FM_TOKEN_MAX_LEN);
    assert_int_equal(fm_token_random(token, sizeof token, FM_TOKEN_MIN_BYTES - 1), -1);
    assert_int_equal(fm_token_random(token, sizeof token, FM_TOKEN_MAX_BYTES + 1), -1);
    assert_int_equal(fm_token_random(token, 43, FM_TOKEN_DEFAULT_BYTES), -1); /* no room for the NUL */
}

static void test_token_hash(void **state)
{
    char hex[FM_TOKEN_HASH_BUF_SIZE];
    /* FIPS 180-2 appendix B.1. */
    assert_int_equal(fm_token_hash("abc", 3, hex), 0);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    char token[FM_TOKEN_MAX_LEN + 2], first[FM_TOKEN_HASH_BUF_SIZE];
    assert_int_equal(fm_token_random(token, sizeof token, FM_TOKEN_DEFAULT_BYTES), 0);
    assert_int_equal(fm_token_hash(token, strlen(token), first), 0);
    assert_int_equal(fm_token_hash(token, strlen(token), hex), 0);
    assert_string_equal(first, hex); /* deterministic: it is a lookup key */
    assert_int_equal(strlen(hex), 64);
    token[0] = token[0] == 'A' ? 'B' : 'A';
    assert_int_equal(fm_token_hash(token, strlen(token), hex), 0);
    assert_string_not_equal(first, hex);

    assert_int_equal(fm_token_hash("", 0, hex), -1);
    memset(token, 'a', FM_TOKEN_MAX_LEN + 1);
    assert_int_equal(fm_token_hash(token, FM_TOKEN_MAX_LEN, hex), 0);
    assert_int_equal(fm_token_hash(token, FM_TOKEN_MAX_LEN + 1, hex), -1);
}

int main(void)
{
    // clang-format off
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_params),
        cmocka_unit_test(test_hash_verify_and_mismatch),
        cmocka_unit_test(test_phc_string_format),
        cmocka_unit_test(test_length_and_param_bounds),
        cmocka_unit_test(test_needs_rehash),
        cmocka_unit_test(test_verify_refuses_hostile_strings),
        cmocka_unit_test(test_reference_vectors),
        cmocka_unit_test(test_hash_cost_at_defaults),
        cmocka_unit_test(test_token_random),
        cmocka_unit_test(test_token_hash),
    };
    // clang-format on
    return cmocka_run_group_tests(tests, NULL, NULL);
}
