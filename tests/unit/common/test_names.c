/* common/names.c: the name rule (DESIGN.md §5b) and the UTF-8 decoder under it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "names.h"

#define CHECK_NAME(literal, expected) assert_int_equal(fm_name_check(literal, sizeof(literal) - 1), expected)

static void test_ordinary_names_pass(void **state)
{
    const char *names[] = {
        "a",
        "report.pdf",
        "Résumé 2024 (final).docx",
        "日本語のファイル.txt",
        "שלום.txt",                      /* Hebrew: right-to-left text itself is fine */
        "ملف.pdf",                       /* Arabic */
        "👩‍👩‍👧 family.jpg", /* ZWJ (U+200D) joins the emoji: kept */
        "می‌خواهم.txt",         /* ZWNJ (U+200C) is part of Persian spelling: kept */
        "...",
        ".hidden",
        "a b\xc2\xa0"
        "c",                /* NO-BREAK SPACE U+00A0, just above C1 */
        "\xf4\x8f\xbf\xbf", /* U+10FFFF, the last code point */
        "\xed\x9f\xbf",     /* U+D7FF, just below the surrogates */
        "\xee\x80\x80",     /* U+E000, just above them */
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i) {
        if (fm_name_check(names[i], strlen(names[i])) != FM_NAME_OK)
            fail_msg("refused: %s", names[i]);
        assert_true(fm_name_valid(names[i]));
    }
}

static void test_length_is_in_bytes(void **state)
{
    char name[FM_NAME_MAX_BYTES + 2];
    memset(name, 'x', sizeof(name));
    assert_int_equal(fm_name_check(name, 0), FM_NAME_EMPTY);
    assert_int_equal(fm_name_check(name, FM_NAME_MAX_BYTES), FM_NAME_OK);
    assert_int_equal(fm_name_check(name, FM_NAME_MAX_BYTES + 1), FM_NAME_TOO_LONG);
    /* 85 three-byte characters are 255 bytes; one more is 258 bytes though only 86 characters */
    char wide[3 * 86];
    for (int i = 0; i < 86; ++i)
        memcpy(wide + 3 * i, "\xe2\x82\xac", 3); /* € */
    assert_int_equal(fm_name_check(wide, 3 * 85), FM_NAME_OK);
    assert_int_equal(fm_name_check(wide, 3 * 86), FM_NAME_TOO_LONG);
}

static void test_invalid_utf8_is_refused(void **state)
{
    CHECK_NAME("a\x80", FM_NAME_BAD_UTF8);                /* stray continuation byte */
    CHECK_NAME("\xc0\xaf", FM_NAME_BAD_UTF8);             /* overlong '/' */
    CHECK_NAME("\xc1\xbf", FM_NAME_BAD_UTF8);             /* overlong U+007F */
    CHECK_NAME("\xe0\x80\xaf", FM_NAME_BAD_UTF8);         /* overlong '/' in 3 bytes */
    CHECK_NAME("\xe0\x9f\xbf", FM_NAME_BAD_UTF8);         /* overlong U+07FF */
    CHECK_NAME("\xf0\x8f\xbf\xbf", FM_NAME_BAD_UTF8);     /* overlong U+FFFF */
    CHECK_NAME("\xed\xa0\x80", FM_NAME_BAD_UTF8);         /* U+D800, a surrogate */
    CHECK_NAME("\xed\xbf\xbf", FM_NAME_BAD_UTF8);         /* U+DFFF */
    CHECK_NAME("\xf4\x90\x80\x80", FM_NAME_BAD_UTF8);     /* U+110000 */
    CHECK_NAME("\xf5\x80\x80\x80", FM_NAME_BAD_UTF8);     /* lead byte F5 */
    CHECK_NAME("\xf8\x88\x80\x80\x80", FM_NAME_BAD_UTF8); /* a 5-byte form */
    CHECK_NAME("\xff", FM_NAME_BAD_UTF8);
    CHECK_NAME("abc\xe2\x82", FM_NAME_BAD_UTF8);   /* truncated at the end */
    CHECK_NAME("\xe2\x82z.txt", FM_NAME_BAD_UTF8); /* truncated in the middle */
    CHECK_NAME("\xf0\x9f\x98", FM_NAME_BAD_UTF8);  /* truncated emoji */
    /* a bad byte after a control character is still reported as bad UTF-8: one name, one answer */
    CHECK_NAME("a\x01\xff", FM_NAME_BAD_UTF8);
}

