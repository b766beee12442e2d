/*
 * Fuzz target for common/names.c: fm_name_check (the name rule of DESIGN.md §5b, see names.h) and fm_utf8_decode.
 *
 * The input is the name, in a malloc'd buffer of its exact length (no NUL), so a read past it is an ASan report.
 * Invariants:
 *  - the verdict equals an independent reading: UTF-8 matched byte by byte against Unicode's Table 3-7 ("Well-Formed
 *    UTF-8 Byte Sequences", ranges per lead byte, not decode-then-check as the library does), then the refused code
 *    points listed as ranges, then separators and dot names, reasons ranked as names.h says;
 *  - fm_utf8_valid (http.c, the JSON body check) agrees with the decoder on well-formedness;
 *  - fm_utf8_decode steps exactly through the sequences the reference finds, with the same code points;
 *  - a valid name stays valid as a C string (fm_name_valid) and has a message for every reason.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "names.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_names: invariant failed at line %d: %s\n", __LINE__, #cond);                         \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* Table 3-7: for each lead byte, the allowed range of the second byte; later bytes are 80..BF. */
static size_t ref_sequence(const uint8_t *s, size_t len, unsigned *cp)
{
    uint8_t b = s[0];
    size_t n;
    uint8_t lo = 0x80, hi = 0xbf;
    if (b <= 0x7f) {
        *cp = b;
        return 1;
    } else if (b >= 0xc2 && b <= 0xdf) {
        n = 2;
    } else if (b == 0xe0) {
        n = 3, lo = 0xa0;
    } else if ((b >= 0xe1 && b <= 0xec) || b == 0xee || b == 0xef) {
        n = 3;
    } else if (b == 0xed) {
        n = 3, hi = 0x9f;
    } else if (b == 0xf0) {
        n = 4, lo = 0x90;
    } else if (b >= 0xf1 && b <= 0xf3) {
        n = 4;
    } else if (b == 0xf4) {
        n = 4, hi = 0x8f;
    } else {
        return 0;
    }
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if (s[k] < 0x80 || s[k] > 0xbf)
            return 0;
    unsigned value = n == 2 ? b - 0xc0u : n == 3 ? b - 0xe0u : b - 0xf0u;
    for (size_t k = 1; k < n; k++)
        value = value * 64 + (s[k] - 0x80u);
    *cp = value;
    return n;
}

static const struct {
    unsigned first, last;
    fm_name_error_t reason;
} refused[] = {
    {0x0000, 0x001f, FM_NAME_CONTROL}, {0x007f, 0x009f, FM_NAME_CONTROL}, {0x2028, 0x2029, FM_NAME_CONTROL},
    {0x061c, 0x061c, FM_NAME_BIDI},    {0x200e, 0x200f, FM_NAME_BIDI},    {0x202a, 0x202e, FM_NAME_BIDI},
    {0x2066, 0x2069, FM_NAME_BIDI},    {'/', '/', FM_NAME_SEPARATOR},     {'\\', '\\', FM_NAME_SEPARATOR},
};

static fm_name_error_t ref_check(const uint8_t *s, size_t len)
{
    if (len == 0)
        return FM_NAME_EMPTY;
    if (len > 255)
        return FM_NAME_TOO_LONG;
    fm_name_error_t worst = FM_NAME_OK; /* the lowest-numbered reason found, as ranked in names.h */
    for (size_t i = 0; i < len;) {
        unsigned cp;
        size_t n = ref_sequence(s + i, len - i, &cp);
        if (n == 0)
            return FM_NAME_BAD_UTF8;
        for (size_t r = 0; r < sizeof(refused) / sizeof(refused[0]); r++)
            if (cp >= refused[r].first && cp <= refused[r].last && (worst == FM_NAME_OK || refused[r].reason < worst))
                worst = refused[r].reason;
        i += n;
    }
    if (worst != FM_NAME_OK)
        return worst;
    if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
        return FM_NAME_DOTS;
    return FM_NAME_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *name = malloc(size > 0 ? size : 1);
    memcpy(name, data, size);

    fm_name_error_t got = fm_name_check(name, size);
    CHECK(got == ref_check(data, size));
    CHECK(fm_name_error_message(got) != NULL && fm_name_error_message(got)[0] != '\0');

    /* The decoder walks the same sequences as Table 3-7, and http.c's validator agrees on the whole. */
    int well_formed = 1;
    for (size_t i = 0; i < size;) {
        unsigned cp = 0xffffffffu, ref_cp = 0xfffffffeu;
        size_t n = fm_utf8_decode((const unsigned char *)name + i, size - i, &cp);
        size_t ref_n = ref_sequence(data + i, size - i, &ref_cp);
        CHECK(n == ref_n);
        if (n == 0) {
            well_formed = 0;
            break;
        }
        CHECK(cp == ref_cp && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff));
        i += n;
    }
    CHECK(fm_utf8_valid((const unsigned char *)name, size) == well_formed);

    if (got == FM_NAME_OK) {
        char *text = malloc(size + 1);
        memcpy(text, data, size);
        text[size] = '\0';
        CHECK(strlen(text) == size); /* no NUL inside a valid name */
        CHECK(fm_name_valid(text));
        free(text);
    }
    free(name);
    return 0;
}
