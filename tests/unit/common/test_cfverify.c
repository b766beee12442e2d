/*
 * Tests for common/cfverify.c: verification of CloudFront signed URLs.
 *
 * Independent references: every URL that botocore's CloudFrontSigner with `cryptography` (cfsign_vectors.py, see
 * test_cfsign.c) signs from freshly generated RSA-2048 and P-256 keys must verify (or be refused) as the script
 * says. The rest are refusals made by tampering with valid URLs.
 */
#include "cf_test_keys.h"

/* ---- helpers ------------------------------------------------------------------------------------------------ */

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
    // clang-format off
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_codes),
        cmocka_unit_test(test_botocore_urls_verify),
        cmocka_unit_test(test_expiry_boundaries),
        cmocka_unit_test(test_tampered_canned),
        cmocka_unit_test(test_hash_algorithm),
        cmocka_unit_test(test_tampered_custom),
        cmocka_unit_test(test_huge_inputs),
        cmocka_unit_test(test_garbage),
    };
    // clang-format on
    return cmocka_run_group_tests(tests, NULL, teardown_group);
}
