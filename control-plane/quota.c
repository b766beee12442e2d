/*
 * Quotas (issue 11 item 6; docs/decisions.md "Quotas"; schema/017_quotas.sql).
 *
 * PostgreSQL keeps each owner's used_bytes and reserved_bytes exact (statement triggers on files). The presign's
 * Redis script, which writes a record behind without asking PostgreSQL, checks a copy of them, fm:quota:{owner}:
 *   q  the owner's quota_bytes
 *   b  used + reserved as PostgreSQL last counted them
 *   p  bytes of this owner's records written behind and not yet in PostgreSQL (the script adds a record's size when
 *      it stores the record; the flusher moves it from p to b when the record's batch committed), and of the holds of
 *      charges decided in PostgreSQL (fm_quota_hold)
 *   v  a version, incremented by every move into b, so that a refresh from PostgreSQL never undoes one (settle_script)
 * A record is stored only when b + p + size ≤ q, in the same script step as the record itself, so concurrent
 * presigns cannot all pass. Every other path that charges an owner (a write-through upload, an upload into a folder,
 * a multipart upload, a dedupe decided by PostgreSQL) first holds its size in the copy with the same check
 * (fm_quota_hold), then checks in PostgreSQL with the owner's row locked (fm_quota_take); a copy checks in
 * PostgreSQL only and refreshes the copy afterwards.
 *
 * The copy only errs towards more: releases (a FAILED or aborted upload, a purge) lower PostgreSQL's figures and
 * leave b high until the next refresh, so the script may refuse what fits; the route then asks PostgreSQL (the
 * write-through path), which decides, and refreshes b. A missing copy makes the script answer 'quota_unbuilt' and
 * the route takes the same path. A refresh never makes it count less: one that read PostgreSQL before a batch of the
 * owner's records committed would write a b without them after the flusher moved them out of p, so it writes only
 * when the version v it read first is unchanged (test_quotas' concurrent presigns found that race: 12 of 10 passed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
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

/* A refresh rewrites q and b from PostgreSQL's row. It must not undo a move of bytes into b made between its read of
 * PostgreSQL and its write (a batch landing: the bytes would leave p and be missing from the stale b, and the copy
 * would count less than is charged). So every move into b also increments the copy's version `v`; a refresh reads v
 * before it reads PostgreSQL and writes only when v is still that (VERSION_CHECK_LUA: ARGV[v_arg]); otherwise the
 * move it missed is in b already and its figures are older than the copy's. p stays as it is (0 on a new copy). */
#define VERSION_CHECK_LUA(v_arg) "if (redis.call('HGET', KEYS[1], 'v') or '') ~= ARGV[" v_arg "] then return 0 end\n"
static const char settle_script[] = VERSION_CHECK_LUA("3") "redis.call('HSET', KEYS[1], 'q', ARGV[1], 'b', ARGV[2])\n"
                                                          "redis.call('HSETNX', KEYS[1], 'p', 0)\n"
                                                          "return 1\n";

typedef struct {
    fm_control_thread_t *thread;
    char owner[37], key[64], version[24];
} refresh_t;

static void on_refresh_read(PGresult *res, const char *errstr, void *data)
{
    refresh_t *f = data;
    /* At shutdown the pools go first: no result, nothing to write. */
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        const char *argv[] = {"EVAL", settle_script, "1", f->key, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
                              f->version};
        fm_redis_commandargv(f->thread->redis, ignore_reply, NULL, 7, argv, NULL);
    }
    free(f);
}

static const char figures_sql[] = "SELECT quota_bytes, used_bytes + reserved_bytes FROM users WHERE id = $1::uuid";

static void on_refresh_version(redisReply *reply, const char *errstr, void *data)
{
    refresh_t *f = data;
    if (reply == NULL || (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_NIL)) {
        free(f); /* Redis away or stopping: the next charge decided in PostgreSQL refreshes again */
        return;
    }
    snprintf(f->version, sizeof(f->version), "%s", reply->type == REDIS_REPLY_STRING ? reply->str : "");
    const char *params[] = {f->owner};
    if (fm_pg_query(f->thread->pg, on_refresh_read, f, figures_sql, 1, params) != 0)
        free(f);
}

void fm_quota_refresh(fm_control_thread_t *thread, const char *owner_id)
{
    refresh_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        h2o_fatal("out of memory");
    f->thread = thread;
    snprintf(f->owner, sizeof(f->owner), "%s", owner_id);
    fm_quota_key(f->key, sizeof(f->key), owner_id);
    const char *argv[] = {"HGET", f->key, "v"};
    if (fm_redis_commandargv(thread->redis, on_refresh_version, f, 3, argv, NULL) != 0)
        free(f);
}

/* KEYS: record hashes (fm:rec:{id}). ARGV: for each record in turn its owner's copy key, its size, and '1' when it
 * landed in PostgreSQL or '0' when it was set aside. A landed record's bytes move from p to b once, by whoever deletes
 * its hash: the flusher and fm_records_ensure may both insert the same record, only one DEL answers 1. A set-aside
 * record (renamed away, never deleted here) only leaves p. A copy made after the record was stored has p = 0 and
 * never goes below it. */
