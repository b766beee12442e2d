/* The S3 calls (see s3.h): each checks its arguments, sends one request (s3.c) and reads the answer. */
#include "s3.h"
#include "s3_internal.h"

#include "sigv4.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* A ListParts page of LIST_PARTS_PAGE parts is ~200 bytes a part on AWS and RGW: room for four times that. */
#define LIST_PARTS_PAGE 1000
#define MAX_LIST_PARTS_BODY (1024 * 1024)

/* ---- the calls --------------------------------------------------------------------------------------------- */

/* A call refused before anything is sent: "InvalidArgument" and why. */
__attribute__((format(printf, 2, 3))) int fm_s3_refuse(fm_s3_result_t *res, const char *fmt, ...)
{
    memset(res, 0, sizeof(*res));
    res->content_length = -1;
    strcpy(res->code, "InvalidArgument");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof(res->message), fmt, ap);
    va_end(ap);
    return -1;
}

static int need_key(const char *key, fm_s3_result_t *res)
{
    if (key != NULL && *key != '\0')
        return 0;
    return fm_s3_refuse(res, "an object key is required");
}

static int need_upload(const char *key, const char *upload_id, fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    if (upload_id == NULL || *upload_id == '\0')
        return fm_s3_refuse(res, "an upload id is required");
    return 0;
}

/* A 2xx answer that is not what the call needs. */
__attribute__((format(printf, 2, 3))) int fm_s3_invalid_response(fm_s3_result_t *res, const char *fmt, ...)
{
    strcpy(res->code, "InvalidResponse");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof(res->message), fmt, ap);
    va_end(ap);
    res->etag[0] = res->content_type[0] = '\0';
    res->content_length = -1;
    return -1;
}

int fm_s3_head_bucket(fm_s3_t *s3, fm_s3_result_t *res)
{
    return fm_s3_perform(s3, "HEAD", NULL, NULL, 0, NULL, 0, NULL, 0, res);
}

int fm_s3_head_object(fm_s3_t *s3, const char *key, fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    return fm_s3_perform(s3, "HEAD", key, NULL, 0, NULL, 0, NULL, 0, res);
}

int fm_s3_put_object(fm_s3_t *s3, const char *key, const void *data, size_t len, const char *content_type,
                     fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    /* Content-MD5 (RFC 1864, base64 of the MD5): the store checks the body and answers BadDigest if it differs. */
    unsigned char md5[16];
    unsigned int md5_len = 0;
    if (EVP_Digest(data != NULL ? data : "", data != NULL ? len : 0, md5, &md5_len, EVP_md5(), NULL) != 1)
        abort();
    char md5_b64[32];
    EVP_EncodeBlock((unsigned char *)md5_b64, md5, 16);
    fm_sigv4_header_t headers[2] = {{"Content-MD5", md5_b64}, {"Content-Type", content_type}};
    size_t header_count = content_type != NULL && *content_type != '\0' ? 2 : 1;
    return fm_s3_perform(s3, "PUT", key, NULL, 0, headers, header_count, data != NULL ? data : "", len, res);
}

int fm_s3_delete_object(fm_s3_t *s3, const char *key, fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    return fm_s3_perform(s3, "DELETE", key, NULL, 0, NULL, 0, NULL, 0, res);
}

int fm_s3_create_multipart(fm_s3_t *s3, const char *key, const char *content_type, fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    fm_sigv4_param_t params[1] = {{"uploads", ""}};
    fm_sigv4_header_t headers[1] = {{"Content-Type", content_type}};
    size_t header_count = content_type != NULL && *content_type != '\0' ? 1 : 0;
    if (fm_s3_perform(s3, "POST", key, params, 1, headers, header_count, "", 0, res) != 0)
        return -1;
    if (s3->body == NULL ||
        fm_s3_xml_text(s3->body, s3->body_len, "UploadId", res->upload_id, sizeof(res->upload_id)) != 0 ||
        res->upload_id[0] == '\0')
        return fm_s3_invalid_response(res, "CreateMultipartUpload answered without an UploadId");
    return 0;
}

int fm_s3_abort_multipart(fm_s3_t *s3, const char *key, const char *upload_id, fm_s3_result_t *res)
{
    if (need_upload(key, upload_id, res) != 0)
        return -1;
    fm_sigv4_param_t params[1] = {{"uploadId", upload_id}};
    return fm_s3_perform(s3, "DELETE", key, params, 1, NULL, 0, NULL, 0, res);
}

/* ---- multipart: list parts, complete ----------------------------------------------------------------------- */

int fm_s3_body_has(const fm_s3_t *s3, const char *text)
{
    return s3->body != NULL && fm_s3_find_bytes(s3->body, s3->body_len, text, strlen(text)) != NULL;
}

