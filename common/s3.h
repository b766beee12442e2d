/*
 * s3: a small blocking S3 client on libcurl for the calls the servers make themselves (bucket check, object
 * HEAD/PUT/DELETE/copy, listing a prefix, multipart uploads: create, list parts, complete, abort). File bytes from
 * users never pass through it on their way in: they go to S3 with presigned URLs (sigv4.h). The worker reads them
 * back with the streamed GET (fm_s3_get_object), which never holds an object in memory.
 *
 * BLOCKING: every call waits for the network (up to the configured timeouts). Call it from an offload pool
 * thread (offload.h), never from an event-loop thread (DESIGN.md §3).
 *
 * NOT THREAD-SAFE: an fm_s3_t owns one curl handle, reused for keep-alive, and must be used by one thread at a
 * time. Give each offload thread its own fm_s3_t.
 *
 * Requests are signed with SigV4 headers by our own signer (fm_sigv4_sign_headers), not by CURLOPT_AWS_SIGV4,
 * so the code that presigns upload URLs is the code these calls exercise against the store.
 */
#ifndef FM_S3_H
#define FM_S3_H

#include <stddef.h>

/** Everything an fm_s3_t needs; the strings are copied by fm_s3_new(). */
typedef struct fm_s3_config {
    /** "http://127.0.0.1:7480" (scheme://host[:port], no path). */
    const char *endpoint;
    /** Region of the SigV4 scope, e.g. "us-east-1" (Ceph RGW accepts any). */
    const char *region;
    /** The bucket every call addresses. */
    const char *bucket;
    const char *access_key;
    const char *secret_key;
    /** Temporary-credential token (x-amz-security-token), or NULL / "". */
    const char *session_token;
    /** 0: path-style URLs http://host/bucket/key (what RGW and MinIO need); 1: http://bucket.host/key. */
    int virtual_hosted;
    /** TCP (and TLS) connect timeout in ms; 0 means 3000. */
    long connect_timeout_ms;
    /** Whole-request timeout in ms; 0 means 30000. */
    long timeout_ms;
} fm_s3_config_t;

struct fm_config;
/** The bucket and credentials of a service's configuration (FM_S3_*), with these timeouts (0: the defaults above).
 * The strings stay the configuration's. */
fm_s3_config_t fm_s3_config_from(const struct fm_config *cfg, long connect_timeout_ms, long timeout_ms);

/** A client: configuration, signer and one reusable curl handle. Opaque. */
typedef struct fm_s3 fm_s3_t;

/** Size of fm_s3_result_t.upload_id, NUL included (S3 upload ids are opaque; RGW's are ~40 bytes). */
#define FM_S3_UPLOAD_ID_MAX 1024

/** S3's limit on parts: part numbers are 1..10000, so an upload has at most this many. */
#define FM_S3_MAX_PARTS 10000

/** Size of fm_s3_part_t.etag, NUL included (S3's part ETags are a quoted MD5, 34 bytes). */
#define FM_S3_ETAG_MAX 128

/** One part of a multipart upload: what ListParts reports, and what CompleteMultipartUpload takes. */
typedef struct fm_s3_part {
    /** 1..FM_S3_MAX_PARTS. */
    int part_number;
    /** As S3 lists it, quotes included ("\"5d41…\""); fm_s3_complete_multipart() takes it with or without. */
    char etag[FM_S3_ETAG_MAX];
    /** Bytes stored for the part (ListParts); fm_s3_complete_multipart() ignores it. */
    long long size;
} fm_s3_part_t;

/**
 * The outcome of one call. On success `code` is "". On failure `code` is S3's <Code> (e.g. "NoSuchKey",
 * "SignatureDoesNotMatch"); when the answer has no XML body (HEAD) it is "NotFound" for 404, "Forbidden" for 403,
 * else "HttpError"; when no answer came, `status` is 0 and `code` is "Timeout", "ConnectFailed" or
 * "NetworkError"; a request refused before sending is "InvalidArgument"; a 2xx answer lacking what the call
 * needs (no <UploadId>, a cut or inconsistent ListParts page) is "InvalidResponse". A 200 whose body is S3's
 * <Error> document (CompleteMultipartUpload can fail after its 200 is sent) is a failure with `status` 200 and
 * the document's <Code>.
 */
