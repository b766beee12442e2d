/* common/json.c: duplicate member names at any depth. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json.h"

/* The duplicate fm_json_duplicate_key finds in `text` ("" for none). */
static const char *duplicate_in(const char *text, char *out, size_t size)
{
    cJSON *json = cJSON_Parse(text);
    assert_non_null(json);
    const char *found = fm_json_duplicate_key(json);
    snprintf(out, size, "%s", found != NULL ? found : "");
    cJSON_Delete(json);
    return out;
}

static void test_duplicates_are_found_at_any_depth(void **state)
{
    char found[64];
    assert_string_equal(duplicate_in("{\"size\":1,\"size\":999999}", found, sizeof(found)), "size");
    assert_string_equal(duplicate_in("{\"a\":{\"b\":1,\"c\":2,\"b\":3}}", found, sizeof(found)), "b");
    assert_string_equal(duplicate_in("{\"parts\":[{\"n\":1},{\"n\":2,\"etag\":\"x\",\"n\":3}]}", found, sizeof(found)),
                        "n");
    assert_string_equal(duplicate_in("[[{\"k\":1,\"k\":1}]]", found, sizeof(found)), "k"); /* equal values too */
    /* escapes are undone before comparing: "\u0073ize" is "size" */
    assert_string_equal(duplicate_in("{\"size\":1,\"\\u0073ize\":2}", found, sizeof(found)), "size");
}

static void test_distinct_names_pass(void **state)
{
    char found[64];
    assert_string_equal(duplicate_in("{}", found, sizeof(found)), "");
    assert_string_equal(duplicate_in("{\"a\":1,\"A\":2,\"a \":3}", found, sizeof(found)), ""); /* case matters */
    /* the same name in sibling objects or at two depths is not a duplicate */
    assert_string_equal(duplicate_in("{\"a\":{\"a\":{\"a\":1}},\"b\":[{\"a\":1},{\"a\":2}]}", found, sizeof(found)),
                        "");
    assert_string_equal(duplicate_in("[1,\"x\",null,[],{}]", found, sizeof(found)), "");
    assert_null(fm_json_duplicate_key(NULL));
}

/* Objects above 16 members take the sorting path: a duplicate anywhere among many is found, none is invented. */
static void test_large_objects(void **state)
{
    enum { MEMBERS = 5000 };
    char *text = malloc(MEMBERS * 24 + 16);
    size_t pos = 0;
    text[pos++] = '{';
    for (int i = 0; i < MEMBERS; ++i)
        pos += (size_t)sprintf(text + pos, "%s\"m%d\":%d", i ? "," : "", i, i);
    strcpy(text + pos, "}");
    char found[64];
    assert_string_equal(duplicate_in(text, found, sizeof(found)), "");
    sprintf(text + pos, ",\"m%d\":0}", MEMBERS / 2);
    assert_string_equal(duplicate_in(text, found, sizeof(found)), "m2500");
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duplicates_are_found_at_any_depth),
        cmocka_unit_test(test_distinct_names_pass),
        cmocka_unit_test(test_large_objects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
