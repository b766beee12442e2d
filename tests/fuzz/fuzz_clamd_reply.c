/*
 * Fuzz target for fm_clamd_parse_reply (lambda-workers/scan.c), which reads whatever comes back on the clamd
 * socket after an INSTREAM: the answer decides whether a file is let through, quarantined or retried.
 *
 * Input: byte 0 is the size of `signature` (0..255; scan.c passes 200); the rest is the reply, passed with its
 * exact length and no NUL added, so a read past it is an ASan report. `signature` is malloc'd at its exact size.
 *
 * Invariants: the result is one of the four; it equals an independent reading of the reply (text before the first
 * NUL, trailing newlines dropped: "stream: OK", "stream: <name> FOUND" with a non-empty name, the size-limit
 * error, else an error); `signature` is untouched for size 0, else NUL-terminated inside it, printable ASCII,
 * "" unless FOUND, and for FOUND the name's first bytes (non-printable ones as '?'), cut only to fit. Only
 * "stream: OK" exactly is ever clean: a reply with anything after or around it is not.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scan.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_clamd_reply: invariant failed at line %d: %s\n", __LINE__, #cond);                   \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* The expected result, found without the library's help; *name / *name_len: the signature for FOUND. */
static int reference(const char *reply, size_t len, const char **name, size_t *name_len)
{
    size_t n = strnlen(reply, len);
    while (n > 0 && reply[n - 1] == '\n')
        n--;
    static const char ok[] = "stream: OK", limit[] = "INSTREAM size limit exceeded. ERROR";
    if (n == strlen(ok) && strncmp(reply, ok, n) == 0)
        return FM_CLAMD_CLEAN;
    if (n == strlen(limit) && strncmp(reply, limit, n) == 0)
        return FM_CLAMD_SIZE_LIMIT;
    if (n > 14 && strncmp(reply, "stream: ", 8) == 0 && strncmp(reply + n - 6, " FOUND", 6) == 0) {
        *name = reply + 8;
        *name_len = n - 14;
        return FM_CLAMD_FOUND;
    }
    return FM_CLAMD_ERROR;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t sig_size = data[0];
    size_t len = size - 1;
    char *reply = malloc(len > 0 ? len : 1);
    memcpy(reply, data + 1, len);
    char *signature = malloc(sig_size > 0 ? sig_size : 1);
    memset(signature, 'x', sig_size > 0 ? sig_size : 1);

    int rc = fm_clamd_parse_reply(reply, len, signature, sig_size);
    CHECK(rc == FM_CLAMD_CLEAN || rc == FM_CLAMD_FOUND || rc == FM_CLAMD_SIZE_LIMIT || rc == FM_CLAMD_ERROR);
    const char *name = NULL;
    size_t name_len = 0;
    CHECK(rc == reference(reply, len, &name, &name_len));

    if (sig_size == 0) {
        CHECK(signature[0] == 'x');
    } else {
        size_t sig_len = strnlen(signature, sig_size);
        CHECK(sig_len < sig_size);
        for (size_t i = 0; i < sig_len; i++)
            CHECK(signature[i] >= 0x20 && signature[i] <= 0x7e);
        if (rc != FM_CLAMD_FOUND) {
            CHECK(sig_len == 0);
        } else {
            CHECK(sig_len == (name_len < sig_size - 1 ? name_len : sig_size - 1));
            for (size_t i = 0; i < sig_len; i++) {
                char c = name[i];
                CHECK(signature[i] == (c >= 0x20 && c <= 0x7e ? c : '?'));
            }
        }
    }
    /* Clean means exactly clamd's clean answer. */
    if (rc == FM_CLAMD_CLEAN) {
        CHECK(len >= 10 && memcmp(reply, "stream: OK", 10) == 0);
        for (size_t i = 10; i < len && reply[i] != '\0'; i++)
            CHECK(reply[i] == '\n');
    }

    free(signature);
    free(reply);
    return 0;
}
