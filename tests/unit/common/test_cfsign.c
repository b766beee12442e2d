/*
 * Tests for common/cfsign.c: CloudFront signed URLs.
 *
 * Independent references: botocore's CloudFrontSigner with `cryptography` (cfsign_vectors.py, run with Debian's
 * /usr/bin/python3; a missing module fails the test, never skips it) signs URLs from freshly generated RSA-2048
 * and P-256 keys; our RSA URLs must be byte-identical (PKCS#1 v1.5 is deterministic), every vector must verify
 * (or be refused) as the script says, and our ECDSA URLs must verify in `cryptography`. AWS's published example
 * key pair (PK12345EXAMPLE, RSA-1024, from the 2012 CloudFront Developer Guide) checks both against AWS's own
 * signatures. The rest are refusals made by tampering with valid URLs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cfsign.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CLIENT "203.0.113.9"

/* ---- helpers ------------------------------------------------------------------------------------------------ */

static char *read_text_file(const char *path)
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

static void add_key_file(fm_cf_keys_t *keys, const char *dir, const char *id, const char *suffix)
{
    char path[PATH_MAX], err[256] = "";
    snprintf(path, sizeof path, "%s/%s%s", dir, id, suffix);
    char *pem = read_text_file(path);
    if (fm_cf_keys_add_pem(keys, id, pem, strlen(pem), err, sizeof err) != 0)
        fail_msg("adding %s: %s", path, err);
    free(pem);
}

static void expect_status(const fm_cf_keys_t *keys, const char *url, const char *client_ip, long long now,
                          fm_cf_status_t expected, const char *what)
{
    char reason[256] = "";
    fm_cf_status_t status = fm_cf_verify_url(keys, url, strlen(url), client_ip, now, reason, sizeof reason);
    if (status != expected)
        fail_msg("%s: got %s (%s), want %s\n  URL: %.300s", what, fm_cf_status_code(status), reason,
                 fm_cf_status_code(expected), url);
}

/* A malloc'd copy of `s` with the first `from` replaced by `to`; the test fails if `from` is absent. */
static char *replace_once(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    if (at == NULL)
        fail_msg("no %s in %s", from, s);
    size_t head = (size_t)(at - s), from_len = strlen(from), to_len = strlen(to);
    char *out = malloc(strlen(s) - from_len + to_len + 1);
    assert_non_null(out);
    memcpy(out, s, head);
    memcpy(out + head, to, to_len);
    strcpy(out + head + to_len, at + from_len);
    return out;
}

/* The value of query parameter `name` in `url` (a pointer into it) and its length. */
static const char *param_value(const char *url, const char *name, size_t *len)
{
    char key[64];
    snprintf(key, sizeof key, "%s=", name);
    const char *at = strstr(url, key);
    assert_non_null(at);
    at += strlen(key);
    *len = strcspn(at, "&");
    return at;
}

/* A copy of `url` with the value of `name` replaced by `value`. */
static char *with_param(const char *url, const char *name, const char *value)
{
    size_t len;
    const char *at = param_value(url, name, &len);
    size_t head = (size_t)(at - url);
    char *out = malloc(strlen(url) + strlen(value) + 1);
    assert_non_null(out);
    memcpy(out, url, head);
    strcpy(out + head, value);
    strcat(out, at + len);
    return out;
}

/* A copy of `url` without the parameter `name` (and its preceding separator). */
static char *without_param(const char *url, const char *name)
{
    size_t len;
    const char *value = param_value(url, name, &len);
    const char *start = value - strlen(name) - 2; /* the '&' or '?' before the name */
    const char *end = value + len;
    char *out = malloc(strlen(url) + 1);
    assert_non_null(out);
    size_t head = (size_t)(start - url);
    memcpy(out, url, head);
    if (*start == '?' && *end == '&') {
        out[head] = '?';
        strcpy(out + head + 1, end + 1);
    } else {
        strcpy(out + head, end);
    }
    return out;
}

/* ---- vectors from botocore -------------------------------------------------------------------------------------- */

static struct {
    char dir[64];
    long long now;
    cJSON *cases;
    fm_cf_keys_t *keys;        /* configured private keys: sign and verify */
    fm_cf_keys_t *public_keys; /* the same ids from their public PEMs: verify only */
} vectors;

static void script_path(char *out, size_t size)
{
    const char *source_dir = getenv("FM_SOURCE_DIR");
    if (source_dir != NULL && *source_dir != '\0') {
        snprintf(out, size, "%s/tests/unit/common/cfsign_vectors.py", source_dir);
    } else {
        /* Run by hand outside ctest: CMake compiles with absolute paths, so __FILE__ locates the script. */
        snprintf(out, size, "%s", __FILE__);
        char *slash = strrchr(out, '/');
        assert_non_null(slash);
        snprintf(slash + 1, size - (size_t)(slash + 1 - out), "cfsign_vectors.py");
    }
    assert_null(strchr(out, '\''));
}

/* Runs the script with `args` (shell-safe) and `input_path` as stdin (NULL: none); returns its stdout. */
static char *run_script(const char *args, const char *input_path)
{
    char path[PATH_MAX], command[2 * PATH_MAX + 256];
    script_path(path, sizeof path);
    /* -I: ignore PYTHONPATH/PYTHONHOME that a pyenv shell may export and that would break Debian's python. */
    snprintf(command, sizeof command, "/usr/bin/python3 -I '%s' %s < '%s'", path, args,
             input_path != NULL ? input_path : "/dev/null");
    FILE *pipe = popen(command, "r");
    if (pipe == NULL)
        fail_msg("cannot start /usr/bin/python3");
    const size_t cap = 4 << 20;
    char *output = malloc(cap);
    assert_non_null(output);
    size_t len = fread(output, 1, cap - 1, pipe);
    assert_true(len < cap - 1);
    output[len] = '\0';
    int status = pclose(pipe);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(output);
        fail_msg("cfsign_vectors.py failed (status %d); python3-botocore and python3-cryptography are required: %s",
                 status, command);
    }
    return output;
}

static const char *str_of(const cJSON *item, const char *name)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(item, name));
}

static long long int_of(const cJSON *item, const char *name)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(item, name);
    assert_true(cJSON_IsNumber(value));
    return (long long)value->valuedouble;
}

