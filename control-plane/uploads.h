/*
 * What the upload route files (uploads.c, uploads_complete.c) share: the per-request state and the loading of an
 * upload the caller owns.
 */
#ifndef FM_UPLOADS_H
#define FM_UPLOADS_H

#include "control.h"

#define MAX_PARTS 10000

typedef struct upload_state upload_state_t;
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
};


/** The request's upload state (zeroed on first use, freed with the request). */
upload_state_t *upload_state(fm_req_t *r);

/** Loads upload {id} (r->params[0]) of the caller into the state and calls next; answers 404 for a missing upload or
 *  someone else's (the two are not told apart). */
void load_upload(fm_req_t *r, const fm_principal_t *p, upload_loaded_fn next);

/** Formats unix time t as 2026-01-02T03:04:05Z. */
void iso8601(long long t, char out[32]);

#endif
