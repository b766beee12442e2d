/* Configuration table and loader: see config.h. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { T_INT, T_STR, T_SECRET, T_ENUM } kind_t;

/* Types a file-storage product is expected to take; the worker sniffs the real type by magic numbers. */
#define FM_DEFAULT_CONTENT_TYPES                                                                                    \
    "image/jpeg,image/png,image/gif,image/webp,image/avif,image/heic,image/tiff,image/svg+xml,application/pdf,"   \
    "text/plain,text/csv,text/markdown,application/json,application/zip,application/gzip,application/x-tar,"      \
    "application/octet-stream,video/mp4,video/webm,video/quicktime,audio/mpeg,audio/ogg,audio/wav,audio/flac,"     \
    "application/msword,application/vnd.openxmlformats-officedocument.wordprocessingml.document,"                  \
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet,"                                          \
    "application/vnd.openxmlformats-officedocument.presentationml.presentation"

typedef struct {
    const char *name;
    kind_t kind;
    unsigned services;
    const char *def;  /* NULL = required, "" = optional empty */
    int64_t min, max; /* T_INT: value bounds; T_STR/T_SECRET: length bounds (min only checked when set) */
    const char *choices; /* T_ENUM: "|a|b|c|" */
    size_t offset, size;
    const char *help;
} var_t;

#define INT(n, svc, d, lo, hi, field, h) {n, T_INT, svc, d, lo, hi, NULL, offsetof(fm_config_t, field), 0, h}
#define STR(n, svc, d, lo, field, h)                                                                                    \
    {n, T_STR, svc, d, lo, sizeof(((fm_config_t *)0)->field) - 1, NULL, offsetof(fm_config_t, field),                  \
     sizeof(((fm_config_t *)0)->field), h}
#define SECRET(n, svc, d, lo, field, h)                                                                                 \
    {n, T_SECRET, svc, d, lo, sizeof(((fm_config_t *)0)->field) - 1, NULL, offsetof(fm_config_t, field),               \
     sizeof(((fm_config_t *)0)->field), h}
#define ENUM(n, svc, d, ch, field, h)                                                                                   \
    {n, T_ENUM, svc, d, 0, 0, ch, offsetof(fm_config_t, field), sizeof(((fm_config_t *)0)->field), h}

