/*
 * What the upload route files (uploads.c, uploads_create.c, uploads_complete.c, uppy.c) share: the per-request
 * state, the loading of an upload the caller owns, presigning, and the making of a new upload. Loop-thread only.
 */
#ifndef FM_UPLOADS_H
#define FM_UPLOADS_H

#include "control.h"

#define FM_UPLOAD_MAX_PARTS 10000

typedef struct fm_upload_state fm_upload_state_t;

/** How the bytes will travel: chosen by size (our API), one PUT, or multipart with parts the client sizes (Uppy). */
typedef enum { FM_UPLOAD_MODE_AUTO, FM_UPLOAD_MODE_SINGLE, FM_UPLOAD_MODE_CLIENT_PARTS } fm_upload_mode_t;
typedef void (*fm_upload_loaded_fn)(fm_req_t *r, fm_upload_state_t *s);

struct fm_upload_state {
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
    fm_upload_loaded_fn loaded;
    fm_upload_mode_t mode;
    int uppy; /* answer in Companion's shapes (uppy.c) */
    /* on_conflict (docs/uploads.md): 0 = fail, the default: the row goes to PostgreSQL before the answer (409
     * name_taken); 1 = rename: written behind where it can be, the name settled when the row lands */
    int rename;
    int name_tries;   /* write-through inserts that met a name taken meanwhile (rename retries a few times) */
    int name_settled; /* s->name is the file's name in PostgreSQL: the answer says it */
    /* The quota hold of a charge decided in PostgreSQL (quota.h): 0 until asked, then 1 + fm_quota_hold_t; kept
     * across a name retry and from the dedupe to the upload it falls back to, ended once with the outcome. */
    int quota_hold;
    int through; /* past the records backlog's bound: fm_records_through is asked right before the statement */
    char uppy_key[80];
};


/* ---- uploads.c: the state, loading an upload, presigning (POST/GET /v1/uploads/{id}/parts live there too) ---- */

/** The request's upload state (zeroed on first use, freed with the request). */
fm_upload_state_t *fm_upload_state(fm_req_t *r);

/** Loads upload {id} (r->params[0]) of the caller into the state and calls next; answers 404 for a missing upload or
 *  someone else's (the two are not told apart). */
void fm_upload_load(fm_req_t *r, const fm_principal_t *p, fm_upload_loaded_fn next);

/** A presigned PUT for `key` (a part when part_number > 0) valid `ttl` seconds, with Content-Type (unless NULL) and
 *  Content-Length (unless < 0) signed; NULL (logged) on failure. */
char *fm_upload_presign(fm_req_t *r, const char *key, const char *content_type, long long content_length,
                        int part_number, const char *s3_upload_id, long long ttl);

/** Adds {part_number, url} for each of `numbers` to `array`; returns -1 (after answering 500) if signing failed. */
int fm_upload_add_part_urls(fm_req_t *r, fm_upload_state_t *s, cJSON *array, const int *numbers, size_t count,
                            long long ttl);

/** GET /v1/uploads/{id}/parts once the upload is loaded (Companion's shape when s->uppy). */
void fm_upload_list_parts_loaded(fm_req_t *r, fm_upload_state_t *s);

/* ---- uploads_create.c: POST /v1/uploads, whose making of a new upload uppy.c shares ------------------------- */

/** Checks the fields of a new upload and copies them into s; answers 4xx and returns -1 when one is bad. */
int fm_upload_validate(fm_req_t *r, fm_upload_state_t *s, const char *name, double size, const char *type,
                       const char *sha, const char *folder);

/** Reads on_conflict ("fail" | "rename"; NULL = fail) into s; answers 422 invalid_field and returns -1 otherwise. */
int fm_upload_on_conflict(fm_req_t *r, fm_upload_state_t *s, const char *value);

/** Creates the upload (S3 multipart first if needed), records it, and answers 201 (or Uppy's shape). */
void fm_upload_start(fm_req_t *r, fm_upload_state_t *s);

/* ---- uploads_complete.c, shared with uppy.c ------------------------------------------------------------------ */
void fm_upload_complete_loaded(fm_req_t *r, fm_upload_state_t *s);
void fm_upload_abort_loaded(fm_req_t *r, fm_upload_state_t *s);

#endif
