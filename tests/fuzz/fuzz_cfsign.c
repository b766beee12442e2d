/*
 * Fuzz target for fm_cf_verify_url and fm_cf_sign_url (common/cfverify.c, common/cfsign.c): fm-edge verifies every
 * private download URL with it, so everything after the host is attacker-controlled.
 *
 * Keys: TEST-ONLY key pairs below, generated for this target with `openssl genpkey` (RSA-2048 "KFUZZRSA",
 * P-256 "KFUZZEC"); they protect nothing. The verifier runs at the fixed time NOW.
 *
 * Input: byte 0 picks the mode (its value % 3, so the seeds start with '0', '1' or '2'):
 *   0  raw: the rest is the URL as a client would send it, verified as is (and once more from an IPv6 client);
 *   1  sign: byte 1 holds flags (bit 0 SHA-256, bit 1 force custom, bit 2 ECDSA key, bit 3 DateGreaterThan,
 *      bit 4 IP condition, bit 5 a resource), then "URL\nRESOURCE\nCIDR" (missing parts are absent); what
 *      fm_cf_sign_url accepts is verified and must pass (or fail only on the resource or IP), and with one
 *      signature character changed must fail;
 *   2  policy: the rest is a custom policy (any bytes), signed RSA-SHA1 with the test key and sent as
 *      https://cdn.example.com/f/x?Policy=...&Signature=...&Key-Pair-Id=KFUZZRSA, so the policy parser behind
 *      a valid signature is reached.
 * URLs are passed in buffers of their exact length without a NUL, so a read past `len` is an ASan report.
 *
 * Invariants: a known status, never FM_CF_INTERNAL; OK only for a URL within FM_CF_MAX_URL / FM_CF_MAX_QUERY
 * that carries Signature= and Key-Pair-Id=; mode 1 as above; mode 2 never bad_signature or bad_base64.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "cfsign.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_cfsign: invariant failed at line %d: %s\n", __LINE__, #cond);                        \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

#define NOW 1700000000LL /* 2023-11-14T22:13:20Z */
#define CLIENT_V4 "203.0.113.9"
#define CLIENT_V6 "2001:db8::9"

/* TEST-ONLY KEY, made for this fuzzer; never configure it anywhere. */
static const char test_only_rsa_pem[] = "-----BEGIN PRIVATE KEY-----\n"
                                        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDOdInFnwbhSD6v\n"
                                        "cZAZWqwm1Yz8JkmAai3OjbOdGBlHdIeIYi97AV/QrBoiEeAmttCHgFuxHfZPczeV\n"
                                        "rjpfGeZTVw7ZjtQd5bmRE0dWCpRQfA2LSFxumVg9rrktFAOv3VZYdYIOk/G96qAs\n"
                                        "ciExkvCUduSYoT0HHxEC2jZcWh/Ya7rWojwVCt++KpmZ4rlR/ntWMgz9NvqDNQQ/\n"
                                        "9gYxjn9VcxYaqA00UMFbquvTtlBhVZzrY9LVJ5JuX7Z2vB2RRz/LlVAOnXVBMK5p\n"
                                        "5PE0abNT6en08RROpnIyiqohW70Z3ntyxASjCxWoMlGhRnrKSN9bCrY5qm0aKqW2\n"
                                        "ZUvua9g5AgMBAAECggEACXxncZMofNb6cco4f/dxyaRuHfwXgzB5LMLHlW+aGSx4\n"
                                        "ApmQ4jYwKun+ltNx3YDwuFNokNYj873ek+CMawykqzd7BbED1nL5fPp32/vZdNmI\n"
                                        "nX5ZA78OHz21KpRIV18Pw4LiHLRcf6QMOm6RdAROcRmX9NqA3WlB8DGvQU7l7Yq4\n"
                                        "/rFt9GS5L8IZzw/PNHh+ZryO8agNgNgwBcz2wdn5UG3s+qrAuNqTWDI4o8FImOnB\n"
                                        "a67wZgPrQgbPGSRaz/xLlmG2Mith9ZOtZxN+vn6aE4UR1Sa9WIY22NaO/nb3HAmr\n"
                                        "BEBU88rDVPbcHD+g8yf0P8nVIoH56PJUFyHYKkRMvwKBgQD7qk6W84ARJWbRApjF\n"
                                        "SNJfm2abvhP9q3S+0jiTDolcYq1vdP9S3i0kWJuRP2RwAGlFVuAq3pNnB/FHaZ/N\n"
                                        "2p3HPN+tI8SSmM+t4GhHpJgPJsBmttBl9/HotgCtL6RwtVV23vzjrd3DU5Eir/0h\n"
                                        "cUMlQTG7ownisf8ihIXDQEDdfwKBgQDSAuHL8xiw7xeDGFze7yo5fWSCd+KDm3JY\n"
                                        "+JoXK/g0xfwkPM8j2ZQEcloUBkoooAX4X75jiR/pbsT09HEeRbjKtDAmOleaLFwo\n"
                                        "b7YvP+Yw2sm05bMEbML7gACXyr1mrKW2Snb/FjMMs6YHa1ep0KW7+Ap25QnW4ow7\n"
                                        "lCHkxFqWRwKBgFEypMKtc9+UWrULCnF0ynOQdy2+yUJqRHOg7iH8abNGH0E71XlO\n"
                                        "N/BnKmJVurksWMrHefI6+AIhHOb2nFnVtFxpNp3tUWofJbqrEdozr+ALl75MM7cC\n"
                                        "pal4t4UpPvwidZ2x2pQ3L7rqxoQTli9pFMn7W+l3dCQRXAkuCt5xZ7xPAoGARIfg\n"
                                        "OveHFSXQXF004SLWepAqnlCUwDGXrOTjE7CrfD0nPIQDbEVyAcl3D5XF2V/u0tAb\n"
                                        "hsuWeExHRVAHIcPKu4r1M2RSdeMH58Ich2qoqUScEcXrFwSO1Bc/Gkl0aO7p3ISM\n"
                                        "NE2ANyLgiQdEQgvuKVqVv5qaDV88N6ztKoPQs70CgYEAtbt+nvCivtCp0K3x22BE\n"
                                        "GZ9SNgmts6kg5u9ud9UClsMRPhNaLjCgZ+tnPd5s5k97PA4ZI/PUY3SfPGEsLJUL\n"
                                        "XJC8ZbH6sEQIDJSlU+YMWmL8B0w6nlQkxZNEi6WPyOZHGimSgFrvBYPyq1WOcwtt\n"
                                        "+5DQbCSJX6kEA55188a7aZQ=\n"
                                        "-----END PRIVATE KEY-----\n";
