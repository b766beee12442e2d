/*
 * Async PostgreSQL client for an h2o 2.2.5 evloop thread: a pool of non-blocking libpq connections, one query in
 * flight on each, a bounded FIFO wait queue, per-query timeouts, automatic reconnect and fail-fast while the server
 * is down.
 *
 * One fm_pg_t per event-loop thread; every function must be called on that thread.
 */
#ifndef FM_PG_H
#define FM_PG_H

#include <stddef.h>
#include <stdint.h>
#include <libpq-fe.h>
#include <h2o.h>

/** Queries waiting for a free connection beyond this many fail with "pg queue full". */
#define FM_PG_MAX_QUEUE 4096

/** A pool of `pool_size` libpq connections owned by one event-loop thread (opaque). */
typedef struct fm_pg fm_pg_t;

/**
 * Completion of one query. On failure `res` is NULL and `errstr` is one of "pg unavailable" (no connection up),
 * "pg queue full", "pg timeout", "pg disconnected" (the connection broke with the query in flight),
 * "pg shutting down" (fm_pg_destroy). Otherwise `res` is the query's result, possibly an error result: check
 * PQresultStatus() and PQresultErrorField(res, PG_DIAG_SQLSTATE) (e.g. "23505"). The adapter PQclear()s `res`
 * after the callback returns.
 */
typedef void (*fm_pg_cb)(PGresult *res, const char *errstr, void *data);

/**
 * Creates the pool and starts connecting (non-blocking, except that libpq resolves a host name synchronously: use
 * hostaddr= or a numeric host). `timeout_ms` bounds each query from fm_pg_query to its result, queue wait included
 * (0: no timeout), and each connect (at least 1 s). A connection whose query timed out is closed and reopened, the
 * server may run the statement to its end: set statement_timeout in `conninfo` options to stop it there.
 * Queries fail with "pg unavailable" until a connection is up: gate readiness on fm_pg_connected().
 * Returns NULL on bad arguments.
 */
fm_pg_t *fm_pg_create(h2o_loop_t *loop, const char *conninfo, size_t pool_size, uint64_t timeout_ms);

/**
 * Runs `sql` (one statement, $1..$n placeholders) with text parameters (NULL entries are SQL NULL) and text results.
 * `sql` and `params` are copied. The callback is always called exactly once and never from inside this call.
 * Returns 0, or -1 (callback never called) on bad arguments or while the pool is being destroyed.
 */
int fm_pg_query(fm_pg_t *pg, fm_pg_cb cb, void *data, const char *sql, int nparams, const char *const *params);

/**
 * The same for a statement run often: `sql` must be a constant string (its address is the statement's identity, so
 * it must not be reused for another text). Each connection prepares it once (one more round trip, the first time),
 * then only binds and executes it: no parse, and after five runs PostgreSQL's generic plan unless custom plans are
 * cheaper (plan_cache_mode). A pool prepares at most 64 statements; the others run as fm_pg_query. A statement the
 * server no longer takes as it is (a migration changed its result, or a pooler switched sessions) fails that once,
 * then is prepared again. Behind a transaction-mode pooler without protocol-level prepared statements (PgBouncer
 * before 1.21), turn it off with fm_pg_set_prepared(pg, 0).
 */
int fm_pg_query_prepared(fm_pg_t *pg, fm_pg_cb cb, void *data, const char *sql, int nparams, const char *const *params);

/** 0: fm_pg_query_prepared runs every statement unnamed, as fm_pg_query (FM_PG_PREPARED=0). Default 1. */
void fm_pg_set_prepared(fm_pg_t *pg, int on);

/** Number of connections up (idle or running a query), for /metrics and /readyz. */
size_t fm_pg_connected(fm_pg_t *pg);

/** Number of connections running a query. */
size_t fm_pg_busy(fm_pg_t *pg);

/** Number of queries waiting for a free connection. */
size_t fm_pg_queued(fm_pg_t *pg);

/**
 * Closes every connection and frees the pool; callbacks still pending are called from inside this call with
 * errstr "pg shutting down". Must not be called from inside an fm_pg callback. NULL is a no-op.
 */
void fm_pg_destroy(fm_pg_t *pg);

#endif