static bool bool_of(const cJSON *item, const char *name)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(item, name));
}

static void load_vectors(void)
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

static const cJSON *find_case(const char *name)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, vectors.cases)
    {
        if (strcmp(str_of(item, "name"), name) == 0)
            return item;
    }
    fail_msg("no vector named %s", name);
    return NULL;
}

static const char *case_url(const char *name)
{
    return str_of(find_case(name), "signed");
}

static fm_cf_sign_req_t case_request(const cJSON *item)
{
    fm_cf_sign_req_t req = {
        .url = str_of(item, "url"),
        .date_less_than = int_of(item, "dlt"),
        .date_greater_than = int_of(item, "dgt"),
        .ip_cidr = str_of(item, "ip"),
        .resource = str_of(item, "resource"),
        .hash_sha256 = bool_of(item, "sha256"),
        .force_custom = bool_of(item, "force_custom"),
    };
    return req;
}

static int teardown_group(void **state)
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

/* Our RSA URLs are botocore's, byte for byte. */
static void test_botocore_identical_urls(void **state)
{
    load_vectors();
    int compared = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, vectors.cases)
    {
        if (!bool_of(item, "compare"))
            continue;
        fm_cf_sign_req_t req = case_request(item);
        char *url = NULL, err[256] = "";
        if (fm_cf_sign_url(vectors.keys, str_of(item, "key"), &req, &url, err, sizeof err) != 0)
            fail_msg("%s: sign failed: %s", str_of(item, "name"), err);
        if (strcmp(url, str_of(item, "signed")) != 0)
            fail_msg("%s:\n ours     %s\n botocore %s", str_of(item, "name"), url, str_of(item, "signed"));
        free(url);
        compared++;
    }
    assert_true(compared >= 40);
}

/* Every botocore / cryptography URL verifies, or is refused for the reason the script gives, with the private
 * and with the public key PEMs. */
static void test_botocore_urls_verify(void **state)
{
    load_vectors();
    const cJSON *item;
    cJSON_ArrayForEach(item, vectors.cases)
    {
        const char *name = str_of(item, "name");
        const char *expect = str_of(item, "expect");
        const char *url = str_of(item, "signed");
        for (int pass = 0; pass < 2; pass++) {
            char reason[256] = "";
            fm_cf_status_t status = fm_cf_verify_url(pass == 0 ? vectors.keys : vectors.public_keys, url, strlen(url),
                                                     str_of(item, "client_ip"), vectors.now, reason, sizeof reason);
            if (strcmp(fm_cf_status_code(status), expect) != 0)
                fail_msg("%s: got %s (%s), want %s\n  %s", name, fm_cf_status_code(status), reason, expect, url);
        }
    }
}

/* Our ECDSA (and RSA) URLs verify in `cryptography`, and in our verifier. */
static void test_our_urls_verify_in_python(void **state)
{
    load_vectors();
    char input_path[128];
    snprintf(input_path, sizeof input_path, "%s/ours.txt", vectors.dir);
    FILE *input = fopen(input_path, "w");
    assert_non_null(input);
    int count = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, vectors.cases)
    {
        const char *key = str_of(item, "key");
        const char *expect = str_of(item, "expect");
        bool ec = strcmp(key, "KECP256CURRENT") == 0;
        /* botocore's RSA inputs that verify, and every ECDSA input of the configured key except the one a
         * stranger's key signed (ours would sign it with the configured key). */
        if (!(bool_of(item, "compare") && strcmp(expect, "ok") == 0) && !(ec && strcmp(expect, "bad_signature") != 0))
            continue;
        fm_cf_sign_req_t req = case_request(item);
        char *url = NULL, err[256] = "";
        if (fm_cf_sign_url(vectors.keys, key, &req, &url, err, sizeof err) != 0)
            fail_msg("%s: sign failed: %s", str_of(item, "name"), err);
        expect_status(vectors.public_keys, url, str_of(item, "client_ip"), vectors.now,
                      strcmp(expect, "ok") == 0 ? FM_CF_OK : FM_CF_EXPIRED, str_of(item, "name"));
        fprintf(input, "%s %s\n", key, url);
        free(url);
        count++;
    }
    /* ECDSA with each hash and policy kind, twice: signatures differ each time and both must verify. */
    for (int i = 0; i < 2; i++) {
        fm_cf_sign_req_t req = {.url = "https://cdn.example.com/files/ec/a.jpg?w=1", .date_less_than = 4102444800};
        char *url = NULL;
        for (int variant = 0; variant < 4; variant++) {
            req.hash_sha256 = variant & 1;
            req.force_custom = variant >> 1;
            assert_int_equal(fm_cf_sign_url(vectors.keys, "KECP256CURRENT", &req, &url, NULL, 0), 0);
            fprintf(input, "KECP256CURRENT %s\n", url);
            free(url);
            count++;
        }
    }
    fclose(input);
    char args[256];
    snprintf(args, sizeof args, "verify '%s'", vectors.dir);
    char *output = run_script(args, input_path);
    int lines = 0;
    for (char *line = strtok(output, "\n"); line != NULL; line = strtok(NULL, "\n"), lines++) {
        cJSON *result = cJSON_Parse(line);
        assert_non_null(result);
        if (!bool_of(result, "ok"))
            fail_msg("cryptography refused our URL #%d: %s", lines + 1, str_of(result, "error"));
        cJSON_Delete(result);
    }
    free(output);
    assert_int_equal(lines, count);
    assert_true(count >= 30);
}

/* ---- AWS's published example --------------------------------------------------------------------------------- */

/* The example key pair of the CloudFront Developer Guide (API version 2012-05-05, "Restricting End User Access":
 * key pair id PK12345EXAMPLE), with the URLs and signatures that guide printed for it. AWS published the private
 * key; it protects nothing. RSA-1024, hence fm_cf_keys_allow_rsa1024. */
