/*
 * Tests for the per-thread memo of verified tokens in common/jwt.c (fm_jwt_memo_t, fm_jwt_verify_memo): a token
 * verified through the memo gets exactly what fm_jwt_verify gives it, and test_verify_cost prints what a plain and
 * a remembered verification cost. Issuing and verification themselves are tested in test_jwt.c.
 */
#include "jwt_test_keys.h"

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- memo of verified tokens ------------------------------------------------------------------------------ */

static void memo_expect(const fm_jwt_verifier_t *verifier, fm_jwt_memo_t *memo, const char *token, int64_t now,
                        fm_jwt_error_t expected, const char *what)
{
    fm_jwt_claims_t claims, plain;
    memset(&claims, 0x5a, sizeof claims);
    int rc = fm_jwt_verify_memo(verifier, memo, token, strlen(token), now, &claims);
    if (claims.error != expected)
        fail_msg("%s: got %s, want %s", what, fm_jwt_error_code(claims.error), fm_jwt_error_code(expected));
    assert_int_equal(rc, expected == FM_JWT_OK ? 0 : -1);
    /* Whatever the memo answers, fm_jwt_verify answers the same, claims included. */
    assert_int_equal(fm_jwt_verify(verifier, token, strlen(token), now, &plain), rc);
    assert_memory_equal(&plain, &claims, sizeof claims);
}

static void expect_stats(const fm_jwt_memo_t *memo, uint64_t want_hits, uint64_t want_misses)
{
    uint64_t hits, misses;
    fm_jwt_memo_stats(memo, &hits, &misses);
    assert_int_equal(hits, want_hits);
    assert_int_equal(misses, want_misses);
}