static void test_control_characters_are_refused(void **state)
{
    CHECK_NAME("a\0b", FM_NAME_CONTROL);
    CHECK_NAME("a\tb", FM_NAME_CONTROL);
    CHECK_NAME("a\nb", FM_NAME_CONTROL);
    CHECK_NAME("a\x1f", FM_NAME_CONTROL);
    CHECK_NAME("a\x7f", FM_NAME_CONTROL);
    CHECK_NAME("a\xc2\x80", FM_NAME_CONTROL);     /* U+0080, first C1 */
    CHECK_NAME("a\xc2\x85.txt", FM_NAME_CONTROL); /* U+0085 NEL, from the issue */
    CHECK_NAME("a\xc2\x9f", FM_NAME_CONTROL);     /* U+009F, last C1 */
    CHECK_NAME("a\xe2\x80\xa8", FM_NAME_CONTROL); /* U+2028 LINE SEPARATOR */
    CHECK_NAME("a\xe2\x80\xa9", FM_NAME_CONTROL); /* U+2029 PARAGRAPH SEPARATOR */
}

static void test_bidi_controls_are_refused(void **state)
{
    CHECK_NAME("a\xe2\x80\xaegpj.svg", FM_NAME_BIDI); /* U+202E RLO: shows as "asvg.jpg" */
    static const char *const bidi[] = {
        "\xe2\x80\xaa", "\xe2\x80\xab", "\xe2\x80\xac", "\xe2\x80\xad", "\xe2\x80\xae", /* U+202A..U+202E */
        "\xe2\x81\xa6", "\xe2\x81\xa7", "\xe2\x81\xa8", "\xe2\x81\xa9",                 /* U+2066..U+2069 */
        "\xe2\x80\x8e", "\xe2\x80\x8f",                                                 /* U+200E LRM, U+200F RLM */
        "\xd8\x9c",                                                                     /* U+061C ALM */
    };
    for (size_t i = 0; i < sizeof(bidi) / sizeof(bidi[0]); ++i) {
        char name[16];
        snprintf(name, sizeof(name), "x%sy.txt", bidi[i]);
        assert_int_equal(fm_name_check(name, strlen(name)), FM_NAME_BIDI);
    }
    /* the neighbours of those ranges are ordinary characters */
    CHECK_NAME("\xe2\x80\xa9", FM_NAME_CONTROL); /* U+2029 is a separator, not a bidi control */
    CHECK_NAME("\xe2\x80\xaf", FM_NAME_OK);      /* U+202F NARROW NO-BREAK SPACE */
    CHECK_NAME("\xe2\x81\xa5", FM_NAME_OK);      /* U+2065 (unassigned) */
    CHECK_NAME("\xe2\x81\xaa", FM_NAME_OK);      /* U+206A (deprecated format char, not Bidi_Control) */
    CHECK_NAME("\xe2\x80\x8d", FM_NAME_OK);      /* U+200D ZWJ */
    CHECK_NAME("\xd8\x9b", FM_NAME_OK);          /* U+061B ARABIC SEMICOLON */
}

static void test_separators_and_dots_are_refused(void **state)
{
    CHECK_NAME("a/b", FM_NAME_SEPARATOR);
    CHECK_NAME("/", FM_NAME_SEPARATOR);
    CHECK_NAME("a\\b", FM_NAME_SEPARATOR);
    CHECK_NAME(".", FM_NAME_DOTS);
    CHECK_NAME("..", FM_NAME_DOTS);
    CHECK_NAME("a\xc0\xaf"
               "b",
               FM_NAME_BAD_UTF8); /* an overlong '/' is no way around it */
}

static void test_messages_name_the_reason(void **state)
{
    assert_non_null(strstr(fm_name_error_message(FM_NAME_BIDI), "bidirectional"));
    assert_non_null(strstr(fm_name_error_message(FM_NAME_CONTROL), "control"));
    assert_non_null(strstr(fm_name_error_message(FM_NAME_BAD_UTF8), "UTF-8"));
    assert_non_null(strstr(fm_name_error_message(FM_NAME_TOO_LONG), "255"));
}

static void test_decoder(void **state)
{
    unsigned cp = 0;
    assert_int_equal(fm_utf8_decode((const unsigned char *)"A", 1, &cp), 1);
    assert_int_equal(cp, 'A');
    assert_int_equal(fm_utf8_decode((const unsigned char *)"\xc2\x85", 2, &cp), 2);
    assert_int_equal(cp, 0x85);
    assert_int_equal(fm_utf8_decode((const unsigned char *)"\xe2\x80\xae", 3, &cp), 3);
    assert_int_equal(cp, 0x202e);
    assert_int_equal(fm_utf8_decode((const unsigned char *)"\xf0\x9f\x98\x80", 4, &cp), 4);
    assert_int_equal(cp, 0x1f600);
    /* the length given bounds the read: a complete sequence cut short by `len` is refused */
    assert_int_equal(fm_utf8_decode((const unsigned char *)"\xf0\x9f\x98\x80", 3, &cp), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ordinary_names_pass),       cmocka_unit_test(test_length_is_in_bytes),
        cmocka_unit_test(test_invalid_utf8_is_refused),   cmocka_unit_test(test_control_characters_are_refused),
        cmocka_unit_test(test_bidi_controls_are_refused), cmocka_unit_test(test_separators_and_dots_are_refused),
        cmocka_unit_test(test_messages_name_the_reason),  cmocka_unit_test(test_decoder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
