/*
 * Helpers shared by test_cfsign.c (signing, key pairs) and test_cfverify.c (verification): the key pairs and
 * vectors that cfsign_vectors.py makes with botocore and `cryptography` (loaded once per executable, removed by
 * the group teardown) and the verification check both files make.
 */
#ifndef FM_TEST_CF_KEYS_H
#define FM_TEST_CF_KEYS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cfsign.h"
#include "test_script.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLIENT "203.0.113.9"

/* ---- helpers ------------------------------------------------------------------------------------------------ */

static inline char *read_text_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    char *text = calloc(1, 65536);
    assert_non_null(text);
    size_t len = fread(text, 1, 65535, f);
    fclose(f);
    assert_true(len > 0 && len < 65535);
    return text;
}

static inline void add_key_file(fm_cf_keys_t *keys, const char *dir, const char *id, const char *suffix)
{
    char path[PATH_MAX], err[256] = "";
    snprintf(path, sizeof path, "%s/%s%s", dir, id, suffix);
    char *pem = read_text_file(path);
    if (fm_cf_keys_add_pem(keys, id, pem, strlen(pem), err, sizeof err) != 0)
        fail_msg("adding %s: %s", path, err);
    free(pem);
}

static inline void expect_status(const fm_cf_keys_t *keys, const char *url, const char *client_ip, long long now,
                                 fm_cf_status_t expected, const char *what)
{
    char reason[256] = "";
    fm_cf_status_t status = fm_cf_verify_url(keys, url, strlen(url), client_ip, now, reason, sizeof reason);
    if (status != expected)
        fail_msg("%s: got %s (%s), want %s\n  URL: %.300s", what, fm_cf_status_code(status), reason,
                 fm_cf_status_code(expected), url);
}

/* ---- vectors from botocore -------------------------------------------------------------------------------------- */

static struct {
    char dir[64];
    long long now;
    cJSON *cases;
    fm_cf_keys_t *keys;        /* configured private keys: sign and verify */
    fm_cf_keys_t *public_keys; /* the same ids from their public PEMs: verify only */
} vectors;

/* Runs the script with `args` (shell-safe) and `input_path` as stdin (NULL: none); returns its stdout. */
static inline char *run_script(const char *args, const char *input_path)
{
    return test_script_run("cfsign_vectors.py", args, input_path, 4 << 20,
                           "python3-botocore and python3-cryptography are");
}

static inline const char *str_of(const cJSON *item, const char *name)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(item, name));
}

static inline long long int_of(const cJSON *item, const char *name)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(item, name);
    assert_true(cJSON_IsNumber(value));
    return (long long)value->valuedouble;
}

static inline bool bool_of(const cJSON *item, const char *name)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(item, name));
}

static inline void load_vectors(void)
{
    if (vectors.cases != NULL)
        return;
    snprintf(vectors.dir, sizeof vectors.dir, "/tmp/fm-cfsign-XXXXXX");
    assert_non_null(mkdtemp(vectors.dir));
    vectors.now = (long long)time(NULL);
    char args[256];
    snprintf(args, sizeof args, "gen '%s' %lld", vectors.dir, vectors.now);
    char *output = run_script(args, NULL);
    vectors.cases = cJSON_CreateArray();
    vectors.keys = fm_cf_keys_new();
    vectors.public_keys = fm_cf_keys_new();
    assert_non_null(vectors.cases);
    assert_non_null(vectors.keys);
    assert_non_null(vectors.public_keys);
    for (char *line = strtok(output, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        cJSON *item = cJSON_Parse(line);
        if (item == NULL)
            fail_msg("unparsable line from cfsign_vectors.py: %.80s", line);
        const char *type = str_of(item, "type");
        assert_non_null(type);
        if (strcmp(type, "key") == 0) {
            if (bool_of(item, "configured")) {
                add_key_file(vectors.keys, vectors.dir, str_of(item, "id"), ".pem");
                add_key_file(vectors.public_keys, vectors.dir, str_of(item, "id"), ".pub.pem");
            }
            cJSON_Delete(item);
        } else {
            cJSON_AddItemToArray(vectors.cases, item);
        }
    }
    free(output);
    assert_int_equal(fm_cf_keys_count(vectors.keys), 3);
    assert_true(cJSON_GetArraySize(vectors.cases) >= 70);
}

static inline int teardown_group(void **state)
{
    if (vectors.dir[0] != '\0') {
        char command[128];
        snprintf(command, sizeof command, "rm -rf '%s'", vectors.dir);
        assert_int_equal(system(command), 0);
    }
    cJSON_Delete(vectors.cases);
    fm_cf_keys_free(vectors.keys);
    fm_cf_keys_free(vectors.public_keys);
    memset(&vectors, 0, sizeof vectors);
    return 0;
}

#endif