/* TEST-ONLY KEY, made for this fuzzer; never configure it anywhere. */
static const char test_only_ec_pem[] = "-----BEGIN PRIVATE KEY-----\n"
                                       "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKbyry6nO0Wxjb/GZ\n"
                                       "kfNcoD+igbNCj9wG1RlDrOikeHqhRANCAAQREnMgYOLLhgllYt9mLx+dmSzWTdVt\n"
                                       "jtRjaC1QoXvNwHoAUoZZPsIUGPurx7XJY/Ju/TY2iy2EGESegTdL413p\n"
                                       "-----END PRIVATE KEY-----\n";

static fm_cf_keys_t *keys;
static EVP_PKEY *rsa_private;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    keys = fm_cf_keys_new();
    char err[256] = "";
    if (keys == NULL ||
        fm_cf_keys_add_pem(keys, "KFUZZRSA", test_only_rsa_pem, strlen(test_only_rsa_pem), err, sizeof err) != 0 ||
        fm_cf_keys_add_pem(keys, "KFUZZEC", test_only_ec_pem, strlen(test_only_ec_pem), err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_cfsign: cannot load the test keys: %s\n", err);
        abort();
    }
    BIO *bio = BIO_new_mem_buf(test_only_rsa_pem, -1);
    rsa_private = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    CHECK(rsa_private != NULL);
    return 0;
}

/* Verifies an exact-size copy of `url` and checks the invariants every answer must hold. */
static fm_cf_status_t verify(const char *url, size_t len, const char *client_ip)
{
    char *exact = malloc(len > 0 ? len : 1);
    CHECK(exact != NULL);
    memcpy(exact, url, len);
    char reason[128];
    memset(reason, 'x', sizeof reason);
    fm_cf_status_t status = fm_cf_verify_url(keys, exact, len, client_ip, NOW, reason, sizeof reason);
    CHECK(memchr(reason, '\0', sizeof reason) != NULL);
    CHECK(strcmp(fm_cf_status_code(status), "unknown") != 0);
    CHECK(status != FM_CF_INTERNAL);
    if (status == FM_CF_OK) {
        CHECK(len <= FM_CF_MAX_URL);
        const char *query = memchr(exact, '?', len);
        CHECK(query != NULL && len - (size_t)(query + 1 - exact) <= FM_CF_MAX_QUERY);
        CHECK(memmem(exact, len, "Signature=", 10) != NULL && memmem(exact, len, "Key-Pair-Id=", 12) != NULL);
    }
    free(exact);
    return status;
}

