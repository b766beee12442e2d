/*
 * fm-edge: the delivery tier (DESIGN.md §1, docs/downloads.md "fm-edge"). Serves CloudFront-style signed URLs
 * GET /f/{object key}?… (and public keys unsigned, GET /p/{object key}) from a disk cache filled from the S3 origin
 * with request coalescing, renders image variants
 * (?w=&h=&fit=&format=&q=) with libvips; POST /_edge/purge; access events into a Redis Stream; /healthz and
 * /metrics. One h2o loop per thread (common/server.c); origin fetches and renders run on the offload pool.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge.h"
#include "log.h"
#include "metrics.h"
#include "server.h"

fm_edge_t fm_edge;

static const fm_route_t routes[] = {
    {"GET", "/f/{k1}", fm_edge_handle_file},
    {"HEAD", "/f/{k1}", fm_edge_handle_file},
    {"GET", "/f/{k1}/{k2}", fm_edge_handle_file},
    {"HEAD", "/f/{k1}/{k2}", fm_edge_handle_file},
    {"GET", "/f/{k1}/{k2}/{k3}", fm_edge_handle_file},
    {"HEAD", "/f/{k1}/{k2}/{k3}", fm_edge_handle_file},
    {"GET", "/f/{k1}/{k2}/{k3}/{k4}", fm_edge_handle_file},
    {"HEAD", "/f/{k1}/{k2}/{k3}/{k4}", fm_edge_handle_file},
    {"GET", "/p/{k1}", fm_edge_handle_public},
    {"HEAD", "/p/{k1}", fm_edge_handle_public},
    {"GET", "/p/{k1}/{k2}", fm_edge_handle_public},
    {"HEAD", "/p/{k1}/{k2}", fm_edge_handle_public},
    {"GET", "/p/{k1}/{k2}/{k3}", fm_edge_handle_public},
    {"HEAD", "/p/{k1}/{k2}/{k3}", fm_edge_handle_public},
    {"GET", "/p/{k1}/{k2}/{k3}/{k4}", fm_edge_handle_public},
    {"HEAD", "/p/{k1}/{k2}/{k3}/{k4}", fm_edge_handle_public},
    {"POST", "/_edge/purge", fm_edge_handle_purge},
};

/* GET/HEAD paths no route matched: "/f//x" (an empty segment never matches a capture) and keys deeper than four
 * segments still reach the /f/ (or /p/) handler, which answers 400 or serves them; anything else is a 404. */
static void fallback(fm_req_t *r)
{
    h2o_iovec_t path = r->req->path;
    if (path.len >= 3 && memcmp(path.base, "/f/", 3) == 0)
        fm_edge_handle_file(r);
    else if (path.len >= 3 && memcmp(path.base, "/p/", 3) == 0)
        fm_edge_handle_public(r);
    else
        fm_reply_error(r, 404, "not_found", "no such route");
}

/* FM_EDGE_CF_PUBLIC_KEYS: "id=/path/a.pem,id2=/path/b.pem". */
static int load_keys(const char *spec)
{
    if ((fm_edge.keys = fm_cf_keys_new()) == NULL)
        return -1;
    return fm_cf_keys_load(fm_edge.keys, "FM_EDGE_CF_PUBLIC_KEYS", "Key-Pair-Id=path.pem", spec, NULL);
}

