/*
 * fm-control: the control plane (DESIGN.md §1). `fm-control [serve]` runs the API; `fm-control migrate` applies
 * schema/; `fm-control config` prints the configuration table for the README.
 */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "metrics.h"

#ifndef FM_DEFAULT_SCHEMA_DIR
#define FM_DEFAULT_SCHEMA_DIR "schema"
#endif

fm_control_t *fm_control;

static const fm_route_t routes[] = {
    {"GET", "/readyz", handle_readyz},
    {"POST", "/v1/auth/register", handle_auth_register},
    {"POST", "/v1/auth/login", handle_auth_login},
    {"POST", "/v1/auth/refresh", handle_auth_refresh},
    {"POST", "/v1/auth/logout", handle_auth_logout},
    {"GET", "/v1/me", handle_me},
    {"POST", "/v1/uploads", handle_upload_create},
    {"POST", "/v1/uploads/{id}/parts", handle_upload_part_urls},
    {"GET", "/v1/uploads/{id}/parts", handle_upload_parts_list},
    {"POST", "/v1/uploads/{id}/complete", handle_upload_complete},
    {"DELETE", "/v1/uploads/{id}", handle_upload_abort},
    {"POST", "/v1/events/s3", handle_events_s3},
    {"GET", "/v1/files/delta", handle_files_delta}, /* before /v1/files/{id}: the first match wins */
    {"GET", "/v1/files", handle_files_list},
    {"GET", "/v1/files/{id}", handle_file_get},
    {"PATCH", "/v1/files/{id}", handle_file_update},
    {"DELETE", "/v1/files/{id}", handle_file_delete},
    {"POST", "/v1/files/{id}/restore", handle_file_restore},
    {"POST", "/v1/files/{id}/copy", handle_file_copy},
    {"GET", "/v1/files/{id}/download", handle_file_download},
    {"POST", "/v1/folders", handle_folder_create},
    {"GET", "/v1/folders/{id}", handle_folder_get},
    {"PATCH", "/v1/folders/{id}", handle_folder_update},
    {"DELETE", "/v1/folders/{id}", handle_folder_delete},
    {"POST", "/v1/folders/{id}/restore", handle_folder_restore},
    {"GET", "/v1/trash", handle_trash_list},
    {"DELETE", "/v1/trash", handle_trash_empty},
    {"DELETE", "/v1/trash/{id}", handle_trash_purge},
    {"GET", "/v1/jobs/{id}", handle_job_get},
    {"GET", "/v1/admin/jobs", handle_admin_jobs},
    {"POST", "/v1/admin/jobs/{id}/retry", handle_admin_job_retry},
    /* Companion's S3 routes for stock Uppy (uppy.c) */
    {"GET", "/v1/uppy/s3/params", handle_uppy_params},
    {"POST", "/v1/uppy/s3/multipart", handle_uppy_multipart_create},
    {"GET", "/v1/uppy/s3/multipart/{uploadId}/{partNumber}", handle_uppy_sign_part},
    {"POST", "/v1/uppy/s3/multipart/{uploadId}/complete", handle_uppy_complete},
    {"GET", "/v1/uppy/s3/multipart/{uploadId}", handle_uppy_list_parts},
    {"DELETE", "/v1/uppy/s3/multipart/{uploadId}", handle_uppy_abort},
};

/* Sessions (~50 bytes) and file rows (~1 KiB of JSON) per thread: 2048 × ≤ 4 KiB is 8 MiB at most. */
#define RCACHE_SLOTS 2048
#define RCACHE_VALUE_MAX 4096

