/*
 * Tests of common/s3_xml.c: XML extraction, ListParts and ListObjectsV2 pages, the CompleteMultipartUpload body and
 * how its answers are read; directly, or through the calls against the local listener of s3_listener.h. The live
 * checks against Ceph RGW are in tests/integration/test_s3_client.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "s3_listener.h"

/* ---- fm_s3_xml_text ------------------------------------------------------------------------------------------ */

static void test_s3_xml_text(void **state)
{
    const char *xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>"
                      "<Message>The key &lt;a&amp;b&gt; &quot;x&apos;s&quot; &#233;&#x65E5;</Message>"
                      "<Key>a&amp;b</Key><RequestId>tx0001</RequestId><Empty></Empty><Odd>&bogus; &#;</Odd></Error>";
    char out[128];
    assert_int_equal(fm_s3_xml_text(xml, strlen(xml), "Code", out, sizeof(out)), 0);
    assert_string_equal(out, "NoSuchKey");
    assert_int_equal(fm_s3_xml_text(xml, strlen(xml), "Message", out, sizeof(out)), 0);
    assert_string_equal(out, "The key <a&b> \"x's\" \xc3\xa9\xe6\x97\xa5");
    assert_int_equal(fm_s3_xml_text(xml, strlen(xml), "Empty", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(fm_s3_xml_text(xml, strlen(xml), "Odd", out, sizeof(out)), 0);
    assert_string_equal(out, "&bogus; &#;"); /* unknown references are kept as text */
    assert_int_equal(fm_s3_xml_text(xml, strlen(xml), "UploadId", out, sizeof(out)), -1);
    assert_int_equal(fm_s3_xml_text(xml, strlen(xml), "Cod", out, sizeof(out)), -1);
    char small[4];
    assert_int_equal(fm_s3_xml_text(xml, strlen(xml), "Code", small, sizeof(small)), -1);
    assert_string_equal(small, "");
    /* Not NUL-terminated, cut inside the element: no read past `len`, no match. */
    const char *cut = "<UploadId>abc</Upl";
    assert_int_equal(fm_s3_xml_text(cut, strlen(cut), "UploadId", out, sizeof(out)), -1);
    const char *etag = "<CompleteMultipartUploadResult><ETag>&quot;3858f62230ac3c915f300c664312c11f-9&quot;</ETag>";
    assert_int_equal(fm_s3_xml_text(etag, strlen(etag), "ETag", out, sizeof(out)), 0);
    assert_string_equal(out, "\"3858f62230ac3c915f300c664312c11f-9\"");
}

/* ---- fm_s3_xml_next ------------------------------------------------------------------------------------------ */

static void test_s3_xml_next(void **state)
{
    const char *xml = "<ListPartsResult><PartNumberMarker>0</PartNumberMarker><Part><PartNumber>1</PartNumber></Part>"
                      "<Part></Part><Part><PartNumber>3</PartNumber></Part><Part><PartNumber>4</PartNumber>";
    size_t len = strlen(xml), offset = 0, inner_len = 0;
    const char *inner = NULL;
    char text[16];
    assert_int_equal(fm_s3_xml_next(xml, len, "Part", &offset, &inner, &inner_len), 0);
    assert_int_equal(fm_s3_xml_text(inner, inner_len, "PartNumber", text, sizeof(text)), 0);
    assert_string_equal(text, "1"); /* <PartNumberMarker> is not a <Part> */
    assert_int_equal(fm_s3_xml_next(xml, len, "Part", &offset, &inner, &inner_len), 0);
    assert_int_equal(inner_len, 0);
    assert_int_equal(fm_s3_xml_next(xml, len, "Part", &offset, &inner, &inner_len), 0);
    assert_memory_equal(inner, "<PartNumber>3</PartNumber>", inner_len);
    /* The last element is not closed: no more, and the offset stays put. */
    size_t before = offset;
    assert_int_equal(fm_s3_xml_next(xml, len, "Part", &offset, &inner, &inner_len), -1);
    assert_int_equal(offset, before);
    offset = len + 1;
    assert_int_equal(fm_s3_xml_next(xml, len, "Part", &offset, &inner, &inner_len), -1);
    offset = 0;
    assert_int_equal(fm_s3_xml_next(xml, len, "", &offset, &inner, &inner_len), -1);
    assert_int_equal(fm_s3_xml_next(NULL, 0, "Part", &offset, &inner, &inner_len), -1);
}

/* ---- ListParts ------------------------------------------------------------------------------------------------ */

#define XML_HEAD "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
#define LIST_OPEN                                                                                                      \
    XML_HEAD "<ListPartsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>fm-bucket</Bucket>"           \
             "<Key>big/k</Key><UploadId>2~up</UploadId><StorageClass>STANDARD</StorageClass>"
#define OK_XML "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"

/* A <Part> as Ceph RGW 16 lists it (captured from the local stack). */
#define RGW_PART(n, etag, size)                                                                                        \
    "<Part><LastModified>2026-11-23T16:39:13.350Z</LastModified><PartNumber>" #n "</PartNumber>"                       \
    "<ETag>&quot;" etag "&quot;</ETag><Size>" #size "</Size></Part>"

static void test_s3_list_parts_pages(void **state)
{
    listener_t l;
    listener_init(&l);
    listener_answer(&l, OK_XML,
                    LIST_OPEN "<PartNumberMarker>0</PartNumberMarker><NextPartNumberMarker>2</NextPartNumberMarker>"
                              "<MaxParts>2</MaxParts><IsTruncated>true</IsTruncated>"
                              "<Owner><ID></ID><DisplayName></DisplayName></Owner>" RGW_PART(
                                  1, "79b281060d337b9b2b84ccf390adcf74", 5242880)
                                  RGW_PART(2, "79b281060d337b9b2b84ccf390adcf74", 5242880) "</ListPartsResult>");
    listener_answer(&l, OK_XML,
                    LIST_OPEN "<PartNumberMarker>2</PartNumberMarker><NextPartNumberMarker>3</NextPartNumberMarker>"
                              "<MaxParts>2</MaxParts><IsTruncated>false</IsTruncated>" RGW_PART(
                                  3, "9dd4e461268c8034f5c8564e155c67a6", 1) "</ListPartsResult>");
    listener_go(&l);
    fm_s3_t *s3 = s3_for_port(l.port, 5000);
    fm_s3_part_t parts[4];
    size_t count = 99;
    fm_s3_result_t res;
    assert_int_equal(fm_s3_list_parts(s3, "big/k", "2~up/+=", parts, 4, &count, &res), 0);
    listener_stop(&l);
    assert_int_equal(l.served, 2);
    assert_int_equal(count, 3);
    assert_int_equal(parts[0].part_number, 1);
    assert_string_equal(parts[0].etag, "\"79b281060d337b9b2b84ccf390adcf74\"");
    assert_int_equal(parts[0].size, 5242880);
    assert_int_equal(parts[2].part_number, 3);
    assert_string_equal(parts[2].etag, "\"9dd4e461268c8034f5c8564e155c67a6\"");
    assert_int_equal(parts[2].size, 1);
    assert_string_equal(res.code, "");

    /* Page 1 asks from the start, page 2 after the marker S3 gave; both pages of 1000 and the same upload id. */
    assert_non_null(strstr(l.requests[0], "GET /fm-bucket/big/k?"));
    assert_null(strstr(l.requests[0], "part-number-marker"));
    assert_non_null(strstr(l.requests[1], "part-number-marker=2"));
    for (int i = 0; i < 2; i++) {
        char line[256];
        snprintf(line, sizeof(line), "%.*s", (int)strcspn(l.requests[i], "\r"), l.requests[i]);
        assert_non_null(strstr(line, "uploadId=2~up%2F%2B%3D"));
        assert_non_null(strstr(line, "max-parts=1000"));
    }
    fm_s3_free(s3);
}

/* One ListParts call against one canned answer: its result code ("" on success) and the count. */
static const char *list_once(const char *head, const char *body, size_t max_parts, size_t *count)
{
    static fm_s3_result_t res;
    listener_t l;
    listener_start(&l, head, body);
    fm_s3_t *s3 = s3_for_port(l.port, 5000);
    fm_s3_part_t parts[4];
    *count = 99;
    int rc = fm_s3_list_parts(s3, "k", "u", parts, max_parts, count, &res);
    fm_s3_free(s3);
    listener_stop(&l);
    assert_int_equal(rc, res.code[0] == '\0' ? 0 : -1);
    return res.code;
}

static void test_s3_list_parts_bad_answers(void **state)
{
    size_t count;
    assert_string_equal(list_once(OK_XML, LIST_OPEN RGW_PART(1, "a", 5) "</ListPartsResult>", 4, &count), "");
    assert_int_equal(count, 1);
    /* The answers below must fail with nothing counted, never loop or keep a part list that may be incomplete. */
    const struct {
        const char *body, *code;
    } cases[] = {
        {LIST_OPEN "<IsTruncated>true</IsTruncated><NextPartNumberMarker>0</NextPartNumberMarker>"
                   "</ListPartsResult>",
         "InvalidResponse"}, /* a marker that does not move */
        {LIST_OPEN "<IsTruncated>true</IsTruncated>" RGW_PART(1, "a", 5) "</ListPartsResult>",
         "InvalidResponse"}, /* truncated without a next marker */
        {LIST_OPEN "<IsTruncated>true</IsTruncated><NextPartNumberMarker>10000</NextPartNumberMarker>"
                   "</ListPartsResult>",
         "InvalidResponse"}, /* nothing can follow part 10000 */
        {LIST_OPEN RGW_PART(2, "a", 5) RGW_PART(1, "a", 5) "</ListPartsResult>", "InvalidResponse"},
        {LIST_OPEN RGW_PART(1, "a", 5) RGW_PART(1, "a", 5) "</ListPartsResult>", "InvalidResponse"},
        {LIST_OPEN RGW_PART(0, "a", 5) "</ListPartsResult>", "InvalidResponse"},
        {LIST_OPEN RGW_PART(10001, "a", 5) "</ListPartsResult>", "InvalidResponse"},
        {LIST_OPEN RGW_PART(1, "a", -5) "</ListPartsResult>", "InvalidResponse"},
        {LIST_OPEN RGW_PART(1, "a", 1e3) "</ListPartsResult>", "InvalidResponse"},
        {LIST_OPEN "<Part><PartNumber>1</PartNumber><Size>5</Size></Part></ListPartsResult>", "InvalidResponse"},
        {LIST_OPEN RGW_PART(1, "a", 5) RGW_PART(2, "b", 5) RGW_PART(3, "c", 5) "</ListPartsResult>",
         "TooManyParts"}, /* room for 2 below */
        {"", "InvalidResponse"},
        {XML_HEAD "<ListBucketResult></ListBucketResult>", "InvalidResponse"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *code = list_once(OK_XML, cases[i].body, 2, &count);
        if (strcmp(code, cases[i].code) != 0 || count != 0)
            fail_msg("case %zu: code '%s' count %zu, expected '%s' and 0", i, code, count, cases[i].code);
    }
    /* An ETag that does not fit fm_s3_part_t. */
    char body[1024];
    char long_etag[FM_S3_ETAG_MAX + 1];
    memset(long_etag, 'e', sizeof(long_etag) - 1);
    long_etag[sizeof(long_etag) - 1] = '\0';
    snprintf(body, sizeof(body),
             LIST_OPEN "<Part><PartNumber>1</PartNumber><ETag>%s</ETag><Size>1</Size></Part></ListPartsResult>",
             long_etag);
    assert_string_equal(list_once(OK_XML, body, 2, &count), "InvalidResponse");

    /* A page longer than the client keeps is cut: refused rather than read as a shorter list. */
    size_t big = 1100 * 1024;
    const char *start = LIST_OPEN RGW_PART(1, "a", 5), *end = "</ListPartsResult>";
    char *huge = malloc(strlen(start) + big + strlen(end) + 1);
    assert_non_null(huge);
    size_t n = strlen(start);
    memcpy(huge, start, n);
    memset(huge + n, ' ', big);
    strcpy(huge + n + big, end);
    assert_string_equal(list_once(OK_XML, huge, 2, &count), "InvalidResponse");
    free(huge);

    assert_string_equal(list_once("HTTP/1.1 404 Not Found\r\n",
                                  XML_HEAD "<Error><Code>NoSuchUpload</Code><Message></Message></Error>", 2, &count),
                        "NoSuchUpload");
    assert_int_equal(count, 0);

    /* Refused before sending: nothing listens on that port, and the code is not ConnectFailed. */
    fm_s3_t *s3 = s3_for_port(1, 1000);
    fm_s3_result_t res;
    fm_s3_part_t parts[1];
    assert_int_equal(fm_s3_list_parts(s3, "k", "", parts, 1, &count, &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    assert_int_equal(fm_s3_list_parts(s3, "k", "u", parts, 0, &count, &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    assert_int_equal(fm_s3_list_parts(s3, "", "u", parts, 1, &count, &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    fm_s3_free(s3);
}

/* ---- CompleteMultipartUpload ---------------------------------------------------------------------------------- */

static void sha256_hex(const char *data, size_t len, char hex[65])
{
    unsigned char digest[32];
    unsigned int digest_len = 0;
    assert_int_equal(EVP_Digest(data, len, digest, &digest_len, EVP_sha256(), NULL), 1);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
}

/*
 * Reads `xml` with Python's XML parser (an independent reader of our escaping) and returns its parts as lines
 * "number etag"; "" if it does not parse or is not a CompleteMultipartUpload.
 */
static char *parts_by_python(const char *xml, char *out, size_t size)
{
    char path[] = "/tmp/fm-test-s3-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, xml, strlen(xml)), (ssize_t)strlen(xml));
    close(fd);
    char command[512];
    snprintf(command, sizeof(command),
             "/usr/bin/python3 -c 'import sys, xml.etree.ElementTree as E\n"
             "ns = \"{http://s3.amazonaws.com/doc/2006-03-01/}\"\n"
             "root = E.parse(sys.argv[1]).getroot()\n"
             "assert root.tag == ns + \"CompleteMultipartUpload\"\n"
             "for p in root.findall(ns + \"Part\"):\n"
             "    print(p.find(ns + \"PartNumber\").text, p.find(ns + \"ETag\").text)' %s",
             path);
    FILE *p = popen(command, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    unlink(path);
    if (status != 0)
        out[0] = '\0';
    return out;
}

static void test_s3_complete_request_on_the_wire(void **state)
{
    listener_t l;
    /* The AWS API reference's example answer. */
    listener_start(&l, OK_XML,
                   XML_HEAD "<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                            "<Location>http://Example-Bucket.s3.amazonaws.com/Example-Object</Location>"
                            "<Bucket>Example-Bucket</Bucket><Key>Example-Object</Key>"
                            "<ETag>&quot;3858f62230ac3c915f300c664312c11f-9&quot;</ETag>"
                            "</CompleteMultipartUploadResult>");
    fm_s3_t *s3 = s3_for_port(l.port, 5000);
    fm_s3_part_t parts[3] = {{.part_number = 1, .etag = "\"a54357aff0632cce46d942af68356b38\""},
                             {.part_number = 2, .etag = "0c78aef83f66abc1fa1e8477f296d394"},
                             {.part_number = 10000, .etag = "\"a&b<c>'d\""}};
    fm_s3_result_t res;
    assert_int_equal(fm_s3_complete_multipart(s3, "big/ü k", "2~up/+=", parts, 3, &res), 0);
    listener_stop(&l);
    assert_int_equal(res.status, 200);
    assert_string_equal(res.code, "");
    assert_string_equal(res.etag, "\"3858f62230ac3c915f300c664312c11f-9\"");

    const char *body = captured_body(l.request);
    assert_string_equal(body, "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                              "<Part><PartNumber>1</PartNumber><ETag>\"a54357aff0632cce46d942af68356b38\"</ETag></Part>"
                              "<Part><PartNumber>2</PartNumber><ETag>\"0c78aef83f66abc1fa1e8477f296d394\"</ETag></Part>"
                              "<Part><PartNumber>10000</PartNumber><ETag>\"a&amp;b&lt;c&gt;&apos;d\"</ETag></Part>"
                              "</CompleteMultipartUpload>");
    char read_back[512];
    assert_string_equal(parts_by_python(body, read_back, sizeof(read_back)),
                        "1 \"a54357aff0632cce46d942af68356b38\"\n2 \"0c78aef83f66abc1fa1e8477f296d394\"\n"
                        "10000 \"a&b<c>'d\"\n");
    assert_non_null(strstr(l.request, "POST /fm-bucket/big/%C3%BC%20k?uploadId=2~up%2F%2B%3D HTTP/1.1\r\n"));
    char value[512], hash[65];
    sha256_hex(body, strlen(body), hash);
    assert_string_equal(captured_header(l.request, "x-amz-content-sha256", value, sizeof(value)), hash);
    assert_string_equal(captured_header(l.request, "Content-Type", value, sizeof(value)), "application/xml");
    assert_non_null(captured_header(l.request, "Authorization", value, sizeof(value)));
    assert_non_null(strstr(value, "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, "));
    fm_s3_free(s3);
}

/* Answers S3 and Ceph RGW give to CompleteMultipartUpload, on one keep-alive connection. */
static void test_s3_complete_answers(void **state)
{
    static const struct {
        const char *head, *body;
        int rc;
        long status;
        const char *code, *etag;
    } cases[] = {
        /* AWS: the 200 goes out when the work starts; whitespace keeps the connection alive; then the failure. */
        {OK_XML,
         "\n \n" XML_HEAD "<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try "
         "again.</Message><RequestId>656c76696e6727732072657175657374</RequestId>"
         "<HostId>Uuag1LuByRx9e6j5Onimru9pO4ZVKnJ2Qz7/C1NPcfTWAtRPfTaOFg==</HostId></Error>",
         -1, 200, "InternalError", ""},
        {OK_XML,
         XML_HEAD "<Error><Code>InvalidPart</Code><Message>One or more of the specified parts could not be "
                  "found.</Message></Error>",
         -1, 200, "InvalidPart", ""},
        /* Ceph RGW 16 (captured): 400 with an empty <Message>; a success with an unquoted ETag. */
        {"HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n",
         XML_HEAD "<Error><Code>EntityTooSmall</Code><Message></Message><RequestId>tx0</RequestId>"
                  "<HostId>1003-default-default</HostId></Error>",
         -1, 400, "EntityTooSmall", ""},
        {"HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n",
         XML_HEAD "<Error><Code>InvalidPartOrder</Code></Error>", -1, 400, "InvalidPartOrder", ""},
        {"HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\n",
         XML_HEAD "<Error><Code>NoSuchUpload</Code></Error>", -1, 404, "NoSuchUpload", ""},
        {OK_XML,
         XML_HEAD "<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Location>"
                  "http://127.0.0.1:25505/files-manager/incoming/raw.bin</Location><Bucket>files-manager</Bucket>"
                  "<Key>incoming/raw.bin</Key><ETag>e5a8c5272b26fc10581a21089559b006-2</ETag>"
                  "</CompleteMultipartUploadResult>",
         0, 200, "", "e5a8c5272b26fc10581a21089559b006-2"},
        /* A 200 with no result: the outcome is unknown, never a success. */
        {OK_XML, "", -1, 200, "InvalidResponse", ""},
        {"HTTP/1.1 200 OK\r\nETag: \"header-etag\"\r\n", XML_HEAD "<CompleteMultipartUploadResult><ETag></ETag>", -1,
         200, "InvalidResponse", ""}, /* cut short */
        /* The empty <ETag> some RGW versions send: a success; the header ETag is not the object's. */
        {"HTTP/1.1 200 OK\r\nETag: \"header-etag\"\r\n",
         XML_HEAD "<CompleteMultipartUploadResult><ETag></ETag></CompleteMultipartUploadResult>", 0, 200, "", ""},
    };
    size_t n = sizeof(cases) / sizeof(cases[0]);
    assert_true(n <= MAX_EXCHANGES);
    listener_t l;
    listener_init(&l);
    for (size_t i = 0; i < n; i++)
        listener_answer(&l, cases[i].head, cases[i].body);
    listener_go(&l);
    fm_s3_t *s3 = s3_for_port(l.port, 5000);
    fm_s3_part_t parts[2] = {{.part_number = 1, .etag = "\"e1\""}, {.part_number = 2, .etag = "\"e2\""}};
    for (size_t i = 0; i < n; i++) {
        fm_s3_result_t res;
        int rc = fm_s3_complete_multipart(s3, "k", "u", parts, 2, &res);
        if (rc != cases[i].rc || res.status != cases[i].status || strcmp(res.code, cases[i].code) != 0 ||
            strcmp(res.etag, cases[i].etag) != 0)
            fail_msg("case %zu: rc %d status %ld code '%s' etag '%s'", i, rc, res.status, res.code, res.etag);
        if (rc != 0)
            assert_true(res.message[0] != '\0');
        if (i == 0) {
            assert_string_equal(res.message, "We encountered an internal error. Please try again.");
            assert_string_equal(res.request_id, "656c76696e6727732072657175657374");
        }
    }
    listener_stop(&l);
    assert_int_equal(l.served, n);
    fm_s3_free(s3);
}

/* What is refused before anything is sent (port 1: a request would fail with ConnectFailed instead). */
static void test_s3_complete_refusals(void **state)
{
    fm_s3_t *s3 = s3_for_port(1, 1000);
    fm_s3_result_t res;
    fm_s3_part_t parts[3] = {{1, "\"e1\"", 0}, {2, "e2", 0}, {3, "\"e3\"", 0}};
    static const char *const bad_etags[] = {"",    "\"\"",    "\"",   "\"e1",   "e1\"",  "e\"1",
                                            "e 1", "\"e 1\"", "e\t1", "e\r\n1", "e\x7f", "W/\"e1\""};
    for (size_t i = 0; i < sizeof(bad_etags) / sizeof(bad_etags[0]); i++) {
        strcpy(parts[1].etag, bad_etags[i]);
        assert_int_equal(fm_s3_complete_multipart(s3, "k", "u", parts, 3, &res), -1);
        if (strcmp(res.code, "InvalidArgument") != 0)
            fail_msg("ETag '%s': code %s", bad_etags[i], res.code);
        assert_int_equal(res.status, 0);
    }
    strcpy(parts[1].etag, "e2");
    int bad_numbers[] = {0, -1, 10001};
    for (size_t i = 0; i < 3; i++) {
        parts[0].part_number = bad_numbers[i];
        assert_int_equal(fm_s3_complete_multipart(s3, "k", "u", parts, 1, &res), -1);
        assert_string_equal(res.code, "InvalidArgument");
    }
    parts[0].part_number = 1;
    /* Not ascending, or a part twice: S3's InvalidPartOrder, refused here because Ceph RGW does not. */
    parts[1].part_number = 1;
    assert_int_equal(fm_s3_complete_multipart(s3, "k", "u", parts, 3, &res), -1);
    assert_string_equal(res.code, "InvalidPartOrder");
    assert_int_equal(res.status, 0);
    parts[0].part_number = 3;
    parts[1].part_number = 2;
    parts[2].part_number = 4;
    assert_int_equal(fm_s3_complete_multipart(s3, "k", "u", parts, 3, &res), -1);
    assert_string_equal(res.code, "InvalidPartOrder");

    assert_int_equal(fm_s3_complete_multipart(s3, "k", "u", parts, 0, &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    assert_int_equal(fm_s3_complete_multipart(s3, "k", "u", NULL, 1, &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    assert_int_equal(fm_s3_complete_multipart(s3, "k", "u", parts, FM_S3_MAX_PARTS + 1, &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    assert_int_equal(fm_s3_complete_multipart(s3, "k", "", parts, 1, &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    assert_int_equal(fm_s3_abort_multipart(s3, "k", NULL, &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    fm_s3_free(s3);
}

/* ---- ListObjectsV2 --------------------------------------------------------------------------------------------- */

#define BUCKET_OPEN                                                                                                    \
    XML_HEAD "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>fm-bucket</Name>"              \
             "<Prefix>incoming%2F</Prefix><MaxKeys>200</MaxKeys><EncodingType>url</EncodingType>"
/* A <Contents> as Ceph RGW 16 lists it with encoding-type=url. */
#define RGW_OBJECT(key, date, size)                                                                                    \
    "<Contents><Key>" key "</Key><LastModified>" date "</LastModified><ETag>&quot;9dd4e461268c8034f5c8564e155c67a6"    \
    "&quot;</ETag><Size>" #size "</Size><StorageClass>STANDARD</StorageClass><Owner><ID>fm</ID>"                       \
    "<DisplayName>fm</DisplayName></Owner><Type>Normal</Type></Contents>"

static void test_s3_list_objects_on_the_wire(void **state)
{
    listener_t l;
    listener_start(&l, OK_XML,
                   BUCKET_OPEN
                   "<StartAfter>incoming%2Fa+b</StartAfter><IsTruncated>true</IsTruncated>"
                   "<KeyCount>2</KeyCount>" RGW_OBJECT("incoming%2Fb+%26+c%2B%25%0A.txt", "2026-11-23T16:39:13.350Z", 7)
                       RGW_OBJECT("incoming/c", "2024-02-29T12:00:00Z", 0) "</ListBucketResult>");
    fm_s3_t *s3 = s3_for_port(l.port, 5000);
    fm_s3_object_t objects[3];
    size_t count = 99;
    int truncated = 99;
    fm_s3_result_t res;
    assert_int_equal(fm_s3_list_objects(s3, "incoming/", "incoming/a b", 3, objects, 3, &count, &truncated, &res), 0);
    listener_stop(&l);
    assert_string_equal(res.code, "");
    assert_int_equal(count, 2);
    assert_int_equal(truncated, 1);
    assert_string_equal(objects[0].key, "incoming/b & c+%\n.txt"); /* '+' is a space, %2B a '+' */
    assert_int_equal(objects[0].size, 7);
    assert_int_equal(objects[0].last_modified, 1795451953LL); /* Python's calendar.timegm, fraction dropped */
    assert_string_equal(objects[1].key, "incoming/c");
    assert_int_equal(objects[1].size, 0);
    assert_int_equal(objects[1].last_modified, 1709208000LL);

    /* The bucket itself, with the parameters encoded as SigV4 signs them. */
    char line[512];
    snprintf(line, sizeof(line), "%.*s", (int)strcspn(l.request, "\r"), l.request);
    assert_non_null(strstr(line, "GET /fm-bucket?"));
    assert_non_null(strstr(line, "list-type=2"));
    assert_non_null(strstr(line, "encoding-type=url"));
    assert_non_null(strstr(line, "max-keys=3"));
    assert_non_null(strstr(line, "prefix=incoming%2F"));
    assert_non_null(strstr(line, "start-after=incoming%2Fa%20b"));
    fm_s3_free(s3);

    /* No start-after from the start; a store that ignores encoding-type sends plain (XML-escaped) keys. */
    listener_start(&l, OK_XML,
                   XML_HEAD "<ListBucketResult><Name>fm-bucket</Name><IsTruncated>false</IsTruncated>" RGW_OBJECT(
                       "incoming/a+b &amp; &#x1F600;", "1970-01-01T00:00:00Z", 1) "</ListBucketResult>");
    s3 = s3_for_port(l.port, 5000);
    assert_int_equal(fm_s3_list_objects(s3, "incoming/", NULL, 3, objects, 3, &count, &truncated, &res), 0);
    listener_stop(&l);
    assert_null(strstr(l.request, "start-after"));
    assert_int_equal(count, 1);
    assert_int_equal(truncated, 0);
    assert_string_equal(objects[0].key, "incoming/a+b & \xf0\x9f\x98\x80");
    assert_int_equal(objects[0].last_modified, 0);
    /* Refused before sending. */
    assert_int_equal(fm_s3_list_objects(s3, "", "", 0, objects, 3, &count, &truncated, &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    assert_int_equal(fm_s3_list_objects(s3, "", "", 4, objects, 3, &count, &truncated, &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    fm_s3_free(s3);
}

static void test_s3_list_objects_bad_pages(void **state)
{
    /* Every page below must fail with nothing counted: the orphan sweep deletes what it reads. */
    const char *const cases[] = {
        BUCKET_OPEN "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/b", "2026-01-01T00:00:00Z", 1)
            RGW_OBJECT("incoming/a", "2026-01-01T00:00:00Z", 1) "</ListBucketResult>", /* descending */
        BUCKET_OPEN "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/a", "2026-01-01T00:00:00Z", 1)
            RGW_OBJECT("incoming/a", "2026-01-01T00:00:00Z", 1) "</ListBucketResult>", /* twice */
        BUCKET_OPEN "<IsTruncated>false</IsTruncated>" RGW_OBJECT("blobs/a", "2026-01-01T00:00:00Z",
                                                                  1) "</ListBucketResult>", /* outside the prefix */
        BUCKET_OPEN "<IsTruncated>false</IsTruncated>" RGW_OBJECT(
            "incoming/l", "2026-01-01T00:00:00Z", 1) "</ListBucketResult>", /* not after start-after "incoming/m" */
        BUCKET_OPEN "<IsTruncated>true</IsTruncated></ListBucketResult>",   /* truncated, nothing to go on from */
        BUCKET_OPEN "<IsTruncated>maybe</IsTruncated></ListBucketResult>",
        BUCKET_OPEN "</ListBucketResult>", /* no IsTruncated */
        BUCKET_OPEN "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/x", "2026-01-01T00:00:00Z", 1), /* cut */
        BUCKET_OPEN "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/x%00y", "2026-01-01T00:00:00Z",
                                                                  1) "</ListBucketResult>",
        BUCKET_OPEN
        "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/x%zz", "2026-01-01T00:00:00Z", 1) "</ListBucketResult>",
        BUCKET_OPEN
        "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/x%4", "2026-01-01T00:00:00Z", 1) "</ListBucketResult>",
        BUCKET_OPEN
        "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/x", "2023-02-29T00:00:00Z", 1) "</ListBucketResult>",
        BUCKET_OPEN
        "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/x", "2026-01-01 00:00:00Z", 1) "</ListBucketResult>",
        BUCKET_OPEN
        "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/x", "2026-01-01T24:00:00Z", 1) "</ListBucketResult>",
        BUCKET_OPEN "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/x", "2026-01-01T00:00:00+01:00",
                                                                  1) "</ListBucketResult>",
        BUCKET_OPEN
        "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/x", "2026-01-01T00:00:00Z", -1) "</ListBucketResult>",
        BUCKET_OPEN "<IsTruncated>false</IsTruncated><Contents><Key>incoming/x</Key><Size>1</Size></Contents>"
                    "</ListBucketResult>", /* no LastModified */
        XML_HEAD "<ListBucketResult><EncodingType>base64</EncodingType><IsTruncated>false</IsTruncated>"
                 "</ListBucketResult>",
        BUCKET_OPEN "<IsTruncated>false</IsTruncated>" RGW_OBJECT("incoming/a", "2026-01-01T00:00:00Z",
                                                                  1) RGW_OBJECT("incoming/b", "2026-01-01T00:00:00Z", 1)
            RGW_OBJECT("incoming/c", "2026-01-01T00:00:00Z", 1) "</ListBucketResult>", /* more than the 2 asked for */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fm_s3_object_t objects[2];
        size_t count = 99;
        int truncated = 99;
        fm_s3_result_t res;
        memset(&res, 0, sizeof(res));
        const char *start_after = i == 3 ? "incoming/m" : "";
        int rc = fm_s3_list_objects_parse(cases[i], strlen(cases[i]), "incoming/", start_after, objects, 2, &count,
                                          &truncated, &res);
        if (rc != -1 || count != 0 || truncated != 0 || strcmp(res.code, "InvalidResponse") != 0)
            fail_msg("case %zu: rc %d, count %zu, code '%s'", i, rc, count, res.code);
    }
    /* A key of 1024 bytes is one; 1025 is not. */
    char page[8192], key[1100];
    for (size_t n = 1024; n <= 1025; n++) {
        memset(key, 'k', n);
        key[n] = '\0';
        snprintf(page, sizeof(page),
                 "%s<IsTruncated>false</IsTruncated><Contents><Key>%s</Key><LastModified>2026-01-01T00:00:00Z"
                 "</LastModified><Size>1</Size></Contents></ListBucketResult>",
                 BUCKET_OPEN, key);
        fm_s3_object_t objects[1];
        size_t count;
        int truncated;
        fm_s3_result_t res;
        assert_int_equal(fm_s3_list_objects_parse(page, strlen(page), "", "", objects, 1, &count, &truncated, &res),
                         n == 1024 ? 0 : -1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_s3_xml_text),
        cmocka_unit_test(test_s3_xml_next),
        cmocka_unit_test(test_s3_list_parts_pages),
        cmocka_unit_test(test_s3_list_parts_bad_answers),
        cmocka_unit_test(test_s3_complete_request_on_the_wire),
        cmocka_unit_test(test_s3_complete_answers),
        cmocka_unit_test(test_s3_complete_refusals),
        cmocka_unit_test(test_s3_list_objects_on_the_wire),
        cmocka_unit_test(test_s3_list_objects_bad_pages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
