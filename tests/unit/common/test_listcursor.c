/* common/listcursor.c: the signed cursor of GET /v1/files (its fields over common/cursor.c), checked against a vector
 * made by Python's hmac and base64 (independent of OpenSSL and b64.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "listcursor.h"

static const char secret[] = "unit-list-cursor-secret-32-bytes";
#define SECRET secret, sizeof(secret) - 1
#define OWNER "3e662ee3-8604-43eb-9805-af7f1fb154a8"
#define FOLDER "00000000-0000-0000-0000-000000000000"
/* Python (hmac, hashlib, base64):
 *   scope = b"list:" + OWNER + b":" + FOLDER
 *   payload = b"l2\nname\nasc\n-\nd\nada8d322-3e24-4de2-ad5d-3f2863d2e636\n" + "\u00c9t\u00e9 (1).txt".encode()
 *   key = hmac.new(secret, b"fm-cursor-v1", sha256).digest()
 *   tag = hmac.new(key, bytes([1, len(scope)]) + scope + payload, sha256).digest()[:16]
 *   base64.urlsafe_b64encode(bytes([1]) + payload + tag).rstrip(b"=") */
static const char vector[] =
    "AWwyCm5hbWUKYXNjCi0KZAphZGE4ZDMyMi0zZTI0LTRkZTItYWQ1ZC0zZjI4NjNkMmU2MzYKw4l0w6kgKDEpLnR4dL4S7"
    "0wmtsHDIfWkiKe1KN0";

static fm_list_cursor_t example(void)
{
    fm_list_cursor_t c = {.phase = 'd'};
    strcpy(c.owner, OWNER);
    strcpy(c.folder, FOLDER);
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
    assert_int_equal(fm_list_cursor_encode(SECRET, &c, out, sizeof(out)), 0);
    assert_string_equal(out, vector);
    assert_int_not_equal(fm_list_cursor_encode(SECRET, &c, out, strlen(vector)), 0); /* no room for the NUL */
}

static void test_decode_gives_the_fields_back(void **state)
{
    fm_list_cursor_t want = example(), got;
    assert_int_equal(fm_list_cursor_decode(SECRET, OWNER, FOLDER, vector, strlen(vector), &got), 0);
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
    static const char other[] = "unit-list-cursor-secret-32-byteX";
    fm_list_cursor_t got;
    char text[sizeof(vector)];
    assert_int_not_equal(fm_list_cursor_decode(other, sizeof(other) - 1, OWNER, FOLDER, vector, strlen(vector), &got),
                         0);
    for (size_t i = 0; i < strlen(vector); ++i) {
        memcpy(text, vector, sizeof(vector));
        text[i] = text[i] == 'A' ? 'B' : 'A';
        assert_int_not_equal(fm_list_cursor_decode(SECRET, OWNER, FOLDER, text, strlen(text), &got), 0);
    }
    assert_int_not_equal(fm_list_cursor_decode(SECRET, OWNER, FOLDER, vector, strlen(vector) - 1, &got), 0);
    assert_int_not_equal(fm_list_cursor_decode(SECRET, OWNER, FOLDER, "", 0, &got), 0);
    assert_int_not_equal(fm_list_cursor_decode(SECRET, OWNER, FOLDER, ".", 1, &got), 0);
}

static void test_another_owner_or_folder_is_refused(void **state)
{
    fm_list_cursor_t got;
    assert_int_not_equal(
        fm_list_cursor_decode(SECRET, "3e662ee3-8604-43eb-9805-af7f1fb154a9", FOLDER, vector, strlen(vector), &got), 0);
    assert_int_not_equal(
        fm_list_cursor_decode(SECRET, OWNER, "00000000-0000-0000-0000-000000000001", vector, strlen(vector), &got), 0);
    /* an owner with the scope's separator is refused: it could stand for another split of the same scope */
    assert_int_not_equal(fm_list_cursor_decode(SECRET, OWNER ":", FOLDER, vector, strlen(vector), &got), 0);
}

static void test_fields_out_of_bounds_are_not_encoded(void **state)
{
    char out[FM_LIST_CURSOR_MAX + 1];
    fm_list_cursor_t c = example();
    c.phase = 'x';
    assert_int_not_equal(fm_list_cursor_encode(SECRET, &c, out, sizeof(out)), 0);
    c = example();
    strcpy(c.id, "short");
    assert_int_not_equal(fm_list_cursor_encode(SECRET, &c, out, sizeof(out)), 0);
    c = example();
    strcpy(c.sort, "na\nme");
    assert_int_not_equal(fm_list_cursor_encode(SECRET, &c, out, sizeof(out)), 0);
    c = example();
    memset(c.key, 'k', FM_LIST_CURSOR_KEY_MAX); /* the longest key: 1,020-byte names fit */
    c.key[FM_LIST_CURSOR_KEY_MAX] = '\0';
    assert_int_equal(fm_list_cursor_encode(SECRET, &c, out, sizeof(out)), 0);
    fm_list_cursor_t got;
    assert_int_equal(fm_list_cursor_decode(SECRET, OWNER, FOLDER, out, strlen(out), &got), 0);
    assert_int_equal(strlen(got.key), FM_LIST_CURSOR_KEY_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_matches_the_python_vector),
        cmocka_unit_test(test_decode_gives_the_fields_back),
        cmocka_unit_test(test_any_changed_byte_or_other_secret_is_refused),
        cmocka_unit_test(test_another_owner_or_folder_is_refused),
        cmocka_unit_test(test_fields_out_of_bounds_are_not_encoded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
