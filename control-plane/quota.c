/*
 * Quotas (issue 11 item 6; docs/decisions.md "Quotas"; schema/017_quotas.sql).
 *
 * PostgreSQL keeps each owner's used_bytes and reserved_bytes exact (statement triggers on files). The presign's
 * Redis script, which writes a record behind without asking PostgreSQL, checks a copy of them, fm:quota:{owner}:
 *   q  the owner's quota_bytes
 *   b  used + reserved as PostgreSQL last counted them
 *   p  bytes of this owner's records written behind and not yet in PostgreSQL (the script adds a record's size when
 *      it stores the record; the flusher moves it from p to b when the record's batch committed)
 * A record is stored only when b + p + size ≤ q, in the same script step as the record itself, so concurrent
 * presigns cannot all pass. Every other path that charges an owner (a write-through upload, an upload into a folder,
 * a multipart upload, a dedupe decided by PostgreSQL, a copy) checks in PostgreSQL, with the owner's row locked
 * (fm_quota_take), and refreshes the copy afterwards.
 *
 * The copy only errs towards more: releases (a FAILED or aborted upload, a purge) lower PostgreSQL's figures and
 * leave b high until the next refresh, so the script may refuse what fits; the route then asks PostgreSQL (the
 * write-through path), which decides, and refreshes b. A missing copy makes the script answer 'quota_unbuilt' and
 * the route takes the same path. The one way to count less than PostgreSQL is a refresh read just before a batch of
 * the owner's records committed and written just after the flusher moved them to b: bounded by one batch, repaired
 * by the next refresh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "quota.h"

void fm_quota_key(char *out, size_t size, const char *owner_id)
{
    snprintf(out, size, "fm:quota:{%s}", owner_id);
}

int fm_pg_quota_exceeded(const PGresult *res)
{
    if (res == NULL)
        return 0;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return state != NULL && strcmp(state, FM_QUOTA_SQLSTATE) == 0;
}

void fm_quota_refuse(fm_req_t *r, long long size)
{
    fm_reply_error(r, 413, "quota_exceeded",
                   "%lld more bytes would pass your quota (GET /v1/me shows quota_bytes, used_bytes, reserved_bytes)",
                   size);
}

static void ignore_reply(redisReply *reply, const char *errstr, void *data)
{
}

typedef struct {
    fm_control_thread_t *thread;
    char owner[37];
} refresh_t;

/* Sets q and b from PostgreSQL's row; p (records still on their way) stays as it is, 0 when the copy is new. */
static const char settle_script[] = "redis.call('HSET', KEYS[1], 'q', ARGV[1], 'b', ARGV[2])\n"
                                    "redis.call('HSETNX', KEYS[1], 'p', 0)\n"
                                    "return 1\n";

static void on_refresh_read(PGresult *res, const char *errstr, void *data)
{
    refresh_t *f = data;
    /* At shutdown the pools go first: no result, nothing to write. */
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        char key[64];
        fm_quota_key(key, sizeof(key), f->owner);
        const char *argv[] = {"EVAL", settle_script, "1", key, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1)};
        fm_redis_commandargv(f->thread->redis, ignore_reply, NULL, 6, argv, NULL);
    }
    free(f);
}

void fm_quota_refresh(fm_control_thread_t *thread, const char *owner_id)
{
    refresh_t *f = malloc(sizeof(*f));
    if (f == NULL)
        h2o_fatal("out of memory");
    f->thread = thread;
    snprintf(f->owner, sizeof(f->owner), "%s", owner_id);
    const char *params[] = {f->owner};
    if (fm_pg_query(thread->pg, on_refresh_read, f,
                    "SELECT quota_bytes, used_bytes + reserved_bytes FROM users WHERE id = $1::uuid", 1, params) != 0)
        free(f);
}

/* Moves a flushed batch's bytes of one owner from p to b, only on a copy that exists: a copy made after the records
 * were stored has p = 0 and must not go below it. */
static const char flushed_script[] = "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
                                     "  redis.call('HINCRBY', KEYS[1], 'p', -tonumber(ARGV[1]))\n"
                                     "  redis.call('HINCRBY', KEYS[1], 'b', tonumber(ARGV[1]) * tonumber(ARGV[2]))\n"
                                     "  if tonumber(redis.call('HGET', KEYS[1], 'p')) < 0 then redis.call('HSET', KEYS[1], 'p', 0) end\n"
                                     "end\n"
                                     "return 1\n";

void fm_quota_flushed(fm_redis_t *redis, const char *owner_id, long long bytes, int landed)
{
    char key[64], amount[24];
    fm_quota_key(key, sizeof(key), owner_id);
    snprintf(amount, sizeof(amount), "%lld", bytes);
    const char *argv[] = {"EVAL", flushed_script, "1", key, amount, landed ? "1" : "0"};
    fm_redis_commandargv(redis, ignore_reply, NULL, 6, argv, NULL);
}