static const char aws_example_private_pem[] = "-----BEGIN RSA PRIVATE KEY-----\n"
                                              "MIICXQIBAAKBgQDA7ki9gI/lRygIoOjV1yymgx6FYFlzJ+z1ATMaLo57nL57AavW\n"
                                              "hb68HYY8EA0GJU9xQdMVaHBogF3eiCWYXSUZCWM/+M5+ZcdQraRRScucmn6g4EvY\n"
                                              "2K4W2pxbqH8vmUikPxir41EeBPLjMOzKvbzzQy9e/zzIQVREKSp/7y1mywIDAQAB\n"
                                              "AoGABc7mp7XYHynuPZxChjWNJZIq+A73gm0ASDv6At7F8Vi9r0xUlQe/v0AQS3yc\n"
                                              "N8QlyR4XMbzMLYk3yjxFDXo4ZKQtOGzLGteCU2srANiLv26/imXA8FVidZftTAtL\n"
                                              "viWQZBVPTeYIA69ATUYPEq0a5u5wjGyUOij9OWyuy01mbPkCQQDluYoNpPOekQ0Z\n"
                                              "WrPgJ5rxc8f6zG37ZVoDBiexqtVShIF5W3xYuWhW5kYb0hliYfkq15cS7t9m95h3\n"
                                              "1QJf/xI/AkEA1v9l/WN1a1N3rOK4VGoCokx7kR2SyTMSbZgF9IWJNOugR/WZw7HT\n"
                                              "njipO3c9dy1Ms9pUKwUF46d7049ck8HwdQJARgrSKuLWXMyBH+/l1Dx/I4tXuAJI\n"
                                              "rlPyo+VmiOc7b5NzHptkSHEPfR9s1OK0VqjknclqCJ3Ig86OMEtEFBzjZQJBAKYz\n"
                                              "470hcPkaGk7tKYAgP48FvxRsnzeooptURW5E+M+PQ2W9iDPPOX9739+Xi02hGEWF\n"
                                              "B0IGbQoTRFdE4VVcPK0CQQCeS84lODlC0Y2BZv2JxW3Osv/WkUQ4dslfAQl1T303\n"
                                              "7uwwr7XTroMv8dIFQIPreoPhRKmd/SbJzbiKfS/4QDhU\n"
                                              "-----END RSA PRIVATE KEY-----\n";
static const char aws_example_public_pem[] = "-----BEGIN PUBLIC KEY-----\n"
                                             "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDA7ki9gI/lRygIoOjV1yymgx6F\n"
                                             "YFlzJ+z1ATMaLo57nL57AavWhb68HYY8EA0GJU9xQdMVaHBogF3eiCWYXSUZCWM/\n"
                                             "+M5+ZcdQraRRScucmn6g4EvY2K4W2pxbqH8vmUikPxir41EeBPLjMOzKvbzzQy9e\n"
                                             "/zzIQVREKSp/7y1mywIDAQAB\n"
                                             "-----END PUBLIC KEY-----\n";
#define AWS_CANNED_URL                                                                                                 \
    "http://d604721fxaaqy9.cloudfront.net/horizon.jpg?large=yes&license=yes&Expires=1325376000"                        \
    "&Signature=hO7oLKtCJQzsopeEB3nldOp2PvcVOoa9hdIhxP0y1tNUTEKVV3YhCFG-VCGZXDPbSQJnSoztS7j1w5s6GNorvgP4zG3P0WL9c5x"   \
    "Bw0WwB8YHnmcvh8PYJ8nNm-CuHkCbuSkOCM2j87bglM1b1mb6XD6Jh4Ot9jb87NR9D1FSB6k_&Key-Pair-Id=PK12345EXAMPLE"
#define AWS_CUSTOM_URL                                                                                                 \
    "http://d604721fxaaqy9.cloudfront.net/training/orientation.avi?Policy=eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoiaHR0cDo" \
    "vL2Q2MDQ3MjFmeGFhcXk5LmNsb3VkZnJvbnQubmV0L3RyYWluaW5nL29yaWVudGF0aW9uLmF2aSIsIkNvbmRpdGlvbiI6eyJEYXRlTGVzc1RoYW"  \
    "4iOnsiQVdTOkVwb2NoVGltZSI6MTMyNTM3NjAwMH0sIklwQWRkcmVzcyI6eyJBV1M6U291cmNlSXAiOiIxNDUuMTY4LjE0My4wLzI0In19fV19"   \
    "&Signature=vyilVAeUjgvmmYIQGv8pWWgeGr55RzYh-gv8GiwFuBiHhnYftLSFy11i71RNbBmhcMddFE0Jq5KSnQtCgBwydeHYvMPcqak9cO8S"  \
    "cFnAkGi5y3wf3RcJkBNsvKqMlrVsRkts1rB82ScsaMTYbRQEUY3AB2K0SkuXCZ~6gvCQI98_&Key-Pair-Id=PK12345EXAMPLE"

static void test_aws_published_example(void **state)
{
    fm_cf_keys_t *keys = fm_cf_keys_new();
    assert_non_null(keys);
    /* CloudFront requires 2048 bits today: the 1024-bit example key needs the explicit opt-in. */
    assert_int_equal(
        fm_cf_keys_add_pem(keys, "PK12345EXAMPLE", aws_example_private_pem, strlen(aws_example_private_pem), NULL, 0),
        -1);
    fm_cf_keys_allow_rsa1024(keys);
    assert_int_equal(
        fm_cf_keys_add_pem(keys, "PK12345EXAMPLE", aws_example_private_pem, strlen(aws_example_private_pem), NULL, 0),
        0);

    char *url = NULL;
    fm_cf_sign_req_t canned = {.url = "http://d604721fxaaqy9.cloudfront.net/horizon.jpg?large=yes&license=yes",
                               .date_less_than = 1325376000};
    assert_int_equal(fm_cf_sign_url(keys, "PK12345EXAMPLE", &canned, &url, NULL, 0), 0);
    assert_string_equal(url, AWS_CANNED_URL);
    free(url);
    fm_cf_sign_req_t custom = {.url = "http://d604721fxaaqy9.cloudfront.net/training/orientation.avi",
                               .date_less_than = 1325376000,
                               .ip_cidr = "145.168.143.0/24"};
    assert_int_equal(fm_cf_sign_url(keys, "PK12345EXAMPLE", &custom, &url, NULL, 0), 0);
    assert_string_equal(url, AWS_CUSTOM_URL);
    free(url);
    fm_cf_keys_free(keys);

    keys = fm_cf_keys_new();
    fm_cf_keys_allow_rsa1024(keys);
    assert_int_equal(
        fm_cf_keys_add_pem(keys, "PK12345EXAMPLE", aws_example_public_pem, strlen(aws_example_public_pem), NULL, 0), 0);
    expect_status(keys, AWS_CANNED_URL, CLIENT, 1325375999, FM_CF_OK, "AWS canned example");
    expect_status(keys, AWS_CANNED_URL, CLIENT, 1325376000, FM_CF_EXPIRED, "AWS canned example, at Expires");
    expect_status(keys, AWS_CUSTOM_URL, "145.168.143.200", 1325375999, FM_CF_OK, "AWS custom example");
    expect_status(keys, AWS_CUSTOM_URL, "145.168.144.1", 1325375999, FM_CF_IP_NOT_ALLOWED, "AWS custom, other IP");
    /* Signing needs the private key. */
    assert_int_equal(fm_cf_sign_url(keys, "PK12345EXAMPLE", &canned, &url, NULL, 0), -1);
    assert_null(url);
    fm_cf_keys_free(keys);
}

