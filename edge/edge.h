/*
 * fm-edge internals: the disk cache (cache.c), the origin fills (streamed to the clients while they are written)
 * and variant renders with request coalescing (origin.c), on-the-fly image variants (variant.c), the /f/ route
 * (serve.c) and its answers (answer.c), the unsigned /p/ route (public.c), purge (purge.c) and access events
 * (events.c). docs/downloads.md "fm-edge" is the user's view of all of it.
 */
#ifndef FM_EDGE_H
#define FM_EDGE_H

#include <stdint.h>
#include <time.h>

#include "cfsign.h"
#include "config.h"
#include "http.h"
#include "redis.h"
#include "s3.h"

/** Longest object key served (bytes, decoded); S3 allows 1024. */
#define FM_EDGE_KEY_MAX 1024
/**
 * Longest cache key: an object key, or for a rendered variant the object key, FM_EDGE_VARIANT_SEP and the
 * normalised parameters ("w=256&h=0&fit=inside&format=webp&q=80").
 */
#define FM_EDGE_CACHE_KEY_MAX (FM_EDGE_KEY_MAX + 192)
/** Separates an object key from its variant parameters in a cache key: a control byte, which no object key served
 * by the edge can hold (serve.c refuses them), so "key + SEP" is a prefix of exactly that key's variants. */
#define FM_EDGE_VARIANT_SEP '\x1f'
/**
 * The cache partition of a file: an object served for file F is cached under "key" FM_EDGE_VARIANT_SEP "f=F" (its
 * variants under that, SEP, parameters), so one file's downloads never find bytes another file's filled: a cache hit
 * must not tell that someone else downloaded the same content (docs/downloads.md "Revocation"). Purges of the key
 * still reach every partition (they take the key's SEP-prefixed entries).
 */
#define FM_EDGE_PARTITION "f="

/** The object key of a cache key (what the origin is asked for): the cache key up to its first separator. */
void fm_edge_object_key(const char *cache_key, char *out, size_t size);

/** Cache file stem: hex SHA-256 of the key. */
#define FM_EDGE_HEX_LEN 64

/** The process-wide state of fm-edge, owned by main and read-only once the server runs. */
typedef struct fm_edge {
    const fm_config_t *cfg;
    fm_cf_keys_t *keys;
    int avif_ok;           /* this libvips saves AV1 HEIF (probed at start) */
    char public_base[256]; /* "http://host:port", no trailing '/' */
    fm_s3_config_t s3;
} fm_edge_t;

/** The one instance (main.c). */
extern fm_edge_t fm_edge;

/** What the cache knows of an object besides its bytes (the metadata sidecar). */
typedef struct fm_edge_meta {
    char key[FM_EDGE_CACHE_KEY_MAX + 1];
    uint64_t size;
    char etag[256];         /* as the origin sent it, quotes included */
    char content_type[256]; /* "" when the origin sent none */
    time_t stored_at;       /* when the edge fetched it: served as Last-Modified */
} fm_edge_meta_t;

/* ---- cache.c ---- */

/**
 * Opens (creating) the cache folder, removes half-written files and rebuilds the index; `memory_bytes` (0 = off)
 * holds the bytes of hot objects up to `memory_object_max` each. 0 or -1.
 */
int fm_edge_cache_open(const char *dir, uint64_t max_bytes, uint64_t memory_bytes, uint64_t memory_object_max);

/** Frees the index (the files stay). */
void fm_edge_cache_close(void);

/** Hex SHA-256 of `key` (the cache file stem). */
void fm_edge_cache_name(const char *key, size_t key_len, char hex[FM_EDGE_HEX_LEN + 1]);

/** A small object's bytes held in memory, shared by the index and the answers sending them (reference-counted). */
typedef struct fm_edge_blob fm_edge_blob_t;

/** Its bytes (as many as the object's metadata says). */
const unsigned char *fm_edge_blob_bytes(const fm_edge_blob_t *blob);

/** Drops one reference (any thread); NULL is ignored. */
void fm_edge_blob_release(fm_edge_blob_t *blob);

/**
 * Looks `hex` up and marks it recently used. A hit copies its metadata into *meta and returns 1 with either its
 * bytes lent in *blob (when `blob` is given and the object is in the memory tier; the caller releases them) or
 * its data file open on *fd (the caller closes it). 0 on a miss (also when the file vanished under a concurrent
 * purge or eviction). Pass blob = NULL for a caller that needs an fd (a render's source).
 */