static const var_t vars[] = {
    INT("FM_THREADS", FM_SVC_ALL, "0", 0, 64, threads, "Event-loop threads; 0 = one per core"),
    STR("FM_BIND", FM_SVC_ALL, "127.0.0.1", 1, bind, "Address the HTTP listeners bind to"),
    INT("FM_HTTP_PORT", FM_SVC_CONTROL, "8080", 1, 65535, http_port, "fm-control HTTP/1.1 + h2c port"),
    INT("FM_HTTPS_PORT", FM_SVC_CONTROL, "8443", 0, 65535, https_port, "fm-control TLS (HTTP/2 + HTTP/1.1) port; 0 = off"),
    STR("FM_TLS_CERT", FM_SVC_CONTROL | FM_SVC_EDGE, "", 0, tls_cert, "PEM certificate chain for TLS (infra/up makes a self-signed one)"),
    STR("FM_TLS_KEY", FM_SVC_CONTROL | FM_SVC_EDGE, "", 0, tls_key, "PEM private key for TLS"),
    INT("FM_HSTS_MAX_AGE_S", FM_SVC_CONTROL | FM_SVC_EDGE, "31536000", 0, 63072000, hsts_max_age_s, "Strict-Transport-Security max-age on every answer sent over TLS (never on plain HTTP); 0 = no header"),
    INT("FM_MAX_BODY_BYTES", FM_SVC_CONTROL, "1048576", 1024, 67108864, max_body_bytes, "Largest request body accepted (413 above)"),
    INT("FM_GRACEFUL_TIMEOUT_MS", FM_SVC_ALL, "10000", 0, 600000, graceful_timeout_ms, "How long SIGTERM waits for in-flight requests"),
    ENUM("FM_LOG_LEVEL", FM_SVC_ALL, "info", "|debug|info|warn|error|", log_level, "Lowest level logged (JSON lines on stderr)"),
    ENUM("FM_ACCESS_LOG", FM_SVC_ALL, "all", "|off|sample|all|", access_log, "Access lines (info): all = one per answer; sample = every answer >= 400 and 1 in FM_ACCESS_LOG_SAMPLE of the others; off = only 5xx (infra/up: sample)"),
    INT("FM_ACCESS_LOG_SAMPLE", FM_SVC_ALL, "100", 1, 1000000, access_log_sample, "With FM_ACCESS_LOG=sample, one access line per this many answers below 400 (per thread)"),
    SECRET("FM_EVENTS_SECRET", FM_SVC_CONTROL, "", 16, events_secret, "Shared secret of POST /v1/events/s3 (S3 notifications)"),
    STR("FM_WEB_DIR", FM_SVC_CONTROL, "", 0, web_dir, "Folder of the browser client served at / (infra/up: web/); empty = not served"),
    INT("FM_MAX_UPLOAD_BYTES", FM_SVC_CONTROL, "53687091200", 0, 5497558138880LL, max_upload_bytes, "Largest file accepted by POST /v1/uploads (413 above; S3's limit is 5 TiB)"),
    INT("FM_MULTIPART_THRESHOLD", FM_SVC_CONTROL, "104857600", 5242880, 5368709120LL, multipart_threshold, "Sizes above it upload in parts (S3: a single PUT is at most 5 GiB)"),
    INT("FM_UPLOAD_URL_TTL_S", FM_SVC_CONTROL, "900", 1, 604800, upload_url_ttl_s, "Lifetime of presigned upload URLs (SigV4 allows 7 days); the store checks it when a request starts, so a long upload may outlast it. Kept short: until it expires the URL can PUT again (the worker never serves such a PUT, but it costs a copy and an event)"),
    INT("FM_UPLOAD_EXPIRY_S", FM_SVC_CONTROL, "86400", 60, 2592000, upload_expiry_s, "An upload not finished after this is abandoned: expired once a listing of incoming/ found no object for it (multipart aborted); also the age at which an object no record names is deleted"),
    INT("FM_RECORD_FLUSH_MS", FM_SVC_CONTROL, "50", 0, 60000, record_flush_ms, "New upload/dedupe records go to Redis and reach PostgreSQL in batches this often; 0 = written to PostgreSQL before answering"),
    INT("FM_RECORD_BACKLOG_MAX", FM_SVC_CONTROL, "20000", 1, 10000000, record_backlog_max, "Most records held only in Redis (all instances together); past it POST /v1/uploads writes its record to PostgreSQL before answering (503 + Retry-After when PostgreSQL is behind too)"),
    INT("FM_RECORD_BACKLOG_MS", FM_SVC_CONTROL, "1000", 1, 3600000, record_backlog_ms, "Oldest age of a record held only in Redis; past it POST /v1/uploads writes through as above"),
    INT("FM_RECONCILE_INTERVAL_S", FM_SVC_CONTROL, "30", 1, 86400, reconcile_interval_s, "How often the reconciler runs: lists incoming/ (up to 10,000 keys a round) to find uploads whose event was lost and objects to delete, expires abandoned uploads"),
    INT("FM_TRASH_RETENTION_S", FM_SVC_CONTROL, "2592000", 1, 315360000, trash_retention_s, "A deleted file stays restorable in the trash this long (30 days); then the reconciler deletes its row, and its blob once no file references it"),
    INT("FM_FOLDER_ENTRIES_MAX", FM_SVC_CONTROL, "100000", 1, 10000000, folder_entries_max, "Most live entries (files and folders) one folder may hold: a folder made or moved, a file uploaded, copied or moved into a full one answers 422 folder_full"),
    INT("FM_FOLDER_MOVE_MAX", FM_SVC_CONTROL, "10000", 0, 1000000, folder_move_max, "Most descendant folders a folder move rewrites in its one statement (422 subtree_too_large above)"),
    INT("FM_FOLDER_TRASH_MAX", FM_SVC_CONTROL, "10000", 1, 10000000, folder_trash_max, "Most entries (folders and live files) DELETE /v1/folders/{id} takes to the trash in its one transaction (422 subtree_too_large above; 10,000 take ~1.4 s, docs/benchmarks.md)"),
    INT("FM_DELTA_RETENTION_S", FM_SVC_CONTROL, "2592000", 1, 315360000, delta_retention_s, "GET /v1/files/delta keeps each change this long (30 days); the reconciler deletes older ones, and a cursor from before them answers 410 cursor_expired (the client lists again)"),
    STR("FM_ALLOWED_CONTENT_TYPES", FM_SVC_CONTROL, FM_DEFAULT_CONTENT_TYPES, 1, allowed_content_types, "Content types accepted for uploads (their type/subtype: parameters such as charset are allowed and kept), comma-separated; * = any"),
    STR("FM_CF_KEYS", FM_SVC_CONTROL, "", 0, cf_keys, "CloudFront key pairs that sign download URLs: Key-Pair-Id=private.pem, comma-separated; the first signs (rotation: put the new one first once fm-edge trusts it); empty = GET /v1/files/{id}/download answers 503 downloads_disabled"),
    INT("FM_DOWNLOAD_URL_TTL_S", FM_SVC_CONTROL, "300", 1, 604800, download_url_ttl_s, "Lifetime of signed download URLs (at most 7 days)"),
    STR("FM_S3_PUBLIC_ENDPOINT", FM_SVC_CONTROL, "", 0, s3_public_endpoint, "S3 endpoint as clients reach it, in presigned URLs (default FM_S3_ENDPOINT)"),
    SECRET("FM_DATABASE_URL", FM_SVC_CONTROL | FM_SVC_WORKER, NULL, 1, database_url, "libpq connection string of PostgreSQL"),
    INT("FM_PG_POOL_SIZE", FM_SVC_CONTROL | FM_SVC_WORKER, "4", 1, 64, pg_pool_size, "PostgreSQL connections per event-loop thread"),
    INT("FM_PG_PREPARED", FM_SVC_CONTROL, "1", 0, 1, pg_prepared, "1 = the hot statements (the records' batch insert; the user, session, file and upload reads) are prepared once per connection; 0 = every statement unnamed (behind PgBouncer < 1.21 in transaction mode)"),
    INT("FM_PG_TIMEOUT_MS", FM_SVC_CONTROL | FM_SVC_WORKER, "5000", 10, 600000, pg_timeout_ms, "Per-query timeout (503 after it)"),
    SECRET("FM_REDIS_URL", FM_SVC_ALL, NULL, 1, redis_url, "redis://[:password@]host:port[/db]"),
    INT("FM_REDIS_POOL_SIZE", FM_SVC_ALL, "2", 1, 64, redis_pool_size, "Redis connections per event-loop thread"),
    INT("FM_REDIS_TIMEOUT_MS", FM_SVC_ALL, "1000", 10, 600000, redis_timeout_ms, "Per-command timeout (503 after it)"),
    INT("FM_REDIS_CACHE_MAX_AGE_MS", FM_SVC_CONTROL | FM_SVC_EDGE, "10000", 0, 3600000, redis_cache_max_age_ms, "Sessions and file rows (fm-control) and revocation marks (fm-edge) read from Redis are kept per thread and dropped when Redis reports a change (CLIENT TRACKING); this bounds their age if reports stop unseen. 0 = no local copies (fm-edge then asks Redis at every signed download)"),
    STR("FM_S3_ENDPOINT", FM_SVC_ALL, NULL, 1, s3_endpoint, "S3 endpoint URL, path-style (e.g. http://127.0.0.1:17480)"),
    STR("FM_S3_REGION", FM_SVC_ALL, "us-east-1", 1, s3_region, "Region in the SigV4 scope"),
    STR("FM_S3_BUCKET", FM_SVC_ALL, "files-manager", 3, s3_bucket, "Bucket holding uploads, blobs and variants"),
    SECRET("FM_S3_ACCESS_KEY", FM_SVC_ALL, NULL, 1, s3_access_key, "S3 access key id"),
    SECRET("FM_S3_SECRET_KEY", FM_SVC_ALL, NULL, 1, s3_secret_key, "S3 secret access key"),
    SECRET("FM_S3_SESSION_TOKEN", FM_SVC_ALL, "", 0, s3_session_token, "Temporary-credential session token (X-Amz-Security-Token)"),
    INT("FM_OFFLOAD_THREADS", FM_SVC_ALL, "2", 1, 64, offload_threads, "Threads for blocking work (S3 calls; the edge's origin fetches)"),
    SECRET("FM_JWT_SECRET", FM_SVC_CONTROL | FM_SVC_EDGE, NULL, 32, jwt_secret, "HS256 key of access tokens, at least 32 bytes"),
    STR("FM_JWT_ISSUER", FM_SVC_CONTROL | FM_SVC_EDGE, "files-manager", 1, jwt_issuer, "iss of the tokens we issue and accept"),
    INT("FM_ACCESS_TTL_S", FM_SVC_CONTROL, "900", 30, 86400, access_ttl_s, "Access token lifetime (s)"),
    INT("FM_REFRESH_TTL_S", FM_SVC_CONTROL, "2592000", 60, 31536000, refresh_ttl_s, "Refresh token / session lifetime (s)"),
    STR("FM_JWT_EXTERNAL_KEY_FILE", FM_SVC_CONTROL, "", 0, jwt_external_key_file, "PEM public key of an external identity provider"),
    ENUM("FM_JWT_EXTERNAL_ALG", FM_SVC_CONTROL, "RS256", "|RS256|ES256|", jwt_external_alg, "Its algorithm, pinned (never read from the token)"),
    STR("FM_JWT_EXTERNAL_ISSUER", FM_SVC_CONTROL, "", 0, jwt_external_issuer, "Its iss claim; required with the key file"),
    ENUM("FM_EXTERNAL_DEFAULT_ROLE", FM_SVC_CONTROL, "member", "|admin|member|viewer|", external_default_role, "Role of external users whose token names none"),
    STR("FM_ADMIN_EMAIL", FM_SVC_CONTROL, "", 0, admin_email, "The account registered with this email becomes admin; every other registration is a member (ASCII; an internationalised domain in punycode)"),
    INT("FM_ARGON2_M_KIB", FM_SVC_CONTROL, "19456", 1024, 4194304, argon2_m_kib, "argon2id memory cost (KiB)"),
    INT("FM_ARGON2_T", FM_SVC_CONTROL, "2", 1, 100, argon2_t, "argon2id passes"),
    INT("FM_ARGON2_P", FM_SVC_CONTROL, "1", 1, 16, argon2_p, "argon2id lanes"),
    INT("FM_HASH_THREADS", FM_SVC_CONTROL, "1", 1, 64, hash_threads, "Threads hashing passwords (argon2id), apart from the offload pool: each keeps FM_ARGON2_M_KIB of memory"),
    INT("FM_HASH_QUEUE_MAX", FM_SVC_CONTROL, "16", 1, 65536, hash_queue_max, "Logins and registrations that may wait for a hashing thread; beyond, they answer 503 + Retry-After at once (the wait is at most this many hashes / FM_HASH_THREADS)"),
    INT("FM_LOGIN_LIMIT_ACCOUNT_IP", FM_SVC_CONTROL, "10", 1, 100000, login_limit_account_ip, "Failed logins on one account from one client (an IPv4 address or an IPv6 /64) per window; then that pair is refused (429) until the window ends"),
    INT("FM_LOGIN_LIMIT_ACCOUNT", FM_SVC_CONTROL, "10", 1, 100000, login_limit_account, "Failed logins on one account from all clients (counted until a window passes without one); beyond, clients it never logged in from wait a delay doubling per failure (1 s .. FM_LOGIN_DELAY_MAX_S); never a lock"),
    INT("FM_LOGIN_DELAY_MAX_S", FM_SVC_CONTROL, "60", 1, 3600, login_delay_max_s, "Longest delay between attempts on an account past FM_LOGIN_LIMIT_ACCOUNT"),
    INT("FM_LOGIN_KNOWN_TTL_S", FM_SVC_CONTROL, "2592000", 0, 31536000, login_known_ttl_s, "A client (IPv4 address or IPv6 /64) an account logged in from skips that account's delay this long; 0 = never"),
    INT("FM_LOGIN_LIMIT_IP", FM_SVC_CONTROL, "30", 1, 1000000, login_limit_ip, "Login attempts per client (an IPv4 address or an IPv6 /64) per window"),
    INT("FM_LOGIN_LIMIT_NET", FM_SVC_CONTROL, "120", 1, 10000000, login_limit_net, "Login attempts per network (an IPv4 /24 or an IPv6 /48) per window"),
    INT("FM_LOGIN_WINDOW_S", FM_SVC_CONTROL, "300", 1, 86400, login_window_s, "Rate-limit window for logins and registrations (s)"),
    INT("FM_REGISTER_LIMIT_IP", FM_SVC_CONTROL, "20", 1, 1000000, register_limit_ip, "Registrations per client (an IPv4 address or an IPv6 /64) per login window, refused ones (409 email_taken) included"),
    INT("FM_EDGE_HTTP_PORT", FM_SVC_EDGE, "8081", 1, 65535, edge_http_port, "fm-edge HTTP port"),
    INT("FM_EDGE_HTTPS_PORT", FM_SVC_EDGE, "8444", 0, 65535, edge_https_port, "fm-edge TLS port; 0 = off"),
    STR("FM_EDGE_PUBLIC_BASE", FM_SVC_CONTROL | FM_SVC_EDGE, "", 0, edge_public_base, "scheme://host[:port] clients use to reach the edge; fm-control signs download URLs for it and fm-edge verifies them as if sent there (default: fm-edge http://FM_BIND:FM_EDGE_HTTP_PORT, fm-control http://127.0.0.1:8081)"),
    STR("FM_EDGE_CACHE_DIR", FM_SVC_EDGE, "/tmp/fm-edge-cache", 1, edge_cache_dir, "Folder of the edge's disk cache (created; survives restarts)"),
    INT("FM_EDGE_CACHE_MAX_BYTES", FM_SVC_EDGE, "10737418240", 1048576, 1125899906842624LL, edge_cache_max_bytes, "Size cap of the disk cache; least recently used objects are evicted above it"),
    INT("FM_EDGE_MEMORY_BYTES", FM_SVC_EDGE, "33554432", 0, 17179869184LL, edge_memory_bytes, "Memory kept for the bytes of small hot cached objects (served without touching the disk; least recently used dropped above it); 0 = off"),
    INT("FM_EDGE_MEMORY_OBJECT_MAX", FM_SVC_EDGE, "65536", 1, 16777216, edge_memory_object_max, "Largest cached object (bytes) whose bytes may be kept in memory (FM_EDGE_MEMORY_BYTES)"),
    STR("FM_EDGE_CF_PUBLIC_KEYS", FM_SVC_EDGE, "", 0, edge_cf_public_keys, "Key pairs accepted on signed URLs: Key-Pair-Id=path.pem, comma-separated (rotation: list old and new); empty = every /f/ request is refused"),
    SECRET("FM_EDGE_PURGE_SECRET", FM_SVC_EDGE | FM_SVC_WORKER, "", 16, edge_purge_secret, "X-FM-Edge-Secret of POST /_edge/purge (fm-edge checks it, fm-worker sends it); empty = purge disabled"),
    STR("FM_EDGE_PURGE_URLS", FM_SVC_WORKER, "", 0, edge_purge_urls, "Base URLs of every fm-edge, comma-separated (http://host:port): purge_edge jobs POST /_edge/purge to each; empty = no edges to purge (the jobs succeed doing nothing)"),
    INT("FM_EDGE_MAX_AGE_S", FM_SVC_EDGE, "3600", 0, 31536000, edge_max_age_s, "Cache-Control max-age of /f/ answers, capped by the URL's Expires"),
    INT("FM_EDGE_PUBLIC_MAX_AGE_S", FM_SVC_EDGE, "60", 0, 86400, edge_public_max_age_s, "Cache-Control max-age of /p/ (public) answers, with must-revalidate: how long a shared cache may keep serving a file made private or deleted"),
    INT("FM_EDGE_MAX_DIMENSION", FM_SVC_EDGE, "4096", 16, 16384, edge_max_dimension, "Largest w/h of an on-the-fly image variant (?w=&h=); larger is a 400"),
    INT("FM_EDGE_MAX_INPUT_PIXELS", FM_SVC_EDGE, "100000000", 1000000, 1000000000, edge_max_input_pixels, "Largest source image (width x height, read from the header) a variant is rendered from; larger is a 422"),
    INT("FM_EDGE_EVENTS", FM_SVC_EDGE, "1", 0, 1, edge_events, "1 = append an access event per download to the Redis Stream FM_EDGE_EVENTS_STREAM (FM_REDIS_URL); 0 = none"),
    STR("FM_EDGE_EVENTS_STREAM", FM_SVC_EDGE, "downloads", 1, edge_events_stream, "Redis Stream of access events (XADD MAXLEN ~ 1000000)"),
    INT("FM_EDGE_RENDER_THREADS", FM_SVC_EDGE, "2", 1, 64, edge_render_threads, "Threads rendering on-the-fly image variants: a pool of their own, so renders never hold up origin fills (FM_OFFLOAD_THREADS)"),
    INT("FM_EDGE_RENDERS_MAX", FM_SVC_EDGE, "8", 1, 4096, edge_renders_max, "Variant renders queued or running at once, all clients together; one more is refused with 503 and Retry-After"),
    INT("FM_EDGE_RENDERS_PER_CLIENT", FM_SVC_EDGE, "2", 1, 4096, edge_renders_per_client, "Variant renders one client (an IPv4 address, an IPv6 /64) may have queued or running; one more is refused with 429 and Retry-After"),
    INT("FM_EDGE_CACHE_OBJECT_MAX_BYTES", FM_SVC_EDGE, "0", 0, 1125899906842624LL, edge_cache_object_max_bytes, "Largest object the disk cache keeps; a larger one is streamed through from the origin (ranged GETs), never cached; 0 = half of FM_EDGE_CACHE_MAX_BYTES"),
    INT("FM_EDGE_COLD_RANGE_MAX_BYTES", FM_SVC_EDGE, "1048576", 0, 1073741824, edge_cold_range_max_bytes, "A Range of at most this many bytes of an uncached object larger than it is answered by a ranged origin GET (nothing cached); a larger range fills the whole object; 0 = ranges always fill"),
    INT("FM_EDGE_PASSTHROUGH_MAX", FM_SVC_EDGE, "16", 1, 4096, edge_passthrough_max, "Answers streamed straight from the origin at once (small ranges of uncached objects, objects too large to cache); one more is refused with 503 and Retry-After"),
    INT("FM_EDGE_ABANDONED_FILL_FINISH_BYTES", FM_SVC_EDGE, "4194304", 0, 1125899906842624LL, edge_abandoned_fill_finish_bytes, "A fill whose every client went away goes on only while what is left to fetch is at most this, or at most what it already fetched; otherwise it stops"),
    INT("FM_WORKER_HEALTH_PORT", FM_SVC_WORKER, "8082", 1, 65535, worker_health_port, "fm-worker health endpoint port"),
    INT("FM_WORKER_THREADS", FM_SVC_WORKER, "2", 1, 64, worker_threads, "Job-consumer threads of fm-worker (each works one job at a time, with its own connections)"),
    STR("FM_CLAMD_HOST", FM_SVC_WORKER, "127.0.0.1", 1, clamd_host, "clamd TCP address (virus scan, INSTREAM)"),
    INT("FM_CLAMD_PORT", FM_SVC_WORKER, "3310", 1, 65535, clamd_port, "clamd TCP port"),
    INT("FM_CLAMD_TIMEOUT_MS", FM_SVC_WORKER, "30000", 100, 600000, clamd_timeout_ms, "clamd connect and per-read/write timeout; on expiry the job retries"),
    STR("FM_WORKER_TMP_DIR", FM_SVC_WORKER, "/tmp", 1, worker_tmp_dir, "Where the worker keeps the temporary copy of the object it processes (room for the largest upload per thread)"),
    INT("FM_S3_COPY_PART_BYTES", FM_SVC_WORKER, "5368709120", 5242880, 5368709120LL, s3_copy_part_bytes, "Largest object the worker copies with one CopyObject (incoming/ to staging/ to blobs/); larger ones are copied in parts of this size (S3's limit is 5 GiB)"),
    INT("FM_JOB_MAX_ATTEMPTS", FM_SVC_WORKER, "3", 1, 100, job_max_attempts, "Attempts of a job before it is FAILED and sent to the dead-letter stream jobs:dead"),
    INT("FM_JOB_BACKOFF_BASE_MS", FM_SVC_WORKER, "1000", 10, 3600000, job_backoff_base_ms, "Retry delay after attempt n is this × 2^n (2 s, 4 s … by default); after the n-th dependency error in a row, between half and all of this × 2^n"),
    INT("FM_JOB_BACKOFF_MAX_MS", FM_SVC_WORKER, "300000", 100, 86400000, job_backoff_max_ms, "Cap of the retry delay: a job waiting out a dependency outage (S3, clamd, PostgreSQL, an edge, the temp disk) is tried again at least this often"),
    INT("FM_JOB_TRANSIENT_MAX_S", FM_SVC_WORKER, "86400", 60, 2592000, job_transient_max_s, "A job failing on dependency errors (which never use its FM_JOB_MAX_ATTEMPTS) for this long without a break is FAILED with the last error"),
    INT("FM_JOB_VISIBILITY_MS", FM_SVC_WORKER, "60000", 1000, 3600000, job_visibility_ms, "A job of a dead worker (no heartbeat) is reclaimed by another after this long"),
    INT("FM_MAX_IMAGE_PIXELS", FM_SVC_WORKER, "100000000", 1, 10000000000LL, max_image_pixels, "Images with more pixels are refused undecoded (decompression bombs)"),
    INT("FM_TEXT_MAX_BYTES", FM_SVC_WORKER, "1048576", 0, 104857600, text_max_bytes, "Cap of the text extracted for search, per file"),
    INT("FM_THUMB_PX", FM_SVC_WORKER, "256", 16, 4096, thumb_px, "Longest edge of the `thumb` variants"),
    INT("FM_PREVIEW_PX", FM_SVC_WORKER, "1024", 64, 8192, preview_px, "Longest edge of the `preview` variants"),
    INT("FM_CLEANUP_INTERVAL_S", FM_SVC_WORKER, "300", 1, 86400, cleanup_interval_s, "How often one worker of the fleet looks for blobs no file references (cleanup_blob jobs)"),
    INT("FM_BLOB_GRACE_S", FM_SVC_WORKER, "86400", 0, 31536000, blob_grace_s, "A blob no file references is deleted (object and variants) once unreferenced this long"),
};

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