/* ---- refusals by tampering ------------------------------------------------------------------------------------------
 */

static void expect_tampered(const char *url, const char *what, fm_cf_status_t expected)
{
    expect_status(vectors.keys, url, CLIENT, vectors.now, expected, what);
}

static void test_expiry_boundaries(void **state)
{
    load_vectors();
    const cJSON *item = find_case("canned_plain");
    const char *url = str_of(item, "signed");
    long long expires = int_of(item, "dlt");
    expect_status(vectors.keys, url, CLIENT, expires - 1, FM_CF_OK, "1 s before Expires");
    expect_status(vectors.keys, url, CLIENT, expires, FM_CF_EXPIRED, "at Expires");
    expect_status(vectors.keys, url, CLIENT, expires + 1, FM_CF_EXPIRED, "expired by 1 s");
    item = find_case("custom_dgt_future");
    url = str_of(item, "signed");
    long long start = int_of(item, "dgt");
    expect_status(vectors.keys, url, CLIENT, start, FM_CF_NOT_YET_VALID, "at DateGreaterThan");
    expect_status(vectors.keys, url, CLIENT, start + 1, FM_CF_OK, "1 s after DateGreaterThan");
    expect_status(vectors.keys, url, CLIENT, int_of(item, "dlt"), FM_CF_EXPIRED, "custom at DateLessThan");
}

static void test_tampered_canned(void **state)
{
    load_vectors();
    const char *url = case_url("canned_plain");
    expect_tampered(url, "untouched", FM_CF_OK);

    size_t len;
    const char *sig = param_value(url, "Signature", &len);
    char *t;
    /* One signature character changed to another valid one. */
    t = strdup(url);
    size_t at = (size_t)(sig - url) + 10;
    t[at] = t[at] == 'A' ? 'B' : 'A';
    expect_tampered(t, "signature character changed", FM_CF_BAD_SIGNATURE);
    free(t);

    t = replace_once(url, "/report.pdf", "/report.pdF");
    expect_tampered(t, "path changed", FM_CF_BAD_SIGNATURE);
    free(t);
    t = replace_once(url, "cdn.example.com", "cdn.example.org");
    expect_tampered(t, "host changed", FM_CF_BAD_SIGNATURE);
    free(t);
    t = replace_once(url, "https://", "http://");
    expect_tampered(t, "scheme changed", FM_CF_BAD_SIGNATURE);
    free(t);
    t = replace_once(url, "?Expires=", "?w=1&Expires=");
    expect_tampered(t, "parameter added before", FM_CF_BAD_SIGNATURE);
    free(t);
    char *appended = malloc(strlen(url) + 16);
    sprintf(appended, "%s&w=9999", url);
    expect_tampered(appended, "parameter appended", FM_CF_BAD_SIGNATURE);
    free(appended);

    char expires[32];
    snprintf(expires, sizeof expires, "%lld", vectors.now + 86400);
    t = with_param(url, "Expires", expires);
    expect_tampered(t, "Expires extended", FM_CF_BAD_SIGNATURE);
    free(t);
    static const char *const bad_expires[] = {"", "0300", "+300", "-1", "12a", "1e9", "9999999999999"};
    for (size_t i = 0; i < sizeof bad_expires / sizeof *bad_expires; i++) {
        t = with_param(url, "Expires", bad_expires[i]);
        expect_tampered(t, bad_expires[i], FM_CF_MALFORMED);
        free(t);
    }

    t = with_param(url, "Key-Pair-Id", "KNOTCONFIGURED");
    expect_tampered(t, "unknown Key-Pair-Id", FM_CF_UNKNOWN_KEY);
    free(t);
    t = with_param(url, "Key-Pair-Id", "KRSAOLD2023");
    expect_tampered(t, "another configured Key-Pair-Id", FM_CF_BAD_SIGNATURE);
    free(t);
    t = with_param(url, "Key-Pair-Id", "");
    expect_tampered(t, "empty Key-Pair-Id", FM_CF_UNKNOWN_KEY);
    free(t);
    t = with_param(url, "Key-Pair-Id", "krsacurrent2024");
    expect_tampered(t, "Key-Pair-Id in another case", FM_CF_UNKNOWN_KEY);
    free(t);

    /* Truncated and garbled signatures. A 2048-bit signature is 256 bytes: 344 characters ending in "__". */
    assert_int_equal(len, 344);
    assert_memory_equal(sig + len - 2, "__", 2);
    char value[400];
    memcpy(value, sig, len - 4);
    value[len - 4] = '\0';
    t = with_param(url, "Signature", value);
    expect_tampered(t, "signature short by 4 characters", FM_CF_BAD_SIGNATURE);
    free(t);
    memcpy(value, sig, len - 1);
    value[len - 1] = '\0';
    t = with_param(url, "Signature", value);
    expect_tampered(t, "signature short by 1 character", FM_CF_BAD_BASE64);
    free(t);
    static const char garbage[] = {'+', '/', '=', '!', '%', '.', ' '};
    for (size_t i = 0; i < sizeof garbage; i++) {
        memcpy(value, sig, len);
        value[len] = '\0';
        value[20] = garbage[i];
        t = with_param(url, "Signature", value);
        char what[64];
        snprintf(what, sizeof what, "signature with '%c'", garbage[i]);
        expect_tampered(t, what, FM_CF_BAD_BASE64);
        free(t);
    }
    /* Standard base64 padding, and the percent-encoded form of '~', are not CloudFront's alphabet. */
    memcpy(value, sig, len);
    value[len - 2] = value[len - 1] = '=';
    value[len] = '\0';
    t = with_param(url, "Signature", value);
    expect_tampered(t, "signature padded with '='", FM_CF_BAD_BASE64);
    free(t);
    /* The character before "__" carries 4 unused bits; setting one re-spells the same bytes: refused. */
    memcpy(value, sig, len);
    value[len] = '\0';
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-~";
    size_t index = (size_t)(strchr(alphabet, value[len - 3]) - alphabet);
    value[len - 3] = alphabet[index ^ 1];
    t = with_param(url, "Signature", value);
    expect_tampered(t, "signature with non-zero unused bits", FM_CF_BAD_BASE64);
    free(t);
    t = with_param(url, "Signature", "AAAA");
    expect_tampered(t, "4-character signature", FM_CF_BAD_SIGNATURE);
    free(t);

    /* Missing and repeated parameters. */
    t = without_param(url, "Signature");
    expect_tampered(t, "no Signature", FM_CF_MISSING_SIGNATURE);
    free(t);
    t = with_param(url, "Signature", "");
    expect_tampered(t, "empty Signature", FM_CF_MISSING_SIGNATURE);
    free(t);
    t = without_param(url, "Key-Pair-Id");
    expect_tampered(t, "no Key-Pair-Id", FM_CF_MISSING_KEY_PAIR_ID);
    free(t);
    t = without_param(url, "Expires");
    expect_tampered(t, "no Expires", FM_CF_MISSING_POLICY);
    free(t);
    expect_tampered("https://cdn.example.com/files/018f3a2b/report.pdf", "no query", FM_CF_MISSING_SIGNATURE);
    char *twice = malloc(strlen(url) * 2 + 2);
    sprintf(twice, "%s&Signature=%.*s", url, (int)len, sig);
    expect_tampered(twice, "Signature twice", FM_CF_MALFORMED);
    free(twice);
    twice = malloc(strlen(url) + 64);
    sprintf(twice, "%s&Policy=e30_", url);
    expect_tampered(twice, "Expires and Policy", FM_CF_MALFORMED);
    free(twice);
    /* Names are case-sensitive: "signature=" is an ordinary parameter, so the real one is missing. */
    t = replace_once(url, "&Signature=", "&signature=");
    expect_tampered(t, "lower-case signature", FM_CF_MISSING_SIGNATURE);
    free(t);
    /* A NUL inside the URL's length. */
    char with_nul[600];
    size_t url_len = strlen(url);
    assert_true(url_len < sizeof with_nul);
    memcpy(with_nul, url, url_len);
    with_nul[30] = '\0';
    char reason[128];
    assert_int_equal(fm_cf_verify_url(vectors.keys, with_nul, url_len, CLIENT, vectors.now, reason, sizeof reason),
                     FM_CF_MALFORMED);
}

