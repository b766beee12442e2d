/*
 * fm-control's process-wide and per-thread state, shared by its route files (auth.c, health.c, …).
 */
#ifndef FM_CONTROL_H
#define FM_CONTROL_H

#include "config.h"
#include "http.h"
#include "jwt.h"
#include "password.h"
#include "pg.h"
#include "rcache.h"
#include "redis.h"
#include "s3.h"
#include "sigv4.h"
#include "uuid.h"

/** The process: configuration and what every thread reads but never changes after start. Owned by main.c. */
typedef struct fm_control {
    fm_config_t config;
    fm_jwt_verifier_t *verifier;
    fm_password_params_t argon2;
    char dummy_password_hash[FM_PASSWORD_HASH_BUF_SIZE]; /* verified against when the email is unknown */
} fm_control_t;

/** One event-loop thread's connections. Owned by that thread. */
typedef struct reconcile reconcile_t;
typedef struct records_flusher records_flusher_t;

typedef struct fm_control_thread {
    fm_redis_t *redis;
    fm_rcache_t *rcache; /* tracked local copies of sessions and file rows; NULL with FM_REDIS_CACHE_MAX_AGE_MS=0 */
    fm_pg_t *pg;
    reconcile_t *reconcile;     /* thread 0 only */
    records_flusher_t *records; /* every thread, when records are written behind */
    fm_sigv4_t *signer; /* presigns the URLs handed to clients (FM_S3_PUBLIC_ENDPOINT) */
    fm_jwt_memo_t *tokens; /* access tokens this thread verified (auth.c) */
    uint64_t tokens_hits_told, tokens_misses_told; /* what thread_tick has already added to the metrics */
} fm_control_thread_t;

/** Who is calling, once fm_auth_require() accepted the bearer token. */
typedef struct fm_principal {
    char user_id[40];
    char session_id[40]; /* empty for external-IdP tokens */
    fm_jwt_role_t role;
    fm_jwt_source_t source;
} fm_principal_t;

/** The job stream and its consumer group (DESIGN.md §5). */
#define FM_JOBS_STREAM "jobs"
#define FM_JOBS_GROUP "workers"

/** What the stream entry of a job carries; the worker reads the rest from the `jobs` row. */
typedef struct fm_job_ref {
    const char *job_id, *type, *file_id, *upload_id;
} fm_job_ref_t;

/** The running service (set by main.c before the threads start). */
extern fm_control_t *fm_control;

static inline fm_control_thread_t *fm_control_thread(fm_req_t *r)
{
    return r->thread->data;
}

/**
 * Authenticates the request's bearer token (signature, claims, session not revoked) and then calls
 * next(r, principal); on failure answers 401 (or 503 when Redis/PostgreSQL cannot tell) and never calls next.
 * The principal lives as long as the request.
 */
void fm_auth_require(fm_req_t *r, void (*next)(fm_req_t *r, const fm_principal_t *principal));

/* Calls on behalf of a request (calls.c): each holds r; its callback starts with fm_req_resume(). */
void fm_pg_call(fm_req_t *r, fm_pg_cb cb, const char *sql, int nparams, const char *const *params);
void fm_redis_call(fm_req_t *r, fm_redis_cb cb, int argc, const char **argv);
/** fm_pg_call for a hot statement: `sql` a string literal or a static constant (its address is its identity),
 *  prepared once per connection (fm_pg_query_prepared). */
void fm_pg_call_prepared(fm_req_t *r, fm_pg_cb cb, const char *sql, int nparams, const char *const *params);
/** The same with the caller's context: cb gets `ctx` (which must lead back to r, for the callback's fm_req_resume),
 *  and a call refused at once (shutting down) returns -1 with r no longer held and nothing answered: what a refusal
 *  means is the caller's (an answer, or carrying on as jobs.c does). 0 when the call is on its way. */
int fm_pg_call_with(fm_req_t *r, void *ctx, fm_pg_cb cb, const char *sql, int nparams, const char *const *params);
int fm_redis_call_with(fm_req_t *r, void *ctx, fm_redis_cb cb, int argc, const char **argv);
/** fm_pg_call_with for a hot statement (as fm_pg_call_prepared). */
int fm_pg_call_prepared_with(fm_req_t *r, void *ctx, fm_pg_cb cb, const char *sql, int nparams,
                             const char *const *params);
