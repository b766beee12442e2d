/*
 * What the upload route files (uploads.c, uploads_complete.c) share: the per-request state and the loading of an
 * upload the caller owns.
 */
#ifndef FM_UPLOADS_H
#define FM_UPLOADS_H

#include "control.h"

#define MAX_PARTS 10000

typedef struct upload_state upload_state_t;

/** How the bytes will travel: chosen by size (our API), one PUT, or multipart with parts the client sizes (Uppy). */
typedef enum { UPLOAD_MODE_AUTO, UPLOAD_MODE_SINGLE, UPLOAD_MODE_CLIENT_PARTS } upload_mode_t;
typedef void (*upload_loaded_fn)(fm_req_t *r, upload_state_t *s);

struct upload_state {
    /* the request */
    char name[256], content_type[128], sha256[65], folder[40];
    long long size;
    /* the upload */
    char upload_id[40], file_id[40], key[64], s3_upload_id[FM_S3_UPLOAD_ID_MAX], status[16], method[12];
    long long part_size;
    int part_count;
    long long expires_at;
    /* offload results */
    fm_s3_result_t s3;
    int s3_ok;
    fm_s3_part_t *parts;
    size_t part_count_given;
    char job_id[40];
    const fm_principal_t *principal;
    upload_loaded_fn loaded;
    upload_mode_t mode;
    int uppy; /* answer in Companion's shapes (uppy.c) */
    char uppy_key[80];
};


/** The request's upload state (zeroed on first use, freed with the request). */
upload_state_t *upload_state(fm_req_t *r);

/** Loads upload {id} (r->params[0]) of the caller into the state and calls next; answers 404 for a missing upload or
 *  someone else's (the two are not told apart). */
void load_upload(fm_req_t *r, const fm_principal_t *p, upload_loaded_fn next);

/** Checks the fields of a new upload and copies them into s; answers 4xx and returns -1 when one is bad. */
int upload_validate(fm_req_t *r, upload_state_t *s, const char *name, double size, const char *type, const char *sha,
                    const char *folder);

/** A version 4 UUID (upload and file ids are ours, so the object key is known before any row exists). */
void upload_new_id(char out[37]);

/** The write-behind record of the single-PUT upload in `s` (ids and key set; pointers into s). */
fm_record_t upload_record(const upload_state_t *s);

/** Records the single-PUT upload in `s` (upload id and key set) in PostgreSQL before answering 201: the backlog of
 *  records written behind was at its bound (records.c). */
void upload_record_through(fm_req_t *r, upload_state_t *s);

/** The 201 answer of a new upload (or Uppy's shape), presigned URLs included. */
void upload_answer_created(fm_req_t *r, upload_state_t *s);

/** Creates the upload (S3 multipart first if needed), records it, and answers 201 (or Uppy's shape). */
void upload_start(fm_req_t *r, upload_state_t *s);

/** A presigned PUT for `key` (a part when part_number > 0) valid `ttl` seconds, with Content-Type (unless NULL) and
 *  Content-Length (unless < 0) signed; NULL (logged) on failure. */
char *upload_presign(fm_req_t *r, const char *key, const char *content_type, long long content_length,
                     int part_number, const char *s3_upload_id, long long ttl);

/* uploads_complete.c, shared with uppy.c */
void upload_complete_loaded(fm_req_t *r, upload_state_t *s);
void upload_abort_loaded(fm_req_t *r, upload_state_t *s);
void upload_list_parts_loaded(fm_req_t *r, upload_state_t *s);

/** Formats unix time t as 2026-01-02T03:04:05Z. */
void iso8601(long long t, char out[32]);

#endif
