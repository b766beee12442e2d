/*
 * Tests of common/s3.c and s3_calls.c that need no S3 server: the requests the client puts on the wire and how it
 * reads the answers, captured and given by a local listener (s3_listener.h), and how it reports transport failures.
 * The XML side (reader, ListParts and ListObjectsV2 pages, CompleteMultipartUpload) is in test_s3_xml.c; the live
 * checks against Ceph RGW are in tests/integration/test_s3_client.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "s3_listener.h"

/* ---- requests on the wire, errors ---------------------------------------------------------------------------- */

static void test_s3_put_request_on_the_wire(void **state)
{
    listener_t l;
    listener_start(&l, "HTTP/1.1 200 OK\r\nETag: \"5eb63bbbe01eeed093cb22bb8f5acdc3\"\r\nx-amz-request-id: tx-put\r\n",
                   "");
    fm_s3_t *s3 = s3_for_port(l.port, 5000);
    fm_s3_result_t res;
    assert_int_equal(fm_s3_put_object(s3, "in/ü a+b", "hello world", 11, "text/plain", &res), 0);
    listener_stop(&l);
    assert_int_equal(res.status, 200);
    assert_string_equal(res.code, "");
    assert_string_equal(res.etag, "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"");
    assert_string_equal(res.request_id, "tx-put");

    char value[512], host[64];
    assert_non_null(strstr(l.request, "PUT /fm-bucket/in/%C3%BC%20a%2Bb HTTP/1.1\r\n"));
    snprintf(host, sizeof(host), "127.0.0.1:%d", l.port);
    assert_string_equal(captured_header(l.request, "Host", value, sizeof(value)), host);
    /* sha256("hello world"), the body actually sent, and its MD5 in base64. */
    assert_string_equal(captured_header(l.request, "x-amz-content-sha256", value, sizeof(value)),
                        "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    assert_string_equal(captured_header(l.request, "Content-MD5", value, sizeof(value)), "XrY7u+Ae7tCTyyK7j1rNww==");
    assert_string_equal(captured_header(l.request, "Content-Type", value, sizeof(value)), "text/plain");
    assert_non_null(captured_header(l.request, "Authorization", value, sizeof(value)));
    assert_non_null(strstr(value, "SignedHeaders=content-md5;content-type;host;x-amz-content-sha256;x-amz-date, "));
    assert_null(captured_header(l.request, "Expect", value, sizeof(value)));
    assert_non_null(strstr(l.request, "\r\n\r\nhello world"));
    fm_s3_free(s3);
}

static void test_s3_error_answers(void **state)
{
    listener_t l;
    listener_start(&l, "HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\n",
                   "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchUpload</Code>"
                   "<Message>gone</Message><RequestId>tx-abort</RequestId><HostId>h</HostId></Error>");
    fm_s3_t *s3 = s3_for_port(l.port, 5000);
    fm_s3_result_t res;
    assert_int_equal(fm_s3_abort_multipart(s3, "big/new", "2~Zx/y+z==", &res), -1);
    listener_stop(&l);
    assert_non_null(strstr(l.request, "DELETE /fm-bucket/big/new?uploadId=2~Zx%2Fy%2Bz%3D%3D HTTP/1.1\r\n"));
    assert_int_equal(res.status, 404);
    assert_string_equal(res.code, "NoSuchUpload");
    assert_string_equal(res.message, "gone");
    assert_string_equal(res.request_id, "tx-abort");

    /* HEAD: no body, so the status names the error. */
    listener_start(&l, "HTTP/1.1 404 Not Found\r\n", "");
    fm_s3_free(s3);
    s3 = s3_for_port(l.port, 5000);
    assert_int_equal(fm_s3_head_object(s3, "missing", &res), -1);
    listener_stop(&l);
    assert_non_null(strstr(l.request, "HEAD /fm-bucket/missing HTTP/1.1\r\n"));
    assert_int_equal(res.status, 404);
    assert_string_equal(res.code, "NotFound");
    assert_string_equal(res.message, "S3 answered HTTP 404 NotFound");
    assert_int_equal(res.content_length, -1);

    /* CreateMultipartUpload: the upload id comes from the XML answer. */
    listener_start(&l, "HTTP/1.1 200 OK\r\n",
                   "<InitiateMultipartUploadResult><Bucket>fm-bucket</Bucket><Key>k</Key>"
                   "<UploadId>2~abc&amp;def</UploadId></InitiateMultipartUploadResult>");
    fm_s3_free(s3);
    s3 = s3_for_port(l.port, 5000);
    assert_int_equal(fm_s3_create_multipart(s3, "k", NULL, &res), 0);
    listener_stop(&l);
    assert_non_null(strstr(l.request, "POST /fm-bucket/k?uploads= HTTP/1.1\r\n"));
    char value[64];
    assert_null(captured_header(l.request, "Content-Type", value, sizeof(value)));
    assert_string_equal(res.upload_id, "2~abc&def");

    assert_int_equal(fm_s3_delete_object(s3, "", &res), -1);
    assert_string_equal(res.code, "InvalidArgument");
    fm_s3_free(s3);
}

/* ---- fm_s3_get_object_announced: the answer's headers before its body ---- */

typedef struct {
    int headers_calls, writes_before_headers, stop_at_headers;
    fm_s3_result_t head;
    char body[64];
    size_t body_len;
} announced_t;

static int on_announced_headers(void *ud, const fm_s3_result_t *head)
{
    announced_t *a = ud;
    a->headers_calls++;
    a->head = *head;
    return a->stop_at_headers;
}

static int on_announced_body(void *ud, const void *data, size_t len)
{
    announced_t *a = ud;
    if (a->headers_calls == 0)
        a->writes_before_headers++;
    if (a->body_len + len <= sizeof(a->body)) {
        memcpy(a->body + a->body_len, data, len);
        a->body_len += len;
    }
    return 0;
}

static void get_announced(const char *head, const char *body, announced_t *a, int expect_rc, fm_s3_result_t *res)
{
    listener_t l;
    listener_start(&l, head, body);
    fm_s3_t *s3 = s3_for_port(l.port, 5000);
    assert_int_equal(fm_s3_get_object_announced(s3, "k", on_announced_headers, on_announced_body, a, res), expect_rc);
    listener_stop(&l);
    assert_non_null(strstr(l.request, "GET /fm-bucket/k HTTP/1.1\r\n"));
    fm_s3_free(s3);
}

static void test_s3_get_announces_headers_first(void **state)
{
    fm_s3_result_t res;
    announced_t a = {0};
    get_announced("HTTP/1.1 200 OK\r\nETag: \"e1\"\r\nContent-Type: image/png\r\n", "hello", &a, 0, &res);
    assert_int_equal(a.headers_calls, 1);
    assert_int_equal(a.writes_before_headers, 0);
    assert_int_equal(a.head.status, 200);
    assert_int_equal(a.head.content_length, 5);
    assert_string_equal(a.head.etag, "\"e1\"");
    assert_string_equal(a.head.content_type, "image/png");
    assert_int_equal(a.body_len, 5);
    assert_memory_equal(a.body, "hello", 5);

    /* an empty object has no body call: the headers are announced all the same */
    announced_t empty = {0};
    get_announced("HTTP/1.1 200 OK\r\nETag: \"e0\"\r\n", "", &empty, 0, &res);
    assert_int_equal(empty.headers_calls, 1);
    assert_int_equal(empty.head.content_length, 0);
    assert_int_equal(empty.body_len, 0);

    /* an error answer is not the object: no headers call, no body */
    announced_t missing = {0};
    get_announced("HTTP/1.1 404 Not Found\r\n", "<Error><Code>NoSuchKey</Code></Error>", &missing, -1, &res);
    assert_int_equal(missing.headers_calls, 0);
    assert_int_equal(missing.body_len, 0);
    assert_string_equal(res.code, "NoSuchKey");

    /* the headers function may stop the transfer before any byte is written */
    announced_t stopped = {.stop_at_headers = 1};
    get_announced("HTTP/1.1 200 OK\r\n", "hello", &stopped, -1, &res);
    assert_int_equal(stopped.headers_calls, 1);
    assert_int_equal(stopped.body_len, 0);
    assert_string_equal(res.code, "Aborted");
    announced_t stopped_empty = {.stop_at_headers = 1};
    get_announced("HTTP/1.1 200 OK\r\n", "", &stopped_empty, -1, &res);
    assert_string_equal(res.code, "Aborted");
}

/* Virtual-hosted style: the bucket moves into Host (signed and sent alike) and out of the path. */
static void test_s3_virtual_hosted(void **state)
{
    listener_t l;
    listener_start(&l, "HTTP/1.1 200 OK\r\n", "");
    char endpoint[64], host[64], value[128];
    snprintf(endpoint, sizeof(endpoint), "http://localhost:%d", l.port);
    fm_s3_config_t cfg = {.endpoint = endpoint,
                          .bucket = "fm-bucket",
                          .access_key = DOC_ACCESS,
                          .secret_key = DOC_SECRET,
                          .virtual_hosted = 1,
                          .connect_timeout_ms = 2000};
    char err[128];
    fm_s3_t *s3 = fm_s3_new(&cfg, err, sizeof(err));
    assert_non_null(s3);
    fm_s3_result_t res;
    /* curl resolves *.localhost to the loopback address itself. */
    assert_int_equal(fm_s3_delete_object(s3, "a b", &res), 0);
    listener_stop(&l);
    assert_non_null(strstr(l.request, "DELETE /a%20b HTTP/1.1\r\n"));
    snprintf(host, sizeof(host), "fm-bucket.localhost:%d", l.port);
    assert_string_equal(captured_header(l.request, "Host", value, sizeof(value)), host);
    fm_s3_free(s3);
    cfg.bucket = "dotted.bucket"; /* would not match a TLS wildcard certificate: refused */
    assert_null(fm_s3_new(&cfg, err, sizeof(err)));
}

static void test_s3_transport_failures(void **state)
{
    /* Nothing listens on a port we just released: ConnectFailed, status 0. */
    listener_t l;
    listener_start(&l, NULL, NULL);
    int port = l.port;
    listener_stop(&l);
    fm_s3_t *s3 = s3_for_port(port, 2000);
    fm_s3_result_t res;
    assert_int_equal(fm_s3_head_bucket(s3, &res), -1);
    assert_int_equal(res.status, 0);
    assert_string_equal(res.code, "ConnectFailed");
    fm_s3_free(s3);

    /* Connected, but no answer within the timeout. */
    listener_start(&l, NULL, NULL);
    s3 = s3_for_port(l.port, 300);
    assert_int_equal(fm_s3_head_bucket(s3, &res), -1);
    assert_int_equal(res.status, 0);
    assert_string_equal(res.code, "Timeout");
    fm_s3_free(s3); /* closes the connection, which ends the listener */
    listener_stop(&l);

    char err[128];
    fm_s3_config_t bad = {.endpoint = "http://127.0.0.1:7480/x", .bucket = "b", .access_key = "a", .secret_key = "s"};
    assert_null(fm_s3_new(&bad, err, sizeof(err)));
    assert_non_null(strstr(err, "path"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_s3_put_request_on_the_wire),
        cmocka_unit_test(test_s3_error_answers),
        cmocka_unit_test(test_s3_get_announces_headers_first),
        cmocka_unit_test(test_s3_transport_failures),
        cmocka_unit_test(test_s3_virtual_hosted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
