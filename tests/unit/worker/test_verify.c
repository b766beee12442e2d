/*
 * Tests of step_verify and the worker's one SHA-256 hex rule (lambda-workers/verify.c, worker.h
 * fm_sha256_hex_valid): lowercase hex as we store and compare it; a claim in upper case is lowered before the check,
 * so step_verify answers the same for any case of the same hash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "worker.h"

#define LOWER "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define UPPER "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"
#define OTHER "1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void test_sha256_hex_rule_is_lowercase(void **state)
{
    (void)state;
    assert_true(fm_sha256_hex_valid(LOWER));
    assert_false(fm_sha256_hex_valid(UPPER));
    assert_false(fm_sha256_hex_valid(NULL));
    assert_false(fm_sha256_hex_valid(""));
    assert_false(fm_sha256_hex_valid(LOWER "0"));                                            /* 65 digits */
    assert_false(fm_sha256_hex_valid("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde")); /* 63 */
    assert_false(fm_sha256_hex_valid("g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
}

static fm_step_rc verify(const char *content, const char *claimed, fm_job_t *job)
{
    memset(job, 0, sizeof(*job));
    snprintf(job->sha256, sizeof(job->sha256), "%s", content);
    snprintf(job->claimed_sha256, sizeof(job->claimed_sha256), "%s", claimed);
    return step_verify(job);
}

static void test_verify_matches_a_claim_in_either_case(void **state)
{
    (void)state;
    fm_job_t job;
    assert_int_equal(verify(LOWER, LOWER, &job), FM_STEP_OK);
    assert_int_equal(verify(LOWER, UPPER, &job), FM_STEP_OK);
    assert_string_equal(job.reason, "");
}

static void test_verify_quarantines_another_or_a_malformed_claim(void **state)
{
    (void)state;
    fm_job_t job;
    assert_int_equal(verify(LOWER, OTHER, &job), FM_STEP_QUARANTINE);
    assert_non_null(strstr(job.reason, "sha256 mismatch"));
    assert_int_equal(verify(LOWER, "", &job), FM_STEP_QUARANTINE);
    assert_non_null(strstr(job.reason, "(none)"));
    assert_int_equal(verify(LOWER, "xyz", &job), FM_STEP_QUARANTINE);
}

static void test_verify_fails_without_a_content_hash(void **state)
{
    (void)state;
    fm_job_t job;
    assert_int_equal(verify("", LOWER, &job), FM_STEP_FAIL);
    assert_non_null(strstr(job.reason, "no content hash"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_hex_rule_is_lowercase),
        cmocka_unit_test(test_verify_matches_a_claim_in_either_case),
        cmocka_unit_test(test_verify_quarantines_another_or_a_malformed_claim),
        cmocka_unit_test(test_verify_fails_without_a_content_hash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
