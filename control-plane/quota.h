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

/** A flushed batch held `bytes` of the owner's records: out of p, and into b when they `landed` in PostgreSQL (a
 *  record set aside did not). Fire and forget. */
void fm_quota_flushed(fm_redis_t *redis, const char *owner_id, long long bytes, int landed);

#endif
