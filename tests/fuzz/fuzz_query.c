/*
 * Fuzz target for common/qs.c: fm_pct_decode, fm_pct_encode, fm_qs_next, fm_qs_raw and fm_qs_get (the query readers
 * of the control plane and fm-edge, and the decoder of S3 event keys and listings).
 *
 * Input: byte 0 = flags (bit 0: FM_PCT_FORM, bit 1: FM_QS_SKIP_EMPTY, bit 2: FM_QS_BARE), byte 1 = the output
 * buffer's size (0..255), then the raw query, in a malloc'd buffer of its exact length (no NUL), so a read past it
 * is an ASan report. Invariants:
 *  - fm_pct_decode of the whole input equals an independent reading (sscanf of each escape, the problems ranked by
 *    position), NUL-terminated inside out_size, *out_len = strlen on success;
 *  - encoding the decoded bytes and decoding them again gives them back, under both flags, at most 3 bytes a byte;
 *  - fm_qs_next's items tile the query: name, '=', value and '&' re-joined give it back;
 *  - for the parameter names "a", "key", "metadata[size]" and the first item's decoded name: fm_qs_raw finds the
 *    first qualifying item of an independent split, with the same count, and fm_qs_get's answer equals decoding the
 *    value of the first item whose decoded name matches.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qs.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_query: invariant failed at line %d: %s\n", __LINE__, #cond);                         \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* The reference decoder: each escape read with sscanf("%2x") after checking both characters are hex. */
static int ref_decode(const char *in, size_t len, char *out, size_t out_size, size_t *out_len, int form)
{
    size_t n = 0;
    if (out_size == 0)
        return FM_PCT_TOO_LONG;
    for (size_t i = 0; i < len; ++i) {
        unsigned byte = (unsigned char)in[i];
        if (in[i] == '%') {
            char two[3] = {0};
            if (len - i < 3 || !strchr("0123456789abcdefABCDEF", in[i + 1]) || in[i + 1] == '\0' ||
                !strchr("0123456789abcdefABCDEF", in[i + 2]) || in[i + 2] == '\0')
                return FM_PCT_BAD_ESCAPE;
            memcpy(two, in + i + 1, 2);
            CHECK(sscanf(two, "%2x", &byte) == 1);
            i += 2;
        } else if (form && in[i] == '+') {
            byte = ' ';
        }
        if (byte == 0)
            return FM_PCT_NUL;
        if (n == out_size - 1)
            return FM_PCT_TOO_LONG;
        out[n++] = (char)byte;
    }
    out[n] = '\0';
    *out_len = n;
    return FM_PCT_OK;
}

typedef struct {
    const char *name, *value; /* value NULL: no '=' */
    size_t name_len, value_len;
} ref_item_t;

/* The reference split: by index, every '&' ends an item; a trailing '&' starts none. */
static size_t ref_split(const char *q, size_t len, ref_item_t *items, size_t max)
{
    size_t count = 0, start = 0;
    while (start < len && count < max) {
        size_t end = start;
        while (end < len && q[end] != '&')
            ++end;
        size_t eq = start;
        while (eq < end && q[eq] != '=')
            ++eq;
        items[count] = (ref_item_t){q + start, eq < end ? q + eq + 1 : NULL, eq - start, eq < end ? end - eq - 1 : 0};
        ++count;
        start = end + 1;
    }
    return count;
}