void fm_edge_metrics_init(void)
{
    fm_metrics_describe("fm_edge_hits_total", FM_METRIC_COUNTER, "Signed requests served from the disk cache");
    fm_metrics_describe("fm_edge_misses_total", FM_METRIC_COUNTER, "Origin fetches started (cache misses)");
    fm_metrics_describe("fm_edge_coalesced_total", FM_METRIC_COUNTER,
                        "Misses that joined a fetch already in flight for the same object");
    fm_metrics_describe("fm_edge_bytes_served_total", FM_METRIC_COUNTER, "Body bytes answered on /f/");
    fm_metrics_describe("fm_edge_origin_bytes_total", FM_METRIC_COUNTER, "Bytes fetched from the origin");
    fm_metrics_describe("fm_edge_origin_seconds", FM_METRIC_HISTOGRAM, "Duration of origin fetches");
    fm_metrics_describe("fm_edge_origin_errors_total", FM_METRIC_COUNTER, "Origin fetches that failed");
    fm_metrics_describe("fm_edge_refused_total", FM_METRIC_COUNTER,
                        "Requests refused by the signature check or, on /p/, as not public");
    fm_metrics_describe("fm_edge_evictions_total", FM_METRIC_COUNTER, "Objects evicted from the cache (LRU)");
    fm_metrics_describe("fm_edge_purged_total", FM_METRIC_COUNTER, "Objects removed by POST /_edge/purge");
    fm_metrics_describe("fm_edge_variant_hits_total", FM_METRIC_COUNTER, "Image variants served from the disk cache");
    fm_metrics_describe("fm_edge_variant_renders_total", FM_METRIC_COUNTER, "Image variant renders started");
    fm_metrics_describe("fm_edge_variant_coalesced_total", FM_METRIC_COUNTER,
                        "Variant misses that joined a render already in flight");
    fm_metrics_describe("fm_edge_variant_errors_total", FM_METRIC_COUNTER,
                        "Renders refused or failed (not an image, too many pixels, corrupt)");
    fm_metrics_describe("fm_edge_variant_refused_total", FM_METRIC_COUNTER,
                        "Requests refused for bad variant parameters (400)");
    fm_metrics_describe("fm_edge_variant_seconds", FM_METRIC_HISTOGRAM, "Duration of variant renders");
    fm_metrics_describe("fm_edge_events_total", FM_METRIC_COUNTER, "Access events written to the Redis Stream");
    fm_metrics_describe("fm_edge_events_dropped_total", FM_METRIC_COUNTER,
                        "Access events lost (Redis down, slow or refusing)");
    fm_metrics_describe("fm_edge_cache_bytes", FM_METRIC_GAUGE, "Bytes in the disk cache");
    fm_metrics_describe("fm_edge_cache_objects", FM_METRIC_GAUGE, "Objects in the disk cache");
    fm_metrics_describe("fm_edge_memory_hits_total", FM_METRIC_COUNTER,
                        "Hits (originals and variants) answered from the memory tier, without reading the disk");
    fm_metrics_describe("fm_edge_memory_loads_total", FM_METRIC_COUNTER,
                        "Cached objects read into the memory tier (at their second hit, or again after being dropped)");
    fm_metrics_describe("fm_edge_memory_bytes", FM_METRIC_GAUGE,
                        "Bytes of cached objects also held in memory (FM_EDGE_MEMORY_BYTES)");
    fm_metrics_describe("fm_edge_memory_objects", FM_METRIC_GAUGE, "Cached objects also held in memory");
    /* Zero series from the start, so a scrape can tell "none yet" from "not exported". */
    const char *counters[] = {"fm_edge_hits_total",
                              "fm_edge_memory_hits_total",
                              "fm_edge_memory_loads_total",
                              "fm_edge_misses_total",
                              "fm_edge_coalesced_total",
                              "fm_edge_bytes_served_total",
                              "fm_edge_origin_bytes_total",
                              "fm_edge_origin_errors_total",
                              "fm_edge_refused_total",
                              "fm_edge_evictions_total",
                              "fm_edge_purged_total",
                              "fm_edge_variant_hits_total",
                              "fm_edge_variant_renders_total",
                              "fm_edge_variant_coalesced_total",
                              "fm_edge_variant_errors_total",
                              "fm_edge_variant_refused_total",
                              "fm_edge_events_total",
                              "fm_edge_events_dropped_total"};
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); ++i)
        fm_metrics_counter_add(counters[i], NULL, 0);
}

static void thread_tick(fm_thread_t *thread)
{
    fm_edge_events_tick();
    if (thread->index != 0)
        return;
    fm_edge_cache_stats_t stats;
    fm_edge_cache_stats(&stats);
    fm_metrics_gauge_set("fm_edge_cache_bytes", NULL, (double)stats.bytes);
    fm_metrics_gauge_set("fm_edge_cache_objects", NULL, (double)stats.objects);
    fm_metrics_gauge_set("fm_edge_memory_bytes", NULL, (double)stats.memory_bytes);
    fm_metrics_gauge_set("fm_edge_memory_objects", NULL, (double)stats.memory_objects);
}

