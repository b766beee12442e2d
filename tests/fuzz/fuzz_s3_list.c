/*
 * Fuzz target for fm_s3_list_objects_parse (common/s3_xml.c): the ListObjectsV2 page the reconciler's listing
 * reads (control-plane/incoming.c, step 2 of the reconciler), whose keys it may delete.
 *
 * Input: byte 0 % 9 = room for objects (0..8; `objects` is malloc'd at exactly that size), byte 1 bit 0 = prefix
 * "incoming/" (else ""), bit 1 = start_after "incoming/m" (else ""); the rest is the body, passed with its exact
 * length and no NUL, so a read past it is an ASan report.
 *
 * Invariants: rc is 0 or -1; a failure is "InvalidResponse" with count and truncated 0; on success count <= room,
 * every key is NUL-terminated inside FM_S3_KEY_MAX, non-empty, under the prefix, after start_after and after the
 * key before it, sizes and dates are >= 0, a truncated page has a key, and count is the number of <Contents>
 * elements; a key whose raw text has no '&' (nor, URL-encoded, '%' or '+') is that text; and the objects,
 * written back as a canonical page (every byte outside [A-Za-z0-9-._~/] %XX-encoded, dates as ISO 8601), parse to
 * the same objects.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ref_xml.h"
#include "s3.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_s3_list: invariant failed at line %d: %s\n", __LINE__, #cond);                       \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static void append(char **buf, size_t *len, size_t *cap, const char *text, size_t n)
{
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        *buf = realloc(*buf, *cap);
        CHECK(*buf != NULL);
    }
    memcpy(*buf + *len, text, n);
    *len += n;
    (*buf)[*len] = '\0';
}

/* The page as S3 would write it with encoding-type=url. */
static char *render(const fm_s3_object_t *objects, size_t count, int truncated, size_t *out_len)
{
    static const char hex[] = "0123456789ABCDEF";
    char *buf = NULL, piece[160];
    size_t len = 0, cap = 0;
    const char *head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name>"
                       "<EncodingType>url</EncodingType>";
    append(&buf, &len, &cap, head, strlen(head));
    int n = snprintf(piece, sizeof piece, "<IsTruncated>%s</IsTruncated>", truncated ? "true" : "false");
    append(&buf, &len, &cap, piece, (size_t)n);
    for (size_t i = 0; i < count; i++) {
        append(&buf, &len, &cap, "<Contents><Key>", 15);
        for (const unsigned char *p = (const unsigned char *)objects[i].key; *p != '\0'; p++) {
            if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                strchr("-._~/", *p) != NULL) {
                append(&buf, &len, &cap, (const char *)p, 1);
            } else {
                char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
                append(&buf, &len, &cap, esc, 3);
            }
        }
        time_t t = (time_t)objects[i].last_modified;
        struct tm tm;
        CHECK(gmtime_r(&t, &tm) != NULL);
        n = snprintf(piece, sizeof piece,
                     "</Key><LastModified>%04d-%02d-%02dT%02d:%02d:%02d.000Z</LastModified><ETag>&quot;x&quot;</ETag>"
                     "<Size>%lld</Size></Contents>",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, objects[i].size);
        append(&buf, &len, &cap, piece, (size_t)n);
    }
    append(&buf, &len, &cap, "</ListBucketResult>", 19);
    *out_len = len;
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t room = data[0] % 9;
    const char *prefix = (data[1] & 1) ? "incoming/" : "";
    const char *start_after = (data[1] & 2) ? "incoming/m" : "";
    size_t len = size - 2;
    char *xml = malloc(len > 0 ? len : 1);
    memcpy(xml, data + 2, len);
    fm_s3_object_t *objects = malloc((room > 0 ? room : 1) * sizeof(*objects));

    size_t count = 99;
    int truncated = 99;
    fm_s3_result_t res;
    memset(&res, 0, sizeof res);
    int rc = fm_s3_list_objects_parse(xml, len, prefix, start_after, objects, room, &count, &truncated, &res);
    CHECK(rc == 0 || rc == -1);
    if (rc != 0) {
        CHECK(count == 0 && truncated == 0 && strcmp(res.code, "InvalidResponse") == 0);
        goto out;
    }
    CHECK(res.code[0] == '\0');
    CHECK(count <= room && (truncated == 0 || truncated == 1) && (!truncated || count > 0));
    const char *encoding_text;
    size_t encoding_len;
    int url = ref_element(xml, len, "EncodingType", &encoding_text, &encoding_len, NULL);
    size_t offset = 0, elements = 0;
    for (size_t i = 0; i < count; i++) {
        const fm_s3_object_t *o = &objects[i];
        size_t key_len = strnlen(o->key, FM_S3_KEY_MAX);
        CHECK(key_len > 0 && key_len < FM_S3_KEY_MAX);
        CHECK(strncmp(o->key, prefix, strlen(prefix)) == 0);
        CHECK(strcmp(o->key, i > 0 ? objects[i - 1].key : start_after) > 0);
        CHECK(o->size >= 0 && o->last_modified >= 0);
        /* the i-th <Contents>, read independently */
        const char *inner, *key_text;
        size_t inner_len, key_text_len, after;
        CHECK(ref_element(xml + offset, len - offset, "Contents", &inner, &inner_len, &after));
        offset += after;
        elements++;
        CHECK(ref_element(inner, inner_len, "Key", &key_text, &key_text_len, NULL));
        int plain =
            memchr(key_text, '&', key_text_len) == NULL &&
            (!url || (memchr(key_text, '%', key_text_len) == NULL && memchr(key_text, '+', key_text_len) == NULL));
        if (plain)
            CHECK(key_len == key_text_len && memcmp(o->key, key_text, key_len) == 0);
    }
    const char *inner;
    size_t inner_len, after;
    if (ref_element(xml + offset, len - offset, "Contents", &inner, &inner_len, &after))
        elements++;
    CHECK(elements == count);

    /* Written back canonically, the page reads the same. */
    size_t again_len;
    char *again = render(objects, count, truncated, &again_len);
    fm_s3_object_t *reread = malloc((room > 0 ? room : 1) * sizeof(*reread));
    size_t count2;
    int truncated2;
    CHECK(fm_s3_list_objects_parse(again, again_len, prefix, start_after, reread, room, &count2, &truncated2, &res) ==
          0);
    CHECK(count2 == count && truncated2 == truncated);
    for (size_t i = 0; i < count; i++)
        CHECK(strcmp(reread[i].key, objects[i].key) == 0 && reread[i].size == objects[i].size &&
              reread[i].last_modified == objects[i].last_modified);
    free(reread);
    free(again);
out:
    free(objects);
    free(xml);
    return 0;
}