static void test_hash_algorithm(void **state)
{
    load_vectors();
    const char *sha1 = case_url("canned_plain");
    const char *sha256 = case_url("canned_sha256");
    char *t = without_param(sha256, "Hash-Algorithm");
    expect_tampered(t, "SHA-256 signature checked as SHA-1", FM_CF_BAD_SIGNATURE);
    free(t);
    t = with_param(sha256, "Hash-Algorithm", "SHA1");
    expect_tampered(t, "SHA-256 signature with Hash-Algorithm=SHA1", FM_CF_BAD_SIGNATURE);
    free(t);
    char *explicit_sha1 = malloc(strlen(sha1) + 32);
    sprintf(explicit_sha1, "%s&Hash-Algorithm=SHA1", sha1);
    expect_tampered(explicit_sha1, "explicit SHA1", FM_CF_OK);
    t = with_param(explicit_sha1, "Hash-Algorithm", "SHA256");
    expect_tampered(t, "SHA-1 signature with Hash-Algorithm=SHA256", FM_CF_BAD_SIGNATURE);
    free(t);
    static const char *const bad[] = {"MD5", "sha256", "SHA-256", "SHA512", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        t = with_param(explicit_sha1, "Hash-Algorithm", bad[i]);
        expect_tampered(t, bad[i], FM_CF_BAD_HASH_ALGORITHM);
        free(t);
    }
    free(explicit_sha1);
    /* Hash-Algorithm anywhere in the query is still the CloudFront parameter, not part of the resource. */
    char *moved = without_param(sha256, "Hash-Algorithm");
    char *front = replace_once(moved, "?Expires=", "?Hash-Algorithm=SHA256&Expires=");
    expect_tampered(front, "Hash-Algorithm first", FM_CF_OK);
    free(front);
    free(moved);
}