/** GET `key`, answered from the thread's tracked copy when it holds one (then cb runs before this returns). */
void fm_redis_get_cached(fm_req_t *r, fm_redis_cb cb, const char *key);
/** Runs work(r) on the offload pool, then done(r) on r's loop; answers 503 naming `what` if the pool is full. */
void fm_offload_call(fm_req_t *r, void (*work)(void *), void (*done)(void *), const char *what);
/** The same on the password hashing pool (FM_HASH_THREADS): argon2id's memory and CPU stay off the S3 calls' pool. */
void fm_hash_call(fm_req_t *r, void (*work)(void *), void (*done)(void *));
/** Answer 503 (no result: the database is unreachable) or 500 (an SQL error) and return 1; 0 when res is fine. */
int fm_pg_failed(fm_req_t *r, PGresult *res, const char *errstr);
/** Answer 503 and return 1 when Redis failed; 0 when the reply is usable. */
int fm_redis_failed(fm_req_t *r, redisReply *reply, const char *errstr);

/** The S3 client settings of this service (FM_S3_*) with the given timeouts (s3_client.c). */
fm_s3_config_t fm_s3_config(long connect_timeout_ms, long timeout_ms);
/** The calling offload thread's S3 client (s3_client.c; made on first use from the configuration); NULL if it cannot
 *  be made. Only for work functions running on the offload pool. */
fm_s3_t *fm_offload_s3(void);

/** Adds a job to the stream (and records enqueued_at), then calls done(r); failures are logged, not answered:
 *  the job row exists and the reconciler enqueues it later. `arg` is malloc'd (or NULL); if the request goes away
 *  before done runs, it is free()d instead. */
void fm_jobs_enqueue(fm_req_t *r, const fm_job_ref_t *job, void (*done)(fm_req_t *r, void *arg), void *arg);
/** Creates the consumer group (and the stream) if missing; asynchronous, errors logged. */
void fm_jobs_ensure_group(fm_redis_t *redis);

/** What fm_upload_mark() found: outcome "uploaded" (this call made the job, now on the stream), "already",
 *  "size_mismatch", "not_pending" or "unknown"; job_id/file_id may be "". */
typedef void (*fm_upload_marked_fn)(fm_req_t *r, const char *outcome, const char *job_id, const char *file_id);
/** Marks upload `upload_id` UPLOADED (its object has `size` bytes, -1 = unchecked) and enqueues its one job
 *  (schema/003_uploads.sql fm_upload_mark_uploaded); answers 503/500 itself when PostgreSQL fails. */
void fm_upload_mark(fm_req_t *r, const char *upload_id, long long size, const char *etag, const char *by,
                    fm_upload_marked_fn done);

/* Write-behind of new file records (records.c, docs/decisions.md). */
/** A new file: a single-PUT upload (upload_id set) or a dedupe hit (upload_id NULL: READY on the owner's blob). */
typedef struct fm_record {
    const char *upload_id, *file_id, *owner_id, *name, *content_type, *sha256, *object_key;
    long long size, expires_at;
} fm_record_t;
typedef void (*fm_records_next_fn)(fm_req_t *r, void *arg);
/** Computes the script ids once per process. */
int fm_records_init(void);
/** What a record script did: stored the upload record, stored a dedupe record (READY on the owner's blob, same file
 *  id) instead, stored nothing because the index names the hash with another size or is not built, or stored nothing
 *  because the backlog of records only in Redis is at its bound (FM_RECORD_BACKLOG_MAX / _MS): the caller then
 *  writes the upload (FULL) or the dedupe (FULL_DEDUPE) through to PostgreSQL, after fm_records_through(); or
 *  stored nothing because the owner's quota copy (quota.h) is missing or says the size does not fit: PostgreSQL
 *  decides, the caller writes the upload (QUOTA) or the dedupe (QUOTA_DEDUPE) through, which checks the quota. */
typedef enum {
    FM_RECORD_UPLOAD,
    FM_RECORD_DEDUPE,
    FM_RECORD_OTHER_SIZE,
    FM_RECORD_INDEX_MISSING,
    FM_RECORD_FULL,
    FM_RECORD_FULL_DEDUPE,
    FM_RECORD_QUOTA,
    FM_RECORD_QUOTA_DEDUPE
} fm_record_outcome_t;
typedef void (*fm_records_done_fn)(fm_req_t *r, fm_record_outcome_t outcome);
/** Stores the record in Redis (atomically, with its place in the backlog) unless the backlog is at its bound, then
 *  calls done(r, UPLOAD / DEDUPE, or FULL / FULL_DEDUPE / QUOTA / QUOTA_DEDUPE: nothing stored); answers 503 itself
 *  when Redis fails. */
void fm_records_put(fm_req_t *r, const fm_record_t *rec, fm_records_done_fn done);
/** POST /v1/uploads in one Redis round trip: asks the owner's dedupe index `index_key` for upload->sha256 and
 *  stores the record that follows from the answer in the same script (within the backlog's bound); answers 503
 *  itself when Redis fails. */
