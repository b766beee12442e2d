/*
 * cfkeys: the CloudFront key set (fm_cf_keys_t, see cfsign.h): Key-Pair-Id syntax, PEM reading, the key types and
 * sizes CloudFront accepts, lookup by id; and the signatures made and checked with those keys, the module's only
 * use of OpenSSL.
 */
#include "cf_internal.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define PEM_MAX 16384

enum { KEY_RSA = 1, KEY_EC };

/* ---- keys ------------------------------------------------------------------------------------------------------ */

bool fm_cf_valid_key_id(const char *id, size_t len)
{
    if (len == 0 || len > FM_CF_KEY_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return false;
    }
    return true;
}

fm_cf_keys_t *fm_cf_keys_new(void)
{
    fm_cf_keys_t *keys = calloc(1, sizeof *keys);
    if (keys != NULL)
        keys->rsa_min_bits = 2048;
    return keys;
}

void fm_cf_keys_allow_rsa1024(fm_cf_keys_t *keys)
{
    if (keys != NULL)
        keys->rsa_min_bits = 1024;
}

size_t fm_cf_keys_count(const fm_cf_keys_t *keys)
{
    return keys != NULL ? keys->count : 0;
}

void fm_cf_keys_free(fm_cf_keys_t *keys)
{
    if (keys == NULL)
        return;
    for (size_t i = 0; i < keys->count; i++)
        EVP_PKEY_free(keys->entries[i].pkey);
    free(keys);
}

/* One item of a key list: the PEM file at `path` under `id`. */
static int load_key_file(fm_cf_keys_t *keys, const char *var, const char *id, const char *path)
{
    FILE *f = fopen(path, "rb");
    char pem[PEM_MAX], err[256];
    size_t len = f ? fread(pem, 1, sizeof(pem), f) : 0;
    if (f != NULL)
        fclose(f);
    if (len == 0 || len == sizeof(pem)) {
        fm_error("config: %s: cannot read %s", var, path);
        return -1;
    }
    int rc = fm_cf_keys_add_pem(keys, id, pem, len, err, sizeof(err));
    OPENSSL_cleanse(pem, sizeof(pem)); /* a private key's bytes do not outlive the call */
    if (rc != 0)
        fm_error("config: %s: key %s (%s): %s", var, id, path, err);
    return rc;
}

int fm_cf_keys_load(fm_cf_keys_t *keys, const char *var, const char *item_form, const char *spec, char *first_id)
{
    char *copy = strdup(spec), *save = NULL;
    if (copy == NULL || keys == NULL) {
        free(copy);
        return -1;
    }
    int bad = 0;
    for (char *item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        while (*item == ' ')
            ++item;
        char *eq = strchr(item, '=');
        if (eq == NULL || eq == item) {
            fm_error("config: %s: \"%s\" is not %s", var, item, item_form);
            bad = 1;
            continue;
        }
        *eq = '\0';
        if (load_key_file(keys, var, item, eq + 1) != 0)
            bad = 1;
        else if (first_id != NULL && first_id[0] == '\0')
            snprintf(first_id, FM_CF_KEY_ID_MAX + 1, "%s", item);
    }
    free(copy);
    return bad ? -1 : 0;
}

/* Refuses every passphrase: without a callback OpenSSL would prompt on the terminal for an encrypted key. */
static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    return -1;
}

static EVP_PKEY *read_pem(const char *pem, size_t len, bool *has_private)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
        return NULL;
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    *has_private = pkey != NULL;
    if (pkey == NULL) {
        BIO_free(bio);
        bio = BIO_new_mem_buf(pem, (int)len);
        pkey = bio != NULL ? PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL) : NULL;
    }
    BIO_free(bio);
    return pkey;
}

