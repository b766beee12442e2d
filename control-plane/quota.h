/*
 * Quotas (quota.c): the Redis copy of an owner's figures that the presign script checks, and the helpers of the
 * paths that charge in PostgreSQL. Everything runs on the calling event-loop thread, on that thread's pools.
 */
#ifndef FM_QUOTA_H
#define FM_QUOTA_H

#include <stddef.h>

#include "control.h"

/** The SQLSTATE fm_quota_take (schema/017_quotas.sql) raises when a charge would pass the owner's quota. */
#define FM_QUOTA_SQLSTATE "FMQ01"

/**
 * The presign script's check, a Lua function quota_take(key, size): nil when the record fits (b + p + size ≤ q; the
 * caller then stores it and adds size to p with QUOTA_RESERVE_LUA), 'quota_unbuilt' when there is no copy,
 * 'quota_over' when it does not fit. Both refusals send the route to PostgreSQL, which decides.
 */
#define QUOTA_LUA                                                                                                      \
    "local function quota_take(key, size)\n"                                                                           \
    "  local v = redis.call('HMGET', key, 'q', 'b', 'p')\n"                                                            \
    "  if not v[1] then return 'quota_unbuilt' end\n"                                                                  \
    "  if tonumber(v[2] or 0) + tonumber(v[3] or 0) + tonumber(size) > tonumber(v[1]) then return 'quota_over' end\n" \
    "  return nil\n"                                                                                                   \
    "end\n"
#define QUOTA_RESERVE_LUA(key, size) "redis.call('HINCRBY', " key ", 'p', " size ")\n"

/** fm:quota:{owner} into `out`. */
void fm_quota_key(char *out, size_t size, const char *owner_id);

/** Whether PostgreSQL refused a statement because of fm_quota_take. */
int fm_pg_quota_exceeded(const PGresult *res);

/** Answers 413 quota_exceeded for a charge of `size` bytes. */
void fm_quota_refuse(fm_req_t *r, long long size);

/** Rewrites the owner's copy (q, b) from PostgreSQL, fire and forget: after a charge or a refusal decided there. */
void fm_quota_refresh(fm_control_thread_t *thread, const char *owner_id);

/** A record written behind, once its batch is over: its hash key (fm:rec:{id}), its owner (NULL or "" when unknown:
 *  the hash is only deleted) and size, and whether it landed in PostgreSQL (else it was set aside). */
typedef struct fm_quota_landing {
    const char *record_key, *owner_id;
    long long size;
    int landed;
} fm_quota_landing_t;

/** Deletes the hashes of the records that landed and moves their bytes from p to b on their owners' copies (those
 *  set aside only leave p), in one script; fire and forget. Replaces the DEL of the records' hashes. */
void fm_quota_landed(fm_redis_t *redis, size_t n, const fm_quota_landing_t *recs);

/** What a hold found: the size is held in the copy (p), the copy says it does not fit even after a refresh from
 *  PostgreSQL, or there is no copy (or Redis failed): PostgreSQL's own check (fm_quota_take) decides alone. */
typedef enum { FM_QUOTA_HELD, FM_QUOTA_OVER, FM_QUOTA_UNCHECKED } fm_quota_hold_t;
typedef void (*fm_quota_hold_fn)(fm_req_t *r, fm_quota_hold_t outcome, void *arg);

/**
 * Before a charge decided in PostgreSQL (a write-through upload, a dedupe, a copy): holds `size` bytes in the owner's
 * copy with the same atomic check as the presign script, so such charges and records written behind cannot pass the
 * quota together; past it, the copy is rewritten from PostgreSQL and asked again once before FM_QUOTA_OVER. Calls
 * next (the request held meanwhile); answers 503 itself when PostgreSQL fails during a refresh.
 */
void fm_quota_hold(fm_req_t *r, const char *owner_id, long long size, fm_quota_hold_fn next, void *arg);

/** After the statement of a charge: ends a hold (its bytes leave p, and join b when `charged`), or, without a hold,
 *  rebuilds the copy from PostgreSQL after a charge. Fire and forget. */
void fm_quota_settle(fm_control_thread_t *thread, const char *owner_id, long long size, fm_quota_hold_t held,
                     int charged);

/** One slice of the periodic recount (schema 017 fm_quota_recount: PostgreSQL's figures recomputed from the rows,
 *  repaired where they drifted) on the reconciler's thread, and the Redis copies of that slice rewritten from them.
 *  `after` (the reconciler's, lives as long as it) holds the last owner done, "" to start from the first. */
void fm_quota_recount_round(fm_control_thread_t *thread, char after[37]);

#endif