void fm_records_put_or_dedupe(fm_req_t *r, const fm_record_t *upload, const char *index_key, fm_records_done_fn done);
/** Past the backlog's bound: returns 1 when the caller may write the record through to PostgreSQL now; 0 after
 *  answering 503 + Retry-After because this thread's PostgreSQL pool is itself behind (queries waiting). */
int fm_records_through(fm_req_t *r);
/** Makes sure the record `record_id` (an upload id, or the file id of a dedupe) is in PostgreSQL if it was written
 *  behind and not flushed yet, then calls next(r, arg). Answers 503 itself (and frees arg) when Redis or PostgreSQL
 *  cannot tell; if the request goes away meanwhile, arg is free()d. */
void fm_records_ensure(fm_req_t *r, const char *record_id, fm_records_next_fn next, void *arg);
/** For a statement that found no row of file `file_id`: the file may have been created a moment ago and still be a
 *  record in Redis. Unless *checked (then sets it), looks for that record, brings it into PostgreSQL and calls
 *  next(r, NULL) to run the statement again (404 not_found if there is none): returns 1, the request goes on there.
 *  Returns 0 when there is nothing to look for (the caller answers 404). */
int fm_records_retry_file(fm_req_t *r, const char *file_id, int *checked, fm_records_next_fn next);
/** Starts the thread's flusher (every event-loop thread runs one; they share the backlog through Redis). */
records_flusher_t *fm_records_flusher_start(fm_thread_t *thread);
/** After the thread's pools were destroyed. */
void fm_records_flusher_stop(records_flusher_t *f);
/** Loads the browser client's files from `dir` (web.c); "" = none. Returns 0, or -1 if the folder is unreadable. */
int fm_web_load(const char *dir);
void fm_web_free(void);

/** Starts the reconciler on `thread` (reconcile.c); stop it after the thread's pools were destroyed. */
reconcile_t *fm_reconcile_start(fm_thread_t *thread);
void fm_reconcile_stop(reconcile_t *rc);

/**
 * Reads file `id` (id_len bytes) as its cached row (files.c: Redis `fm:file:{id}`, filled from PostgreSQL on a miss)
 * and calls next(r, row, arg) if `p` owns it; otherwise answers 404 (503/500 when PostgreSQL cannot tell) and never
 * calls next. `row` is the JSON of GET /v1/files/{id} plus the internal fields owner_id, visibility, storage_key
 * (null until verified) and variants (blobs.variants, {} when none); it is borrowed for the call (the thread keeps
 * it for the next reader of the same text): next must not change or free it. With next NULL the row is answered
 * as GET /v1/files/{id} answers it.
 * Uses the request's handler state (fm_req_state): the caller must not have its own.
 */
void fm_file_row(fm_req_t *r, const fm_principal_t *p, const char *id, size_t id_len,
                 void (*next)(fm_req_t *r, const cJSON *row, void *arg), void *arg);
/**
 * GET /v1/files/{id}'s answer built from a file row of fm_file_row (borrowed): the row without its internal fields,
 * `metadata` ({} until READY) and `variants` (what exists of the blob's stored variants, [{name, format, width,
 * height, size}], never their keys; [] until READY). Never GPS. The caller owns the result.
 */
cJSON *fm_file_answer(const cJSON *row);
/** Frees what files.c keeps for the calling event-loop thread (its parsed rows); at the thread's end. */
void fm_files_thread_dispose(void);
/** Frees the first pages files_list.c keeps for the calling event-loop thread; at the thread's end. */
void fm_files_list_thread_dispose(void);
/** Describes files.c's metrics (exposed at 0 from the start); once, before the threads start. */
void fm_files_describe_metrics(void);
/** The owner's files or folders changed (tree.c): drops every cached listing page of the owner, fire and forget. */
void fm_tree_changed(fm_control_thread_t *thread, const char *owner_id);
/** True when PostgreSQL refused a statement because a name is taken among the live siblings (tree.c): SQLSTATE 23505
 *  on entry_names_pkey (schema/012_tree.sql), which the routes answer 409 name_taken or retry under a free name. */
int fm_pg_name_taken(const PGresult *res);
/** After fm_pg_name_taken: with on_conflict=rename (`rename`), returns 1 while fewer than FM_NAME_TRIES_MAX tries
 *  were made (*tries counts them): fm_free_name's choice was taken meanwhile, the caller runs its statement again;
 *  otherwise answers 409 name_taken and returns 0 (tree.c). */