typedef struct fm_s3_result {
    /** HTTP status, 0 if no response arrived. */
    long status;
    /** See above; "" on success. */
    char code[64];
    /** S3's <Message>, else a sentence naming the status and code; "" on success. */
    char message[256];
    /** x-amz-request-id of the answer, for logs. */
    char request_id[128];
    /** ETag header as sent (quotes included): PUT and HEAD object, on success only. */
    char etag[256];
    /** Content-Type header: HEAD object, on success only. */
    char content_type[256];
    /** Content-Length header: HEAD object (the object's size), on success only; else -1. */
    long long content_length;
    /** <UploadId> of CreateMultipartUpload. */
    char upload_id[FM_S3_UPLOAD_ID_MAX];
} fm_s3_result_t;

/**
 * Initialises libcurl for the process (curl_global_init, once). fm_s3_new() calls it too; calling it early in
 * main, before threads start, is the safe habit with older libcurl. Returns 0 or -1.
 */
int fm_s3_global_init(void);

/**
 * Creates a client from `cfg` (strings copied). Returns NULL and writes the reason into `err` (may be NULL) on a
 * bad or missing setting. The creator owns the client and frees it with fm_s3_free().
 */
fm_s3_t *fm_s3_new(const fm_s3_config_t *cfg, char *err, size_t err_size);

/** Frees a client and closes its connections (NULL is fine). */
void fm_s3_free(fm_s3_t *s3);

/** HEAD the bucket: 0 if it exists and the credentials may use it, else -1 (readiness checks). */
int fm_s3_head_bucket(fm_s3_t *s3, fm_s3_result_t *res);

/**
 * HEAD an object: on 0, res->content_length, res->etag and res->content_type describe it; -1 with "NotFound" if
 * it is absent.
 */
int fm_s3_head_object(fm_s3_t *s3, const char *key, fm_s3_result_t *res);

/**
 * PUT a small object from memory (the whole body is hashed for x-amz-content-sha256 and sent with Content-MD5,
 * so the store rejects a corrupted body). `content_type` may be NULL. On 0, res->etag is the new ETag.
 */
int fm_s3_put_object(fm_s3_t *s3, const char *key, const void *data, size_t len, const char *content_type,
                     fm_s3_result_t *res);

/** DELETE an object; S3 answers 204 whether or not it existed, so 0 means "it is gone". */
int fm_s3_delete_object(fm_s3_t *s3, const char *key, fm_s3_result_t *res);

/**
 * Receives the body of a GET as it arrives, `len` > 0 bytes at a time (curl's buffer, valid during the call only).
 * Return 0 to go on; any other value stops the transfer, and the call then fails with res->code "Aborted".
 */
typedef int (*fm_s3_write_fn)(void *ud, const void *data, size_t len);

/**
 * GET an object, streamed: the body of a 2xx answer goes to `write` piece by piece, never held whole in memory (an
 * error answer's body is read for its <Code> and never reaches `write`). On 0, res->content_length, res->etag and
 * res->content_type describe the object and every byte went to `write`; -1 with S3's code ("NoSuchKey", status
 * 404) otherwise, also when the connection broke mid-body ("NetworkError": `write` may have had part of it, so
 * start again from scratch) or `write` asked to stop ("Aborted", with the answer's status, ETag and
 * content_length, so a caller refusing an oversized object learns its size). No whole-request timeout applies,
 * so a large object can take as long as it needs: the call fails with "Timeout" only when the transfer (or the
 * wait for the answer) stays under 1 KiB/s for timeout_ms.
 */
int fm_s3_get_object(fm_s3_t *s3, const char *key, fm_s3_write_fn write, void *ud, fm_s3_result_t *res);

/**
 * Told the answer of a streamed GET once it is known to be the object's (2xx), before any byte of it goes to
 * `write` (also for an empty object): head->status, etag, content_type, content_length (-1 when the origin sent no
 * Content-Length) and request_id. Return 0 to go on, anything else stops the transfer as `write` would.
 */
typedef int (*fm_s3_headers_fn)(void *ud, const fm_s3_result_t *head);

/** fm_s3_get_object that also calls `headers` (which may be NULL) first: a caller can answer its own client with
 *  the object's headers while the body is still coming. */
int fm_s3_get_object_announced(fm_s3_t *s3, const char *key, fm_s3_headers_fn headers, fm_s3_write_fn write, void *ud,
                               fm_s3_result_t *res);

/**
 * GET bytes first..last (inclusive) of an object, streamed to `write` as fm_s3_get_object does, and only while its
 * ETag is `if_match` (NULL or "": any): a changed object is -1 with S3's "PreconditionFailed" (412). The answer must
 * be a 206 of exactly last - first + 1 bytes, checked before any byte reaches `write`: a store that ignored the Range
 * (a 200 of the whole object) is -1 with "InvalidResponse". A range past the end is S3's "InvalidRange" (416).
 */
