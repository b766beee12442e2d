/*
 * Tests for common/cfsign.c (signing) and common/cfkeys.c (key pairs): CloudFront signed URLs.
 *
 * Independent references: botocore's CloudFrontSigner with `cryptography` (cfsign_vectors.py, run with Debian's
 * /usr/bin/python3; a missing module fails the test, never skips it) signs URLs from freshly generated RSA-2048
 * and P-256 keys; our RSA URLs must be byte-identical (PKCS#1 v1.5 is deterministic) and our ECDSA URLs must
 * verify in `cryptography`. AWS's published example key pair (PK12345EXAMPLE, RSA-1024, from the 2012 CloudFront
 * Developer Guide) checks both against AWS's own signatures. Verification is tested in test_cfverify.c.
 */
#include "cf_test_keys.h"

#include <pthread.h>

/* ---- vectors from botocore -------------------------------------------------------------------------------------- */

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aws_published_example),
        cmocka_unit_test(test_botocore_identical_urls),
        cmocka_unit_test(test_our_urls_verify_in_python),
        cmocka_unit_test(test_sign_refusals),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_key_loading),
        cmocka_unit_test(test_threads_share_keys),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_group);
}