int fm_edge_cache_hit(const char *hex, fm_edge_meta_t *meta, int *fd, fm_edge_blob_t **blob);

/** Path of a cache file: `suffix` is ".data", ".meta" or a temp suffix. */
void fm_edge_cache_path(const char *hex, const char *suffix, char *out, size_t size);

/**
 * Publishes a filled object: `tmp_path` (complete, flushed) becomes the cached data of `hex`, the sidecar is
 * written (temp + rename: a crash never leaves half an object under a final name), the index learns it and least
 * recently used objects are evicted beyond the cap. Returns an fd open on the data (read-only), or -1.
 */
int fm_edge_cache_publish(const char *hex, const char *tmp_path, const fm_edge_meta_t *meta);

/** Removes the object of `key` (exact) and every variant rendered from it; returns how many entries went. */
size_t fm_edge_cache_purge_key(const char *key, size_t key_len);

/** Largest object the cache keeps: FM_EDGE_CACHE_OBJECT_MAX_BYTES (at most the cap), or half the cap when 0. A larger
 * one is published for the fill's waiters only (its file unlinked at once), never indexed, so it never evicts. */
uint64_t fm_edge_cache_object_max(void);

/** Removes every object whose key starts with `prefix`; returns how many. */
size_t fm_edge_cache_purge_prefix(const char *prefix, size_t prefix_len);

typedef struct fm_edge_cache_stats {
    uint64_t bytes, objects;               /* on disk */
    uint64_t memory_bytes, memory_objects; /* of those, held in memory too */
} fm_edge_cache_stats_t;

/** What the cache holds (for the gauges). */
void fm_edge_cache_stats(fm_edge_cache_stats_t *stats);

/* ---- origin.c ---- */

/** Outcome of a fill as delivered to each waiting request. */
typedef struct fm_edge_fill_result {
    int fd;            /* open on the cached data, or -1 */
    int too_large;     /* larger than the cache keeps: `meta` (the origin's headers) is all there is */
    int status;        /* 0 = ok; else the HTTP status to answer (404, 502, 503) */
    const char *code;  /* static error code when status != 0 */
    char message[200]; /* the error's reason when status != 0 ("" = a generic one) */
    fm_edge_meta_t meta;
} fm_edge_fill_result_t;

/** Called on the request's own loop thread once the object is cached (or the fill failed); owns res->fd. */
typedef void (*fm_edge_fill_cb)(fm_req_t *r, fm_edge_fill_result_t *res);

/**
 * Called on the request's own loop thread as soon as the origin's answer to the fill it waits on is known, before
 * the object is complete (`head`: size, ETag, type, fetch time). Sets the answer's status and headers as for a cache
 * hit and returns 1 for origin.c to stream the whole body as the fill writes it (the response is then origin.c's), or
 * 0 after answering entirely (HEAD, an empty object, a 400).
 */
typedef int (*fm_edge_stream_cb)(fm_req_t *r, const fm_edge_meta_t *head);

/** Per-thread set-up of the fill notifications (thread_init) and tear-down (thread_dispose). */
int fm_edge_origin_thread_init(fm_thread_t *thread);
void fm_edge_origin_thread_dispose(fm_thread_t *thread);

/**
 * Makes `r` wait for the object `key` (hex = its cache name): joins the fill in flight for it, or starts one on
 * the offload pool. With `stream_cb` (NULL: none), r is answered from the origin's headers on and its body streamed
 * while the fill writes it (cut with an error if the fill fails); else, or when the fill ended before r could
 * start, `cb` runs on r's thread with the outcome once the object is cached (not at all if r went away). Returns 0,
 * or -1 when the offload queue is full (nothing pending; the caller answers 503).
 */
int fm_edge_origin_fill(fm_req_t *r, const char *key, const char *hex, fm_edge_fill_cb cb, fm_edge_stream_cb stream_cb);

/* ---- variant.c ---- */

/** How a variant fits the w×h box (docs/downloads.md "Image variants"). */
typedef enum { FM_EDGE_FIT_INSIDE, FM_EDGE_FIT_CONTAIN, FM_EDGE_FIT_COVER } fm_edge_fit_t;

/** The normalised parameters of an on-the-fly variant. */
typedef struct fm_edge_variant {
    int width, height;  /* 1..FM_EDGE_MAX_DIMENSION, 0 = not given */
    fm_edge_fit_t fit;  /* INSIDE whenever one side is not given (there is no box to fill or crop to) */
    const char *format; /* static: "webp", "jpeg", "png", "avif" */
    int quality;        /* 1..100; 0 for png (lossless) */
    int negotiated;     /* format chosen from Accept: the answer carries Vary: Accept */
} fm_edge_variant_t;

