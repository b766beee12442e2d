/*
 * Tests of common/sigv4.c against the AWS documentation's examples and against botocore (sigv4_vectors.py, run
 * here with Debian's /usr/bin/python3; a missing botocore fails the test). The S3 client is tested in test_s3.c
 * and test_s3_xml.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include "sigv4.h"

#define DOC_ACCESS "AKIAIOSFODNN7EXAMPLE"
#define DOC_SECRET "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define DOC_HOST "https://examplebucket.s3.amazonaws.com"
#define DOC_NOW ((time_t)1369353600) /* 2013-05-24T00:00:00Z */
#define DAY 86400

static fm_sigv4_t *doc_signer(void)
{
    fm_sigv4_t *s = fm_sigv4_new(DOC_ACCESS, DOC_SECRET, NULL, "us-east-1", "s3");
    assert_non_null(s);
    return s;
}

/* The 64-hex signature at the end of an Authorization value or a presigned URL. */
static const char *signature_of(const char *s)
{
    const char *p = strstr(s, "Signature=");
    assert_non_null(p);
    return p + 10;
}

/* ---- AWS documentation examples --------------------------------------------------------------------------- */

/* S3 API reference, "Authenticating Requests: Using Query Parameters", the presigned GET example. */
static void test_aws_presign_example(void **state)
{
    fm_sigv4_t *s = doc_signer();
    fm_sigv4_request_t req = {.method = "GET", .endpoint = DOC_HOST, .key = "test.txt"};
    char *url = NULL;
    assert_int_equal(fm_sigv4_presign(s, &req, 86400, DOC_NOW, &url), 0);
    assert_string_equal(url, "https://examplebucket.s3.amazonaws.com/test.txt"
                             "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                             "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
                             "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
                             "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    free(url);
    fm_sigv4_free(s);
}

/* "Authenticating Requests: Using the Authorization Header", its four single-chunk examples. */
static void test_aws_header_examples(void **state)
{
    fm_sigv4_t *s = doc_signer();
    fm_sigv4_auth_t auth;

    /* GET Object, first 10 bytes. */
    fm_sigv4_header_t range[] = {{"Range", "bytes=0-9"}};
    fm_sigv4_request_t get = {
        .method = "GET", .endpoint = DOC_HOST, .key = "test.txt", .headers = range, .header_count = 1};
    assert_int_equal(fm_sigv4_sign_headers(s, &get, FM_SIGV4_EMPTY_SHA256, DOC_NOW, &auth), 0);
    assert_string_equal(auth.authorization,
                        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    assert_string_equal(auth.amz_date, "20130524T000000Z");
    assert_string_equal(auth.content_sha256, FM_SIGV4_EMPTY_SHA256);
    assert_string_equal(auth.host, "examplebucket.s3.amazonaws.com");
    assert_null(auth.security_token);

    /* PUT Object: '$' in the key is encoded, a Date header is signed besides x-amz-date. */
    const char *body = "Welcome to Amazon S3.";
    char hash[65];
    fm_sigv4_sha256_hex(body, strlen(body), hash);
    assert_string_equal(hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
    fm_sigv4_header_t put_headers[] = {{"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                                       {"x-amz-storage-class", "REDUCED_REDUNDANCY"}};
    fm_sigv4_request_t put = {
        .method = "PUT", .endpoint = DOC_HOST, .key = "test$file.text", .headers = put_headers, .header_count = 2};
    assert_int_equal(fm_sigv4_sign_headers(s, &put, hash, DOC_NOW, &auth), 0);
    assert_non_null(strstr(auth.authorization, "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;"
                                               "x-amz-storage-class, "));
    assert_string_equal(signature_of(auth.authorization),
                        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");

    /* GET Bucket Lifecycle: a parameter without a value is "lifecycle=". */
    fm_sigv4_param_t lifecycle[] = {{"lifecycle", NULL}};
    fm_sigv4_request_t lc = {.method = "GET", .endpoint = DOC_HOST, .params = lifecycle, .param_count = 1};
    assert_int_equal(fm_sigv4_sign_headers(s, &lc, FM_SIGV4_EMPTY_SHA256, DOC_NOW, &auth), 0);
    assert_string_equal(signature_of(auth.authorization),
                        "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");

    /* GET Bucket (List Objects): parameters given out of order are signed sorted. */
    fm_sigv4_param_t list[] = {{"prefix", "J"}, {"max-keys", "2"}};
    fm_sigv4_request_t ls = {.method = "GET", .endpoint = DOC_HOST, .params = list, .param_count = 2};
    assert_int_equal(fm_sigv4_sign_headers(s, &ls, FM_SIGV4_EMPTY_SHA256, DOC_NOW, &auth), 0);
    assert_string_equal(signature_of(auth.authorization),
                        "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
    fm_sigv4_free(s);
}

/* IAM user guide's signing-key example (20150830, us-east-1, iam): the derivation chain on its own. */
static void test_aws_signing_key_example(void **state)
{
    fm_sigv4_t *s = fm_sigv4_new(DOC_ACCESS, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", NULL, "us-east-1", "iam");
    assert_non_null(s);
    unsigned char key[32];
    assert_int_equal(fm_sigv4_signing_key(s, (time_t)1440892800 + 3600, key), 0);
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    assert_string_equal(hex, "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9");
    fm_sigv4_free(s);
}

/* ---- botocore as the independent implementation ----------------------------------------------------------- */

typedef struct {
    fm_sigv4_param_t params[16];
    fm_sigv4_header_t headers[16];
    fm_sigv4_request_t req;
} json_request_t;

static const char *json_str(const cJSON *obj, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static void json_pairs(const cJSON *array, fm_sigv4_param_t *out, size_t max, size_t *count)
{
    *count = 0;
    const cJSON *pair;
    cJSON_ArrayForEach(pair, array)
    {
        assert_true(*count < max);
        out[*count].name = cJSON_GetArrayItem(pair, 0)->valuestring;
        out[*count].value = cJSON_GetArrayItem(pair, 1)->valuestring;
        (*count)++;
    }
}

static fm_sigv4_t *json_request(const cJSON *v, json_request_t *r)
{
    memset(r, 0, sizeof(*r));
    r->req.method = json_str(v, "method");
    r->req.endpoint = json_str(v, "endpoint");
    r->req.bucket = json_str(v, "bucket");
    r->req.key = json_str(v, "key");
    json_pairs(cJSON_GetObjectItemCaseSensitive(v, "params"), r->params, 16, &r->req.param_count);
    r->req.params = r->params;
    /* fm_sigv4_header_t has the same layout as fm_sigv4_param_t; fill it field by field all the same. */
    fm_sigv4_param_t tmp[16];
    json_pairs(cJSON_GetObjectItemCaseSensitive(v, "headers"), tmp, 16, &r->req.header_count);
    for (size_t i = 0; i < r->req.header_count; i++) {
        r->headers[i].name = tmp[i].name;
        r->headers[i].value = tmp[i].value;
    }
    r->req.headers = r->headers;
    fm_sigv4_t *s = fm_sigv4_new(json_str(v, "access_key"), json_str(v, "secret_key"), json_str(v, "session_token"),
                                 json_str(v, "region"), "s3");
    assert_non_null(s);
    return s;
}

static void check_presign_vector(const cJSON *v)
{
    json_request_t r;
    fm_sigv4_t *s = json_request(v, &r);
    char *url = NULL;
    time_t now = (time_t)cJSON_GetObjectItemCaseSensitive(v, "now")->valuedouble;
    long expires = (long)cJSON_GetObjectItemCaseSensitive(v, "expires")->valuedouble;
    if (fm_sigv4_presign(s, &r.req, expires, now, &url) != 0)
        fail_msg("%s: %s", json_str(v, "name"), fm_sigv4_last_error());
    if (strcmp(url, json_str(v, "url")) != 0)
        fail_msg("%s:\n  ours     %s\n  botocore %s", json_str(v, "name"), url, json_str(v, "url"));
    free(url);
    fm_sigv4_free(s);
}

static void check_header_vector(const cJSON *v)
{
    json_request_t r;
    fm_sigv4_t *s = json_request(v, &r);
    const char *name = json_str(v, "name"), *body = json_str(v, "body");
    char hash[65];
    fm_sigv4_sha256_hex(body, strlen(body), hash);
    assert_string_equal(hash, json_str(v, "content_sha256"));
    fm_sigv4_auth_t auth;
    time_t now = (time_t)cJSON_GetObjectItemCaseSensitive(v, "now")->valuedouble;
    if (fm_sigv4_sign_headers(s, &r.req, hash, now, &auth) != 0)
        fail_msg("%s: %s", name, fm_sigv4_last_error());
    if (strcmp(auth.authorization, json_str(v, "authorization")) != 0)
        fail_msg("%s:\n  ours     %s\n  botocore %s", name, auth.authorization, json_str(v, "authorization"));
    assert_string_equal(auth.amz_date, json_str(v, "amz_date"));
    const char *token = json_str(v, "security_token");
    if (token != NULL)
        assert_string_equal(auth.security_token, token);
    else
        assert_null(auth.security_token);
    /* The URL we send must have botocore's path (botocore writes a bare "?uploads", we "?uploads="). */
    char *url = NULL;
    assert_int_equal(fm_sigv4_url(&r.req, &url), 0);
    const char *expected = json_str(v, "url");
    size_t path_len = strcspn(expected, "?");
    if (strncmp(url, expected, path_len) != 0 || (url[path_len] != '\0' && url[path_len] != '?'))
        fail_msg("%s: URL %s, botocore %s", name, url, expected);
    free(url);
    fm_sigv4_free(s);
}

static void test_botocore_vectors(void **state)
{
    const char *source_dir = getenv("FM_SOURCE_DIR");
    char command[1024];
    if (source_dir != NULL)
        snprintf(command, sizeof(command), "/usr/bin/python3 '%s/tests/unit/common/sigv4_vectors.py'", source_dir);
    else /* run by hand from the build tree: this file's own folder */
        snprintf(command, sizeof(command), "/usr/bin/python3 \"$(dirname '%s')/sigv4_vectors.py\"", __FILE__);
    FILE *p = popen(command, "r");
    assert_non_null(p);
    char *line = NULL;
    size_t cap = 0;
    int presigns = 0, signs = 0, end_count = -1;
    while (getline(&line, &cap, p) > 0) {
        cJSON *v = cJSON_Parse(line);
        if (v == NULL)
            fail_msg("sigv4_vectors.py printed a line that is not JSON: %s", line);
        const char *kind = json_str(v, "kind");
        assert_non_null(kind);
        if (strcmp(kind, "presign") == 0) {
            check_presign_vector(v);
            presigns++;
        } else if (strcmp(kind, "headers") == 0) {
            check_header_vector(v);
            signs++;
        } else if (strcmp(kind, "end") == 0) {
            end_count = (int)cJSON_GetObjectItemCaseSensitive(v, "count")->valuedouble;
        }
        cJSON_Delete(v);
    }
    free(line);
    int status = pclose(p);
    /* No botocore (or any crash of the generator) must fail, never pass quietly with nothing compared. */
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("sigv4_vectors.py failed (status %d): is python3-botocore installed?", status);
    assert_int_equal(end_count, presigns + signs);
    assert_true(presigns >= 20);
    assert_true(signs >= 6);
}

/* ---- limits, cache, bad input ------------------------------------------------------------------------------ */

static void test_expiry_bounds(void **state)
{
    fm_sigv4_t *s = doc_signer();
    fm_sigv4_request_t req = {.method = "GET", .endpoint = "http://127.0.0.1:7480", .bucket = "b", .key = "k"};
    char *url = (char *)"unchanged";
    assert_int_equal(fm_sigv4_presign(s, &req, 0, DOC_NOW, &url), -1);
    assert_null(url);
    assert_non_null(strstr(fm_sigv4_last_error(), "expiry"));
    assert_int_equal(fm_sigv4_presign(s, &req, FM_SIGV4_MAX_EXPIRES + 1, DOC_NOW, &url), -1);
    assert_int_equal(fm_sigv4_presign(s, &req, -5, DOC_NOW, &url), -1);
    assert_int_equal(fm_sigv4_presign(s, &req, 1, DOC_NOW, &url), 0);
    assert_non_null(strstr(url, "&X-Amz-Expires=1&"));
    free(url);
    assert_int_equal(fm_sigv4_presign(s, &req, FM_SIGV4_MAX_EXPIRES, DOC_NOW, &url), 0);
    assert_non_null(strstr(url, "&X-Amz-Expires=604800&"));
    free(url);
    fm_sigv4_free(s);
}

static void test_signing_key_cache(void **state)
{
    fm_sigv4_t *s = doc_signer();
    fm_sigv4_request_t req = {.method = "GET", .endpoint = "http://127.0.0.1:7480", .bucket = "b", .key = "k"};
    char *first = NULL, *again = NULL;
    assert_int_equal(fm_sigv4_key_derivations(s), 0);
    assert_int_equal(fm_sigv4_presign(s, &req, 60, DOC_NOW, &first), 0);
    assert_int_equal(fm_sigv4_presign(s, &req, 60, DOC_NOW, &again), 0);
    assert_string_equal(first, again); /* the cached key signs exactly as the fresh one did */
    assert_int_equal(fm_sigv4_key_derivations(s), 1);
    free(again);

    /* Later the same UTC day: same key, no new derivation. */
    unsigned char key_morning[32], key_night[32], key_next[32];
    assert_int_equal(fm_sigv4_signing_key(s, DOC_NOW + 1, key_morning), 0);
    assert_int_equal(fm_sigv4_signing_key(s, DOC_NOW + DAY - 1, key_night), 0);
    assert_memory_equal(key_morning, key_night, 32);
    assert_int_equal(fm_sigv4_key_derivations(s), 1);

    /* Midnight UTC: a new scope date, so a new key and a different signature. */
    assert_int_equal(fm_sigv4_signing_key(s, DOC_NOW + DAY, key_next), 0);
    assert_memory_not_equal(key_night, key_next, 32);
    assert_int_equal(fm_sigv4_key_derivations(s), 2);
    assert_int_equal(fm_sigv4_presign(s, &req, 60, DOC_NOW + DAY, &again), 0);
    assert_non_null(strstr(again, "%2F20130525%2F"));
    assert_string_not_equal(signature_of(first), signature_of(again));
    free(again);

    /* Back to the first day (a request signed with an older clock): re-derived, and still correct. */
    assert_int_equal(fm_sigv4_presign(s, &req, 60, DOC_NOW, &again), 0);
    assert_string_equal(first, again);
    assert_int_equal(fm_sigv4_key_derivations(s), 3);
    free(again);
    free(first);
    fm_sigv4_free(s);
}

typedef struct {
    fm_sigv4_t *signer;
    const char *expected[2]; /* day 1, day 2 */
    int mismatches;
} race_t;

static void *race_worker(void *arg)
{
    race_t *race = arg;
    fm_sigv4_request_t req = {.method = "GET", .endpoint = "http://127.0.0.1:7480", .bucket = "b", .key = "k"};
    for (int i = 0; i < 2000; i++) {
        char *url = NULL;
        int day = i % 2;
        if (fm_sigv4_presign(race->signer, &req, 60, DOC_NOW + day * DAY, &url) != 0 ||
            strcmp(url, race->expected[day]) != 0)
            __atomic_add_fetch(&race->mismatches, 1, __ATOMIC_RELAXED);
        free(url);
    }
    return NULL;
}

/* Threads sharing one signer across a day change keep signing correctly (the cache is locked). */
static void test_signer_shared_by_threads(void **state)
{
    fm_sigv4_t *reference = doc_signer();
    fm_sigv4_request_t req = {.method = "GET", .endpoint = "http://127.0.0.1:7480", .bucket = "b", .key = "k"};
    char *day1 = NULL, *day2 = NULL;
    assert_int_equal(fm_sigv4_presign(reference, &req, 60, DOC_NOW, &day1), 0);
    assert_int_equal(fm_sigv4_presign(reference, &req, 60, DOC_NOW + DAY, &day2), 0);
    race_t race = {.signer = doc_signer(), .expected = {day1, day2}};
    pthread_t threads[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, race_worker, &race), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(threads[i], NULL);
    assert_int_equal(race.mismatches, 0);
    free(day1);
    free(day2);
    fm_sigv4_free(race.signer);
    fm_sigv4_free(reference);
}

static void expect_presign_error(fm_sigv4_t *s, const fm_sigv4_request_t *req, const char *words)
{
    char *url = NULL;
    assert_int_equal(fm_sigv4_presign(s, req, 60, DOC_NOW, &url), -1);
    assert_null(url);
    if (strstr(fm_sigv4_last_error(), words) == NULL)
        fail_msg("error \"%s\" does not mention \"%s\"", fm_sigv4_last_error(), words);
}

static void test_rejects_bad_input(void **state)
{
    fm_sigv4_t *s = doc_signer();
    fm_sigv4_request_t req = {.method = "GET", .endpoint = "http://127.0.0.1:7480", .bucket = "b", .key = "k"};

    req.endpoint = "ftp://127.0.0.1";
    expect_presign_error(s, &req, "http");
    req.endpoint = "http://127.0.0.1:7480/prefix";
    expect_presign_error(s, &req, "path");
    req.endpoint = "http://user@127.0.0.1";
    expect_presign_error(s, &req, "character");
    req.endpoint = "http://127.0.0.1:74x";
    expect_presign_error(s, &req, "port");
    req.endpoint = "http://127.0.0.1:7480";

    req.method = "get";
    expect_presign_error(s, &req, "method");
    req.method = "GET";

    char long_key[FM_SIGV4_MAX_KEY + 2];
    memset(long_key, 'k', sizeof(long_key) - 1);
    long_key[sizeof(long_key) - 1] = '\0';
    req.key = long_key;
    expect_presign_error(s, &req, "key");
    req.key = "k";

    fm_sigv4_param_t ours[] = {{"x-amz-signature", "forged"}};
    req.params = ours;
    req.param_count = 1;
    expect_presign_error(s, &req, "set by the signer");
    req.param_count = 0;

    fm_sigv4_header_t injected[] = {{"Content-Type", "text/plain\r\nX-Evil: 1"}};
    req.headers = injected;
    req.header_count = 1;
    expect_presign_error(s, &req, "control character");
    fm_sigv4_header_t host[] = {{"Host", "elsewhere"}};
    req.headers = host;
    expect_presign_error(s, &req, "set by the signer");
    fm_sigv4_header_t bad_name[] = {{"Content Type", "x"}};
    req.headers = bad_name;
    expect_presign_error(s, &req, "token");
    req.header_count = 0;

    char *url = NULL;
    assert_int_equal(fm_sigv4_presign(s, &req, 60, (time_t)-1, &url), -1);
    fm_sigv4_auth_t auth;
    assert_int_equal(fm_sigv4_sign_headers(s, &req, "ABC", DOC_NOW, &auth), -1);
    assert_non_null(strstr(fm_sigv4_last_error(), "payload hash"));
    fm_sigv4_header_t sha[] = {{"X-Amz-Content-Sha256", FM_SIGV4_EMPTY_SHA256}};
    req.headers = sha;
    req.header_count = 1;
    assert_int_equal(fm_sigv4_sign_headers(s, &req, NULL, DOC_NOW, &auth), -1);

    assert_null(fm_sigv4_new("AK/ID", "secret", NULL, "us-east-1", "s3"));
    assert_null(fm_sigv4_new("AKID", "", NULL, "us-east-1", "s3"));
    assert_null(fm_sigv4_new("AKID", "secret", NULL, "us-east-1/x", "s3"));
    assert_null(fm_sigv4_new("AKID", "secret", "tok\nen", "us-east-1", "s3"));
    fm_sigv4_free(s);
}

/* Header signing details the published examples do not cover: UNSIGNED-PAYLOAD and a session token. */
static void test_header_signing_token_and_unsigned(void **state)
{
    fm_sigv4_t *s = fm_sigv4_new(DOC_ACCESS, DOC_SECRET, "tok/+=", "us-east-1", "s3");
    fm_sigv4_request_t req = {.method = "GET", .endpoint = "http://127.0.0.1:80", .bucket = "b", .key = "a b"};
    fm_sigv4_auth_t auth;
    assert_int_equal(fm_sigv4_sign_headers(s, &req, NULL, DOC_NOW, &auth), 0);
    assert_string_equal(auth.content_sha256, FM_SIGV4_UNSIGNED_PAYLOAD);
    assert_string_equal(auth.security_token, "tok/+=");
    assert_string_equal(auth.host, "127.0.0.1"); /* clients leave :80 out of Host */
    assert_non_null(strstr(auth.authorization, "SignedHeaders=host;x-amz-content-sha256;x-amz-date;"
                                               "x-amz-security-token, "));
    char *url = NULL;
    assert_int_equal(fm_sigv4_url(&req, &url), 0);
    assert_string_equal(url, "http://127.0.0.1:80/b/a%20b");
    free(url);
    fm_sigv4_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aws_presign_example),
        cmocka_unit_test(test_aws_header_examples),
        cmocka_unit_test(test_aws_signing_key_example),
        cmocka_unit_test(test_botocore_vectors),
        cmocka_unit_test(test_expiry_bounds),
        cmocka_unit_test(test_signing_key_cache),
        cmocka_unit_test(test_signer_shared_by_threads),
        cmocka_unit_test(test_rejects_bad_input),
        cmocka_unit_test(test_header_signing_token_and_unsigned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
