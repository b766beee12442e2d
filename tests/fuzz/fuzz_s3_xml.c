/*
 * Fuzz target for fm_s3_xml_text (common/s3_xml.c), which reads <Code>, <Message>, <RequestId> and <UploadId> out of
 * whatever body the S3 endpoint (or anything between us and it) sends back.
 *
 * Input: byte 0 picks the tag (its low 3 bits) and byte 1 the size of `out` (0..255; the S3 client passes 64, 256,
 * 128 and 1024); the rest is the body, passed with its exact length and no NUL, so a read past it is an ASan
 * report. `out` is malloc'd at its exact size.
 *
 * Invariants: `out` is NUL-terminated inside out_size on success and "" on failure (out_size 0: untouched);
 * a missing element is a failure; the decoded text is never longer than the element's raw text; text without
 * '&' comes out verbatim whenever it fits; and a decoded text of n bytes fits in n + 1 bytes but not in n.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref_xml.h"
#include "s3.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_s3_xml: invariant failed at line %d: %s\n", __LINE__, #cond);                        \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static const char *const tags[] = {"Code", "Message", "RequestId", "UploadId", "Key", "ETag", "HostId", "Error"};

/* Calls fm_s3_xml_text with an `out` of exactly out_size bytes; copies a successful result into `result`. */
static int extract(const char *xml, size_t len, const char *tag, size_t out_size, char *result, size_t result_size)
{
    char *out = malloc(out_size > 0 ? out_size : 1);
    out[0] = 'x';
    int rc = fm_s3_xml_text(xml, len, tag, out, out_size);
    CHECK(rc == 0 || rc == -1);
    if (out_size == 0) {
        CHECK(rc == -1 && out[0] == 'x');
    } else if (rc == 0) {
        size_t out_len = strnlen(out, out_size);
        CHECK(out_len < out_size);
        CHECK(out_len < result_size);
        memcpy(result, out, out_len + 1);
    } else {
        CHECK(out[0] == '\0');
    }
    free(out);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const char *tag = tags[data[0] & 7];
    size_t out_size = data[1];
    const char *xml = (const char *)data + 2;
    size_t len = size - 2;

    char result[256];
    int rc = extract(xml, len, tag, out_size, result, sizeof result);

    const char *text = NULL;
    size_t text_len = 0;
    int present = ref_element(xml, len, tag, &text, &text_len, NULL);
    if (!present) {
        CHECK(rc == -1);
        return 0;
    }
    int has_amp = memchr(text, '&', text_len) != NULL, has_nul = memchr(text, '\0', text_len) != NULL;
    if (rc == 0) {
        CHECK(strlen(result) <= text_len);
        if (!has_amp)
            CHECK(memcmp(result, text, strlen(result)) == 0 && (has_nul || strlen(result) == text_len));
    } else if (!has_amp) {
        CHECK(text_len + 1 > out_size); /* plain text is refused only when it does not fit */
    }

    /* Exact fit: n decoded bytes need n + 1 and are refused n. (A NUL inside the text hides the real length.) */
    if (rc == 0 && !has_nul) {
        size_t n = strlen(result);
        char again[256];
        CHECK(extract(xml, len, tag, n + 1, again, sizeof again) == 0 && strcmp(again, result) == 0);
        CHECK(extract(xml, len, tag, n, again, sizeof again) == -1);
    }
    return 0;
}