int fm_s3_get_object_range(fm_s3_t *s3, const char *key, unsigned long long first, unsigned long long last,
                           const char *if_match, fm_s3_write_fn write, void *ud, fm_s3_result_t *res);

/** S3's largest CopyObject source, and its largest part (5 GiB): above it a copy is made of UploadPartCopy parts. */
#define FM_S3_COPY_MAX (5ll * 1024 * 1024 * 1024)

/** S3's smallest part but the last (5 MiB), also for UploadPartCopy. */
#define FM_S3_PART_MIN (5ll * 1024 * 1024)

/** How fm_s3_copy() copies. Zeroed = CopyObject keeping the source's type, for sources up to FM_S3_COPY_MAX. */
typedef struct fm_s3_copy_opts {
    /** NULL: the copy keeps the source's Content-Type and metadata; else it gets this type (metadata REPLACE). */
    const char *content_type;
    /** The source's size when the caller knows it (a HEAD just made), else -1 or 0: a HEAD finds it. */
    long long size;
    /** Largest source copied by one CopyObject, and the size of each UploadPartCopy part above it; 0 = FM_S3_COPY_MAX.
     *  Clamped to [FM_S3_PART_MIN, FM_S3_COPY_MAX], and raised so that no copy needs more than FM_S3_MAX_PARTS parts. */
    long long part_bytes;
} fm_s3_copy_opts_t;

/**
 * Server-side copy inside the client's bucket: `dst_key` gets the bytes of `src_key`, which stays (delete it to move).
 * Up to opts->part_bytes one CopyObject (PUT with x-amz-copy-source); above it a multipart upload of UploadPartCopy
 * parts (x-amz-copy-source-range), completed in order, aborted if any part fails. `opts` may be NULL (defaults).
 * On 0, res->etag is the copy's ETag (quoted as HEAD reports it; Ceph RGW sends it bare in the documents; after a
 * multipart copy it may be empty, as RGW's CompleteMultipartUpload answer is) and res->content_length the bytes
 * copied when known (else -1). -1 with "NoSuchKey" if `src_key` is absent, or with S3's code when a 200 answer
 * carries an <Error> document (the copy failed after it began); a 200 without a result document is
 * "InvalidResponse".
 */
int fm_s3_copy(fm_s3_t *s3, const char *src_key, const char *dst_key, const fm_s3_copy_opts_t *opts,
               fm_s3_result_t *res);

/** fm_s3_copy() with the defaults: the source's type kept, one CopyObject up to 5 GiB, parts above. */
int fm_s3_copy_object(fm_s3_t *s3, const char *src_key, const char *dst_key, fm_s3_result_t *res);

/**
 * CreateMultipartUpload (POST ?uploads). `content_type` (may be NULL) becomes the final object's type. On 0,
 * res->upload_id holds the upload id.
 */
int fm_s3_create_multipart(fm_s3_t *s3, const char *key, const char *content_type, fm_s3_result_t *res);

/** AbortMultipartUpload (DELETE ?uploadId=…): frees the parts stored so far. -1 with "NoSuchUpload" if unknown. */
int fm_s3_abort_multipart(fm_s3_t *s3, const char *key, const char *upload_id, fm_s3_result_t *res);

/**
 * ListParts (GET ?uploadId=…): the parts S3 holds for an upload, ascending, into `parts` (room for `max_parts`,
 * FM_S3_MAX_PARTS covers any upload). Follows the pages (1000 parts each, IsTruncated / NextPartNumberMarker ->
 * part-number-marker). On 0, *count parts were written. On -1, *count is 0 and res->code is S3's (NoSuchUpload),
 * "TooManyParts" when the upload has more than `max_parts`, or "InvalidResponse" for a page that is cut, out of
 * order or does not move the marker forward (so a broken server cannot loop us forever).
 */
int fm_s3_list_parts(fm_s3_t *s3, const char *key, const char *upload_id, fm_s3_part_t *parts, size_t max_parts,
                     size_t *count, fm_s3_result_t *res);