/**
 * Starts libvips for the edge (once, before the server): untrusted loaders blocked, operation cache off, one vips
 * thread per render (parallelism is across the offload pool), and probes AVIF (AV1 HEIF) saving. 0 or -1.
 */
int fm_edge_variant_init(const char *argv0);

/** Shuts libvips down (after the server stopped). */
void fm_edge_variant_shutdown(void);

/**
 * Reads the variant parameters w, h, fit, format, q of a signed query (raw) and the request's Accept header.
 * Returns 0 when the query names none (the original is served), 1 with *v filled, or -1 with a reason for a 400
 * (out of bounds, unknown value, repeated parameter, avif without an encoder).
 */
int fm_edge_variant_parse(h2o_iovec_t query, h2o_iovec_t accept, fm_edge_variant_t *v, char *reason,
                          size_t reason_size);

/** The cache key of a variant: key, FM_EDGE_VARIANT_SEP, normalised parameters (negotiated format included). */
void fm_edge_variant_cache_key(const char *key, size_t key_len, const fm_edge_variant_t *v, char *out, size_t size);

/**
 * Renders `v` from the image open on `src_fd` (a cached original) into a new file `tmp_path`, on an offload thread.
 * Returns 0 with *size and *content_type (static), or -1 with res->status (415 not an image, 422 too large or
 * corrupt, 503 disk) , res->code and res->message set.
 */
int fm_edge_variant_render(const fm_edge_variant_t *v, int src_fd, const char *tmp_path, uint64_t *size,
                           const char **content_type, fm_edge_fill_result_t *res);

/* ---- origin.c (renders) ---- */

/**
 * Makes `r` wait for the variant `v` of an object whose original is open on `src_fd` (taken: closed in every case):
 * joins the render in flight for `vkey` (hex = its cache name) or starts one on the render pool (the server's second
 * pool, FM_EDGE_RENDER_THREADS; the offload pool without it), which publishes the result in the cache. A new render is
 * admitted within FM_EDGE_RENDERS_MAX in flight and FM_EDGE_RENDERS_PER_CLIENT per client (IPv4 address, IPv6 /64);
 * beyond, r is answered here (503 renders_busy / 429 too_many_renders, Retry-After: 1) and 0 returned. `cb` runs on
 * r's thread as for fm_edge_origin_fill. 0, or -1 (queue full: the caller answers 503).
 */
int fm_edge_origin_render(fm_req_t *r, const char *vkey, const char *vhex, const fm_edge_variant_t *v, int src_fd,
                          const fm_edge_meta_t *src, fm_edge_fill_cb cb);

/**
 * fm_edge_origin_fill for a request answered with the object itself (not a variant's original): an object larger than
 * the cache keeps is then passed through to it from the origin (fm_edge_passthrough) instead of failing.
 */
int fm_edge_origin_fill_object(fm_req_t *r, const char *key, const char *hex, fm_edge_fill_cb cb,
                               fm_edge_stream_cb stream_cb);

/** Joins the fill in flight for `hex` as fm_edge_origin_fill_object would; 1 if there was one, 0 if none (nothing
 * pending then). */
int fm_edge_origin_join(fm_req_t *r, const char *hex, fm_edge_fill_cb cb, fm_edge_stream_cb stream_cb);

/** The calling offload thread's S3 client (made at first use, freed when the thread ends); NULL with err set. */
fm_s3_t *fm_edge_thread_s3(char *err, size_t err_size);

/** Number of fills in flight (shutdown waits for zero). */
size_t fm_edge_origin_inflight(void);

/** Marks fills in flight for `key` (and its variants) / keys under `prefix` as purged: served once, not kept. */
void fm_edge_origin_purge(const char *key, size_t key_len, int is_prefix);

/* ---- miss.c ---- */

/**
 * act for a miss of an original answered to its client (serve.c), deciding what it costs the origin: a HEAD, or a
 * Range, joins a fill in flight if there is one, else asks the origin's HEAD first; a HEAD is answered from it (no
 * body fetched), a Range of at most FM_EDGE_COLD_RANGE_MAX_BYTES of a larger object, or any answer of an object larger
 * than the cache keeps, is passed through (fm_edge_passthrough); anything else fills the object as
 * fm_edge_origin_fill_object does (`cb` and `stream_cb` as there). 0, or -1 when the offload queue is full.
 */
