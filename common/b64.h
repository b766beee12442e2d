/*
 * b64: base64url (RFC 4648 §5, unpadded, as JWS and opaque tokens use it) and lowercase hex.
 *
 * Decoding is strict on purpose: one string decodes to one byte string. Padding, whitespace, the standard
 * alphabet's '+' and '/', and non-zero unused trailing bits are all refused, so a signature cannot be
 * re-spelled into a second accepted form by flipping the low bits of its last character.
 */
#ifndef FM_B64_H
#define FM_B64_H

#include <stddef.h>
#include <stdint.h>

/**
 * The 6-bit value of `c` in a base64 alphabet: A-Z, a-z, 0-9, then `c62` and `c63` ('+' '/' standard, '-' '_'
 * base64url, '-' '~' CloudFront's); -1 for any other character.
 */
int fm_b64_value(unsigned char c, char c62, char c63);

/** Characters fm_b64url_encode writes for `len` bytes, not counting the terminating NUL. */
size_t fm_b64url_encoded_len(size_t len);

/**
 * Largest byte count that `encoded_len` base64url characters can decode to; a buffer this large is always
 * enough for fm_b64url_decode.
 */
size_t fm_b64url_decoded_max(size_t encoded_len);

/**
 * Encodes `len` bytes of `in` as unpadded base64url into `out` and NUL-terminates it.
 * Returns 0, or -1 (nothing useful written) if `out_size` < fm_b64url_encoded_len(len) + 1.
 */
int fm_b64url_encode(const void *in, size_t len, char *out, size_t out_size);

/**
 * Decodes `in_len` characters of unpadded base64url into `out`, storing the byte count in `*out_len`.
 * Returns 0, or -1 on any character outside [A-Za-z0-9_-], a length of 1 mod 4, non-zero unused trailing bits,
 * or `out_size` too small. `in` need not be NUL-terminated.
 */
int fm_b64url_decode(const char *in, size_t in_len, uint8_t *out, size_t out_size, size_t *out_len);

/**
 * Writes `len` bytes as lowercase hex into `out` and NUL-terminates it.
 * Returns 0, or -1 if `out_size` < 2 * len + 1.
 */
int fm_hex_encode(const void *in, size_t len, char *out, size_t out_size);

#endif /* FM_B64_H */