/**
 * CompleteMultipartUpload (POST ?uploadId=…) with `count` (1..FM_S3_MAX_PARTS) parts. Only part_number and etag
 * are used; an ETag may be given with or without its quotes and must otherwise be an RFC 7232 entity-tag (no
 * spaces, quotes or control characters). Refused before anything is sent: a bad count, number or ETag
 * ("InvalidArgument"), and part numbers not strictly ascending ("InvalidPartOrder", status 0: S3 answers that
 * itself, but Ceph RGW 16 sorts the parts and completes). The body is signed with its SHA-256.
 *
 * -1 with res->code "InvalidPart" (a part missing or its ETag wrong), "EntityTooSmall" (a part but the last under
 * 5 MiB), "NoSuchUpload" (unknown or aborted) or S3's other codes -- also when they come in a 200 answer. On 0,
 * res->etag is the <ETag> of the answer, which Ceph RGW leaves unquoted (and some versions empty): take the
 * object's ETag from fm_s3_head_object() or the S3 event. A 200 without a result document is "InvalidResponse":
 * the upload may or may not be complete, so HEAD the object before retrying. The whole call must fit the client's
 * timeout_ms: AWS may take minutes to complete a large upload.
 */
int fm_s3_complete_multipart(fm_s3_t *s3, const char *key, const char *upload_id, const fm_s3_part_t *parts,
                             size_t count, fm_s3_result_t *res);

/** Size of fm_s3_object_t.key, NUL included: S3 keys are at most 1024 bytes of UTF-8. */
#define FM_S3_KEY_MAX 1025

/** Most keys one ListObjectsV2 page may ask for (S3's own limit on max-keys). */
#define FM_S3_LIST_MAX_KEYS 1000

/** One object of a listing (ListObjectsV2 <Contents>). */
typedef struct fm_s3_object {
    /** The key, decoded (XML entities and the listing's URL encoding undone); 1..1024 bytes, no NUL inside. */
    char key[FM_S3_KEY_MAX];
    /** Bytes stored. */
    long long size;
    /** <LastModified> as Unix seconds (UTC; fractions dropped). */
    long long last_modified;
} fm_s3_object_t;

/**
 * ListObjectsV2 (GET ?list-type=2) of one page: up to `max_keys` (1..FM_S3_LIST_MAX_KEYS, at most `max`) keys under
 * `prefix` (may be "" or NULL) that sort after `start_after` (may be "" or NULL: from the start), ascending, into
 * `objects`. Asks for encoding-type=url so that any key, control characters included, survives the XML, and
 * decodes it (a store that ignores the parameter and sends plain keys is read as well). On 0, *count objects were
 * written and *truncated is 1 when keys follow the last one (list again with start_after = its key). On -1, *count
 * and *truncated are 0 and res->code is S3's ("NoSuchBucket", …) or "InvalidResponse" for a page that is cut, not
 * ascending, out of the prefix or after start_after, with more keys than asked for, truncated without a key, or with
 * a key, size or date that does not parse (see fm_s3_list_objects_parse).
 */
int fm_s3_list_objects(fm_s3_t *s3, const char *prefix, const char *start_after, int max_keys, fm_s3_object_t *objects,
                       size_t max, size_t *count, int *truncated, fm_s3_result_t *res);

/**
 * The parser behind fm_s3_list_objects, for one ListBucketResult document (`len` bytes, need not be
 * NUL-terminated), with the same rules and results; `prefix` and `start_after` are what the page was asked with.
 * Sets res->code and res->message only on failure (res may not be NULL). Exposed for tests and fuzzing.
 */
int fm_s3_list_objects_parse(const char *xml, size_t len, const char *prefix, const char *start_after,
                             fm_s3_object_t *objects, size_t max, size_t *count, int *truncated, fm_s3_result_t *res);

/**
 * Minimal XML text extraction for S3's small answers: copies the text of the first <tag>…</tag> in `xml` (`len`
 * bytes, need not be NUL-terminated) into `out`, with the five XML entities and numeric character references
 * decoded. Returns 0, or -1 if the element is absent or its text does not fit `out_size` (out is then "").
 * Not an XML parser: no attributes on the tag, no CDATA, no nesting of the same tag.
 */
int fm_s3_xml_text(const char *xml, size_t len, const char *tag, char *out, size_t out_size);

/**
 * Walks repeated elements (every <Part> of a ListParts page): finds the first <tag>…</tag> that starts at or after
 * byte *offset of `xml` (`len` bytes, need not be NUL-terminated), points *inner / *inner_len at its raw content
 * (a slice of `xml`, not decoded: read it with fm_s3_xml_text) and moves *offset past its end tag. Returns 0, or -1
 * when no complete element is left. Same limits as fm_s3_xml_text.
 */
int fm_s3_xml_next(const char *xml, size_t len, const char *tag, size_t *offset, const char **inner, size_t *inner_len);

#endif /* FM_S3_H */