int fm_edge_origin_miss(fm_req_t *r, const char *key, const char *hex, fm_edge_fill_cb cb, fm_edge_stream_cb stream_cb);

/**
 * Answers `r` about `meta` (an object the cache does not hold) with its body streamed straight from the origin by
 * ranged GETs of 1 MiB, two ahead of the client, If-Match its ETag; nothing is cached. At most FM_EDGE_PASSTHROUGH_MAX
 * at once (503 passthrough_busy, Retry-After, beyond). A HEAD, 304, 416 or 400 is answered without a GET.
 */
void fm_edge_passthrough(fm_req_t *r, const fm_edge_meta_t *meta);

/** Declares miss.c's metric families (once, from origin.c's). */
void fm_edge_miss_metrics(void);

/* ---- events.c ---- */

/** Per-thread Redis connection (always: /p/ needs it) and event buffer (thread_init; no events when
 * FM_EDGE_EVENTS=0). 0 or -1. */
int fm_edge_events_thread_init(fm_thread_t *thread);

/** The calling loop thread's Redis connection (owned by events.c, closed by fm_edge_events_thread_dispose). */
fm_redis_t *fm_edge_redis(void);

/** Sends what the thread has buffered, waits (bounded) for Redis to take it, and closes the connection. */
void fm_edge_events_thread_dispose(fm_thread_t *thread);

/** Once a second on each thread: sends the buffered events. */
void fm_edge_events_tick(void);

/**
 * Records one answered download on the calling loop thread: `cache_key` (an object key, or a variant's cache key),
 * `outcome` ("hit", "miss", "variant_hit", "variant_render"), status, body bytes, client address. Buffered and sent
 * every second or every 100 events as XADD {stream} MAXLEN ~ 1000000.
 */
void fm_edge_event(const char *cache_key, const char *outcome, int status, uint64_t bytes, const char *ip);

/* ---- range.c (pure: no h2o, no state; unit-tested and fuzzed) ---- */

/** What a Range header selects of an object of a known size (RFC 9110 §14.1.2, §14.2). */
typedef enum {
    FM_EDGE_RANGE_NONE,          /* the whole object, 200: no Range, another unit, a list, or invalid syntax */
    FM_EDGE_RANGE_ONE,           /* one range: 206 with [first, last], first <= last < size */
    FM_EDGE_RANGE_UNSATISFIABLE, /* 416 with Content-Range: bytes * / size */
} fm_edge_range_t;

/** One byte-range-spec as written, before the object's size is known; numbers saturated at UINT64_MAX. */
typedef struct fm_edge_range_spec {
    int suffix;      /* "-n": the last `length` bytes */
    uint64_t first;  /* "a-" and "a-b" */
    uint64_t last;   /* "a-b"; UINT64_MAX for "a-" */
    uint64_t length; /* "-n" */
} fm_edge_range_spec_t;

/** Parses one `bytes=` range of a Range value of `len` bytes (need not be NUL-terminated). 1 with *spec, or 0 when the
 * header is to be ignored (another unit, a list, invalid syntax, last-pos < first-pos). */
int fm_edge_range_spec(const char *value, size_t len, fm_edge_range_spec_t *spec);

/** The bytes `spec` selects of an object of `size` bytes: ONE with first <= last < size, UNSATISFIABLE, or NONE (a
 * suffix of an empty object: the empty whole). Never a range outside the object. */
fm_edge_range_t fm_edge_range_resolve(const fm_edge_range_spec_t *spec, uint64_t size, uint64_t *first, uint64_t *last);

/** fm_edge_range_spec then fm_edge_range_resolve: what a Range value selects of `size` bytes. */
fm_edge_range_t fm_edge_range_parse(const char *value, size_t len, uint64_t size, uint64_t *first, uint64_t *last);

/* ---- answer.c ---- */

/**
 * Sets the headers every answer of /f/ and /p/ carries, errors included (docs/downloads.md "Active types"): the strict
 * Content-Security-Policy (nothing may run or load, sandboxed) and X-Content-Type-Options: nosniff. Added, so called
 * once, first, by the handlers (fm_edge_parse_target); an object's answer then sets the policy its served type gets.
 */
void fm_edge_security_headers(h2o_req_t *req);

/** Adds a response header; `value` is copied into the request's pool (h2o keeps the pointer until it writes). */
void fm_edge_add_header(h2o_req_t *req, const h2o_token_t *token, const char *value);