size_t fm_config_list_next(const char *list, size_t *pos, const char **item)
{
    for (;;) {
        size_t at = *pos;
        while (list[at] == ' ' || list[at] == '\t')
            ++at;
        if (list[at] == '\0') {
            *pos = at;
            *item = list + at;
            return 0;
        }
        size_t len = strcspn(list + at, ",");
        *pos = at + len + (list[at + len] == ',' ? 1 : 0);
        while (len > 0 && (list[at + len - 1] == ' ' || list[at + len - 1] == '\t'))
            --len;
        if (len > 0) {
            *item = list + at;
            return len;
        }
    }
}

/* Every item of a comma-separated list of base URLs is http(s)://host[:port][/path], printable ASCII without spaces,
 * at most FM_CONFIG_URL_MAX bytes. 0, or -1 after one line per bad item. */
static int check_url_list(const char *name, const char *list, FILE *err)
{
    int bad = 0;
    size_t pos = 0, len;
    const char *item;
    while ((len = fm_config_list_next(list, &pos, &item)) > 0) {
        size_t scheme = strncmp(item, "http://", 7) == 0 ? 7 : strncmp(item, "https://", 8) == 0 ? 8 : 0;
        int printable = 1;
        for (size_t i = 0; i < len; ++i)
            if (item[i] <= ' ' || item[i] >= 0x7f)
                printable = 0;
        if (scheme == 0 || len == scheme || item[scheme] == '/' || len > FM_CONFIG_URL_MAX || !printable) {
            fprintf(err, "config: %s: \"%.*s\" is not an http:// or https:// base URL (at most %d bytes)\n", name,
                    (int)(len > 80 ? 80 : len), item, FM_CONFIG_URL_MAX);
            ++bad;
        }
    }
    return bad ? -1 : 0;
}

