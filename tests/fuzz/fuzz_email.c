/*
 * Fuzz target for common/email.c: the normal form of an account's email address, which the login limiter's keys
 * and the database's comparison must agree on (issue 10 #8).
 *
 * Byte 0 is the room given for the output (its value + 1 bytes; 0 means exactly len + 1), the rest the address.
 * Invariants:
 *  - accepted exactly when an independent reading accepts: 3..254 bytes, each 0x21..0x7e, exactly one '@', not
 *    first or last, and the room holds it with its NUL;
 *  - on success the output is the input with A-Z lower-cased and nothing else changed, NUL-terminated; on failure
 *    it is "";
 *  - the normal form is a fixed point, and upper-casing the input's ASCII letters does not change it.
 * Every buffer is malloc'd at its exact size so that ASan sees a one-byte overrun or over-read.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "email.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_email: invariant failed at line %d: %s\n", __LINE__, #cond);                         \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static int ref_accepts(const uint8_t *email, size_t len)
{
    if (len < 3 || len > 254)
        return 0;
    size_t ats = 0;
    for (size_t i = 0; i < len; i++) {
        if (email[i] < 0x21 || email[i] > 0x7e)
            return 0;
        ats += email[i] == '@';
    }
    return ats == 1 && email[0] != '@' && email[len - 1] != '@';
}

static char ref_lower(uint8_t c)
{
    return (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t len = size - 1;
    size_t room = data[0] == 0 ? len + 1 : (size_t)data[0] + 1;
    char *email = malloc(len > 0 ? len : 1);
    memcpy(email, data + 1, len);
    char *out = malloc(room);
    int rc = fm_email_normalize(email, len, out, room);
    int accepts = ref_accepts(data + 1, len) && room >= len + 1;
    CHECK((rc == 0) == accepts);
    if (rc != 0) {
        CHECK(out[0] == '\0');
    } else {
        CHECK(out[len] == '\0');
        for (size_t i = 0; i < len; i++)
            CHECK(out[i] == ref_lower(data[1 + i]));
        /* A fixed point: the normal form of the normal form is itself. */
        char *again = malloc(len + 1);
        CHECK(fm_email_normalize(out, len, again, len + 1) == 0 && memcmp(again, out, len + 1) == 0);
        /* Case does not matter: the address in capitals has the same normal form. */
        for (size_t i = 0; i < len; i++)
            email[i] = (char)(email[i] >= 'a' && email[i] <= 'z' ? email[i] - 32 : email[i]);
        CHECK(fm_email_normalize(email, len, again, len + 1) == 0 && memcmp(again, out, len + 1) == 0);
        free(again);
    }
    free(out);
    free(email);
    return 0;
}
