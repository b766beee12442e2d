/* common/config.c: defaults, bounds, required variables, secrets kept out of messages, Redis URLs, list settings. */
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

/* Every item of `list` joined with '|' (fm_config_list_next's view of it). */
static void items_of(const char *list, char *out, size_t size)
{
    size_t pos = 0, len, used = 0;
    const char *item;
    out[0] = '\0';
    while ((len = fm_config_list_next(list, &pos, &item)) > 0) {
        assert_true(item >= list && item + len <= list + strlen(list));
        used += (size_t)snprintf(out + used, size - used, "%s%.*s", used ? "|" : "", (int)len, item);
        assert_true(used < size);
    }
    assert_int_equal(pos, strlen(list)); /* the end is the end of the string, and stays there */
    assert_int_equal(fm_config_list_next(list, &pos, &item), 0);
}

static void test_list_items(void **state)
{
    char items[256];
    items_of("", items, sizeof(items));
    assert_string_equal(items, "");
    items_of(" , ,\t,", items, sizeof(items));
    assert_string_equal(items, "");
    items_of("http://a:1", items, sizeof(items));
    assert_string_equal(items, "http://a:1");
    items_of(" http://a:1 ,http://b/ ,, \thttps://c ", items, sizeof(items));
    assert_string_equal(items, "http://a:1|http://b/|https://c");
    items_of("a b,c", items, sizeof(items)); /* blanks inside an item are kept (and refused by the URL check) */
    assert_string_equal(items, "a b|c");
}

static int load_worker(fm_config_t *cfg, char *errors, size_t size)
{
    FILE *err = fmemopen(errors, size, "w");
    int rc = fm_config_load(cfg, FM_SVC_WORKER, err);
    fclose(err);
    return rc;
}

static void test_edge_purge_settings(void **state)
{
    static fm_config_t cfg;
    char errors[4096] = "";
    assert_int_equal(load_worker(&cfg, errors, sizeof(errors)), 0);
    assert_string_equal(cfg.edge_purge_urls, ""); /* no edges: purge jobs are no-ops */
    setenv("FM_EDGE_PURGE_URLS", "http://127.0.0.1:8081, https://edge-2.example/", 1);
    assert_int_equal(load_worker(&cfg, errors, sizeof(errors)), -1);
    assert_non_null(strstr(errors, "FM_EDGE_PURGE_URLS needs FM_EDGE_PURGE_SECRET"));
    setenv("FM_EDGE_PURGE_SECRET", "purge-secret-0123456789", 1);
    errors[0] = '\0';
    assert_int_equal(load_worker(&cfg, errors, sizeof(errors)), 0);
    assert_string_equal(cfg.edge_purge_secret, "purge-secret-0123456789");
    const char *bad[] = {"127.0.0.1:8081", "http://", "http:///x", "ftp://edge", "http://a b", "http://ok,edge:80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        setenv("FM_EDGE_PURGE_URLS", bad[i], 1);
        errors[0] = '\0';
        assert_int_equal(load_worker(&cfg, errors, sizeof(errors)), -1);
        assert_non_null(strstr(errors, "FM_EDGE_PURGE_URLS"));
        assert_null(strstr(errors, "purge-secret-0123456789"));
    }
    /* the control plane does not read them: its retention setting instead */
    assert_int_equal(load(&cfg, errors, sizeof(errors)), 0);
    assert_string_equal(cfg.edge_purge_urls, "");
    assert_int_equal(cfg.trash_retention_s, 2592000);
    setenv("FM_TRASH_RETENTION_S", "0", 1);
    assert_int_equal(load(&cfg, errors, sizeof(errors)), -1);
    assert_non_null(strstr(errors, "FM_TRASH_RETENTION_S"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, setup),
        cmocka_unit_test_setup(test_bad_values_are_named, setup),
        cmocka_unit_test_setup(test_missing_required, setup),
        cmocka_unit_test_setup(test_cross_field_rules, setup),
        cmocka_unit_test_setup(test_redis_url, setup),
        cmocka_unit_test_setup(test_list_items, setup),
        cmocka_unit_test_setup(test_edge_purge_settings, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