int fm_config_load(fm_config_t *cfg, unsigned service, FILE *err)
{
    int bad = 0;
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); ++i) {
        const var_t *v = &vars[i];
        const char *value = getenv(v->name);
        int from_env = value != NULL && value[0] != '\0';
        if (!(v->services & service))
            from_env = 0; /* not ours: keep the default so shared code sees sane values */
        if (!from_env)
            value = v->def;
        if (value == NULL && !(v->services & service))
            continue; /* another service's required variable: left empty */
        if (value == NULL) {
            fprintf(err, "config: %s is required (%s)\n", v->name, v->help);
            ++bad;
            continue;
        }
        char *field = (char *)cfg + v->offset;
        switch (v->kind) {
        case T_INT: {
            int64_t n;
            if (parse_int(value, &n) != 0 || n < v->min || n > v->max) {
                fprintf(err, "config: %s=\"%s\" must be an integer in [%" PRId64 ", %" PRId64 "]\n", v->name, value,
                        v->min, v->max);
                ++bad;
                continue;
            }
            memcpy(field, &n, sizeof(n));
            break;
        }
        case T_STR:
        case T_SECRET: {
            size_t len = strlen(value);
            const char *shown = v->kind == T_SECRET ? "(secret)" : value;
            if (len > (size_t)v->max || (len > 0 && len < (size_t)v->min)) {
                fprintf(err, "config: %s=%s must be %" PRId64 "..%" PRId64 " bytes long\n", v->name, shown, v->min,
                        v->max);
                ++bad;
                continue;
            }
            memcpy(field, value, len + 1);
            break;
        }
        case T_ENUM: {
            char probe[80];
            snprintf(probe, sizeof(probe), "|%s|", value);
            if (strlen(value) >= v->size || strstr(v->choices, probe) == NULL) {
                fprintf(err, "config: %s=\"%s\" must be one of %s\n", v->name, value, v->choices);
                ++bad;
                continue;
            }
            strcpy(field, value);
            break;
        }
        }
    }
    if (bad)
        return -1;

    /* Cross-field rules. */
    if (cfg->threads == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->threads = cores > 0 ? (cores > 64 ? 64 : cores) : 1;
    }
    if ((service & FM_SVC_CONTROL) && (cfg->tls_cert[0] != '\0') != (cfg->tls_key[0] != '\0')) {
        fprintf(err, "config: FM_TLS_CERT and FM_TLS_KEY go together\n");
        ++bad;
    }
    if ((service & FM_SVC_CONTROL) && cfg->jwt_external_key_file[0] != '\0' && cfg->jwt_external_issuer[0] == '\0') {
        fprintf(err, "config: FM_JWT_EXTERNAL_KEY_FILE needs FM_JWT_EXTERNAL_ISSUER\n");
        ++bad;
    }
    if ((service & FM_SVC_CONTROL) && cfg->jwt_external_issuer[0] != '\0' &&
        strcmp(cfg->jwt_external_issuer, cfg->jwt_issuer) == 0) {
        fprintf(err, "config: FM_JWT_EXTERNAL_ISSUER must differ from FM_JWT_ISSUER (keys are chosen by issuer)\n");
        ++bad;
    }
    if (strncmp(cfg->s3_endpoint, "http://", 7) != 0 && strncmp(cfg->s3_endpoint, "https://", 8) != 0) {
        fprintf(err, "config: FM_S3_ENDPOINT=\"%s\" must start with http:// or https://\n", cfg->s3_endpoint);
        ++bad;
    }
    if ((service & FM_SVC_CONTROL) && cfg->s3_public_endpoint[0] == '\0')
        memcpy(cfg->s3_public_endpoint, cfg->s3_endpoint, sizeof(cfg->s3_public_endpoint));
    if ((service & FM_SVC_CONTROL) && cfg->edge_public_base[0] == '\0')
        snprintf(cfg->edge_public_base, sizeof(cfg->edge_public_base), "http://127.0.0.1:8081");
    if ((service & FM_SVC_CONTROL) && strncmp(cfg->edge_public_base, "http://", 7) != 0 &&
        strncmp(cfg->edge_public_base, "https://", 8) != 0) {
        fprintf(err, "config: FM_EDGE_PUBLIC_BASE=\"%s\" must start with http:// or https://\n", cfg->edge_public_base);
        ++bad;
    }
    if ((service & FM_SVC_WORKER) && cfg->edge_purge_urls[0] != '\0') {
        if (cfg->edge_purge_secret[0] == '\0') {
            fprintf(err,
                    "config: FM_EDGE_PURGE_URLS needs FM_EDGE_PURGE_SECRET (the edges refuse a purge without it)\n");
            ++bad;
        }
        if (check_url_list("FM_EDGE_PURGE_URLS", cfg->edge_purge_urls, err) != 0)
            ++bad;
    }
    if (strncmp(cfg->redis_url, "redis://", 8) != 0) {
        fprintf(err, "config: FM_REDIS_URL must start with redis://\n");
        ++bad;
    }
    return bad ? -1 : 0;
}

