/*
 * names: the one rule for what a client may call a file (and, as the routes come, a folder, a group, an API key).
 * DESIGN.md §5b: a name is 1..255 bytes of UTF-8 without `/`, NUL or control characters. Made exact here:
 *
 *   - 1..FM_NAME_MAX_BYTES bytes of well-formed UTF-8 (Unicode §3.9 Table 3-7: no overlong forms, no surrogates
 *     U+D800..U+DFFF, nothing above U+10FFFF, no truncated sequence);
 *   - no control character: C0 (U+0000..U+001F, NUL included), DEL (U+007F) and C1 (U+0080..U+009F, e.g. NEL
 *     U+0085), nor the line and paragraph separators U+2028/U+2029, which break lines like a newline;
 *   - no Bidi_Control character (Unicode PropList.txt): the embeddings and overrides U+202A..U+202E, the isolates
 *     U+2066..U+2069 and the marks U+200E, U+200F, U+061C. They are invisible and reorder what is shown:
 *     "a\u202Egpj.svg" displays as "asvg.jpg" (the "Trojan Source" family, CVE-2021-42574);
 *   - no `/` and no `\` (path separators on one system or another), and not "." or "..".
 *
 * Pure functions over bytes, no allocation, no global state: safe on any thread.
 */
#ifndef FM_NAMES_H
#define FM_NAMES_H

#include <stddef.h>

/** Longest name in bytes (a common file-system limit, NAME_MAX). */
#define FM_NAME_MAX_BYTES 255

/** Why a name is refused; FM_NAME_OK (0) when it is not. */
typedef enum fm_name_error {
    FM_NAME_OK = 0,
    FM_NAME_EMPTY,     /**< zero bytes */
    FM_NAME_TOO_LONG,  /**< more than FM_NAME_MAX_BYTES bytes */
    FM_NAME_BAD_UTF8,  /**< not well-formed UTF-8 */
    FM_NAME_CONTROL,   /**< a C0/C1 control, DEL, or U+2028/U+2029 */
    FM_NAME_BIDI,      /**< a Bidi_Control character */
    FM_NAME_SEPARATOR, /**< a `/` or a `\` */
    FM_NAME_DOTS,      /**< "." or ".." */
} fm_name_error_t;

/**
 * Checks `len` bytes at `name` (need not be NUL-terminated; a NUL inside is a control character) against the rule
 * above. Returns FM_NAME_OK or the first reason found, in the order of the enum (length before content).
 */
fm_name_error_t fm_name_check(const char *name, size_t len);

/** fm_name_check(name, strlen(name)) == FM_NAME_OK. */
int fm_name_valid(const char *name);

/** A short English sentence for the 422 answer's message, e.g. "name must not contain bidirectional controls". */
const char *fm_name_error_message(fm_name_error_t error);

/**
 * Decodes one UTF-8 sequence at s[0..len) (len >= 1). Returns its length (1..4) with the code point in *cp, or 0
 * when the bytes there are not a well-formed sequence (overlong, surrogate, above U+10FFFF, truncated, a stray
 * continuation byte, 0xC0/0xC1/0xF5..0xFF).
 */
size_t fm_utf8_decode(const unsigned char *s, size_t len, unsigned *cp);

#endif /* FM_NAMES_H */
