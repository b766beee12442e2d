/*
 * Fuzz target for fm_edge_range_parse / fm_edge_range_spec / fm_edge_range_resolve (edge/range.c): the Range header
 * of every /f/ and /p/ request, which anyone may send.
 *
 * Input: byte 0 picks the object's size (its low 4 bits: a table of edge cases, 0 and 1 byte, sizes around 2^32 and
 * 2^64 among them; 15 = the next 8 bytes, little-endian, as the size); the rest is the header value, passed with its
 * exact length and no NUL, so a read past it is an ASan report.
 *
 * Checked against a reference reading written here, which shares no code with range.c: it splits the value with
 * memchr, keeps every number as its decimal digits (leading zeros stripped) and compares numbers as strings of
 * digits, so it has no integer to overflow. Invariants: the result equals the reference's; a selected range is
 * inside the object (first <= last < size, so last - first + 1 <= size, no wrap-around); a suffix range ends at the
 * object's last byte; the spec resolved again gives the same answer (parse = spec + resolve); and parsing is
 * deterministic and leaves the outputs alone unless one range is selected.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_range: invariant failed at line %d: %s\n", __LINE__, #cond);                         \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* ---- the reference: numbers as digit strings ---- */

typedef struct {
    char digits[64]; /* without leading zeros ("0" for zero); "huge" when longer than fits */
    int huge;        /* more than 60 significant digits: larger than any size */
} ref_number_t;

static void ref_number(const char *s, size_t len, ref_number_t *n)
{
    while (len > 1 && *s == '0')
        ++s, --len;
    n->huge = len > 60;
    if (!n->huge) {
        memcpy(n->digits, s, len);
        n->digits[len] = '\0';
    }
}

/* -1, 0, 1 as a <, =, > b. */
static int ref_compare(const ref_number_t *a, const ref_number_t *b)
{
    if (a->huge || b->huge)
        return a->huge && b->huge ? 0 : a->huge ? 1 : -1; /* only reached with equal-looking huge numbers: see below */
    size_t la = strlen(a->digits), lb = strlen(b->digits);
    if (la != lb)
        return la < lb ? -1 : 1;
    int c = strcmp(a->digits, b->digits);
    return (c > 0) - (c < 0);
}

static void ref_from_u64(uint64_t v, ref_number_t *n)
{
    snprintf(n->digits, sizeof(n->digits), "%llu", (unsigned long long)v);
    n->huge = 0;
}

/* A number known to fit in 64 bits (compared against the size first). */
static uint64_t ref_to_u64(const ref_number_t *n)
{
    CHECK(!n->huge);
    return strtoull(n->digits, NULL, 10);
}

static int ref_all_digits(const char *s, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; ++i)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

static int ref_lower_eq(const char *s, const char *word, size_t len)
{
    for (size_t i = 0; i < len; ++i) {
        char c = s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] - 'A' + 'a') : s[i];
        if (c != word[i])
            return 0;
    }
    return 1;
}

