/*
 * Tests of common/s3event.c: the AWS documentation's example messages, events captured from Ceph RGW 16 on the
 * local stack (fixtures/rgw_event_*.json: a PUT of "incoming/a b+c.txt" and a multipart upload), key decoding,
 * and the limits every field and the message as a whole are held to.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "s3event.h"

/* Parses `text` from an exact-size heap copy (no NUL after it), so a read past `len` is an ASan report. */
static int parse(const char *text, fm_s3event_record_t *records, size_t max_records, size_t *count, char *err,
                 size_t err_size)
{
    size_t len = strlen(text);
    char *copy = malloc(len > 0 ? len : 1);
    assert_non_null(copy);
    memcpy(copy, text, len);
    int rc = fm_s3event_parse(copy, len, records, max_records, count, err, err_size);
    free(copy);
    return rc;
}

/* Parses a message expected to hold exactly one record. */
static void parse_one(const char *text, fm_s3event_record_t *rec)
{
    char err[256];
    size_t count = 99;
    if (parse(text, rec, 1, &count, err, sizeof(err)) != 0)
        fail_msg("parse failed: %s", err);
    assert_int_equal(count, 1);
}

/* Expects `text` refused, with `words` in the error. */
static void expect_refused(const char *text, const char *words)
{
    fm_s3event_record_t records[4];
    char err[256];
    size_t count = 99;
    if (parse(text, records, 4, &count, err, sizeof(err)) != -1)
        fail_msg("accepted: %s", text);
    assert_int_equal(count, 0);
    if (strstr(err, words) == NULL)
        fail_msg("error \"%s\" does not mention \"%s\" (input %.200s)", err, words, text);
}

