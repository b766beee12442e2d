/*
 * s3event: reads the S3 event notification messages that reach POST /v1/events/s3 (DESIGN.md §4 "S3 events →
 * jobs"): the AWS shape (S3 user guide, "Event message structure") and Ceph RGW's, which differs where it matters:
 *
 *   - RGW sends the object key as it is ("incoming/a b+c.txt", raw UTF-8); AWS sends it form-urlencoded
 *     ("incoming/a+b%2Bc.txt"). The key is decoded unless eventSource is "ceph:s3".
 *   - RGW's eventSource is "ceph:s3", awsRegion "", eventVersion "2.2"; its eventName has no "s3:" prefix in
 *     Ceph 16 ("ObjectCreated:Put") and one in some other versions ("s3:ObjectCreated:Put"): both are read.
 *   - RGW names the ETag "eTag" (Ceph 16) or "etag" (older); ObjectRemoved records carry size and ETag too.
 *
 * Pure parsing, no I/O, no global state: safe on any thread. Input is checked before use: at most
 * FM_S3EVENT_MAX_BYTES, FM_S3EVENT_MAX_RECORDS records, every string against its field's size.
 */
#ifndef FM_S3EVENT_H
#define FM_S3EVENT_H

#include <stddef.h>

/** Largest message accepted (AWS caps one at 64 KiB; room for a batch of many records). */
#define FM_S3EVENT_MAX_BYTES (4 * 1024 * 1024)
/** Most records one call reads, whatever `max_records` says. */
#define FM_S3EVENT_MAX_RECORDS 1000
/** Longest object key, in bytes after decoding (S3's limit). */
#define FM_S3EVENT_KEY_MAX 1024

/** What happened to the object, from the eventName's family. */
typedef enum fm_s3event_kind {
    /** Anything else (ObjectRestore:*, Replication:*, ObjectTagging:*, …): no job to make. */
    FM_S3EVENT_OTHER = 0,
    /** ObjectCreated:* (Put, Post, Copy, CompleteMultipartUpload). */
    FM_S3EVENT_CREATED,
    /** ObjectRemoved:* (Delete, DeleteMarkerCreated) and LifecycleExpiration:*. */
    FM_S3EVENT_REMOVED,
} fm_s3event_kind_t;

/** One record of a message; every string is NUL-terminated, "" when the message left it out. */
typedef struct fm_s3event_record {
    fm_s3event_kind_t kind;
    /** eventName without a leading "s3:", e.g. "ObjectCreated:CompleteMultipartUpload". */
    char event_name[64];
    /** "aws:s3", "ceph:s3", … */
    char event_source[32];
    /** eventTime as sent (ISO 8601, e.g. "2026-11-23T16:36:46.500399Z"). */
    char event_time[40];
    /** s3.bucket.name. */
    char bucket[256];
    /** s3.object.key, decoded: key_len bytes (never a NUL among them), then a NUL. */
    char key[FM_S3EVENT_KEY_MAX + 1];
    size_t key_len;
    /** s3.object.size in bytes, -1 if absent. */
    long long size;
    /** s3.object.eTag (or etag) without quotes, e.g. "e5a8c5272b26fc10581a21089559b006-2". */
    char etag[128];
    /** s3.object.sequencer (hex on AWS and RGW; orders the events of one key; dedupe with bucket and key). */
    char sequencer[64];
    /** s3.object.versionId ("" when absent, null or unversioned). */
    char version_id[256];
} fm_s3event_record_t;

/**
 * Parses one notification message (`json`, `len` bytes, need not be NUL-terminated) into records[0..*count).
 *
 * Returns 0 with *count records; 1 for AWS's s3:TestEvent message ({"Service":"Amazon S3","Event":
 * "s3:TestEvent",…}, sent when a notification is configured) with *count 0; -1 for anything else, with *count 0
 * and a sentence in `err` (may be NULL) naming the record and field. Refused as a whole: invalid JSON, raw
 * control characters or a \u0000 escape, more than min(max_records, FM_S3EVENT_MAX_RECORDS) records, a record
 * without eventName, bucket name or key, a key that is badly encoded, decodes to a NUL or is longer than
 * FM_S3EVENT_KEY_MAX, a size that is not a whole number ≥ 0, a string longer than its field, an eventVersion
 * whose major version is not 2. `records` is written even on failure (its content is then meaningless).
 */
int fm_s3event_parse(const char *json, size_t len, fm_s3event_record_t *records, size_t max_records, size_t *count,
                     char *err, size_t err_size);

/** A short name for a kind: "created", "removed", "other". */
const char *fm_s3event_kind_name(fm_s3event_kind_t kind);

#endif /* FM_S3EVENT_H */