#define FM_NAME_TRIES_MAX 4
int fm_name_retry(fm_req_t *r, int rename, int *tries);
/** When PostgreSQL refused a statement because the target folder holds FM_FOLDER_ENTRIES_MAX entries already
 *  (schema 018 fm_folder_room, SQLSTATE FMF01): answers 422 folder_full and returns 1; else 0 (tree.c). */
int fm_pg_folder_full(fm_req_t *r, const PGresult *res);
/** The same for the owner of file `file_id` (looked up in PostgreSQL first: for the background paths that know only
 *  the file, e.g. the reconciler and the admin retry). A file no longer in PostgreSQL changes no listing. */
void fm_tree_file_changed(fm_control_thread_t *thread, const char *file_id);
/** A file or job id from the path, as the caches key it (lowercase) into `out`; answers 404 "no such {kind}" and
 *  returns -1 when it is no UUID. */
int fm_id_param(fm_req_t *r, const char *kind, const char *id, size_t len, char out[37]);

/**
 * Loads the download signing keys (FM_CF_KEYS, download.c) once at start; empty = downloads answer 503. Returns 0,
 * or -1 after logging what is wrong. fm_download_free releases them after the threads stopped.
 */
int fm_download_init(const fm_config_t *cfg);
void fm_download_free(void);

/** What fm_download_url signs: a READY file's object (`key` = its blob's storage_key) or one of its variants (`key`
 *  = the variant's key, `variant` and `format` its names). Strings are borrowed for the call. */
typedef struct fm_download_target {
    const char *file_id, *key, *name, *variant, *format;
    int attachment, is_public;
} fm_download_target_t;
/**
 * The edge URL of `t` (download.c, docs/downloads.md "Download URLs"): CloudFront-signed with the first FM_CF_KEYS
 * key pair (canned policy, one URL per object, this thread's cache of recent signatures), or the unsigned /p/ URL
 * of a public file. In r's pool. *expires (if not NULL) = its expiry, 0 when unsigned. NULL (logged) when it cannot
 * be signed, or downloads are disabled (see fm_download_enabled).
 */
const char *fm_download_url(fm_req_t *r, const fm_download_target_t *t, long long *expires);
/** 1 when FM_CF_KEYS configured signing keys. */
int fm_download_enabled(void);
/** The shortest life a URL signed now by fm_download_url has left (its expiry is rounded down to a tenth of
 *  FM_DOWNLOAD_URL_TTL_S): whoever caches signed URLs keeps them less long than this. */
long long fm_download_url_min_life_s(void);

/** Lifetime of a revocation mark fm:revoked:{id} (edge_index.c): the longest a download URL signed now can live. */
long long fm_revocation_ttl_s(void);

/* Route handlers, by file. */
void handle_auth_register(fm_req_t *r);
void handle_auth_login(fm_req_t *r);
void handle_auth_refresh(fm_req_t *r);
void handle_auth_logout(fm_req_t *r);
void handle_me(fm_req_t *r);
void handle_readyz(fm_req_t *r);
void handle_upload_create(fm_req_t *r);
void handle_upload_part_urls(fm_req_t *r);
void handle_upload_parts_list(fm_req_t *r);
void handle_upload_complete(fm_req_t *r);
void handle_upload_abort(fm_req_t *r);
void handle_events_s3(fm_req_t *r);
void handle_file_get(fm_req_t *r);
void handle_job_get(fm_req_t *r);
void handle_file_download(fm_req_t *r);
void handle_files_list(fm_req_t *r);
void handle_file_update(fm_req_t *r);
void handle_file_copy(fm_req_t *r);
void handle_file_delete(fm_req_t *r);
void handle_file_restore(fm_req_t *r);
void handle_folder_create(fm_req_t *r);
void handle_folder_get(fm_req_t *r);
void handle_folder_update(fm_req_t *r);
void handle_folder_delete(fm_req_t *r);
void handle_folder_restore(fm_req_t *r);
void handle_trash_list(fm_req_t *r);
void handle_trash_purge(fm_req_t *r);
void handle_trash_empty(fm_req_t *r);
void handle_files_delta(fm_req_t *r);
void handle_admin_jobs(fm_req_t *r);
void handle_admin_job_retry(fm_req_t *r);
void handle_web(fm_req_t *r);
void handle_uppy_params(fm_req_t *r);
void handle_uppy_multipart_create(fm_req_t *r);
void handle_uppy_sign_part(fm_req_t *r);
void handle_uppy_list_parts(fm_req_t *r);
void handle_uppy_complete(fm_req_t *r);
void handle_uppy_abort(fm_req_t *r);

/** Applies the schema/NNN_name.sql files that are not yet applied (blocking; for `fm-control migrate`). Returns 0 or -1. */
int fm_migrate(const char *conninfo, const char *schema_dir);

#endif
