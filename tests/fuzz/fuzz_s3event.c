/*
 * Fuzz target for fm_s3event_parse (common/s3event.c), which reads the S3 event messages anyone who knows the
 * webhook URL can POST to /v1/events/s3.
 *
 * Input: byte 0 % 8 = max_records (so "more records than room" is reached), byte 1 = err_size (0..255); the rest
 * is the message, passed with its exact length in a malloc'd buffer without a NUL, so a read past it is an ASan
 * report. `records` and `err` are malloc'd at their exact sizes too.
 *
 * Invariants: rc is -1, 0 or 1; on -1 and 1 the count is 0; on -1 `err` is a NUL-terminated sentence (when it has
 * room); on 0 every record is well-formed (NUL-terminated fields, key_len = strlen(key) in 1..1024, event_name
 * non-empty without "s3:", kind matching its family, printable short fields, size >= -1, ETag without surrounding
 * quotes), and the records agree with an independent reading of the same JSON: cJSON walked here, the key
 * decoded by a reference decoder (as is for eventSource "ceph:s3").
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "s3event.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_s3event: invariant failed at line %d: %s\n", __LINE__, #cond);                       \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* A fixed-size field is NUL-terminated inside its array and printable ASCII. */
#define CHECK_FIELD(field)                                                                                             \
    do {                                                                                                               \
        size_t n_ = strnlen((field), sizeof(field));                                                                   \
        CHECK(n_ < sizeof(field));                                                                                     \
        for (size_t i_ = 0; i_ < n_; i_++)                                                                             \
            CHECK((field)[i_] >= 0x20 && (field)[i_] <= 0x7E);                                                         \
    } while (0)

/* Reference decoder: form-urlencoding, written differently from the library's. Returns length or -1. */
static long ref_decode(const char *in, char *out, size_t room)
{
    size_t o = 0;
    for (size_t i = 0; in[i] != '\0'; i++) {
        char c = in[i];
        if (c == '%') {
            if (!isxdigit((unsigned char)in[i + 1]) || !isxdigit((unsigned char)in[i + 2]))
                return -1;
            char hex[3] = {in[i + 1], in[i + 2], '\0'};
            c = (char)strtol(hex, NULL, 16);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (c == '\0' || o >= room)
            return -1;
        out[o++] = c;
    }
    return (long)o;
}

static const char *json_string_at(const cJSON *obj, const char *a, const char *b, const char *c)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, a);
    if (b != NULL)
        item = cJSON_GetObjectItemCaseSensitive(item, b);
    if (c != NULL)
        item = cJSON_GetObjectItemCaseSensitive(item, c);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static void check_record(const fm_s3event_record_t *rec, const cJSON *item)
{
    CHECK_FIELD(rec->event_name);
    CHECK_FIELD(rec->event_source);
    CHECK_FIELD(rec->event_time);
    CHECK_FIELD(rec->bucket);
    CHECK_FIELD(rec->etag);
    CHECK_FIELD(rec->sequencer);
    CHECK_FIELD(rec->version_id);
    CHECK(rec->event_name[0] != '\0' && strncmp(rec->event_name, "s3:", 3) != 0);
    CHECK(rec->bucket[0] != '\0');
    fm_s3event_kind_t kind = strncmp(rec->event_name, "ObjectCreated:", 14) == 0         ? FM_S3EVENT_CREATED
                             : strncmp(rec->event_name, "ObjectRemoved:", 14) == 0       ? FM_S3EVENT_REMOVED
                             : strncmp(rec->event_name, "LifecycleExpiration:", 20) == 0 ? FM_S3EVENT_REMOVED
                                                                                         : FM_S3EVENT_OTHER;
    CHECK(rec->kind == kind);
    CHECK(rec->key_len >= 1 && rec->key_len <= FM_S3EVENT_KEY_MAX);
    CHECK(rec->key[rec->key_len] == '\0' && strlen(rec->key) == rec->key_len);
    CHECK(rec->size >= -1);
    size_t etag_len = strlen(rec->etag);
    CHECK(!(etag_len >= 2 && rec->etag[0] == '"' && rec->etag[etag_len - 1] == '"'));

    /* The same record read independently. */
    const char *name = json_string_at(item, "eventName", NULL, NULL);
    CHECK(name != NULL);
    CHECK(strcmp(rec->event_name, strncmp(name, "s3:", 3) == 0 ? name + 3 : name) == 0);
    const char *bucket = json_string_at(item, "s3", "bucket", "name");
    CHECK(bucket != NULL && strcmp(rec->bucket, bucket) == 0);
    const char *source = json_string_at(item, "eventSource", NULL, NULL);
    CHECK(strcmp(rec->event_source, source != NULL ? source : "") == 0);
    const char *key = json_string_at(item, "s3", "object", "key");
    CHECK(key != NULL);
    char decoded[FM_S3EVENT_KEY_MAX];
    long n;
    if (source != NULL && strcmp(source, "ceph:s3") == 0) {
        n = (long)strlen(key);
        memcpy(decoded, key, n <= (long)sizeof(decoded) ? (size_t)n : sizeof(decoded));
    } else {
        n = ref_decode(key, decoded, sizeof(decoded));
    }
    CHECK(n == (long)rec->key_len && memcmp(decoded, rec->key, rec->key_len) == 0);
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(item, "s3"), "object"), "size");
    if (cJSON_IsNumber(size))
        CHECK((double)rec->size == size->valuedouble);
    else
        CHECK(rec->size == -1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t max_records = data[0] % 8, err_size = data[1], len = size - 2;
    char *json = malloc(len > 0 ? len : 1);
    memcpy(json, data + 2, len);
    fm_s3event_record_t *records = malloc((max_records > 0 ? max_records : 1) * sizeof(*records));
    char *err = malloc(err_size > 0 ? err_size : 1);
    size_t count = 12345;

    int rc = fm_s3event_parse(json, len, max_records > 0 ? records : NULL, max_records, &count,
                              err_size > 0 ? err : NULL, err_size);
    CHECK(rc == -1 || rc == 0 || rc == 1);
    if (rc != 0)
        CHECK(count == 0);
    if (rc == -1 && err_size > 0)
        CHECK(strnlen(err, err_size) < err_size && (err_size == 1 || err[0] != '\0'));
    if (rc == 0) {
        CHECK(count <= max_records);
        /* Re-read the JSON here: it parsed, so cJSON reads it too, and its Records are the records. */
        cJSON *root = cJSON_ParseWithLength(json, len);
        CHECK(root != NULL);
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "Records");
        CHECK(cJSON_IsArray(list) && (size_t)cJSON_GetArraySize(list) == count);
        for (size_t i = 0; i < count; i++)
            check_record(&records[i], cJSON_GetArrayItem(list, (int)i));
        cJSON_Delete(root);
    }
    if (rc == 1) {
        cJSON *root = cJSON_ParseWithLength(json, len);
        CHECK(root != NULL && cJSON_GetObjectItemCaseSensitive(root, "Records") == NULL);
        CHECK(strcmp(json_string_at(root, "Event", NULL, NULL), "s3:TestEvent") == 0);
        cJSON_Delete(root);
    }
    free(json);
    free(records);
    free(err);
    return 0;
}