static void test_tampered_custom(void **state)
{
    load_vectors();
    const char *url = case_url("custom_all_conditions");
    expect_tampered(url, "untouched", FM_CF_OK);
    size_t len;
    const char *policy = param_value(url, "Policy", &len);
    char value[8192];
    assert_true(len < sizeof value);

    memcpy(value, policy, len - 4);
    value[len - 4] = '\0';
    char *t = with_param(url, "Policy", value);
    expect_tampered(t, "policy short by 4 characters", FM_CF_BAD_SIGNATURE);
    free(t);
    memcpy(value, policy, len - 1);
    value[len - 1] = '\0';
    t = with_param(url, "Policy", value);
    expect_tampered(t, "policy short by 1 character", FM_CF_BAD_BASE64);
    free(t);
    memcpy(value, policy, len);
    value[len] = '\0';
    value[7] = '!';
    t = with_param(url, "Policy", value);
    expect_tampered(t, "policy with '!'", FM_CF_BAD_BASE64);
    free(t);
    value[7] = policy[7] == 'A' ? 'B' : 'A';
    t = with_param(url, "Policy", value);
    expect_tampered(t, "policy character changed", FM_CF_BAD_SIGNATURE);
    free(t);
    t = with_param(url, "Policy", "");
    expect_tampered(t, "empty policy", FM_CF_BAD_BASE64);
    free(t);

    /* The policy and signature of one URL on another path: the signature holds, the resource does not. */
    const char *other = case_url("custom_other_resource");
    const char *other_query = strchr(other, '?');
    char *moved = malloc(strlen(other) + 64);
    sprintf(moved, "https://cdn.example.com/files/018f3a2b/report.pdf%s", other_query);
    expect_tampered(moved, "policy for another resource", FM_CF_RESOURCE_MISMATCH);
    free(moved);

    /* With a wildcard Resource, other parameters (before or after the signature) are covered by the '*'. */
    const char *wild = case_url("custom_wildcard_star");
    char *extra = malloc(strlen(wild) + 16);
    sprintf(extra, "%s&w=9999", wild);
    expect_tampered(extra, "parameter appended under a wildcard", FM_CF_OK);
    free(extra);
    t = replace_once(wild, "/photo.jpg", "/../018f3a2c/photo.jpg");
    expect_tampered(t, "dot-dot under a wildcard (the edge normalises paths, not this module)", FM_CF_OK);
    free(t);
    t = replace_once(wild, "/018f3a2b/", "/018f3a2c/");
    expect_tampered(t, "other directory under a wildcard", FM_CF_RESOURCE_MISMATCH);
    free(t);

    /* Source IP conditions with odd clients. */
    const char *ip = case_url("custom_ip4_net");
    expect_status(vectors.keys, ip, NULL, vectors.now, FM_CF_IP_NOT_ALLOWED, "no client address");
    expect_status(vectors.keys, ip, "not an address", vectors.now, FM_CF_IP_NOT_ALLOWED, "garbage client address");
    expect_status(vectors.keys, ip, "203.0.113.255", vectors.now, FM_CF_OK, "last address of the /24");
    expect_status(vectors.keys, ip, "203.0.112.255", vectors.now, FM_CF_IP_NOT_ALLOWED, "just below the /24");
    const char *v6 = case_url("custom_ip6_net");
    expect_status(vectors.keys, v6, "2001:db8:1234:ffff:ffff:ffff:ffff:ffff", vectors.now, FM_CF_OK, "end of /48");
    expect_status(vectors.keys, v6, "2001:db8:1233:ffff::1", vectors.now, FM_CF_IP_NOT_ALLOWED, "below the /48");
    expect_status(vectors.keys, v6, "203.0.113.9", vectors.now, FM_CF_IP_NOT_ALLOWED, "IPv4 client, IPv6 net");
}

static void test_huge_inputs(void **state)
{
    load_vectors();
    const char *url = case_url("canned_plain");
    /* A query of FM_CF_MAX_QUERY + 1 bytes is refused before anything is parsed; one of exactly FM_CF_MAX_QUERY
     * still verifies (the extra parameter falls under the custom policy's wildcard). */
    const char *wild = case_url("custom_wildcard_star");
    size_t wild_len = strlen(wild);
    size_t query_len = strlen(strchr(wild, '?') + 1);
    size_t pad = FM_CF_MAX_QUERY + 1 - query_len;
    char *huge = malloc(wild_len + pad + 8);
    assert_non_null(huge);
    memcpy(huge, wild, wild_len);
    huge[wild_len] = '&';
    memset(huge + wild_len + 1, 'a', pad - 1);
    huge[wild_len + pad] = '\0';
    expect_tampered(huge, "query of FM_CF_MAX_QUERY + 1 bytes", FM_CF_TOO_LONG);
    huge[wild_len + pad - 1] = '\0';
    expect_tampered(huge, "query of exactly FM_CF_MAX_QUERY bytes", FM_CF_OK);
    free(huge);

    /* A path longer than FM_CF_MAX_URL. */
    huge = malloc(FM_CF_MAX_URL + 600);
    strcpy(huge, "https://cdn.example.com/");
    size_t head = strlen(huge);
    memset(huge + head, 'p', FM_CF_MAX_URL);
    strcpy(huge + head + FM_CF_MAX_URL, strchr(url, '?'));
    expect_tampered(huge, "URL longer than FM_CF_MAX_URL", FM_CF_TOO_LONG);
    free(huge);

    /* A canned policy rebuilt from a long URL that no signer would have signed. */
    huge = malloc(FM_CF_MAX_POLICY + 600);
    strcpy(huge, "https://cdn.example.com/");
    head = strlen(huge);
    memset(huge + head, 'p', FM_CF_MAX_POLICY);
    strcpy(huge + head + FM_CF_MAX_POLICY, strchr(url, '?'));
    expect_tampered(huge, "canned policy longer than FM_CF_MAX_POLICY", FM_CF_TOO_LONG);
    free(huge);

    /* A Policy parameter whose decoding exceeds FM_CF_MAX_POLICY. */
    size_t b64_len = (FM_CF_MAX_POLICY + 3) / 3 * 4;
    char *policy = malloc(b64_len + 1);
    memset(policy, 'e', b64_len);
    policy[b64_len] = '\0';
    char *t = with_param(case_url("custom_forced"), "Policy", policy);
    expect_tampered(t, "Policy of FM_CF_MAX_POLICY + 3 bytes", FM_CF_TOO_LONG);
    free(t);
    free(policy);

    /* A very long signature. */
    char *sig = malloc(4001);
    memset(sig, 'A', 4000);
    sig[4000] = '\0';
    t = with_param(url, "Signature", sig);
    expect_tampered(t, "4000-character signature", FM_CF_BAD_SIGNATURE);
    free(t);
    free(sig);
}

