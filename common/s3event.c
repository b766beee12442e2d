/*
 * s3event: S3 event notification messages (AWS and Ceph RGW shapes, see s3event.h) into fixed-size records.
 *
 * One shape per step: check the raw text (size, control characters, NUL escapes) -> parse with cJSON -> read
 * each record field by field, each against its size. Nothing is kept from the cJSON tree after the call.
 */
#include "s3event.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "json.h"
#include "qs.h"

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t err_size, const char *fmt, ...)
{
    if (err != NULL && err_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/*
 * cJSON strings are C strings: a "\u0000" escape would silently cut a key short ("a\u0000b" read as "a"), so it
 * is refused, as are raw control characters (invalid JSON that cJSON lets through). 0 if the text is clean.
 */
static int check_raw_text(const char *json, size_t len, char *err, size_t err_size)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)json[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            return fail(err, err_size, "the message holds a raw control character at byte %zu", i);
        if (c == '\\' && i + 1 < len) {
            if (json[i + 1] == 'u' && i + 5 < len && memcmp(json + i + 2, "0000", 4) == 0)
                return fail(err, err_size, "the message holds a \\u0000 escape at byte %zu", i);
            i++; /* the escaped character: "\\u0000" is a backslash, then the text u0000 */
        }
    }
    return 0;
}

/* The string member `name` of `obj`, or NULL when absent or JSON null; *bad is set when it is another type. */
static const char *member_string(const cJSON *obj, const char *name, int *bad)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (item == NULL || cJSON_IsNull(item))
        return NULL;
    if (!cJSON_IsString(item) || item->valuestring == NULL) {
        *bad = 1;
        return NULL;
    }
    return item->valuestring;
}

/*
 * Copies the string member `name` (printable ASCII only: these fields are names, times, hex and ids) into
 * out[size]; "" when absent unless `required`. Returns 0, or -1 with `err` naming record `index` and `path`.
 */
static int copy_field(const cJSON *obj, const char *name, int required, char *out, size_t size, size_t index,
                      const char *path, char *err, size_t err_size)
{
    int bad = 0;
    const char *value = member_string(obj, name, &bad);
    out[0] = '\0';
    if (bad)
        return fail(err, err_size, "record %zu: %s is not a string", index, path);
    if (value == NULL || *value == '\0')
        return required ? fail(err, err_size, "record %zu: %s is missing", index, path) : 0;
    size_t n = strlen(value);
    if (n >= size)
        return fail(err, err_size, "record %zu: %s is longer than %zu bytes", index, path, size - 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c < 0x20 || c > 0x7E)
            return fail(err, err_size, "record %zu: %s holds a byte that is not printable ASCII", index, path);
    }
    memcpy(out, value, n + 1);
    return 0;
}

/*
 * The key into rec->key: form-urlencoded on AWS ('+' is a space, %XX a byte; S3 user guide, "Event message
 * structure"), as is on Ceph RGW (which does not encode it). Either way: 1..FM_S3EVENT_KEY_MAX bytes, no NUL.
 */
static int decode_key(const char *text, int encoded, fm_s3event_record_t *rec, size_t index, char *err, size_t err_size)
{
    size_t len = strlen(text), o = len;
    fm_pct_result_t rc = FM_PCT_OK;
    if (encoded)
        rc = fm_pct_decode(text, len, rec->key, FM_S3EVENT_KEY_MAX + 1, &o, FM_PCT_FORM);
    else if (len > FM_S3EVENT_KEY_MAX)
        rc = FM_PCT_TOO_LONG;
    else
        memcpy(rec->key, text, len + 1);
    if (rc == FM_PCT_BAD_ESCAPE)
        return fail(err, err_size, "record %zu: s3.object.key has a bad %%-escape", index);
    if (rc == FM_PCT_NUL)
        return fail(err, err_size, "record %zu: s3.object.key decodes to a NUL byte", index);
    if (rc == FM_PCT_TOO_LONG)
        return fail(err, err_size, "record %zu: s3.object.key is longer than %d bytes", index, FM_S3EVENT_KEY_MAX);
    if (o == 0)
        return fail(err, err_size, "record %zu: s3.object.key is empty", index);
    rec->key_len = o;
    return 0;
}

