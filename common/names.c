/* File names: see names.h. */
#include "names.h"

#include <string.h>

size_t fm_utf8_decode(const unsigned char *s, size_t len, unsigned *cp)
{
    unsigned char c = s[0];
    size_t n;
    unsigned min, value;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        n = 2, min = 0x80, value = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3, min = 0x800, value = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4, min = 0x10000, value = c & 0x07;
    } else {
        return 0; /* a continuation byte, or 0xF8..0xFF */
    }
    if (len < n)
        return 0;
    for (size_t k = 1; k < n; ++k) {
        if ((s[k] & 0xc0) != 0x80)
            return 0;
        value = (value << 6) | (s[k] & 0x3f);
    }
    /* Unicode §3.9: the shortest form only, no UTF-16 surrogates, nothing past U+10FFFF. */
    if (value < min || value > 0x10ffff || (value >= 0xd800 && value <= 0xdfff))
        return 0;
    *cp = value;
    return n;
}

static int is_control(unsigned cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029;
}

/* Bidi_Control=Yes in Unicode's PropList.txt (unchanged since Unicode 6.3). */
static int is_bidi_control(unsigned cp)
{
    return cp == 0x061c || cp == 0x200e || cp == 0x200f || (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069);
}

fm_name_error_t fm_name_check(const char *name, size_t len)
{
    if (len == 0)
        return FM_NAME_EMPTY;
    if (len > FM_NAME_MAX_BYTES)
        return FM_NAME_TOO_LONG;
    const unsigned char *s = (const unsigned char *)name;
    /* Every code point is looked at before the verdict: a bad byte late in the name is a bad name, whatever came
     * first. The reasons are ranked so that one name always gets one answer. */
    int control = 0, bidi = 0, separator = 0;
    for (size_t i = 0; i < len;) {
        unsigned cp;
        size_t n = fm_utf8_decode(s + i, len - i, &cp);
        if (n == 0)
            return FM_NAME_BAD_UTF8;
        control |= is_control(cp);
        bidi |= is_bidi_control(cp);
        separator |= cp == '/' || cp == '\\';
        i += n;
    }
    if (control)
        return FM_NAME_CONTROL;
    if (bidi)
        return FM_NAME_BIDI;
    if (separator)
        return FM_NAME_SEPARATOR;
    if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
        return FM_NAME_DOTS;
    return FM_NAME_OK;
}

int fm_name_valid(const char *name)
{
    return fm_name_check(name, strlen(name)) == FM_NAME_OK;
}

const char *fm_name_error_message(fm_name_error_t error)
{
    switch (error) {
    case FM_NAME_OK: return "the name is valid";
    case FM_NAME_EMPTY: return "name must not be empty";
    case FM_NAME_TOO_LONG: return "name must be at most 255 bytes long";
    case FM_NAME_BAD_UTF8: return "name must be valid UTF-8";
    case FM_NAME_CONTROL: return "name must not contain control characters (C0, DEL, C1, U+2028, U+2029)";
    case FM_NAME_BIDI: return "name must not contain bidirectional controls (U+202A-U+202E, U+2066-U+2069, "
                              "U+200E, U+200F, U+061C)";
    case FM_NAME_SEPARATOR: return "name must not contain '/' or '\\'";
    case FM_NAME_DOTS: return "name must not be . or ..";
    }
    return "name is not valid";
}
