#include "b64.h"

static const char b64url_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t fm_b64url_encoded_len(size_t len)
{
    return len / 3 * 4 + (len % 3 == 0 ? 0 : len % 3 + 1);
}

size_t fm_b64url_decoded_max(size_t encoded_len)
{
    return encoded_len / 4 * 3 + (encoded_len % 4 > 1 ? encoded_len % 4 - 1 : 0);
}

int fm_b64url_encode(const void *in, size_t len, char *out, size_t out_size)
{
    const uint8_t *bytes = in;
    if (len > (SIZE_MAX - 1) / 4 * 3 - 3 || out_size < fm_b64url_encoded_len(len) + 1)
        return -1;
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)bytes[i] << 16 | (uint32_t)bytes[i + 1] << 8 | bytes[i + 2];
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)bytes[i] << 16;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)bytes[i] << 16 | (uint32_t)bytes[i + 1] << 8;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
    return 0;
}

int fm_b64_value(unsigned char c, char c62, char c63)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (unsigned char)c62)
        return 62;
    if (c == (unsigned char)c63)
        return 63;
    return -1;
}

/* Returns the 6-bit value of a base64url character, or -1. */
static int b64url_value(unsigned char c)
{
    return fm_b64_value(c, '-', '_');
}

int fm_b64url_decode(const char *in, size_t in_len, uint8_t *out, size_t out_size, size_t *out_len)
{
    size_t tail = in_len % 4;
    /* One leftover character carries only 6 bits: no encoder produces it. */
    if (tail == 1 || out_size < fm_b64url_decoded_max(in_len))
        return -1;
    size_t o = 0, i = 0;
    for (; i + 4 <= in_len; i += 4) {
        int a = b64url_value((unsigned char)in[i]), b = b64url_value((unsigned char)in[i + 1]);
        int c = b64url_value((unsigned char)in[i + 2]), d = b64url_value((unsigned char)in[i + 3]);
        if ((a | b | c | d) < 0)
            return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[o++] = (uint8_t)(v >> 16);
        out[o++] = (uint8_t)(v >> 8);
        out[o++] = (uint8_t)v;
    }
    if (tail == 2) {
        int a = b64url_value((unsigned char)in[i]), b = b64url_value((unsigned char)in[i + 1]);
        /* The low 4 bits of the last character are not data: refuse them set (one spelling per value). */
        if ((a | b) < 0 || (b & 0x0f) != 0)
            return -1;
        out[o++] = (uint8_t)(a << 2 | b >> 4);
    } else if (tail == 3) {
        int a = b64url_value((unsigned char)in[i]), b = b64url_value((unsigned char)in[i + 1]);
        int c = b64url_value((unsigned char)in[i + 2]);
        if ((a | b | c) < 0 || (c & 0x03) != 0)
            return -1;
        out[o++] = (uint8_t)(a << 2 | b >> 4);
        out[o++] = (uint8_t)((b & 0x0f) << 4 | c >> 2);
    }
    *out_len = o;
    return 0;
}

int fm_hex_encode(const void *in, size_t len, char *out, size_t out_size)
{
    static const char digits[] = "0123456789abcdef";
    const uint8_t *bytes = in;
    if (len > (SIZE_MAX - 1) / 2 || out_size < 2 * len + 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 0x0f];
    }
    out[2 * len] = '\0';
    return 0;
}