static int thread_init(fm_thread_t *thread)
{
    const fm_config_t *cfg = &fm_control->config;
    fm_control_thread_t *ct = calloc(1, sizeof(*ct));
    char host[256], password[256];
    int port, db;
    if (ct == NULL)
        return -1;
    fm_redis_url_parse(cfg->redis_url, host, sizeof(host), &port, password, sizeof(password), &db);
    ct->redis = fm_redis_create(thread->loop, host, port,
                                password[0] ? password : NULL, db, (size_t)cfg->redis_pool_size,
                                (uint64_t)cfg->redis_timeout_ms);
    if (cfg->redis_cache_max_age_ms > 0 &&
        (ct->rcache = fm_rcache_create(thread->loop, host, port, password[0] ? password : NULL, db,
                                       (uint64_t)cfg->redis_timeout_ms, RCACHE_SLOTS, RCACHE_VALUE_MAX,
                                       (uint64_t)cfg->redis_cache_max_age_ms)) == NULL) {
        fm_error("thread %zu: cannot create the Redis read cache", thread->index);
        return -1;
    }
    ct->pg = fm_pg_create(thread->loop, cfg->database_url, (size_t)cfg->pg_pool_size,
                          (uint64_t)cfg->pg_timeout_ms);
    fm_pg_set_prepared(ct->pg, (int)cfg->pg_prepared);
    ct->signer = fm_sigv4_new(cfg->s3_access_key, cfg->s3_secret_key, cfg->s3_session_token, cfg->s3_region, "s3");
    ct->tokens = fm_jwt_memo_new();
    OPENSSL_cleanse(password, sizeof(password));
    if (ct->redis == NULL || ct->pg == NULL || ct->signer == NULL || ct->tokens == NULL) {
        fm_error("thread %zu: cannot create the Redis/PostgreSQL pools, the S3 signer or the token memo", thread->index);
        return -1;
    }
    thread->data = ct;
    /* Give the pools a moment to connect, so the first requests after a start do not fail with 503. */
    for (uint64_t deadline = fm_now_ns() + 3000000000u;
         (fm_redis_connected(ct->redis) == 0 || fm_pg_connected(ct->pg) == 0) && fm_now_ns() < deadline;)
        h2o_evloop_run(thread->loop, 10);
    if (thread->index == 0 && (ct->reconcile = fm_reconcile_start(thread)) == NULL)
        return -1;
    if (cfg->record_flush_ms > 0 && (ct->records = fm_records_flusher_start(thread)) == NULL)
        return -1;
    return 0;
}

static void thread_dispose(fm_thread_t *thread)
{
    fm_control_thread_t *ct = thread->data;
    fm_redis_destroy(ct->redis);
    fm_rcache_destroy(ct->rcache);
    fm_pg_destroy(ct->pg);
    fm_reconcile_stop(ct->reconcile); /* after the pools: their last callbacks may still reach it */
    fm_records_flusher_stop(ct->records);
    fm_sigv4_free(ct->signer);
    fm_jwt_memo_free(ct->tokens);
    fm_files_thread_dispose();
    fm_files_list_thread_dispose();
    free(ct);
    thread->data = NULL;
}

static void thread_tick(fm_thread_t *thread)
{
    fm_control_thread_t *ct = thread->data;
    char labels[64];
    snprintf(labels, sizeof(labels), "thread=\"%zu\"", thread->index);
    fm_metrics_gauge_set("fm_pg_pool_connected", labels, (double)fm_pg_connected(ct->pg));
    fm_metrics_gauge_set("fm_pg_pool_busy", labels, (double)fm_pg_busy(ct->pg));
    fm_metrics_gauge_set("fm_pg_pool_queued", labels, (double)fm_pg_queued(ct->pg));
    fm_metrics_gauge_set("fm_redis_pool_connected", labels, (double)fm_redis_connected(ct->redis));
    uint64_t hits, misses;
    fm_jwt_memo_stats(ct->tokens, &hits, &misses);
    fm_metrics_counter_add("fm_token_memo_hits_total", labels, (double)(hits - ct->tokens_hits_told));
    fm_metrics_counter_add("fm_token_memo_misses_total", labels, (double)(misses - ct->tokens_misses_told));
    ct->tokens_hits_told = hits;
    ct->tokens_misses_told = misses;
}

static char *read_small_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *text = calloc(1, 65537);
    *len = text ? fread(text, 1, 65536, f) : 0;
    fclose(f);
    return text;
}

static int make_verifier(fm_control_t *app)
{
    const fm_config_t *cfg = &app->config;
    fm_jwt_verifier_config_t vc = {
        .hs256_secret = (const uint8_t *)cfg->jwt_secret,
        .hs256_secret_len = strlen(cfg->jwt_secret),
        .issuer = cfg->jwt_issuer,
    };
    char *pem = NULL;
    if (cfg->jwt_external_key_file[0] != '\0') {
        size_t len = 0;
        if ((pem = read_small_file(cfg->jwt_external_key_file, &len)) == NULL) {
            fm_error("config: cannot read FM_JWT_EXTERNAL_KEY_FILE %s", cfg->jwt_external_key_file);
            return -1;
        }
        vc.external_issuer = cfg->jwt_external_issuer;
        vc.external_alg = strcmp(cfg->jwt_external_alg, "ES256") == 0 ? FM_JWT_ALG_ES256 : FM_JWT_ALG_RS256;
        vc.external_public_pem = pem;
        vc.external_public_pem_len = len;
    }
    app->verifier = fm_jwt_verifier_new(&vc);
    free(pem);
    if (app->verifier == NULL) {
        fm_error("config: the JWT settings are not usable (secret length, issuers, or the external key/algorithm)");
        return -1;
    }
    return 0;
}