static int thread_init(fm_thread_t *thread)
{
    if (fm_edge_origin_thread_init(thread) != 0 || fm_edge_revoke_thread_init(thread) != 0)
        return -1;
    return fm_edge_events_thread_init(thread);
}

static void thread_dispose(fm_thread_t *thread)
{
    fm_edge_origin_thread_dispose(thread); /* first: the last fills' waiters are answered (and their events kept) */
    fm_edge_events_thread_dispose(thread);
    fm_edge_revoke_thread_dispose();
    fm_edge_serve_thread_dispose();
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "config") == 0) {
        fm_config_print_table(FM_SVC_EDGE, stdout);
        return 0;
    }
    static fm_config_t cfg;
    fm_log_init("fm-edge", NULL); /* the service's name on the line below; the level once the config is read */
    if (fm_config_load(&cfg, FM_SVC_EDGE, stderr) != 0) {
        fm_error("fm-edge: fix the configuration above (see `fm-edge config`)");
        return 2;
    }
    fm_log_init("fm-edge", cfg.log_level);
    fm_http_configure(&cfg);
    fm_edge.cfg = &cfg;
    if (load_keys(cfg.edge_cf_public_keys) != 0) {
        fm_error("fm-edge: fix FM_EDGE_CF_PUBLIC_KEYS (see `fm-edge config`)");
        fm_cf_keys_free(fm_edge.keys);
        return 2;
    }
    if (fm_cf_keys_count(fm_edge.keys) == 0)
        fm_warn("FM_EDGE_CF_PUBLIC_KEYS is empty: every /f/ request will be refused");
    if (cfg.edge_public_base[0] != '\0') {
        size_t len = strlen(cfg.edge_public_base);
        while (len > 0 && cfg.edge_public_base[len - 1] == '/')
            --len;
        snprintf(fm_edge.public_base, sizeof(fm_edge.public_base), "%.*s", (int)len, cfg.edge_public_base);
    } else {
        snprintf(fm_edge.public_base, sizeof(fm_edge.public_base), "http://%s:%d", cfg.bind, (int)cfg.edge_http_port);
    }
    if (strncmp(fm_edge.public_base, "http://", 7) != 0 && strncmp(fm_edge.public_base, "https://", 8) != 0) {
        fm_error("config: FM_EDGE_PUBLIC_BASE must start with http:// or https://");
        fm_cf_keys_free(fm_edge.keys);
        return 2;
    }
    fm_edge.s3 = fm_s3_config_from(&cfg, 0, 0);
    fm_server_block_stop_signals(); /* before libvips starts its worker threads */
    if (fm_s3_global_init() != 0 || fm_edge_variant_init(argv[0]) != 0 ||
        fm_edge_cache_open(cfg.edge_cache_dir, (uint64_t)cfg.edge_cache_max_bytes, (uint64_t)cfg.edge_memory_bytes,
                           (uint64_t)cfg.edge_memory_object_max) != 0) {
        fm_cf_keys_free(fm_edge.keys);
        return 1;
    }
    fm_edge_metrics_init();

    fm_server_spec_t spec = {
        .service = "fm-edge",
        .routes = routes,
        .route_count = sizeof(routes) / sizeof(routes[0]),
        .bind = cfg.bind,
        .http_port = (int)cfg.edge_http_port,
        .https_port = cfg.tls_cert[0] ? (int)cfg.edge_https_port : 0,
        .tls_cert = cfg.tls_cert,
        .tls_key = cfg.tls_key,
        .threads = (size_t)cfg.threads,
        .offload_threads = (size_t)cfg.offload_threads,
        .hash_threads = (size_t)cfg.edge_render_threads, /* the second pool renders variants (edge/origin.c) */
        .max_body_bytes = 65536,
        .graceful_timeout_ms = (uint64_t)cfg.graceful_timeout_ms,
        .fallback = fallback,
        .thread_init = thread_init,
        .thread_dispose = thread_dispose,
        .thread_tick = thread_tick,
        .app = &fm_edge,
    };
    int status = fm_server_run(&spec);
    fm_edge_cache_close();
    fm_edge_variant_shutdown();
    fm_cf_keys_free(fm_edge.keys);
    return status;
}