/* CloudFront base64 ('+' -> '-', '=' -> '_', '/' -> '~'), written independently of common/cf*.c. */
static size_t cf_b64(const uint8_t *in, size_t len, char *out)
{

    int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    CHECK(n >= 0);
    for (int i = 0; i < n; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '=' ? '_' : out[i] == '/' ? '~' : out[i];

    return (size_t)n;
}

static void run_policy(const uint8_t *data, size_t size)
{
    if (size > 6000)
        return;
    uint8_t sig[512];
    size_t sig_len = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    CHECK(ctx != NULL && EVP_DigestSignInit(ctx, &pctx, EVP_sha1(), NULL, rsa_private) == 1);
    CHECK(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1);
    CHECK(EVP_DigestSign(ctx, sig, &sig_len, data, size) == 1);
    EVP_MD_CTX_free(ctx);
    static const char head[] = "https://cdn.example.com/f/x?Policy=";
    char *url = malloc(sizeof head + size * 4 / 3 + 8 + 16 + 700 + 32);
    CHECK(url != NULL);
    size_t len = strlen(head);
    memcpy(url, head, len);
    len += cf_b64(data, size, url + len);
    memcpy(url + len, "&Signature=", 11);
    len += 11;
    len += cf_b64(sig, sig_len, url + len);
    memcpy(url + len, "&Key-Pair-Id=KFUZZRSA", 21);
    len += 21;
    fm_cf_status_t status = verify(url, len, CLIENT_V4);
    if (size == 0)
        CHECK(status == FM_CF_BAD_BASE64); /* an empty Policy */
    else
        CHECK(status != FM_CF_BAD_SIGNATURE && status != FM_CF_BAD_BASE64);
    CHECK(size <= FM_CF_MAX_POLICY || status == FM_CF_TOO_LONG);
    free(url);
}

/* The next '\n'-separated field of the input as a NUL-terminated copy, or NULL when there is none. */
static char *next_field(const uint8_t **data, size_t *size)
{
    if (*size == 0)
        return NULL;
    const uint8_t *newline = memchr(*data, '\n', *size);
    size_t len = newline != NULL ? (size_t)(newline - *data) : *size;
    char *field = malloc(len + 1);
    CHECK(field != NULL);
    memcpy(field, *data, len);
    field[len] = '\0';
    *data += newline != NULL ? len + 1 : len;
    *size -= newline != NULL ? len + 1 : len;
    return field;
}

static void run_sign(const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    uint8_t flags = data[0];
    data++;
    size--;
    char *url_text = next_field(&data, &size);
    char *resource = next_field(&data, &size);
    char *cidr = next_field(&data, &size);
    if (url_text == NULL)
        goto done;
    fm_cf_sign_req_t req = {
        .url = url_text,
        .date_less_than = NOW + 300,
        .date_greater_than = (flags & 8) ? NOW - 300 : 0,
        .ip_cidr = (flags & 16) ? cidr : NULL,
        .resource = (flags & 32) ? resource : NULL,
        .hash_sha256 = flags & 1,
        .force_custom = (flags & 2) != 0,
    };
    const char *key_id = (flags & 4) ? "KFUZZEC" : "KFUZZRSA";
    char *signed_url = NULL;
    char err[256];
    memset(err, 'x', sizeof err);
    if (fm_cf_sign_url(keys, key_id, &req, &signed_url, err, sizeof err) != 0) {
        CHECK(signed_url == NULL);
        CHECK(memchr(err, '\0', sizeof err) != NULL);
        goto done;
    }
    size_t len = strlen(signed_url);
    CHECK(strncmp(signed_url, url_text, strlen(url_text)) == 0);
    fm_cf_status_t status = verify(signed_url, len, CLIENT_V4);
    if (req.resource == NULL && req.ip_cidr == NULL)
        CHECK(status == FM_CF_OK);
    else
        CHECK(status == FM_CF_OK || status == FM_CF_RESOURCE_MISMATCH || status == FM_CF_IP_NOT_ALLOWED);
    /* One signature character changed to another of the alphabet: never accepted. */
    /* Ours is the last "&Signature=": the URL's path may hold the same text. */
    char *sig = NULL;
    for (char *at = strstr(signed_url, "&Signature="); at != NULL; at = strstr(at + 1, "&Signature="))
        sig = at;
    CHECK(sig != NULL);
    sig += 11 + (size_t)(flags >> 6) * 3;
    *sig = *sig == 'A' ? 'B' : 'A';
    status = verify(signed_url, len, CLIENT_V4);
    CHECK(status == FM_CF_BAD_SIGNATURE || status == FM_CF_BAD_BASE64);
    free(signed_url);
done:
    free(url_text);
    free(resource);
    free(cidr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int mode = data[0] % 3;
    data++;
    size--;
    if (mode == 0) {
        verify((const char *)data, size, CLIENT_V4);
        verify((const char *)data, size, CLIENT_V6);
    } else if (mode == 1) {
        run_sign(data, size);
    } else {
        run_policy(data, size);
    }
    ERR_clear_error();
    return 0;
}