/* Random bytes and random mutations of a valid URL: every answer is a refusal with a known code. */
static void test_garbage(void **state)
{
    load_vectors();
    const char *url = case_url("custom_all_conditions");
    size_t url_len = strlen(url);
    char *buf = malloc(url_len + 1);
    uint32_t seed = 12345;
    for (int round = 0; round < 3000; round++) {
        memcpy(buf, url, url_len);
        size_t len = url_len;
        int edits = 1 + round % 4;
        for (int e = 0; e < edits; e++) {
            seed = seed * 1103515245u + 12345u;
            size_t pos = (seed >> 8) % url_len;
            seed = seed * 1103515245u + 12345u;
            buf[pos] = (char)(seed >> 16);
        }
        if (round % 7 == 0) {
            seed = seed * 1103515245u + 12345u;
            len = (seed >> 8) % url_len;
        }
        char reason[128];
        fm_cf_status_t status = fm_cf_verify_url(vectors.keys, buf, len, CLIENT, vectors.now, reason, sizeof reason);
        if (status == FM_CF_INTERNAL || strcmp(fm_cf_status_code(status), "unknown") == 0)
            fail_msg("round %d: %s (%s)", round, fm_cf_status_code(status), reason);
        /* No byte of this URL is outside what is signed (no wildcard), so only the URL itself verifies. */
        if (status == FM_CF_OK && (len != url_len || memcmp(buf, url, len) != 0))
            fail_msg("round %d: a mutated URL verified: %.*s", round, (int)len, buf);
    }
    free(buf);
}

/* ---- signing --------------------------------------------------------------------------------------------------------
 */

static void expect_sign_error(const fm_cf_keys_t *keys, const char *id, const fm_cf_sign_req_t *req, const char *what)
{
    char *url = (char *)"unchanged";
    char err[256] = "";
    if (fm_cf_sign_url(keys, id, req, &url, err, sizeof err) != -1)
        fail_msg("%s: signed %s", what, url);
    assert_null(url);
    assert_true(err[0] != '\0');
}

static void test_sign_refusals(void **state)
{
    load_vectors();
    const char *ok_url = "https://cdn.example.com/files/x/report.pdf";
    fm_cf_sign_req_t req = {.url = ok_url, .date_less_than = vectors.now + 60};
    char *url = NULL;
    assert_int_equal(fm_cf_sign_url(vectors.keys, "KRSACURRENT2024", &req, &url, NULL, 0), 0);
    free(url);
    expect_sign_error(vectors.keys, "KNOPE", &req, "unknown key id");
    expect_sign_error(vectors.public_keys, "KRSACURRENT2024", &req, "public key only");
    expect_sign_error(vectors.public_keys, NULL, &req, "no private key at all");

    static const char *const bad_urls[] = {
        "",
        "cdn.example.com/x",
        "ftp://cdn.example.com/x",
        "https://cdn.example.com/a b",
        "https://cdn.example.com/caf\xc3\xa9",
        "https://cdn.example.com/x#frag",
        "https://cdn.example.com/\x01",
        "https://cdn.example.com/x?Signature=abc",
        "https://cdn.example.com/x?a=1&Expires=5",
        "https://cdn.example.com/x?Key-Pair-Id=",
        "https://cdn.example.com/x?&Hash-Algorithm=SHA256",
    };
    for (size_t i = 0; i < sizeof bad_urls / sizeof *bad_urls; i++) {
        fm_cf_sign_req_t r = req;
        r.url = bad_urls[i];
        expect_sign_error(vectors.keys, NULL, &r, bad_urls[i]);
    }
    fm_cf_sign_req_t r = req;
    r.date_less_than = 0;
    expect_sign_error(vectors.keys, NULL, &r, "no expiry");
    r.date_less_than = FM_CF_EPOCH_MAX + 1;
    expect_sign_error(vectors.keys, NULL, &r, "expiry after 9999");
    r = req;
    r.date_greater_than = req.date_less_than;
    expect_sign_error(vectors.keys, NULL, &r, "start not before end");
    r.date_greater_than = -5;
    expect_sign_error(vectors.keys, NULL, &r, "negative start");

    static const char *const bad_ips[] = {
        "2001:db8::1",      "203.0.113.0/33", "203.0.113/24",  "300.1.1.1", "2001:db8::/129", "203.0.113.0/024", "",
        "fe80::1%eth0/128", "203.0.113.0/",   "203.0.113.0/-1"};
    for (size_t i = 0; i < sizeof bad_ips / sizeof *bad_ips; i++) {
        r = req;
        r.ip_cidr = bad_ips[i];
        expect_sign_error(vectors.keys, NULL, &r, bad_ips[i]);
    }
    r = req;
    r.resource = "https://cdn.example.com/\xff*";
    expect_sign_error(vectors.keys, NULL, &r, "resource not UTF-8");
    r.resource = "https://cdn.example.com/\xed\xa0\x80*"; /* an encoded surrogate: Python refuses it too */
    expect_sign_error(vectors.keys, NULL, &r, "resource with a surrogate");
    char *long_resource = malloc(FM_CF_MAX_POLICY + 2);
    memset(long_resource, 'r', FM_CF_MAX_POLICY + 1);
    long_resource[FM_CF_MAX_POLICY + 1] = '\0';
    r.resource = long_resource;
    expect_sign_error(vectors.keys, NULL, &r, "resource longer than a policy");
    /* Escaping can push a shorter resource over the limit too: 1000 control characters are 6000 bytes. */
    memset(long_resource, '\x01', 1000);
    long_resource[1000] = '\0';
    expect_sign_error(vectors.keys, NULL, &r, "escaped resource longer than a policy");
    free(long_resource);
    assert_int_equal(fm_cf_sign_url(vectors.keys, NULL, NULL, &url, NULL, 0), -1);
    assert_int_equal(fm_cf_sign_url(NULL, NULL, &req, &url, NULL, 0), -1);
}

static void test_rotation(void **state)
{
    load_vectors();
    fm_cf_sign_req_t req = {.url = "https://cdn.example.com/files/x/report.pdf", .date_less_than = vectors.now + 60};
    char *current = NULL, *implicit = NULL, *old = NULL;
    assert_int_equal(fm_cf_sign_url(vectors.keys, "KRSACURRENT2024", &req, &current, NULL, 0), 0);
    /* NULL id: the first key added with a private part, i.e. the current one. */
    assert_int_equal(fm_cf_sign_url(vectors.keys, NULL, &req, &implicit, NULL, 0), 0);
    assert_string_equal(current, implicit);
    assert_int_equal(fm_cf_sign_url(vectors.keys, "KRSAOLD2023", &req, &old, NULL, 0), 0);
    expect_status(vectors.public_keys, current, CLIENT, vectors.now, FM_CF_OK, "current key");
    expect_status(vectors.public_keys, old, CLIENT, vectors.now, FM_CF_OK, "old key still accepted");

    /* Once the old key is dropped from the configuration its URLs stop working. */
    fm_cf_keys_t *after = fm_cf_keys_new();
    add_key_file(after, vectors.dir, "KRSACURRENT2024", ".pub.pem");
    expect_status(after, current, CLIENT, vectors.now, FM_CF_OK, "current key after rotation");
    expect_status(after, old, CLIENT, vectors.now, FM_CF_UNKNOWN_KEY, "old key after rotation");
    fm_cf_keys_free(after);
    free(current);
    free(implicit);
    free(old);
}