/* The reference's answer: kind, and [first, last] for one range. */
static fm_edge_range_t ref_parse(const char *value, size_t len, uint64_t size, uint64_t *first, uint64_t *last)
{
    const char *end = value + len;
    while (value < end && (*value == ' ' || *value == '\t'))
        ++value;
    while (end > value && (end[-1] == ' ' || end[-1] == '\t'))
        --end;
    const char *eq = memchr(value, '=', (size_t)(end - value));
    if (eq == NULL || eq - value != 5 || !ref_lower_eq(value, "bytes", 5))
        return FM_EDGE_RANGE_NONE;
    const char *spec = eq + 1;
    while (spec < end && (*spec == ' ' || *spec == '\t'))
        ++spec;
    const char *dash = memchr(spec, '-', (size_t)(end - spec));
    if (dash == NULL)
        return FM_EDGE_RANGE_NONE;
    size_t a_len = (size_t)(dash - spec), b_len = (size_t)(end - dash - 1);
    int has_a = a_len > 0, has_b = b_len > 0;
    if ((has_a && !ref_all_digits(spec, a_len)) || (has_b && !ref_all_digits(dash + 1, b_len)) || (!has_a && !has_b))
        return FM_EDGE_RANGE_NONE;
    ref_number_t a, b, sz;
    ref_from_u64(size, &sz);
    if (has_a)
        ref_number(spec, a_len, &a);
    if (has_b)
        ref_number(dash + 1, b_len, &b);
    if (!has_a) { /* suffix */
        if (!b.huge && strcmp(b.digits, "0") == 0)
            return FM_EDGE_RANGE_UNSATISFIABLE;
        if (size == 0)
            return FM_EDGE_RANGE_NONE;
        *first = ref_compare(&b, &sz) >= 0 ? 0 : size - ref_to_u64(&b);
        *last = size - 1;
        return FM_EDGE_RANGE_ONE;
    }
    if (has_b) {
        /* last < first: invalid. Two huge numbers: compare their digits (both stripped of leading zeros). */
        int less;
        if (a.huge && b.huge) {
            const char *as = spec, *bs = dash + 1;
            size_t al = a_len, bl = b_len;
            while (al > 1 && *as == '0')
                ++as, --al;
            while (bl > 1 && *bs == '0')
                ++bs, --bl;
            less = bl != al ? bl < al : memcmp(bs, as, al) < 0;
        } else {
            less = ref_compare(&b, &a) < 0;
        }
        if (less)
            return FM_EDGE_RANGE_NONE;
    }
    if (ref_compare(&a, &sz) >= 0)
        return FM_EDGE_RANGE_UNSATISFIABLE;
    *first = ref_to_u64(&a);
    *last = !has_b || ref_compare(&b, &sz) >= 0 ? size - 1 : ref_to_u64(&b);
    return FM_EDGE_RANGE_ONE;
}

/* ---- the target ---- */

static const uint64_t sizes[15] = {
    0,
    1,
    2,
    10,
    1023,
    1024,
    6338,
    10000,
    1ull << 20,
    4294967295ull,
    4294967296ull,
    1ull << 40,
    18446744073709551614ull,
    18446744073709551615ull,
    9223372036854775808ull,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint64_t object_size;
    size_t skip = 1;
    if ((data[0] & 15) == 15) {
        if (size < 9)
            return 0;
        object_size = 0;
        for (int i = 0; i < 8; ++i)
            object_size |= (uint64_t)data[1 + i] << (8 * i);
        skip = 9;
    } else {
        object_size = sizes[data[0] & 15];
    }
    size_t len = size - skip;
    char *value = malloc(len > 0 ? len : 1); /* exact size: a read past it is an ASan report */
    memcpy(value, data + skip, len);

    uint64_t first = 0xAAAAAAAAAAAAAAAAull, last = 0x5555555555555555ull;
    fm_edge_range_t kind = fm_edge_range_parse(value, len, object_size, &first, &last);
    CHECK(kind == FM_EDGE_RANGE_NONE || kind == FM_EDGE_RANGE_ONE || kind == FM_EDGE_RANGE_UNSATISFIABLE);

    uint64_t ref_first = 0, ref_last = 0;
    fm_edge_range_t ref_kind = ref_parse(value, len, object_size, &ref_first, &ref_last);
    if (kind != ref_kind) {
        fprintf(stderr, "fuzz_range: kind %d, reference %d (size %llu, value \"%.*s\")\n", kind, ref_kind,
                (unsigned long long)object_size, (int)len, value);
        abort();
    }
    if (kind == FM_EDGE_RANGE_ONE) {
        CHECK(first == ref_first && last == ref_last);
        CHECK(object_size > 0);
        CHECK(first <= last);      /* no empty or reversed range */
        CHECK(last < object_size); /* inside the object: last - first + 1 <= size, nothing wrapped */
        CHECK(last - first + 1 <= object_size);
    } else {
        CHECK(first == 0xAAAAAAAAAAAAAAAAull && last == 0x5555555555555555ull); /* outputs untouched */
    }

    fm_edge_range_spec_t spec;
    int has_spec = fm_edge_range_spec(value, len, &spec);
    CHECK(has_spec == 0 || has_spec == 1);
    if (!has_spec) {
        CHECK(kind == FM_EDGE_RANGE_NONE);
    } else {
        uint64_t again_first = 0, again_last = 0;
        CHECK(fm_edge_range_resolve(&spec, object_size, &again_first, &again_last) == kind);
        if (kind == FM_EDGE_RANGE_ONE) {
            CHECK(again_first == first && again_last == last);
            if (spec.suffix)
                CHECK(last == object_size - 1);
            else
                CHECK(first == spec.first && spec.first <= spec.last);
        }
    }
    free(value);
    return 0;
}
