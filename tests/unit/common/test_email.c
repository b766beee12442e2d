/*
 * Tests for common/email.c: the one normal form of an account's email address (issue 10 #8).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "email.h"

#include <string.h>

static int normalize(const char *email, char out[FM_EMAIL_BUF_SIZE])
{
    return fm_email_normalize(email, strlen(email), out, FM_EMAIL_BUF_SIZE);
}

static void test_ascii_letters_are_lower_cased(void **state)
{
    (void)state;
    char out[FM_EMAIL_BUF_SIZE];
    assert_int_equal(normalize("Kiki@Example.TEST", out), 0);
    assert_string_equal(out, "kiki@example.test");
    /* Nothing but A-Z changes: digits, punctuation, plus-addressing and punycode domains stay as they are. */
    assert_int_equal(normalize("O'Neil+Tag_1.x-y@xn--bcher-kva.example", out), 0);
    assert_string_equal(out, "o'neil+tag_1.x-y@xn--bcher-kva.example");
    assert_int_equal(normalize("a@b", out), 0);
    assert_string_equal(out, "a@b");
}

/* The finding: U+212A KELVIN SIGN is 'k' to PostgreSQL's lower() but was not to the limiter. Every non-ASCII byte
 * is refused, so no spelling reaches an account past the counter of its ASCII twin. */
static void test_non_ascii_is_refused(void **state)
{
    (void)state;
    char out[FM_EMAIL_BUF_SIZE];
    const char *refused[] = {
        "\xe2\x84\xaaiki@example.test",  /* U+212A KELVIN SIGN */
        "kiki@\xe2\x84\xaa.example",     /* ... in the domain */
        "\xc5\xbf\x61ra@example.test",   /* U+017F LATIN SMALL LETTER LONG S ('s' to a case fold) */
        "kiki@b\xc3\xbc\x63her.example", /* an IDN domain not in its xn-- form */
        "i\xcc\x87@example.test",        /* i + U+0307 COMBINING DOT ABOVE */
        "\xef\xbd\x8biki@example.test",  /* U+FF4B FULLWIDTH k (NFKC: 'k') */
        "kiki\xc2\xa0@example.test",     /* U+00A0 NO-BREAK SPACE */
        "\xff@example.test",             /* not UTF-8 at all */
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); ++i) {
        strcpy(out, "untouched");
        assert_int_equal(normalize(refused[i], out), -1);
        assert_string_equal(out, "");
    }
}

static void test_shape(void **state)
{
    (void)state;
    char out[FM_EMAIL_BUF_SIZE];
    const char *refused[] = {"",
                             "a@",
                             "@a",
                             "ab",
                             "no-at-sign.example",
                             "two@@example.test",
                             "a@b@example.test",
                             "with space@example.test",
                             "tab\t@example.test",
                             "ctl\x7f@example.test",
                             "nl\n@x.test"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); ++i)
        assert_int_equal(normalize(refused[i], out), -1);
    /* A NUL inside the given length is not the end of the address. */
    assert_int_equal(fm_email_normalize("a\0b@example.test", 16, out, sizeof(out)), -1);
}

static void test_length_bounds(void **state)
{
    (void)state;
    char email[FM_EMAIL_MAX + 2], out[FM_EMAIL_BUF_SIZE + 1];
    memset(email, 'a', sizeof(email));
    memcpy(email + FM_EMAIL_MAX - 12, "@example.com", 12);
    email[FM_EMAIL_MAX] = '\0';
    assert_int_equal(fm_email_normalize(email, FM_EMAIL_MAX, out, FM_EMAIL_BUF_SIZE), 0);
    assert_int_equal(strlen(out), FM_EMAIL_MAX);
    /* One byte more is refused, whatever the room. */
    memcpy(email + FM_EMAIL_MAX - 11, "@example.com", 12);
    email[FM_EMAIL_MAX + 1] = '\0';
    assert_int_equal(fm_email_normalize(email, FM_EMAIL_MAX + 1, out, sizeof(out)), -1);
    /* An output buffer without room for the NUL is refused, not overrun. */
    assert_int_equal(fm_email_normalize("abc@example.test", 16, out, 16), -1);
    assert_string_equal(out, "");
    assert_int_equal(fm_email_normalize("abc@example.test", 16, out, 17), 0);
    assert_int_equal(fm_email_normalize("abc@example.test", 16, NULL, 17), -1);
    assert_int_equal(fm_email_normalize(NULL, 16, out, 17), -1);
}

int main(void)
{
    // clang-format off
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ascii_letters_are_lower_cased),
        cmocka_unit_test(test_non_ascii_is_refused),
        cmocka_unit_test(test_shape),
        cmocka_unit_test(test_length_bounds),
    };
    // clang-format on
    return cmocka_run_group_tests(tests, NULL, NULL);
}