static void test_key_loading(void **state)
{
    load_vectors();
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/KRSACURRENT2024.pem", vectors.dir);
    char *pem = read_text_file(path);
    fm_cf_keys_t *keys = fm_cf_keys_new();
    char err[256];
    static const char *const bad_ids[] = {"", "K 1", "K/1", "K\xc3\xa9",
                                          "K1234567890123456789012345678901234567890123456789012345678901234"};
    for (size_t i = 0; i < sizeof bad_ids / sizeof *bad_ids; i++)
        assert_int_equal(fm_cf_keys_add_pem(keys, bad_ids[i], pem, strlen(pem), err, sizeof err), -1);
    assert_int_equal(fm_cf_keys_add_pem(keys, "K1", pem, strlen(pem), err, sizeof err), 0);
    assert_int_equal(fm_cf_keys_add_pem(keys, "K1", pem, strlen(pem), err, sizeof err), -1);
    assert_non_null(strstr(err, "twice"));
    assert_int_equal(fm_cf_keys_add_pem(keys, "K2", "garbage", 7, err, sizeof err), -1);
    assert_int_equal(fm_cf_keys_add_pem(keys, "K2", pem, 40, err, sizeof err), -1);
    assert_int_equal(fm_cf_keys_add_pem(keys, "K2", pem, 0, err, sizeof err), -1);
    for (int i = 2; i <= FM_CF_MAX_KEYS; i++) {
        char id[16];
        snprintf(id, sizeof id, "K%d", i);
        assert_int_equal(fm_cf_keys_add_pem(keys, id, pem, strlen(pem), err, sizeof err), 0);
    }
    assert_int_equal(fm_cf_keys_add_pem(keys, "KMORE", pem, strlen(pem), err, sizeof err), -1);
    assert_int_equal(fm_cf_keys_count(keys), FM_CF_MAX_KEYS);
    fm_cf_keys_free(keys);
    free(pem);

    /* P-384, RSA-1024, Ed25519 and an encrypted key are refused. */
    static const char *const commands[] = {
        "openssl ecparam -name secp384r1 -genkey -noout 2>/dev/null",
        "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 2>/dev/null",
        "openssl genpkey -algorithm ED25519 2>/dev/null",
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes-128-cbc -pass pass:secret 2>/dev/null",
    };
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        FILE *p = popen(commands[i], "r");
        assert_non_null(p);
        char key_pem[8192];
        size_t n = fread(key_pem, 1, sizeof key_pem - 1, p);
        key_pem[n] = '\0';
        assert_int_equal(pclose(p), 0);
        assert_true(n > 0);
        keys = fm_cf_keys_new();
        if (fm_cf_keys_add_pem(keys, "KX", key_pem, n, err, sizeof err) != -1)
            fail_msg("accepted the key of: %s", commands[i]);
        fm_cf_keys_free(keys);
    }
}

/* ---- threads --------------------------------------------------------------------------------------------------------
 */

static void *sign_and_verify(void *arg)
{
    const char *id = arg;
    for (int i = 0; i < 100; i++) {
        char url_text[128];
        snprintf(url_text, sizeof url_text, "https://cdn.example.com/files/%s/%d.jpg", id, i);
        fm_cf_sign_req_t req = {
            .url = url_text, .date_less_than = vectors.now + 60, .hash_sha256 = i & 1, .force_custom = i & 2};
        char *url = NULL;
        if (fm_cf_sign_url(vectors.keys, id, &req, &url, NULL, 0) != 0)
            return (void *)1;
        fm_cf_status_t status = fm_cf_verify_url(vectors.keys, url, strlen(url), CLIENT, vectors.now, NULL, 0);
        free(url);
        if (status != FM_CF_OK)
            return (void *)2;
    }
    return NULL;
}

static void test_threads_share_keys(void **state)
{
    load_vectors();
    static const char *const ids[] = {"KRSACURRENT2024", "KECP256CURRENT", "KRSAOLD2023", "KECP256CURRENT"};
    pthread_t threads[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, sign_and_verify, (void *)ids[i]), 0);
    for (int i = 0; i < 4; i++) {
        void *result = (void *)-1;
        assert_int_equal(pthread_join(threads[i], &result), 0);
        assert_null(result);
    }
}

static void test_status_codes(void **state)
{
    for (int a = FM_CF_OK; a <= FM_CF_INTERNAL; a++) {
        assert_string_not_equal(fm_cf_status_code((fm_cf_status_t)a), "unknown");
        for (int b = a + 1; b <= FM_CF_INTERNAL; b++)
            assert_string_not_equal(fm_cf_status_code((fm_cf_status_t)a), fm_cf_status_code((fm_cf_status_t)b));
    }
    assert_string_equal(fm_cf_status_code(FM_CF_EXPIRED), "expired");
    assert_string_equal(fm_cf_status_code(FM_CF_BAD_BASE64), "bad_base64");
    assert_int_equal(fm_cf_verify_url(NULL, "x", 1, NULL, 0, NULL, 0), FM_CF_INTERNAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_codes),
        cmocka_unit_test(test_aws_published_example),
        cmocka_unit_test(test_botocore_identical_urls),
        cmocka_unit_test(test_botocore_urls_verify),
        cmocka_unit_test(test_our_urls_verify_in_python),
        cmocka_unit_test(test_expiry_boundaries),
        cmocka_unit_test(test_tampered_canned),
        cmocka_unit_test(test_hash_algorithm),
        cmocka_unit_test(test_tampered_custom),
        cmocka_unit_test(test_huge_inputs),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_sign_refusals),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_key_loading),
        cmocka_unit_test(test_threads_share_keys),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_group);
}
