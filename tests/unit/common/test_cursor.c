/* common/cursor.c: signed opaque cursors (round trip, scope binding, tampering, bounds). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cursor.h"

static const char secret[] = "0123456789abcdef0123456789abcdef";
#define SECRET secret, sizeof(secret) - 1

static void test_round_trip(void **state)
{
    const uint8_t payload[] = {1, 2, 3, 0, 255, 7};
    char text[FM_CURSOR_TEXT_MAX];
    uint8_t out[FM_CURSOR_PAYLOAD_MAX];
    size_t len = 99;
    assert_int_equal(fm_cursor_sign(SECRET, "delta:u1", payload, sizeof(payload), text, sizeof(text)), 0);
    assert_int_equal(fm_cursor_open(SECRET, "delta:u1", text, strlen(text), out, sizeof(out), &len), 0);
    assert_int_equal(len, sizeof(payload));
    assert_memory_equal(out, payload, sizeof(payload));
    /* an empty payload is a cursor too */
    assert_int_equal(fm_cursor_sign(SECRET, "s", NULL, 0, text, sizeof(text)), 0);
    assert_int_equal(fm_cursor_open(SECRET, "s", text, strlen(text), out, sizeof(out), &len), 0);
    assert_int_equal(len, 0);
}

static void test_scope_and_secret_bind_it(void **state)
{
    const uint8_t payload[] = {9, 9, 9};
    char text[FM_CURSOR_TEXT_MAX];
    uint8_t out[16];
    size_t len;
    assert_int_equal(fm_cursor_sign(SECRET, "delta:alice", payload, sizeof(payload), text, sizeof(text)), 0);
    assert_int_equal(fm_cursor_open(SECRET, "delta:bob", text, strlen(text), out, sizeof(out), &len), -1);
    assert_int_equal(fm_cursor_open(SECRET, "trash:alice", text, strlen(text), out, sizeof(out), &len), -1);
    assert_int_equal(fm_cursor_open("another secret 0123456789abcdef!", 32, "delta:alice", text, strlen(text), out,
                                    sizeof(out), &len),
                     -1);
}

static void test_every_tampered_character_is_refused(void **state)
{
    const uint8_t payload[] = {0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80};
    char text[FM_CURSOR_TEXT_MAX], copy[FM_CURSOR_TEXT_MAX];
    uint8_t out[16];
    size_t len;
    assert_int_equal(fm_cursor_sign(SECRET, "trash:u", payload, sizeof(payload), text, sizeof(text)), 0);
    size_t n = strlen(text);
    for (size_t i = 0; i < n; ++i) {
        memcpy(copy, text, n + 1);
        copy[i] = copy[i] == 'A' ? 'B' : 'A';
        assert_int_equal(fm_cursor_open(SECRET, "trash:u", copy, n, out, sizeof(out), &len), -1);
    }
    /* truncated, extended, empty, not base64url */
    assert_int_equal(fm_cursor_open(SECRET, "trash:u", text, n - 1, out, sizeof(out), &len), -1);
    memcpy(copy, text, n);
    memcpy(copy + n, "AA", 3);
    assert_int_equal(fm_cursor_open(SECRET, "trash:u", copy, n + 2, out, sizeof(out), &len), -1);
    assert_int_equal(fm_cursor_open(SECRET, "trash:u", "", 0, out, sizeof(out), &len), -1);
    assert_int_equal(fm_cursor_open(SECRET, "trash:u", "!!!!", 4, out, sizeof(out), &len), -1);
}

static void test_bounds(void **state)
{
    uint8_t big[FM_CURSOR_PAYLOAD_MAX + 1] = {0};
    char text[FM_CURSOR_TEXT_MAX];
    uint8_t out[FM_CURSOR_PAYLOAD_MAX];
    size_t len;
    assert_int_equal(fm_cursor_sign(SECRET, "s", big, sizeof(big), text, sizeof(text)), -1);
    assert_int_equal(fm_cursor_sign(SECRET, "s", big, FM_CURSOR_PAYLOAD_MAX, text, sizeof(text)), 0);
    assert_int_equal(strlen(text) + 1 <= FM_CURSOR_TEXT_MAX, 1);
    assert_int_equal(fm_cursor_open(SECRET, "s", text, strlen(text), out, sizeof(out), &len), 0);
    /* a payload larger than the caller's buffer is refused, never cut */
    assert_int_equal(fm_cursor_open(SECRET, "s", text, strlen(text), out, 8, &len), -1);
    /* an output buffer too small */
    assert_int_equal(fm_cursor_sign(SECRET, "s", big, 8, text, 10), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_scope_and_secret_bind_it),
        cmocka_unit_test(test_every_tampered_character_is_refused),
        cmocka_unit_test(test_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
