/* common/listcursor.c: the signed cursor of GET /v1/files, checked against a vector made by Python's hmac and
 * base64 (independent of OpenSSL and b64.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "listcursor.h"

static const unsigned char secret[32] = "unit-list-cursor-secret-32-bytes";
/* Python: base64url(payload) + "." + base64url(hmac.new(secret, payload, sha256).digest()[:16]), unpadded. */
static const char vector[] =
    "bDEKM2U2NjJlZTMtODYwNC00M2ViLTk4MDUtYWY3ZjFmYjE1NGE4CjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMApuYW1lCmFzYw"
    "otCmQKYWRhOGQzMjItM2UyNC00ZGUyLWFkNWQtM2YyODYzZDJlNjM2CsOJdMOpICgxKS50eHQ.HmaS_SAuGrZWMZeclfeYGg";

static fm_list_cursor_t example(void)
{
    fm_list_cursor_t c = {.phase = 'd'};
    strcpy(c.owner, "3e662ee3-8604-43eb-9805-af7f1fb154a8");
    strcpy(c.folder, "00000000-0000-0000-0000-000000000000");
    strcpy(c.sort, "name");
    strcpy(c.order, "asc");
    strcpy(c.type, "-");
    strcpy(c.id, "ada8d322-3e24-4de2-ad5d-3f2863d2e636");
    strcpy(c.key, "\xc3\x89t\xc3\xa9 (1).txt");
    return c;
}

static void test_encode_matches_the_python_vector(void **state)
{
    fm_list_cursor_t c = example();
    char out[FM_LIST_CURSOR_MAX + 1];
    assert_int_equal(fm_list_cursor_encode(secret, &c, out, sizeof(out)), 0);
    assert_string_equal(out, vector);
    assert_int_not_equal(fm_list_cursor_encode(secret, &c, out, strlen(vector)), 0); /* no room for the NUL */
}

static void test_decode_gives_the_fields_back(void **state)
{
    fm_list_cursor_t want = example(), got;
    assert_int_equal(fm_list_cursor_decode(secret, vector, strlen(vector), &got), 0);
    assert_string_equal(got.owner, want.owner);
    assert_string_equal(got.folder, want.folder);
    assert_string_equal(got.sort, want.sort);
    assert_string_equal(got.order, want.order);
    assert_string_equal(got.type, want.type);
    assert_int_equal(got.phase, 'd');
    assert_string_equal(got.id, want.id);
    assert_string_equal(got.key, want.key);
}

static void test_any_changed_byte_or_other_secret_is_refused(void **state)
{
    static const unsigned char other[32] = "unit-list-cursor-secret-32-byteX";
    fm_list_cursor_t got;
    char text[sizeof(vector)];
    assert_int_not_equal(fm_list_cursor_decode(other, vector, strlen(vector), &got), 0);
    for (size_t i = 0; i < strlen(vector); ++i) {
        memcpy(text, vector, sizeof(vector));
        text[i] = text[i] == 'A' ? 'B' : 'A';
        assert_int_not_equal(fm_list_cursor_decode(secret, text, strlen(text), &got), 0);
    }
    assert_int_not_equal(fm_list_cursor_decode(secret, vector, strlen(vector) - 1, &got), 0);
    assert_int_not_equal(fm_list_cursor_decode(secret, "", 0, &got), 0);
    assert_int_not_equal(fm_list_cursor_decode(secret, ".", 1, &got), 0);
}

static void test_fields_out_of_bounds_are_not_encoded(void **state)
{
    char out[FM_LIST_CURSOR_MAX + 1];
    fm_list_cursor_t c = example();
    c.phase = 'x';
    assert_int_not_equal(fm_list_cursor_encode(secret, &c, out, sizeof(out)), 0);
    c = example();
    strcpy(c.id, "short");
    assert_int_not_equal(fm_list_cursor_encode(secret, &c, out, sizeof(out)), 0);
    c = example();
    strcpy(c.sort, "na\nme");
    assert_int_not_equal(fm_list_cursor_encode(secret, &c, out, sizeof(out)), 0);
    c = example();
    memset(c.key, 'k', FM_LIST_CURSOR_KEY_MAX); /* the longest key: 1,020-byte names fit */
    c.key[FM_LIST_CURSOR_KEY_MAX] = '\0';
    assert_int_equal(fm_list_cursor_encode(secret, &c, out, sizeof(out)), 0);
    fm_list_cursor_t got;
    assert_int_equal(fm_list_cursor_decode(secret, out, strlen(out), &got), 0);
    assert_int_equal(strlen(got.key), FM_LIST_CURSOR_KEY_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_matches_the_python_vector),
        cmocka_unit_test(test_decode_gives_the_fields_back),
        cmocka_unit_test(test_any_changed_byte_or_other_secret_is_refused),
        cmocka_unit_test(test_fields_out_of_bounds_are_not_encoded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
