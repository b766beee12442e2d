/*
 * listcursor: the opaque, signed cursor of GET /v1/files (control-plane/files_list.c; docs/decisions.md "Listing
 * (issue 11 item 2)").
 *
 * The listing's fields over the common signed cursor (common/cursor.h): the text is fm_cursor_sign's, with scope
 * "list:{owner}:{folder}" (so a cursor of another owner or folder fails the tag like a tampered one) and payload
 * "l2\n{sort}\n{order}\n{type}\n{phase}\n{id}\n{key}" (the key last: a name may hold anything but '/', NUL and control
 * characters, so no '\n' inside the other fields, which are checked). The key, secret derivation and tag are
 * cursor.c's. Pure functions: no state, safe from any thread.
 */
#ifndef FM_LISTCURSOR_H
#define FM_LISTCURSOR_H

#include <stddef.h>

#include "cursor.h"

/** Longest cursor text accepted or made, in bytes without the NUL (a 255-character name is up to 1,020 bytes). */
#define FM_LIST_CURSOR_MAX (FM_CURSOR_TEXT_MAX - 1)
/** Longest sort key (the last row's name, timestamp or size as text), in bytes. */
#define FM_LIST_CURSOR_KEY_MAX 1024

/** What a cursor says. Every string is NUL-terminated; `phase` is 'd' (folders) or 'f' (files). owner and folder
 *  go into the scope, the others into the payload. */
typedef struct fm_list_cursor {
    char owner[37], folder[37], sort[16], order[8], type[8];
    char phase;
    char id[37];
    char key[FM_LIST_CURSOR_KEY_MAX + 1];
} fm_list_cursor_t;

/** Writes c's cursor text, signed with `secret` (secret_len bytes: the server secret, as fm_cursor_sign takes it),
 *  into out (out_size bytes with the NUL). Returns 0, or -1 when a field is malformed (a '\n' or NUL where none may
 *  be, a wrong length) or out is too small. */
int fm_list_cursor_encode(const void *secret, size_t secret_len, const fm_list_cursor_t *c, char *out, size_t out_size);

/** Reads `len` bytes of cursor text as a cursor of the listing of `owner`'s `folder` (each 1..36 bytes, no '\n' or
 *  ':'): 0 and *out filled (owner and folder copied from the arguments) when it is well-formed and its tag is
 *  secret's for that scope; -1 otherwise (out then undefined). Never reads past len. */
int fm_list_cursor_decode(const void *secret, size_t secret_len, const char *owner, const char *folder,
                          const char *text, size_t len, fm_list_cursor_t *out);

#endif