static void check_name(const char *q, size_t len, const ref_item_t *items, size_t count, const char *name, int flags,
                       size_t out_size)
{
    int form = flags & FM_PCT_FORM;
    /* fm_qs_raw */
    int ref_count = 0, got_count = -1;
    const ref_item_t *first = NULL;
    for (size_t i = 0; i < count; ++i) {
        const ref_item_t *it = &items[i];
        if (it->name_len != strlen(name) || memcmp(it->name, name, it->name_len) != 0)
            continue;
        if (it->value == NULL && !(flags & FM_QS_BARE))
            continue;
        if (it->value_len == 0 && (flags & FM_QS_SKIP_EMPTY))
            continue;
        ++ref_count;
        if (first == NULL)
            first = it;
    }
    h2o_iovec_t raw = fm_qs_raw(h2o_iovec_init(q, len), name, flags & (FM_QS_SKIP_EMPTY | FM_QS_BARE), &got_count);
    CHECK(got_count == ref_count);
    CHECK((raw.base == NULL) == (first == NULL));
    if (first != NULL) {
        CHECK(raw.len == first->value_len);
        if (first->value != NULL)
            CHECK(raw.base == first->value);
    }
    CHECK(fm_qs_raw(h2o_iovec_init(q, len), name, flags & (FM_QS_SKIP_EMPTY | FM_QS_BARE), NULL).base == raw.base);

    /* fm_qs_get */
    char *out = malloc(out_size > 0 ? out_size : 1), *ref = malloc(out_size > 0 ? out_size : 1);
    int expected = FM_QS_ABSENT;
    size_t ref_len = 0, got_len = 12345;
    for (size_t i = 0; i < count; ++i) {
        char decoded[64];
        size_t decoded_len;
        if (items[i].value == NULL ||
            ref_decode(items[i].name, items[i].name_len, decoded, sizeof(decoded), &decoded_len, form) != FM_PCT_OK ||
            strcmp(decoded, name) != 0)
            continue;
        expected = ref_decode(items[i].value, items[i].value_len, ref, out_size, &ref_len, form);
        if (expected == FM_PCT_OK && ref_len == 0)
            expected = FM_QS_EMPTY;
        break;
    }
    int got = fm_qs_get(h2o_iovec_init(q, len), name, form, out, out_size, &got_len);
    CHECK(got == expected);
    if (got == FM_PCT_OK || got == FM_QS_EMPTY) {
        CHECK(got_len == ref_len && memcmp(out, ref, ref_len + 1) == 0);
    }
    if (out_size > 0)
        CHECK(memchr(out, '\0', out_size) != NULL);
    free(out);
    free(ref);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int flags = data[0] & 7;
    int form = flags & FM_PCT_FORM;
    size_t out_size = data[1], len = size - 2;
    char *q = malloc(len > 0 ? len : 1);
    memcpy(q, data + 2, len);

    /* the decoder against the reference, in a buffer of exactly out_size bytes */
    char *out = malloc(out_size > 0 ? out_size : 1), *ref = malloc(out_size > 0 ? out_size : 1);
    size_t got_len = 0, ref_len = 0;
    int got = fm_pct_decode(q, len, out, out_size, &got_len, form);
    int expected = ref_decode(q, len, ref, out_size, &ref_len, form);
    CHECK(got == expected);
    if (out_size > 0)
        CHECK(memchr(out, '\0', out_size) != NULL);
    if (got == FM_PCT_OK)
        CHECK(got_len == ref_len && strlen(out) == got_len && memcmp(out, ref, got_len + 1) == 0);
    free(out);
    free(ref);

    /* encode → decode gives the bytes back (a decoded text has no NUL, so it is one) */
    char *bytes = malloc(len + 1);
    size_t bytes_len = 0;
    if (fm_pct_decode(q, len, bytes, len + 1, &bytes_len, form) == FM_PCT_OK) {
        char *encoded = malloc(3 * bytes_len + 1), *back = malloc(bytes_len + 1);
        for (int keep = 0; keep <= FM_PCT_KEEP_SLASH; keep += FM_PCT_KEEP_SLASH) {
            char *end = fm_pct_encode(encoded, bytes, bytes_len, keep);
            CHECK(end >= encoded && (size_t)(end - encoded) <= 3 * bytes_len);
            for (char *p = encoded; p < end; ++p)
                CHECK(*p == '%' || strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~", *p) ||
                      (keep && *p == '/'));
            size_t back_len = 0;
            for (int f = 0; f <= FM_PCT_FORM; f += FM_PCT_FORM) {
                CHECK(fm_pct_decode(encoded, (size_t)(end - encoded), back, bytes_len + 1, &back_len, f) == FM_PCT_OK);
                CHECK(back_len == bytes_len && memcmp(back, bytes, bytes_len) == 0);
            }
        }
        free(encoded);
        free(back);
    }
    free(bytes);

    /* the items tile the query, as an independent split reads them */
    ref_item_t items[512];
    size_t count = ref_split(q, len, items, 512);
    h2o_iovec_t rest = h2o_iovec_init(q, len), name, value;
    size_t n = 0;
    while (fm_qs_next(&rest, &name, &value)) {
        if (n < 512) {
            CHECK(name.base == items[n].name && name.len == items[n].name_len);
            CHECK(value.base == items[n].value && value.len == items[n].value_len);
        }
        ++n;
    }
    if (count < 512)
        CHECK(n == count);

    if (count < 512) {
        static const char *const names[] = {"a", "key", "metadata[size]", ""};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i)
            check_name(q, len, items, count, names[i], flags, out_size);
        char first[64];
        size_t first_len;
        if (count > 0 && ref_decode(items[0].name, items[0].name_len, first, sizeof(first), &first_len, form) == 0)
            check_name(q, len, items, count, first, flags, out_size);
    }
    free(q);
    return 0;
}
