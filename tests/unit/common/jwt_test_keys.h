/*
 * What test_jwt.c and test_jwt_memo.c share: the HS256 secret and issuers, a verifier for them, and the PyJWT
 * vectors (jwt_vectors.py run with Debian's /usr/bin/python3), generated once per executable by load_vectors()
 * and freed by teardown_group(), the group teardown of both. If PyJWT is missing the PyJWT tests fail; they never
 * skip.
 */
#ifndef FM_TEST_JWT_KEYS_H
#define FM_TEST_JWT_KEYS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "b64.h"
#include "jwt.h"
#include "test_script.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NOW INT64_C(1700000000)
#define TOKEN_BUF (FM_JWT_MAX_TOKEN_LEN * 2)
#define OUR_ISS "https://files.example/auth"
#define EXT_ISS "https://idp.example"
#define AUDIENCE "files-manager-api"

static const char secret[] = "0123456789abcdef0123456789abcdef-secret!"; /* 40 bytes */
#define SECRET_LEN (sizeof secret - 1)

static inline fm_jwt_verifier_t *make_verifier(fm_jwt_alg_t external_alg, const char *pem)
{
    fm_jwt_verifier_config_t config = {
        .hs256_secret = (const uint8_t *)secret,
        .hs256_secret_len = SECRET_LEN,
        .issuer = OUR_ISS,
    };
    if (pem != NULL) {
        config.external_issuer = EXT_ISS;
        config.external_alg = external_alg;
        config.external_public_pem = pem;
        config.external_public_pem_len = strlen(pem);
        config.external_audience = AUDIENCE;
    }
    return fm_jwt_verifier_new(&config);
}

/* ---- PyJWT ---------------------------------------------------------------------------------------------- */

/* Runs jwt_vectors.py with `args` (already shell-safe) and returns its stdout; any failure fails the test. Vectors
 * are ~30 KiB: a 1 MiB output means something is wrong anyway. */
static inline char *run_vectors_script(const char *args)
{
    return test_script_run("jwt_vectors.py", args, NULL, 1 << 20,
                           "PyJWT and cryptography (python3-jwt, python3-cryptography) are");
}

static struct {
    int64_t now;
    char *rs_pem;
    char *es_pem;
    cJSON *cases; /* array of case objects */
    fm_jwt_verifier_t *rs;
    fm_jwt_verifier_t *es;
} vectors;

static inline void load_vectors(void)
{
    if (vectors.cases != NULL)
        return;
    char secret_hex[2 * SECRET_LEN + 1], args[512];
    assert_int_equal(fm_hex_encode(secret, SECRET_LEN, secret_hex, sizeof secret_hex), 0);
    vectors.now = (int64_t)time(NULL);
    snprintf(args, sizeof args, "gen %lld '%s' '%s' '%s' %s", (long long)vectors.now, OUR_ISS, EXT_ISS, AUDIENCE,
             secret_hex);
    char *output = run_vectors_script(args);
    vectors.cases = cJSON_CreateArray();
    assert_non_null(vectors.cases);
    for (char *line = strtok(output, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        cJSON *item = cJSON_Parse(line);
        if (item == NULL)
            fail_msg("unparsable line from jwt_vectors.py: %.80s", line);
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(item, "type"));
        assert_non_null(type);
        if (strcmp(type, "key") == 0) {
            const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(item, "name"));
            const char *pem = cJSON_GetStringValue(cJSON_GetObjectItem(item, "pem"));
            assert_non_null(name);
            assert_non_null(pem);
            if (strcmp(name, "rs256") == 0)
                vectors.rs_pem = strdup(pem);
            else if (strcmp(name, "es256") == 0)
                vectors.es_pem = strdup(pem);
            cJSON_Delete(item);
        } else {
            cJSON_AddItemToArray(vectors.cases, item);
        }
    }
    free(output);
    assert_non_null(vectors.rs_pem);
    assert_non_null(vectors.es_pem);
    assert_true(cJSON_GetArraySize(vectors.cases) >= 30);
    vectors.rs = make_verifier(FM_JWT_ALG_RS256, vectors.rs_pem);
    vectors.es = make_verifier(FM_JWT_ALG_ES256, vectors.es_pem);
    assert_non_null(vectors.rs);
    assert_non_null(vectors.es);
}

static inline const char *case_token(const char *name)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, vectors.cases)
    {
        if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(item, "name")), name) == 0)
            return cJSON_GetStringValue(cJSON_GetObjectItem(item, "token"));
    }
    fail_msg("no vector named %s", name);
    return NULL;
}

static inline int teardown_group(void **state)
{
    cJSON_Delete(vectors.cases);
    free(vectors.rs_pem);
    free(vectors.es_pem);
    fm_jwt_verifier_free(vectors.rs);
    fm_jwt_verifier_free(vectors.es);
    memset(&vectors, 0, sizeof vectors);
    return 0;
}

#endif