/* eventName without "s3:" (RGW writes it in some versions), and the kind from its family. Returns -1 for a name
 * that is empty once stripped or carries the prefix twice: no store sends those. */
static int set_kind(fm_s3event_record_t *rec)
{
    if (strncmp(rec->event_name, "s3:", 3) == 0)
        memmove(rec->event_name, rec->event_name + 3, strlen(rec->event_name + 3) + 1);
    if (rec->event_name[0] == '\0' || strncmp(rec->event_name, "s3:", 3) == 0)
        return -1;
    static const struct {
        const char *prefix;
        fm_s3event_kind_t kind;
    } families[] = {{"ObjectCreated:", FM_S3EVENT_CREATED},
                    {"ObjectRemoved:", FM_S3EVENT_REMOVED},
                    {"LifecycleExpiration:", FM_S3EVENT_REMOVED}};
    rec->kind = FM_S3EVENT_OTHER;
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++)
        if (strncmp(rec->event_name, families[i].prefix, strlen(families[i].prefix)) == 0)
            rec->kind = families[i].kind;
    return 0;
}

/* s3.object.size: a whole number of bytes that a double holds exactly (cJSON reads numbers as doubles). */
static int read_size(const cJSON *object, fm_s3event_record_t *rec, size_t index, char *err, size_t err_size)
{
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(object, "size");
    rec->size = -1;
    if (size == NULL || cJSON_IsNull(size))
        return 0;
    double v = cJSON_IsNumber(size) ? size->valuedouble : -1;
    if (!(v >= 0 && v <= 9007199254740992.0) || floor(v) != v)
        return fail(err, err_size, "record %zu: s3.object.size is not a whole number of bytes", index);
    rec->size = (long long)v;
    return 0;
}

static int read_record(const cJSON *item, fm_s3event_record_t *rec, size_t index, char *err, size_t err_size)
{
    memset(rec, 0, sizeof(*rec));
    rec->size = -1;
    if (!cJSON_IsObject(item))
        return fail(err, err_size, "record %zu is not an object", index);
    /* The structure's major version changes only with incompatible changes (2.1 … 2.3 on AWS, 2.2 on RGW). */
    char version[16];
    if (copy_field(item, "eventVersion", 0, version, sizeof(version), index, "eventVersion", err, err_size) != 0)
        return -1;
    if (version[0] != '\0' && strcmp(version, "2") != 0 && strncmp(version, "2.", 2) != 0)
        return fail(err, err_size, "record %zu: eventVersion %s is not 2.x", index, version);
    if (copy_field(item, "eventSource", 0, rec->event_source, sizeof(rec->event_source), index, "eventSource", err,
                   err_size) != 0 ||
        copy_field(item, "eventName", 1, rec->event_name, sizeof(rec->event_name), index, "eventName", err, err_size) !=
            0 ||
        copy_field(item, "eventTime", 0, rec->event_time, sizeof(rec->event_time), index, "eventTime", err, err_size) !=
            0)
        return -1;
    if (set_kind(rec) != 0)
        return fail(err, err_size, "record %zu: eventName %.40s is not an event name", index, rec->event_name);

    const cJSON *s3 = cJSON_GetObjectItemCaseSensitive(item, "s3");
    const cJSON *bucket = cJSON_GetObjectItemCaseSensitive(s3, "bucket");
    const cJSON *object = cJSON_GetObjectItemCaseSensitive(s3, "object");
    if (!cJSON_IsObject(s3) || !cJSON_IsObject(bucket) || !cJSON_IsObject(object))
        return fail(err, err_size, "record %zu: s3.bucket or s3.object is missing", index);
    if (copy_field(bucket, "name", 1, rec->bucket, sizeof(rec->bucket), index, "s3.bucket.name", err, err_size) != 0)
        return -1;

    int bad = 0;
    const char *key = member_string(object, "key", &bad);
    if (bad || key == NULL)
        return fail(err, err_size, "record %zu: s3.object.key is missing or not a string", index);
    if (decode_key(key, strcmp(rec->event_source, "ceph:s3") != 0, rec, index, err, err_size) != 0)
        return -1;
    if (read_size(object, rec, index, err, err_size) != 0)
        return -1;

    const char *etag_name = cJSON_GetObjectItemCaseSensitive(object, "eTag") != NULL ? "eTag" : "etag";
    if (copy_field(object, etag_name, 0, rec->etag, sizeof(rec->etag), index, "s3.object.eTag", err, err_size) != 0 ||
        copy_field(object, "sequencer", 0, rec->sequencer, sizeof(rec->sequencer), index, "s3.object.sequencer", err,
                   err_size) != 0 ||
        copy_field(object, "versionId", 0, rec->version_id, sizeof(rec->version_id), index, "s3.object.versionId", err,
                   err_size) != 0)
        return -1;
    /* AWS sends the bare hex; other stores may quote it as in the HTTP header. */
    size_t n = strlen(rec->etag);
    if (n >= 2 && rec->etag[0] == '"' && rec->etag[n - 1] == '"') {
        memmove(rec->etag, rec->etag + 1, n - 2);
        rec->etag[n - 2] = '\0';
    }
    return 0;
}

