/*
 * Fuzz target for fm_http1_framing_check (common/http.c): the second reading of an HTTP/1 request head that
 * refuses ambiguous message framing (duplicate Content-Length, duplicate Transfer-Encoding, or both).
 *
 * The input is the bytes from the start of the connection's buffer, malloc'd at their exact size (no NUL).
 * Invariants:
 *  - the verdict equals an independent reading: the head split into lines first (up to the first empty line,
 *    CRLF or LF), each line's name lower-cased into a copy and compared by length and bytes, counts after;
 *  - appending bytes after a complete head (a body, a pipelined request) never changes a verdict other than
 *    UNREADABLE.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_http1_framing: invariant failed at line %d: %s\n", __LINE__, #cond);                 \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static fm_http1_framing_t ref_check(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len && (s[i] == '\r' || s[i] == '\n'))
        i++;
    int line_no = 0, lengths = 0, encodings = 0, ended = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && s[i] != '\n')
            i++;
        if (i == len)
            break; /* a line without its LF: the head is incomplete */
        size_t end = i++;
        if (end > start && s[end - 1] == '\r')
            end--;
        if (line_no++ == 0)
            continue; /* the request line */
        if (end == start) {
            ended = 1;
            break;
        }
        if (s[start] == ' ' || s[start] == '\t')
            continue;
        char name[32];
        size_t n = 0;
        for (size_t k = start; k < end && s[k] != ':'; k++) {
            if (n + 1 >= sizeof(name)) {
                n = 0; /* longer than any name we look for */
                break;
            }
            name[n++] = (char)tolower(s[k]);
        }
        name[n] = '\0';
        if (memchr(s + start, ':', end - start) == NULL)
            continue;
        /* by length and bytes: a NUL inside a name must not end it early */
        lengths += n == 14 && memcmp(name, "content-length", 14) == 0;
        encodings += n == 17 && memcmp(name, "transfer-encoding", 17) == 0;
    }
    if (!ended)
        return FM_HTTP1_FRAMING_UNREADABLE;
    if (lengths && encodings)
        return FM_HTTP1_FRAMING_LENGTH_AND_ENCODING;
    if (lengths > 1)
        return FM_HTTP1_FRAMING_DUPLICATE_LENGTH;
    if (encodings > 1)
        return FM_HTTP1_FRAMING_DUPLICATE_ENCODING;
    return FM_HTTP1_FRAMING_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *head = malloc(size > 0 ? size : 1);
    memcpy(head, data, size);
    fm_http1_framing_t got = fm_http1_framing_check(head, size);
    CHECK(got == ref_check(data, size));
    if (got != FM_HTTP1_FRAMING_UNREADABLE) {
        static const char more[] = "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        char *longer = malloc(size + sizeof(more) - 1);
        memcpy(longer, data, size);
        memcpy(longer + size, more, sizeof(more) - 1);
        CHECK(fm_http1_framing_check(longer, size + sizeof(more) - 1) == got);
        free(longer);
    }
    free(head);
    return 0;
}
