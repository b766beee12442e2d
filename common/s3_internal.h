/*
 * s3_internal: what common/s3.c (client, one request), s3_calls.c (the calls) and s3_xml.c (the XML read and
 * written) share. Private to those three files: everything else uses s3.h.
 */
#ifndef FM_S3_INTERNAL_H
#define FM_S3_INTERNAL_H

#include "s3.h"
#include "sigv4.h"

#include <curl/curl.h>

/* S3 answers we read (errors, InitiateMultipartUploadResult) are well under a few KiB. */
#define FM_S3_MAX_RESPONSE_BODY (64 * 1024)

struct fm_s3 {
    fm_sigv4_t *signer;
    char *endpoint; /* as signed: with the bucket in the host name when virtual-hosted */
    char *bucket;   /* path-style bucket, NULL when virtual-hosted */
    long connect_timeout_ms, timeout_ms;
    /* The bucket in both styles (x-amz-copy-source names it). */
    char *bucket_name;
    CURL *curl;
    char curl_error[CURL_ERROR_SIZE];
    char *body; /* the last answer's body, at most body_limit bytes */
    size_t body_len;
    size_t body_limit;  /* FM_S3_MAX_RESPONSE_BODY but while a call that reads larger answers runs */
    int body_truncated; /* the answer was longer than body_limit: its end was dropped */
    /* A streamed GET (fm_s3_get_object) while `sink` is set: a 2xx body goes to sink, any other to `body`. */
    fm_s3_write_fn sink;
    fm_s3_headers_fn sink_headers; /* fm_s3_get_object_announced: told the 2xx answer before its body */
    void *sink_ud;
    int sink_status_known; /* the answer's status was looked at, on its first body bytes */
    int sink_pass;         /* ... and it is 2xx: the body is the object's */
    int sink_aborted;      /* the sink returned non-zero */
};

/* ---- s3.c: one request ------------------------------------------------------------------------------------- */

/** Signs and sends one request; 0 on a 2xx answer, else -1 with res set. s3->body holds the answer's body. */
int fm_s3_perform(fm_s3_t *s3, const char *method, const char *key, const fm_sigv4_param_t *params, size_t param_count,
                  const fm_sigv4_header_t *headers, size_t header_count, const void *body, size_t body_len,
                  fm_s3_result_t *res);

/** Fills res->code/message/request_id from S3's <Error> document in s3->body (or from the status without one). */
void fm_s3_read_error_document(fm_s3_t *s3, fm_s3_result_t *res);

/* ---- s3_calls.c: results ----------------------------------------------------------------------------------- */

/** A call refused before anything is sent: "InvalidArgument" and why; returns -1. */
__attribute__((format(printf, 2, 3))) int fm_s3_refuse(fm_s3_result_t *res, const char *fmt, ...);

/** A 2xx answer that is not what the call needs: "InvalidResponse" and why; returns -1. */
__attribute__((format(printf, 2, 3))) int fm_s3_invalid_response(fm_s3_result_t *res, const char *fmt, ...);

/** The last answer's body holds `text`. */
int fm_s3_body_has(const fm_s3_t *s3, const char *text);

/** CompleteMultipartUpload, CopyObject and UploadPartCopy answer 200 when S3 starts the work; a failure after it comes
 *  as an <Error> body. Reads it into `res` and returns 1 then, else 0. */
int fm_s3_failed_after_ok(fm_s3_t *s3, fm_s3_result_t *res);

/* ---- s3_xml.c ---------------------------------------------------------------------------------------------- */

/** The first `needle` in `hay` (both sized, NUL bytes allowed), or NULL. */
const char *fm_s3_find_bytes(const char *hay, size_t hay_len, const char *needle, size_t needle_len);

/** A decimal number of 1..max_digits digits and nothing else, as S3 writes them; -1 if not. */
long long fm_s3_parse_count(const char *text, size_t max_digits);

/** Appends one ListParts page's <Part>s (ascending, above `marker`) to parts[*count..max_parts); 0 or -1. */
int fm_s3_read_parts_page(const char *xml, size_t len, int marker, fm_s3_part_t *parts, size_t max_parts, size_t *count,
                          fm_s3_result_t *res);

/** The CompleteMultipartUpload body for parts[0..count), malloc'd into *data and *len; 0, or -1 with res set. */
int fm_s3_complete_multipart_body(const fm_s3_part_t *parts, size_t count, char **data, size_t *len,
                                  fm_s3_result_t *res);

#endif
