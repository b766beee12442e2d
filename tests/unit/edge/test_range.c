/* edge/range.c: the Range header of /f/ and /p/ (RFC 9110 §14.1.2 and its examples), overflowing numbers included. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "edge.h"

/* What `value` selects of `size` bytes; first and last are -1 unless one range is selected. */
static fm_edge_range_t parse(const char *value, uint64_t size, long long *first, long long *last)
{
    uint64_t a = 0, b = 0;
    fm_edge_range_t kind = fm_edge_range_parse(value, strlen(value), size, &a, &b);
    *first = kind == FM_EDGE_RANGE_ONE ? (long long)a : -1;
    *last = kind == FM_EDGE_RANGE_ONE ? (long long)b : -1;
    return kind;
}

#define EXPECT_ONE(value, size, want_first, want_last)                                                                 \
    do {                                                                                                               \
        long long f_, l_;                                                                                              \
        assert_int_equal(parse(value, size, &f_, &l_), FM_EDGE_RANGE_ONE);                                             \
        assert_int_equal(f_, want_first);                                                                              \
        assert_int_equal(l_, want_last);                                                                               \
    } while (0)

#define EXPECT_KIND(value, size, kind)                                                                                 \
    do {                                                                                                               \
        long long f_, l_;                                                                                              \
        assert_int_equal(parse(value, size, &f_, &l_), kind);                                                          \
    } while (0)

/* RFC 9110 §14.1.2's examples, on a representation of 10000 bytes. */
static void test_rfc_examples(void **state)
{
    EXPECT_ONE("bytes=0-499", 10000, 0, 499);
    EXPECT_ONE("bytes=500-999", 10000, 500, 999);
    EXPECT_ONE("bytes=-500", 10000, 9500, 9999);
    EXPECT_ONE("bytes=9500-", 10000, 9500, 9999);
    EXPECT_ONE("bytes=0-0", 10000, 0, 0);
    EXPECT_ONE("bytes=-1", 10000, 9999, 9999);
}

/* The report: the digit loop wrapped after its clamp (0-99…9 → 0-3999, -99…9 → the last 3 bytes). */
static void test_overflowing_numbers_never_wrap(void **state)
{
    EXPECT_ONE("bytes=0-99999999999999999999999", 6338, 0, 6337);
    EXPECT_ONE("bytes=100-99999999999999999999999", 1024, 100, 1023);
    EXPECT_ONE("bytes=-99999999999999999999999", 6338, 0, 6337);
    EXPECT_ONE("bytes=-18446744073709551616", 6338, 0, 6337); /* 2^64 */
    EXPECT_ONE("bytes=-18446744073709551615", 6338, 0, 6337); /* 2^64 - 1 */
    EXPECT_ONE("bytes=0-18446744073709551619", 6338, 0, 6337);
    EXPECT_KIND("bytes=99999999999999999999999-", 6338, FM_EDGE_RANGE_UNSATISFIABLE);
    EXPECT_KIND("bytes=18446744073709551616-18446744073709551617", 6338, FM_EDGE_RANGE_UNSATISFIABLE);
    /* Both numbers overflow: "last < first" is still seen (invalid, ignored), by their digits. */
    EXPECT_KIND("bytes=99999999999999999999999-99999999999999999999998", 6338, FM_EDGE_RANGE_NONE);
    EXPECT_KIND("bytes=99999999999999999999999-99999999999999999999999", 6338, FM_EDGE_RANGE_UNSATISFIABLE);
    EXPECT_KIND("bytes=18446744073709551616-9", 6338, FM_EDGE_RANGE_NONE);
    /* Leading zeros are the same number, not an overflow. */
    EXPECT_ONE("bytes=000000000000000000000000000010-000000000000000000000000000019", 100, 10, 19);
    EXPECT_KIND("bytes=000000000000000000000000000020-000000000000000000000000000019", 100, FM_EDGE_RANGE_NONE);
}