void fm_config_print_table(unsigned service, FILE *out)
{
    fprintf(out, "| variable | default | read by | meaning |\n|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); ++i) {
        const var_t *v = &vars[i];
        if (!(v->services & service))
            continue;
        const char *def = v->def == NULL ? "*required*" : v->def[0] == '\0' ? "—" : v->def;
        const char *quote = v->def && v->def[0] ? "`" : "";
        char readers[40] = "";
        if (v->services == FM_SVC_ALL)
            snprintf(readers, sizeof(readers), "all");
        else
            snprintf(readers, sizeof(readers), "%s%s%s%s%s", (v->services & FM_SVC_CONTROL) ? "control" : "",
                     (v->services & FM_SVC_CONTROL) && (v->services & ~FM_SVC_CONTROL) ? ", " : "",
                     (v->services & FM_SVC_EDGE) ? "edge" : "",
                     (v->services & FM_SVC_EDGE) && (v->services & FM_SVC_WORKER) ? ", " : "",
                     (v->services & FM_SVC_WORKER) ? "worker" : "");
        fprintf(out, "| `%s` | %s%s%s | %s | %s |\n", v->name, quote, def, quote, readers, v->help);
    }
}

int fm_redis_url_parse(const char *url, char *host, size_t host_size, int *port, char *password, size_t password_size,
                       int *db)
{
    if (strncmp(url, "redis://", 8) != 0)
        return -1;
    const char *p = url + 8, *at = strrchr(p, '@');
    password[0] = '\0';
    if (at != NULL) {
        const char *colon = memchr(p, ':', at - p);
        const char *pw = colon ? colon + 1 : p;
        if ((size_t)(at - pw) >= password_size)
            return -1;
        memcpy(password, pw, at - pw);
        password[at - pw] = '\0';
        p = at + 1;
    }
    size_t host_len = strcspn(p, ":/");
    if (host_len == 0 || host_len >= host_size)
        return -1;
    memcpy(host, p, host_len);
    host[host_len] = '\0';
    p += host_len;
    *port = 6379;
    *db = 0;
    if (*p == ':') {
        char *end;
        if (p[1] < '0' || p[1] > '9') /* strtol would skip spaces and signs */
            return -1;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v < 1 || v > 65535)
            return -1;
        *port = (int)v;
        p = end;
    }
    if (*p == '/' && p[1] != '\0') {
        char *end;
        if (p[1] < '0' || p[1] > '9')
            return -1;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end != '\0' || v < 0 || v > 10000)
            return -1;
        *db = (int)v;
    } else if (*p != '\0' && strcmp(p, "/") != 0) {
        return -1;
    }
    return 0;
}