static const char landed_script[] =
    "for i, key in ipairs(KEYS) do\n"
    "  local q, size, landed = ARGV[3 * i - 2], tonumber(ARGV[3 * i - 1]), ARGV[3 * i] == '1'\n"
    "  local mine = not landed or redis.call('DEL', key) == 1\n"
    "  if mine and size > 0 and redis.call('EXISTS', q) == 1 then\n"
    "    if redis.call('HINCRBY', q, 'p', -size) < 0 then redis.call('HSET', q, 'p', 0) end\n"
    "    if landed then redis.call('HINCRBY', q, 'b', size) redis.call('HINCRBY', q, 'v', 1) end\n"
    "  end\n"
    "end\n"
    "return 1\n";

void fm_quota_landed(fm_redis_t *redis, size_t n, const fm_quota_landing_t *recs)
{
    if (n == 0)
        return;
    const char **argv = calloc(3 + 4 * n, sizeof(char *));
    char (*words)[64] = calloc(2 * n, 64);
    char count[24];
    if (argv == NULL || words == NULL)
        h2o_fatal("out of memory");
    snprintf(count, sizeof(count), "%zu", n);
    int argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = landed_script;
    argv[argc++] = count;
    for (size_t i = 0; i < n; ++i)
        argv[argc++] = recs[i].record_key;
    for (size_t i = 0; i < n; ++i) {
        int known = recs[i].owner_id != NULL && recs[i].owner_id[0] != '\0';
        if (known)
            fm_quota_key(words[2 * i], 64, recs[i].owner_id);
        snprintf(words[2 * i + 1], 64, "%lld", known ? recs[i].size : 0);
        argv[argc++] = words[2 * i];
        argv[argc++] = words[2 * i + 1];
        argv[argc++] = recs[i].landed ? "1" : "0";
    }
    fm_redis_commandargv(redis, ignore_reply, NULL, argc, argv, NULL);
    free(words);
    free(argv);
}

/* ---- the periodic recount (the reconciler's round) ------------------------------------------------------------ */

/* Owners recounted per round: one aggregate over their files, bounded. */
#define RECOUNT_OWNERS 200

typedef struct {
    fm_control_thread_t *thread;
    char *after;
} recount_t;

static void on_recounted(PGresult *res, const char *errstr, void *data)
{
    recount_t *c = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (res != NULL) /* NULL: the pools stop, nothing to say */
            fm_warn("quota: the recount failed: %s", PQresultErrorMessage(res));
        free(c);
        return;
    }
    int rows = PQntuples(res), repaired = 0;
    for (int i = 0; i < rows; ++i) {
        if (strcmp(PQgetvalue(res, i, 4), "t") != 0)
            continue;
        /* Figures PostgreSQL had wrong: the Redis copy made from them is rewritten (the same guarded refresh as
         * after a charge). A copy that only counts too much is set right when it refuses: see fm_quota_hold. */
        fm_quota_refresh(c->thread, PQgetvalue(res, i, 0));
        repaired++;
    }
    if (repaired > 0)
        fm_warn("quota: the recount repaired the figures of %d owner(s)", repaired);
    /* The next round goes on after this slice, or from the first owner again. */
    snprintf(c->after, 37, "%s", rows > 0 ? PQgetvalue(res, 0, 5) : "");
    free(c);
}

void fm_quota_recount_round(fm_control_thread_t *thread, char after[37])
{
    recount_t *c = malloc(sizeof(*c));
    if (c == NULL)
        h2o_fatal("out of memory");
    c->thread = thread;
    c->after = after;
    char limit[16];
    snprintf(limit, sizeof(limit), "%d", RECOUNT_OWNERS);
    const char *params[] = {after[0] ? after : NULL, limit};
    if (fm_pg_query(thread->pg, on_recounted, c,
                    "SELECT out_owner, out_used, out_reserved, out_quota, out_repaired, out_last "
                    "FROM fm_quota_recount($1::uuid, $2::integer)",
                    2, params) != 0)
        free(c);
}

/* ---- a hold for a charge decided in PostgreSQL ---------------------------------------------------------------- */

/* KEYS[1]: the owner's copy. ARGV[1]: the size; ARGV[2], ARGV[3], ARGV[4] (optional): q and b read from PostgreSQL
 * just now, and the copy's version read before (written only if it is still that: see settle_script). Answers
 * 'held' (p grew by the size: the charge may go on), 'unbuilt', or 'over:' .. the copy's version. */
static const char hold_script[] = QUOTA_LUA
    "local v = redis.call('HGET', KEYS[1], 'v') or ''\n"
    "if ARGV[2] and v == ARGV[4] then\n"
    "  redis.call('HSET', KEYS[1], 'q', ARGV[2], 'b', ARGV[3])\n"
    "  redis.call('HSETNX', KEYS[1], 'p', 0)\n"
    "end\n"
    "local refused = quota_take(KEYS[1], ARGV[1])\n"
    "if refused == 'quota_unbuilt' then return 'unbuilt' end\n"
    "if refused then return 'over:' .. v end\n"
    QUOTA_RESERVE_LUA("KEYS[1]", "ARGV[1]")
    "return 'held'\n";