int fm_s3_list_parts(fm_s3_t *s3, const char *key, const char *upload_id, fm_s3_part_t *parts, size_t max_parts,
                     size_t *count, fm_s3_result_t *res)
{
    if (count != NULL)
        *count = 0;
    if (need_upload(key, upload_id, res) != 0)
        return -1;
    if (parts == NULL || count == NULL || max_parts == 0)
        return fm_s3_refuse(res, "no room for parts");
    int marker = 0;
    char page_size[16], marker_text[16];
    snprintf(page_size, sizeof(page_size), "%d", LIST_PARTS_PAGE);
    /* Every page must move the marker forward and markers stop at 10000: at most 10000 pages, however it answers. */
    for (;;) {
        snprintf(marker_text, sizeof(marker_text), "%d", marker);
        fm_sigv4_param_t params[3] = {
            {"uploadId", upload_id}, {"max-parts", page_size}, {"part-number-marker", marker_text}};
        s3->body_limit = MAX_LIST_PARTS_BODY;
        int rc = fm_s3_perform(s3, "GET", key, params, marker > 0 ? 3 : 2, NULL, 0, NULL, 0, res);
        s3->body_limit = FM_S3_MAX_RESPONSE_BODY;
        if (rc != 0)
            break;
        /* A cut page would silently lose the parts after the cut, and IsTruncated with them. */
        if (s3->body == NULL || s3->body_truncated || !fm_s3_body_has(s3, "</ListPartsResult>")) {
            fm_s3_invalid_response(res, "ListParts: the answer is not a whole ListPartsResult");
            break;
        }
        if (fm_s3_read_parts_page(s3->body, s3->body_len, marker, parts, max_parts, count, res) != 0)
            break;
        char truncated[16] = "", next[16] = "";
        fm_s3_xml_text(s3->body, s3->body_len, "IsTruncated", truncated, sizeof(truncated));
        if (strcmp(truncated, "true") != 0)
            return 0;
        long long next_marker = -1;
        if (fm_s3_xml_text(s3->body, s3->body_len, "NextPartNumberMarker", next, sizeof(next)) == 0)
            next_marker = fm_s3_parse_count(next, 5);
        if (next_marker <= marker || next_marker >= FM_S3_MAX_PARTS ||
            (*count > 0 && next_marker < parts[*count - 1].part_number)) {
            fm_s3_invalid_response(res, "ListParts: truncated page with NextPartNumberMarker '%s' after %d", next,
                                   marker);
            break;
        }
        marker = (int)next_marker;
    }
    *count = 0;
    return -1;
}

/* A failure after a 200 comes as an <Error> body with whitespace before it (s3_internal.h). */
int fm_s3_failed_after_ok(fm_s3_t *s3, fm_s3_result_t *res)
{
    const char *inner;
    size_t inner_len, offset = 0;
    if (s3->body == NULL || fm_s3_xml_next(s3->body, s3->body_len, "Error", &offset, &inner, &inner_len) != 0)
        return 0;
    fm_s3_read_error_document(s3, res);
    return 1;
}

int fm_s3_complete_multipart(fm_s3_t *s3, const char *key, const char *upload_id, const fm_s3_part_t *parts,
                             size_t count, fm_s3_result_t *res)
{
    if (need_upload(key, upload_id, res) != 0)
        return -1;
    if (parts == NULL || count == 0 || count > FM_S3_MAX_PARTS)
        return fm_s3_refuse(res, "1 to %d parts are required, not %zu", FM_S3_MAX_PARTS, parts == NULL ? 0 : count);
    char *body;
    size_t body_len;
    if (fm_s3_complete_multipart_body(parts, count, &body, &body_len, res) != 0)
        return -1;

    fm_sigv4_param_t params[1] = {{"uploadId", upload_id}};
    fm_sigv4_header_t headers[1] = {{"Content-Type", "application/xml"}};
    int rc = fm_s3_perform(s3, "POST", key, params, 1, headers, 1, body, body_len, res);
    free(body);
    if (rc != 0)
        return -1;
    if (fm_s3_failed_after_ok(s3, res))
        return -1;
    if (!fm_s3_body_has(s3, "</CompleteMultipartUploadResult>"))
        return fm_s3_invalid_response(res, "CompleteMultipartUpload answered %ld without a result", res->status);
    /* The header ETag of this answer is not the object's: report the document's (RGW's may be empty). */
    res->etag[0] = '\0';
    fm_s3_xml_text(s3->body, s3->body_len, "ETag", res->etag, sizeof(res->etag));
    res->content_type[0] = '\0';
    res->content_length = -1;
    return 0;
}

/* ---- ListObjectsV2 ----------------------------------------------------------------------------------------- */

/* A page of FM_S3_LIST_MAX_KEYS keys URL-encoded at their longest (3 x 1024 bytes) with RGW's ~350 bytes a <Contents>
 * fits in 4 MiB. */
#define MAX_LIST_OBJECTS_BODY (4 * 1024 * 1024)

