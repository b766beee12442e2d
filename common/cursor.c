/* Signed opaque cursors: see cursor.h. */
#include "cursor.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#include "b64.h"

#define VERSION 0x01
#define RAW_MAX (1 + FM_CURSOR_PAYLOAD_MAX + FM_CURSOR_TAG_BYTES)

/* tag = HMAC(HMAC(secret, label), version | scope length | scope | payload), first FM_CURSOR_TAG_BYTES bytes. */
static int tag_of(const void *secret, size_t secret_len, const char *scope, const uint8_t *payload, size_t len,
                  uint8_t tag[FM_CURSOR_TAG_BYTES])
{
    static const char label[] = "fm-cursor-v1";
    uint8_t key[EVP_MAX_MD_SIZE], mac[EVP_MAX_MD_SIZE], msg[2 + 255 + FM_CURSOR_PAYLOAD_MAX];
    unsigned key_len = 0, mac_len = 0;
    size_t scope_len = strlen(scope);
    if (scope_len > 255 || len > FM_CURSOR_PAYLOAD_MAX)
        return -1;
    if (HMAC(EVP_sha256(), secret, (int)secret_len, (const uint8_t *)label, sizeof(label) - 1, key, &key_len) == NULL)
        return -1;
    msg[0] = VERSION;
    msg[1] = (uint8_t)scope_len;
    memcpy(msg + 2, scope, scope_len);
    if (len > 0)
        memcpy(msg + 2 + scope_len, payload, len);
    if (HMAC(EVP_sha256(), key, (int)key_len, msg, 2 + scope_len + len, mac, &mac_len) == NULL)
        return -1;
    memcpy(tag, mac, FM_CURSOR_TAG_BYTES);
    OPENSSL_cleanse(key, sizeof(key));
    return 0;
}

int fm_cursor_sign(const void *secret, size_t secret_len, const char *scope, const void *payload, size_t len, char *out,
                   size_t out_size)
{
    uint8_t raw[RAW_MAX];
    if (len > FM_CURSOR_PAYLOAD_MAX)
        return -1;
    raw[0] = VERSION;
    if (len > 0)
        memcpy(raw + 1, payload, len);
    if (tag_of(secret, secret_len, scope, raw + 1, len, raw + 1 + len) != 0)
        return -1;
    return fm_b64url_encode(raw, 1 + len + FM_CURSOR_TAG_BYTES, out, out_size);
}

int fm_cursor_open(const void *secret, size_t secret_len, const char *scope, const char *text, size_t text_len,
                   void *payload, size_t payload_size, size_t *payload_len)
{
    uint8_t raw[RAW_MAX], tag[FM_CURSOR_TAG_BYTES];
    size_t raw_len = 0;
    if (text_len == 0 || text_len > FM_CURSOR_TEXT_MAX - 1)
        return -1;
    if (fm_b64url_decode(text, text_len, raw, sizeof(raw), &raw_len) != 0)
        return -1;
    if (raw_len < 1 + FM_CURSOR_TAG_BYTES || raw[0] != VERSION)
        return -1;
    size_t len = raw_len - 1 - FM_CURSOR_TAG_BYTES;
    if (len > payload_size)
        return -1;
    if (tag_of(secret, secret_len, scope, raw + 1, len, tag) != 0)
        return -1;
    if (CRYPTO_memcmp(tag, raw + 1 + len, FM_CURSOR_TAG_BYTES) != 0)
        return -1;
    if (len > 0)
        memcpy(payload, raw + 1, len);
    *payload_len = len;
    return 0;
}
