/*
 * listcursor: see listcursor.h.
 */
#include "listcursor.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "b64.h"

#define VERSION "l1"
#define FIELDS 9
/* The payload: version + 6 short fields + phase + id + key, with their separators. */
#define PAYLOAD_MAX (FM_LIST_CURSOR_KEY_MAX + 160)

static int tag_of(const unsigned char secret[32], const void *payload, size_t len, unsigned char tag[32])
{
    unsigned int tag_len = 0;
    return HMAC(EVP_sha256(), secret, 32, payload, len, tag, &tag_len) != NULL && tag_len == 32 ? 0 : -1;
}

/* A field that may go into the payload: no '\n' (the separator), at most `max` bytes (all but the key: no empty). */
static int field_ok(const char *s, size_t max, int may_be_empty)
{
    size_t len = strnlen(s, max + 1);
    return len <= max && (may_be_empty || len > 0) && memchr(s, '\n', len) == NULL;
}

int fm_list_cursor_encode(const unsigned char secret[32], const fm_list_cursor_t *c, char *out, size_t out_size)
{
    if (!field_ok(c->owner, 36, 0) || !field_ok(c->folder, 36, 0) || !field_ok(c->sort, sizeof(c->sort) - 1, 0) ||
        !field_ok(c->order, sizeof(c->order) - 1, 0) || !field_ok(c->type, sizeof(c->type) - 1, 0) ||
        (c->phase != 'd' && c->phase != 'f') || strnlen(c->id, 37) != 36 || !field_ok(c->id, 36, 0) ||
        strnlen(c->key, FM_LIST_CURSOR_KEY_MAX + 1) > FM_LIST_CURSOR_KEY_MAX)
        return -1;
    char payload[PAYLOAD_MAX];
    int len = snprintf(payload, sizeof(payload), VERSION "\n%s\n%s\n%s\n%s\n%s\n%c\n%s\n%s", c->owner, c->folder,
                       c->sort, c->order, c->type, c->phase, c->id, c->key);
    if (len < 0 || (size_t)len >= sizeof(payload))
        return -1;
    unsigned char tag[32];
    if (tag_of(secret, payload, (size_t)len, tag) != 0)
        return -1;
    size_t head = fm_b64url_encoded_len((size_t)len), tail = fm_b64url_encoded_len(FM_LIST_CURSOR_TAG_LEN);
    if (head + 1 + tail + 1 > out_size || head + 1 + tail > FM_LIST_CURSOR_MAX)
        return -1;
    if (fm_b64url_encode(payload, (size_t)len, out, out_size) != 0)
        return -1;
    out[head] = '.';
    return fm_b64url_encode(tag, FM_LIST_CURSOR_TAG_LEN, out + head + 1, out_size - head - 1);
}

/* Copies the NUL-terminated field into dst (size bytes with the NUL); -1 if it does not fit. */
static int copy_field(char *dst, size_t size, const char *src, size_t exact)
{
    size_t len = strlen(src);
    if (len >= size || (exact && len != exact))
        return -1;
    memcpy(dst, src, len + 1);
    return 0;
}

int fm_list_cursor_decode(const unsigned char secret[32], const char *text, size_t len, fm_list_cursor_t *out)
{
    if (len > FM_LIST_CURSOR_MAX)
        return -1;
    const char *dot = memchr(text, '.', len);
    if (dot == NULL)
        return -1;
    size_t head = (size_t)(dot - text);
    uint8_t payload[PAYLOAD_MAX + 1], tag[32], expected[32];
    size_t payload_len = 0, tag_len = 0;
    if (fm_b64url_decode(text, head, payload, sizeof(payload) - 1, &payload_len) != 0 ||
        fm_b64url_decode(dot + 1, len - head - 1, tag, sizeof(tag), &tag_len) != 0 ||
        tag_len != FM_LIST_CURSOR_TAG_LEN || tag_of(secret, payload, payload_len, expected) != 0 ||
        CRYPTO_memcmp(expected, tag, FM_LIST_CURSOR_TAG_LEN) != 0)
        return -1;
    /* Authentic, so made by fm_list_cursor_encode: still parsed as strictly as any input. */
    if (memchr(payload, '\0', payload_len) != NULL)
        return -1;
    payload[payload_len] = '\0';
    char *fields[FIELDS], *s = (char *)payload;
    for (int i = 0; i < FIELDS; ++i) {
        fields[i] = s;
        if (i < FIELDS - 1) {
            char *nl = strchr(s, '\n');
            if (nl == NULL)
                return -1;
            *nl = '\0';
            s = nl + 1;
        }
    }
    if (strcmp(fields[0], VERSION) != 0 || strlen(fields[6]) != 1 || (fields[6][0] != 'd' && fields[6][0] != 'f'))
        return -1;
    out->phase = fields[6][0];
    if (copy_field(out->owner, sizeof(out->owner), fields[1], 0) != 0 ||
        copy_field(out->folder, sizeof(out->folder), fields[2], 0) != 0 ||
        copy_field(out->sort, sizeof(out->sort), fields[3], 0) != 0 ||
        copy_field(out->order, sizeof(out->order), fields[4], 0) != 0 ||
        copy_field(out->type, sizeof(out->type), fields[5], 0) != 0 ||
        copy_field(out->id, sizeof(out->id), fields[7], 36) != 0 ||
        copy_field(out->key, sizeof(out->key), fields[8], 0) != 0)
        return -1;
    return 0;
}