int fm_s3_list_objects(fm_s3_t *s3, const char *prefix, const char *start_after, int max_keys, fm_s3_object_t *objects,
                       size_t max, size_t *count, int *truncated, fm_s3_result_t *res)
{
    if (count != NULL)
        *count = 0;
    if (truncated != NULL)
        *truncated = 0;
    if (objects == NULL || count == NULL || truncated == NULL || max_keys < 1 || max_keys > FM_S3_LIST_MAX_KEYS ||
        (size_t)max_keys > max)
        return fm_s3_refuse(res, "1 to %d keys, with room for them, are required", FM_S3_LIST_MAX_KEYS);
    if ((prefix != NULL && strlen(prefix) >= FM_S3_KEY_MAX) ||
        (start_after != NULL && strlen(start_after) >= FM_S3_KEY_MAX))
        return fm_s3_refuse(res, "a prefix or start-after longer than a key");
    char max_text[16];
    snprintf(max_text, sizeof(max_text), "%d", max_keys);
    fm_sigv4_param_t params[5] = {{"list-type", "2"},
                                  {"encoding-type", "url"},
                                  {"max-keys", max_text},
                                  {"prefix", prefix != NULL ? prefix : ""},
                                  {"start-after", start_after}};
    size_t param_count = start_after != NULL && *start_after != '\0' ? 5 : 4;
    s3->body_limit = MAX_LIST_OBJECTS_BODY;
    int rc = fm_s3_perform(s3, "GET", NULL, params, param_count, NULL, 0, NULL, 0, res);
    s3->body_limit = FM_S3_MAX_RESPONSE_BODY;
    if (rc != 0)
        return -1;
    /* A cut page would lose its last keys and IsTruncated with them. */
    if (s3->body == NULL || s3->body_truncated)
        return fm_s3_invalid_response(res, "ListObjectsV2: the answer is not a whole ListBucketResult");
    return fm_s3_list_objects_parse(s3->body, s3->body_len, prefix, start_after, objects, max, count, truncated, res);
}

/* ---- streamed GET ------------------------------------------------------------------------------------ */

int fm_s3_get_object_announced(fm_s3_t *s3, const char *key, fm_s3_headers_fn headers, fm_s3_write_fn write, void *ud,
                               fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    if (write == NULL)
        return fm_s3_refuse(res, "a write function is required");
    s3->sink = write;
    s3->sink_headers = headers;
    s3->sink_ud = ud;
    int rc = fm_s3_perform(s3, "GET", key, NULL, 0, NULL, 0, NULL, 0, res);
    s3->sink = NULL;
    s3->sink_headers = NULL;
    s3->sink_ud = NULL;
    return rc;
}

int fm_s3_get_object(fm_s3_t *s3, const char *key, fm_s3_write_fn write, void *ud, fm_s3_result_t *res)
{
    return fm_s3_get_object_announced(s3, key, NULL, write, ud, res);
}

/* fm_s3_get_object_range: the answer must be the 206 of exactly the bytes asked, checked before any reaches `write`. */
typedef struct {
    long long length;
    int refused;
    fm_s3_write_fn write;
    void *ud;
} range_sink_t;

static int check_range_answer(void *ud, const fm_s3_result_t *head)
{
    range_sink_t *sink = ud;
    sink->refused = head->status != 206 || head->content_length != sink->length;
    return sink->refused;
}

static int write_range(void *ud, const void *data, size_t len)
{
    range_sink_t *sink = ud;
    return sink->write(sink->ud, data, len);
}

int fm_s3_get_object_range(fm_s3_t *s3, const char *key, unsigned long long first, unsigned long long last,
                           const char *if_match, fm_s3_write_fn write, void *ud, fm_s3_result_t *res)
{
    if (need_key(key, res) != 0)
        return -1;
    if (write == NULL || last < first || last - first >= (1ull << 62))
        return fm_s3_refuse(res, "a write function and a range first <= last are required");
    char range[64];
    snprintf(range, sizeof(range), "bytes=%llu-%llu", first, last);
    fm_sigv4_header_t headers[2] = {{"range", range}, {"if-match", if_match}};
    size_t header_count = if_match != NULL && *if_match != '\0' ? 2 : 1;
    range_sink_t sink = {.length = (long long)(last - first + 1), .write = write, .ud = ud};
    s3->sink = write_range;
    s3->sink_headers = check_range_answer;
    s3->sink_ud = &sink;
    int rc = fm_s3_perform(s3, "GET", key, NULL, 0, headers, header_count, NULL, 0, res);
    s3->sink = NULL;
    s3->sink_headers = NULL;
    s3->sink_ud = NULL;
    if (rc != 0 && sink.refused)
        return fm_s3_invalid_response(res, "the ranged GET was answered with HTTP %ld and %lld bytes, not 206 and %lld",
                                      res->status, res->content_length, sink.length);
    return rc;
}

