/* common/qs.c: the hex-digit reader, the percent encoder and decoder, and the query-parameter readers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qs.h"

#define Q(literal) h2o_iovec_init(literal, sizeof(literal) - 1)

/* fm_qs_get into a buffer of `size` bytes; the text decoded (or what the buffer holds) in out. */
static int get(const char *query, const char *name, int flags, char *out, size_t size)
{
    return fm_qs_get(h2o_iovec_init(query, strlen(query)), name, flags, out, size, NULL);
}

static void test_hex_digit(void **state)
{
    const char digits[] = "0123456789abcdefABCDEF";
    const int values[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 10, 11, 12, 13, 14, 15};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); ++i)
        assert_int_equal(fm_hex_digit(digits[i]), values[i]);
    for (int c = -128; c < 128; ++c)
        if (strchr(digits, c) == NULL || c == 0)
            assert_int_equal(fm_hex_digit((char)c), -1);
    assert_int_equal(fm_pct_escape("%2F", 3), '/');
    assert_int_equal(fm_pct_escape("%2f", 3), '/');
    assert_int_equal(fm_pct_escape("%2F", 2), -1); /* the bound is what can be read, not the text */
    assert_int_equal(fm_pct_escape("%G0", 3), -1);
    assert_int_equal(fm_pct_escape("%0G", 3), -1);
}

static void test_encode_rfc3986(void **state)
{
    char out[128];
    const char in[] = "a b+c/d~e-f_g.h!*'()é";
    *fm_pct_encode(out, in, strlen(in), 0) = '\0';
    assert_string_equal(out, "a%20b%2Bc%2Fd~e-f_g.h%21%2A%27%28%29%C3%A9"); /* SigV4 UriEncode: sub-delims escaped */
    *fm_pct_encode(out, in, strlen(in), FM_PCT_KEEP_SLASH) = '\0';
    assert_string_equal(out, "a%20b%2Bc/d~e-f_g.h%21%2A%27%28%29%C3%A9");
    /* at most 3 bytes a byte, nothing written past them */
    memset(out, 'x', sizeof(out));
    char *end = fm_pct_encode(out, "\x00\xff", 2, 0);
    assert_int_equal(end - out, 6);
    assert_memory_equal(out, "%00%FFx", 7);
}

static void test_decode_form_and_path(void **state)
{
    char out[32];
    size_t len = 99;
    assert_int_equal(fm_pct_decode("a+b%2Bc%20d", 11, out, sizeof(out), &len, FM_PCT_FORM), FM_PCT_OK);
    assert_string_equal(out, "a b+c d");
    assert_int_equal(len, 7);
    /* a URL path: '+' is a '+' */
    assert_int_equal(fm_pct_decode("a+b%2Bc", 7, out, sizeof(out), &len, 0), FM_PCT_OK);
    assert_string_equal(out, "a+b+c");
    assert_int_equal(fm_pct_decode("", 0, out, sizeof(out), &len, 0), FM_PCT_OK);
    assert_string_equal(out, "");
    assert_int_equal(len, 0);
}

