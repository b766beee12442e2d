/*
 * Configuration from FM_* environment variables (DESIGN.md §3).
 *
 * One table describes every variable: name, type, default, bounds, whether it is a secret, and what it is for.
 * fm_config_load() validates the whole environment against it at start; a bad value stops the service with a
 * message naming the variable. The same table prints the README's configuration table (`fm-control config`).
 */
#ifndef FM_CONFIG_H
#define FM_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/** Which services read a variable (a bit set); `fm_config_load` validates only the caller's variables. */
enum {
    FM_SVC_CONTROL = 1,
    FM_SVC_EDGE = 2,
    FM_SVC_WORKER = 4,
    FM_SVC_ALL = 7,
};

/** Every setting of every service. Strings are NUL-terminated and owned by the config (never NULL: "" when unset). */
typedef struct fm_config {
    /* process */
    int64_t threads;
    char bind[64];
    int64_t http_port, https_port;
    char tls_cert[512], tls_key[512];
    int64_t hsts_max_age_s; /* http.c: Strict-Transport-Security on TLS answers; 0 = none */
    int64_t max_body_bytes;
    int64_t graceful_timeout_ms;
    char log_level[8];
    char access_log[8];        /* log.c: off | sample | all */
    int64_t access_log_sample; /* one line in this many answers below 400 when sampled */
    char events_secret[256];
    char web_dir[512];
    /* uploads */
    int64_t max_upload_bytes, multipart_threshold, upload_url_ttl_s, upload_expiry_s, reconcile_interval_s;
    int64_t record_flush_ms;
    int64_t record_backlog_max, record_backlog_ms; /* control-plane/records.c: the bound of the write-behind backlog */
    int64_t trash_retention_s; /* control-plane/file_delete.c, reconcile.c: deleted files stay restorable this long */
    int64_t folder_entries_max; /* control-plane/folders.c: live entries per folder */
    int64_t folder_move_max;    /* control-plane/folders.c: descendant folders a move rewrites */
    int64_t folder_trash_max;   /* control-plane/folders.c: entries a folder trash takes */
    int64_t delta_retention_s; /* control-plane/delta.c, reconcile.c: changes kept for GET /v1/files/delta */
    char allowed_content_types[2048];
    char s3_public_endpoint[256];
    /* downloads (control-plane/download.c, docs/downloads.md "Download URLs") */
    char cf_keys[2048];
    int64_t download_url_ttl_s;
    /* dependencies */
    char database_url[1024];
    int64_t pg_pool_size, pg_timeout_ms, pg_prepared;
    char redis_url[512];
    int64_t redis_pool_size, redis_timeout_ms, redis_cache_max_age_ms;
    char s3_endpoint[256], s3_region[64], s3_bucket[64];
    char s3_access_key[128], s3_secret_key[128], s3_session_token[2048];
    int64_t offload_threads;
    int64_t hash_threads, hash_queue_max;
    /* accounts */
    char jwt_secret[256];
    char jwt_issuer[256];
    int64_t access_ttl_s, refresh_ttl_s;
    char jwt_external_key_file[512], jwt_external_alg[8], jwt_external_issuer[256];
    char external_default_role[8];
    char admin_email[256];
    int64_t argon2_m_kib, argon2_t, argon2_p;
    int64_t login_limit_account, login_limit_ip, login_window_s;
    int64_t login_limit_account_ip, login_limit_net, login_delay_max_s, login_known_ttl_s; /* control-plane/limits.c */
    int64_t register_limit_ip;
    /* edge and worker (health only for now) */
    int64_t edge_http_port, edge_https_port;
    /* edge (edge/, docs/downloads.md "fm-edge") */
    char edge_public_base[256];
    char edge_cache_dir[512];
    int64_t edge_cache_max_bytes;
    int64_t edge_memory_bytes;
    int64_t edge_memory_object_max;
    char edge_cf_public_keys[2048];
    char edge_purge_secret[256]; /* fm-edge checks it; fm-worker sends it with each purge */
    int64_t edge_max_age_s;
    int64_t edge_max_dimension;    /* w/h bound of on-the-fly image variants */
    int64_t edge_max_input_pixels; /* largest source image a variant is rendered from */
    int64_t edge_events;           /* 1 = access events into the Redis Stream below */
    int64_t edge_public_max_age_s; /* Cache-Control max-age of /p/ answers */
    char edge_events_stream[128];
    int64_t edge_render_threads, edge_renders_max, edge_renders_per_client; /* renders: own pool, admission */
    int64_t edge_cache_object_max_bytes;      /* larger objects pass through (0 = half the cache) */
    int64_t edge_cold_range_max_bytes;        /* small ranges of cold objects: ranged origin GETs */
    int64_t edge_passthrough_max;             /* answers streamed straight from the origin at once */
    int64_t edge_abandoned_fill_finish_bytes; /* a fill nobody waits for finishes only below this */
    int64_t worker_health_port;
    /* worker (lambda-workers/, docs/workers.md) */
    int64_t worker_threads;
    char clamd_host[256];
    int64_t clamd_port, clamd_timeout_ms;
    char worker_tmp_dir[512];
    int64_t job_max_attempts, job_backoff_base_ms, job_visibility_ms;
    int64_t job_backoff_max_ms, job_transient_max_s; /* process.c: dependency errors (docs/workers.md "Retries") */
    int64_t max_image_pixels, text_max_bytes, thumb_px, preview_px;
    int64_t s3_copy_part_bytes; /* stage.c/process.c: largest single server-side copy, parts above */
    int64_t cleanup_interval_s, blob_grace_s; /* cleanup.c: unreferenced blobs */
    char edge_purge_urls[2048];               /* purge.c: base URLs of the edges, comma-separated */
} fm_config_t;

/**
 * Fills `cfg` from the environment for `service` (FM_SVC_*). Returns 0, or -1 after writing one line per bad
 * variable to `err` (the caller prints it and exits 2). Secrets are never echoed in messages.
 */
int fm_config_load(fm_config_t *cfg, unsigned service, FILE *err);

/** Prints the variables of `service` as a Markdown table (name, default, meaning) for the README. */
void fm_config_print_table(unsigned service, FILE *out);

/** Longest base URL in a URL list setting (FM_EDGE_PURGE_URLS). */
#define FM_CONFIG_URL_MAX 512

/**
 * The next item of a comma-separated list setting: blanks around an item are skipped, and so are empty items
 * ("a,,b" is a and b). Start with *pos = 0; each call points *item into `list` and returns its length, 0 at the end.
 * Items are not NUL-terminated.
 */
size_t fm_config_list_next(const char *list, size_t *pos, const char **item);

/**
 * Splits a Redis URL `redis://[[user]:password@]host[:port][/db]` into parts (port 6379 and db 0 by default).
 * Returns 0, or -1 when it does not parse.
 */
int fm_redis_url_parse(const char *url, char *host, size_t host_size, int *port, char *password, size_t password_size,
                       int *db);

#endif