static void test_clamps_and_unsatisfiable(void **state)
{
    EXPECT_ONE("bytes=1000-", 1024, 1000, 1023);
    EXPECT_ONE("bytes=1000-5000", 1024, 1000, 1023);
    EXPECT_ONE("bytes=-2000", 1024, 0, 1023);
    EXPECT_ONE("bytes=1023-1023", 1024, 1023, 1023);
    EXPECT_KIND("bytes=1024-", 1024, FM_EDGE_RANGE_UNSATISFIABLE);
    EXPECT_KIND("bytes=2000-3000", 1024, FM_EDGE_RANGE_UNSATISFIABLE);
    EXPECT_KIND("bytes=-0", 1024, FM_EDGE_RANGE_UNSATISFIABLE);
    EXPECT_KIND("bytes=-000", 1024, FM_EDGE_RANGE_UNSATISFIABLE);
    /* An empty object: no int-range is satisfiable; a suffix is, but names no byte: the (empty) whole. */
    EXPECT_KIND("bytes=0-", 0, FM_EDGE_RANGE_UNSATISFIABLE);
    EXPECT_KIND("bytes=0-0", 0, FM_EDGE_RANGE_UNSATISFIABLE);
    EXPECT_KIND("bytes=-5", 0, FM_EDGE_RANGE_NONE);
    EXPECT_KIND("bytes=-0", 0, FM_EDGE_RANGE_UNSATISFIABLE);
    /* Objects at the top of the 64-bit range. */
    EXPECT_KIND("bytes=18446744073709551614-", UINT64_MAX, FM_EDGE_RANGE_ONE);
    EXPECT_KIND("bytes=18446744073709551615-", UINT64_MAX, FM_EDGE_RANGE_UNSATISFIABLE);
}

/* Ignored (the whole object): another unit, lists, invalid syntax. */
static void test_ignored(void **state)
{
    static const char *const ignored[] = {
        "",           "bytes=",      "bytes=-",      "bytes=abc",     "bytes=0-1,5-6", "bytes=0-1,", "bytes=,0-1",
        "items=0-1",  "bytes 0-1",   "bytes=5-4",    "bytes=1-0",     "bytes=0--1",    "bytes=+1-2", "bytes=0x10-20",
        "bytes=1.5-", "bytes=0-1a",  "bytes=0 -1",   "bytes=0- 1",    "bytes==0-1",    "bytes=--5",  "bytes",
        "bytes=-5-",  "bytes=1-2-3", "bytes=\x00-1", "bytes=0-1\r\n",
    };
    for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); ++i) {
        uint64_t a = 7, b = 7;
        assert_int_equal(fm_edge_range_parse(ignored[i], strlen(ignored[i]), 1024, &a, &b), FM_EDGE_RANGE_NONE);
        assert_true(a == 7 && b == 7); /* untouched */
    }
    /* "bytes=\0-1" with its NUL: the length is the header's, not strlen's. */
    uint64_t a, b;
    assert_int_equal(fm_edge_range_parse("bytes=\0-1", 9, 1024, &a, &b), FM_EDGE_RANGE_NONE);
}

/* The unit is case-insensitive (§14.1); optional whitespace around the value and after '=' is tolerated. */
static void test_unit_case_and_whitespace(void **state)
{
    EXPECT_ONE("BYTES=0-9", 100, 0, 9);
    EXPECT_ONE("Bytes=-10", 100, 90, 99);
    EXPECT_ONE("  bytes=0-9\t", 100, 0, 9);
    EXPECT_ONE("bytes= 5-9", 100, 5, 9);
}

/* The spec alone (the cold-miss choice reads it before the size is known). */
static void test_spec(void **state)
{
    fm_edge_range_spec_t spec;
    assert_int_equal(fm_edge_range_spec("bytes=10-19", 11, &spec), 1);
    assert_false(spec.suffix);
    assert_true(spec.first == 10 && spec.last == 19);
    assert_int_equal(fm_edge_range_spec("bytes=10-", 9, &spec), 1);
    assert_true(spec.first == 10 && spec.last == UINT64_MAX);
    assert_int_equal(fm_edge_range_spec("bytes=-99999999999999999999999", 30, &spec), 1);
    assert_true(spec.suffix && spec.length == UINT64_MAX);
    assert_int_equal(fm_edge_range_spec("bytes=0-1,2-3", 13, &spec), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_examples),
        cmocka_unit_test(test_overflowing_numbers_never_wrap),
        cmocka_unit_test(test_clamps_and_unsatisfiable),
        cmocka_unit_test(test_ignored),
        cmocka_unit_test(test_unit_case_and_whitespace),
        cmocka_unit_test(test_spec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