/**
 * The status and headers of an answer about `meta` (a cached object, or one a fill is still writing): conditional
 * GET, Content-Disposition, one byte range, the access event (`outcome`). Returns 1 with the body's part to send in
 * [*first, *first + *length), or 0 when it answered entirely (304, 400, 416, HEAD, an empty body).
 */
int fm_edge_answer_headers(fm_req_t *r, const fm_edge_meta_t *meta, const char *outcome, uint64_t *first,
                           uint64_t *length);

/**
 * What fm_edge_answer_headers would do about `meta`, without answering: 1 with the body's part [*first, *first +
 * *length) when it would send one, 0 when it would answer entirely (HEAD, 304, 400, 416, an empty body).
 */
int fm_edge_answer_plan(fm_req_t *r, const fm_edge_meta_t *meta, uint64_t *first, uint64_t *length);

/** Answers from an open cached file (takes `fd`); `outcome` goes into the access event. */
void fm_edge_serve_file(fm_req_t *r, int fd, const fm_edge_meta_t *meta, const char *outcome);

/** Answers a hit found by fm_edge_cache_hit: from `blob` (its reference taken) when given, else from `fd` (taken). */
void fm_edge_serve_hit(fm_req_t *r, int fd, fm_edge_blob_t *blob, const fm_edge_meta_t *meta, const char *outcome);

/* ---- revoke.c ---- */

/** Most ids one URL names (its file, and the share it came through). */
#define FM_EDGE_REVOKE_IDS_MAX 2

/** What fm_edge_check_revoked found. */
typedef enum { FM_EDGE_NOT_REVOKED, FM_EDGE_REVOKED, FM_EDGE_REVOKE_UNKNOWN } fm_edge_revoke_t;

/** Called on the request's thread once the check is done (not at all if the client went away meanwhile). */
typedef void (*fm_edge_revoke_cb)(fm_req_t *r, fm_edge_revoke_t verdict);

/** Per-thread tracked copy of the revocation marks (thread_init; none with FM_REDIS_CACHE_MAX_AGE_MS=0). 0 or -1. */
int fm_edge_revoke_thread_init(fm_thread_t *thread);
void fm_edge_revoke_thread_dispose(void);

/**
 * Whether any of `ids` (UUIDs; NULL or "" skipped; at most FM_EDGE_REVOKE_IDS_MAX) has a mark fm:revoked:{id} in
 * Redis: answered from the thread's tracked copy when it has one, else by a GET; `cb` says which (UNKNOWN when Redis
 * could not tell). Uses the request's aux state (fm_req_aux).
 */
void fm_edge_check_revoked(fm_req_t *r, const char *const *ids, size_t count, fm_edge_revoke_cb cb);

/* ---- serve.c / public.c / purge.c ---- */

/** GET/HEAD /f/{key}: signed download. */
void fm_edge_handle_file(fm_req_t *r);

/** GET/HEAD /p/{key}: unsigned download of a key listed in the Redis set fm:public (public.c). */
void fm_edge_handle_public(fm_req_t *r);

/** What the shared part of serve.c parsed from a /f/ or /p/ request. */
typedef struct fm_edge_target {
    char key[FM_EDGE_KEY_MAX + 1]; /* percent-decoded, validated */
    size_t key_len;
    char file_id[37];  /* the `file` the URL was issued for (lowercase UUID), "" when it names none */
    char share_id[37]; /* the `share` it came through, or "" */
    char cache_key[FM_EDGE_CACHE_KEY_MAX + 1]; /* key, SEP, "f=" file_id: the file's partition of the cache */
    size_t cache_key_len;
    int is_variant; /* variant holds w/h/fit/format/q */
    fm_edge_variant_t variant;
} fm_edge_target_t;

/**
 * parse for /f/ and /p/: the raw path after the 3-byte prefix (no `.`/`..`, encoded separators, control bytes,
 * over-long keys or URLs), the variant parameters, and the `file`/`share` ids (each a lowercase UUID when given).
 * Returns 0 with *t filled, or -1 after answering 400.
 */
int fm_edge_parse_target(fm_req_t *r, fm_edge_target_t *t);

/** act and answer for an authorized request: a cache hit, or a coalesced origin fill (and render for a variant). */
void fm_edge_serve_target(fm_req_t *r, const fm_edge_target_t *t);

/** Frees the calling loop thread's verified-URL cache (thread_dispose). */
void fm_edge_serve_thread_dispose(void);

/** POST /_edge/purge. */
void fm_edge_handle_purge(fm_req_t *r);

/** Declares the edge's metric families. */
void fm_edge_metrics_init(void);

#endif
