/*
 * fm-edge internals: the disk cache (cache.c), the origin fills with request coalescing (origin.c), the /f/ route
 * (serve.c) and purge (purge.c). docs/downloads.md "fm-edge" is the user's view of all of it.
 */
#ifndef FM_EDGE_H
#define FM_EDGE_H

#include <stdint.h>
#include <time.h>

#include "cfsign.h"
#include "config.h"
#include "http.h"
#include "s3.h"

/** Longest object key served (bytes, decoded); S3 allows 1024. */
#define FM_EDGE_KEY_MAX 1024
/** Cache file stem: hex SHA-256 of the key. */
#define FM_EDGE_HEX_LEN 64

/** The process-wide state of fm-edge, owned by main and read-only once the server runs. */
typedef struct fm_edge {
    const fm_config_t *cfg;
    fm_cf_keys_t *keys;
    char public_base[256]; /* "http://host:port", no trailing '/' */
    fm_s3_config_t s3;
} fm_edge_t;

/** The one instance (main.c). */
extern fm_edge_t fm_edge;

/** What the cache knows of an object besides its bytes (the metadata sidecar). */
typedef struct fm_edge_meta {
    char key[FM_EDGE_KEY_MAX + 1];
    uint64_t size;
    char etag[256];         /* as the origin sent it, quotes included */
    char content_type[256]; /* "" when the origin sent none */
    time_t stored_at;       /* when the edge fetched it: served as Last-Modified */
} fm_edge_meta_t;

/* ---- cache.c ---- */

/** Opens (creating) the cache folder, removes half-written files and rebuilds the index. 0 or -1. */
int fm_edge_cache_open(const char *dir, uint64_t max_bytes);

/** Frees the index (the files stay). */
void fm_edge_cache_close(void);

/** Hex SHA-256 of `key` (the cache file stem). */
void fm_edge_cache_name(const char *key, size_t key_len, char hex[FM_EDGE_HEX_LEN + 1]);

/**
 * A hit: opens the cached file of `hex`, copies its metadata into *meta, marks it recently used and returns the fd
 * (the caller closes it). -1 on a miss (also when the file vanished under a concurrent purge or eviction).
 */
int fm_edge_cache_open_hit(const char *hex, fm_edge_meta_t *meta);

/** Path of a cache file: `suffix` is ".data", ".meta" or a temp suffix. */
void fm_edge_cache_path(const char *hex, const char *suffix, char *out, size_t size);

/**
 * Publishes a filled object: `tmp_path` (complete, flushed) becomes the cached data of `hex`, the sidecar is
 * written (temp + rename: a crash never leaves half an object under a final name), the index learns it and least
 * recently used objects are evicted beyond the cap. Returns an fd open on the data (read-only), or -1.
 */
int fm_edge_cache_publish(const char *hex, const char *tmp_path, const fm_edge_meta_t *meta);

/** Removes the object of `key` (exact) from the cache; returns 1 if it was cached, else 0. */
int fm_edge_cache_purge_key(const char *key, size_t key_len);

/** Removes every object whose key starts with `prefix`; returns how many. */
size_t fm_edge_cache_purge_prefix(const char *prefix, size_t prefix_len);

/** Bytes and objects cached (for the gauges). */
void fm_edge_cache_stats(uint64_t *bytes, uint64_t *objects);

/* ---- origin.c ---- */

/** Outcome of a fill as delivered to each waiting request. */
typedef struct fm_edge_fill_result {
    int fd;           /* open on the cached data, or -1 */
    int status;       /* 0 = ok; else the HTTP status to answer (404, 502, 503) */
    const char *code; /* static error code when status != 0 */
    fm_edge_meta_t meta;
} fm_edge_fill_result_t;

/** Called on the request's own loop thread once the object is cached (or the fill failed); owns res->fd. */
typedef void (*fm_edge_fill_cb)(fm_req_t *r, fm_edge_fill_result_t *res);

/** Per-thread set-up of the fill notifications (thread_init) and tear-down (thread_dispose). */
int fm_edge_origin_thread_init(fm_thread_t *thread);
void fm_edge_origin_thread_dispose(fm_thread_t *thread);

/**
 * Makes `r` wait for the object `key` (hex = its cache name): joins the fill in flight for it, or starts one on
 * the offload pool. `cb` runs on r's thread with the outcome (not at all if r went away). Returns 0, or -1 when the
 * offload queue is full (nothing pending; the caller answers 503).
 */
int fm_edge_origin_fill(fm_req_t *r, const char *key, const char *hex, fm_edge_fill_cb cb);

/** Number of fills in flight (shutdown waits for zero). */
size_t fm_edge_origin_inflight(void);

/** Marks fills in flight for `key` / keys under `prefix` as purged: their result is served once, not kept. */
void fm_edge_origin_purge(const char *key, size_t key_len, int is_prefix);

/* ---- serve.c / purge.c ---- */

/** GET/HEAD /f/{key}: signed download. */
void fm_edge_handle_file(fm_req_t *r);

/** Frees the calling loop thread's verified-URL cache (thread_dispose). */
void fm_edge_serve_thread_dispose(void);

/** POST /_edge/purge. */
void fm_edge_handle_purge(fm_req_t *r);

/** Declares the edge's metric families. */
void fm_edge_metrics_init(void);

#endif