static char *read_fixture(const char *name, size_t *len)
{
    const char *source_dir = getenv("FM_SOURCE_DIR");
    char path[1024];
    if (source_dir != NULL) {
        snprintf(path, sizeof(path), "%s/tests/unit/common/fixtures/%s", source_dir, name);
    } else { /* run by hand from the build tree: this file's own folder */
        const char *slash = strrchr(__FILE__, '/');
        snprintf(path, sizeof(path), "%.*s/fixtures/%s", slash != NULL ? (int)(slash - __FILE__) : 1,
                 slash != NULL ? __FILE__ : ".", name);
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    static char data[65536];
    *len = fread(data, 1, sizeof(data), f);
    fclose(f);
    assert_true(*len > 0 && *len < sizeof(data));
    char *copy = malloc(*len);
    assert_non_null(copy);
    memcpy(copy, data, *len);
    return copy;
}

/* ---- AWS --------------------------------------------------------------------------------------------------- */

/* S3 user guide, "Event message structure": the example message for an object created with PUT (version 2.1). */
static const char aws_put_example[] =
    "{\n"
    "   \"Records\":[\n"
    "      {\n"
    "         \"eventVersion\":\"2.1\",\n"
    "         \"eventSource\":\"aws:s3\",\n"
    "         \"awsRegion\":\"us-west-2\",\n"
    "         \"eventTime\":\"1970-01-01T00:00:00.000Z\",\n"
    "         \"eventName\":\"ObjectCreated:Put\",\n"
    "         \"userIdentity\":{\n"
    "            \"principalId\":\"AIDAJDPLRKLG7UEXAMPLE\"\n"
    "         },\n"
    "         \"requestParameters\":{\n"
    "            \"sourceIPAddress\":\"127.0.0.1\"\n"
    "         },\n"
    "         \"responseElements\":{\n"
    "            \"x-amz-request-id\":\"C3D13FE58DE4C810\",\n"
    "            \"x-amz-id-2\":\"FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD\"\n"
    "         },\n"
    "         \"s3\":{\n"
    "            \"s3SchemaVersion\":\"1.0\",\n"
    "            \"configurationId\":\"testConfigRule\",\n"
    "            \"bucket\":{\n"
    "               \"name\":\"amzn-s3-demo-bucket\",\n"
    "               \"ownerIdentity\":{\n"
    "                  \"principalId\":\"A3NL1KOZZKExample\"\n"
    "               },\n"
    "               \"arn\":\"arn:aws:s3:::amzn-s3-demo-bucket\"\n"
    "            },\n"
    "            \"object\":{\n"
    "               \"key\":\"HappyFace.jpg\",\n"
    "               \"size\":1024,\n"
    "               \"eTag\":\"d41d8cd98f00b204e9800998ecf8427e\",\n"
    "               \"versionId\":\"096fKKXTRTtl3on89fVO.nfljtsv6qko\",\n"
    "               \"sequencer\":\"0055AED6DCD90281E5\"\n"
    "            }\n"
    "         }\n"
    "      }\n"
    "   ]\n"
    "}\n";

static void test_aws_example(void **state)
{
    fm_s3event_record_t rec;
    parse_one(aws_put_example, &rec);
    assert_int_equal(rec.kind, FM_S3EVENT_CREATED);
    assert_string_equal(fm_s3event_kind_name(rec.kind), "created");
    assert_string_equal(rec.event_name, "ObjectCreated:Put");
    assert_string_equal(rec.event_source, "aws:s3");
    assert_string_equal(rec.event_time, "1970-01-01T00:00:00.000Z");
    assert_string_equal(rec.bucket, "amzn-s3-demo-bucket");
    assert_string_equal(rec.key, "HappyFace.jpg");
    assert_int_equal(rec.key_len, 13);
    assert_int_equal(rec.size, 1024);
    assert_string_equal(rec.etag, "d41d8cd98f00b204e9800998ecf8427e");
    assert_string_equal(rec.sequencer, "0055AED6DCD90281E5");
    assert_string_equal(rec.version_id, "096fKKXTRTtl3on89fVO.nfljtsv6qko");
}

/* The same guide's test message, sent when a notification is configured: no records, flagged by rc 1. */
static void test_aws_test_event(void **state)
{
    const char *test_event = "{\n   \"Service\":\"Amazon S3\",\n   \"Event\":\"s3:TestEvent\",\n"
                             "   \"Time\":\"2014-10-13T15:57:02.089Z\",\n   \"Bucket\":\"amzn-s3-demo-bucket\",\n"
                             "   \"RequestId\":\"5582815E1AEA5ADF\",\n"
                             "   \"HostId\":\"8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE\"\n}";
    fm_s3event_record_t records[2];
    size_t count = 99;
    char err[128];
    assert_int_equal(parse(test_event, records, 2, &count, err, sizeof(err)), 1);
    assert_int_equal(count, 0);
    assert_string_equal(err, "");
    expect_refused("{\"Service\":\"Amazon S3\",\"Event\":\"s3:OtherEvent\"}", "neither Records");
    expect_refused("{\"Event\":1}", "neither Records");
    /* An empty Records list is a message with nothing to do, not a test event. */
    assert_int_equal(parse("{\"Records\":[]}", records, 2, &count, err, sizeof(err)), 0);
    assert_int_equal(count, 0);
}

/* AWS form-urlencodes keys: '+' is a space, %XX a byte (upper or lower hex); '/' comes unencoded. */
static void test_aws_key_decoding(void **state)
{
    static const struct {
        const char *encoded, *decoded;
    } cases[] = {
        {"incoming/a+b%2Bc.txt", "incoming/a b+c.txt"},
        {"incoming%2Fx", "incoming/x"},
        {"f%C3%AFl%c3%a9/%E6%97%A5.txt", "f\xc3\xafl\xc3\xa9/\xe6\x97\xa5.txt"},
        {"100%25+sure", "100% sure"},
        {"%FF%01", "\xff\x01"}, /* bytes, not text: an invalid UTF-8 or control byte is still the key */
        {"plain~-_.!*'()", "plain~-_.!*'()"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[512];
        snprintf(json, sizeof(json),
                 "{\"Records\":[{\"eventSource\":\"aws:s3\",\"eventName\":\"ObjectCreated:Put\","
                 "\"s3\":{\"bucket\":{\"name\":\"b\"},\"object\":{\"key\":\"%s\"}}}]}",
                 cases[i].encoded);
        fm_s3event_record_t rec;
        parse_one(json, &rec);
        assert_string_equal(rec.key, cases[i].decoded);
        assert_int_equal(rec.key_len, strlen(cases[i].decoded));
        assert_int_equal(rec.size, -1);
        assert_string_equal(rec.etag, "");
        assert_string_equal(rec.sequencer, "");
    }
    const char *bad[] = {"a%", "a%4", "a%G1", "a%4g", "a%00b", "", "%+1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char json[256];
        snprintf(json, sizeof(json),
                 "{\"Records\":[{\"eventName\":\"ObjectCreated:Put\","
                 "\"s3\":{\"bucket\":{\"name\":\"b\"},\"object\":{\"key\":\"%s\"}}}]}",
                 bad[i]);
        expect_refused(json, "s3.object.key");
    }
}

/* The key's limit is in decoded bytes: 1024 fit, 1025 do not, however they are written. */
static void test_key_length(void **state)
{
    static char json[8192], key[4096];
    fm_s3event_record_t rec;
    const char *pattern = "{\"Records\":[{\"eventSource\":\"%s\",\"eventName\":\"ObjectCreated:Put\","
                          "\"s3\":{\"bucket\":{\"name\":\"b\"},\"object\":{\"key\":\"%s\"}}}]}";
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = FM_S3EVENT_KEY_MAX + (size_t)extra;
        key[0] = '\0';
        for (size_t i = 0; i < n; i++)
            strcat(key, "%41"); /* 'A', 3 bytes encoded */
        snprintf(json, sizeof(json), pattern, "aws:s3", key);
        if (extra == 0) {
            parse_one(json, &rec);
            assert_int_equal(rec.key_len, FM_S3EVENT_KEY_MAX);
            assert_int_equal(strlen(rec.key), FM_S3EVENT_KEY_MAX);
        } else {
            expect_refused(json, "longer than 1024");
        }
        memset(key, 'r', n);
        key[n] = '\0';
        snprintf(json, sizeof(json), pattern, "ceph:s3", key);
        if (extra == 0) {
            parse_one(json, &rec);
            assert_int_equal(rec.key_len, FM_S3EVENT_KEY_MAX);
        } else {
            expect_refused(json, "longer than 1024");
        }
    }
}

/* ---- Ceph RGW ---------------------------------------------------------------------------------------------- */

/* Captured from the local stack: a PUT of "incoming/a b+c.txt". RGW sends the key unencoded. */
static void test_rgw_put(void **state)
{
    size_t len;
    char *json = read_fixture("rgw_event_put.json", &len);
    fm_s3event_record_t records[2];
    size_t count = 0;
    char err[256];
    if (fm_s3event_parse(json, len, records, 2, &count, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    free(json);
    assert_int_equal(count, 1);
    fm_s3event_record_t *rec = &records[0];
    assert_int_equal(rec->kind, FM_S3EVENT_CREATED);
    assert_string_equal(rec->event_name, "ObjectCreated:Put");
    assert_string_equal(rec->event_source, "ceph:s3");
    assert_string_equal(rec->event_time, "2026-11-23T16:36:46.500399Z");
    assert_string_equal(rec->bucket, "files-manager");
    assert_string_equal(rec->key, "incoming/a b+c.txt"); /* not "incoming/a b c.txt" */
    assert_int_equal(rec->size, 12);
    assert_string_equal(rec->etag, "6f5902ac237024bdd0c176cb93063dc4"); /* md5("hello world\n") */
    assert_string_equal(rec->sequencer, "9E6B046B236A6E1E");
    assert_string_equal(rec->version_id, "");
}

/* Captured: a multipart upload (5 MiB + 1 byte) of "incoming/big é.bin", raw UTF-8 in the key. */
static void test_rgw_multipart(void **state)
{
    size_t len;
    char *json = read_fixture("rgw_event_multipart.json", &len);
    fm_s3event_record_t records[1];
    size_t count = 0;
    char err[256];
    if (fm_s3event_parse(json, len, records, 1, &count, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    free(json);
    assert_int_equal(count, 1);
    assert_int_equal(records[0].kind, FM_S3EVENT_CREATED);
    assert_string_equal(records[0].event_name, "ObjectCreated:CompleteMultipartUpload");
    assert_string_equal(records[0].key, "incoming/big \xc3\xa9.bin");
    assert_int_equal(records[0].size, 5242881);
    assert_string_equal(records[0].etag, "e5a8c5272b26fc10581a21089559b006-2");
    assert_string_equal(records[0].sequencer, "A06B046BDC3BC137");
}

/* Captured too (trimmed): RGW's delete carries size and ETag, unlike AWS's. Then older RGW spellings. */
static void test_rgw_delete_and_variants(void **state)
{
    const char *deleted =
        "{\"Records\":[{\"eventVersion\":\"2.2\",\"eventSource\":\"ceph:s3\",\"awsRegion\":\"\","
        "\"eventTime\":\"2026-11-23T16:36:51.012917Z\",\"eventName\":\"ObjectRemoved:Delete\","
        "\"userIdentity\":{\"principalId\":\"files-manager\"},\"requestParameters\":{\"sourceIPAddress\":\"\"},"
        "\"s3\":{\"s3SchemaVersion\":\"1.0\",\"configurationId\":\"files-manager-uploads\",\"bucket\":{\"name\":"
        "\"files-manager\",\"ownerIdentity\":{\"principalId\":\"files-manager\"},\"arn\":\"arn:aws:s3:::files-"
        "manager\","
        "\"id\":\"c811f013-fd5c-4056-8b0b-c321f984e0ef.4106.1\"},\"object\":{\"key\":\"incoming/a b+c.txt\","
        "\"size\":12,\"eTag\":\"6f5902ac237024bdd0c176cb93063dc4\",\"versionId\":\"\",\"sequencer\":"
        "\"A36B046B2658C500\",\"metadata\":[{\"key\":\"x-amz-date\",\"val\":\"20261123T163650Z\"}],\"tags\":[]}},"
        "\"eventId\":\"1795451811.012933.6f5902ac237024bdd0c176cb93063dc4\",\"opaqueData\":\"\"}]}";
    fm_s3event_record_t rec;
    parse_one(deleted, &rec);
    assert_int_equal(rec.kind, FM_S3EVENT_REMOVED);
    assert_string_equal(fm_s3event_kind_name(rec.kind), "removed");
    assert_string_equal(rec.key, "incoming/a b+c.txt");
    assert_int_equal(rec.size, 12);

    /* "s3:"-prefixed eventName, lower-case "etag", quoted ETag, null versionId. */
    parse_one("{\"Records\":[{\"eventVersion\":\"2.1\",\"eventSource\":\"ceph:s3\",\"eventName\":"
              "\"s3:ObjectCreated:Post\",\"s3\":{\"bucket\":{\"name\":\"b\"},\"object\":{\"key\":\"k%41\","
              "\"size\":0,\"etag\":\"\\\"abc\\\"\",\"versionId\":null}}}]}",
              &rec);
    assert_string_equal(rec.event_name, "ObjectCreated:Post");
    assert_int_equal(rec.kind, FM_S3EVENT_CREATED);
    assert_string_equal(rec.key, "k%41"); /* RGW: as is */
    assert_int_equal(rec.size, 0);
    assert_string_equal(rec.etag, "abc");
    assert_string_equal(rec.version_id, "");

    const struct {
        const char *name;
        fm_s3event_kind_t kind;
    } kinds[] = {{"ObjectRemoved:DeleteMarkerCreated", FM_S3EVENT_REMOVED},
                 {"LifecycleExpiration:Delete", FM_S3EVENT_REMOVED},
                 {"ObjectRestore:Completed", FM_S3EVENT_OTHER},
                 {"s3:ObjectSynced:Create", FM_S3EVENT_OTHER},
                 {"ObjectCreatedX", FM_S3EVENT_OTHER}};
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        char json[256];
        snprintf(
            json, sizeof(json),
            "{\"Records\":[{\"eventName\":\"%s\",\"s3\":{\"bucket\":{\"name\":\"b\"},\"object\":{\"key\":\"k\"}}}]}",
            kinds[i].name);
        parse_one(json, &rec);
        if (rec.kind != kinds[i].kind)
            fail_msg("%s: kind %d", kinds[i].name, rec.kind);
    }
}

/* ---- limits and malformed messages ------------------------------------------------------------------------- */

#define RECORD(name, object) "{\"eventName\":\"" name "\",\"s3\":{\"bucket\":{\"name\":\"b\"},\"object\":" object "}}"
#define MESSAGE(records) "{\"Records\":[" records "]}"

static void test_malformed(void **state)
{
    expect_refused("", "empty");
    expect_refused("not json", "not valid JSON");
    expect_refused("{\"Records\":[]} x", "one JSON object");
    expect_refused("[{\"Records\":[]}]", "one JSON object");
    expect_refused("{\"Records\":{}}", "not an array");
    expect_refused("{\"Records\":[1]}", "record 0 is not an object");
    expect_refused(MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"k\"}") ",{}"), "record 1: eventName is missing");
    expect_refused(MESSAGE("{\"eventName\":\"ObjectCreated:Put\"}"), "record 0: s3.bucket or s3.object");
    expect_refused(MESSAGE("{\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":[],\"object\":{}}}"),
                   "s3.bucket or s3.object");
    expect_refused(MESSAGE(RECORD("ObjectCreated:Put", "{}")), "s3.object.key is missing");
    expect_refused(MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":7}")), "s3.object.key is missing or not a string");
    expect_refused(MESSAGE("{\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{},\"object\":{\"key\":\"k\"}}}"),
                   "s3.bucket.name is missing");
    expect_refused(MESSAGE("{\"eventName\":7,\"s3\":{\"bucket\":{\"name\":\"b\"},\"object\":{\"key\":\"k\"}}}"),
                   "eventName is not a string");
    static const char *const bad_sizes[] = {"\"12\"", "-1", "1.5", "1e300", "true", "9007199254740993e3"};
    for (size_t i = 0; i < sizeof(bad_sizes) / sizeof(bad_sizes[0]); i++) {
        char json[256];
        snprintf(json, sizeof(json), MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"k\",\"size\":%s}")), bad_sizes[i]);
        expect_refused(json, "s3.object.size");
    }
    fm_s3event_record_t rec;
    parse_one(MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"k\",\"size\":null}")), &rec);
    assert_int_equal(rec.size, -1);
    parse_one(MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"k\",\"size\":5497558138880}")), &rec); /* 5 TiB */
    assert_int_equal(rec.size, 5497558138880LL);

    /* The major version must be 2; absent is accepted (some emulators leave it out). */
    expect_refused("{\"Records\":[{\"eventVersion\":\"3.0\",\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":"
                   "{\"name\":\"b\"},\"object\":{\"key\":\"k\"}}}]}",
                   "eventVersion 3.0");
    expect_refused("{\"Records\":[{\"eventVersion\":\"20.1\",\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":"
                   "{\"name\":\"b\"},\"object\":{\"key\":\"k\"}}}]}",
                   "eventVersion 20.1");

    /* NUL and control characters, raw or escaped; a backslash before "u0000" is only text. */
    expect_refused(MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"a\\u0000b\"}")), "\\u0000");
    expect_refused(MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"a\x01 b\"}")), "control character");
    parse_one(MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"a\\\\u0000b\"}")), &rec);
    assert_string_equal(rec.key, "a\\u0000b");
    expect_refused(MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"k\",\"eTag\":\"a\\nb\"}")), "not printable");
    expect_refused(MESSAGE(RECORD("ObjectCreated:Put\\u00e9", "{\"key\":\"k\"}")), "not printable");
    /* A key may hold an escaped control character (S3 allows it); only NUL is refused. */
    parse_one(MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"a\\nb\",\"eTag\":\"\\\"\\\"\"}")), &rec);
    assert_string_equal(rec.key, "a\nb");
    assert_string_equal(rec.etag, "");

    fm_s3event_record_t records[1];
    size_t count;
    assert_int_equal(fm_s3event_parse(NULL, 0, records, 1, &count, NULL, 0), -1);
    assert_int_equal(fm_s3event_parse("{}", 2, records, 1, NULL, NULL, 0), -1);
    const char *valid = MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"k\"}"));
    assert_int_equal(fm_s3event_parse(valid, strlen(valid), records, 1, &count, NULL, 0), 0);
    assert_int_equal(fm_s3event_parse(valid, strlen(valid), NULL, 1, &count, NULL, 0), -1);
    char small_err[8];
    assert_int_equal(fm_s3event_parse("nope", 4, records, 1, &count, small_err, sizeof(small_err)), -1);
    assert_int_equal(strlen(small_err), sizeof(small_err) - 1);
}

