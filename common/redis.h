/*
 * Async Redis client for an h2o 2.2.5 evloop thread: a small pool of hiredis 0.14 async connections whose fds are
 * watched by the loop, with per-command timeouts, automatic reconnect and fail-fast while Redis is down.
 *
 * One fm_redis_t per event-loop thread; every function must be called on that thread. The process must ignore
 * SIGPIPE (hiredis writes with write(2), a dead peer would otherwise kill the process).
 */
#ifndef FM_REDIS_H
#define FM_REDIS_H

#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>
#include <h2o.h>

/** A pool of `pool_size` hiredis async connections owned by one event-loop thread (opaque). */
typedef struct fm_redis fm_redis_t;

/**
 * Completion of one command. On failure `reply` is NULL and `errstr` is one of "redis unavailable" (no connection
 * was up when the command was issued), "redis timeout", "redis disconnected" (the connection dropped with the
 * command in flight), "redis shutting down" (fm_redis_destroy). A Redis error answer (REDIS_REPLY_ERROR) is a
 * reply, not an errstr. The reply is owned by the adapter and valid only during the callback.
 */
typedef void (*fm_redis_cb)(redisReply *reply, const char *errstr, void *data);

/**
 * Creates the pool and starts connecting (non-blocking; `host` should be a numeric address, a name is resolved
 * synchronously by hiredis). Each connection sends AUTH `password` (if non-NULL) and SELECT `db` (if non-zero)
 * before taking commands. `timeout_ms` bounds each command (0: no timeout) and each connect + handshake (at least
 * 1 s). Commands fail with "redis unavailable" until a connection is up: gate readiness on fm_redis_connected().
 * Returns NULL on bad arguments.
 */
fm_redis_t *fm_redis_create(h2o_loop_t *loop, const char *host, int port, const char *password, int db,
                            size_t pool_size, uint64_t timeout_ms);

/**
 * Sends a printf-style command, with hiredis's format (%s, %b with a length, %d ...). The callback is always called
 * exactly once and never from inside this call. Commands are spread over the pool, so two issued back to back may
 * run in either order, and MULTI/EXEC or WATCH across calls do not work: issue a dependent command from the first
 * one's callback, or use one atomic command or EVAL. SUBSCRIBE/PSUBSCRIBE/UNSUBSCRIBE/PUNSUBSCRIBE/MONITOR are
 * refused. Returns 0, or -1 (callback never called) if the format is invalid, the command is refused or the pool is
 * being destroyed.
 */
int fm_redis_command(fm_redis_t *r, fm_redis_cb cb, void *data, const char *fmt, ...);

/** Like fm_redis_command, with binary-safe arguments (`argvlen` may be NULL for NUL-terminated ones). */
int fm_redis_commandargv(fm_redis_t *r, fm_redis_cb cb, void *data, int argc, const char **argv, const size_t *argvlen);

/**
 * Called on the pool's thread when keys read through a tracking pool may have changed: `key` (`len` bytes, not
 * NUL-terminated) was written, deleted, expired or evicted; NULL means "anything may have changed" (a flush, or
 * tracking was lost with a connection: reports may have been missed).
 */
typedef void (*fm_redis_invalidate_cb)(const char *key, size_t len, void *data);

/**
 * A pool whose command connections are tracked by Redis (server-assisted client-side caching, CLIENT TRACKING with
 * REDIRECT to one more connection of the pool subscribed to __redis__:invalidate): `cb` hears of every change of a
 * key read through it, and of every loss of tracking. Needs Redis 6 or later.
 */
fm_redis_t *fm_redis_create_tracking(h2o_loop_t *loop, const char *host, int port, const char *password, int db,
                                     size_t pool_size, uint64_t timeout_ms, fm_redis_invalidate_cb cb, void *data);

/**
 * For a tracking pool: first takes in the change reports already received, then sets `*epoch` to a counter that
 * every report and every loss of tracking increases, and returns 1 if every ready command connection is tracked
 * (a value read now, if `*epoch` is unchanged when its reply arrives, will be reported when it changes), 0 if not.
 */
int fm_redis_tracked(fm_redis_t *r, uint64_t *epoch);

/** Number of connections currently ready for commands (for /metrics and /readyz). */
size_t fm_redis_connected(fm_redis_t *r);

/**
 * Closes every connection and frees the pool; callbacks still pending are called from inside this call with
 * errstr "redis shutting down". Must not be called from inside an fm_redis callback. NULL is a no-op.
 */
void fm_redis_destroy(fm_redis_t *r);

#endif
