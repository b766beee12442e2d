/*
 * cursor: the opaque, signed cursors of the paged routes (GET /v1/trash, GET /v1/files/delta, and the listing's
 * keyset cursor): a client hands back what it was given and nothing else is accepted.
 *
 * A cursor is base64url(version 0x01 | payload | tag), tag = the first 16 bytes of HMAC-SHA256 over
 * (version | scope length | scope | payload), keyed with HMAC-SHA256(server secret, "fm-cursor-v1") so that the
 * cursor key is not the secret's other uses' key. The scope names what the cursor may page and for whom (e.g.
 * "delta:{owner id}", "trash:{owner id}", "list:{owner id}:{folder id}"): a cursor of another route, user or folder
 * fails the tag like a tampered one. The payload is the route's own bytes (its keyset), at most
 * FM_CURSOR_PAYLOAD_MAX; it is not secret (readable by anyone who decodes it), only unforgeable.
 *
 * Pure functions on the caller's buffers; thread-safe (OpenSSL's one-shot HMAC).
 */
#ifndef FM_CURSOR_H
#define FM_CURSOR_H

#include <stddef.h>
#include <stdint.h>

/* The listing's keyset is the largest: a sort key of up to 1,024 bytes (a 255-character name is up to 1,020 bytes of
 * UTF-8) and ~75 bytes of fields (common/listcursor.h). */
#define FM_CURSOR_PAYLOAD_MAX 1280
#define FM_CURSOR_TAG_BYTES 16
/** Largest cursor text, NUL included: base64url of 1 + payload + tag bytes. */
#define FM_CURSOR_TEXT_MAX (((1 + FM_CURSOR_PAYLOAD_MAX + FM_CURSOR_TAG_BYTES + 2) / 3) * 4 + 1)

/**
 * Writes the cursor of `payload` (len ≤ FM_CURSOR_PAYLOAD_MAX bytes) for `scope` (NUL-terminated, < 256 bytes),
 * signed with `secret` (secret_len bytes), NUL-terminated into `out`. Returns 0, or -1 if a size is out of bounds.
 */
int fm_cursor_sign(const void *secret, size_t secret_len, const char *scope, const void *payload, size_t len, char *out,
                   size_t out_size);

/**
 * Checks `text` (text_len bytes, need not be NUL-terminated) as a cursor of `scope` signed with `secret` and copies
 * its payload into `payload` (payload_size bytes; *payload_len = its length). Returns 0, or -1 for anything else:
 * not base64url, too short or long, another version, a tag that does not match (compared in constant time).
 */
int fm_cursor_open(const void *secret, size_t secret_len, const char *scope, const char *text, size_t text_len,
                   void *payload, size_t payload_size, size_t *payload_len);

#endif
