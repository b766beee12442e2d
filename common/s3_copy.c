/*
 * Server-side copies (s3.h fm_s3_copy): one CopyObject up to S3's 5 GiB source limit, UploadPartCopy parts above it.
 * The worker moves verified bytes out of client reach with them (incoming/ → staging/ → blobs/{sha256}, docs/workers.md
 * "Where verified bytes live"), so a 50 GiB upload must copy as surely as a 5 KiB one.
 */
#include "qs.h"
#include "s3.h"
#include "s3_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* x-amz-copy-source: "bucket/key", URL-encoded as S3 requires (RFC 3986 unreserved characters and '/' kept). */
static char *copy_source(const char *bucket, const char *key)
{
    size_t bucket_len = strlen(bucket), key_len = strlen(key);
    char *out = malloc(bucket_len + 1 + key_len * 3 + 1);
    if (out == NULL)
        abort();
    memcpy(out, bucket, bucket_len);
    char *o = out + bucket_len;
    *o++ = '/';
    *fm_pct_encode(o, key, key_len, FM_PCT_KEEP_SLASH) = '\0';
    return out;
}

/* The <ETag> of a CopyObjectResult / CopyPartResult, quoted as HEAD sends it (AWS quotes it, Ceph RGW does not). */
static void document_etag(fm_s3_t *s3, char *out, size_t size)
{
    char etag[FM_S3_ETAG_MAX - 2] = "";
    fm_s3_xml_text(s3->body, s3->body_len, "ETag", etag, sizeof(etag));
    if (etag[0] != '\0' && etag[0] != '"')
        snprintf(out, size, "\"%s\"", etag);
    else
        snprintf(out, size, "%s", etag);
}

/* One PUT with x-amz-copy-source (CopyObject, or UploadPartCopy with params and a range) and its result document. */
static int copy_request(fm_s3_t *s3, const char *source, const char *dst_key, const fm_sigv4_param_t *params,
                        size_t param_count, const char *range, const char *content_type, const char *result_tag,
                        char *etag, size_t etag_size, fm_s3_result_t *res)
{
    fm_sigv4_header_t headers[4] = {{"x-amz-copy-source", source}};
    size_t count = 1;
    if (range != NULL)
        headers[count++] = (fm_sigv4_header_t){"x-amz-copy-source-range", range};
    if (content_type != NULL) {
        headers[count++] = (fm_sigv4_header_t){"x-amz-metadata-directive", "REPLACE"};
        headers[count++] = (fm_sigv4_header_t){"Content-Type", content_type};
    }
    if (fm_s3_perform(s3, "PUT", dst_key, params, param_count, headers, count, "", 0, res) != 0)
        return -1;
    if (fm_s3_failed_after_ok(s3, res))
        return -1;
    char closing[48];
    snprintf(closing, sizeof(closing), "</%s>", result_tag);
    if (!fm_s3_body_has(s3, closing))
        return fm_s3_invalid_response(res, "%s answered %ld without a result", result_tag, res->status);
    document_etag(s3, etag, etag_size);
    return 0;
}

/* Above one CopyObject: CreateMultipartUpload, UploadPartCopy per range in order, Complete; Abort on any failure. */
static int copy_in_parts(fm_s3_t *s3, const char *source, const char *dst_key, const char *content_type,
                         long long size, long long part_bytes, fm_s3_result_t *res)
{
    size_t count = (size_t)((size + part_bytes - 1) / part_bytes);
    fm_s3_part_t *parts = calloc(count, sizeof(*parts));
    if (parts == NULL)
        abort();
    int rc = -1;
    if (fm_s3_create_multipart(s3, dst_key, content_type, res) != 0)
        goto out;
    char upload_id[FM_S3_UPLOAD_ID_MAX];
    snprintf(upload_id, sizeof(upload_id), "%s", res->upload_id);
    for (size_t i = 0; i < count; ++i) {
        long long first = (long long)i * part_bytes, last = first + part_bytes - 1 < size - 1 ? first + part_bytes - 1
                                                                                               : size - 1;
        char number[24], range[64];
        snprintf(number, sizeof(number), "%zu", i + 1);
        snprintf(range, sizeof(range), "bytes=%lld-%lld", first, last);
        fm_sigv4_param_t params[2] = {{"partNumber", number}, {"uploadId", upload_id}};
        parts[i].part_number = (int)i + 1;
        if (copy_request(s3, source, dst_key, params, 2, range, NULL, "CopyPartResult", parts[i].etag,
                         sizeof(parts[i].etag), res) != 0)
            goto abort;
    }
    if (fm_s3_complete_multipart(s3, dst_key, upload_id, parts, count, res) != 0)
        goto abort;
    res->content_length = size;
    rc = 0;
    goto out;
abort:;
    fm_s3_result_t ignored; /* the failure to report is the part's; parts left behind cost storage until aborted */
    fm_s3_abort_multipart(s3, dst_key, upload_id, &ignored);
out:
    free(parts);
    return rc;
}

int fm_s3_copy(fm_s3_t *s3, const char *src_key, const char *dst_key, const fm_s3_copy_opts_t *opts,
               fm_s3_result_t *res)
{
    if (src_key == NULL || *src_key == '\0' || dst_key == NULL || *dst_key == '\0')
        return fm_s3_refuse(res, "an object key is required");
    const fm_s3_copy_opts_t defaults = {0};
    if (opts == NULL)
        opts = &defaults;
    long long part_bytes = opts->part_bytes > 0 ? opts->part_bytes : FM_S3_COPY_MAX;
    if (part_bytes < FM_S3_PART_MIN)
        part_bytes = FM_S3_PART_MIN;
    if (part_bytes > FM_S3_COPY_MAX)
        part_bytes = FM_S3_COPY_MAX;
    long long size = opts->size;
    const char *content_type = opts->content_type;
    char source_type[256] = "";
    if (size <= 0 || (size > part_bytes && content_type == NULL)) {
        /* The size decides between one copy and parts; a multipart copy names its type at creation. */
        if (fm_s3_head_object(s3, src_key, res) != 0) {
            if (res->status == 404)
                snprintf(res->code, sizeof(res->code), "NoSuchKey");
            return -1;
        }
        size = res->content_length;
        snprintf(source_type, sizeof(source_type), "%s", res->content_type);
        if (content_type == NULL && size > part_bytes)
            content_type = source_type[0] != '\0' ? source_type : NULL;
    }
    char *source = copy_source(s3->bucket_name, src_key);
    int rc;
    if (size > part_bytes) {
        while ((size + part_bytes - 1) / part_bytes > FM_S3_MAX_PARTS)
            part_bytes += FM_S3_PART_MIN; /* 10,000 parts at most: larger parts for a larger object */
        rc = copy_in_parts(s3, source, dst_key, content_type, size, part_bytes, res);
    } else {
        char etag[sizeof(res->etag)];
        rc = copy_request(s3, source, dst_key, NULL, 0, NULL, content_type, "CopyObjectResult", etag, sizeof(etag),
                          res);
        if (rc == 0) {
            snprintf(res->etag, sizeof(res->etag), "%s", etag);
            res->content_length = opts->size > 0 ? opts->size : size;
        }
    }
    free(source);
    if (rc == 0)
        res->content_type[0] = '\0';
    return rc;
}

int fm_s3_copy_object(fm_s3_t *s3, const char *src_key, const char *dst_key, fm_s3_result_t *res)
{
    return fm_s3_copy(s3, src_key, dst_key, NULL, res);
}
