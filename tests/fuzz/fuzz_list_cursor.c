/*
 * Fuzz target for common/listcursor.c: the signed cursor of GET /v1/files (its fields over common/cursor.c), read from
 * the query string of any caller.
 *
 * Byte 0 picks the mode: even = the rest is cursor text, decoded under the fixed test secret, owner and folder; odd =
 * the rest is a cursor's fields ("owner\nfolder\nsort\norder\ntype\nphase\nid\nkey"), encoded, then decoded back.
 * Invariants:
 *  - decode never reads past its length (the text is malloc'd at its exact size) and accepts nothing it did not make:
 *    a text that decodes re-encodes to the very same text (one cursor, one text), under another secret, owner or
 *    folder it fails, and any one changed byte fails;
 *  - encode(fields) succeeds exactly when every field is within its bound and free of '\n' (the owner and folder also
 *    of ':', the id exactly 36 bytes, the phase 'd' or 'f'), and then decode gives the same fields back.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "listcursor.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_list_cursor: invariant failed at line %d: %s\n", __LINE__, #cond);                   \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static const char secret[] = "fuzz-list-cursor-secret-32-bytes";
static const char other[] = "another-secret-of-thirty-2-bytes";
#define SECRET secret, sizeof(secret) - 1
#define OWNER "3e662ee3-8604-43eb-9805-af7f1fb154a8"
#define FOLDER "00000000-0000-0000-0000-000000000000"

static int same(const fm_list_cursor_t *a, const fm_list_cursor_t *b)
{
    return strcmp(a->owner, b->owner) == 0 && strcmp(a->folder, b->folder) == 0 && strcmp(a->sort, b->sort) == 0 &&
           strcmp(a->order, b->order) == 0 && strcmp(a->type, b->type) == 0 && a->phase == b->phase &&
           strcmp(a->id, b->id) == 0 && strcmp(a->key, b->key) == 0;
}

static void decode_text(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);
    if (text == NULL)
        abort();
    memcpy(text, data, size);
    fm_list_cursor_t c;
    if (fm_list_cursor_decode(SECRET, OWNER, FOLDER, text, size, &c) == 0) {
        CHECK(strcmp(c.owner, OWNER) == 0 && strcmp(c.folder, FOLDER) == 0);
        char again[FM_LIST_CURSOR_MAX + 1];
        CHECK(fm_list_cursor_encode(SECRET, &c, again, sizeof(again)) == 0);
        CHECK(strlen(again) == size && memcmp(again, text, size) == 0);
        fm_list_cursor_t d;
        CHECK(fm_list_cursor_decode(other, sizeof(other) - 1, OWNER, FOLDER, text, size, &d) != 0);
        CHECK(fm_list_cursor_decode(SECRET, FOLDER, OWNER, text, size, &d) != 0);
        for (size_t i = 0; i < size; i += 1 + size / 16) {
            text[i] ^= 0x01;
            CHECK(fm_list_cursor_decode(SECRET, OWNER, FOLDER, text, size, &d) != 0);
            text[i] ^= 0x01;
        }
    }
    free(text);
}

/* The reference: may these fields be encoded? */
static int fields_ok(char *const *f, const size_t *len)
{
    static const size_t max[] = {36, 36, 15, 7, 7, 1, 36, FM_LIST_CURSOR_KEY_MAX};
    for (int i = 0; i < 8; ++i)
        if (len[i] > max[i] || memchr(f[i], '\0', len[i]) != NULL || (i < 7 && len[i] == 0) ||
            (i < 2 && memchr(f[i], ':', len[i]) != NULL))
            return 0;
    return len[6] == 36 && (f[5][0] == 'd' || f[5][0] == 'f');
}

static void encode_fields(const uint8_t *data, size_t size)
{
    char *f[8];
    size_t len[8];
    const uint8_t *p = data, *end = data + size;
    for (int i = 0; i < 8; ++i) {
        const uint8_t *nl = i < 7 ? memchr(p, '\n', (size_t)(end - p)) : NULL;
        if (i < 7 && nl == NULL) {
            while (i-- > 0)
                free(f[i]);
            return;
        }
        len[i] = (size_t)((i < 7 ? nl : end) - p);
        if ((f[i] = calloc(1, len[i] + 1)) == NULL)
            abort();
        memcpy(f[i], p, len[i]);
        p = i < 7 ? nl + 1 : end;
    }
    fm_list_cursor_t c = {0};
    int fits = fields_ok(f, len);
    if (fits) {
        memcpy(c.owner, f[0], len[0] + 1);
        memcpy(c.folder, f[1], len[1] + 1);
        memcpy(c.sort, f[2], len[2] + 1);
        memcpy(c.order, f[3], len[3] + 1);
        memcpy(c.type, f[4], len[4] + 1);
        c.phase = f[5][0];
        memcpy(c.id, f[6], len[6] + 1);
        memcpy(c.key, f[7], len[7] + 1);
        char text[FM_LIST_CURSOR_MAX + 1];
        CHECK(fm_list_cursor_encode(SECRET, &c, text, sizeof(text)) == 0);
        fm_list_cursor_t d;
        CHECK(fm_list_cursor_decode(SECRET, c.owner, c.folder, text, strlen(text), &d) == 0 && same(&c, &d));
        CHECK(fm_list_cursor_encode(SECRET, &c, text, strlen(text)) != 0); /* one byte short of the NUL */
    }
    for (int i = 0; i < 8; ++i)
        free(f[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] % 2 == 0)
        decode_text(data + 1, size - 1);
    else
        encode_fields(data + 1, size - 1);
    return 0;
}
