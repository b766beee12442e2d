/*
 * Fuzz target for common/mediatype.c: fm_media_type_parse, fm_media_type_essence (RFC 9110 §8.3.1, see mediatype.h).
 *
 * The input is the value, in a malloc'd buffer of its exact length (no NUL), so a read past it is an ASan report.
 * Invariants:
 *  - the verdict (valid or not) equals an independent reading: split on ';' outside quoted strings first, then each
 *    piece checked on its own (the library reads left to right in one pass); the up-front reasons (empty, too long,
 *    a refused byte) are the same; a valid value has the reference's lower-cased type/subtype and parameter count;
 *  - a refusal leaves an empty essence and has a message; every reason is one of the enum's;
 *  - the essence is a fixed point (valid, itself, no parameters); fm_media_type_essence agrees on a C string;
 *  - one more parameter "; p=v" keeps a valid value valid (while the bounds allow), the same essence, one more count.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mediatype.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_media_type: invariant failed at line %d: %s\n", __LINE__, #cond);                    \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static const char tchars[] = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

static int all_tchars(const uint8_t *s, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (memchr(tchars, s[i], sizeof(tchars) - 1) == NULL)
            return 0;
    return 1;
}

/* DQUOTE *( any byte but '"' and '\' / '\' any byte ) DQUOTE, exactly s[0..len). */
static int quoted_string(const uint8_t *s, size_t len)
{
    if (len < 2 || s[0] != '"' || s[len - 1] != '"')
        return 0;
    for (size_t i = 1; i < len - 1; i++) {
        if (s[i] == '\\') {
            if (++i >= len - 1)
                return 0; /* the escape took the closing quote */
        } else if (s[i] == '"') {
            return 0;
        }
    }
    return 1;
}

/* name "=" value, exactly s[0..len). */
static int ref_parameter(const uint8_t *s, size_t len)
{
    const uint8_t *eq = memchr(s, '=', len);
    if (eq == NULL)
        return 0;
    size_t name = (size_t)(eq - s), value = len - name - 1;
    return all_tchars(s, name) && (all_tchars(eq + 1, value) || quoted_string(eq + 1, value));
}

/* 1 valid (essence, count filled), 0 not; *reason set for the up-front reasons. */
static int ref_parse(const uint8_t *s, size_t len, char *essence, int *count, fm_media_type_error_t *reason)
{
    *reason = FM_MEDIA_TYPE_OK;
    if (len == 0)
        return *reason = FM_MEDIA_TYPE_EMPTY, 0;
    if (len > 127)
        return *reason = FM_MEDIA_TYPE_TOO_LONG, 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x20 || s[i] >= 0x7f)
            return *reason = FM_MEDIA_TYPE_CONTROL, 0;

    size_t starts[130], ends[130], pieces = 0, start = 0;
    int quoted = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && quoted && s[i] == '\\') {
            i++;
            continue;
        }
        if (i < len && s[i] == '"')
            quoted = !quoted;
        if (i == len || (!quoted && s[i] == ';')) {
            starts[pieces] = start, ends[pieces] = i, pieces++;
            start = i + 1;
        }
    }
    if (quoted)
        return 0;
    for (size_t p = 0; p < pieces; p++) {
        size_t a = starts[p], b = ends[p];
        if (p > 0)
            while (a < b && s[a] == ' ') /* OWS after ';' */
                a++;
        if (p + 1 < pieces)
            while (b > a && s[b - 1] == ' ') /* OWS before the next ';' (never after the last piece) */
                b--;
        if (p == 0) {
            const uint8_t *slash = memchr(s + a, '/', b - a);
            if (slash == NULL || !all_tchars(s + a, (size_t)(slash - s - a)) ||
                !all_tchars(slash + 1, (size_t)(s + b - slash - 1)))
                return 0;
            for (size_t k = a; k < b; k++)
                essence[k - a] = (char)(s[k] >= 'A' && s[k] <= 'Z' ? s[k] - 'A' + 'a' : s[k]);
            essence[b - a] = '\0';
        } else if (!ref_parameter(s + a, b - a)) {
            return 0;
        }
    }
    *count = (int)pieces - 1;
    return *count <= 8;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *value = malloc(size > 0 ? size : 1);
    memcpy(value, data, size);

    fm_media_type_t got;
    fm_media_type_error_t error = fm_media_type_parse(value, size, &got);
    CHECK(error >= FM_MEDIA_TYPE_OK && error <= FM_MEDIA_TYPE_TOO_MANY_PARAMS);
    CHECK(fm_media_type_error_message(error) != NULL && fm_media_type_error_message(error)[0] != '\0');
    CHECK(fm_media_type_parse(value, size, NULL) == error);

    char essence[256];
    int count = -1;
    fm_media_type_error_t reason;
    int valid = ref_parse(data, size, essence, &count, &reason);
    CHECK(valid == (error == FM_MEDIA_TYPE_OK));
    if (reason != FM_MEDIA_TYPE_OK)
        CHECK(error == reason);

    char text[FM_MEDIA_TYPE_MAX_BYTES + 32], out[FM_MEDIA_TYPE_MAX_BYTES + 1];
    if (!valid) {
        CHECK(got.essence[0] == '\0' && got.param_count == 0);
    } else {
        CHECK(strcmp(got.essence, essence) == 0 && got.param_count == count);
        CHECK(got.essence[got.type_len] == '/' && strchr(got.essence + got.type_len + 1, '/') == NULL);
        fm_media_type_t again;
        CHECK(fm_media_type_parse(got.essence, strlen(got.essence), &again) == FM_MEDIA_TYPE_OK);
        CHECK(strcmp(again.essence, got.essence) == 0 && again.param_count == 0 && again.type_len == got.type_len);
        memcpy(text, data, size);
        text[size] = '\0';
        CHECK(fm_media_type_essence(text, out, sizeof(out)) == 0 && strcmp(out, got.essence) == 0);
        if (size + 5 <= FM_MEDIA_TYPE_MAX_BYTES && count < FM_MEDIA_TYPE_MAX_PARAMS) {
            memcpy(text + size, "; p=v", 6);
            CHECK(fm_media_type_parse(text, size + 5, &again) == FM_MEDIA_TYPE_OK);
            CHECK(strcmp(again.essence, got.essence) == 0 && again.param_count == count + 1);
        }
    }
    free(value);
    return 0;
}