/* Refreshes a refusing copy at most this many times before the answer is 413 (a refresh is skipped when a batch
 * landed meanwhile, which a busy owner's may keep doing). */
#define HOLD_REFRESHES_MAX 3

typedef struct {
    fm_req_t *r;
    fm_quota_hold_fn next;
    void *arg;
    char owner[37], key[64], size[24], version[24];
    int refreshes;
} hold_t;

static void hold_send(hold_t *h, const char *quota, const char *charged);

static void hold_end(hold_t *h, fm_quota_hold_t outcome)
{
    fm_req_t *r = h->r;
    fm_quota_hold_fn next = h->next;
    void *arg = h->arg;
    free(h);
    next(r, outcome, arg);
}

static void on_hold_refreshed(PGresult *res, const char *errstr, void *data)
{
    hold_t *h = data;
    if (fm_req_resume(h->r) != 0) {
        free(h);
        return;
    }
    if (fm_pg_failed(h->r, res, errstr)) {
        free(h);
        return;
    }
    if (PQntuples(res) != 1) { /* the owner is gone: PostgreSQL's insert refuses it on its own */
        hold_end(h, FM_QUOTA_UNCHECKED);
        return;
    }
    hold_send(h, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
}

static void on_held(redisReply *reply, const char *errstr, void *data)
{
    hold_t *h = data;
    if (fm_req_resume(h->r) != 0) {
        free(h);
        return;
    }
    if (reply == NULL || reply->type != REDIS_REPLY_STRING) {
        /* Redis cannot tell: PostgreSQL's own check (fm_quota_take) decides alone. */
        fm_log(FM_LOG_WARN, h->r->request_id, "redis: quota copy unavailable: %s",
               reply && reply->type == REDIS_REPLY_ERROR ? reply->str : errstr ? errstr : "unexpected reply");
        hold_end(h, FM_QUOTA_UNCHECKED);
        return;
    }
    if (strcmp(reply->str, "held") == 0) {
        hold_end(h, FM_QUOTA_HELD);
    } else if (strcmp(reply->str, "unbuilt") == 0) {
        hold_end(h, FM_QUOTA_UNCHECKED);
    } else if (strncmp(reply->str, "over:", 5) == 0 && h->refreshes < HOLD_REFRESHES_MAX) {
        /* 'over' on a copy that may count releases PostgreSQL already made (a FAILED upload, a purge): read the
         * figures and ask again, in one script, before refusing. */
        h->refreshes++;
        snprintf(h->version, sizeof(h->version), "%s", reply->str + 5);
        const char *params[] = {h->owner};
        if (fm_pg_call_with(h->r, h, on_hold_refreshed, figures_sql, 1, params) != 0) {
            fm_reply_unavailable(h->r, "the database");
            free(h);
        }
    } else {
        hold_end(h, FM_QUOTA_OVER);
    }
}

static void hold_send(hold_t *h, const char *quota, const char *charged)
{
    const char *argv[] = {"EVAL", hold_script, "1", h->key, h->size, quota, charged, h->version};
    if (fm_redis_call_with(h->r, h, on_held, quota != NULL ? 8 : 5, argv) != 0) {
        fm_reply_unavailable(h->r, "the session store");
        free(h);
    }
}

void fm_quota_hold(fm_req_t *r, const char *owner_id, long long size, fm_quota_hold_fn next, void *arg)
{
    hold_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        h2o_fatal("out of memory");
    h->r = r;
    h->next = next;
    h->arg = arg;
    snprintf(h->owner, sizeof(h->owner), "%s", owner_id);
    fm_quota_key(h->key, sizeof(h->key), owner_id);
    snprintf(h->size, sizeof(h->size), "%lld", size);
    hold_send(h, NULL, NULL);
}

/* KEYS[1]: the copy. ARGV: the size held, '1' when the charge went through. */
static const char settle_hold_script[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
    "  if redis.call('HINCRBY', KEYS[1], 'p', -tonumber(ARGV[1])) < 0 then redis.call('HSET', KEYS[1], 'p', 0) end\n"
    "  if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'b', ARGV[1]) redis.call('HINCRBY', KEYS[1], 'v', 1) end\n"
    "end\n"
    "return 1\n";

void fm_quota_settle(fm_control_thread_t *thread, const char *owner_id, long long size, fm_quota_hold_t held,
                     int charged)
{
    if (held != FM_QUOTA_HELD) {
        if (charged) /* checked by PostgreSQL alone: (re)build the copy from its figures */
            fm_quota_refresh(thread, owner_id);
        return;
    }
    char key[64];
    fm_quota_key(key, sizeof(key), owner_id);
    char amount[24];
    snprintf(amount, sizeof(amount), "%lld", size);
    /* The hold leaves p; a charge that went through is in PostgreSQL's figures now, so in b. */
    const char *argv[] = {"EVAL", settle_hold_script, "1", key, amount, charged ? "1" : "0"};
    fm_redis_commandargv(thread->redis, ignore_reply, NULL, 6, argv, NULL);
}
