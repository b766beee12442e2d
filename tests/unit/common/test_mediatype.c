/* common/mediatype.c: RFC 9110 §8.3.1 media types as uploads and the edge read them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "mediatype.h"

/* Parses a literal (embedded NULs kept) and checks the verdict. */
#define CHECK_TYPE(literal, expected) check_type(literal, sizeof(literal) - 1, expected, #literal)

static void check_type(const char *value, size_t len, fm_media_type_error_t expected, const char *shown)
{
    fm_media_type_t parsed;
    fm_media_type_error_t got = fm_media_type_parse(value, len, &parsed);
    if (got != expected)
        fail_msg("%s: got %d, expected %d", shown, got, expected);
    if (got != FM_MEDIA_TYPE_OK)
        assert_string_equal(parsed.essence, "");
}

static void expect_essence(const char *value, const char *essence, size_t type_len, int params)
{
    fm_media_type_t parsed;
    fm_media_type_error_t got = fm_media_type_parse(value, strlen(value), &parsed);
    if (got != FM_MEDIA_TYPE_OK)
        fail_msg("refused (%d): %s", got, value);
    if (strcmp(parsed.essence, essence) != 0)
        fail_msg("%s: essence %s, expected %s", value, parsed.essence, essence);
    assert_int_equal(parsed.type_len, type_len);
    assert_int_equal(parsed.param_count, params);
    assert_int_equal(parsed.essence[type_len], '/');
}