static void test_memo(void **state)
{
    fm_jwt_verifier_t *verifier = make_verifier(0, NULL);
    fm_jwt_memo_t *memo = fm_jwt_memo_new();
    assert_non_null(verifier);
    assert_non_null(memo);
    fm_jwt_issue_t issue = {OUR_ISS, "1234", "sess-abc", FM_JWT_ROLE_MEMBER, NOW, 900, NULL};
    char token[FM_JWT_ISSUE_BUF_SIZE];
    assert_int_equal(fm_jwt_issue_hs256((const uint8_t *)secret, SECRET_LEN, &issue, token, sizeof token), 0);

    memo_expect(verifier, memo, token, NOW, FM_JWT_OK, "first use");
    expect_stats(memo, 0, 1);
    memo_expect(verifier, memo, token, NOW + 1, FM_JWT_OK, "second use");
    expect_stats(memo, 1, 1);
    /* A remembered token is still held to its times. */
    memo_expect(verifier, memo, token, NOW + 900 + FM_JWT_LEEWAY_SECONDS, FM_JWT_ERR_EXPIRED, "expired, remembered");
    memo_expect(verifier, memo, token, NOW - FM_JWT_LEEWAY_SECONDS - 1, FM_JWT_ERR_NOT_YET_VALID, "before nbf");
    expect_stats(memo, 3, 1);

    /* The same length with one byte changed (the signature's last character) is not the remembered token. */
    char tampered[FM_JWT_ISSUE_BUF_SIZE];
    strcpy(tampered, token);
    size_t len = strlen(tampered);
    tampered[len - 2] = tampered[len - 2] == 'A' ? 'B' : 'A';
    memo_expect(verifier, memo, tampered, NOW, FM_JWT_ERR_BAD_SIGNATURE, "tampered signature");
    memo_expect(verifier, memo, tampered, NOW, FM_JWT_ERR_BAD_SIGNATURE, "tampered again (refusals not kept)");
    expect_stats(memo, 3, 3);
    /* A prefix of it is neither. */
    char prefix[FM_JWT_ISSUE_BUF_SIZE];
    memcpy(prefix, token, len - 1);
    prefix[len - 1] = '\0';
    memo_expect(verifier, memo, prefix, NOW, FM_JWT_ERR_BAD_SIGNATURE, "prefix");

    /* Another verifier (another secret) does not inherit what the first one accepted. */
    static const char other_secret[] = "another-secret-of-at-least-32-bytes-long!!";
    fm_jwt_verifier_config_t other_config = {
        .hs256_secret = (const uint8_t *)other_secret, .hs256_secret_len = sizeof other_secret - 1, .issuer = OUR_ISS};
    fm_jwt_verifier_t *other = fm_jwt_verifier_new(&other_config);
    assert_non_null(other);
    memo_expect(other, memo, token, NOW, FM_JWT_ERR_BAD_SIGNATURE, "other verifier");
    memo_expect(verifier, memo, token, NOW, FM_JWT_OK, "first verifier again");
    expect_stats(memo, 3, 6);

    /* Many tokens through 64 slots: each answers its own claims, whatever it evicted. */
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 300; i++) {
            char sub[24], many[FM_JWT_ISSUE_BUF_SIZE];
            snprintf(sub, sizeof sub, "user-%d", i);
            fm_jwt_issue_t each = {OUR_ISS, sub, "s", FM_JWT_ROLE_VIEWER, NOW, 60, sub};
            assert_int_equal(fm_jwt_issue_hs256((const uint8_t *)secret, SECRET_LEN, &each, many, sizeof many), 0);
            fm_jwt_claims_t claims;
            assert_int_equal(fm_jwt_verify_memo(verifier, memo, many, strlen(many), NOW, &claims), 0);
            assert_string_equal(claims.sub, sub);
        }
    }

    /* A token longer than the memo keeps is verified every time, and still right. */
    char longest[FM_JWT_CLAIM_MAX + 1];
    memset(longest, 'x', FM_JWT_CLAIM_MAX);
    longest[FM_JWT_CLAIM_MAX] = '\0';
    fm_jwt_issue_t big = {OUR_ISS, longest, longest, FM_JWT_ROLE_ADMIN, NOW, 60, longest};
    char big_token[FM_JWT_ISSUE_BUF_SIZE];
    assert_int_equal(fm_jwt_issue_hs256((const uint8_t *)secret, SECRET_LEN, &big, big_token, sizeof big_token), 0);
    assert_true(strlen(big_token) > 1024);
    uint64_t hits_before, misses_before, hits, misses;
    fm_jwt_memo_stats(memo, &hits_before, &misses_before);
    memo_expect(verifier, memo, big_token, NOW, FM_JWT_OK, "long token");
    memo_expect(verifier, memo, big_token, NOW, FM_JWT_OK, "long token again");
    fm_jwt_memo_stats(memo, &hits, &misses);
    assert_int_equal(hits, hits_before);
    assert_int_equal(misses, misses_before + 2);

    /* Provider tokens (PyJWT's RS256/ES256) give through the memo what they give without it. */
    load_vectors();
    memo_expect(vectors.rs, memo, case_token("rs_ok"), vectors.now, FM_JWT_OK, "PyJWT RS256");
    memo_expect(vectors.rs, memo, case_token("rs_ok"), vectors.now, FM_JWT_OK, "PyJWT RS256, remembered");
    memo_expect(vectors.es, memo, case_token("es_ok"), vectors.now, FM_JWT_OK, "PyJWT ES256");
    memo_expect(vectors.es, memo, case_token("es_ok"), vectors.now, FM_JWT_OK, "PyJWT ES256, remembered");

    fm_jwt_memo_free(memo);
    fm_jwt_memo_free(NULL);
    fm_jwt_verifier_free(other);
    fm_jwt_verifier_free(verifier);
}

static void test_verify_cost(void **state)
{
    load_vectors();
    static const char *const names[] = {"hs_ok", "rs_ok", "es_ok"};
    for (size_t n = 0; n < 3; n++) {
        const char *token = case_token(names[n]);
        const fm_jwt_verifier_t *verifier = n == 2 ? vectors.es : vectors.rs;
        const int rounds = 2000;
        double start = seconds_now();
        for (int i = 0; i < rounds; i++) {
            fm_jwt_claims_t claims;
            assert_int_equal(fm_jwt_verify(verifier, token, strlen(token), vectors.now, &claims), 0);
        }
        printf("  verify %s: %.1f us per token\n", names[n], (seconds_now() - start) / rounds * 1e6);
        fm_jwt_memo_t *memo = fm_jwt_memo_new();
        start = seconds_now();
        for (int i = 0; i < rounds; i++) {
            fm_jwt_claims_t claims;
            assert_int_equal(fm_jwt_verify_memo(verifier, memo, token, strlen(token), vectors.now, &claims), 0);
        }
        printf("  verify %s through a memo: %.2f us per token\n", names[n], (seconds_now() - start) / rounds * 1e6);
        fm_jwt_memo_free(memo);
    }
}

int main(void)
{
    // clang-format off
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memo),
        cmocka_unit_test(test_verify_cost),
    };
    // clang-format on
    return cmocka_run_group_tests(tests, NULL, teardown_group);
}
