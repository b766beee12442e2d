/*
 * fm-worker: the post-processing pipeline (DESIGN.md §4 "Processing (workers)").
 *
 * A job is one uploaded object. The queue consumer (queue.c) takes it from the Redis Stream `jobs`, then runs the
 * steps below in order, each a named function in its own file. Steps are blocking: every worker thread has its own
 * connections (PostgreSQL, Redis, S3) and works on one job at a time. The object is streamed once from S3 into a
 * private temporary file (fetch.c, which also computes the SHA-256); every later step reads that file, never the
 * whole object in memory.
 *
 *   stage.c     step_stage      server-side copy incoming/{upload_id} → staging/{upload_id}, out of client reach
 *   fetch.c     step_fetch      S3 GET of the staged copy → temp file + SHA-256 (claimed hash checked in step_verify)
 *   verify.c    step_verify     sha256 == claimed, else QUARANTINED
 *   sniff.c     step_sniff      libmagic type of the bytes vs the declared type
 *   scan.c      step_scan       clamd INSTREAM
 *   describe.c  step_describe   size, real type, image dimensions/orientation/EXIF, PDF pages → job->meta (JSON)
 *   variants.c  step_variants   libvips thumb/preview × JPEG/WebP → S3 variants/{sha256}/…
 *   text.c      step_text       plain text / PDF text for search, capped
 *   (then the outcome -- blob stored and registered, file READY or QUARANTINED, the retry or the dead letter --
 *   process.c, in S3, PostgreSQL and Redis; the worker handle and its connections: handle.h)
 */
#ifndef FM_WORKER_H
#define FM_WORKER_H

#include <cjson/cJSON.h>
#include <limits.h>
#include <stddef.h>

#include "s3.h"

/* What a step decides. */
typedef enum {
    FM_STEP_OK = 0,     /* go on with the next step */
    FM_STEP_QUARANTINE, /* the content is refused for good: file QUARANTINED, job COMPLETED, reason kept */
    FM_STEP_RETRY,      /* a dependency failed (store, clamd, network, temp disk, libraries of the host): the job is
                         * retried with a capped backoff, using none of its attempts, for up to FM_JOB_TRANSIENT_MAX_S */
    FM_STEP_FAIL,       /* the content cannot be processed (corrupt, undecodable) or the object is gone: one of the
                         * FM_JOB_MAX_ATTEMPTS used; retried, then FAILED, dead-letter stream */
} fm_step_rc;

/* Limits and settings the steps need (from the worker's configuration). */
typedef struct {
    const char *tmp_dir;           /* where fetch writes its temporary copy */
    const char *clamd_host;        /* clamd TCP address */
    int clamd_port;
    int clamd_timeout_ms;          /* connect + each read/write */
    long long clamd_chunk_bytes;   /* INSTREAM chunk size (default 64 KiB) */
    long long max_pixels;          /* decompression-bomb guard: width × height above this is refused undecoded */
    long long text_max_bytes;      /* cap of the extracted text */
    int thumb_px, preview_px;      /* longest edge of the variants (256, 1024) */
    long long copy_part_bytes;     /* largest single server-side copy (step_stage, the blob copy); parts above */
} fm_worker_limits_t;

/* Everything a job carries through the steps. Strings are NUL-terminated. */
typedef struct {
    /* from the queue / PostgreSQL */
    char job_id[37], file_id[37], upload_id[37], owner_id[37];
    char object_key[1024];      /* incoming/{upload_id}: where the client PUT the bytes (still writable by its URL) */
    char staging_key[96];       /* staging/{upload_id} once step_stage copied them there; "" before */
    char claimed_sha256[65];    /* lowercase hex */
    char declared_type[128];    /* the Content-Type the client declared */
    long long declared_size;
    int attempt;                /* 1 for the first try */

    /* filled by the steps */
    char path[PATH_MAX];        /* temp copy (step_fetch); removed by the consumer */
    long long size;             /* bytes fetched */
    char sha256[65];            /* of the bytes (step_fetch) */
    char real_type[128];        /* libmagic MIME type (step_sniff) */
    cJSON *meta;                /* step_describe: {"size", "type", "width", "height", "orientation", "pages",
                                 *  "exif": {"make", "model", "datetime"}, "gps": {"lat", "lon"}} (owned) */
    cJSON *variants;            /* step_variants: [{"name":"thumb","format":"jpeg","key","width","height","bytes"}]*/
    char *text;                 /* step_text: UTF-8, at most limits->text_max_bytes (malloc'd, may be NULL) */
    size_t text_len;
    char reason[256];           /* why a step quarantined/failed/asked to retry (shown to the owner, kept) */
} fm_job_t;

void fm_job_clear(fm_job_t *job); /* frees meta, variants, text; removes the temp file */

/* Each step: reads what earlier steps filled, fills its part, writes job->reason unless FM_STEP_OK. */
fm_step_rc step_stage(fm_job_t *job, fm_s3_t *s3, const fm_worker_limits_t *limits);
fm_step_rc step_fetch(fm_job_t *job, fm_s3_t *s3, const fm_worker_limits_t *limits);
fm_step_rc step_verify(fm_job_t *job);
fm_step_rc step_sniff(fm_job_t *job);
fm_step_rc step_scan(fm_job_t *job, const fm_worker_limits_t *limits);
fm_step_rc step_describe(fm_job_t *job, const fm_worker_limits_t *limits);
/* Renders the variants into memory one at a time and hands each to `put` (an S3 PUT in production, a file writer
 * in unit tests); the key is variants/{sha256}/{name}.{jpg|webp}. */
typedef int (*fm_variant_put_fn)(void *ud, const char *key, const char *content_type, const void *data, size_t len);
fm_step_rc step_variants(fm_job_t *job, const fm_worker_limits_t *limits, fm_variant_put_fn put, void *ud);
fm_step_rc step_text(fm_job_t *job, const fm_worker_limits_t *limits);

/* True when text is a SHA-256 as we store and compare it: 64 lowercase hex digits (verify.c). The one rule for the
 * worker: step_verify lowers a claim before it checks it; cleanup.c refuses a payload hash in any other form. */
int fm_sha256_hex_valid(const char *text);

/* step_variants' list as blobs.variants records it: {name: {format: {key, width, height, bytes}}} (malloc'd JSON). */
char *fm_variants_json(const cJSON *list);

/* Copies the refused bytes (the staged copy that was judged; the client's object when the refusal came before
 * staging) to quarantine/{upload_id} and deletes them from incoming/ and staging/: out of every reader's reach, kept
 * for an operator (stage.c). 0 (also when an earlier attempt moved them already), or -1 with the reason in `why`. */
int fm_stage_quarantine(fm_s3_t *s3, const fm_worker_limits_t *limits, const fm_job_t *job, char *why, size_t why_size);

/* libvips must be started once per process before step_describe/step_variants (VIPS_INIT); idempotent. */
int fm_media_init(const char *argv0);

#endif