static void test_plain_types_pass(void **state)
{
    expect_essence("text/plain", "text/plain", 4, 0);
    expect_essence("image/svg+xml", "image/svg+xml", 5, 0);
    expect_essence("application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                   "application/vnd.openxmlformats-officedocument.wordprocessingml.document", 11, 0);
    expect_essence("x-!#$%&'*+-.^_`|~/y", "x-!#$%&'*+-.^_`|~/y", 17, 0); /* every tchar */
}

static void test_case_is_folded_in_the_essence_only(void **state)
{
    expect_essence("TEXT/HTML", "text/html", 4, 0);
    expect_essence("Text/Plain; Charset=UTF-8", "text/plain", 4, 1);
    expect_essence("VIDEO/WebM", "video/webm", 5, 0);
}

static void test_parameters_and_blanks(void **state)
{
    expect_essence("text/plain; charset=utf-8", "text/plain", 4, 1);
    expect_essence("text/plain;charset=utf-8", "text/plain", 4, 1);
    expect_essence("text/plain ;charset=utf-8", "text/plain", 4, 1);
    expect_essence("text/html  ;  charset=utf-8", "text/html", 4, 1);
    expect_essence("TEXT/HTML ;x=y", "text/html", 4, 1);
    expect_essence("multipart/form-data; boundary=----abc123", "multipart/form-data", 9, 1);
    expect_essence("text/plain; charset=utf-8; format=flowed; delsp=yes", "text/plain", 4, 3);
    expect_essence("a/b;p1=1;p2=2;p3=3;p4=4;p5=5;p6=6;p7=7;p8=8", "a/b", 1, 8); /* the bound itself */
}

static void test_quoted_strings(void **state)
{
    expect_essence("text/plain; charset=\"utf-8\"", "text/plain", 4, 1);
    expect_essence("text/plain; x=\"\"", "text/plain", 4, 1); /* an empty quoted string is a value */
    expect_essence("text/plain; x=\"a; b=c, d\"", "text/plain", 4, 1);
    expect_essence("text/plain; x=\"say \\\"hi\\\"\"; y=z", "text/plain", 4, 2);
    expect_essence("text/plain; x=\"back\\\\slash\"", "text/plain", 4, 1);
    expect_essence("text/plain; x=\"\\a\"", "text/plain", 4, 1); /* a quoted-pair may escape any VCHAR */
}

static void test_malformed_types_are_refused(void **state)
{
    CHECK_TYPE("", FM_MEDIA_TYPE_EMPTY);
    CHECK_TYPE("nonsense", FM_MEDIA_TYPE_BAD_TYPE);
    CHECK_TYPE("/plain", FM_MEDIA_TYPE_BAD_TYPE);
    CHECK_TYPE("text/", FM_MEDIA_TYPE_BAD_SUBTYPE);
    CHECK_TYPE("text", FM_MEDIA_TYPE_BAD_TYPE);
    CHECK_TYPE(" text/plain", FM_MEDIA_TYPE_BAD_TYPE);
    CHECK_TYPE("text /plain", FM_MEDIA_TYPE_BAD_TYPE);
    CHECK_TYPE("text/ plain", FM_MEDIA_TYPE_BAD_SUBTYPE);
    CHECK_TYPE("text/plain ", FM_MEDIA_TYPE_BAD_SUBTYPE);
    CHECK_TYPE("text/plain/x", FM_MEDIA_TYPE_BAD_SUBTYPE);
    CHECK_TYPE("text/pl@in", FM_MEDIA_TYPE_BAD_SUBTYPE);
    CHECK_TYPE("image/png, text/html", FM_MEDIA_TYPE_BAD_SUBTYPE);
    CHECK_TYPE("video/mp4,text/html", FM_MEDIA_TYPE_BAD_SUBTYPE);
    CHECK_TYPE("text/plain x", FM_MEDIA_TYPE_BAD_SUBTYPE);
}

static void test_malformed_parameters_are_refused(void **state)
{
    CHECK_TYPE("text/plain;", FM_MEDIA_TYPE_BAD_PARAMETER);
    CHECK_TYPE("text/plain; ", FM_MEDIA_TYPE_BAD_PARAMETER);
    CHECK_TYPE("text/plain;;charset=utf-8", FM_MEDIA_TYPE_BAD_PARAMETER);
    CHECK_TYPE("text/plain; charset", FM_MEDIA_TYPE_BAD_PARAMETER);
    CHECK_TYPE("text/plain; charset utf-8", FM_MEDIA_TYPE_BAD_PARAMETER);
    CHECK_TYPE("text/plain; charset =utf-8", FM_MEDIA_TYPE_BAD_PARAMETER);
    CHECK_TYPE("text/plain; =utf-8", FM_MEDIA_TYPE_BAD_PARAMETER);
    CHECK_TYPE("text/plain; charset=", FM_MEDIA_TYPE_BAD_VALUE);
    CHECK_TYPE("text/plain; charset= utf-8", FM_MEDIA_TYPE_BAD_VALUE);
    CHECK_TYPE("text/plain; charset=utf-8 ", FM_MEDIA_TYPE_BAD_VALUE);
    CHECK_TYPE("text/plain; charset=utf-8, text/html", FM_MEDIA_TYPE_BAD_VALUE);
    CHECK_TYPE("text/plain; charset=utf-8;", FM_MEDIA_TYPE_BAD_PARAMETER);
    CHECK_TYPE("text/plain; x=\"a\"b", FM_MEDIA_TYPE_BAD_VALUE);
    CHECK_TYPE("text/plain; x=a\"b\"", FM_MEDIA_TYPE_BAD_VALUE);
    CHECK_TYPE("text/plain; x=@", FM_MEDIA_TYPE_BAD_VALUE);
}

static void test_unterminated_quotes_are_refused(void **state)
{
    CHECK_TYPE("text/plain; x=\"", FM_MEDIA_TYPE_UNTERMINATED);
    CHECK_TYPE("text/plain; x=\"abc", FM_MEDIA_TYPE_UNTERMINATED);
    CHECK_TYPE("text/plain; x=\"abc\\\"", FM_MEDIA_TYPE_UNTERMINATED); /* the last quote is escaped */
    CHECK_TYPE("text/plain; x=\"abc\\", FM_MEDIA_TYPE_UNTERMINATED);
}

static void test_controls_and_non_ascii_are_refused(void **state)
{
    CHECK_TYPE("text/plain\r\nX-Evil: 1", FM_MEDIA_TYPE_CONTROL);
    CHECK_TYPE("text/plain; x=\"a\nb\"", FM_MEDIA_TYPE_CONTROL);
    CHECK_TYPE("text/plain\0; x=y", FM_MEDIA_TYPE_CONTROL);
    CHECK_TYPE("text/pl\x7f"
               "ain",
               FM_MEDIA_TYPE_CONTROL);
    CHECK_TYPE("text/plain; x=\"caf\xc3\xa9\"", FM_MEDIA_TYPE_CONTROL);
    CHECK_TYPE("text/plain; x=\"\\\x01\"", FM_MEDIA_TYPE_CONTROL);
    /* no HTAB, not even as OWS (RFC 9110 allows it): RGW and SigV4 signers canonicalise it differently */
    CHECK_TYPE("text/plain;\tcharset=utf-8", FM_MEDIA_TYPE_CONTROL);
    CHECK_TYPE("text/plain; x=\"a\tb\"", FM_MEDIA_TYPE_CONTROL);
}

static void test_bounds(void **state)
{
    char value[FM_MEDIA_TYPE_MAX_BYTES + 2];
    memset(value, 'a', sizeof(value));
    memcpy(value, "text/", 5);
    check_type(value, FM_MEDIA_TYPE_MAX_BYTES, FM_MEDIA_TYPE_OK, "127 bytes");
    check_type(value, FM_MEDIA_TYPE_MAX_BYTES + 1, FM_MEDIA_TYPE_TOO_LONG, "128 bytes");
    CHECK_TYPE("a/b;p1=1;p2=2;p3=3;p4=4;p5=5;p6=6;p7=7;p8=8;p9=9", FM_MEDIA_TYPE_TOO_MANY_PARAMS);
    /* `len` bounds the read: what follows is not looked at */
    check_type("text/plain; charset=\"utf-8\"", 10, FM_MEDIA_TYPE_OK, "cut after the subtype");
    check_type("text/plain; charset=\"utf-8\"", 24, FM_MEDIA_TYPE_UNTERMINATED, "cut inside the quotes");
    assert_int_equal(fm_media_type_parse("text/plain", 10, NULL), FM_MEDIA_TYPE_OK);
}

static void test_essence_helper(void **state)
{
    char out[FM_MEDIA_TYPE_MAX_BYTES + 1];
    assert_int_equal(fm_media_type_essence("Text/HTML; charset=utf-8", out, sizeof(out)), 0);
    assert_string_equal(out, "text/html");
    assert_int_equal(fm_media_type_essence("text/plain; charset=utf-8, text/html", out, sizeof(out)), -1);
    assert_string_equal(out, "");
    char small[5];
    assert_int_equal(fm_media_type_essence("text/plain", small, sizeof(small)), -1);
    assert_string_equal(small, "");
}

static void test_messages_name_the_reason(void **state)
{
    for (int e = FM_MEDIA_TYPE_OK; e <= FM_MEDIA_TYPE_TOO_MANY_PARAMS; ++e) {
        const char *message = fm_media_type_error_message((fm_media_type_error_t)e);
        assert_non_null(message);
        assert_true(strlen(message) > 10);
    }
    assert_non_null(strstr(fm_media_type_error_message(FM_MEDIA_TYPE_UNTERMINATED), "quote"));
    assert_non_null(strstr(fm_media_type_error_message(FM_MEDIA_TYPE_TOO_MANY_PARAMS), "8"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_types_pass),
        cmocka_unit_test(test_case_is_folded_in_the_essence_only),
        cmocka_unit_test(test_parameters_and_blanks),
        cmocka_unit_test(test_quoted_strings),
        cmocka_unit_test(test_malformed_types_are_refused),
        cmocka_unit_test(test_malformed_parameters_are_refused),
        cmocka_unit_test(test_unterminated_quotes_are_refused),
        cmocka_unit_test(test_controls_and_non_ascii_are_refused),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_essence_helper),
        cmocka_unit_test(test_messages_name_the_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
