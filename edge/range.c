/*
 * The Range header of /f/ and /p/ (RFC 9110 §14.1, §14.2): one pure function of the header's bytes and the object's
 * size, shared by every answer (a hit, a fill, a pass-through) and by the cold-miss choice between a ranged origin GET
 * and a fill (miss.c), which reads the spec before the size is known.
 *
 * Numbers are arbitrary-precision in the RFC. Here they saturate at UINT64_MAX, which keeps every comparison with a
 * real size exact (no object is that large): a first-pos past the end is unsatisfiable (416), a last-pos past the end
 * is the end, a suffix longer than the object is the whole object. Only "last-pos < first-pos" (an invalid spec,
 * ignored) needs the digits themselves when both numbers overflow, and compares them as decimal strings. Nothing
 * wraps: `bytes=0-99999999999999999999999` is the whole object, `bytes=-99999999999999999999999` too.
 *
 * What is ignored (the whole object, 200; RFC 9110 §14.2: "a server MAY ignore the Range header field"): a unit
 * other than bytes, a list of ranges (multipart/byteranges is not offered), anything that does not parse.
 */
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "edge.h"

/* SP and HTAB (RFC 9110 §5.6.3 OWS). */
static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* 1*DIGIT at [*p, end): the value saturated at UINT64_MAX, and where the digits are (for an exact comparison). */
static int read_number(const char **p, const char *end, uint64_t *value, const char **digits, size_t *digit_count)
{
    const char *start = *p;
    uint64_t v = 0;
    for (; *p < end && **p >= '0' && **p <= '9'; ++*p) {
        unsigned d = (unsigned)(**p - '0');
        v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d; /* saturates, never wraps */
    }
    *value = v;
    *digits = start;
    *digit_count = (size_t)(*p - start);
    return *p > start;
}

/* a < b for two decimal digit strings of any length (leading zeros allowed). */
static int decimal_less(const char *a, size_t a_len, const char *b, size_t b_len)
{
    while (a_len > 1 && *a == '0')
        ++a, --a_len;
    while (b_len > 1 && *b == '0')
        ++b, --b_len;
    if (a_len != b_len)
        return a_len < b_len;
    return memcmp(a, b, a_len) < 0;
}

int fm_edge_range_spec(const char *value, size_t len, fm_edge_range_spec_t *spec)
{
    const char *p = value, *end = value + len;
    while (p < end && is_ows(*p))
        ++p;
    while (end > p && is_ows(end[-1]))
        --end;
    /* range-unit "=" (units are case-insensitive, §14.1) */
    if (end - p < 6 || strncasecmp(p, "bytes=", 6) != 0)
        return 0;
    p += 6;
    while (p < end && is_ows(*p))
        ++p;
    *spec = (fm_edge_range_spec_t){0};
    uint64_t first = 0, last = 0;
    const char *first_digits = NULL, *last_digits = NULL;
    size_t first_len = 0, last_len = 0;
    int has_first = read_number(&p, end, &first, &first_digits, &first_len);
    if (p == end || *p++ != '-')
        return 0;
    int has_last = read_number(&p, end, &last, &last_digits, &last_len);
    if (p != end || (!has_first && !has_last)) /* a list (','), other bytes, or a lone "-" */
        return 0;
    if (!has_first) { /* suffix-range: the last `last` bytes */
        spec->suffix = 1;
        spec->length = last;
        return 1;
    }
    if (has_last && decimal_less(last_digits, last_len, first_digits, first_len))
        return 0; /* last-pos < first-pos: invalid, ignored */
    spec->first = first;
    spec->last = has_last ? last : UINT64_MAX;
    return 1;
}

fm_edge_range_t fm_edge_range_resolve(const fm_edge_range_spec_t *spec, uint64_t size, uint64_t *first, uint64_t *last)
{
    if (spec->suffix) {
        if (spec->length == 0)
            return FM_EDGE_RANGE_UNSATISFIABLE; /* "-0": no bytes can be selected */
        if (size == 0)
            return FM_EDGE_RANGE_NONE; /* satisfiable, but a 206 cannot name zero bytes: the (empty) whole */
        *first = spec->length >= size ? 0 : size - spec->length;
        *last = size - 1;
        return FM_EDGE_RANGE_ONE;
    }
    if (spec->first >= size)
        return FM_EDGE_RANGE_UNSATISFIABLE;
    *first = spec->first;
    *last = spec->last >= size ? size - 1 : spec->last;
    return FM_EDGE_RANGE_ONE;
}

fm_edge_range_t fm_edge_range_parse(const char *value, size_t len, uint64_t size, uint64_t *first, uint64_t *last)
{
    fm_edge_range_spec_t spec;
    if (!fm_edge_range_spec(value, len, &spec))
        return FM_EDGE_RANGE_NONE;
    return fm_edge_range_resolve(&spec, size, first, last);
}