int fm_cf_keys_add_pem(fm_cf_keys_t *keys, const char *key_pair_id, const char *pem, size_t len, char *err,
                       size_t err_size)
{
    if (keys == NULL || key_pair_id == NULL || pem == NULL) {
        fm_cf_set_msg(err, err_size, "missing key set, Key-Pair-Id or PEM");
        return -1;
    }
    size_t id_len = strnlen(key_pair_id, FM_CF_KEY_ID_MAX + 1);
    if (!fm_cf_valid_key_id(key_pair_id, id_len)) {
        fm_cf_set_msg(err, err_size, "a Key-Pair-Id is 1 to %d characters of A-Z, a-z, 0-9, '-' and '_'",
                      FM_CF_KEY_ID_MAX);
        return -1;
    }
    if (keys->count == FM_CF_MAX_KEYS) {
        fm_cf_set_msg(err, err_size, "more than %d CloudFront key pairs", FM_CF_MAX_KEYS);
        return -1;
    }
    for (size_t i = 0; i < keys->count; i++) {
        if (strcmp(keys->entries[i].id, key_pair_id) == 0) {
            fm_cf_set_msg(err, err_size, "Key-Pair-Id %s is configured twice", key_pair_id);
            return -1;
        }
    }
    if (len == 0 || len > PEM_MAX) {
        fm_cf_set_msg(err, err_size, "key %s: the PEM is empty or longer than %d bytes", key_pair_id, PEM_MAX);
        return -1;
    }
    bool has_private = false;
    EVP_PKEY *pkey = read_pem(pem, len, &has_private);
    ERR_clear_error();
    if (pkey == NULL) {
        fm_cf_set_msg(err, err_size, "key %s: not an unencrypted PEM private key or PUBLIC KEY", key_pair_id);
        return -1;
    }
    int type = 0;
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        int bits = EVP_PKEY_get_bits(pkey);
        if (bits < keys->rsa_min_bits || bits > SIG_MAX * 8) {
            fm_cf_set_msg(err, err_size, "key %s: RSA keys must have %d to %d bits, not %d", key_pair_id,
                          keys->rsa_min_bits, SIG_MAX * 8, bits);
            EVP_PKEY_free(pkey);
            return -1;
        }
        type = KEY_RSA;
    } else if (EVP_PKEY_is_a(pkey, "EC")) {
        char group[64] = "";
        size_t group_len = 0;
        if (EVP_PKEY_get_group_name(pkey, group, sizeof group, &group_len) != 1 || strcmp(group, "prime256v1") != 0) {
            fm_cf_set_msg(err, err_size, "key %s: ECDSA keys must be on P-256 (prime256v1), not %s", key_pair_id,
                          group[0] != '\0' ? group : "an unnamed curve");
            EVP_PKEY_free(pkey);
            ERR_clear_error();
            return -1;
        }
        type = KEY_EC;
    } else {
        fm_cf_set_msg(err, err_size, "key %s: only RSA and ECDSA P-256 keys sign CloudFront URLs", key_pair_id);
        EVP_PKEY_free(pkey);
        return -1;
    }
    key_entry_t *entry = &keys->entries[keys->count++];
    memcpy(entry->id, key_pair_id, id_len + 1);
    entry->pkey = pkey;
    entry->type = type;
    entry->has_private = has_private;
    return 0;
}

const key_entry_t *fm_cf_find_key(const fm_cf_keys_t *keys, const char *id, size_t id_len)
{
    for (size_t i = 0; i < keys->count; i++)
        if (strlen(keys->entries[i].id) == id_len && memcmp(keys->entries[i].id, id, id_len) == 0)
            return &keys->entries[i];
    return NULL;
}

/* ---- signatures ---------------------------------------------------------------------------------------------- */

/* RSA: PKCS#1 v1.5 ("openssl sha1 -sign"); ECDSA: the DER ECDSA-Sig-Value OpenSSL writes. The shared EVP_PKEY
 * is only read; each call has its own contexts, so threads may sign and verify with one key at once. */
int fm_cf_sign_policy(const key_entry_t *key, bool sha256, const buf_t *policy, uint8_t *sig, size_t *sig_len)
{
    int rc = -1;
    EVP_PKEY_CTX *key_ctx = NULL; /* owned by md_ctx */
    EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
    if (md_ctx == NULL ||
        EVP_DigestSignInit(md_ctx, &key_ctx, sha256 ? EVP_sha256() : EVP_sha1(), NULL, key->pkey) != 1)
        goto done;
    if (key->type == KEY_RSA && EVP_PKEY_CTX_set_rsa_padding(key_ctx, RSA_PKCS1_PADDING) != 1)
        goto done;
    size_t len = 0;
    if (EVP_DigestSign(md_ctx, NULL, &len, (const uint8_t *)policy->data, policy->len) != 1 || len > SIG_MAX)
        goto done;
    if (EVP_DigestSign(md_ctx, sig, &len, (const uint8_t *)policy->data, policy->len) != 1)
        goto done;
    *sig_len = len;
    rc = 0;
done:
    EVP_MD_CTX_free(md_ctx);
    ERR_clear_error();
    return rc;
}

fm_cf_status_t fm_cf_verify_signature(const key_entry_t *key, bool sha256, const uint8_t *policy, size_t policy_len,
                                      const uint8_t *sig, size_t sig_len)
{
    size_t max = (size_t)EVP_PKEY_get_size(key->pkey);
    if (key->type == KEY_RSA ? sig_len != max : sig_len > max)
        return FM_CF_BAD_SIGNATURE;
    fm_cf_status_t result = FM_CF_INTERNAL;
    EVP_PKEY_CTX *key_ctx = NULL;
    EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
    if (md_ctx == NULL ||
        EVP_DigestVerifyInit(md_ctx, &key_ctx, sha256 ? EVP_sha256() : EVP_sha1(), NULL, key->pkey) != 1)
        goto done;
    if (key->type == KEY_RSA && EVP_PKEY_CTX_set_rsa_padding(key_ctx, RSA_PKCS1_PADDING) != 1)
        goto done;
    result = EVP_DigestVerify(md_ctx, sig, sig_len, policy, policy_len) == 1 ? FM_CF_OK : FM_CF_BAD_SIGNATURE;
done:
    EVP_MD_CTX_free(md_ctx);
    /* A failed verify leaves entries on this thread's error queue; drop them so they do not surface elsewhere. */
    ERR_clear_error();
    return result;
}