static void describe_metrics(void)
{
    fm_metrics_describe("fm_pg_pool_connected", FM_METRIC_GAUGE, "PostgreSQL connections up, per thread");
    fm_metrics_describe("fm_token_memo_hits_total", FM_METRIC_COUNTER,
                        "Access tokens accepted from the thread's memo of verified tokens, without parsing them again");
    fm_metrics_describe("fm_token_memo_misses_total", FM_METRIC_COUNTER,
                        "Access tokens verified in full (not in the thread's memo, or too long to be kept)");
    fm_metrics_describe("fm_pg_pool_busy", FM_METRIC_GAUGE, "PostgreSQL connections running a query, per thread");
    fm_metrics_describe("fm_pg_pool_queued", FM_METRIC_GAUGE, "Queries waiting for a connection, per thread");
    fm_metrics_describe("fm_redis_pool_connected", FM_METRIC_GAUGE, "Redis connections up, per thread");
    fm_files_describe_metrics();
}

static int serve(fm_control_t *app)
{
    const fm_config_t *cfg = &app->config;
    fm_server_block_stop_signals(); /* before anything may start a thread */
    if (make_verifier(app) != 0)
        return 2;
    app->argon2 = (fm_password_params_t){(uint32_t)cfg->argon2_m_kib, (uint32_t)cfg->argon2_t, (uint32_t)cfg->argon2_p};
    char random_password[64];
    if (fm_token_random(random_password, sizeof(random_password), 24) != 0 ||
        fm_password_hash(random_password, strlen(random_password), &app->argon2, app->dummy_password_hash) != 0) {
        fm_error("config: the argon2id parameters are not usable");
        return 2;
    }
    describe_metrics();
    fm_records_init();
    if (fm_s3_global_init() != 0 || fm_web_load(cfg->web_dir) != 0 || fm_download_init(cfg) != 0)
        return 2;
    fm_server_spec_t spec = {
        .service = "fm-control",
        .routes = routes,
        .route_count = sizeof(routes) / sizeof(routes[0]),
        .bind = cfg->bind,
        .http_port = (int)cfg->http_port,
        .https_port = (int)cfg->https_port,
        .tls_cert = cfg->tls_cert,
        .tls_key = cfg->tls_key,
        .threads = (size_t)cfg->threads,
        .offload_threads = (size_t)cfg->offload_threads,
        .hash_threads = (size_t)cfg->hash_threads,
        .hash_queue_max = (size_t)cfg->hash_queue_max,
        .max_body_bytes = (size_t)cfg->max_body_bytes,
        .graceful_timeout_ms = (uint64_t)cfg->graceful_timeout_ms,
        .fallback = cfg->web_dir[0] ? handle_web : NULL,
        .thread_init = thread_init,
        .thread_dispose = thread_dispose,
        .thread_tick = thread_tick,
        .app = app,
    };
    if (spec.https_port != 0 && cfg->tls_cert[0] == '\0') {
        fm_warn("no FM_TLS_CERT: the TLS port %d stays closed", spec.https_port);
        spec.https_port = 0;
    }
    int rc = fm_server_run(&spec);
    fm_jwt_verifier_free(app->verifier);
    fm_web_free();
    fm_download_free();
    return rc;
}

int main(int argc, char **argv)
{
    const char *command = argc > 1 ? argv[1] : "serve";
    if (strcmp(command, "config") == 0) {
        /* `config --all`: every service's variables (the README's table). */
        fm_config_print_table(argc > 2 && strcmp(argv[2], "--all") == 0 ? FM_SVC_ALL : FM_SVC_CONTROL, stdout);
        return 0;
    }
    if (strcmp(command, "serve") != 0 && strcmp(command, "migrate") != 0) {
        fprintf(stderr, "usage: fm-control [serve|migrate|config]\n");
        return 2;
    }
    static fm_control_t app;
    if (fm_config_load(&app.config, FM_SVC_CONTROL, stderr) != 0) {
        fprintf(stderr, "fm-control: fix the configuration above (see `fm-control config`)\n");
        return 2;
    }
    fm_log_init("fm-control", app.config.log_level);
    fm_http_configure(&app.config);
    fm_control = &app;
    if (strcmp(command, "migrate") == 0) {
        const char *dir = getenv("FM_SCHEMA_DIR");
        return fm_migrate(app.config.database_url, dir && dir[0] ? dir : FM_DEFAULT_SCHEMA_DIR) == 0 ? 0 : 1;
    }
    return serve(&app);
}
