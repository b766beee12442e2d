/* common/uuid.c: the UUID checks and the one upload-key rule (incoming/ + a lowercase UUID). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "uuid.h"

#define ID "0f8fad5b-d9cb-469f-a165-70867728950e"

static const char *key_id(const char *key)
{
    return fm_incoming_key_id(key, strlen(key));
}

static void test_uuid_forms(void **state)
{
    assert_true(fm_uuid_valid(ID, 36));
    assert_true(fm_uuid_lower_valid(ID, 36));
    assert_true(fm_uuid_valid("0F8FAD5B-D9CB-469F-A165-70867728950E", 36));
    assert_false(fm_uuid_lower_valid("0F8FAD5B-D9CB-469F-A165-70867728950E", 36));
    assert_false(fm_uuid_lower_valid("0f8fad5b-d9cb-469f-a165-70867728950E", 36)); /* one upper-case digit */
    assert_false(fm_uuid_valid(ID, 35));
    assert_false(fm_uuid_valid("0f8fad5bd-9cb-469f-a165-70867728950e", 36)); /* a dash out of place */
    assert_false(fm_uuid_valid("0f8fad5g-d9cb-469f-a165-70867728950e", 36));
    assert_false(fm_uuid_valid(NULL, 36));
}

/* Our keys are written lowercase (uploads_create.c) and S3 keys are case-sensitive: "incoming/ABC…" is someone
 * else's object, which every service (events, reconciler, Uppy, Lambda mode) must leave alone. */
static void test_upper_case_incoming_key_is_refused(void **state)
{
    const char *id = key_id("incoming/" ID);
    assert_non_null(id);
    assert_memory_equal(id, ID, 36);
    assert_null(key_id("incoming/0F8FAD5B-D9CB-469F-A165-70867728950E"));
    assert_null(key_id("incoming/0f8fad5b-d9cb-469f-a165-70867728950E"));
    assert_null(key_id("INCOMING/" ID));
}

static void test_other_keys_are_not_uploads(void **state)
{
    assert_null(key_id("incoming/"));
    assert_null(key_id("incoming/" ID "/x"));
    assert_null(key_id("incoming/" ID "0"));
    assert_null(key_id("incoming/0f8fad5b-d9cb-469f-a165-70867728950"));
    assert_null(key_id("incoming//" ID));
    assert_null(key_id("variants/" ID));
    assert_null(key_id("blobs/" ID));
    assert_null(key_id(ID));
    assert_null(fm_incoming_key_id(NULL, 45));
    /* the length given bounds the key: a valid key cut short, or read past a shorter one, is refused */
    assert_null(fm_incoming_key_id("incoming/" ID, 44));
    assert_int_equal(FM_INCOMING_KEY_LEN, 45);
}

/* Version 7 (RFC 9562 §5.7): lowercase, version and variant bits set, the ms timestamp of now in the first 48 bits,
 * ids made later sort after, and the random part differs each time. */
static void test_new_ids_are_time_ordered_v7(void **state)
{
    char a[37], b[37], c[37];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long long before = (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
    fm_uuid_new(a);
    fm_uuid_new(b);
    nanosleep(&(struct timespec){0, 2 * 1000 * 1000}, NULL);
    fm_uuid_new(c);
    assert_true(fm_uuid_lower_valid(a, strlen(a)));
    assert_int_equal(a[14], '7');
    assert_true(strchr("89ab", a[19]) != NULL);
    char ms_hex[13];
    memcpy(ms_hex, a, 8);
    memcpy(ms_hex + 8, a + 9, 4);
    ms_hex[12] = '\0';
    unsigned long long ms = strtoull(ms_hex, NULL, 16);
    assert_true(ms >= before && ms <= before + 1000);
    assert_true(strcmp(a, b) != 0);
    assert_true(strcmp(a + 14, b + 14) != 0); /* the random part, not only the clock */
    assert_true(strcmp(c, a) > 0 && strcmp(c, b) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid_forms),
        cmocka_unit_test(test_new_ids_are_time_ordered_v7),
        cmocka_unit_test(test_upper_case_incoming_key_is_refused),
        cmocka_unit_test(test_other_keys_are_not_uploads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
