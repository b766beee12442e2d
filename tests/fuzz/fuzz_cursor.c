/*
 * Fuzz target for common/cursor.c: fm_cursor_open on any text (the client's ?cursor=), in a malloc'd buffer of its
 * exact length (no NUL), so a read past it is an ASan report. Invariants:
 *  - an accepted text is exactly what fm_cursor_sign makes of its payload (one spelling per cursor: strict
 *    base64url, no second accepted form);
 *  - a text accepted for one scope is refused for another;
 *  - the payload of every accepted text fits FM_CURSOR_PAYLOAD_MAX.
 * The first input byte picks the scope, so the fuzzer may reach accepted texts by copying signed seeds.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cursor.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_cursor: invariant failed at line %d: %s\n", __LINE__, #cond);                        \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static const char secret[] = "fuzz-cursor-secret-0123456789abcdef";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *scope = (data[0] & 1) ? "delta:a" : "trash:a";
    const char *other = (data[0] & 1) ? "trash:a" : "delta:a";
    size_t len = size - 1;
    char *text = malloc(len ? len : 1);
    if (text == NULL)
        return 0;
    memcpy(text, data + 1, len);
    uint8_t payload[FM_CURSOR_PAYLOAD_MAX];
    size_t payload_len = 0;
    if (fm_cursor_open(secret, sizeof(secret) - 1, scope, text, len, payload, sizeof(payload), &payload_len) == 0) {
        CHECK(payload_len <= FM_CURSOR_PAYLOAD_MAX);
        char again[FM_CURSOR_TEXT_MAX];
        CHECK(fm_cursor_sign(secret, sizeof(secret) - 1, scope, payload, payload_len, again, sizeof(again)) == 0);
        CHECK(strlen(again) == len && memcmp(again, text, len) == 0);
        uint8_t p2[FM_CURSOR_PAYLOAD_MAX];
        size_t l2;
        CHECK(fm_cursor_open(secret, sizeof(secret) - 1, other, text, len, p2, sizeof(p2), &l2) != 0);
    }
    free(text);
    return 0;
}
