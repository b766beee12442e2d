/*
 * Fuzz target for common/b64.c: base64url (RFC 4648 §5, unpadded, strict) and lowercase hex.
 *
 * The input is used twice: as text for fm_b64url_decode and as bytes for the encoders. Invariants:
 *  - the decoder accepts exactly what an independent validity check accepts (alphabet, length not 1 mod 4,
 *    zero unused trailing bits), so one string decodes to one byte string;
 *  - a successful decode re-encodes to the very same text, and decode(encode(x)) == x;
 *  - both encoders write exactly their documented length, only their alphabet, and a NUL, and refuse a buffer one
 *    byte too small. Every buffer is malloc'd at its exact size so that ASan sees a one-byte overrun.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_b64: invariant failed at line %d: %s\n", __LINE__, #cond);                           \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Reference: the 6-bit value of a character by searching the alphabet (the library uses ranges), or -1. */
static int ref_value(unsigned char c)
{
    const char *hit = c != '\0' ? memchr(alphabet, c, 64) : NULL;
    return hit != NULL ? (int)(hit - alphabet) : -1;
}

/* Reference: is `text` the one canonical unpadded base64url spelling of some byte string? */
static int ref_valid(const uint8_t *text, size_t len)
{
    if (len % 4 == 1)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (ref_value(text[i]) < 0)
            return 0;
    /* Unused low bits of the last character: 4 of them after 2 characters, 2 after 3. */
    if (len % 4 == 2 && (ref_value(text[len - 1]) & 0x0f) != 0)
        return 0;
    if (len % 4 == 3 && (ref_value(text[len - 1]) & 0x03) != 0)
        return 0;
    return 1;
}

static void check_decode(const uint8_t *data, size_t size)
{
    size_t max = fm_b64url_decoded_max(size);
    CHECK(max <= size / 4 * 3 + 2);
    uint8_t *decoded = malloc(max); /* exact size; ASan makes even malloc(0) a checked pointer */
    size_t decoded_len = (size_t)-1;
    int rc = fm_b64url_decode((const char *)data, size, decoded, max, &decoded_len);
    CHECK((rc == 0) == ref_valid(data, size));
    if (rc == 0) {
        CHECK(decoded_len <= max);
        CHECK(fm_b64url_encoded_len(decoded_len) == size);
        /* Strict decoding: the decoded bytes re-encode to the input, character for character. */
        char *again = malloc(size + 1);
        CHECK(fm_b64url_encode(decoded, decoded_len, again, size + 1) == 0);
        CHECK(memcmp(again, data, size) == 0 && again[size] == '\0');
        free(again);
        /* One byte short of the documented maximum must be refused, not overrun. */
        if (max > 0) {
            uint8_t *small = malloc(max - 1);
            size_t small_len = 0;
            CHECK(fm_b64url_decode((const char *)data, size, small, max - 1, &small_len) == -1);
            free(small);
        }
    }
    free(decoded);
}

static void check_encode(const uint8_t *data, size_t size)
{
    size_t encoded_len = fm_b64url_encoded_len(size);
    CHECK(encoded_len == (size * 4 + 2) / 3);
    char *encoded = malloc(encoded_len + 1);
    CHECK(fm_b64url_encode(data, size, encoded, encoded_len) == -1); /* no room for the NUL */
    CHECK(fm_b64url_encode(data, size, encoded, encoded_len + 1) == 0);
    CHECK(encoded[encoded_len] == '\0');
    CHECK(strspn(encoded, alphabet) == encoded_len);
    CHECK(ref_valid((const uint8_t *)encoded, encoded_len));

    size_t max = fm_b64url_decoded_max(encoded_len);
    CHECK(max == size);
    uint8_t *decoded = malloc(size);
    size_t decoded_len = (size_t)-1;
    CHECK(fm_b64url_decode(encoded, encoded_len, decoded, size, &decoded_len) == 0);
    CHECK(decoded_len == size && memcmp(decoded, data, size) == 0);
    free(decoded);
    free(encoded);
}

static void check_hex(const uint8_t *data, size_t size)
{
    static const char digits[] = "0123456789abcdef";
    char *hex = malloc(2 * size + 1);
    CHECK(fm_hex_encode(data, size, hex, 2 * size) == -1);
    CHECK(fm_hex_encode(data, size, hex, 2 * size + 1) == 0);
    CHECK(hex[2 * size] == '\0');
    for (size_t i = 0; i < size; i++)
        CHECK(hex[2 * i] == digits[data[i] >> 4] && hex[2 * i + 1] == digits[data[i] & 0x0f]);
    free(hex);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_decode(data, size);
    check_encode(data, size);
    check_hex(data, size);
    return 0;
}