static void test_decode_problems_are_distinct(void **state)
{
    char out[8];
    /* bad and truncated escapes, including one cut by the length given, not by a NUL */
    const char *bad[] = {"%", "%4", "a%", "%zz", "%4g", "%g4", "ab%2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
        assert_int_equal(fm_pct_decode(bad[i], strlen(bad[i]), out, sizeof(out), NULL, FM_PCT_FORM), FM_PCT_BAD_ESCAPE);
    assert_int_equal(fm_pct_decode("%41%42", 5, out, sizeof(out), NULL, 0), FM_PCT_BAD_ESCAPE);
    assert_int_equal(fm_pct_decode("a%00b", 5, out, sizeof(out), NULL, 0), FM_PCT_NUL);
    /* out holds 7 bytes and the NUL */
    assert_int_equal(fm_pct_decode("1234567", 7, out, sizeof(out), NULL, 0), FM_PCT_OK);
    assert_int_equal(fm_pct_decode("12345678", 8, out, sizeof(out), NULL, 0), FM_PCT_TOO_LONG);
    assert_int_equal(fm_pct_decode("123456%37", 9, out, sizeof(out), NULL, 0), FM_PCT_OK);
    assert_int_equal(fm_pct_decode("1234567%38", 10, out, sizeof(out), NULL, 0), FM_PCT_TOO_LONG);
    assert_int_equal(strlen(out), 7); /* NUL-terminated even when refused */
    /* the first problem from the left is the one reported */
    assert_int_equal(fm_pct_decode("%zz%00", 6, out, sizeof(out), NULL, 0), FM_PCT_BAD_ESCAPE);
    assert_int_equal(fm_pct_decode("%00%zz", 6, out, sizeof(out), NULL, 0), FM_PCT_NUL);
    assert_int_equal(fm_pct_decode("x", 1, out, 0, NULL, 0), FM_PCT_TOO_LONG);
}

static void test_round_trips(void **state)
{
    unsigned char bytes[255];
    for (size_t i = 0; i < sizeof(bytes); ++i)
        bytes[i] = (unsigned char)(i + 1); /* every byte but NUL */
    char encoded[3 * sizeof(bytes) + 1], decoded[sizeof(bytes) + 1];
    for (int flags = 0; flags <= FM_PCT_KEEP_SLASH; ++flags) {
        char *end = fm_pct_encode(encoded, (const char *)bytes, sizeof(bytes), flags);
        size_t len = 0;
        /* what we encode never holds a '+', so either decoder gives the bytes back */
        assert_null(memchr(encoded, '+', (size_t)(end - encoded)));
        for (int form = 0; form <= FM_PCT_FORM; form += FM_PCT_FORM) {
            assert_int_equal(fm_pct_decode(encoded, (size_t)(end - encoded), decoded, sizeof(decoded), &len, form),
                             FM_PCT_OK);
            assert_int_equal(len, sizeof(bytes));
            assert_memory_equal(decoded, bytes, sizeof(bytes));
        }
    }
}

static void test_query_get_decodes_names_and_values(void **state)
{
    char out[16];
    assert_int_equal(get("filename=a+b%21&type=text%2Fplain", "filename", FM_PCT_FORM, out, sizeof(out)), FM_PCT_OK);
    assert_string_equal(out, "a b!");
    assert_int_equal(get("filename=a+b%21&type=text%2Fplain", "type", FM_PCT_FORM, out, sizeof(out)), FM_PCT_OK);
    assert_string_equal(out, "text/plain");
    /* Uppy's URLSearchParams writes metadata[size] as metadata%5Bsize%5D */
    assert_int_equal(get("metadata%5Bsize%5D=12", "metadata[size]", FM_PCT_FORM, out, sizeof(out)), FM_PCT_OK);
    assert_string_equal(out, "12");
    assert_int_equal(get("metadata[size]=12", "metadata[size]", FM_PCT_FORM, out, sizeof(out)), FM_PCT_OK);
    /* without FM_PCT_FORM a '+' stays */
    assert_int_equal(get("a=x+y", "a", 0, out, sizeof(out)), FM_PCT_OK);
    assert_string_equal(out, "x+y");
}

static void test_query_get_reports_each_case(void **state)
{
    char out[8];
    assert_int_equal(get("", "key", FM_PCT_FORM, out, sizeof(out)), FM_QS_ABSENT);
    assert_int_equal(get("keys=1&ke=2&xkey=3", "key", FM_PCT_FORM, out, sizeof(out)), FM_QS_ABSENT);
    assert_int_equal(get("key", "key", FM_PCT_FORM, out, sizeof(out)), FM_QS_ABSENT); /* no '=': not a value */
    assert_int_equal(get("key=", "key", FM_PCT_FORM, out, sizeof(out)), FM_QS_EMPTY);
    assert_string_equal(out, "");
    assert_int_equal(get("key=%4", "key", FM_PCT_FORM, out, sizeof(out)), FM_PCT_BAD_ESCAPE);
    assert_int_equal(get("key=%zz", "key", FM_PCT_FORM, out, sizeof(out)), FM_PCT_BAD_ESCAPE);
    assert_int_equal(get("key=a%00", "key", FM_PCT_FORM, out, sizeof(out)), FM_PCT_NUL);
    assert_int_equal(get("key=1234567", "key", FM_PCT_FORM, out, sizeof(out)), FM_PCT_OK);
    assert_int_equal(get("key=12345678", "key", FM_PCT_FORM, out, sizeof(out)), FM_PCT_TOO_LONG);
    /* repeats: the first with a '=' counts, even when empty */
    assert_int_equal(get("key=1&key=2", "key", FM_PCT_FORM, out, sizeof(out)), FM_PCT_OK);
    assert_string_equal(out, "1");
    assert_int_equal(get("key&key=2", "key", FM_PCT_FORM, out, sizeof(out)), FM_PCT_OK);
    assert_string_equal(out, "2");
    assert_int_equal(get("key=&key=2", "key", FM_PCT_FORM, out, sizeof(out)), FM_QS_EMPTY);
    /* an item whose name does not decode is another parameter: the search goes on */
    assert_int_equal(get("k%zz=1&key=2", "key", FM_PCT_FORM, out, sizeof(out)), FM_PCT_OK);
    assert_string_equal(out, "2");
    /* empty items and a trailing '&' */
    assert_int_equal(get("&&key=3&", "key", FM_PCT_FORM, out, sizeof(out)), FM_PCT_OK);
    assert_string_equal(out, "3");
}

static void test_query_raw(void **state)
{
    int count = -1;
    h2o_iovec_t v = fm_qs_raw(Q("Expires=12&Policy=x%2B"), "Policy", 0, NULL);
    assert_int_equal(v.len, 4);
    assert_memory_equal(v.base, "x%2B", 4); /* raw: still encoded */
    assert_null(fm_qs_raw(Q("Expires=12"), "Policy", 0, NULL).base);
    assert_null(fm_qs_raw(h2o_iovec_init(NULL, 0), "Policy", 0, &count).base);
    assert_int_equal(count, 0);
    /* names compare raw: an encoded name is another name */
    assert_null(fm_qs_raw(Q("%73tatus=done"), "status", 0, NULL).base);
    /* an empty value is found, unless skipped */
    v = fm_qs_raw(Q("secret=&secret=s3"), "secret", 0, NULL);
    assert_non_null(v.base);
    assert_int_equal(v.len, 0);
    v = fm_qs_raw(Q("secret=&secret=s3"), "secret", FM_QS_SKIP_EMPTY, NULL);
    assert_int_equal(v.len, 2);
    assert_memory_equal(v.base, "s3", 2);
    /* a bare name counts only with FM_QS_BARE; repeats are counted */
    assert_null(fm_qs_raw(Q("w"), "w", 0, NULL).base);
    v = fm_qs_raw(Q("w&w=10&h=5"), "w", FM_QS_BARE, &count);
    assert_non_null(v.base);
    assert_int_equal(v.len, 0);
    assert_int_equal(count, 2);
    v = fm_qs_raw(Q("w=10&ww=1&w=20"), "w", 0, &count);
    assert_int_equal(count, 2);
    assert_memory_equal(v.base, "10", 2);
    /* a value may hold '=': only the first one splits */
    v = fm_qs_raw(Q("Signature=ab=="), "Signature", 0, NULL);
    assert_int_equal(v.len, 4);
}

static void test_query_items(void **state)
{
    h2o_iovec_t rest = Q("a=1&&b&c=&=d"), name, value;
    const char *names[] = {"a", "", "b", "c", ""}, *values[] = {"1", NULL, NULL, "", "d"};
    size_t n = 0;
    while (fm_qs_next(&rest, &name, &value)) {
        assert_true(n < 5);
        assert_int_equal(name.len, strlen(names[n]));
        assert_memory_equal(name.base, names[n], name.len);
        if (values[n] == NULL) {
            assert_null(value.base);
        } else {
            assert_non_null(value.base);
            assert_int_equal(value.len, strlen(values[n]));
            assert_memory_equal(value.base, values[n], value.len);
        }
        ++n;
    }
    assert_int_equal(n, 5);
    rest = Q("a=1&");
    assert_true(fm_qs_next(&rest, &name, &value));
    assert_false(fm_qs_next(&rest, &name, &value)); /* a trailing '&' is no item */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hex_digit),
        cmocka_unit_test(test_encode_rfc3986),
        cmocka_unit_test(test_decode_form_and_path),
        cmocka_unit_test(test_decode_problems_are_distinct),
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_query_get_decodes_names_and_values),
        cmocka_unit_test(test_query_get_reports_each_case),
        cmocka_unit_test(test_query_raw),
        cmocka_unit_test(test_query_items),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
