/*
 * listcursor: the opaque, signed cursor of GET /v1/files (control-plane/files_list.c; docs/decisions.md "Listing
 * (issue 11 item 2)").
 *
 * Text: base64url(payload) "." base64url(tag), unpadded; payload = "l1\n{owner}\n{folder}\n{sort}\n{order}\n{type}\n
 * {phase}\n{id}\n{key}" (the key last: a name may hold anything but '/', NUL and control characters, so no '\n'
 * inside the other fields, which are checked), tag = the first FM_LIST_CURSOR_TAG_LEN bytes of HMAC-SHA256(secret,
 * payload), compared in constant time. Pure functions: no state, safe from any thread.
 */
#ifndef FM_LISTCURSOR_H
#define FM_LISTCURSOR_H

#include <stddef.h>

/** Longest cursor text accepted or made, in bytes (a 255-character name is up to 1,020 bytes of UTF-8). */
#define FM_LIST_CURSOR_MAX 2048
/** Longest sort key (the last row's name, timestamp or size as text), in bytes. */
#define FM_LIST_CURSOR_KEY_MAX 1024
/** Bytes of HMAC-SHA256 kept in the tag: 128 bits. */
#define FM_LIST_CURSOR_TAG_LEN 16

/** What a cursor says. Every string is NUL-terminated; `phase` is 'd' (folders) or 'f' (files). */
typedef struct fm_list_cursor {
    char owner[37], folder[37], sort[16], order[8], type[8];
    char phase;
    char id[37];
    char key[FM_LIST_CURSOR_KEY_MAX + 1];
} fm_list_cursor_t;

/** Writes c's cursor text into out (out_size bytes with the NUL). Returns 0, or -1 when a field is malformed (a
 *  '\n' or NUL where none may be, a wrong length) or out is too small. */
int fm_list_cursor_encode(const unsigned char secret[32], const fm_list_cursor_t *c, char *out, size_t out_size);

/** Reads `len` bytes of cursor text: 0 and *out filled when it is well-formed and its tag is secret's; -1 otherwise
 *  (out then undefined). Never reads past len. */
int fm_list_cursor_decode(const unsigned char secret[32], const char *text, size_t len, fm_list_cursor_t *out);

#endif
