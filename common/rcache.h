/*
 * A per-thread copy of small Redis values that Redis itself keeps true: reads go through a tracking pool
 * (fm_redis_create_tracking), and a value is dropped the moment Redis reports its key changed (written, deleted,
 * expired, evicted, flushed), or whenever the reports may have been missed (a tracked connection or the subscriber
 * lost). So a cached read answers what Redis would answer now, without the round trip; `max_age_ms` only bounds how
 * long a value may live if reports stopped arriving without the connection being seen to drop.
 *
 * One fm_rcache_t per event-loop thread; every function must be called on that thread.
 */
#ifndef FM_RCACHE_H
#define FM_RCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "redis.h"

typedef struct fm_rcache fm_rcache_t;

/**
 * Creates the cache with its own tracking pool (one command connection and its subscriber) to host:port/db.
 * `slots` values at most (a direct-mapped table: a new key may replace an old one), each at most `value_max` bytes.
 * Returns NULL on bad arguments.
 */
fm_rcache_t *fm_rcache_create(h2o_loop_t *loop, const char *host, int port, const char *password, int db,
                              uint64_t timeout_ms, size_t slots, size_t value_max, uint64_t max_age_ms);

/**
 * The value of `key` if it is cached and still true: returns 1 and sets *value and *len (borrowed until the next call
 * on this cache; *value NULL for a key kept as absent, see fm_rcache_keep_absent), or 0. Takes in the change reports
 * already received first.
 */
int fm_rcache_get(fm_rcache_t *c, const char *key, const char **value, size_t *len);

/**
 * Makes the cache keep "no such key" too: a GET answered nil is kept (Redis tracks a key read while absent as well,
 * and reports its creation), and fm_rcache_get then answers 1 with *value NULL and *len 0 for it. For a reader whose
 * common answer is absence (fm-edge's revocation marks). Call once, before the first fetch.
 */
void fm_rcache_keep_absent(fm_rcache_t *c);

/**
 * GET `key` from Redis through the cache's tracking pool and call `cb` as fm_redis_command would; a string reply is
 * kept when it is safe to (the connection was tracked when the GET left and no report came before the reply).
 * Returns 0, or -1 (cb never called).
 */
int fm_rcache_fetch(fm_rcache_t *c, const char *key, fm_redis_cb cb, void *data);

/**
 * Drops this thread's copy of `key` now, for a writer that changed it and reads it back in the same request: Redis's
 * report of its own write may reach the subscriber a moment after the write's reply. A GET of `key` in flight is not
 * kept either.
 */
void fm_rcache_forget(fm_rcache_t *c, const char *key);

/** 1 while the tracking pool is connected (for /readyz-style checks and tests). */
size_t fm_rcache_connected(fm_rcache_t *c);

/** Closes the pool (pending callbacks are called with "redis shutting down") and frees everything. NULL: no-op. */
void fm_rcache_destroy(fm_rcache_t *c);

#endif
