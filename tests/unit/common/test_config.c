/* common/config.c: defaults, bounds, required variables, secrets kept out of messages, Redis URLs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"

static const char *required[][2] = {
    {"FM_DATABASE_URL", "host=127.0.0.1 dbname=x"}, {"FM_REDIS_URL", "redis://127.0.0.1:6379/0"},
    {"FM_S3_ENDPOINT", "http://127.0.0.1:7480"},    {"FM_S3_ACCESS_KEY", "AK"},
    {"FM_S3_SECRET_KEY", "very-secret-key"},        {"FM_JWT_SECRET", "0123456789abcdef0123456789abcdef"},
};

static int setup(void **state)
{
    extern char **environ;
    for (char **e = environ; *e != NULL;) { /* a clean FM_* environment */
        if (strncmp(*e, "FM_", 3) == 0) {
            char name[128];
            snprintf(name, sizeof(name), "%.*s", (int)strcspn(*e, "="), *e);
            unsetenv(name);
            e = environ;
        } else {
            ++e;
        }
    }
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); ++i)
        setenv(required[i][0], required[i][1], 1);
    return 0;
}

static int load(fm_config_t *cfg, char *errors, size_t size)
{
    FILE *err = fmemopen(errors, size, "w");
    int rc = fm_config_load(cfg, FM_SVC_CONTROL, err);
    fclose(err);
    return rc;
}

static void test_defaults(void **state)
{
    static fm_config_t cfg;
    char errors[4096] = "";
    assert_int_equal(load(&cfg, errors, sizeof(errors)), 0);
    assert_int_equal(cfg.http_port, 8080);
    assert_int_equal(cfg.access_ttl_s, 900);
    assert_int_equal(cfg.argon2_m_kib, 19456);
    assert_true(cfg.threads >= 1);
    assert_string_equal(cfg.s3_region, "us-east-1");
}

static void test_bad_values_are_named(void **state)
{
    static fm_config_t cfg;
    char errors[4096] = "";
    setenv("FM_HTTP_PORT", "70000", 1);
    setenv("FM_THREADS", "two", 1);
    setenv("FM_LOG_LEVEL", "loud", 1);
    setenv("FM_JWT_SECRET", "short-secret-value", 1);
    assert_int_equal(load(&cfg, errors, sizeof(errors)), -1);
    assert_non_null(strstr(errors, "FM_HTTP_PORT"));
    assert_non_null(strstr(errors, "FM_THREADS"));
    assert_non_null(strstr(errors, "FM_LOG_LEVEL"));
    assert_non_null(strstr(errors, "FM_JWT_SECRET"));
    /* a secret's value never appears in a message */
    assert_null(strstr(errors, "short-secret-value"));
}

static void test_missing_required(void **state)
{
    static fm_config_t cfg;
    char errors[4096] = "";
    unsetenv("FM_DATABASE_URL");
    assert_int_equal(load(&cfg, errors, sizeof(errors)), -1);
    assert_non_null(strstr(errors, "FM_DATABASE_URL is required"));
}

static void test_cross_field_rules(void **state)
{
    static fm_config_t cfg;
    char errors[4096] = "";
    setenv("FM_TLS_CERT", "/tmp/cert.pem", 1);
    setenv("FM_S3_ENDPOINT", "127.0.0.1:7480", 1);
    assert_int_equal(load(&cfg, errors, sizeof(errors)), -1);
    assert_non_null(strstr(errors, "FM_TLS_KEY"));
    assert_non_null(strstr(errors, "FM_S3_ENDPOINT"));
}

static void test_redis_url(void **state)
{
    char host[64], password[64];
    int port, db;
    assert_int_equal(fm_redis_url_parse("redis://127.0.0.1:16379/3", host, sizeof(host), &port, password,
                                        sizeof(password), &db), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 16379);
    assert_int_equal(db, 3);
    assert_string_equal(password, "");
    assert_int_equal(fm_redis_url_parse("redis://user:p%40ss@cache", host, sizeof(host), &port, password,
                                        sizeof(password), &db), 0);
    assert_string_equal(host, "cache");
    assert_int_equal(port, 6379);
    assert_int_equal(db, 0);
    assert_string_equal(password, "p%40ss");
    const char *bad[] = {"http://x", "redis://", "redis://h:0", "redis://h:99999", "redis://h/x", "redis://h:1/2/3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
        assert_int_equal(fm_redis_url_parse(bad[i], host, sizeof(host), &port, password, sizeof(password), &db), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, setup),
        cmocka_unit_test_setup(test_bad_values_are_named, setup),
        cmocka_unit_test_setup(test_missing_required, setup),
        cmocka_unit_test_setup(test_cross_field_rules, setup),
        cmocka_unit_test_setup(test_redis_url, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