/* Every string is held to its field's size: one byte more than fits is refused. */
static void test_field_sizes(void **state)
{
    static const struct {
        const char *field; /* where the long value goes, in a JSON template */
        const char *template;
        size_t fits;
    } cases[] = {
        {"eventName",
         "{\"Records\":[{\"eventName\":\"ObjectCreated:%s\",\"s3\":{\"bucket\":{\"name\":\"b\"},"
         "\"object\":{\"key\":\"k\"}}}]}",
         63 - 14},
        {"eventSource",
         "{\"Records\":[{\"eventSource\":\"%s\",\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":"
         "{\"name\":\"b\"},\"object\":{\"key\":\"k\"}}}]}",
         31},
        {"eventTime",
         "{\"Records\":[{\"eventTime\":\"%s\",\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":"
         "{\"name\":\"b\"},\"object\":{\"key\":\"k\"}}}]}",
         39},
        {"s3.bucket.name",
         "{\"Records\":[{\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{\"name\":\"%s\"},"
         "\"object\":{\"key\":\"k\"}}}]}",
         255},
        {"s3.object.eTag",
         "{\"Records\":[{\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{\"name\":\"b\"},"
         "\"object\":{\"key\":\"k\",\"eTag\":\"%s\"}}}]}",
         127},
        {"s3.object.sequencer",
         "{\"Records\":[{\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{\"name\":"
         "\"b\"},\"object\":{\"key\":\"k\",\"sequencer\":\"%s\"}}}]}",
         63},
        {"s3.object.versionId",
         "{\"Records\":[{\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{\"name\":"
         "\"b\"},\"object\":{\"key\":\"k\",\"versionId\":\"%s\"}}}]}",
         255},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char value[300], json[1024];
        fm_s3event_record_t rec;
        memset(value, 'F', cases[i].fits);
        value[cases[i].fits] = '\0';
        snprintf(json, sizeof(json), cases[i].template, value);
        parse_one(json, &rec);
        strcat(value, "F");
        snprintf(json, sizeof(json), cases[i].template, value);
        expect_refused(json, cases[i].field);
    }
}