int fm_s3event_parse(const char *json, size_t len, fm_s3event_record_t *records, size_t max_records, size_t *count,
                     char *err, size_t err_size)
{
    if (err != NULL && err_size > 0)
        err[0] = '\0';
    if (count == NULL)
        return fail(err, err_size, "no count to write");
    *count = 0;
    if (json == NULL || len == 0)
        return fail(err, err_size, "the message is empty");
    if (len > FM_S3EVENT_MAX_BYTES)
        return fail(err, err_size, "the message is larger than %d bytes", FM_S3EVENT_MAX_BYTES);
    if (check_raw_text(json, len, err, err_size) != 0)
        return -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (root == NULL)
        return fail(err, err_size, "the message is not valid JSON");
    while (end != NULL && end < json + len && strchr(" \t\r\n", *end) != NULL)
        end++;
    int rc = -1;
    if (end != json + len || !cJSON_IsObject(root)) {
        fail(err, err_size, "the message is not one JSON object");
        goto done;
    }
    const char *duplicate = fm_json_duplicate_key(root); /* which copy of a member we read must not be a choice */
    if (duplicate != NULL) {
        fail(err, err_size, "the member \"%.40s\" appears twice in one object", duplicate);
        goto done;
    }
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "Records");
    if (list == NULL) {
        /* Sent once when a notification is configured (S3 user guide, "Event message structure"). */
        int bad = 0;
        const char *event = member_string(root, "Event", &bad);
        if (event != NULL && strcmp(event, "s3:TestEvent") == 0)
            rc = 1;
        else
            fail(err, err_size, "the message has neither Records nor Event s3:TestEvent");
        goto done;
    }
    if (!cJSON_IsArray(list)) {
        fail(err, err_size, "Records is not an array");
        goto done;
    }
    size_t limit = max_records < FM_S3EVENT_MAX_RECORDS ? max_records : FM_S3EVENT_MAX_RECORDS;
    size_t index = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, list)
    {
        if (index >= limit) {
            fail(err, err_size, "more than %zu records", limit);
            goto done;
        }
        if (records == NULL || read_record(item, &records[index], index, err, err_size) != 0) {
            if (records == NULL)
                fail(err, err_size, "no room for records");
            goto done;
        }
        index++;
    }
    *count = index;
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

const char *fm_s3event_kind_name(fm_s3event_kind_t kind)
{
    return kind == FM_S3EVENT_CREATED ? "created" : kind == FM_S3EVENT_REMOVED ? "removed" : "other";
}