/* Records per call: what the caller has room for, and never more than FM_S3EVENT_MAX_RECORDS. */
static void test_record_limits(void **state)
{
    const char *one = RECORD("ObjectCreated:Put", "{\"key\":\"k\",\"size\":1}");
    size_t one_len = strlen(one), max = FM_S3EVENT_MAX_RECORDS + 1;
    char *json = malloc(16 + max * (one_len + 1));
    fm_s3event_record_t *records = calloc(max, sizeof(*records));
    assert_non_null(json);
    assert_non_null(records);
    char err[256];
    size_t count;
    for (size_t n = FM_S3EVENT_MAX_RECORDS; n <= max; n++) {
        size_t len = 0;
        len += (size_t)sprintf(json + len, "{\"Records\":[");
        for (size_t i = 0; i < n; i++)
            len += (size_t)sprintf(json + len, "%s%s", i > 0 ? "," : "", one);
        sprintf(json + len, "]}");
        int rc = fm_s3event_parse(json, strlen(json), records, max, &count, err, sizeof(err));
        if (n == FM_S3EVENT_MAX_RECORDS) {
            assert_int_equal(rc, 0);
            assert_int_equal(count, FM_S3EVENT_MAX_RECORDS);
            assert_int_equal(records[count - 1].size, 1);
        } else {
            assert_int_equal(rc, -1);
            assert_int_equal(count, 0);
            assert_non_null(strstr(err, "more than 1000 records"));
        }
    }
    const char *three = MESSAGE(RECORD("ObjectCreated:Put", "{\"key\":\"a\"}") "," RECORD(
        "ObjectCreated:Put", "{\"key\":\"b\"}") "," RECORD("ObjectRemoved:Delete", "{\"key\":\"c\"}"));
    assert_int_equal(fm_s3event_parse(three, strlen(three), records, 2, &count, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "more than 2 records"));
    assert_int_equal(fm_s3event_parse(three, strlen(three), records, 3, &count, err, sizeof(err)), 0);
    assert_int_equal(count, 3);
    assert_string_equal(records[2].key, "c");
    assert_int_equal(records[2].kind, FM_S3EVENT_REMOVED);
    free(json);

    /* Larger than FM_S3EVENT_MAX_BYTES: refused before parsing. */
    size_t big = FM_S3EVENT_MAX_BYTES + 1;
    char *huge = malloc(big);
    assert_non_null(huge);
    memset(huge, ' ', big);
    memcpy(huge, "{\"Records\":[]}", 14);
    assert_int_equal(fm_s3event_parse(huge, big, records, 1, &count, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "larger than"));
    assert_int_equal(fm_s3event_parse(huge, big - 1, records, 1, &count, err, sizeof(err)), 0);
    free(huge);
    free(records);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aws_example),
        cmocka_unit_test(test_aws_test_event),
        cmocka_unit_test(test_aws_key_decoding),
        cmocka_unit_test(test_key_length),
        cmocka_unit_test(test_rgw_put),
        cmocka_unit_test(test_rgw_multipart),
        cmocka_unit_test(test_rgw_delete_and_variants),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_field_sizes),
        cmocka_unit_test(test_record_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
